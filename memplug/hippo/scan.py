"""Block linear recurrences ``c_{i+1} = A_i c_i + u_i``, and the block scan every measure runs.

An encoder's states at block boundaries obey such a recurrence: ``A_i`` is the block
transition (N, N) (the state map over the block with no input) and ``u_i`` the block's own
contribution (N, C). Two forms return every state after each step and are tested equal:

- :func:`linear_recurrence_sequential`: one matmul per step, O(nb N² C) work, the least work;
  with constant transitions each step is one in-place multiply-add (one kernel), or, with
  ``fused=True`` (``method="fused"``), all the steps are one Triton kernel
  (:mod:`memplug.hippo.fused_scan`, CUDA; this is its reference). With
  ``lower=True`` (lower-triangular transitions, as every scale-invariant measure has) a step
  multiplies by the nonzero part only: rows in chunks of :data:`TRIANGULAR_ROWS`, each against
  the columns up to its last row, about (k + 1) / 2k of the dense work for k chunks.
- :func:`linear_recurrence_parallel`: Hillis-Steele doubling on the associative composition
  ``(A2, u2) ∘ (A1, u1) = (A2 A1, A2 u1 + u2)``; ceil(log2 nb) rounds of batched matmuls,
  O(nb log nb (N³ + N² C)) work; fewer kernel launches than the sequential scan only for many
  steps (:data:`PARALLEL_MIN_STEPS`), when each step alone is too small to fill an accelerator.

Precision. The sequential scan with constant transitions can run its products in ``bf16x6``
(:data:`SCAN_PRECISIONS`): each float32 operand is written as three bf16 parts, ``x = x0 + x1 +
x2``, and the six products ``a_i c_j`` with ``i + j < 3`` are summed in float32. That is float32's
accuracy (over the 1M-token LegS stream its error is 1.3x float32's,
``benchmarks/scan_precision.py``) in matmuls that a GPU runs on its bf16 tensor cores, where a
float32 product runs on none. The six products are one matmul over a six-fold contraction
(:func:`bf16x6_operands`). On a CPU the bf16 products are emulated exactly in float32 (slower
than float32: for tests). ``"float32"`` (the default) is the plain product.

Shapes: ``A`` (..., nb, N, N), ``u`` (..., nb, N, C), ``c0`` (..., N, C) or ``None`` (zero);
the batch dims of ``A`` may be fewer than those of ``u`` (one set of transitions shared by every
sequence). The result is (..., nb, N, C): entry ``i`` is the state after step ``i``.

The block scan. Both measure bases (:mod:`memplug.hippo.scale_invariant`,
:mod:`memplug.hippo.time_invariant`) cut a token stream into blocks the same way and differ only
in their matrices; :func:`block_scan` and :func:`block_update` are that common skeleton. A
measure gives them a :class:`BlockRecurrence`: the transitions of spans of tokens and the
contribution of each span's tokens.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor

from ..util.checks import positive_int
from .fused_scan import fused_steps

__all__ = [
    "BlockRecurrence",
    "Span",
    "block_scan",
    "block_update",
    "check_stream",
    "linear_recurrence",
    "linear_recurrence_parallel",
    "linear_recurrence_sequential",
    "token_position",
    "SCAN_METHODS",
    "SCAN_PRECISIONS",
    "bf16x6_operands",
    "check_scan_options",
    "PARALLEL_BELOW",
    "PARALLEL_MIN_STEPS",
    "TRIANGULAR_ROWS",
]

SCAN_METHODS = ("auto", "sequential", "parallel", "fused")
SCAN_PRECISIONS = ("float32", "bf16x6")

def check_scan_options(method: str, precision: str) -> None:
    """An encoder's ``scan_method`` and ``scan_precision``: ValueError naming the one that is not
    in :data:`SCAN_METHODS` / :data:`SCAN_PRECISIONS`."""
    if method not in SCAN_METHODS:
        raise ValueError(f"scan_method must be one of {SCAN_METHODS}, got {method!r}")
    if precision not in SCAN_PRECISIONS:
        raise ValueError(f"scan_precision must be one of {SCAN_PRECISIONS}, got {precision!r}")


#: ``method="auto"`` runs the doubling scan on an accelerator only when one sequential step is
#: smaller than this many multiply-adds (batch x N² x C) and there are at least
#: :data:`PARALLEL_MIN_STEPS` steps. Above it a step fills the device, and the doubling's extra
#: work (N³ products, log2(nb) passes) costs more than it saves: at N = 1024 it does several
#: times the sequential work. An estimate from the kernel counts and sizes, not a GPU
#: measurement (``bash benchmarks/gpu_sweep.sh speed`` times both methods at 1x and 16x).
PARALLEL_BELOW = 2**27

#: The fewest steps at which ``method="auto"`` takes the doubling scan (on an accelerator, with
#: steps below :data:`PARALLEL_BELOW`): a training step (forward + backward) of the sequential scan
#: makes 2 nb + 5 operator calls, the doubling scan's about 11 per round of ceil(log2 nb), and the
#: doubling makes fewer from 27 steps on (``benchmarks/scan_methods.py``, docs/results/scan_methods.md).
#: Below that it launches more kernels *and* does 3-7x the multiply-adds: at Elastic's 1x (N = 64)
#: with 16 blocks, 47 calls against 37.
PARALLEL_MIN_STEPS = 27

#: Rows per chunk when a sequential step skips the zeros of a lower-triangular transition: at N =
#: 1024, 8 chunks do 9/16 of the dense multiply-adds in matmuls still large enough to run at full
#: speed; at N <= 128 the step stays one dense call.
TRIANGULAR_ROWS = 128

#: (t0, t1): the tokens t0 .. t1 - 1 of a stream.
Span = tuple[int, int]


def _check(A: Tensor, u: Tensor, c0: Tensor | None) -> None:
    if A.dim() < 3 or A.shape[-1] != A.shape[-2]:
        raise ValueError(f"A must be (..., nb, N, N), got shape {tuple(A.shape)}")
    if u.dim() < 3 or u.shape[-2] != A.shape[-1] or u.shape[-3] != A.shape[-3]:
        raise ValueError(f"u must be (..., nb, N, C) with nb, N = {A.shape[-3]}, {A.shape[-1]}; got {tuple(u.shape)}")
    if A.shape[-3] < 1:
        raise ValueError("the recurrence needs at least one step (nb >= 1)")
    if c0 is not None and (c0.dim() < 2 or c0.shape[-2:] != u.shape[-2:]):
        raise ValueError(f"c0 must be (..., N, C) = (..., {u.shape[-2]}, {u.shape[-1]}), got {tuple(c0.shape)}")


def linear_recurrence_sequential(
    A: Tensor, u: Tensor, c0: Tensor | None = None, lower: bool = False, precision: str = "float32",
    fused: bool = False,
) -> Tensor:
    """States (..., nb, N, C) of ``c_{i+1} = A_i c_i + u_i`` by one step at a time.

    With constant transitions (``A`` needs no gradient: every built-in encoder) the steps run in
    :class:`_ConstantTransitionScan`: the states are written in place into one buffer, one
    multiply-add per step, and its backward is the reverse recurrence written out the same way.
    ``lower=True`` promises lower-triangular transitions (zeros above the diagonal): those steps
    then skip the zero blocks right of each row chunk. ``precision="bf16x6"`` (float32 operands
    only) runs those products as split bf16 ones (module docstring). Transitions with a gradient
    take the dense float32 path. ``fused=True`` runs the steps of each direction in one Triton
    kernel (:func:`memplug.hippo.fused_scan.fused_steps`): float32 constant transitions only.
    Under ``torch.compile`` (float32 products) the steps run out of place, the triangular skip
    kept: the compiler fuses them itself, and in-place steps would each copy the whole buffer.
    """
    _check(A, u, c0)
    if precision not in SCAN_PRECISIONS:
        raise ValueError(f"precision must be one of {SCAN_PRECISIONS}, got {precision!r}")
    if precision != "float32" and u.dtype != torch.float32:
        raise ValueError(f"precision {precision!r} splits float32 operands; the states are {u.dtype}")
    if fused and (precision != "float32" or A.requires_grad or u.dtype != torch.float32):
        raise ValueError("scan_method 'fused' runs float32 states, float32 products and transitions without a "
                         f"gradient; got {u.dtype} states, precision {precision!r}, "
                         f"transitions {'with' if A.requires_grad else 'without'} a gradient")
    batch, (N, C) = u.shape[:-3], u.shape[-2:]
    A = A.expand(*batch, *A.shape[-3:]).reshape(-1, *A.shape[-3:])  # (B, nb, N, N), B = prod(batch)
    u = u.reshape(-1, *u.shape[-3:])  # (B, nb, N, C)
    c = None if c0 is None else c0.expand(*batch, N, C).reshape(-1, N, C)
    if A.requires_grad:
        states = _steps(A, u, c)
    elif torch.compiler.is_compiling() and precision == "float32":
        # in place, each step would be functionalized into a copy of the whole state buffer (the
        # compiled 16x model ran at half its eager speed); the out-of-place steps compile to the
        # eager scan's speed (benchmarks/scan_speed.py --compiled). The compiler generates its
        # own kernels, so the fused method takes this path too
        states = _steps(A, u, c, _row_chunks(N) if lower else None)
    else:
        shape = "lower" if lower else "dense"
        states = _ConstantTransitionScan.apply(A, u, c, _row_chunks(N) if lower else None, precision == "bf16x6",
                                               shape if fused else None)
    return states.reshape(*batch, *states.shape[-3:])


def _row_chunks(n: int) -> list[tuple[int, int]] | None:
    """Row ranges of :data:`TRIANGULAR_ROWS` covering ``n`` rows, or None when one chunk would do."""
    if n <= TRIANGULAR_ROWS:
        return None
    return [(r, min(n, r + TRIANGULAR_ROWS)) for r in range(0, n, TRIANGULAR_ROWS)]


#: bf16x6's six products a_i c_j (i + j < 3), as the part of the left operand and of the right one
_LEFT_PARTS, _RIGHT_PARTS = (0, 0, 1, 0, 1, 2), (0, 1, 0, 2, 1, 0)


def _bf16_parts(x: Tensor) -> list[Tensor]:
    """float32 ``x`` as three bf16 parts: x0 = bf16(x), x1 = bf16(x - x0), x2 = bf16(x - x0 - x1);
    x0 + x1 + x2 holds float32's 24 significant bits (each remainder is exact in float32)."""
    parts, rest = [], x
    for _ in range(3):
        parts.append(rest.to(torch.bfloat16))
        rest = rest - parts[-1].float()
    return parts


def _left_operand(a: Tensor) -> Tensor:
    """float32 (..., R, K) -> the bf16x6 left operand (..., R, 6K) (:func:`bf16x6_operands`)."""
    parts = _bf16_parts(a)
    return torch.stack([parts[i] for i in _LEFT_PARTS], -1).flatten(-2)


def _right_operand(c: Tensor) -> Tensor:
    """float32 (..., K, C) -> the bf16x6 right operand (..., 6K, C) (:func:`bf16x6_operands`)."""
    parts = _bf16_parts(c)
    return torch.stack([parts[j] for j in _RIGHT_PARTS], -2).flatten(-3, -2)


def bf16x6_operands(a: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """float32 ``a`` (..., R, K) and ``c`` (..., K, C) -> bf16 ``a6`` (..., R, 6K) and ``c6``
    (..., 6K, C) with ``a6 @ c6 = sum_{i + j < 3} a_i @ c_j`` (the parts of :func:`_bf16_parts`): the
    six products as one matmul over a six-fold contraction. Index ``k`` of the contraction becomes
    ``6k .. 6k + 5``, so the first ``6m`` columns of ``a6`` hold the products of ``a``'s first
    ``m`` columns (a triangular step slices both operands alike)."""
    return _left_operand(a), _right_operand(c)


def _add_product_(out: Tensor, a: Tensor, c: Tensor, split: bool) -> None:
    """``out += a @ c`` in place, batched. With ``split``, ``a`` and ``c`` are a bf16x6 pair whose
    products and sums are float32: on CUDA one tensor-core matmul with a float32 output, elsewhere
    emulated exactly (a bf16 x bf16 product is exact in float32)."""
    if not split:
        out.baddbmm_(a, c)
    elif a.device.type == "cuda":
        out += torch.bmm(a, c, out_dtype=torch.float32)
    else:
        out.baddbmm_(a.float(), c.float())


def _multiply_add_(out: Tensor, a: Tensor, c: Tensor, chunks: list[tuple[int, int]] | None,
                   upper: bool = False, split: bool = False) -> None:
    """``out += a @ c`` in place, (B, N, C) += (B, N, N) @ (B, N, C). With ``chunks`` (row ranges),
    ``a`` is triangular: lower, rows r0:r1 meet only columns :r1; ``upper``, only columns r0:. With
    ``split``, ``a`` is a bf16x6 left operand (B, N, 6N) and ``c`` (float32) is split to match."""
    k = 1
    if split:
        c, k = _right_operand(c), 6
    if chunks is None:
        _add_product_(out, a, c, split)
        return
    for r0, r1 in chunks:
        cols = slice(k * r0, None) if upper else slice(0, k * r1)
        _add_product_(out[:, r0:r1], a[:, r0:r1, cols], c[:, cols], split)


def _steps(A: Tensor, u: Tensor, c: Tensor | None, chunks: list[tuple[int, int]] | None = None) -> Tensor:
    """(B, nb, N, N), (B, nb, N, C), (B, N, C) or None -> (B, nb, N, C), out of place and
    differentiable in all. With ``chunks`` (row ranges) the transitions are lower triangular and
    rows r0:r1 meet only columns :r1 (their gradient above the diagonal is then left out)."""
    states = []
    # unbind, not indexing: the backward of nb index ops would write nb full-size zero tensors
    for a, step in zip(A.unbind(-3), u.unbind(-3)):  # (B, N, N), (B, N, C)
        if c is None:
            c = step
        elif chunks is None:
            c = torch.baddbmm(step, a, c)  # a @ c + step in one kernel
        else:
            c = step + torch.cat([a[:, r0:r1, :r1] @ c[:, :r1] for r0, r1 in chunks], dim=-2)
        states.append(c)
    return torch.stack(states, dim=-3)


class _ConstantTransitionScan(torch.autograd.Function):
    """The sequential recurrence for transitions without gradient. With ``g_i`` the total
    gradient of state ``i`` and ``G_i`` the gradient it receives directly:
    ``g_i = G_i + A_{i+1}^T g_{i+1}``, the gradient of ``u_i`` is ``g_i`` and that of ``c0`` is
    ``A_0^T g_0``. Both directions copy their input once, then each step is one multiply-add
    written in place (one kernel, or one per row chunk of a lower-triangular transition: no
    separate sum, no stack of the steps). With ``split`` the products are bf16x6 ones: the
    transitions (or their transposes, in the backward) are split once per call, each state
    once per step. With ``fused`` (the transitions' shape, ``"lower"`` or ``"dense"``) the steps
    after the first run in one Triton kernel per direction instead
    (:func:`memplug.hippo.fused_scan.fused_steps`)."""

    @staticmethod
    def forward(ctx, A: Tensor, u: Tensor, c0: Tensor | None, chunks: list[tuple[int, int]] | None,
                split: bool, fused: str | None) -> Tensor:
        # A (B, nb, N, N) (possibly expanded), u (B, nb, N, C), c0 (B, N, C) or None
        ctx.save_for_backward(A)
        ctx.has_start, ctx.chunks, ctx.split, ctx.fused = c0 is not None, chunks, split, fused
        left = _left_operand(A) if split else A  # (B, nb, N, N), or (B, nb, N, 6N) bf16
        states = u.clone(memory_format=torch.contiguous_format)  # (B, nb, N, C)
        if c0 is not None:
            _multiply_add_(states[:, 0], left[:, 0], c0, chunks, split=split)
        if fused:
            fused_steps(states, A, fused)
            return states
        for i in range(1, states.shape[1]):
            _multiply_add_(states[:, i], left[:, i], states[:, i - 1], chunks, split=split)
        return states

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[None, Tensor, Tensor | None, None, None, None]:
        (A,) = ctx.saved_tensors
        left = _left_operand(A.mT) if ctx.split else A.mT  # the transposes: upper triangular when A is lower
        g = grad.clone(memory_format=torch.contiguous_format)  # (B, nb, N, C)
        if ctx.fused:
            fused_steps(g, A.mT, "upper" if ctx.fused == "lower" else "dense", reverse=True)
        else:
            for i in range(g.shape[1] - 2, -1, -1):
                _multiply_add_(g[:, i], left[:, i + 1], g[:, i + 1], ctx.chunks, upper=True, split=ctx.split)
        start = None
        if ctx.has_start:
            start = torch.zeros_like(g[:, 0])
            _multiply_add_(start, left[:, 0], g[:, 0], ctx.chunks, upper=True, split=ctx.split)
        return None, g, start, None, None, None


def linear_recurrence_parallel(A: Tensor, u: Tensor, c0: Tensor | None = None) -> Tensor:
    """States (..., nb, N, C) of ``c_{i+1} = A_i c_i + u_i`` by an inclusive doubling scan.

    After the round with offset d, entry i holds the composition of steps max(0, i-2d+1) .. i,
    so after ceil(log2 nb) rounds it holds the prefix (P_i, v_i) with c_{i+1} = P_i c0 + v_i.
    """
    _check(A, u, c0)
    nb = u.shape[-3]
    prod, acc = A, u  # (..., nb, N, N), (..., nb, N, C)
    d = 1
    while d < nb:
        # (P_i, v_i) <- (P_i P_{i-d}, P_i v_{i-d} + v_i) for i >= d; the others are complete
        acc = torch.cat([acc[..., :d, :, :], prod[..., d:, :, :] @ acc[..., :-d, :, :] + acc[..., d:, :, :]], dim=-3)
        if c0 is not None or 2 * d < nb:  # the products are only needed again to apply c0
            prod = torch.cat([prod[..., :d, :, :], prod[..., d:, :, :] @ prod[..., :-d, :, :]], dim=-3)
        d *= 2
    if c0 is None:
        return acc
    return prod @ c0.unsqueeze(-3) + acc  # (..., nb, N, C)


def linear_recurrence(
    A: Tensor, u: Tensor, c0: Tensor | None = None, method: str = "auto", lower: bool = False,
    precision: str = "float32",
) -> Tensor:
    """States (..., nb, N, C) of ``c_{i+1} = A_i c_i + u_i``.

    ``method``: ``"sequential"``, ``"parallel"``, ``"fused"`` (the sequential scan, each
    direction's steps in one Triton kernel: CUDA, float32 constant transitions; not timed on a
    GPU yet, so never chosen by ``"auto"``), or ``"auto"``: sequential, except on an accelerator
    for at least :data:`PARALLEL_MIN_STEPS` steps each smaller than :data:`PARALLEL_BELOW`
    multiply-adds (then the doubling scan's fewer kernels pay for its extra work). ``lower``: the
    transitions are lower triangular (the sequential scans then skip their zeros; the doubling
    scan ignores it).
    ``precision``: one of :data:`SCAN_PRECISIONS`; only the sequential scan splits its products,
    so ``"auto"`` with ``"bf16x6"`` is sequential.
    """
    if precision not in SCAN_PRECISIONS:
        raise ValueError(f"precision must be one of {SCAN_PRECISIONS}, got {precision!r}")
    if method == "auto":
        method = _auto_method(u) if precision == "float32" else "sequential"
    if method in ("sequential", "fused"):
        return linear_recurrence_sequential(A, u, c0, lower, precision, fused=method == "fused")
    if method == "parallel":
        if precision != "float32":
            raise ValueError(f"precision {precision!r} needs the sequential scan, not method='parallel'")
        return linear_recurrence_parallel(A, u, c0)
    raise ValueError(f"method must be one of {SCAN_METHODS}, got {method!r}")


def _auto_method(u: Tensor) -> str:
    """``"parallel"`` on an accelerator for many small steps (:data:`PARALLEL_MIN_STEPS`,
    :data:`PARALLEL_BELOW`), else ``"sequential"``."""
    if u.device.type == "cpu" or u.shape[-3] < PARALLEL_MIN_STEPS:
        return "sequential"
    n, channels = u.shape[-2:]
    per_step = math.prod(u.shape[:-3]) * n * n * channels  # multiply-adds of one step
    return "parallel" if per_step < PARALLEL_BELOW else "sequential"


# ---- the block scan of a measure --------------------------------------------------------------


class BlockRecurrence(Protocol):
    """What a measure gives :func:`block_scan`: its order and, for spans of tokens, the
    transitions and the tokens' contributions. The measures cache both (training repeats the
    same spans at every step)."""

    order: int
    #: every transition is lower triangular (the scan then skips the zeros above the diagonal)
    lower_triangular: bool

    def span_transitions(self, spans: Sequence[Span], dtype: torch.dtype, device: torch.device) -> Tensor:
        """(k, N, N): for each span, the state map from its start to its end with no input."""

    def span_drive(self, blocks: Tensor, spans: Sequence[Span], dtype: torch.dtype) -> Tensor:
        """(..., k, L, C) tokens of k spans of equal length L -> (..., k, N, C) in ``dtype``: each
        span's tokens projected onto the state at the span's end. The tokens are projected in
        their own dtype (bf16 keys under autocast take a bf16 matmul with float32 accumulation,
        like every other projection of a model) and the result is cast to ``dtype``."""


def token_position(value: object, arg: str) -> int:
    """An int >= 0 from an int-like (Python, NumPy or 0-d integer tensor): a token position."""
    try:
        pos = operator.index(value.item() if isinstance(value, Tensor) and value.numel() == 1 else value)
    except TypeError:
        raise ValueError(f"{arg} must be an int >= 0 (a token position), got {value!r}") from None
    if pos < 0:
        raise ValueError(f"{arg} must be an int >= 0 (a token position), got {pos}")
    return pos


def check_stream(order: int, x: Tensor, t0: object, state: Tensor | None = None) -> int:
    """Validates tokens ``x`` (..., L, C), L >= 1, and a state (..., N, C) for them; returns
    ``t0`` as an int >= 0."""
    if x.dim() < 2 or x.shape[-2] < 1:
        raise ValueError(f"x must be (..., L, C) with L >= 1, got shape {tuple(x.shape)}")
    if state is not None and (state.dim() < 2 or state.shape[-2] != order or state.shape[-1] != x.shape[-1]):
        raise ValueError(
            f"state must be (..., N, C) = (..., {order}, {x.shape[-1]}) for x of shape "
            f"{tuple(x.shape)}, got {tuple(state.shape)}"
        )
    return token_position(t0, "t0")


def block_update(measure: BlockRecurrence, state: Tensor, x: Tensor, t0: object) -> Tensor:
    """The state (..., N, C) at ``t0 + L`` after the tokens ``x`` (..., L, C) at positions
    ``t0 ..``: ``A state + drive``, in the promoted dtype of state and x."""
    t0 = check_stream(measure.order, x, t0, state)
    dtype = torch.promote_types(state.dtype, x.dtype)
    span = [(t0, t0 + x.shape[-2])]
    transition = measure.span_transitions(span, dtype, x.device)[0]  # (N, N)
    return transition @ state.to(dtype) + measure.span_drive(x.unsqueeze(-3), span, dtype).squeeze(-3)


def block_scan(
    measure: BlockRecurrence, x: Tensor, block: int, t0: object = 0, state: Tensor | None = None, method: str = "auto",
    precision: str = "float32",
) -> Tensor:
    """States after every block of ``block`` tokens (the last may be shorter): (..., nb, N, C).

    ``x`` (..., T, C) holds the tokens at positions ``t0 ..``; ``state`` (..., N, C) the state at
    ``t0`` (``None``: the empty state). Every block's contribution comes from one batched call
    (:meth:`BlockRecurrence.span_drive`), then :func:`linear_recurrence` runs the transitions
    in the promoted dtype of state and x, its products in ``precision``
    (:data:`SCAN_PRECISIONS`). Without a state, the empty state counts as float32: bf16 tokens
    (keys under autocast) are still accumulated in float32, as they are after a float32 state.
    Equal to repeated :func:`block_update`.
    """
    t0 = check_stream(measure.order, x, t0, state)
    positive_int("block", block)
    if method not in SCAN_METHODS:
        raise ValueError(f"method must be one of {SCAN_METHODS}, got {method!r}")
    dtype = torch.promote_types(torch.float32 if state is None else state.dtype, x.dtype)
    full, rest = divmod(x.shape[-2], block)
    parts = []  # (spans, tokens (..., k, L, C)): the full blocks, then the shorter last one
    if full:
        spans = [(t0 + i * block, t0 + (i + 1) * block) for i in range(full)]
        parts.append((spans, x[..., : full * block, :].unflatten(-2, (full, block))))
    if rest:
        start = t0 + full * block
        parts.append(([(start, start + rest)], x[..., full * block :, :].unsqueeze(-3)))
    transitions = [measure.span_transitions(spans, dtype, x.device) for spans, _ in parts]  # (k, N, N) each
    drives = [measure.span_drive(tokens, spans, dtype) for spans, tokens in parts]  # (..., k, N, C) each
    return linear_recurrence(
        transitions[0] if len(parts) == 1 else torch.cat(transitions),  # no copy for one part
        drives[0] if len(parts) == 1 else torch.cat(drives, dim=-3),
        None if state is None else state.to(dtype),
        method=method,
        lower=measure.lower_triangular,
        precision=precision,
    )
