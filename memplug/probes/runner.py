"""Running probes over a grid of context lengths and needle depths, and reporting accuracy per cell.

:func:`run_probes` draws ``samples`` instances per (probe, length, depth) cell from one seeded
generator, reads each context once with the model, and counts the right answers. A length the
reader cannot take (full attention past its trained positions) is reported as ``None`` ("n/a"),
not read. :func:`to_markdown` and :func:`heatmap` render the result.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.tokenizers import Tokenizer
from ..util.checks import positive_int
from .base import Probe, ProbeSample
from .haystack import Haystack
from .readers import Reader

__all__ = ["SCORINGS", "answer", "heatmap", "run_probes", "to_markdown"]

SCORINGS = ("loglik", "greedy")


def _loglik(logits_question: Tensor, reader: Reader, state: Any, ids: np.ndarray) -> float:
    """Summed log-probability of candidate ``ids`` right after the question."""
    ids_t = torch.as_tensor(ids)
    first = F.log_softmax(logits_question[-1], dim=-1)[ids_t[0]]
    if len(ids_t) == 1:
        return float(first)
    logits, _ = reader.read(ids_t[:-1], state)  # (n - 1, vocab): the predictions of ids[1:]
    rest = F.log_softmax(logits, dim=-1).gather(1, ids_t[1:, None].to(logits.device)).sum()
    return float(first + rest)


def _greedy(logits_question: Tensor, reader: Reader, state: Any, steps: int) -> list[int]:
    tokens = [int(logits_question[-1].argmax())]
    for _ in range(steps - 1):
        logits, state = reader.read(torch.tensor(tokens[-1:]), state)
        tokens.append(int(logits[-1].argmax()))
    return tokens


def answer(reader: Reader, haystack: Haystack, sample: ProbeSample, length: int, scoring: str,
           rng: random.Random) -> bool:
    """Whether the model answers ``sample`` right in a context of ``length`` tokens."""
    context, question = haystack.context(sample, length, rng)
    _, state = reader.read(torch.as_tensor(context))
    logits_q, state = reader.read(torch.as_tensor(question), state)
    candidates = [haystack.encode(c) for c in sample.candidates]
    if scoring == "loglik":
        scores = [_loglik(logits_q, reader, state, ids) for ids in candidates]
        return int(np.argmax(scores)) == sample.answer
    generated = haystack.tokenizer.decode(_greedy(logits_q, reader, state, max(len(c) for c in candidates) + 2))
    return sample.candidates[sample.answer].strip() in generated


def run_probes(
    reader: Reader,
    tokenizer: Tokenizer,
    probes: Sequence[Probe],
    lengths: Sequence[int],
    depths: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
    samples: int = 4,
    scoring: str = "loglik",
    dataset: str = "literature",
    split: str = "test",
    seed: int = 0,
    dataset_options: dict[str, Any] | None = None,
    on_cell: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Accuracy per (probe, length, depth): a JSON-ready dict with the settings and ``cells``.

    The haystack is the ``split`` of corpus ``dataset`` (built with ``dataset_options``). Every cell
    uses its own generator seeded from (``seed``, probe, length, depth), so two models are probed
    on the same contexts, and adding a cell changes no other.
    """
    if scoring not in SCORINGS:
        raise ValueError(f"scoring must be one of {', '.join(SCORINGS)}; got {scoring!r}")
    for depth in depths:
        if not 0.0 <= depth <= 1.0:
            raise ValueError(f"depths must lie in [0, 1] (0: the start of the context, 1: its end), got {depth!r}")
    for length in lengths:
        positive_int("lengths (tokens)", length)
    positive_int("samples", samples)
    haystack = Haystack(tokenizer, dataset, split, dataset_options)
    longest = max(lengths)
    if longest > len(haystack.tokens):
        raise ValueError(f"length {longest:,} needs more haystack than the {split} split of {dataset} has "
                         f"({len(haystack.tokens):,} tokens); use shorter lengths or a larger corpus/split")
    cells = []
    for probe in probes:
        for length in lengths:
            for depth in depths:
                cell: dict[str, Any] = {"probe": probe.name, "length": length, "depth": depth}
                if reader.limit is not None and length > reader.limit:
                    cell.update(correct=None, total=samples, accuracy=None)
                else:
                    rng = random.Random(f"{seed}/{probe.name}/{length}/{depth}")
                    correct = sum(answer(reader, haystack, probe.sample(depth, rng), length, scoring, rng)
                                  for _ in range(samples))
                    cell.update(correct=correct, total=samples, accuracy=correct / samples)
                cells.append(cell)
                if on_cell is not None:
                    on_cell(cell)
    return {"scoring": scoring, "dataset": dataset, "split": split, "samples": samples, "seed": seed,
            "lengths": list(lengths), "depths": list(depths), "probes": {p.name: p.description for p in probes},
            "chance": {p.name: 1 / p.choices for p in probes} if scoring == "loglik" else None, "cells": cells}


def _fmt(accuracy: float | None) -> str:
    return "n/a" if accuracy is None else f"{accuracy:.2f}"


def to_markdown(result: dict[str, Any]) -> str:
    """One table per probe: accuracy by depth (rows) and length (columns), and the mean by length."""
    how = ("the candidate with the highest log-likelihood after the question is the model's answer "
           f"(chance {', '.join(f'{k} {v:.2f}' for k, v in result['chance'].items())})"
           if result["scoring"] == "loglik" else "greedy decoding; right when the answer appears in the continuation")
    lines = [f"Haystack: the {result['split']} split of `{result['dataset']}`; {result['samples']} samples per cell; "
             f"scoring: {how}. n/a: the model cannot take a context that long.", ""]
    for probe, description in result["probes"].items():
        cells = [c for c in result["cells"] if c["probe"] == probe]
        lines += [f"**{probe}**: {description}", "",
                  "| depth | " + " | ".join(f"{n:,}" for n in result["lengths"]) + " |",
                  "|---|" + "---|" * len(result["lengths"])]
        for depth in result["depths"]:
            row = [_fmt(next(c["accuracy"] for c in cells if c["length"] == n and c["depth"] == depth))
                   for n in result["lengths"]]
            lines.append(f"| {depth:.0%} | " + " | ".join(row) + " |")
        means = []
        for n in result["lengths"]:
            values = [c["accuracy"] for c in cells if c["length"] == n]
            means.append(None if any(v is None for v in values) else sum(values) / len(values))
        lines += ["| mean | " + " | ".join(_fmt(m) for m in means) + " |", ""]
    return "\n".join(lines)


def heatmap(result: dict[str, Any]) -> Callable[[Any], None]:
    """The usual needle-in-a-haystack figure: one panel per probe, depth by length, accuracy in colour."""

    def draw(plt: Any) -> None:
        probes = list(result["probes"])
        fig = plt.gcf()
        for i, probe in enumerate(probes):
            ax = fig.add_subplot(1, len(probes), i + 1)
            grid = np.full((len(result["depths"]), len(result["lengths"])), np.nan)
            for c in result["cells"]:
                if c["probe"] == probe and c["accuracy"] is not None:
                    grid[result["depths"].index(c["depth"]), result["lengths"].index(c["length"])] = c["accuracy"]
            ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
            ax.set_xticks(range(len(result["lengths"])), [f"{n // 1024}k" if n >= 1024 else str(n)
                                                          for n in result["lengths"]], fontsize=7)
            ax.set_yticks(range(len(result["depths"])), [f"{d:.0%}" for d in result["depths"]], fontsize=7)
            for (r, k), value in np.ndenumerate(grid):
                ax.text(k, r, "n/a" if math.isnan(value) else f"{value:.2f}", ha="center", va="center", fontsize=6)
            ax.set_title(probe, fontsize=9)
            ax.set_xlabel("context length (tokens)", fontsize=8)
            if i == 0:
                ax.set_ylabel("needle depth", fontsize=8)

    return draw
