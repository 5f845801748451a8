"""LoRA / QLoRA through peft: adapters on a frozen base model, and their export.

Everything else is the full fine-tune's: masking, packing, the per-token loss, DeepSpeed, checkpoints
(of the trainable parameters only) and resume. The export is either the peft adapter alone or one
HF model with the adapters folded into the base weights as stored in the model folder (for QLoRA
too: the 16-bit base, not its 4-bit copy). `merge_adapters` is pure torch (tested against peft's
own `merge_and_unload`); the rest runs inside a Ray Train worker.
"""
from __future__ import annotations

import functools
import glob
import os

from train.config import TrainConfig

ADAPTER = "default"  # peft's name of the one adapter
PEFT_PREFIX = "base_model.model."  # PeftModel -> LoraModel -> the HF model


def peft_config(cfg: TrainConfig):
    from peft import LoraConfig

    lora = cfg.lora
    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=list(lora.target_modules), bias="none", task_type="CAUSAL_LM")


def quantization_config():
    """QLoRA's NF4 base: 4-bit weights, bf16 compute, double quantisation (the paper's settings)."""
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def add_adapters(model, cfg: TrainConfig):
    """The model with trainable adapters and a frozen base; the same initial adapters on every rank
    and every attempt (seeded), so that a resume and an uninterrupted run start alike."""
    import torch
    from peft import get_peft_model, prepare_model_for_kbit_training

    if cfg.lora.method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    torch.manual_seed(cfg.data.seed)
    return get_peft_model(model, peft_config(cfg))


def adapter_state(engine, cfg: TrainConfig) -> dict | None:
    """The trainable (adapter) weights on rank 0, None elsewhere; every rank must call it (ZeRO-3
    gathers the partitions)."""
    import contextlib

    import deepspeed
    import torch.distributed as dist

    named = [(name, p) for name, p in engine.module.named_parameters() if p.requires_grad]
    gather = (deepspeed.zero.GatheredParameters([p for _, p in named]) if cfg.deepspeed.stage == 3
              else contextlib.nullcontext())
    with gather:
        if dist.get_rank() != 0:
            return None
        return {name: p.detach().to("cpu").clone() for name, p in named}


def merge_adapters(base: dict, adapters: dict, scaling: float) -> dict:
    """`base` (HF checkpoint keys) with W + scaling x B @ A for every adapted linear layer, in fp32
    and then in the base weight's dtype; `adapters` has peft's keys
    (`base_model.model.<layer>.lora_A.default.weight`)."""
    import torch

    merged = dict(base)
    suffix_a = f".lora_A.{ADAPTER}.weight"
    for key, a in adapters.items():
        if not key.endswith(suffix_a):
            continue
        layer = key[:-len(suffix_a)]
        b = adapters[f"{layer}.lora_B.{ADAPTER}.weight"]
        target = layer.removeprefix(PEFT_PREFIX) + ".weight"
        weight = base[target]
        delta = (b.to(torch.float32) @ a.to(torch.float32)) * scaling
        merged[target] = (weight.to(torch.float32) + delta).to(weight.dtype)
    return merged


def base_weights(model_path: str) -> dict:
    """The base model's weights as stored in its folder: every *.safetensors file, else every
    pytorch_model*.bin (older conversions of LLaMA checkpoints hold only those)."""
    import torch
    from safetensors.torch import load_file

    files = sorted(glob.glob(os.path.join(model_path, "*.safetensors")))
    load = load_file
    if not files:
        files = sorted(glob.glob(os.path.join(model_path, "pytorch_model*.bin")))
        load = functools.partial(torch.load, map_location="cpu", weights_only=True)
    if not files:
        raise FileNotFoundError(f"no *.safetensors or pytorch_model*.bin weights in {model_path}: the LoRA merge "
                                "needs them")
    state: dict = {}
    for path in files:
        state.update(load(path))
    return state


def save_export(engine, cfg: TrainConfig, adapters: dict, model_path: str, local: str) -> None:
    """Rank 0: the adapter (peft format) or the merged model (safetensors + config) into `local`."""
    import copy

    import torch
    from huggingface_hub import save_torch_state_dict

    peft_model = engine.module
    if cfg.lora.export == "adapter":
        peft_model.peft_config[ADAPTER].base_model_name_or_path = cfg.model.name
        peft_model.save_pretrained(local, state_dict=adapters)
        return
    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[cfg.output.dtype]
    merged = merge_adapters(base_weights(model_path), adapters, cfg.lora.alpha / cfg.lora.r)
    save_torch_state_dict({k: v.to(dtype) if v.is_floating_point() else v for k, v in merged.items()}, local,
                          max_shard_size="5GB")
    config = copy.deepcopy(peft_model.get_base_model().config)
    if hasattr(config, "quantization_config"):  # QLoRA: the merged weights are the 16-bit base's
        del config.quantization_config
    config.dtype = dtype
    config.use_cache = True
    config.save_pretrained(local)
