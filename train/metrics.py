"""Throughput and MFU arithmetic (pure).

FLOPs per trained token follow the PaLM appendix B estimate: 6 N for the dense matmuls
(forward + backward) plus 12 L H S for attention scores (L layers, hidden H, sequence S).
MFU = achieved model FLOP/s / peak FLOP/s of the devices used.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

# Published dense bf16 tensor-core peaks, TFLOP/s per GPU (NVIDIA datasheets).
PEAK_TFLOPS_BF16 = {"A100": 312.0, "H100": 989.0, "H200": 989.0, "A10G": 125.0, "L4": 121.0}


def flops_per_token(n_params: int, n_layers: int, hidden: int, seq_len: int) -> float:
    return 6.0 * n_params + 12.0 * n_layers * hidden * seq_len


def mfu(tokens_per_s: float, flops_token: float, peak_flops: float) -> float:
    """Fraction of `peak_flops` (all devices together) spent on useful model FLOPs."""
    return tokens_per_s * flops_token / peak_flops if peak_flops > 0 else 0.0


def gpu_peak_tflops(device_name: str) -> float | None:
    """Peak for a CUDA device name such as 'NVIDIA A100-SXM4-80GB' (None if unknown)."""
    for key, value in PEAK_TFLOPS_BF16.items():
        if key in device_name.upper():
            return value
    return None


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
    """Sums over the optimizer steps since the last log line."""

    start: float = field(default_factory=time.perf_counter)
    loss_sum: float = 0.0
    micro_batches: int = 0
    tokens: int = 0  # every position of every sequence fed (padding included)
    real_tokens: int = 0  # non-padding tokens

    def add(self, loss: float, tokens: int, real_tokens: int) -> None:
        self.loss_sum += loss
        self.micro_batches += 1
        self.tokens += tokens
        self.real_tokens += real_tokens

    def summary(self, world_size: int, flops_token: float, peak_flops_per_worker: float) -> dict:
        """Metrics of this worker's window scaled to the whole group (workers run in lockstep)."""
        seconds = max(time.perf_counter() - self.start, 1e-9)
        tokens_s = self.tokens * world_size / seconds
        real_s = self.real_tokens * world_size / seconds
        return {"loss": self.loss_sum / max(self.micro_batches, 1), "tokens_per_s": tokens_s,
                "real_tokens_per_s": real_s, "window_s": seconds,
                "mfu": mfu(real_s, flops_token, peak_flops_per_worker * world_size)}
