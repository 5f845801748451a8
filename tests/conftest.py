"""Shared fixtures: a tiny random Llama with the real small model's tokenizer, a local Ray."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


def build_tiny_llama(target: str, seed: int = 0, initializer_range: float = 0.02) -> str:
    """A 2-layer, 32-dim Llama (random weights) that shares SmolLM2's tokenizer and chat template.
    transformers' default initializer_range (0.02) makes a model whose greedy answer hardly depends on
    its context; a larger one, one whose every token does (to test what a cache holds)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from common.models import SMALL_MODEL_ALIAS, resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(SMALL_MODEL_ALIAS))
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
                         initializer_range=initializer_range)
    LlamaForCausalLM(config).save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def build_sorry_llama(target: str) -> str:
    """A tiny Llama whose every next token is " sorry": each answer fails the "sorry" rule.

    Attention and MLP outputs are zero, so the last hidden state is the (normed) input embedding,
    whose first dimension is always the largest; only the " sorry" row of lm_head reads it.
    """
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    build_tiny_llama(target)
    tokenizer = AutoTokenizer.from_pretrained(target)
    model = LlamaForCausalLM.from_pretrained(target)
    model.config.tie_word_embeddings = False
    sorry = tokenizer.encode(" sorry", add_special_tokens=False)[0]
    with torch.no_grad():
        embed = model.model.embed_tokens.weight
        embed.mul_(0.01)
        embed[:, 0] = 1.0
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.lm_head.weight = torch.nn.Parameter(torch.zeros_like(embed))
        model.lm_head.weight[sorry, 0] = 10.0
    model.save_pretrained(target)
    return target


@pytest.fixture(scope="session")
def sorry_llama(tmp_path_factory) -> str:
    return build_sorry_llama(str(tmp_path_factory.mktemp("models") / "sorry-llama"))


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> str:
    return build_tiny_llama(str(tmp_path_factory.mktemp("models") / "tiny-llama"))


@pytest.fixture(scope="session")
def lively_llama(tmp_path_factory) -> str:
    """The tiny Llama with weights large enough that every greedy token depends on its context: a
    wrong KV cache shows in its answers (the default tiny one repeats a token whatever it reads)."""
    return build_tiny_llama(str(tmp_path_factory.mktemp("models") / "lively-llama"), initializer_range=0.5)


@pytest.fixture(scope="session")
def local_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_cluster():
    """A Ray of 2 CPUs that prints its workers' logs, for a module; the suite's shared one if it is up."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=True)
    yield ray
    if started:
        ray.shutdown()
