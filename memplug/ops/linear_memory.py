"""Compressive matrix memory read by linear attention (Infini-attention, arXiv 2404.07143).

Per head the memory is a matrix ``M`` (D_k, D_v) and a normaliser ``z`` (D_k,). With the
feature map ``sigma(x) = elu(x) + 1`` (positive, so the normaliser is positive):

- retrieval (paper eq. 3): ``A_mem = sigma(Q) M / (sigma(Q) z)``;
- linear update (eq. 4): ``M <- M + sigma(K)^T V``, ``z <- z + sum_t sigma(K_t)``;
- delta-rule update (eq. 5): ``M <- M + sigma(K)^T (V - sigma(K) M / (sigma(K) z))``, same ``z``:
  the values already retrievable for these keys are subtracted before they are added.

The empty memory (``M = 0``, ``z = 0``) retrieves zeros: the denominator is clamped at ``eps``
as in the public PyTorch port (lucidrains/infini-transformer-pytorch), so ``0 / eps = 0``.
Pure functions; a float64 NumPy reference lives in the tests.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["feature_map", "linear_retrieve", "linear_update"]


def feature_map(x: Tensor) -> Tensor:
    """``elu(x) + 1``, the positive feature map of linear attention (Katharopoulos et al.)."""
    return F.elu(x) + 1.0


def linear_retrieve(phi_q: Tensor, memory: Tensor, norm: Tensor, eps: float = 1e-6) -> Tensor:
    """``phi_q M / max(phi_q z, eps)``.

    ``phi_q`` (..., L, Dk) features of the queries, ``memory`` (..., Dk, Dv), ``norm`` (..., Dk).
    Returns (..., L, Dv).
    """
    num = phi_q @ memory  # (..., L, Dv)
    den = (phi_q @ norm.unsqueeze(-1)).clamp_min(eps)  # (..., L, 1)
    return num / den


def linear_update(
    memory: Tensor, norm: Tensor, phi_k: Tensor, v: Tensor, delta: bool = True, eps: float = 1e-6
) -> tuple[Tensor, Tensor]:
    """Absorb one segment: features ``phi_k`` (..., L, Dk) and values ``v`` (..., L, Dv).

    Returns the new ``(memory (..., Dk, Dv), norm (..., Dk))``; ``delta`` selects the delta rule.
    """
    if delta:
        v = v - linear_retrieve(phi_k, memory, norm, eps)
    return memory + phi_k.transpose(-1, -2) @ v, norm + phi_k.sum(dim=-2)
