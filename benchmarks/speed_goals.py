"""The speed goals against measured throughput reports: goal, target, measured ratio, verdict.

    python benchmarks/speed_goals.py --results docs/results/gpu   # after gpu_sweep.sh speed
    python benchmarks/speed_goals.py --set cpu                    # the CPU goals, from throughput.json

Each goal is a throughput ratio of two arms timed side by side in one run of
``benchmarks/throughput.py``: the median over rounds of (B's step time / A's step time), with the
95% interval of that median (:func:`common.median_interval`), read from the report's per-round
step times. So "elastic 1x >= 2x knn 16x" is measured round by round like "elastic 1x >= 0.9 of
the bare model". The verdict is **met** when the whole interval is at or above the target,
**missed** when it is below, and **undecided** when it spans the target (or, with fewer than 6
rounds, when there is no interval). A goal whose report or arm is absent is **not measured**.
Where the report counted FLOPs (``--count-ops``), the goal's FLOP ceiling (the second arm's
FLOPs / the first's: the ratio if time followed them) is given beside it; a ceiling below the
target says the goal needs less work, not faster kernels.

Writes ``RESULTS/speed_goals_SET.md`` and ``.json`` (default ``--results``: docs/results/gpu for
``--set gpu``, docs/results for ``--set cpu``).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import common

Arm = tuple[str, str, int]  # (mode, memory, scale) of a throughput report's row


@dataclass(frozen=True)
class Goal:
    """``numerator``'s throughput over ``denominator``'s, both in ``report``, at least ``target``."""

    name: str
    report: str
    numerator: Arm
    denominator: Arm
    target: float


def _tiny(report: str, scale: int, target: float, mode: str = "eager", label: str = "") -> Goal:
    return Goal(f"tiny, {mode}{label}: elastic {scale}x / bare", report, (mode, "elastic", scale),
                (mode, "none", 1), target)


#: The speed issue's goals, by machine. On a GPU: the tiny model (d = 256, 4 layers, block 256,
#: sequence 4096, batch 8), the 85M one (d = 768, 12 layers, block 512, sequence 8192, batch 4) and
#: SmolLM2-135M attached at block 256, as gpu_sweep.sh speed names their reports; the scan methods'
#: reports say which method comes closest. On a CPU: throughput.md's command (the claims page).
GOALS: dict[str, list[Goal]] = {
    "gpu": [
        _tiny("throughput_tiny_eager", 1, 0.85),
        _tiny("throughput_tiny_compiled", 1, 0.85, mode="compiled"),
        _tiny("throughput_tiny_eager", 16, 0.5),
        Goal("tiny, eager: elastic 1x / knn 16x", "throughput_tiny_eager", ("eager", "elastic", 1),
             ("eager", "knn", 16), 2.0),
        Goal("85M, eager: elastic 1x / bare", "throughput_85m", ("eager", "elastic", 1), ("eager", "none", 1), 0.90),
        Goal("85M, compiled: elastic 1x / bare", "throughput_85m_compiled", ("compiled", "elastic", 1),
             ("compiled", "none", 1), 0.90),
        Goal("SmolLM2 attached, no memory / HF model", "throughput_smollm2", ("eager", "none", 1),
             ("eager", "hf", 1), 0.95),
        Goal("SmolLM2 attached, elastic 1x / HF model", "throughput_smollm2", ("eager", "elastic", 1),
             ("eager", "hf", 1), 0.85),
        *(_tiny(f"throughput_scan_{method}", scale, target, label=f", scan {method.replace('_', ' ')}")
          for method, scales in (("sequential_float32", (1, 16)), ("parallel_float32", (1, 16)),
                                 ("fused_float32", (1, 16)), ("dense_float32", (16,)), ("sequential_bf16x6", (16,)))
          for scale, target in ((1, 0.85), (16, 0.5)) if scale in scales),
    ],
    "cpu": [_tiny("throughput", 1, 0.9), _tiny("throughput", 16, 0.5)],
}


def verdict(interval: tuple[float, float] | None, target: float) -> str:
    """met / missed / undecided against ``target`` for a ratio's 95% ``interval`` (of its median)."""
    if interval is None:
        return "undecided (too few rounds for an interval)"
    low, high = interval
    if low >= target:
        return "met"
    if high < target:
        return "missed"
    return "undecided (the interval spans the target)"


def measure(goal: Goal, results: Path) -> dict[str, Any]:
    """The row of ``goal``: its report's device and command, the paired ratio, interval and verdict."""
    row: dict[str, Any] = {"goal": goal.name, "target": goal.target, "report": goal.report}
    path = results / f"{goal.report}.json"
    if not path.exists():
        return {**row, "verdict": "not measured (no report)"}
    report = json.loads(path.read_text())
    arms = {(r["mode"], r["memory"], r["scale"]): r for r in report["data"]["results"]}
    if goal.numerator not in arms or goal.denominator not in arms:
        return {**row, "verdict": "not measured (the report lacks an arm)"}
    mine, theirs = arms[goal.numerator], arms[goal.denominator]
    ratio, interval = common.paired_ratio(mine["step_times_s"], theirs["step_times_s"])
    flops = mine.get("flops_per_step"), theirs.get("flops_per_step")
    return {**row, "device": report["data"]["config"].get("device", "cpu"), "rounds": len(mine["step_times_s"]),
            "ratio": ratio, "interval": interval, "verdict": verdict(interval, goal.target),
            "flop_ceiling": flops[1] / flops[0] if all(flops) else None,
            "date": report.get("date"), "command": report.get("command")}


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--set", choices=sorted(GOALS), default="gpu", help="which machine's goals (default gpu)")
    p.add_argument("--results", default=None,
                   help="folder of the throughput reports (default: docs/results/gpu, or docs/results for cpu)")
    args = p.parse_args(argv)
    if args.results is None:  # as the reports name it, not this machine's absolute path
        args.results = "docs/results/gpu" if args.set == "gpu" else "docs/results"
        args.folder = common.RESULTS / ("gpu" if args.set == "gpu" else "")
    else:
        args.folder = Path(args.results)
    if not args.folder.is_dir():
        p.error(f"--results must be a folder of throughput reports, got {args.results!r}")
    return args


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = parse(argv)
    started = time.perf_counter()
    rows = [measure(goal, args.folder) for goal in GOALS[args.set]]
    lines = [
        f"The {args.set.upper()} speed goals against the throughput reports in `{args.results}`. Ratio: the median "
        "over rounds of (the second arm's step time / the first's), both timed side by side in the goal's report; "
        "the 95% interval is of that median (order statistics of the rounds' ratios). Met: the interval is at or "
        "above the target; missed: below it; undecided: it spans it. FLOP ceiling: the second arm's FLOPs / the "
        "first's, where the report counted them (below the target: the goal needs less work, not faster "
        "kernels).\n",
        "| goal | target | device | rounds | ratio | 95% interval | verdict | FLOP ceiling | report |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['goal']} | {r['target']:g} | {r.get('device', '')} | {r.get('rounds', '')} | "
                     f"{common.fmt(r.get('ratio'))} | {common.interval_text(r.get('interval'))} | {r['verdict']} | "
                     f"{common.fmt(r.get('flop_ceiling'))} | "
                     f"[{r['report']}]({r['report']}.md) |")
    commands = sorted({(r["report"], r["command"]) for r in rows if r.get("command")})
    lines += ["", "Commands of the reports read:", ""] + [f"- {name}: `{command}`" for name, command in commands]
    data = {"set": args.set, "goals": rows}
    common.report(args.folder, f"speed_goals_{args.set}", "\n".join(lines), data, figure(data),
                  title=f"Speed goals ({args.set.upper()})", seconds=time.perf_counter() - started)
    return rows


def figure(data: dict[str, Any]) -> Callable[[Any], None]:
    """The plot of a speed-goals report's JSON ``data``: each measured goal's ratio with its 95%
    interval, its target as a red mark on the same row, and its FLOP ceiling (where counted) as a
    grey cross."""
    measured = [r for r in data["goals"] if "ratio" in r]

    def draw(plt: Any) -> None:
        rows = range(len(measured))
        ratios = [r["ratio"] for r in measured]
        spans = [r["interval"] or (r["ratio"],) * 2 for r in measured]
        plt.errorbar(ratios, rows, xerr=[[v - lo for v, (lo, _) in zip(ratios, spans)],
                                         [hi - v for v, (_, hi) in zip(ratios, spans)]], fmt="o", capsize=3,
                     label="measured (95% interval)")
        plt.scatter([r["target"] for r in measured], rows, marker="|", s=300, color="red", label="target")
        ceilings = [(r["flop_ceiling"], row) for r, row in zip(measured, rows) if r.get("flop_ceiling")]
        if ceilings:
            plt.scatter(*zip(*ceilings), marker="x", color="grey", label="FLOP ceiling")
        plt.yticks(rows, [r["goal"] for r in measured], fontsize=7)
        plt.gca().invert_yaxis()
        plt.xlabel("throughput ratio (paired)")
        plt.legend(fontsize=7, loc="best")
        plt.title(f"{data['set']} speed goals" + ("" if measured else ": none measured"), fontsize=9)

    return draw


if __name__ == "__main__":
    main()
