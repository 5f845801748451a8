"""The hf backend's CPU decode attention (generation/attention.py) computes what SDPA computes: one
query token per row over a left-padded KV cache, each query head reading its own KV head."""
import asyncio
from types import SimpleNamespace

import pytest
import torch

from generation import GenerationConfig, SamplingParams, build_generator
from generation.attention import grouped_decode_attention
from generation.hf import attention_kernel


def sdpa(query, key, value, mask):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    module = SimpleNamespace(num_key_value_groups=query.shape[1] // key.shape[1], is_causal=True, training=False)
    return sdpa_attention_forward(module, query, key, value, mask, scaling=0.125)[0]


@pytest.mark.parametrize("mask_kind", ["bool", "additive", "none"])
def test_one_decode_token_matches_sdpa_for_every_head_and_padded_row(mask_kind):
    torch.manual_seed(0)
    batch, heads, kv_heads, kv_len, dim = 3, 9, 3, 11, 64  # SmolLM2's heads: 3 query heads per KV head
    query = torch.randn(batch, heads, 1, dim)
    key, value = torch.randn(batch, kv_heads, kv_len, dim), torch.randn(batch, kv_heads, kv_len, dim)
    attend = torch.ones(batch, 1, 1, kv_len + 2, dtype=torch.bool)  # a mask may be longer than the cache
    attend[1, ..., :4] = False  # left padding of row 1
    attend[2, ..., :7] = False
    mask = {"bool": attend, "none": None,
            "additive": torch.zeros(attend.shape).masked_fill(~attend, torch.finfo(torch.float32).min)}[mask_kind]
    module = SimpleNamespace(num_key_value_groups=3)
    ours, weights = grouped_decode_attention(module, query, key, value, mask, scaling=0.125)
    expected = sdpa(query, key, value, None if mask is None else attend[..., :kv_len])
    assert weights is None and ours.shape == (batch, 1, heads, dim)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    # each head's answer is its own: swapping two KV heads' caches changes exactly their query heads
    swapped = key.clone()
    swapped[:, [0, 1]] = key[:, [1, 0]]
    moved = grouped_decode_attention(module, query, swapped, value, mask, scaling=0.125)[0]
    changed = (moved - ours).abs().amax(dim=(0, 1, 3)) > 1e-4
    assert changed.tolist() == [True] * 6 + [False] * 3


def test_prefill_goes_to_sdpa_unchanged():
    torch.manual_seed(1)
    query, key, value = torch.randn(2, 4, 5, 16), torch.randn(2, 2, 5, 16), torch.randn(2, 2, 5, 16)
    module = SimpleNamespace(num_key_value_groups=2, is_causal=True, training=False)
    ours = grouped_decode_attention(module, query, key, value, None, scaling=0.25)[0]
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    assert torch.equal(ours, sdpa_attention_forward(module, query, key, value, None, scaling=0.25)[0])


def test_auto_is_grouped_decode_on_cpu_and_sdpa_on_gpus():
    assert attention_kernel("auto", cuda=False) == "evolray_grouped_decode"
    assert attention_kernel("auto", cuda=True) == "sdpa"
    assert attention_kernel("eager", cuda=False) == "eager"


def test_left_padded_greedy_batches_answer_as_sdpa_does(tiny_llama):
    """A model loaded by the hf backend with each kernel, fp32, greedy, prompts of unlike lengths in one
    batch (so rows are left-padded): the same tokens, and the same logits at every decode step."""
    prompts = ["hi", "tell me a long story about a lighthouse keeper and the sea " * 3, "count to ten, slowly"]
    answers, logits = {}, {}
    for kernel in ("auto", "sdpa"):
        generator = build_generator(GenerationConfig(model=tiny_llama, dtype="float32", torch_threads=1, batch_size=3,
                                                     batch_wait_ms=50, attn_implementation=kernel, batching="static"))
        engine = generator.inner
        assert engine.model.config._attn_implementation == attention_kernel(kernel, cuda=False)

        async def run():
            return await asyncio.gather(*(generator.generate(p, SamplingParams(0.0, 1.0, 24)) for p in prompts))

        answers[kernel] = asyncio.run(run())
        assert engine.batches == 1  # one padded batch
        enc = engine.tokenizer.pad({"input_ids": [engine.prompt_ids(p) for p in prompts]}, return_tensors="pt")
        assert (enc["attention_mask"] == 0).sum() > 60  # rows really are padded
        with torch.inference_mode():
            out = engine.model.generate(**enc, do_sample=False, max_new_tokens=6, output_logits=True,
                                        return_dict_in_generate=True, pad_token_id=engine.tokenizer.pad_token_id)
        logits[kernel] = torch.stack(out.logits)
    assert [a.text for a in answers["auto"]] == [a.text for a in answers["sdpa"]]
    assert all(a.completion_tokens > 0 for a in answers["auto"])
    torch.testing.assert_close(logits["auto"], logits["sdpa"], atol=1e-4, rtol=1e-4)
