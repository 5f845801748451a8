"""What the export tells the programs that load it (no Ray, no DeepSpeed; seconds):

- the tokenizer's chat template renders the format the model was trained on, token for token
  (a model trained on `wizardlm` gets a wizardlm template, not its base model's ChatML);
- the generation config stops on every token a trained reply ends with, also when the chat
  template's end-of-turn is not the tokenizer's EOS (Qwen's <|im_end|> vs <|endoftext|>);
- a LoRA merge equals peft's own `merge_and_unload`.
"""
from __future__ import annotations

import pytest

from tests.test_train_units import llama_sp_tokenizer, small_model_tokenizer  # noqa: F401 (fixtures)
from train.masking import IGNORE, hf_encoder, tokenize_row

CONVERSATION = [{"role": "user", "content": "Add 2 and 3.  "}, {"role": "assistant", "content": " The answer is 5."},
                {"role": "user", "content": "And 4 + 4?"}, {"role": "assistant", "content": "8, of course."}]


def export_tokenizer_files(tokenizer, template: str, folder):
    """train.engine.save_generation_files into `folder`; (reloaded tokenizer, generation config)."""
    from transformers import AutoTokenizer, GenerationConfig

    from train.engine import save_generation_files

    save_generation_files(GenerationConfig(), tokenizer, template, folder)
    return AutoTokenizer.from_pretrained(folder), GenerationConfig.from_pretrained(folder)


@pytest.mark.parametrize("tokenizer_name", ["small_model_tokenizer", "llama_sp_tokenizer"])
@pytest.mark.parametrize("template", ["wizardlm", "vicuna_v1.1"])
def test_exported_chat_template_renders_the_trained_format(tokenizer_name, template, request, tmp_path):
    tokenizer = request.getfixturevalue(tokenizer_name)
    base_template = tokenizer.chat_template
    trained = tokenize_row({"messages": CONVERSATION}, template, hf_encoder(tokenizer), 512, "truncate")
    exported, generation = export_tokenizer_files(tokenizer, template, tmp_path)
    assert exported.chat_template != base_template

    def rendered(messages, prompt):  # what vLLM and `generate` callers do: render, then tokenise as is
        text = exported.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
        return exported(text, add_special_tokens=False).input_ids

    assert rendered(CONVERSATION, False) == trained.input_ids  # the whole trained conversation
    first_reply = next(i for i, label in enumerate(trained.labels) if label != IGNORE and i > 0)
    assert rendered(CONVERSATION[:1], True) == trained.input_ids[:first_reply]  # the prompt it answers
    assert generation.eos_token_id == tokenizer.eos_token_id  # a trained reply ends with the EOS
    assert tokenizer.chat_template == base_template  # the caller's tokenizer is left as it was


def test_chat_template_replies_stop_on_the_end_of_turn_token_that_is_not_the_eos(small_model_tokenizer, tmp_path):
    import copy

    tokenizer = copy.deepcopy(small_model_tokenizer)
    tokenizer.eos_token = "<|endoftext|>"  # as Qwen2.5: EOS <|endoftext|>, turns end with <|im_end|>
    end_of_turn, eos = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    assert eos != end_of_turn and tokenizer.eos_token_id == eos
    trained = tokenize_row({"messages": CONVERSATION[:2]}, "chat_template", hf_encoder(tokenizer), 512, "truncate")
    reply = [t for t, label in zip(trained.input_ids, trained.labels) if label != IGNORE]
    assert end_of_turn in reply and eos not in reply  # what the model learns to emit at the end of a reply
    exported, generation = export_tokenizer_files(tokenizer, "chat_template", tmp_path)
    assert sorted(generation.eos_token_id) == sorted([eos, end_of_turn])
    assert exported.chat_template == tokenizer.chat_template  # trained on the tokenizer's own template


def test_lora_merge_equals_peft_merge_and_unload():
    import torch
    from peft import LoraConfig, get_peft_model

    from tests.test_train_recipe import tiny_llama
    from train.lora import merge_adapters

    base = tiny_llama("sdpa")
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"]))
    for name, p in model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero (no change); give it weights
            torch.nn.init.normal_(p, std=0.5)
    adapters = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    merged = merge_adapters(base_state, adapters, 8 / 4)
    reference = model.merge_and_unload().state_dict()
    changed = [k for k in base_state if not torch.equal(merged[k], base_state[k])]
    assert len(changed) == 4 and all(".q_proj." in k or ".down_proj." in k for k in changed)  # 2 layers x 2
    for key, value in reference.items():
        torch.testing.assert_close(merged[key], value, rtol=1e-5, atol=1e-6)
