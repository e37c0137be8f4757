"""Which precision to compute in: bf16 autocast where the hardware does it fast, float32 elsewhere.

bf16 autocast pays only where matrix products are fast in bf16: CUDA GPUs with bf16 support,
and CPUs with native bf16 matrix instructions (Intel AMX, AVX512-BF16, Arm's BF16 extension).
On a CPU without them (many AMD and older Intel chips), torch emulates bf16 and a matmul runs
~30-100x slower than in float32, so a training step under bf16 autocast is ~10x slower.

``precision="auto"`` therefore decides by measuring: on the CPU, a 256x256 matmul is timed in
both dtypes once per process (~60 ms where bf16 is slow, ~1 ms where it is fast) and bf16 is
chosen only when it runs clearly faster than float32. The choice comes with a sentence saying
why, which every report header carries.

The environment variable ``MEMPLUG_PRECISION=bf16|fp32`` forces what ``"auto"`` resolves to on
every device (tests run the float32 and the bf16 path this way on any machine); an explicit
``"bf16"`` or ``"fp32"`` is always taken as given.
"""

from __future__ import annotations

import functools
import os
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch

__all__ = ["ENV", "PRECISIONS", "Precision", "autocast", "cpu_bf16_speedup", "resolve_precision"]

#: What a ``precision`` option accepts.
PRECISIONS = ("auto", "bf16", "fp32")
#: Forces the choice of ``"auto"``: ``bf16`` or ``fp32``.
ENV = "MEMPLUG_PRECISION"
#: bf16 must beat float32 by this factor in the micro-benchmark: autocast's casts cost something.
MIN_SPEEDUP = 1.25


@dataclass(frozen=True)
class Precision:
    """A resolved precision: ``name`` is ``"bf16"`` or ``"fp32"``; ``reason`` says why."""

    name: str
    reason: str

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype, or ``None`` for plain float32."""
        return torch.bfloat16 if self.name == "bf16" else None

    def __str__(self) -> str:
        return f"{self.name} ({self.reason})"


def _time_matmul(dtype: torch.dtype, n: int, reps: int) -> float:
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b  # the first call initialises the kernel library
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return best


@functools.cache
def cpu_bf16_speedup(n: int = 256, reps: int = 3) -> float:
    """How many times faster an (n, n) matmul runs in bf16 than in float32 on this CPU
    (below 1: slower). Measured once per process with the current torch threads."""
    return _time_matmul(torch.float32, n, reps) / _time_matmul(torch.bfloat16, n, reps)


def resolve_precision(precision: str = "auto", device: torch.device | str = "cpu") -> Precision:
    """The precision to use on ``device`` for ``precision`` in :data:`PRECISIONS`."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision != "auto":
        return Precision(precision, "as requested")
    forced = os.environ.get(ENV, "")
    if forced:
        if forced not in ("bf16", "fp32"):
            raise ValueError(f"{ENV} must be bf16 or fp32 (or unset); got {forced!r}")
        return Precision(forced, f"forced by {ENV}={forced}")
    device = torch.device(device)
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision("bf16", "this GPU supports bf16")
        return Precision("fp32", "this GPU has no bf16 support")
    if device.type != "cpu":
        return Precision("fp32", f"bf16 autocast is not chosen automatically on {device.type}")
    speedup = cpu_bf16_speedup()
    if speedup >= MIN_SPEEDUP:
        return Precision("bf16", f"a bf16 matmul ran {speedup:.1f}x faster than float32 on this CPU")
    return Precision("fp32", f"a bf16 matmul ran {1 / speedup:.1f}x slower than float32 on this CPU "
                             "(no native bf16 matrix instructions)" if speedup < 1 else
                             f"a bf16 matmul ran only {speedup:.2f}x as fast as float32 on this CPU")


def autocast(device: torch.device | str, precision: str | Precision) -> AbstractContextManager:
    """bf16 autocast on ``device`` when ``precision`` resolves to bf16, else a no-op context."""
    device = torch.device(device)
    resolved = precision if isinstance(precision, Precision) else resolve_precision(precision, device)
    if resolved.dtype is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=resolved.dtype)
