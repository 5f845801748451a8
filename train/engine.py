"""DeepSpeed engine of one worker: the DeepSpeed config, model + optimizer + schedule, export.

`deepspeed_config` is pure (unit-tested); the rest runs inside a Ray Train worker.
"""
from __future__ import annotations

import copy
import os
import shutil
import tempfile
from pathlib import Path

from common import storage
from common.models import cache_dir
from train.config import TrainConfig
from train.formatting import string_chat_template
from train.masking import hf_encoder, pad_id_of, reply_stop_ids


def deepspeed_config(cfg: TrainConfig) -> dict:
    """The DeepSpeed JSON config for this TrainConfig (batch sizes, ZeRO stage/offload, precision)."""
    ds = cfg.deepspeed
    zero: dict = {"stage": ds.stage}
    if ds.stage == 3:
        zero.update({"stage3_gather_16bit_weights_on_model_save": True, "overlap_comm": cfg.scaling.cuda,
                     "contiguous_gradients": True})
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": cfg.scaling.cuda}
    if ds.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": cfg.scaling.cuda}
    config = {
        "train_batch_size": cfg.optim.global_batch_size,
        "train_micro_batch_size_per_gpu": cfg.optim.micro_batch_size,
        "gradient_accumulation_steps": cfg.grad_accum_steps,
        "gradient_clipping": cfg.optim.max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": ds.precision == "bf16"},
        "steps_per_print": 10**9,  # our own metrics log instead
        "wall_clock_breakdown": False,
    }
    if ds.offload_optimizer:
        # ZeRO-Offload steps the optimizer on the CPU with DeepSpeed's CPUAdam (JIT-built once).
        config["optimizer"] = {"type": "AdamW", "params": {"lr": cfg.optim.lr, "betas": list(cfg.optim.betas),
                                                           "weight_decay": cfg.optim.weight_decay}}
    else:
        # A plain torch AdamW client optimizer: no JIT op build (fused kernel on GPU).
        config["zero_allow_untested_optimizer"] = True
    return config


def _torch_dtype(name: str):
    import torch

    return {"bf16": torch.bfloat16, "fp32": torch.float32, "bfloat16": torch.bfloat16,
            "float32": torch.float32}[name]


def load_model(cfg: TrainConfig, model_path: str):
    """The HF model to train: the whole model, or (lora/qlora) a frozen base with adapters."""
    import torch
    from transformers import AutoModelForCausalLM

    from train import lora

    kwargs = {}
    if cfg.lora.method == "qlora":
        kwargs = {"quantization_config": lora.quantization_config(),
                  "device_map": {"": torch.cuda.current_device()}}
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=_torch_dtype(cfg.deepspeed.precision),
                                                 attn_implementation=cfg.model.attn_implementation, **kwargs)
    model.config.use_cache = False
    if cfg.model.gradient_checkpointing:
        # Non-reentrant: recomputes with a frozen base too (LoRA), under every ZeRO stage. It acts in
        # train mode only: the loop puts the engine in train mode where training starts.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model if cfg.lora.method == "none" else lora.add_adapters(model, cfg)


def build_engine(cfg: TrainConfig, model_path: str, total_steps: int):
    """deepspeed.initialize on this worker; the process group is Ray Train's (nccl or gloo)."""
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(cache_dir() / "torch_extensions"))
    import deepspeed
    import torch
    from transformers import get_cosine_schedule_with_warmup
    from transformers.integrations import HfDeepSpeedConfig

    ds_config = deepspeed_config(cfg)
    # Before HfDeepSpeedConfig: it reads the world size to check the batch arithmetic.
    deepspeed.init_distributed(dist_backend="nccl" if cfg.scaling.cuda else "gloo")
    # Keeping this object alive makes from_pretrained build the model already partitioned
    # (deepspeed.zero.Init) under ZeRO-3, so no worker ever holds the full 7B model.
    hf_ds = HfDeepSpeedConfig(ds_config) if cfg.deepspeed.stage == 3 else None
    model = load_model(cfg, model_path)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = None
    if "optimizer" not in ds_config:
        optimizer = torch.optim.AdamW(trainable, lr=cfg.optim.lr, betas=cfg.optim.betas,
                                      weight_decay=cfg.optim.weight_decay, fused=cfg.scaling.cuda or None)

    def schedule(opt):
        return get_cosine_schedule_with_warmup(opt, cfg.optim.warmup_steps, max(total_steps, 1))

    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=schedule,
                                      config=ds_config, model_parameters=None if optimizer else trainable)
    engine._evolray_hf_ds = hf_ds  # keep alive with the engine
    return engine


def full_state_dict(engine, cfg: TrainConfig) -> dict | None:
    """Consolidated weights on rank 0 (None elsewhere); every rank must call it under ZeRO-3."""
    import torch.distributed as dist

    if cfg.deepspeed.stage == 3:
        # Gathers one layer at a time onto rank 0 (what engine.save_16bit_model and accelerate use).
        state = engine._zero3_consolidated_16bit_state_dict()
    else:
        state = engine.module.state_dict()
    return state if dist.get_rank() == 0 else None


def export_hf_model(engine, cfg: TrainConfig, tokenizer, target: str, scratch: str, model_path: str) -> None:
    """Rank 0 writes the model (full, LoRA merged, or the LoRA adapter) + generation config + tokenizer
    to `target` (local/s3), staged in the local folder `scratch`; every rank must call it."""
    from train import lora

    state = full_state_dict(engine, cfg) if cfg.lora.method == "none" else lora.adapter_state(engine, cfg)
    if state is None:
        return
    local = Path(tempfile.mkdtemp(prefix="evolray-export-", dir=scratch))
    try:
        if cfg.lora.method == "none":
            dtype = _torch_dtype(cfg.output.dtype)
            state = {k: v.detach().to("cpu", dtype) if v.is_floating_point() else v.cpu() for k, v in state.items()}
            engine.module.config.use_cache = True
            engine.module.config.dtype = dtype
            engine.module.save_pretrained(local, state_dict=state)
            hf_model = engine.module
        else:
            lora.save_export(engine, cfg, state, model_path, str(local))
            hf_model = engine.module.get_base_model()
        save_generation_files(hf_model.generation_config, tokenizer, cfg.data.template, local)
        upload_dir(local, target)
    finally:
        shutil.rmtree(local, ignore_errors=True)


def save_generation_files(generation_config, tokenizer, template: str, local: Path) -> None:
    """The generation config stops on every token a trained reply ends with, and the tokenizer's chat
    template renders the format trained (a model trained on `wizardlm` answers a wizardlm prompt)."""
    stops = reply_stop_ids(tokenizer, template)
    generation_config.eos_token_id = stops[0] if len(stops) == 1 else stops
    generation_config.pad_token_id = pad_id_of(tokenizer)
    generation_config.save_pretrained(local)
    if template != "chat_template":
        tokenizer = copy.copy(tokenizer)  # the caller's tokenizer keeps its template
        tokenizer.chat_template = string_chat_template(template, hf_encoder(tokenizer).bos_id is not None)
    tokenizer.save_pretrained(local)


def upload_dir(local: Path, target: str) -> None:
    """Replace `target` (local or s3://) with the contents of the local folder."""
    from pyarrow import fs as pafs

    storage.delete_dir(target)
    filesys, inner = storage.filesystem(target)
    filesys.create_dir(inner, recursive=True)
    pafs.copy_files(str(local), inner, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=filesys)
