"""Hypothesis strategies and checks shared by the encoder property tests.

Every random value inside a property test comes from a value hypothesis drew (a NumPy or torch
generator seeded with it), never from a global generator: hypothesis does not seed those, and
a failure must replay from the example it prints.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from hypothesis import strategies as st
from reference import scale_invariant_projection


@dataclass
class Stream:
    """A token stream cut into chunks, possibly starting late with a sparse history.

    ``history_positions`` / ``history_values`` are the only non-zero tokens before ``start``
    (so a state at t = 10^6 has a cheap float64 reference); ``x`` (T, C) are the tokens at
    ``start ..``, fed in the chunks given by ``cuts``.
    """

    order: int
    start: int
    history_positions: np.ndarray
    history_values: np.ndarray
    x: np.ndarray
    cuts: list[int]

    @property
    def chunks(self) -> list[np.ndarray]:
        return np.split(self.x, self.cuts)

    def signal_until(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """Positions and values of every token before ``t`` (history and stream)."""
        n = t - self.start
        positions = np.concatenate([self.history_positions, np.arange(self.start, t)])
        return positions, np.concatenate([self.history_values, self.x[:n]])


@st.composite
def streams(draw, max_order: int = 16, max_tokens: int = 80) -> Stream:
    order = draw(st.integers(1, max_order))
    tokens = draw(st.integers(1, max_tokens))
    channels = draw(st.integers(1, 3))
    start = draw(st.one_of(st.just(0), st.integers(1, 300), st.integers(10**5, 10**6)))
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, tokens - 1)), max_size=6)))) if tokens > 1 else []
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    history = np.unique(rng.integers(0, start, size=draw(st.integers(1, 8)))) if start else np.zeros(0, int)
    return Stream(
        order=order,
        start=start,
        history_positions=history,
        history_values=rng.standard_normal((len(history), channels)),
        x=rng.standard_normal((tokens, channels)),
        cuts=cuts,
    )


def relative_error(actual: torch.Tensor, expected: np.ndarray | torch.Tensor) -> float:
    """‖actual - expected‖ / ‖expected‖ over the whole tensor, in float64."""
    expected = torch.as_tensor(expected, dtype=torch.float64)
    actual = actual.detach().to(torch.float64)
    return float((actual - expected).norm() / expected.norm().clamp_min(1e-300))


def check_exact_projection(encoder, stream: Stream, beta: float, rtol: float = 1e-9) -> None:
    """After every chunk the float64 state equals the projection of the token signal computed
    from its definition (:func:`reference.scale_invariant_projection`)."""

    def reference_state(t: int) -> np.ndarray:
        return scale_invariant_projection(*stream.signal_until(t), t, stream.order, beta)

    channels = stream.x.shape[1]
    if stream.start:
        state = torch.from_numpy(reference_state(stream.start))
    else:
        state = encoder.init_state(channels=channels, dtype=torch.float64)
    t = stream.start
    for chunk in stream.chunks:
        state = encoder.update(state, torch.from_numpy(chunk), t)
        t += len(chunk)
        assert state.shape == (stream.order, channels)
        err = relative_error(state, reference_state(t))
        assert err <= rtol, f"relative error {err:.3g} at t = {t}"


def check_chunking_and_scan(
    encoder, x: torch.Tensor, cuts: list[int], block: int, t0: int, rtol: float, seed: int
) -> None:
    """One update == updates over the chunks == the last state of ``scan`` (and every scan state
    equals the update state at its block boundary); ``x`` is (..., T, C). When ``t0 > 0`` the
    stream continues a random state drawn from ``seed`` (a drawn value, so a failure replays)."""
    batch, (tokens, channels) = x.shape[:-2], x.shape[-2:]
    start = encoder.init_state(*batch, channels=channels, dtype=x.dtype)
    if t0:  # a non-empty state
        start = torch.randn(start.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype)
    whole = encoder.update(start, x, t0)
    state, t = start, t0
    for chunk in torch.tensor_split(x, cuts, dim=-2):
        state = encoder.update(state, chunk, t)
        t += chunk.shape[-2]
    assert relative_error(state, whole) <= rtol
    scanned = encoder.scan(x, block, t0=t0, state=start)
    assert scanned.shape == (*batch, -(-tokens // block), encoder.order, channels)
    assert relative_error(scanned[..., -1, :, :], whole) <= rtol
    state = start
    for i, lo in enumerate(range(0, tokens, block)):
        state = encoder.update(state, x[..., lo : lo + block, :], t0 + lo)
        assert relative_error(scanned[..., i, :, :], state) <= rtol
