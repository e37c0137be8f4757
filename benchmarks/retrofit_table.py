"""One table of every retrofit run: each arm of each ``retrofit_finetune.py`` report, side by side.

    python benchmarks/retrofit_table.py     # docs/results/retrofit_finetune_*.json -> docs/results/retrofit_finetune.md

Each report measured a few arms at one setting (window, memory size, training scheme, precision,
stream length); this gathers them from their JSON alone, without rerunning anything. Besides
each report's "beyond window" (which starts at the arm's own window, so it differs between blocks
256 and 1024) it gives perplexity over spans that are the same for every window, positions 256 to
8191 and 256 to the end of the stream, from the position buckets.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import time
from pathlib import Path
from typing import Any

import common

#: the added columns' spans start past the smallest window run, whatever the arm's window; one
#: ends at the model's trained positions (INSIDE), one at the end of the stream
START, INSIDE = 256, 8192

#: a report's columns named like buckets that are spans over several buckets
AGGREGATES = frozenset({"256-8191"})


def bucket_span(key: str) -> tuple[int, int] | None:
    """``"256-1024"`` -> ``(256, 1024)``; None for a column that is not a position bucket."""
    lo, sep, hi = key.partition("-")
    return (int(lo), int(hi)) if sep and lo.isdigit() and hi.isdigit() and key not in AGGREGATES else None


def from_start(row: dict[str, Any], start: int, end: int) -> float | None:
    """Perplexity over positions ``start``..``end``-1 from the row's buckets: exp of their mean
    log-perplexities weighted by tokens (exact, as each bucket's perplexity is exp of its mean
    loss). None when the buckets do not tile that span or one of them has no value (full
    attention past its trained positions)."""
    spans = sorted((span, value) for key, value in row.items()
                   if (span := bucket_span(key)) and span[0] >= start and span[1] <= end)
    if not spans or spans[0][0][0] != start or spans[-1][0][1] != end:
        return None
    if any(a[0][1] != b[0][0] for a, b in zip(spans, spans[1:])) or any(v is None for _, v in spans):
        return None
    return math.exp(sum((hi - lo) * math.log(v) for (lo, hi), v in spans) / (end - start))


def setting(facts: dict[str, Any]) -> dict[str, Any]:
    """A report's setting in words: window, memory size, training scheme, precision, stream."""
    p, args = facts["data"]["preset"], facts["data"]["args"]
    memory = {"order": p["order"], "samples": p["samples"]} | ast.literal_eval(args.get("memory_option") or "{}")
    read = memory | ast.literal_eval(args.get("eval_memory_option") or "{}")  # the options it was measured with
    size = f"{memory['order']} / {memory['samples']}"
    if read != memory:
        size += f", read with {read['order']} / {read['samples']}" + "".join(
            f", {k}={v}" for k, v in read.items() if k not in ("order", "samples") and memory.get(k) != v)
    bptt = p.get("bptt") or 0
    training = (f"{p['steps']} x {bptt} (segments of {p['seq']})" if bptt else f"{p['steps']} x {p['seq']}")
    return {"block": p["block"], "N = P": size, "training steps x tokens": training,
            "precision": facts["precision"]["name"], "stream": p["eval_tokens"]}


def gather(paths: list[Path]) -> list[dict[str, Any]]:
    """Every arm of every report at ``paths``, with its report's setting and the added columns."""
    rows = []
    for path in paths:
        facts = json.loads(path.read_text())
        if "rows" not in facts.get("data", {}) or "retrofit_finetune.py" not in facts.get("command", ""):
            raise SystemExit(f"{path}: not a report of benchmarks/retrofit_finetune.py")
        where = setting(facts)
        for row in facts["data"]["rows"].values():
            shown = where if "elastic" in row["arm"] else where | {"N = P": ""}  # no memory, no size
            rows.append({"report": f"[{path.stem}]({path.stem}.md)", "arm": row["arm"], **shown,
                         f"{START}-{INSIDE}": from_start(row, START, INSIDE),
                         f"{START}-end": from_start(row, START, where["stream"]),
                         **{k: v for k, v in row.items() if k == "beyond window" or k.startswith("passkey")}})
    return rows


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="*", type=Path,
                        help="retrofit_finetune.py JSON reports (default: docs/results/retrofit_finetune_*.json)")
    parser.add_argument("--out", default=str(common.RESULTS), help="results folder (default docs/results)")
    parser.add_argument("--name", default="retrofit_finetune", help="report name (default retrofit_finetune)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    paths = args.reports or sorted(Path(common.RESULTS).glob("retrofit_finetune_*.json"))
    if not paths:
        raise SystemExit("reports: no retrofit_finetune_*.json found; give report paths")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise SystemExit(f"reports: not a file: {', '.join(missing)}")
    rows = gather(paths)
    passkeys = sorted({k for r in rows for k in r if k.startswith("passkey")}, key=lambda k: int(k.split()[-1]))
    columns = ["report", "arm", "block", "N = P", "training steps x tokens", "precision", "stream",
               f"{START}-{INSIDE}", f"{START}-end", "beyond window", *passkeys]
    markdown = (f"Every arm of {len(paths)} reports of `benchmarks/retrofit_finetune.py` (SmolLM2-135M, held-out "
                f"literature), from their JSON. Perplexity, from the position buckets (their token-weighted mean of "
                f"log-perplexities), over the same spans for every window: `{START}-{INSIDE}` (positions {START} to {INSIDE - 1}) inside "
                f"the model's trained positions, `{START}-end` to the end of the arm's stream (`stream` tokens); `beyond window` "
                "(the report's own) from the arm's window "
                "(`block`) to the end. `N = P`: the Elastic memory's order and samples (memory arms only), and those it "
                "was read with at test when they differ (`--eval-memory-option`: the same trained weights). Passkey: "
                "accuracy, the likeliest of 4 keys (chance 0.25). Compare arms within one report: reports differ in "
                "precision, stream length and training scheme, and the claims page (README.md, Retrofit) reads them.\n\n"
                + common.table(rows, columns))
    return common.report(args.out, args.name, markdown, {"rows": rows, "reports": [str(p) for p in paths]}, None,
                         title="Retrofit with training: every arm of every run", seconds=time.perf_counter() - started)


if __name__ == "__main__":
    main()
