"""Block linear recurrences ``c_{i+1} = A_i c_i + u_i``, sequential and parallel.

An encoder's states at block boundaries obey such a recurrence: ``A_i`` is the block
transition (N, N) and ``u_i`` the block's own contribution (N, C). Both forms return every
state after each step and are tested equal:

- :func:`linear_recurrence_sequential`: one matmul per step, O(nb N² C) work; the cheapest
  when kernel launches are cheap (CPU).
- :func:`linear_recurrence_parallel`: Hillis-Steele doubling on the associative composition
  ``(A2, u2) ∘ (A1, u1) = (A2 A1, A2 u1 + u2)``; ceil(log2 nb) rounds of batched matmuls,
  O(nb log nb (N³ + N² C)) work; fewer, larger kernels (GPU).

Shapes: ``A`` (..., nb, N, N), ``u`` (..., nb, N, C), ``c0`` (..., N, C) or ``None`` (zero);
the batch dims of ``A`` may be fewer than those of ``u`` (one set of transitions shared by every
sequence). The result is (..., nb, N, C): entry ``i`` is the state after step ``i``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["linear_recurrence", "linear_recurrence_parallel", "linear_recurrence_sequential"]


def _check(A: Tensor, u: Tensor, c0: Tensor | None) -> None:
    if A.dim() < 3 or A.shape[-1] != A.shape[-2]:
        raise ValueError(f"A must be (..., nb, N, N), got shape {tuple(A.shape)}")
    if u.dim() < 3 or u.shape[-2] != A.shape[-1] or u.shape[-3] != A.shape[-3]:
        raise ValueError(f"u must be (..., nb, N, C) with nb, N = {A.shape[-3]}, {A.shape[-1]}; got {tuple(u.shape)}")
    if A.shape[-3] < 1:
        raise ValueError("the recurrence needs at least one step (nb >= 1)")
    if c0 is not None and (c0.dim() < 2 or c0.shape[-2:] != u.shape[-2:]):
        raise ValueError(f"c0 must be (..., N, C) = (..., {u.shape[-2]}, {u.shape[-1]}), got {tuple(c0.shape)}")


def linear_recurrence_sequential(A: Tensor, u: Tensor, c0: Tensor | None = None) -> Tensor:
    """States (..., nb, N, C) of ``c_{i+1} = A_i c_i + u_i`` by one step at a time.

    With constant transitions (``A`` needs no gradient: every built-in encoder) the steps run in
    :class:`_ConstantTransitionScan`, whose backward is the reverse recurrence written out: the
    same matmuls as autograd's, without one graph node per step and per slice.
    """
    _check(A, u, c0)
    batch, (N, C) = u.shape[:-3], u.shape[-2:]
    A = A.expand(*batch, *A.shape[-3:]).reshape(-1, *A.shape[-3:])  # (B, nb, N, N), B = prod(batch)
    u = u.reshape(-1, *u.shape[-3:])  # (B, nb, N, C)
    c = None if c0 is None else c0.expand(*batch, N, C).reshape(-1, N, C)
    if A.requires_grad:
        states = _steps(A, u, c)
    else:
        states = _ConstantTransitionScan.apply(A, u, c if c is not None else u.new_zeros(u.shape[0], N, C))
    return states.reshape(*batch, *states.shape[-3:])


def _steps(A: Tensor, u: Tensor, c: Tensor | None) -> Tensor:
    """(B, nb, N, N), (B, nb, N, C), (B, N, C) or None -> (B, nb, N, C), differentiable in all."""
    states = []
    # unbind, not indexing: the backward of nb index ops would write nb full-size zero tensors
    for a, step in zip(A.unbind(-3), u.unbind(-3)):  # (B, N, N), (B, N, C)
        c = step if c is None else torch.baddbmm(step, a, c)  # a @ c + step in one kernel
        states.append(c)
    return torch.stack(states, dim=-3)


class _ConstantTransitionScan(torch.autograd.Function):
    """:func:`_steps` for transitions without gradient. With ``g_i`` the total gradient of state
    ``i`` and ``G_i`` the gradient it receives directly: ``g_i = G_i + A_{i+1}^T g_{i+1}``, the
    gradient of ``u_i`` is ``g_i`` and that of ``c0`` is ``A_0^T g_0``."""

    @staticmethod
    def forward(ctx, A: Tensor, u: Tensor, c0: Tensor) -> Tensor:
        ctx.save_for_backward(A)
        states, c = [], c0
        for a, step in zip(A.unbind(-3), u.unbind(-3)):
            c = torch.baddbmm(step, a, c)
            states.append(c)
        return torch.stack(states, dim=-3)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[None, Tensor, Tensor]:
        (A,) = ctx.saved_tensors
        At = A.mT  # (B, nb, N, N)
        g = grad[:, -1]
        grads = [g]
        for i in range(grad.shape[1] - 2, -1, -1):
            g = torch.baddbmm(grad[:, i], At[:, i + 1], g)
            grads.append(g)
        return None, torch.stack(grads[::-1], dim=1), At[:, 0] @ g


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


def linear_recurrence(A: Tensor, u: Tensor, c0: Tensor | None = None, method: str = "auto") -> Tensor:
    """States (..., nb, N, C) of ``c_{i+1} = A_i c_i + u_i``.

    ``method``: ``"sequential"``, ``"parallel"``, or ``"auto"`` (sequential on the CPU, where
    it does the least work; parallel on accelerators, where it launches fewer kernels).
    """
    if method == "auto":
        method = "sequential" if u.device.type == "cpu" else "parallel"
    if method == "sequential":
        return linear_recurrence_sequential(A, u, c0)
    if method == "parallel":
        return linear_recurrence_parallel(A, u, c0)
    raise ValueError(f"method must be 'auto', 'sequential' or 'parallel', got {method!r}")
