"""Throughput and MFU arithmetic (pure).

FLOPs per trained token follow the PaLM appendix B estimate: 6 N for the dense matmuls
(forward + backward) plus 12 L H S for attention scores (L layers, hidden H, sequence S);
4 N + 8 L H S with LoRA (no weight gradients of the frozen base).
MFU = achieved model FLOP/s / peak FLOP/s of the devices used; None ("n/a") when the peak
is unknown (an accelerator not in the table): never a guess.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

# Dense bf16 tensor-core peaks, TFLOP/s per GPU (NVIDIA datasheets, without sparsity), keyed by
# the exact `torch.cuda.get_device_name()` family: "L40S" is not "L4", "H100 PCIe" is not SXM.
PEAK_TFLOPS_BF16 = {"A100": 312.0, "H100 SXM": 989.0, "H100 PCIe": 756.0, "H100 NVL": 835.0, "H200": 989.0,
                    "H200 NVL": 835.0, "GH200": 989.0, "A10G": 125.0, "A10": 125.0, "L4": 121.0, "L40S": 362.0,
                    "L40": 181.0}
_DEVICE_NAMES = (  # full-match patterns of device names (after "NVIDIA "), most specific first
    (r"A100[- ].*", "A100"), (r"H100 80GB HBM3|H100 SXM.*", "H100 SXM"), (r"H100 PCIe", "H100 PCIe"),
    (r"H100 NVL", "H100 NVL"), (r"H200 NVL", "H200 NVL"), (r"H200( SXM.*| \d+GB.*)?", "H200"),
    (r"GH200( \d+GB.*)?", "GH200"), (r"A10G", "A10G"), (r"A10", "A10"), (r"L4", "L4"), (r"L40S", "L40S"),
    (r"L40", "L40"),
)


def flops_per_token(n_params: int, n_layers: int, hidden: int, seq_len: int, lora: bool = False) -> float:
    """Model FLOPs of one trained token (recomputation not counted, as MFU is defined).

    Forward 2N + 4 L H S; the backward pass is twice that for a full fine-tune (gradients of the
    activations and of the weights: 6N + 12 L H S in all) and once that with LoRA (the frozen
    base's weight gradients are never formed; the adapters' are negligible: 4N + 8 L H S)."""
    forward = 2.0 * n_params + 4.0 * n_layers * hidden * seq_len
    return forward * (2 if lora else 3)


def mfu(tokens_per_s: float, flops_token: float, peak_flops: float | None) -> float | None:
    """Fraction of `peak_flops` (all devices together) spent on useful model FLOPs; None if unknown."""
    return tokens_per_s * flops_token / peak_flops if peak_flops else None


def gpu_peak_tflops(device_name: str) -> float | None:
    """Peak of a CUDA device name such as 'NVIDIA A100-SXM4-80GB' (None if not an exact known one)."""
    name = device_name.strip().removeprefix("NVIDIA ").strip()
    for pattern, key in _DEVICE_NAMES:
        if re.fullmatch(pattern, name, flags=re.IGNORECASE):
            return PEAK_TFLOPS_BF16[key]
    return None


def peak_tflops_per_worker(configured: float | None, use_gpu: bool, device_name: str | None, measure_cpu) -> float | None:
    """The MFU denominator: the configured value, else the GPU's datasheet peak (None when the GPU
    is unknown), else (CPU workers) `measure_cpu()`, a measured matmul peak."""
    if configured is not None:
        return configured
    if use_gpu:
        return gpu_peak_tflops(device_name or "")
    return measure_cpu()


def measure_cpu_peak_tflops(size: int = 1024, repeats: int = 8) -> float:
    """Measured fp32 matmul throughput of this process's CPU threads: the CPU's 'peak'."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm up
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e12


@dataclass
class Window:
    """Sums of one worker over the optimizer steps since the last log line."""

    start: float = field(default_factory=time.perf_counter)
    step_losses: list = field(default_factory=list)  # per finished step: sum of its micro-batch losses
    current: float = 0.0  # the step in progress
    tokens: int = 0  # every position of every sequence fed (padding included)
    real_tokens: int = 0  # non-padding tokens

    @property
    def steps(self) -> int:
        return len(self.step_losses)

    def add(self, loss: float, tokens: int, real_tokens: int) -> None:
        """One micro batch: its loss is its token-sum divided by the whole step's trainable tokens."""
        self.current += loss
        self.tokens += tokens
        self.real_tokens += real_tokens

    def end_step(self) -> None:
        self.step_losses.append(self.current)
        self.current = 0.0

    def exclude(self, seconds: float) -> None:
        """Time spent outside training (a checkpoint save) does not count in tokens/s."""
        self.start += seconds


def window_metrics(sums: list[float], seconds: float, world_size: int, flops_token: float,
                   peak_flops_per_worker: float | None) -> dict:
    """Group-wide metrics from the all-reduced [step losses..., tokens, real_tokens] of a window.

    Each micro-batch loss is its token-sum divided by the whole step's trainable tokens (all
    workers), so a step's all-reduced loss is that step's per-token mean loss.
    """
    *step_losses, tokens, real = sums
    seconds = max(seconds, 1e-9)
    peak = peak_flops_per_worker * world_size if peak_flops_per_worker else None
    return {"loss": sum(step_losses) / max(len(step_losses), 1), "step_losses": step_losses,
            "tokens_per_s": tokens / seconds, "real_tokens_per_s": real / seconds,
            "mfu": mfu(real / seconds, flops_token, peak), "window_s": seconds}


def format_mfu(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"
