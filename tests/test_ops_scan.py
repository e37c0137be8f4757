"""memplug.hippo.scan: sequential and doubling block recurrences equal a NumPy loop, and each other
in values and gradients."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from reference import linear_recurrence as reference

from memplug.hippo import scan
from memplug.hippo.scan import linear_recurrence, linear_recurrence_parallel, linear_recurrence_sequential


@st.composite
def recurrences(draw):
    nb, n, c = draw(st.integers(1, 19)), draw(st.integers(1, 6)), draw(st.integers(1, 4))
    batch = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
    shared = draw(st.booleans())  # one set of transitions for every sequence
    start = draw(st.booleans())
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    # scaled so that products of up to 19 transitions stay O(1)
    A = torch.randn(*(() if shared else batch), nb, n, n, generator=gen, dtype=torch.float64) / (n**0.5 + 0.5)
    u = torch.randn(*batch, nb, n, c, generator=gen, dtype=torch.float64)
    c0 = torch.randn(*batch, n, c, generator=gen, dtype=torch.float64) if start else None
    return A, u, c0


@given(recurrences())
def test_sequential_and_parallel_equal_reference(case):
    A, u, c0 = case
    expected = torch.from_numpy(reference(A.numpy(), u.numpy(), None if c0 is None else c0.numpy()))
    for method in (linear_recurrence_sequential, linear_recurrence_parallel):
        torch.testing.assert_close(method(A, u, c0), expected, rtol=1e-12, atol=1e-12)


def _grads_by_method(A, u, c0, loss):
    """Gradients of ``loss(states)`` w.r.t. (A, u, c0), leaves as given, for each scan method."""
    out = []
    for method in ("sequential", "parallel"):
        leaves = [None if x is None else x.detach().clone().requires_grad_(x.requires_grad) for x in (A, u, c0)]
        loss(linear_recurrence(*leaves, method=method)).backward()
        out.append([None if x is None else x.grad for x in leaves])
    return out


@given(recurrences())
def test_gradients_agree(case):
    A, u, c0 = case
    weight = lambda out: (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum()  # noqa: E731
    seq, par = _grads_by_method(A, u.requires_grad_(), None if c0 is None else c0.requires_grad_(), weight)
    assert seq[1] is not None and par[1] is not None
    torch.testing.assert_close(seq[1], par[1], rtol=1e-12, atol=1e-12)
    if c0 is not None:
        assert seq[2] is not None and par[2] is not None
        torch.testing.assert_close(seq[2], par[2], rtol=1e-12, atol=1e-12)


@given(recurrences())
def test_transitions_with_gradient_get_it(case):
    # the hand-written backward is for constant transitions; learnable ones take autograd's path
    A, u, c0 = case
    seq, par = _grads_by_method(A.requires_grad_(), u.requires_grad_(), c0, lambda out: out.square().sum())
    if u.shape[-3] > 1 or c0 is not None:  # A acts on a state: both methods must give it a gradient
        assert seq[0] is not None and par[0] is not None
    # None: A never acts (nb = 1, no c0)
    torch.testing.assert_close(*(torch.zeros_like(A) if g[0] is None else g[0] for g in (seq, par)), rtol=1e-10, atol=1e-10)


@given(recurrences(), st.integers(1, 3))
def test_lower_triangular_steps_equal_dense(case, rows):
    """``lower=True`` with row chunks of 1..3 (so N up to 6 splits into several) gives the dense
    scan's states and gradients for lower-triangular transitions; split into chunks, it never
    reads the blocks right of a chunk's last row (garbage there must not leak in)."""
    A, u, c0 = case
    lower = A.tril()
    n = A.shape[-1]
    chunk_end = (torch.arange(n) // rows + 1) * rows  # per row: one past its chunk's last row
    skipped = (torch.arange(n)[None, :] >= chunk_end[:, None]) & (n > rows)  # one chunk is the dense call
    garbage = lower.masked_fill(skipped, float("nan"))
    weight = lambda out: (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum()  # noqa: E731
    results = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(scan, "TRIANGULAR_ROWS", rows)
        for transitions, flag in ((lower, False), (garbage, True)):
            leaves = [transitions] + [None if x is None else x.detach().clone().requires_grad_() for x in (u, c0)]
            out = linear_recurrence_sequential(*leaves, lower=flag)
            weight(out).backward()
            results.append([out] + [x.grad for x in leaves[1:] if x is not None])
    for dense, skipped in zip(*results):
        torch.testing.assert_close(skipped, dense, rtol=1e-12, atol=1e-12)


def test_scale_invariant_transitions_are_lower_triangular():
    from memplug.hippo.scale_invariant import ScaleInvariantMeasure

    for beta in (0.0, 1.5):
        m = ScaleInvariantMeasure(order=24, beta=beta)
        M = m.transition(torch.tensor([0.25, 7 / 8]))
        assert m.lower_triangular and (M.triu(1) == 0).all() and (M.diagonal(dim1=-2, dim2=-1) > 0).all()


def test_float32_and_auto_method():
    A = torch.randn(5, 3, 3) / 3
    u = torch.randn(2, 5, 3, 4)
    out = linear_recurrence(A, u)
    assert out.dtype == torch.float32 and out.shape == (2, 5, 3, 4)
    torch.testing.assert_close(out, linear_recurrence_parallel(A, u), rtol=1e-5, atol=1e-5)


def test_out_of_place_triangular_steps_equal_the_in_place_scan_and_run_compiled():
    """The out-of-place steps that a compiled graph runs (row chunks against the columns up to
    their last row, N = 200: two chunks) equal the in-place scan with its start state, forward and
    backward, called directly and under torch.compile."""
    from memplug.hippo.scale_invariant import ScaleInvariantMeasure

    n, nb = 2 * scan.TRIANGULAR_ROWS - 56, 4
    A = ScaleInvariantMeasure(order=n).span_transitions([(i * 8, (i + 1) * 8) for i in range(nb)], torch.float32,
                                                        torch.device("cpu"))
    u, c0 = torch.randn(nb, n, 3), torch.randn(n, 3)
    weight = torch.randn(nb, n, 3)

    def run(fn):
        leaves = [u.clone().requires_grad_(), c0.clone().requires_grad_()]
        states = fn(*leaves)
        return [states.detach(), *torch.autograd.grad((states * weight).sum(), leaves)]

    reference = run(lambda u, c0: linear_recurrence_sequential(A, u, c0, lower=True))
    direct = run(lambda u, c0: scan._steps(A[None], u[None], c0[None], scan._row_chunks(n))[0])
    compiled = run(torch.compile(lambda u, c0: linear_recurrence_sequential(A, u, c0, lower=True)))
    torch._dynamo.reset()
    for ref, one, other in zip(reference, direct, compiled):
        torch.testing.assert_close(one, ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(other, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "device, blocks, order, channels, method",
    [
        ("cpu", 128, 64, 512, "sequential"),  # the CPU: always the least work
        ("meta", 16, 64, 4096, "sequential"),  # Elastic 1x, 16 blocks: the doubling makes more calls
        ("meta", scan.PARALLEL_MIN_STEPS - 1, 64, 4096, "sequential"),
        ("meta", scan.PARALLEL_MIN_STEPS, 64, 4096, "parallel"),  # many small steps: fewer calls
        ("meta", 128, 1024, 4096, "sequential"),  # steps that fill the device: the least work
    ],
)
def test_auto_method_on_an_accelerator(device, blocks, order, channels, method):
    # "meta" stands in for an accelerator: anything but the CPU
    assert scan._auto_method(torch.empty(blocks, order, channels, device=device)) == method


@pytest.mark.parametrize(
    "A, u, kwargs",
    [
        (torch.zeros(3, 2, 2), torch.zeros(4, 2, 1), {}),  # nb differs
        (torch.zeros(3, 2, 3), torch.zeros(3, 2, 1), {}),  # A not square
        (torch.zeros(3, 2, 2), torch.zeros(3, 2, 1), {"c0": torch.zeros(3, 1)}),  # c0 wrong N
        (torch.zeros(3, 2, 2), torch.zeros(3, 2, 1), {"method": "fast"}),
    ],
)
def test_bad_shapes_and_methods_are_value_errors(A, u, kwargs):
    with pytest.raises(ValueError):
        linear_recurrence(A, u, **kwargs)


def test_bf16x6_operands_are_the_six_products_of_the_parts():
    """One matmul of the bf16x6 operands is the sum of the six part products, float32-exact (a
    single bf16 product is not), and any prefix of 6m contraction columns is the product of the
    first m columns (what a triangular step slices)."""
    gen = torch.Generator().manual_seed(0)
    a, c = torch.randn(2, 5, 7, generator=gen), torch.randn(2, 7, 3, generator=gen)
    a6, c6 = scan.bf16x6_operands(a, c)
    assert a6.dtype == c6.dtype == torch.bfloat16 and a6.shape == (2, 5, 42) and c6.shape == (2, 42, 3)
    pa, pc = (torch.stack(scan._bf16_parts(x)).float() for x in (a, c))  # (3, ...) each
    assert torch.equal(pa.sum(0), a) and torch.equal(pc.sum(0), c)  # three bf16 parts hold float32
    six = sum(pa[i] @ pc[j] for i in range(3) for j in range(3) if i + j < 3)
    torch.testing.assert_close(a6.float() @ c6.float(), six, rtol=1e-6, atol=1e-6)
    exact = a.double() @ c.double()
    error = lambda x: float((x.double() - exact).norm() / exact.norm())  # noqa: E731
    assert error(a6.float() @ c6.float()) < 4 * error(a @ c) + 1e-7 < error(a.bfloat16().float() @ c.bfloat16().float())
    torch.testing.assert_close(a6[..., :18].float() @ c6[:, :18].float(), a[..., :3] @ c[:, :3], rtol=1e-5, atol=1e-6)


@given(recurrences(), st.integers(1, 3), st.booleans())
def test_bf16x6_scan_keeps_float32_accuracy(case, rows, triangular):
    """The split scan's states and gradients are as close to the float64 ones as float32's,
    dense or in triangular row chunks (whose skipped blocks hold NaN: never read)."""
    A, u, c0 = case
    n = A.shape[-1]
    if triangular:
        chunk_end = (torch.arange(n) // rows + 1) * rows
        skipped = (torch.arange(n)[None, :] >= chunk_end[:, None]) & (n > rows)
        A = A.tril()
    weight = lambda out: (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum()  # noqa: E731
    results = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(scan, "TRIANGULAR_ROWS", rows)
        for name, dtype, precision in (("exact", torch.float64, "float32"), ("float32", torch.float32, "float32"),
                                       ("bf16x6", torch.float32, "bf16x6")):
            transitions = A.to(dtype).masked_fill(skipped, float("nan")) if triangular else A.to(dtype)
            leaves = [None if x is None else x.detach().to(dtype).requires_grad_() for x in (u, c0)]
            out = linear_recurrence_sequential(transitions, leaves[0], leaves[1], lower=triangular, precision=precision)
            weight(out).backward()
            results[name] = [out] + [x.grad for x in leaves if x is not None]
    for exact, single, split in zip(results["exact"], results["float32"], results["bf16x6"]):
        gap = lambda x: (x.double() - exact).abs().max().item()  # noqa: E731
        assert gap(split) <= 4 * gap(single) + 1e-6 * (exact.abs().max().item() + 1e-3)


def test_bf16x6_through_an_encoder_and_its_refusals():
    from memplug.plugins.encoders.legs import LegS

    x = torch.randn(2, 700, 3, generator=torch.Generator().manual_seed(1))
    exact = LegS(300).scan(x.double(), 100)
    split = LegS(300, scan_precision="bf16x6").scan(x, 100)  # 300 rows: three triangular chunks of 128
    single = LegS(300).scan(x, 100)
    assert split.dtype == torch.float32
    assert (split.double() - exact).abs().max() <= 4 * (single.double() - exact).abs().max() + 1e-7
    from memplug.plugins.encoders.legt import LegT

    for encoder in (LegS, LegT):
        with pytest.raises(ValueError, match="scan_precision must be one of"):
            encoder(8, scan_precision="bf16")
        with pytest.raises(ValueError, match="scan_method must be one of"):
            encoder(8, scan_method="fast")
    legt = LegT(300, window=300.0)  # dense transitions: one bf16x6 product per step
    torch.testing.assert_close(LegT(300, window=300.0, scan_precision="bf16x6").scan(x, 100), legt.scan(x, 100),
                               rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="splits float32 operands"):
        LegS(8, scan_precision="bf16x6").scan(x.double(), 100)
    with pytest.raises(ValueError, match="needs the sequential scan"):
        linear_recurrence(torch.zeros(3, 2, 2), torch.zeros(3, 2, 1), method="parallel", precision="bf16x6")


def test_a_bf16_scan_stays_a_plain_bf16_scan():
    """bf16 states (a model run in bf16) take the plain products, not the bf16x6 split (whose
    operands are bf16 too): the dtype alone must not select the split."""
    A = (torch.randn(4, 300, 300, generator=torch.Generator().manual_seed(0)) / 30).tril()
    u = torch.randn(4, 300, 3, generator=torch.Generator().manual_seed(1))
    exact = linear_recurrence_sequential(A.double(), u.double(), lower=True)
    out = linear_recurrence_sequential(A.bfloat16(), u.bfloat16(), lower=True)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), exact, rtol=0.05, atol=0.05)
