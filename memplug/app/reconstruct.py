"""``memplug reconstruct``: what each encoder keeps of a signal, and where each retriever reads it.

Two signals are streamed through every encoder (tokens of one channel):

- ``synthetic``: a seeded sum of three sinusoids with 1 to 6 cycles over the stream
  (band-limited, so a good measure rebuilds it almost exactly);
- the bytes of a real source file (CPython's ``os.py`` unless ``--file``), each byte mapped to
  a fixed random embedding (seeded) and one channel of it taken: the kind of signal a memory
  of keys and values actually sees, rough at every scale.

For each encoder the state after the last token is decoded over its whole support
(``basis(positions, t) @ state``) and each retriever's samples (``retriever.read``) are drawn as
dots. The figure has one row per signal and one panel per encoder; the relative L2 errors
(against the token values) over the support and at each retriever's samples are printed and
returned. From Python::

    from memplug.app.reconstruct import reconstruct
    results = reconstruct(out="reconstruct.png")
    results[0].encoder, results[0].error, results[0].sample_errors["uniform"]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..core.contracts import Encoder
from ..core.hookspecs import hookimpl
from ..core.manager import make_encoder, make_retriever
from ..util.checks import positive_int
from .arguments import non_negative_int_arg, one_line, positive_float, positive_int_arg

__all__ = ["Reconstruction", "reconstruct", "synthetic_signal", "byte_signal"]

ENCODERS = ("legs", "jacobi", "legt", "fout")
RETRIEVERS = ("uniform", "warped", "learned")


@dataclass
class Reconstruction:
    """One encoder on one signal: errors relative to the token values, in L2.

    ``error`` is over the token midpoints of ``support`` (the encoder's support at the end);
    ``sample_errors[r]`` is at retriever ``r``'s sample positions, against the token values
    interpolated linearly between token midpoints.
    """

    signal: str
    encoder: str
    support: tuple[float, float]
    error: float
    sample_errors: dict[str, float] = field(default_factory=dict)


def synthetic_signal(length: int, seed: int = 0) -> Tensor:
    """Three sinusoids with 1 to 6 cycles over ``length`` tokens, sampled at token midpoints:
    (length,) float64."""
    gen = torch.Generator().manual_seed(seed)
    cycles = 1 + 5 * torch.rand(3, generator=gen, dtype=torch.float64)
    amplitude = 0.5 + 0.5 * torch.rand(3, generator=gen, dtype=torch.float64)
    phase = 2 * math.pi * torch.rand(3, generator=gen, dtype=torch.float64)
    s = (torch.arange(length, dtype=torch.float64) + 0.5) / length  # (T,)
    return (amplitude * torch.sin(2 * math.pi * cycles * s[:, None] + phase)).sum(-1)


def byte_signal(path: str | os.PathLike, length: int, channel: int = 0, dim: int = 16, seed: int = 0) -> Tensor:
    """The first ``length`` bytes of ``path`` through a seeded random embedding table (256, dim),
    channel ``channel``: (min(length, file size),) float64."""
    if not 0 <= channel < dim:
        raise ValueError(f"channel must be in [0, {dim}), got {channel}")
    data = Path(path).read_bytes()[:length]
    if not data:
        raise ValueError(f"file {str(path)!r} is empty")
    table = torch.randn(256, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return table[torch.tensor(list(data)), channel]


def _stdlib_os_py() -> Path:
    return Path(os.__file__)


def _stream(encoder: Encoder, x: Tensor, block: int) -> Tensor:
    """The state (N, 1) after streaming ``x`` (T,) block by block, as a model would."""
    state = encoder.init_state(channels=1, dtype=torch.float64)
    for start in range(0, x.shape[0], block):
        state = encoder.update(state, x[start : start + block, None], start)  # x: (L, 1)
    return state


def _relative(rec: Tensor, true: Tensor) -> float:
    return ((rec - true).norm() / true.norm().clamp(min=1e-300)).item()


def _token_values(x: Tensor, positions: Tensor) -> Tensor:
    """The token values linearly interpolated between token midpoints (x[j] at j + 1/2), at
    ``positions``: the smooth reading of the token signal, so a sample on a token boundary is
    not scored against one side of the step."""
    mid = torch.arange(x.shape[0], dtype=torch.float64) + 0.5
    return torch.from_numpy(np.interp(positions.numpy(), mid.numpy(), x.numpy()))


def reconstruct(
    encoders: Sequence[str] = ENCODERS,
    retrievers: Sequence[str] = RETRIEVERS,
    order: int = 64,
    samples: int = 32,
    length: int = 4096,
    window: float | None = None,
    beta: float = 1.0,
    file: str | os.PathLike | None = None,
    channel: int = 0,
    seed: int = 0,
    block: int = 512,
    out: str | os.PathLike | None = "reconstruct.png",
) -> list[Reconstruction]:
    """Stream both signals through each encoder, decode, sample with each retriever, plot.

    ``window`` (LegT/FouT) defaults to a quarter of the stream; ``beta`` is Jacobi's exponent.
    Writes the figure to ``out`` (PNG) unless it is None. Returns one :class:`Reconstruction`
    per (signal, encoder), signals first.
    """
    if not encoders:
        raise ValueError("encoders must name at least one encoder")
    for name, value in (("order", order), ("samples", samples), ("block", block)):
        positive_int(name, value)
    if isinstance(length, bool) or not isinstance(length, int) or length < 2:
        raise ValueError(f"length must be an int >= 2 (tokens), got {length!r}")
    if window is not None and not (isinstance(window, (int, float)) and math.isfinite(window) and window > 0):
        raise ValueError(f"window must be a number > 0, got {window!r}")
    if file is not None and not Path(file).is_file():
        raise ValueError(f"file {str(file)!r} is not a file")
    window = length / 4 if window is None else window
    options = {"legt": {"window": window}, "fout": {"window": window}, "jacobi": {"beta": beta}}
    path = _stdlib_os_py() if file is None else Path(file)
    signals = {"synthetic": synthetic_signal(length, seed), path.name: byte_signal(path, length, channel, seed=seed)}
    readers = {name: make_retriever(name, samples=samples) for name in retrievers}

    results, panels = [], []
    for signal_name, x in signals.items():
        t = x.shape[0]
        for enc_name in encoders:
            enc = make_encoder(enc_name, order=order, **options.get(enc_name, {}))
            state = _stream(enc, x, block)  # (N, 1)
            lo, hi = enc.support(t)
            grid = torch.arange(math.floor(lo), t, dtype=torch.float64) + 0.5  # token midpoints in the support
            curve = (enc.basis(grid, t) @ state)[:, 0]
            result = Reconstruction(signal_name, enc_name, (float(lo), float(hi)), _relative(curve, x[grid.long()]))
            dots = {}
            with torch.no_grad():
                for name, ret in readers.items():
                    pos = ret.positions(t, enc).to(torch.float64)
                    values = ret.read(enc, state, t)[:, 0]
                    result.sample_errors[name] = _relative(values, _token_values(x, pos))
                    dots[name] = (pos, values)
            results.append(result)
            panels.append((result, x, grid, curve.detach(), dots, order))
    if out is not None:
        _plot(panels, rows=len(signals), cols=len(encoders), out=Path(out))
    return results


def _plot(panels: list, rows: int, cols: int, out: Path) -> None:
    """One panel per (signal, encoder): the tokens and their running mean over t/N tokens (about
    the resolution of an N-coefficient state), the decoded curve, and the retrievers' samples."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * cols, 3.0 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    styles = [dict(marker="o", ms=5), dict(marker="s", ms=3.5), dict(marker="^", ms=5, mfc="none"),
              dict(marker="D", ms=3.5), dict(marker="v", ms=4, mfc="none")]
    for ax, (result, x, grid, curve, dots, order) in zip(axes.flat, panels, strict=True):
        tokens = np.arange(x.shape[0]) + 0.5
        span = max(1, x.shape[0] // order)
        ax.plot(tokens, x, color="0.8", lw=0.5, label="tokens")
        ax.plot(tokens, np.convolve(x.numpy(), np.ones(span) / span, mode="same"), color="0.3", lw=0.7,
                label=f"running mean, {span} tokens")
        ax.plot(grid, curve, color="C0", lw=1.3, label="decoded state")
        for i, (name, (pos, values)) in enumerate(dots.items()):
            ax.plot(pos, values, ls="none", color=f"C{i + 1}", label=name, **styles[i % len(styles)])
        ax.axvspan(*result.support, color="C0", alpha=0.06)
        ax.set_title(f"{result.signal} · {result.encoder} · error {result.error:.2g}", fontsize=9)
        ax.tick_params(labelsize=7)
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside lower center", ncols=7, fontsize=8)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def format_table(results: Sequence[Reconstruction]) -> str:
    """The errors as an aligned text table (what the command prints)."""
    retrievers = list(results[0].sample_errors) if results else []
    header = ["signal", "encoder", "support", "error", *(f"@{r}" for r in retrievers)]
    rows = [
        [r.signal, r.encoder, f"[{r.support[0]:g}, {r.support[1]:g}]", f"{r.error:.2e}",
         *(f"{r.sample_errors[k]:.2e}" for k in retrievers)]
        for r in results
    ]
    width = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    lines = ("  ".join(str(c).ljust(w) for c, w in zip(row, width, strict=True)) for row in [header, *rows])
    return "\n".join(line.rstrip() for line in lines)


def _names(text: str) -> list[str]:
    return [n for n in (s.strip() for s in text.split(",")) if n]


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--encoders", type=_names, default=list(ENCODERS), help="comma-separated encoder names")
    parser.add_argument("--retrievers", type=_names, default=list(RETRIEVERS), help="comma-separated retriever names")
    parser.add_argument("--order", type=positive_int_arg, default=64, help="N, coefficients per channel")
    parser.add_argument("--samples", type=positive_int_arg, default=32, help="P, samples per retriever")
    parser.add_argument("--length", type=positive_int_arg, default=4096, help="tokens streamed (at least 2)")
    parser.add_argument("--window", type=positive_float, default=None, help="LegT/FouT window θ (default: length / 4)")
    parser.add_argument("--beta", type=float, default=1.0, help="Jacobi exponent β")
    parser.add_argument("--file", default=None, help="source file for the real signal (default: the stdlib os.py)")
    parser.add_argument("--channel", type=non_negative_int_arg, default=0, help="byte-embedding channel (0..15)")
    parser.add_argument("--seed", type=non_negative_int_arg, default=0,
                        help="seed of the synthetic signal and the embeddings")
    parser.add_argument("--block", type=positive_int_arg, default=512, help="tokens per update")
    parser.add_argument("--out", default="reconstruct.png", help="PNG to write")


def _run(args: argparse.Namespace) -> int:
    try:
        results = reconstruct(
            encoders=args.encoders, retrievers=args.retrievers, order=args.order, samples=args.samples,
            length=args.length, window=args.window, beta=args.beta, file=args.file, channel=args.channel,
            seed=args.seed, block=args.block, out=args.out,
        )
    except (ValueError, TypeError, KeyError) as exc:
        print(f"memplug reconstruct: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"memplug reconstruct: error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(format_table(results))
    print(f"wrote {args.out}")
    return 0


@hookimpl
def memplug_add_commands(registry) -> None:
    registry.add("reconstruct", "plot signals with their reconstruction by each encoder and retriever",
                 _add_arguments, _run)
