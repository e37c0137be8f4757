"""The sequential block recurrence in one Triton kernel: every step of ``c_i = A_i c_{i-1} + u_i``.

:func:`memplug.hippo.scan.linear_recurrence_sequential` runs one multiply-add per step, and its
backward one more: 2 (nb - 1) kernel launches per call. A small model's eager training step on a
GPU is bound by such launches, not by their arithmetic (Elastic at 1x: N = 64, 16 blocks, 30
launches per layer for the scan). :func:`fused_steps` runs all the steps of one direction in a
single launch.

Each program owns a tile of ``BLOCK_C`` channels of one batch entry and walks the steps in
order: the channels are independent, so it never waits for another program. Within a step it
computes the rows of the new state tile by tile from the previous state, which it wrote itself
in the step before (a barrier between steps makes those writes visible to all its threads). The
products are float32 ("ieee": no TF32 rounding), so the result is the sequential scan's up to the
order of the float32 sums. A lower-triangular transition skips the tiles right of each row tile,
as the sequential scan skips its zero blocks; its transpose (the backward), the tiles left.

The state is updated in place in ``out`` (which holds the inputs ``u`` on entry), as the
sequential scan's autograd function does with its buffer; that function calls this one for its
steps when its ``method`` is ``"fused"`` (:mod:`memplug.hippo.scan`).

Runs on CUDA tensors, or on CPU tensors under Triton's interpreter (``TRITON_INTERPRET=1`` in the
environment when called: the tests). The kernel is built on first use, so importing this module
needs no Triton.
"""

from __future__ import annotations

import functools
import os

import torch
from torch import Tensor

__all__ = ["BLOCK", "SHAPES", "fused_available", "fused_steps"]

#: Rows, contraction and channels per tile (``tl.dot`` needs at least 16 in each).
BLOCK = 32


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def fused_available(device: torch.device) -> str | None:
    """None when the fused scan can run on ``device``, else why not (one line)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return "needs Triton, which is not installed"
    if torch.device(device).type != "cuda" and not _interpreted():
        return f"runs on CUDA (or under TRITON_INTERPRET=1), not on {torch.device(device).type}"
    return None


@functools.cache
def _kernel(interpreted: bool):
    """The Triton kernel, built on first use (Triton is imported only then); Triton decides when
    it builds a kernel whether its interpreter runs it, so each mode has its own."""
    import triton
    import triton.language as tl

    @triton.jit
    def recurrence(a_ptr, out_ptr, steps, n, channels,
                   sab, sai, sar, sak, sob, soi, son, soc,
                   LOWER: tl.constexpr, UPPER: tl.constexpr, REVERSE: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
        # out (B, nb, N, C) holds u on entry; A (B, nb, N, N) by strides: batch, step, row, column
        batch = tl.program_id(1)
        cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
        col_ok = cols < channels
        a_base = a_ptr + batch * sab
        o_base = out_ptr + batch * sob
        for s in range(1, steps):
            # forward: c_i = u_i + A_i c_(i-1); REVERSE (the backward): g_i = G_i + A_(i+1)^T g_(i+1),
            # with A passed transposed (strides swapped)
            if REVERSE:
                i = steps - 1 - s
                prev = i + 1
                a_step = i + 1
            else:
                i = s
                prev = i - 1
                a_step = i
            for r0 in range(0, n, BLOCK_N):
                rows = r0 + tl.arange(0, BLOCK_N)
                row_ok = rows < n
                tile = o_base + i * soi + rows[:, None] * son + cols[None, :] * soc
                mask = row_ok[:, None] & col_ok[None, :]
                acc = tl.load(tile, mask=mask, other=0.0)
                k_lo = r0 if UPPER else 0  # an upper-triangular matrix: nothing left of the diagonal tile
                k_hi = r0 + BLOCK_N if LOWER else n  # a lower-triangular one: nothing right of it
                for k0 in range(k_lo, k_hi, BLOCK_N):
                    ks = k0 + tl.arange(0, BLOCK_N)
                    k_ok = ks < n
                    a = tl.load(a_base + a_step * sai + rows[:, None] * sar + ks[None, :] * sak,
                                mask=row_ok[:, None] & k_ok[None, :], other=0.0)
                    c = tl.load(o_base + prev * soi + ks[:, None] * son + cols[None, :] * soc,
                                mask=k_ok[:, None] & col_ok[None, :], other=0.0)
                    acc += tl.dot(a, c, input_precision="ieee")
                tl.store(tile, acc, mask=mask)
            tl.debug_barrier()  # this step's state, written by all the program's threads, is read next

    return recurrence


#: What :func:`fused_steps` knows of the transitions: dense, or lower / upper triangular.
SHAPES = ("dense", "lower", "upper")


def fused_steps(out: Tensor, A: Tensor, shape: str = "dense", reverse: bool = False) -> None:
    """Runs the recurrence's steps in place, in one kernel: ``out`` (B, nb, N, C) float32 holds
    each step's input on entry and its state on return; ``A`` (B, nb, N, N) float32 (any strides,
    an expanded batch included).

    Forward (``reverse=False``): ``out[:, i] += A[:, i] @ out[:, i - 1]`` for i = 1 .. nb - 1 (entry 0
    is the first state as given). Backward (``reverse=True``, ``A`` the transposes):
    ``out[:, i] += A[:, i + 1] @ out[:, i + 1]`` for i = nb - 2 .. 0. ``shape``: ``"lower"`` or
    ``"upper"`` when ``A`` is triangular, so the kernel skips the zero tiles; ``"dense"`` else."""
    if out.dtype != torch.float32 or A.dtype != torch.float32:
        raise ValueError(f"the fused scan runs float32 states and transitions, got {out.dtype} and {A.dtype}")
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
    why = fused_available(out.device)
    if why is not None:
        raise ValueError(f"scan_method 'fused' {why}")
    batch, steps, n, channels = out.shape
    if steps < 2:
        return
    grid = (-(-channels // BLOCK), batch)
    _kernel(_interpreted())[grid](
        A, out, steps, n, channels, *A.stride(), *out.stride(),
        LOWER=shape == "lower", UPPER=shape == "upper", REVERSE=reverse, BLOCK_N=BLOCK, BLOCK_C=BLOCK,
    )
