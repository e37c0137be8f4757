"""benchmarks/speed_goals.py: each goal's paired ratio, interval and verdict from the reports'
per-round step times, on synthetic reports whose answers are known."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("benchmarks_on_path")


def write_report(folder: Path, name: str, arms: dict[tuple[str, str, int], list[float]],
                 flops: dict[tuple[str, str, int], int] | None = None) -> None:
    """A throughput report's JSON with only what speed_goals reads: step times per arm, and FLOPs
    per step where given."""
    results = [{"mode": mode, "memory": memory, "scale": scale, "step_times_s": times,
                "flops_per_step": (flops or {}).get((mode, memory, scale))}
               for (mode, memory, scale), times in arms.items()]
    data = {"config": {"device": "cuda"}, "results": results}
    (folder / f"{name}.json").write_text(json.dumps({"date": "d", "command": f"python {name}", "data": data}))


def test_verdicts_from_round_by_round_ratios(tmp_path):
    import speed_goals

    bare = [1.0, 1.1, 0.9, 1.0, 1.2, 1.0, 1.05, 0.95]  # drifting load, shared by the arms of a round
    write_report(tmp_path, "throughput_tiny_eager", {
        ("eager", "none", 1): bare,
        ("eager", "elastic", 1): [t / 0.88 for t in bare],  # 0.88 of the bare model in every round
        ("eager", "elastic", 16): [t / 0.5 for t in bare[:4]] + [t / 0.45 for t in bare[4:]],  # spans 0.5
        ("eager", "knn", 16): [t / 0.4 for t in bare],  # so elastic 1x is 2.2x knn 16x, round by round
    })
    write_report(tmp_path, "throughput_85m", {("eager", "none", 1): bare[:5], ("eager", "elastic", 1): bare[:5]})
    rows = {r["goal"]: r for r in speed_goals.main(["--results", str(tmp_path)])}

    met = rows["tiny, eager: elastic 1x / bare"]
    assert met["ratio"] == pytest.approx(0.88) and met["interval"] == pytest.approx((0.88, 0.88))
    assert met["verdict"] == "met" and met["rounds"] == 8 and met["device"] == "cuda"
    assert rows["tiny, eager: elastic 1x / knn 16x"]["ratio"] == pytest.approx(2.2)
    assert rows["tiny, eager: elastic 1x / knn 16x"]["verdict"] == "met"
    spans = rows["tiny, eager: elastic 16x / bare"]
    assert spans["interval"] == pytest.approx((0.45, 0.5)) and spans["verdict"].startswith("undecided")
    # five rounds give no 95% interval: not decided by the median alone
    assert rows["85M, eager: elastic 1x / bare"]["verdict"].startswith("undecided")
    assert rows["tiny, compiled: elastic 1x / bare"]["verdict"] == "not measured (no report)"
    assert rows["85M, compiled: elastic 1x / bare"]["verdict"] == "not measured (no report)"
    text = (tmp_path / "speed_goals_gpu.md").read_text()
    assert "| tiny, eager: elastic 1x / bare | 0.85 | cuda | 8 | 0.880 | 0.880-0.880 | met |  |" in text  # no FLOPs
    assert "- throughput_tiny_eager: `python throughput_tiny_eager`" in text


def test_a_report_without_the_arm_and_a_missed_goal(tmp_path):
    import speed_goals

    write_report(tmp_path, "throughput", {("eager", "none", 1): [1.0] * 7, ("eager", "elastic", 16): [4.0] * 7},
                 flops={("eager", "none", 1): 100, ("eager", "elastic", 16): 400})
    rows = {r["goal"]: r for r in speed_goals.main(["--set", "cpu", "--results", str(tmp_path)])}
    assert rows["tiny, eager: elastic 16x / bare"]["ratio"] == 0.25
    assert rows["tiny, eager: elastic 16x / bare"]["verdict"] == "missed"
    # the bare model's FLOPs over elastic's: the ratio if time followed them
    assert rows["tiny, eager: elastic 16x / bare"]["flop_ceiling"] == 0.25
    assert rows["tiny, eager: elastic 1x / bare"]["verdict"] == "not measured (the report lacks an arm)"


def test_results_must_be_a_folder(tmp_path, capsys):
    import speed_goals

    with pytest.raises(SystemExit) as exc:
        speed_goals.main(["--results", str(tmp_path / "missing")])
    assert exc.value.code == 2 and "--results" in capsys.readouterr().err.splitlines()[-1]
