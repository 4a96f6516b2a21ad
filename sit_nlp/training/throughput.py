"""The one MFU denominator: the dense matmul ceiling measured on the machine itself.

Model FLOPs utilisation is achieved FLOP/s over the best FLOP/s this device reaches on a large dense
matmul in the precision of training (bf16 ``8192^3`` on a GPU, fp32 ``1024^3`` on a CPU), measured in the
same process. ``sit-nlp train`` (its ``mfu`` column, unless ``train.peak_tflops`` is given) and
``benchmarks/gpu_throughput.py`` both divide by this number, so their MFUs are comparable.
"""

from __future__ import annotations

import time

import torch

__all__ = ["matmul_ceiling", "synchronize"]


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_ceiling(device: torch.device, small: bool | None = None) -> float:
    """Best measured dense matmul TFLOP/s on ``device``: bf16 ``8192^3`` (20 tries of 10) on a GPU, fp32
    ``1024^3`` (3 tries) on a CPU or where ``small``."""
    small = device.type != "cuda" if small is None else small
    n, dtype = (1024, torch.float32) if small else (8192, torch.bfloat16)
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    reps = 1 if small else 10
    best = float("inf")
    for _ in range(3 if small else 20):
        synchronize(device)
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        synchronize(device)
        best = min(best, (time.perf_counter() - t) / reps)
    return 2 * n**3 / best / 1e12
