"""The evidence scripts (benchmarks/) at their smoke sizes, the jittered retriever, ``memplug task``.

Each script's ``main`` runs end to end into a temporary folder: report, JSON and plot are
written, and the numbers it reports obey what must hold whatever the training (oracles ordered,
probabilities in [0, 1], one row per arm).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

import memplug
from memplug.app.cli import main as cli_main
from memplug.testing import check_retriever

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


pytestmark = pytest.mark.usefixtures("benchmarks_on_path")


def _outputs(out: Path, name: str) -> dict:
    for ext in ("md", "json", "png"):
        assert (out / f"{name}.{ext}").stat().st_size > 0, f"{name}.{ext} missing"
    text = (out / f"{name}.md").read_text()
    assert "- machine:" in text and "- command:" in text and "- wall-clock:" in text
    return json.loads((out / f"{name}.json").read_text())


def test_tasks_suite_regime_smoke(tmp_path):
    import tasks_suite

    result = tasks_suite.main(["--preset", "smoke", "--out", str(tmp_path), "--memories", "none,xl,elastic:legt"])
    data = _outputs(tmp_path, "tasks_regime")
    rows = {r["memory"]: r for r in result["rows"]}
    assert set(rows) == {"none", "xl", "elastic:legt", "elastic:legt, memory masked at test",
                         "oracle: whole history", "oracle: block of 16 alone"}
    assert rows["oracle: whole history"]["bits"] <= rows["oracle: block of 16 alone"]["bits"]
    assert all(0 <= rows[m]["accuracy"] <= 1 and math.isfinite(rows[m]["bits"]) for m in ("none", "xl", "elastic:legt"))
    assert data["data"]["arms"]["none"]["parameters"] == rows["none"]["params"]


def test_train_on_scored_wraps_the_task():
    import argparse

    import common

    from memplug.tasks import RegimeTask, ScoredOnly

    task = RegimeTask()
    assert isinstance(common.teaching(argparse.Namespace(train_on="scored"), task), ScoredOnly)
    assert common.teaching(argparse.Namespace(train_on="all"), task) is task


def test_tasks_suite_passkey_curriculum_smoke(tmp_path):
    import tasks_suite

    result = tasks_suite.main(["--preset", "smoke", "--out", str(tmp_path), "--task", "passkey", "--memories", "elastic",
                               "--train-on", "scored"])
    _outputs(tmp_path, "tasks_passkey")
    row = result["rows"][0]
    assert row["steps"] >= 2  # both curriculum stages ran
    assert 0 <= row["control acc"] <= 1 and 0 <= row["out-of-block acc"] <= 1
    assert "Within-block control learned" in (tmp_path / "tasks_passkey.md").read_text()


def test_tasks_suite_far_preset_reaches_64_blocks():
    import tasks_suite

    p = tasks_suite.PRESETS["far"]
    task, control = tasks_suite.make("passkey", p)
    far = [d // p.block for d in task.distances if d >= p.block]
    assert far == list(tasks_suite.BLOCK_DISTANCES)  # 2, 4, ..., 64 blocks, all inside one sequence
    assert max(control.distances) < p.block  # the control's question can share its statement's block
    _, dense = tasks_suite.make("passkey", p, dense_control=True)
    assert dense.repeat == p.block  # one key per block, each answerable inside its block
    task.sample(1, p.length, torch.Generator().manual_seed(0))  # the longest distance fits


@pytest.mark.parametrize("task", ["regime", "code"])
def test_swaps_smoke(tmp_path, task):
    import swaps

    result = swaps.main(["--preset", "smoke", "--out", str(tmp_path), "--steps", "2", "--task", task])
    _outputs(tmp_path, "swaps")
    own = [r for r in result["rows"] if r["evaluated with"] == swaps.OWN[r["trained with"]]]
    assert len(own) == len(swaps.TRAINED) and all(r["change"] == 0 for r in own)
    assert ("Oracles" in (tmp_path / "swaps.md").read_text()) == (task == "regime")


def test_tasks_suite_recall_control_is_answerable_in_block(tmp_path):
    import tasks_suite

    result = tasks_suite.main(["--preset", "smoke", "--out", str(tmp_path), "--task", "recall", "--memories",
                               "none,knn@16x"])
    _outputs(tmp_path, "tasks_recall")
    assert [r["memory"] for r in result["rows"][:2]] == ["none", "knn@16x"]
    task, control = tasks_suite.make("recall", tasks_suite.PRESETS["smoke"])
    assert control.repeat == tasks_suite.PRESETS["smoke"].block and task.repeat is None


def test_ablations_smoke(tmp_path):
    import ablations

    result = ablations.main(["--preset", "smoke", "--out", str(tmp_path), "--steps", "2",
                             "--arms", "default,legs bilinear (ODE),span block + previous,no memory (reference)"])
    _outputs(tmp_path, "ablations")
    rows = {r["memory"]: r for r in result["rows"]}
    assert "memory gain" in rows["default"] and "memory gain" not in rows["no memory (reference)"]
    with pytest.raises(SystemExit):
        ablations.main(["--preset", "smoke", "--out", str(tmp_path), "--arms", "no such arm"])


def test_lm_sweep_and_length_smoke(tmp_path):
    import length
    import lm_sweep

    # the code corpus is the running interpreter's standard library: always here, so no skip
    sweep = lm_sweep.main(["--preset", "smoke", "--out", str(tmp_path), "--memories", "none,elastic,knn@4x",
                           "--scales", "1x,2x", "--steps", "1"])
    _outputs(tmp_path, "lm_sweep")
    assert "**Equal tokens:** every arm reached step 1." in (tmp_path / "lm_sweep.md").read_text()
    short = lm_sweep.equal_tokens([{"corpus": "code", "memory": "knn", "scale": "1x", "seed": 0, "steps": 7}], 10)
    assert short.startswith("\n\n**Not equal tokens:**") and "knn 1x seed 0 (7)" in short
    assert [(s["memory"], s["scale"]) for s in sweep["summary"]] == [
        ("none", "-"), ("elastic", "1x"), ("elastic", "2x"), ("knn", "4x")]
    stream = length.main(["--preset", "smoke", "--out", str(tmp_path), "--tokens", "1024", "--steps", "1"])
    _outputs(tmp_path, "length")
    sizes = {r["state KiB"] for r in stream["rows"]}
    assert len(sizes) == 1  # the elastic state does not grow with the stream


def test_jittered_retriever_contract_and_randomness():
    retriever = memplug.make_retriever("jittered", samples=8, max_rate=4.0)
    encoder = memplug.make_encoder("legs", order=8)
    torch.manual_seed(0)
    a, b = retriever.positions(1000.0, encoder), retriever.positions(1000.0, encoder)
    assert not torch.equal(a, b)  # a fresh draw per call in training mode
    blocks = retriever.positions(torch.tensor([64.0, 4096.0], dtype=torch.float64), encoder)  # (2, 8)
    for row, t in zip(blocks, (64.0, 4096.0)):
        assert (row.diff() >= 0).all() and row.min() >= 0 and row.max() <= t
    retriever.eval()
    uniform = memplug.make_retriever("uniform", samples=8)
    torch.testing.assert_close(retriever.positions(1000.0, encoder), uniform.positions(1000.0, encoder))
    check_retriever(retriever)
    with pytest.raises(ValueError, match="max_rate"):
        memplug.make_retriever("jittered", samples=8, max_rate=0.5)


def test_memplug_task_cli(capsys):
    assert cli_main(["task", "regime", "--steps", "2", "--length", "128", "--batch", "2", "--d-model", "32",
                     "--block", "32"]) == 0
    out = capsys.readouterr().out
    assert "oracle, whole history" in out
    assert cli_main(["task", "passkey", "--option", "symbols=1"]) == 2


def test_attention_backends_smoke(tmp_path):
    import attention_backends

    rows = attention_backends.main(["--device", "cpu", "--shapes", "2x8x4", "--repeats", "1", "--heads", "2",
                                    "--kv-heads", "1", "--head-dim", "8", "--out", str(tmp_path / "backends")])
    _outputs(tmp_path, "backends")
    sdpa = {r["dtype"]: r for r in rows if r["backend"] == "sdpa"}
    assert sdpa["fp32"]["status"] == "ok" and sdpa["fp32"]["max_abs_error"] < 1e-5
    assert sdpa["bf16"]["max_abs_error"] < 5e-2
    assert {r["status"] for r in rows if r["backend"] == "xformers"} == {"not supported here"}
    with pytest.raises(ValueError, match="CALLSxBLOCKxSLOTS"):
        attention_backends.parse_shape("8x128")


@pytest.mark.parametrize("bad, named", [(["--shapes", "64x256"], "--shapes"), (["--dtypes", "fp32,fp16"], "--dtypes"),
                                         (["--heads", "6", "--kv-heads", "4"], "--kv-heads"),
                                         (["--repeats", "0"], "--repeats")])
def test_attention_backends_refuses_bad_options_in_one_line(bad, named, tmp_path, capsys):
    import attention_backends

    with pytest.raises(SystemExit) as exc:
        attention_backends.main([*bad, "--device", "cpu", "--out", str(tmp_path / "backends")])
    assert exc.value.code == 2 and named in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "backends.md").exists()


RESULTS = BENCHMARKS.parent / "docs" / "results"
#: committed reports whose scripts draw their figure from the JSON alone (``figure(data)``)
REDRAWN = ("encoders", "retrofit", "retrofit_long_local", "streaming", "throughput_memories",
           "gpu/attention_backends", "gpu/throughput", "speed_goals_cpu")


@pytest.mark.parametrize("name", REDRAWN)
def test_replot_redraws_a_committed_report_from_its_json(tmp_path, name):
    import replot

    copy = tmp_path / Path(name).name
    copy.with_suffix(".json").write_bytes((RESULTS / f"{name}.json").read_bytes())
    body = (RESULTS / f"{name}.md").read_text()
    copy.with_suffix(".md").write_text(body.replace(f"![{copy.stem}]({copy.stem}.png)", ""))
    for _ in range(2):  # a second run redraws without linking the figure twice
        assert replot.main([str(copy.with_suffix(".json"))]) == [copy.with_suffix(".png")]
    assert copy.with_suffix(".png").stat().st_size > 0
    assert copy.with_suffix(".md").read_text().count(f"![{copy.stem}]({copy.stem}.png)") == 1


def test_replot_refuses_a_report_drawn_during_its_run(tmp_path):
    import replot

    report = tmp_path / "sweep.json"
    report.write_text(json.dumps({"command": "python benchmarks/lm_sweep.py --preset smoke", "data": {}}))
    with pytest.raises(SystemExit, match="rerun its command"):
        replot.main([str(report)])


def test_regime_seeds_smoke(tmp_path):
    import regime_seeds

    result = regime_seeds.main(["--preset", "smoke", "--out", str(tmp_path), "--seeds", "0,1",
                                "--arms", "elastic gate,none"])
    _outputs(tmp_path, "regime_seeds")
    assert [(r["arm"], r["seed"]) for r in result["rows"]] == [("elastic gate", 0), ("elastic gate", 1),
                                                               ("none", 0), ("none", 1)]
    for r in result["rows"]:
        assert r["masking costs"] == pytest.approx(r["masked bits"] - r["bits"])
        assert r["learned"] == ("yes" if r["masking costs"] >= 0.3 else "no")
    assert all(r["masking costs"] == 0 for r in result["rows"] if r["arm"] == "none")  # nothing to mask
    assert [s["learned"] for s in result["summary"]] == ["0 of 2", "0 of 2"]


def test_regime_seeds_warmup_anneals_the_offset(tmp_path):
    """The anneal reaches every elastic layer, falls linearly and stops at 0; both new arms run and
    the report states the warm-up's schedule."""
    import common
    import regime_seeds
    from tasks_suite import PRESETS

    from memplug.plugins.memories.elastic import ElasticMemory

    model = common.build(16, "elastic", PRESETS["smoke"], 0, torch.device("cpu"), logit_offset=4.0)
    step = regime_seeds.anneal(model, 4.0, 10)
    memories = [m for m in model.modules() if isinstance(m, ElasticMemory)]
    assert memories
    for s, want in ((1, 3.6), (5, 2.0), (10, 0.0), (12, 0.0)):
        step(s, 0.0)
        assert [m.offset() for m in memories] == pytest.approx([want] * len(memories))
    result = regime_seeds.main(["--preset", "smoke", "--out", str(tmp_path), "--seeds", "0",
                                "--arms", "elastic warm-up,elastic normalised keys"])
    assert [r["arm"] for r in result["rows"]] == ["elastic warm-up", "elastic normalised keys"]
    assert "falls linearly to 0 over the first 200 steps" in (tmp_path / "regime_seeds.md").read_text()


def test_regime_seeds_trains_on_the_answers_unless_told_and_takes_the_learning_rates(monkeypatch):
    """By default an arm trains on the scored answers alone; ``--train-on all`` trains on every
    token (the same tokens); ``--lr`` and ``--memory-lr`` reach the training."""
    import common
    import regime_seeds

    seen = []

    class Stop(Exception):
        pass

    def train(model, task, p, seed, **kwargs):
        seen.append((task, p.lr, p.memory_lr))
        raise Stop

    monkeypatch.setattr(common, "train", train)
    for extra in ([], ["--train-on", "all", "--lr", "0.005", "--memory-lr", "0.05"]):
        with pytest.raises(Stop):
            regime_seeds.main(["--preset", "smoke", "--seeds", "0", "--arms", "elastic", *extra])
    (scored_task, default_lr, default_memory_lr), (every_task, lr, memory_lr) = seen
    assert (default_lr, default_memory_lr, lr, memory_lr) == (common.Preset.lr, 0.0, 0.005, 0.05)
    scored = scored_task.sample(2, 512, torch.Generator().manual_seed(0))
    every = every_task.sample(2, 512, torch.Generator().manual_seed(0))
    assert torch.equal(every.input_ids, scored.input_ids)
    assert (every.targets != -100).all()
    assert torch.equal(scored.targets != -100, scored.scored)
    assert 0 < scored.scored.sum() < scored.scored.numel() // 20  # answers are a few percent of the tokens
    with pytest.raises(SystemExit):
        regime_seeds.main(["--preset", "smoke", "--seeds", "0", "--arms", "elastic", "--lr", "0"])
    with pytest.raises(SystemExit):
        regime_seeds.main(["--preset", "smoke", "--seeds", "0", "--arms", "elastic", "--memory-lr", "-1"])


def _llama_on_a_corpus(tmp_path, monkeypatch) -> list[str]:
    """The retrofit scripts' ``--model`` and ``--dataset`` arguments for a tiny random Llama with
    100 trained positions and a tiny code corpus its tokenizer was trained on."""
    pytest.importorskip("transformers")
    from train_helpers import make_corpus, tiny_llama_folder

    monkeypatch.setenv("MEMPLUG_CACHE", str(tmp_path / "cache"))
    root = make_corpus(tmp_path / "src", files=20, words=1500)  # tiny_llama_folder trains its BPE on it
    folder = tiny_llama_folder(tmp_path, positions=100)
    return ["--model", str(folder), "--dataset", "code", "--dataset-option", f"root={root}"]


def test_retrofit_finetune_smoke(tmp_path, monkeypatch):
    """The whole retrofit experiment on a tiny random Llama and a tiny corpus: every arm runs,
    the gated arm is the local+sink arm until trained, full attention is n/a past its positions."""
    pytest.importorskip("peft")
    import retrofit_finetune

    model_and_data = _llama_on_a_corpus(tmp_path, monkeypatch)
    retrofit_finetune.main(["--preset", "smoke", *model_and_data, "--out", str(tmp_path / "out"), "--threads", "1"])
    data = _outputs(tmp_path / "out", "retrofit_finetune")["data"]
    rows = data["rows"]
    masked = {f"elastic+gate trained ({m}), memory masked at test" for m in ("memory", "LoRA")}
    assert set(rows) == set(retrofit_finetune.ARMS) | masked
    assert rows["elastic+gate"]["beyond window"] == pytest.approx(rows["local+sink"]["beyond window"], rel=1e-9)
    # only the gates were trained: without its memory the arm is the local+sink model again
    assert rows["elastic+gate trained (memory), memory masked at test"]["beyond window"] == pytest.approx(
        rows["local+sink"]["beyond window"], rel=1e-9)
    assert rows["elastic+gate trained (memory)"]["beyond window"] != rows["local+sink"]["beyond window"]
    assert rows["full attention"]["passkey 120"] is None  # 120 tokens > its 100 trained positions
    # the report keeps each arm's per-token losses, with and without its memory: any span can be
    # recomputed from it, not only the table's buckets
    block = retrofit_finetune.PRESETS["smoke"].block
    for arm, key, name in [("local+sink", "nll", "local+sink"),
                           ("elastic+gate trained (LoRA)", "masked_nll", "elastic+gate trained (LoRA), memory masked at test")]:
        nll = torch.tensor(data["arms"][arm][key], dtype=torch.float64)
        assert rows[name]["beyond window"] == pytest.approx(nll[block:].mean().exp().item(), rel=1e-9)
    trained = data["arms"]["elastic+gate trained (LoRA)"]["training"]
    assert trained["summary"]["mode"] == "lora" and trained["tokens"] == 2 * 64
    assert data["arms"]["elastic+gate trained (memory)"]["training"]["summary"]["trainable"] == 2 * 2  # one gate per head (2) per layer (2)
    text = (tmp_path / "out" / "retrofit_finetune.md").read_text()
    assert "on perplexity beyond the window" in text and "with its memory masked at test" in text
    # measuring differently (no probe) reruns the arm on its stored trained weights, not a new training
    stored = tmp_path / "out" / "retrofit_finetune.arms" / "elastic_gate_trained__LoRA_.json"
    before = json.loads(stored.read_text())
    retrofit_finetune.main(["--preset", "smoke", *model_and_data, "--arms", "elastic+gate trained (LoRA)",
                            "--probe-lengths", "none", "--out", str(tmp_path / "out"), "--threads", "1"])
    after = json.loads(stored.read_text())
    assert after["fingerprint"] != before["fingerprint"] and after["training"]["reused"]
    assert after["training"]["seconds"] == before["training"]["seconds"]
    assert after["nll"] == before["nll"] and after["masked_nll"] == before["masked_nll"]
    # read at test with a larger memory: the same trained weights, other reads
    wider = ["--eval-memory-option", "order=16", "--eval-memory-option", "samples=16"]
    retrofit_finetune.main(["--preset", "smoke", *model_and_data, "--arms", "elastic+gate trained (LoRA)",
                            "--probe-lengths", "none", *wider, "--out", str(tmp_path / "out"), "--threads", "1"])
    read = json.loads(stored.read_text())
    assert read["training"]["reused"] and read["training"]["seconds"] == before["training"]["seconds"]
    assert read["nll"] != before["nll"] and read["masked_nll"] == before["masked_nll"]  # masked: no memory to widen
    assert "read at test with {'order': 16, 'samples': 16}" in (tmp_path / "out" / "retrofit_finetune.md").read_text()
    # ... which it refuses to train under
    with pytest.raises(SystemExit, match="--eval-memory-option: 'elastic\\+gate trained \\(LoRA\\)' has no weights"):
        retrofit_finetune.main(["--preset", "smoke", *model_and_data, "--arms", "elastic+gate trained (LoRA)",
                                "--probe-lengths", "none", *wider, "--out", str(tmp_path / "other"), "--threads", "1"])


def test_count_ops_counts_computing_calls_once():
    import throughput

    a, b = torch.randn(8, 4), torch.randn(4, 3)

    def step():
        c = (a @ b).view(2, 12).t().contiguous()  # one matmul, the rest re-describes or copies
        (c * 2).sum()

    # the copy inside clone, the views and matmul's dispatch to mm are not counted again
    assert throughput.count_ops(step) == {"aten::mm": 1, "aten::clone": 1, "aten::mul": 1, "aten::sum": 1}
    assert throughput.count_flops(step) == 2 * 8 * 4 * 3  # the matmul's multiply-adds; elementwise not counted


def test_count_flops_sees_in_place_products_and_cpu_attention():
    """The block scan's in-place multiply-adds and the CPU's fused attention are counted like their
    out-of-place forms (torch's registry alone counts neither: the scan would look free)."""
    import throughput

    state, a, b = torch.zeros(2, 5, 3), torch.randn(2, 5, 4), torch.randn(2, 4, 3)
    assert throughput.count_flops(lambda: state.baddbmm_(a, b)) == 2 * 2 * 5 * 4 * 3
    assert throughput.count_flops(lambda: state[0].addmm_(a[0], b[0])) == 2 * 5 * 4 * 3
    q, k, v = (torch.randn(1, 2, 8, 4, requires_grad=True) for _ in range(3))

    def attend():
        torch.nn.functional.scaled_dot_product_attention(q, k, v).sum().backward()

    # forward q k^T and p v: 2 x (2 heads x 8 x 8 x 4) multiply-adds; the backward twice that
    assert throughput.count_flops(attend) == 2 * (2 * 2 * 8 * 8 * 4) * (1 + 2.5)


def test_median_interval_is_the_narrowest_with_its_coverage():
    """Against the coverage summed term by term: [x_(k), x_(n+1-k)] covers the median with
    probability P(k <= Binomial(n, 1/2) <= n - k); the interval returned covers at least 95%, the
    next narrower one less."""
    import common

    def coverage(n: int, k: int) -> float:
        return sum(math.comb(n, j) for j in range(k, n - k + 1)) / 2**n

    for n in range(1, 40):
        interval = common.median_interval([float(v) for v in reversed(range(1, n + 1))])  # unsorted input
        if interval is None:
            assert coverage(n, 1) < 0.95
            continue
        k = int(interval[0])
        assert interval == (k, n + 1 - k) and coverage(n, k) >= 0.95
        assert k + 1 > n + 1 - (k + 1) or coverage(n, k + 1) < 0.95
    assert common.median_interval([3.0] * 15) == (3.0, 3.0)


def test_throughput_times_a_pretrained_model_against_itself(tmp_path, monkeypatch):
    import throughput
    from train_helpers import tiny_llama_folder

    folder = tiny_llama_folder(tmp_path)
    monkeypatch.setattr(sys, "argv", [
        "throughput.py", "--backbone", f"hf:{folder}", "--memories", "hf,none,elastic", "--scale", "1x",
        "--block", "32", "--seq", "96", "--batch", "1", "--modes", "eager", "--rounds", "6", "--warmup", "1",
        "--threads", "1", "--dtype", "fp32", "--count-ops", "--out", str(tmp_path / "out" / "throughput")])
    throughput.main()
    data = _outputs(tmp_path / "out", "throughput")["data"]
    rows = {r["memory"]: r for r in data["results"]}
    assert set(rows) == {"hf", "none", "elastic"} and data["baseline"] == "hf"
    assert rows["hf"]["paired_ratio_to_none"] == 1.0  # the ratios are to the unmodified model
    # the interval is of the rounds' ratios (the baseline's own are all 1), around their median
    assert rows["hf"]["paired_ratio_interval"] == [1.0, 1.0]
    low, high = rows["elastic"]["paired_ratio_interval"]
    assert low <= rows["elastic"]["paired_ratio_to_none"] <= high
    # the attached arms hold the HF model's own weights (elastic adds none), not copies ...
    assert rows["none"]["parameters"] == rows["elastic"]["parameters"] == rows["hf"]["parameters"]
    # ... and the hf arm is the HF model's own forward, not the attached window
    assert rows["hf"]["ops_per_step"] != rows["none"]["ops_per_step"]
    # the memory's reads and scans are work beyond the window's: its FLOP ceiling is below 1
    assert rows["hf"]["flop_ceiling"] == 1.0 and rows["elastic"]["flop_ceiling"] < rows["none"]["flop_ceiling"]
    assert "ratio to hf (paired)" in (tmp_path / "out" / "throughput.md").read_text()
    # beside its speed, how exact the memory's scan runs: float32 against float64, so small but not zero
    assert 0 < rows["elastic"]["scan_error"] < 1e-5 and rows["none"]["scan_error"] is rows["hf"]["scan_error"] is None
    assert "| elastic | 1x | " in (tmp_path / "out" / "throughput.md").read_text().split("scan error vs float64")[1]


def test_retrofit_gate_sweep_smoke(tmp_path, monkeypatch):
    """Every gate fixed at each value in turn, with a memory option: gate 0 is the local window
    with its sink (the retrofit's local+sink perplexity), an open gate changes it."""
    import retrofit_finetune
    import retrofit_gate_sweep

    model_and_data = _llama_on_a_corpus(tmp_path, monkeypatch)
    legt = ["--memory-option", "encoder=legt", "--memory-option", "encoder_options={window=40}"]
    retrofit_gate_sweep.main(["--preset", "smoke", "--gates", "0,1", "--eval-tokens", "300", *model_and_data, *legt,
                              "--out", str(tmp_path / "out")])
    closed, opened = _outputs(tmp_path / "out", "retrofit_gate_sweep")["data"]["rows"]
    retrofit_finetune.main(["--preset", "smoke", *model_and_data, "--arms", "local+sink", "--probe-lengths", "none",
                            "--out", str(tmp_path / "out")])
    local = _outputs(tmp_path / "out", "retrofit_finetune")["data"]["rows"]["local+sink"]
    assert "No passkey probe" in (tmp_path / "out" / "retrofit_finetune.md").read_text()
    assert closed["16-300"] == pytest.approx(local["beyond window"], rel=1e-9)
    # in the first block the memory is empty: an open gate merges two equal attentions, equal to
    # float32 rounding (bit for bit on some CPUs, not on others)
    assert opened["16-300"] != closed["16-300"] and opened["0-16"] == pytest.approx(closed["0-16"], rel=1e-6)
    assert "'encoder': 'legt'" in (tmp_path / "out" / "retrofit_gate_sweep.md").read_text()
    retrofit_gate_sweep.main(["--preset", "smoke", "--gates", "0", "--block", "20", "--eval-tokens", "300",
                              *model_and_data, "--out", str(tmp_path / "out"), "--name", "wider"])
    (wider,) = _outputs(tmp_path / "out", "wider")["data"]["rows"]
    assert set(wider) == {"gate", "0-20", "20-300", "0-256", "256-300", "seconds"}  # + fixed buckets


def test_retrofit_arms_are_reused_only_where_their_settings_match():
    """Changing a setting reruns exactly the arms that read it."""
    from dataclasses import replace

    import retrofit_finetune as rf

    args, p = rf.parse(["--preset", "smoke"])

    def changed(**fields):
        return {arm for arm in rf.ARMS if rf.fingerprint(arm, args, p) != rf.fingerprint(arm, args, replace(p, **fields))}

    gated = {"elastic+gate trained (memory)", "elastic+gate trained (LoRA)"}
    trained = gated | {"local+sink trained (LoRA)"}
    assert changed(lr_memory=0.5) == gated
    assert changed(lr_lora=0.5) == changed(lora_rank=4) == {"elastic+gate trained (LoRA)", "local+sink trained (LoRA)"}
    assert changed(steps=7) == changed(seq=32) == changed(bptt=32) == trained
    assert changed(order=4) == {"elastic", "elastic+gate"} | gated
    assert changed(sink=2) == set(rf.ARMS) - {"local", "full attention"}
    assert changed(block=8) == set(rf.ARMS) - {"full attention"}
    assert changed(eval_tokens=400) == changed(probe_samples=2) == set(rf.ARMS)
    # the trained weights' key ignores what is measured, not how they were trained
    weights = {arm: rf.fingerprint(arm, args, p, rf.EVAL_FIELDS) for arm in rf.ARMS}
    assert weights == {arm: rf.fingerprint(arm, args, replace(p, eval_tokens=400, probe_lengths=(), chunk=32),
                                           rf.EVAL_FIELDS) for arm in rf.ARMS}
    assert all(weights[arm] != rf.fingerprint(arm, args, replace(p, steps=7), rf.EVAL_FIELDS) for arm in trained)
    assert len({rf.fingerprint(arm, args, p) for arm in rf.ARMS}) == len(rf.ARMS)  # arms never share a result
    wider, _ = rf.parse(["--preset", "smoke", "--eval-memory-option", "order=16"])
    assert {arm for arm in rf.ARMS if rf.fingerprint(arm, args, p) != rf.fingerprint(arm, wider, p)} == (
        {"elastic", "elastic+gate"} | gated)
    assert all(rf.fingerprint(arm, wider, p, rf.EVAL_FIELDS) == weights[arm] for arm in rf.ARMS)
    legt, _ = rf.parse(["--preset", "smoke", "--memory-option", "encoder=legt"])
    assert {arm for arm in rf.ARMS if rf.fingerprint(arm, args, p) != rf.fingerprint(arm, legt, p)} == (
        {"elastic", "elastic+gate"} | gated)


def test_retrofit_block_sets_every_window_and_the_limits_it_implies(capsys):
    import retrofit_finetune as rf

    args, p = rf.parse(["--preset", "smoke", "--block", "40", "--probe-lengths", "80"])
    assert p.block == 40 and p.probe_lengths == (80,)
    assert rf.fingerprint("local", args, p) != rf.fingerprint("local", *rf.parse(["--preset", "smoke"]))
    args, p = rf.parse(["--preset", "smoke", "--probe-depths", "0,0.5,1", "--probe-samples", "3"])
    assert p.probe_depths == (0.0, 0.5, 1.0) and p.probe_samples == 3
    for bad, says in ((["--block", "0"], "--block must be >= 1, got 0"),
                      (["--block", "40", "--probe-lengths", "79"], "integers >= 80"),
                      (["--probe-depths", "0.5,1.5"], "--probe-depths must be comma-separated numbers in [0, 1]"),
                      (["--probe-depths", "half"], "got 'half'"),
                      (["--probe-samples", "0"], "--probe-samples must be >= 1, got 0"),
                      (["--eval-memory-option", "order=0"], "--eval-memory-option {'order': 0}"),
                      (["--eval-memory-option", "order"], "--eval-memory-option")):
        with pytest.raises(SystemExit):
            rf.parse(["--preset", "smoke", *bad])
        assert says in capsys.readouterr().err


def test_retrofit_bptt_steps_through_each_window_in_order_with_the_state_carried(capsys):
    """With ``--bptt`` a step trains on the next segment of its window, reading the state the
    previous segment left (without its gradient); a new window starts from no state."""
    from types import SimpleNamespace

    import retrofit_finetune as rf

    class Recorder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))
            self.calls: list[tuple[list[int], object]] = []

        def forward(self, ids, state=None):
            self.calls.append((ids[0].tolist(), state))
            logits = (self.w * ids[..., None].float()).expand(-1, -1, 5)  # (B, S, 5)
            carried = logits.sum() + (0.0 if state is None else state)
            return SimpleNamespace(logits=logits, state=carried)

    class Windows:
        def __init__(self) -> None:
            self.drawn = 0

        def sample(self, batch, length, generator):
            self.drawn += 1
            ids = torch.arange(length + 1).repeat(batch, 1) + 100 * self.drawn  # (B, T + 1): window k from 100k
            return SimpleNamespace(input_ids=ids[:, :-1], targets=ids[:, 1:] % 5)

    _, p = rf.parse(["--preset", "smoke", "--seq", "8", "--bptt", "4", "--steps", "5"])
    model, windows = Recorder(), Windows()
    out = rf.finetune(model, windows, p, 0, "fp32", torch.device("cpu"))
    assert out["tokens"] == 5 * 4 and windows.drawn == 3
    starts = [state is None for _, state in model.calls]
    assert starts == [True, False, True, False, True]  # a fresh state at each window's first segment only
    assert all(not state.requires_grad for _, state in model.calls if state is not None)
    # each window's segments, in order
    assert [ids for ids, _ in model.calls] == [[100, 101, 102, 103], [104, 105, 106, 107], [200, 201, 202, 203],
                                               [204, 205, 206, 207], [300, 301, 302, 303]]
    for bad in ("3", "-1"):
        with pytest.raises(SystemExit):
            rf.parse(["--preset", "smoke", "--seq", "8", "--bptt", bad])
        assert "--bptt must be 0 or a divisor of the training window (8 tokens)" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a shorter window must still hold the preset's segments
        rf.parse(["--preset", "gpu", "--seq", "2048"])
    assert "divisor of the training window (2048 tokens), got 4096" in capsys.readouterr().err


def test_retrofit_without_probes_reports_perplexity_only():
    import retrofit_finetune as rf

    _, p = rf.parse(["--preset", "smoke", "--probe-lengths", "none"])
    assert p.probe_lengths == ()
    row = rf.row({"arm": "local", "nll": [1.0] * (p.eval_tokens - 1) + [3.0], "probes": {"cells": []}}, p, p.eval_tokens)
    assert not [k for k in row if k.startswith("passkey")]
    assert row["beyond window"] == pytest.approx(math.exp(1 + 2 / (p.eval_tokens - p.block)))  # one 3 among ones


@pytest.mark.parametrize("option, says", [("encoder=nope", "unknown encoder 'nope'"), ("bogus=1", "'bogus'"),
                                          ("order", "takes KEY=VALUE")])
def test_retrofit_refuses_a_bad_memory_option_before_loading(option, says, capsys):
    import retrofit_finetune as rf

    with pytest.raises(SystemExit) as exc:
        rf.parse(["--memory-option", option])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exc.value.code == 2 and "error: --memory-option" in err and says in err


def test_retrofit_verdicts_judge_only_trained_arms():
    import retrofit_finetune

    local = {"arm": "local", "beyond window": 48.0, "256-8191": 47.0}
    untrained = retrofit_finetune.verdicts({"local": local, "elastic": {**local, "arm": "elastic"}}, None)
    assert len(untrained) == 1 and "none is judged" in untrained[0]  # a report of untrained arms says so
    trained = {**local, "arm": "elastic+gate trained (memory)", "beyond window": 47.5}
    judged = retrofit_finetune.verdicts({"local": local, trained["arm"]: trained}, None)
    assert judged == ["- **elastic+gate trained (memory)** beats local (48.000) on perplexity beyond the window: 47.500."]
    # passkey: a higher mean is "better" only beyond two standard errors of the difference
    p = retrofit_finetune.PRESETS["cpu"]  # 3 depths x 4 samples per length

    def passkey(mine: float, theirs: float, lengths: int) -> str:
        keys = [f"passkey {n}" for n in range(lengths)]
        rows = {"local": {**local, **dict.fromkeys(keys, theirs)}, trained["arm"]: {**trained, **dict.fromkeys(keys, mine)}}
        return retrofit_finetune.verdicts(rows, p)[-1]

    assert passkey(0.5, 0.25, 1).endswith("(12 and 12 answers; two standard errors of the difference: 0.38): NOT better.")
    assert passkey(0.5, 0.25, 8).endswith("(96 and 96 answers; two standard errors of the difference: 0.14): better.")
    assert passkey(0.25, 0.5, 8).endswith("NOT better.")


@pytest.mark.parametrize("bad, named", [(["--backbone", "hf:"], "--backbone"),
                                         (["--backbone", "gpt2"], "--backbone"),
                                         (["--memories", "none,knn", "--scan-method", "parallel"], "--scan-method"),
                                         (["--memories", "none", "--scan-precision", "bf16x6"], "--scan-precision"),
                                         (["--memories", "none,knn", "--dense-steps"], "--dense-steps"),
                                         (["--scan-method", "fused", "--scan-precision", "bf16x6"],
                                          "--scan-method fused"),
                                         (["--memories", "none,elastc"], "unknown memory 'elastc'"),
                                         (["--memories", "hf,none"], "--backbone hf:MODEL"),
                                         (["--scale", "0x"], "--scale"),
                                         (["--modes", "eagre"], "--modes"),
                                         (["--rounds", "0"], "--rounds")])
def test_throughput_refuses_bad_options_in_one_line(bad, named, tmp_path, monkeypatch, capsys):
    """Checked before anything is built: usage and one line naming the argument, exit status 2."""
    import throughput

    monkeypatch.setattr(sys, "argv", ["throughput.py", *bad, "--out", str(tmp_path / "throughput")])
    with pytest.raises(SystemExit) as exc:
        throughput.main()
    assert exc.value.code == 2 and named in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "throughput.md").exists()


def test_throughput_refuses_the_fused_scan_without_a_gpu(tmp_path, monkeypatch):
    """The one check that needs the device: Triton's fused scan on a CPU (without its interpreter)."""
    import throughput

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(sys, "argv", ["throughput.py", "--memories", "none,elastic", "--scan-method", "fused",
                                      "--out", str(tmp_path / "throughput")])
    with pytest.raises(SystemExit) as exc:
        throughput.main()
    assert str(exc.value).startswith("--scan-method fused") and "\n" not in str(exc.value)
    assert not (tmp_path / "throughput.md").exists()


def test_scan_speed_smoke(tmp_path):
    """The scan benchmark times both step kinds on LegS's own transitions (and, asked, the compiled
    one), finds them equal, and refuses a non-positive size with the argument's name."""
    import scan_speed

    row = scan_speed.main(["--order", "300", "--channels", "4", "--blocks", "3", "--block", "8", "--rounds", "1",
                           "--out", str(tmp_path)])
    assert row["relative gap"] < 1e-5 and row["dense s"] > 0 and row["triangular s"] > 0
    text = (tmp_path / "scan_speed.md").read_text()
    assert "3 row chunk(s) of 128: 0.6667 of the dense" in text  # (3 + 1) / (2 x 3)
    row = scan_speed.main(["--order", "200", "--channels", "4", "--blocks", "3", "--block", "8", "--rounds", "1",
                           "--compiled", "--out", str(tmp_path)])
    assert row["compiled relative gap"] < 1e-5 and row["compiled triangular s"] > 0
    assert "under torch.compile (out-of-place steps)" in (tmp_path / "scan_speed.md").read_text()
    torch._dynamo.reset()
    with pytest.raises(SystemExit, match="--blocks must be a positive integer"):
        scan_speed.main(["--blocks", "0", "--out", str(tmp_path)])


def test_scan_methods_counts_two_calls_per_sequential_step_and_finds_the_crossover(tmp_path):
    """The sequential scan's training step makes two calls per block (a step forward, one
    backward); the doubling scan makes more at 4 blocks and fewer at 64, and the report says from
    where; the fused scan makes the sequential scan's calls for two blocks (its kernel, once per
    direction) at any length. A bad block list is refused with the argument's name."""
    import scan_methods

    rows = {r["blocks"]: r for r in scan_methods.main(["--blocks", "4,8,64", "--order", "8", "--channels", "4",
                                                         "--out", str(tmp_path)])["rows"]}
    assert rows[8]["sequential calls"] - rows[4]["sequential calls"] == 2 * 4
    assert rows[4]["parallel calls"] > rows[4]["sequential calls"]
    assert rows[64]["parallel calls"] < rows[64]["sequential calls"]
    assert rows[64]["parallel multiply-adds"] > 6 * rows[64]["sequential multiply-adds"]
    if "fused calls" in rows[4]:  # Triton installed: one kernel launch per direction at any length
        assert rows[64]["fused calls"] == rows[4]["fused calls"] == rows[4]["sequential calls"] - 2 * (4 - 2)
    assert "fewer calls from 64 blocks on" in (tmp_path / "scan_methods.md").read_text()
    with pytest.raises(SystemExit, match="--blocks must be comma-separated integers >= 2"):
        scan_methods.main(["--blocks", "1,4", "--out", str(tmp_path)])


def test_scan_precision_emulates_the_formats_and_ranks_the_schemes(tmp_path):
    """TF32 keeps 11 significant bits rounded to nearest even, split parts add back to the
    operand, and on a short LegS stream the schemes rank as their bits say: bf16x6 and 3xTF32
    near float32, bf16x3 worse, a single bf16 or TF32 product far worse."""
    import scan_precision as sp

    one = 1.0 + 2.0**-10  # the last TF32 bit set: kept
    tie_down, tie_up = 1.0 + 2.0**-11, 1.0 + 3 * 2.0**-11  # halfway cases round to the even neighbour
    x = torch.tensor([one, tie_down, tie_up, -tie_up, 1.0 + 2.0**-11 + 2.0**-20])
    assert sp.round_tf32(x).tolist() == [one, 1.0, 1.0 + 2.0**-9, -(1.0 + 2.0**-9), one]
    y = torch.randn(64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sum(sp.split(y, 3, sp.round_bf16)), y)  # 3 x 8 bits hold float32's 24
    assert (sum(sp.split(y, 2, sp.round_tf32)) - y).abs().max() <= 2.0**-21 * y.abs().max()
    errors = sp.main(["--orders", "16", "--tokens", "20000", "--block", "500", "--out", str(tmp_path)])[16]
    base = errors["float32"]
    assert errors["bf16x6"] < 3 * base and errors["3xTF32"] < 3 * base
    assert 10 * base < errors["bf16x3"] < errors["TF32"] < errors["bf16"]
    assert "| bf16x6 | 6 |" in (tmp_path / "scan_precision.md").read_text()
    with pytest.raises(SystemExit, match="--orders must be comma-separated integers >= 1"):
        sp.main(["--orders", "64,x", "--out", str(tmp_path)])


def test_retrofit_table_weighs_buckets_by_tokens_over_the_same_span_for_every_window(tmp_path):
    """Perplexity over a span is exp of the buckets' token-weighted mean log-perplexity; the
    "256-8191" aggregate column is not a bucket; a gap in the buckets or a missing value gives
    None; the table gathers every arm of the given reports and blanks N = P for arms without memory."""
    import retrofit_table

    row = {"arm": "a", "0-256": 10.0, "256-1024": 20.0, "1024-4096": 30.0, "4096-8192": 40.0, "256-8191": 99.0,
           "beyond window": 35.0}
    want = math.exp((768 * math.log(20) + 3072 * math.log(30) + 4096 * math.log(40)) / 7936)
    assert retrofit_table.from_start(row, 256, 8192) == pytest.approx(want)
    assert retrofit_table.from_start(row, 1024, 8192) == pytest.approx(math.exp((3072 * math.log(30) + 4096 * math.log(40)) / 7168))
    assert retrofit_table.from_start(row, 256, 16384) is None  # the stream ends at 8192
    assert retrofit_table.from_start({k: v for k, v in row.items() if k != "1024-4096"}, 256, 8192) is None
    assert retrofit_table.from_start(row | {"4096-8192": None}, 256, 8192) is None
    facts = {"command": "python benchmarks/retrofit_finetune.py --preset cpu", "precision": {"name": "fp32"},
             "data": {"preset": {"order": 64, "samples": 64, "block": 256, "steps": 30, "seq": 2048, "bptt": 0,
                                 "eval_tokens": 8192},
                      "args": {"memory_option": "{'order': 1024, 'samples': 1024}"},
                      "rows": {"elastic": row | {"arm": "elastic", "passkey 1024": 0.5}, "local": row | {"arm": "local"}}}}
    report = tmp_path / "retrofit_finetune_x.json"
    report.write_text(json.dumps(facts))
    retrofit_table.main([str(report), "--out", str(tmp_path / "out")])
    data = json.loads((tmp_path / "out" / "retrofit_finetune.json").read_text())["data"]
    elastic, local = data["rows"]
    assert (elastic["N = P"], local["N = P"]) == ("1024 / 1024", "")
    assert elastic["256-8192"] == pytest.approx(want) and elastic["256-end"] == pytest.approx(want)
    assert elastic["passkey 1024"] == 0.5 and elastic["training steps x tokens"] == "30 x 2048"
    # weights trained at one size, read at another: both sizes, and any other option read differently
    facts["data"]["args"]["eval_memory_option"] = "{'order': 2048, 'samples': 2048, 'logit_offset': -0.5}"
    assert retrofit_table.setting(facts)["N = P"] == "1024 / 1024, read with 2048 / 2048, logit_offset=-0.5"
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"command": "python benchmarks/throughput.py", "data": {}}))
    with pytest.raises(SystemExit, match="not a report of benchmarks/retrofit_finetune.py"):
        retrofit_table.main([str(other), "--out", str(tmp_path / "out")])
