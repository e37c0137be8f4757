"""The fused (one Triton kernel) block scan against the sequential scan, its reference.

The kernel runs here under Triton's interpreter on the CPU: ``TRITON_INTERPRET=1`` has to be set
before Triton builds it, so those checks run in a fresh Python process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from memplug.hippo import fused_scan
from memplug.hippo.scan import linear_recurrence

pytest.importorskip("triton")

CHECKS = textwrap.dedent(
    """
    import torch
    from memplug.hippo import fused_scan
    from memplug.hippo.scan import linear_recurrence
    from memplug.hippo.scale_invariant import ScaleInvariantMeasure
    from memplug.plugins.encoders.legs import LegS

    torch.manual_seed(0)
    B = fused_scan.BLOCK

    def both(A, u, c0, lower):
        # states and gradients (of u, and of c0 when given) of both methods, for one loss
        w = torch.randn(u.shape, generator=torch.Generator().manual_seed(1))
        out = {}
        for method in ("sequential", "fused"):
            leaves = [u.detach().requires_grad_()] + ([c0.detach().requires_grad_()] if c0 is not None else [])
            states = linear_recurrence(A, leaves[0], leaves[1] if c0 is not None else None, method=method, lower=lower)
            out[method] = [states.detach(), *torch.autograd.grad((states * w).sum(), leaves)]
        return out

    # dense and LegS (lower-triangular) transitions; N and C off the tile size; a shared A
    # expanded over a batch; one start state; a single step
    cases = [(8, 5, 4, False, False, ()), (40, 33, 3, True, True, ()), (70, 20, 5, True, False, (2,)),
             (37, 3, 6, False, True, (2,)), (16, 16, 1, True, False, ())]
    for n, c, nb, lower, start, batch in cases:
        if lower:
            spans = [(i * 16, (i + 1) * 16) for i in range(nb)]
            A = ScaleInvariantMeasure(n).span_transitions(spans, torch.float32, torch.device("cpu"))
        else:
            A = torch.randn(nb, n, n) / n ** 0.5
        u = torch.randn(*batch, nb, n, c)
        c0 = torch.randn(*batch, n, c) if start else None
        out = both(A, u, c0, lower)
        scale = max(x.abs().max().item() for x in out["sequential"])
        for ref, got in zip(out["sequential"], out["fused"]):
            assert ref.shape == got.shape
            assert (ref - got).abs().max().item() <= 1e-5 * scale, (n, c, nb, lower, start, batch)

    # the tile skipping: a dense A promised lower triangular is read as its tile-lower part,
    # (its transpose, in the backward, as the tile-upper part); an error in the skipped range shows
    n, nb = 2 * B + 5, 3
    A = torch.randn(nb, n, n) / n ** 0.5
    tiles = torch.arange(n) // B
    kept = A * (tiles[None, :] <= tiles[:, None])  # rows' tile >= columns' tile
    u = torch.randn(nb, n, 4)
    skipped, reference = both(A, u, None, True)["fused"], both(kept, u, None, False)["sequential"]
    for ref, got in zip(reference, skipped):
        assert (ref - got).abs().max().item() <= 1e-5 * ref.abs().max().item()
    assert (both(A, u, None, False)["sequential"][0] - skipped[0]).abs().max() > 1e-3  # the skip matters

    # the encoder's option: LegS with scan_method="fused" scans as the sequential one does
    x = torch.randn(2, 5 * 24 + 7, 6)
    ref = LegS(48, scan_method="sequential").scan(x, 24)
    got = LegS(48, scan_method="fused").scan(x, 24)
    assert (ref - got).abs().max().item() <= 1e-5 * ref.abs().max().item()
    print("ok")
    """
)


def test_fused_scan_equals_the_sequential_scan_under_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    done = subprocess.run([sys.executable, "-c", CHECKS], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def test_fused_scan_refuses_what_it_cannot_run(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    A, u = torch.eye(4).expand(3, 4, 4), torch.randn(3, 4, 2)
    with pytest.raises(ValueError, match="scan_method 'fused' runs on CUDA .* not on cpu"):
        linear_recurrence(A, u, method="fused")
    with pytest.raises(ValueError, match="scan_method 'fused' runs float32 states"):
        linear_recurrence(A.double(), u.double(), method="fused")
    with pytest.raises(ValueError, match="precision 'bf16x6'"):
        linear_recurrence(A, u, method="fused", precision="bf16x6")
    with pytest.raises(ValueError, match="without a gradient"):
        linear_recurrence(A.clone().requires_grad_(), u, method="fused")
    with pytest.raises(ValueError, match="shape must be one of"):
        fused_scan.fused_steps(u[None].clone(), A[None], shape="diagonal")
