"""Hypothesis strategies for memplug components, reusable in your own property tests.

Everything a contract check draws comes from here: token streams (C-channel vectors at
positions ``t0 .. t0+T-1``), token-id sequences, chunkings (ordered partitions of a length),
block lengths, start positions, sample positions inside a support, and dtypes.

Streams are drawn as small specifications (:class:`Stream`, :class:`TokenIds`: shape, kind,
seed) and turned into tensors on demand. Hypothesis then shrinks shapes and seeds rather than
thousands of floats, and a failing example prints as one readable line instead of a tensor
dump. :func:`token_streams` gives the tensors directly when that is all you need::

    from hypothesis import given
    from memplug.testing import strategies as mst

    @given(mst.token_streams(length=mst.block_lengths(1, 64), channels=3), mst.start_times())
    def test_my_measure(x, t0):
        ...
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypeVar

import torch
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy
from torch import Tensor

__all__ = [
    "STREAM_KINDS",
    "Stream",
    "TokenIds",
    "block_lengths",
    "chunkings",
    "dtypes",
    "positions",
    "start_times",
    "streams",
    "token_ids",
    "token_streams",
]

T = TypeVar("T")

#: The signal shapes a stream can have: white noise, a sum of a few slow sinusoids, a
#: polynomial ramp across the stream, and mostly zeros with a few spikes.
STREAM_KINDS = ("gaussian", "smooth", "ramp", "spikes")


def _strategy(value: T | SearchStrategy[T]) -> SearchStrategy[T]:
    return value if isinstance(value, SearchStrategy) else st.just(value)


@dataclass(frozen=True)
class Stream:
    """A reproducible token stream of shape (*batch, length, channels).

    ``kind`` is one of :data:`STREAM_KINDS`; ``seed`` fixes the values. :meth:`tensor`
    builds it in float64 and casts, so the float32 and float64 versions of one stream are the
    same signal up to rounding.
    """

    batch: tuple[int, ...]
    length: int
    channels: int
    kind: str
    seed: int

    @property
    def shape(self) -> tuple[int, ...]:
        return (*self.batch, self.length, self.channels)

    def tensor(self, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> Tensor:
        """The stream as a (*batch, length, channels) tensor."""
        gen = torch.Generator().manual_seed(self.seed)
        shape = self.shape
        if self.kind == "gaussian":
            x = torch.randn(shape, generator=gen, dtype=torch.float64)
        elif self.kind == "smooth":
            # a few sinusoids with periods between 4 tokens and the whole stream
            s = torch.arange(self.length, dtype=torch.float64)[:, None]  # (L, 1)
            freqs = torch.rand((3, *self.batch, 1, self.channels), generator=gen, dtype=torch.float64)
            freqs = 0.25 * freqs + 1.0 / max(self.length, 4)
            phases = 2 * math.pi * torch.rand(freqs.shape, generator=gen, dtype=torch.float64)
            x = torch.sin(2 * math.pi * freqs * s + phases).sum(0)  # (*batch, L, C)
        elif self.kind == "ramp":
            u = torch.linspace(-1.0, 1.0, self.length, dtype=torch.float64)[:, None]  # (L, 1)
            coef = torch.randn((3, *self.batch, 1, self.channels), generator=gen, dtype=torch.float64)
            x = coef[0] + coef[1] * u + coef[2] * u**2  # (*batch, L, C)
        elif self.kind == "spikes":
            mask = torch.rand(shape, generator=gen, dtype=torch.float64) < 0.1
            x = torch.randn(shape, generator=gen, dtype=torch.float64) * mask
        else:
            raise ValueError(f"kind must be one of {STREAM_KINDS}, got {self.kind!r}")
        return x.to(dtype=dtype, device=device)

    def __repr__(self) -> str:
        return f"Stream(shape={self.shape}, kind={self.kind!r}, seed={self.seed})"


@dataclass(frozen=True)
class TokenIds:
    """A reproducible (batch, length) sequence of token ids below ``vocab``."""

    batch: int
    length: int
    vocab: int
    seed: int

    def tensor(self, device: torch.device | str | None = None) -> Tensor:
        gen = torch.Generator().manual_seed(self.seed)
        return torch.randint(self.vocab, (self.batch, self.length), generator=gen).to(device)

    def __repr__(self) -> str:
        return f"TokenIds(shape=({self.batch}, {self.length}), vocab={self.vocab}, seed={self.seed})"


def dtypes(*choices: torch.dtype) -> SearchStrategy[torch.dtype]:
    """Floating dtypes; float32 and float64 unless ``choices`` are given."""
    return st.sampled_from(choices or (torch.float32, torch.float64))


def block_lengths(min_value: int = 1, max_value: int = 64) -> SearchStrategy[int]:
    """Block (chunk) lengths in tokens, ``min_value <= L <= max_value``; shrinks towards small."""
    if min_value < 1 or max_value < min_value:
        raise ValueError(f"need 1 <= min_value <= max_value, got min_value={min_value}, max_value={max_value}")
    return st.integers(min_value, max_value)


def start_times(max_value: int = 1_000_000) -> SearchStrategy[int]:
    """Absolute start positions ``t0``: mostly small, sometimes anywhere up to ``max_value``.

    Large values catch encoders with a hidden maximum context or a table that grows with
    the position.
    """
    if max_value < 0:
        raise ValueError(f"max_value must be >= 0, got {max_value}")
    return st.one_of(st.integers(0, min(64, max_value)), st.integers(0, max_value))


def chunkings(total: int | SearchStrategy[int], max_chunks: int | None = None) -> SearchStrategy[tuple[int, ...]]:
    """Ordered partitions of ``total`` tokens into positive chunk lengths (summing to ``total``).

    ``max_chunks`` bounds the number of chunks. Shrinks towards one chunk.
    """

    def partitions(n: int) -> SearchStrategy[tuple[int, ...]]:
        if n < 1:
            raise ValueError(f"total must be >= 1, got {n}")
        if n == 1:
            return st.just((1,))
        cuts = st.sets(st.integers(1, n - 1), max_size=None if max_chunks is None else max_chunks - 1)
        return cuts.map(lambda c: tuple(b - a for a, b in zip((0, *sorted(c)), (*sorted(c), n))))

    if max_chunks is not None and max_chunks < 1:
        raise ValueError(f"max_chunks must be >= 1, got {max_chunks}")
    return total.flatmap(partitions) if isinstance(total, SearchStrategy) else partitions(total)


def streams(
    length: int | SearchStrategy[int] = block_lengths(1, 64),
    channels: int | SearchStrategy[int] = st.integers(1, 3),
    batch: tuple[int, ...] | SearchStrategy[tuple[int, ...]] = st.sampled_from([(), (2,)]),
    kinds: tuple[str, ...] = STREAM_KINDS,
) -> SearchStrategy[Stream]:
    """Stream specifications (:class:`Stream`); call ``.tensor(dtype)`` for the values."""
    unknown = set(kinds) - set(STREAM_KINDS)
    if not kinds or unknown:
        raise ValueError(f"kinds must be a non-empty subset of {STREAM_KINDS}, got {kinds}")
    return st.builds(
        Stream,
        batch=_strategy(batch),
        length=_strategy(length),
        channels=_strategy(channels),
        kind=st.sampled_from(kinds),
        seed=st.integers(0, 2**16),
    )


def token_streams(
    length: int | SearchStrategy[int] = block_lengths(1, 64),
    channels: int | SearchStrategy[int] = st.integers(1, 3),
    batch: tuple[int, ...] | SearchStrategy[tuple[int, ...]] = st.sampled_from([(), (2,)]),
    dtype: torch.dtype | SearchStrategy[torch.dtype] = torch.float64,
) -> SearchStrategy[Tensor]:
    """Tensors (*batch, length, channels) of the kinds in :data:`STREAM_KINDS`."""
    return st.tuples(streams(length, channels, batch), _strategy(dtype)).map(lambda sd: sd[0].tensor(sd[1]))


def token_ids(
    vocab: int,
    length: int | SearchStrategy[int] = block_lengths(1, 64),
    batch: int | SearchStrategy[int] = st.integers(1, 2),
) -> SearchStrategy[TokenIds]:
    """Token-id sequence specifications (:class:`TokenIds`); call ``.tensor()`` for the ids."""
    if vocab < 1:
        raise ValueError(f"vocab must be >= 1, got {vocab}")
    return st.builds(TokenIds, batch=_strategy(batch), length=_strategy(length), vocab=st.just(vocab),
                     seed=st.integers(0, 2**16))


def positions(lo: float, hi: float, size: int | SearchStrategy[int] = st.integers(1, 8)) -> SearchStrategy[Tensor]:
    """Sorted float64 positions (size,) inside ``[lo, hi]``, end points included.

    Use ``positions(*encoder.support(t))`` for positions an encoder's basis must accept.
    """
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi < lo:
        raise ValueError(f"need finite lo <= hi, got lo={lo}, hi={hi}")
    points = st.one_of(st.floats(lo, hi), st.sampled_from([lo, hi, 0.5 * (lo + hi)]))
    return _strategy(size).flatmap(
        lambda n: st.lists(points, min_size=n, max_size=n).map(
            lambda v: torch.tensor(sorted(v), dtype=torch.float64)
        )
    )
