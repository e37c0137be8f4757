"""Discretisation of a linear ODE ``c' = A c + B u`` over a step ``dt``, and its block form.

Every rule maps continuous ``(A, B, dt)`` to discrete ``(Ā, B̄)`` with ``c_{k+1} = Ā c_k + B̄ u_k``
for an input held constant over the step:

- ``euler``     forward Euler:  Ā = I + dt A,              B̄ = dt B
- ``backward``  backward Euler: Ā = (I - dt A)^-1,         B̄ = (I - dt A)^-1 dt B
- ``bilinear``  Tustin:         Ā = (I - dt/2 A)^-1 (I + dt/2 A), B̄ = (I - dt/2 A)^-1 dt B
- ``zoh``       zero-order hold, exact for piecewise-constant input:
                expm(dt [[A, B], [0, 0]]) = [[Ā, B̄], [0, I]]

The matrix exponential is SciPy's (``scipy.linalg.expm``, Al-Mohy & Higham scaling and
squaring), on a CPU copy: ``torch.linalg.matrix_exp`` in float64 was measured here (torch 2.13)
to be off by up to 3e-12 relative for 1-norms between about 0.01 and 0.4 (e.g. 2e-10 for
[[-0.049, 0.049], [0, 0]]), which a small window or a low order hits. Transitions are built
once per configuration and cached by their users, so the CPU round trip does not matter.

Shapes: ``A`` is (..., N, N); ``B`` is (..., N) (one input: a HiPPO measure is applied to each
channel separately); ``dt`` is a float or a tensor; the batch dims ``...`` of the three
broadcast. Everything is computed in float64 (the transitions are cached and reused for many
tokens, so their rounding error compounds) and returned in the floating dtype of ``A``;
pass float64 ``A`` and cast the result where it is used.

:func:`block_transition` gives the block form of a time-invariant system: for L tokens,
``c' = Ā^L c + Σ_j Ā^(L-1-j) B̄ x_j = Ā^L c + K x`` with ``K = [Ā^(L-1) B̄, ..., Ā B̄, B̄]``,
so a block of tokens is absorbed with one matmul.
"""

from __future__ import annotations

from collections.abc import Callable

import scipy.linalg
import torch
from torch import Tensor

__all__ = ["euler", "backward", "bilinear", "zoh", "DISCRETIZATIONS", "block_transition"]

Discretization = Callable[[Tensor, Tensor, "float | Tensor"], tuple[Tensor, Tensor]]


def _prepare(A: Tensor, B: Tensor, dt: float | Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Promote to float64: ``A`` (..., N, N), ``B`` as a column (..., N, 1), ``dt`` (..., 1, 1)."""
    if A.dim() < 2 or A.shape[-1] != A.shape[-2]:
        raise ValueError(f"A must be square (..., N, N), got shape {tuple(A.shape)}")
    if B.dim() < 1 or B.shape[-1] != A.shape[-1]:
        raise ValueError(f"B must be (..., N) with N = {A.shape[-1]}, got shape {tuple(B.shape)}")
    dt64 = torch.as_tensor(dt, dtype=torch.float64, device=A.device)
    if (dt64 <= 0).any():
        raise ValueError(f"dt must be > 0, got {dt}")
    return A.to(torch.float64), B.to(torch.float64).unsqueeze(-1), dt64[..., None, None]


def _finish(Ad: Tensor, Bd: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Back to the caller's dtype, ``B̄`` as a vector (..., N)."""
    return Ad.to(dtype), Bd.squeeze(-1).to(dtype)


def _out_dtype(A: Tensor) -> torch.dtype:
    return A.dtype if A.is_floating_point() else torch.get_default_dtype()


def _solve(lhs: Tensor, rhs: Tensor) -> Tensor:
    """``lhs^-1 rhs`` for broadcasting batches, one matrix at a time.

    torch 2.13's batched CPU ``linalg.solve`` was measured here to be silently wrong (about
    4e-3) or to fail on pivots for N >= 160 with two threads; single solves are exact.
    """
    batch = torch.broadcast_shapes(lhs.shape[:-2], rhs.shape[:-2])
    lhs = lhs.expand(*batch, *lhs.shape[-2:]).reshape(-1, *lhs.shape[-2:])  # (M, N, N)
    rhs = rhs.expand(*batch, *rhs.shape[-2:]).reshape(-1, *rhs.shape[-2:])  # (M, N, K)
    out = torch.stack([torch.linalg.solve(a, b) for a, b in zip(lhs, rhs)])  # (M, N, K)
    return out.reshape(*batch, *out.shape[-2:])


def euler(A: Tensor, B: Tensor, dt: float | Tensor) -> tuple[Tensor, Tensor]:
    """Forward Euler: first order, unstable for stiff A at large dt."""
    A64, B64, h = _prepare(A, B, dt)
    eye = torch.eye(A.shape[-1], dtype=torch.float64, device=A.device)
    return _finish(eye + h * A64, h * B64, _out_dtype(A))


def backward(A: Tensor, B: Tensor, dt: float | Tensor) -> tuple[Tensor, Tensor]:
    """Backward Euler: first order, A-stable."""
    A64, B64, h = _prepare(A, B, dt)
    eye = torch.eye(A.shape[-1], dtype=torch.float64, device=A.device)
    lhs = eye - h * A64  # (..., N, N)
    Ad = _solve(lhs, eye.expand_as(lhs))
    Bd = _solve(lhs, h * B64)
    return _finish(Ad, Bd, _out_dtype(A))


def bilinear(A: Tensor, B: Tensor, dt: float | Tensor) -> tuple[Tensor, Tensor]:
    """Bilinear (Tustin / trapezoid): second order, A-stable; the classic HiPPO choice."""
    A64, B64, h = _prepare(A, B, dt)
    eye = torch.eye(A.shape[-1], dtype=torch.float64, device=A.device)
    lhs = eye - (h / 2) * A64  # (..., N, N)
    Ad = _solve(lhs, eye + (h / 2) * A64)
    Bd = _solve(lhs, h * B64)
    return _finish(Ad, Bd, _out_dtype(A))


def zoh(A: Tensor, B: Tensor, dt: float | Tensor) -> tuple[Tensor, Tensor]:
    """Zero-order hold: exact when the input is constant over the step (a token signal)."""
    A64, B64, h = _prepare(A, B, dt)
    n = A64.shape[-1]
    batch = torch.broadcast_shapes(A64.shape[:-2], B64.shape[:-2], h.shape[:-2])
    block = torch.zeros(*batch, n + 1, n + 1, dtype=torch.float64, device=A.device)  # (..., N+1, N+1)
    block[..., :n, :n] = h * A64
    block[..., :n, n:] = h * B64
    E = torch.from_numpy(scipy.linalg.expm(block.cpu().numpy())).to(A.device)  # (..., N+1, N+1)
    return _finish(E[..., :n, :n], E[..., :n, n:], _out_dtype(A))


#: name -> rule, for ``discretization=`` options.
DISCRETIZATIONS: dict[str, Discretization] = {
    "euler": euler,
    "backward": backward,
    "bilinear": bilinear,
    "zoh": zoh,
}


def block_transition(Ad: Tensor, Bd: Tensor, length: int) -> tuple[Tensor, Tensor]:
    """``(Ā^L, K)`` for a block of ``L = length`` steps of ``c_{k+1} = Ā c_k + B̄ x_k``.

    ``Ad`` (..., N, N), ``Bd`` (..., N) (one input per system). Returns ``Ā^L`` (..., N, N) and
    ``K`` (..., N, L) with ``K[..., :, j] = Ā^(L-1-j) B̄``, so the state after the block is
    ``Ā^L c + K @ x`` for ``x`` (..., L, C). Built by binary doubling in O(N^2 L + N^3 log L)
    (``[Ā^b K_a, K_b]`` is the kernel of a block of ``a`` steps followed by ``b`` steps), in
    float64, returned in the dtype of ``Ad``.
    """
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    if Bd.dim() != Ad.dim() - 1 or Bd.shape[-1] != Ad.shape[-1]:
        raise ValueError(f"Bd must be (..., N) for Ad (..., N, N), got {tuple(Bd.shape)} and {tuple(Ad.shape)}")
    dtype = Ad.dtype
    A64, B64 = Ad.to(torch.float64), Bd.to(torch.float64)
    batch = torch.broadcast_shapes(A64.shape[:-2], B64.shape[:-1])
    n = Ad.shape[-1]
    eye = torch.eye(n, dtype=torch.float64, device=Ad.device)
    power = eye.expand(*batch, n, n)  # Ā^len(kernel)
    kernel = B64.new_zeros(*batch, n, 0)  # (..., N, 0)
    chunk_power = A64.expand(*batch, n, n)  # Ā^len(chunk)
    chunk = B64.expand(*batch, n).unsqueeze(-1)  # (..., N, 1): kernel of one step
    remaining = length
    while True:
        if remaining & 1:
            # the chunk's steps come after the kernel's: older contributions evolve through them
            kernel = torch.cat([chunk_power @ kernel, chunk], dim=-1)
            power = chunk_power @ power
        remaining >>= 1
        if not remaining:
            break
        chunk = torch.cat([chunk_power @ chunk, chunk], dim=-1)
        chunk_power = chunk_power @ chunk_power
    return power.to(dtype), kernel.to(dtype)
