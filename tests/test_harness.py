"""The lm-eval model "memplug" (memplug.app.harness) against log-likelihoods and greedy tokens
computed here from one plain forward call per text, and lm-eval's command line on tiny local
tasks, offline."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("lm_eval")

from memplug.app.build import build_model_and_tokenizer  # noqa: E402
from memplug.app.checkpoint import save_checkpoint  # noqa: E402
from memplug.app.harness import MemplugLM  # noqa: E402
from train_helpers import tiny_config  # noqa: E402

NEWLINE = 10  # the byte tokenizer's "\n": the default prefix token


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A checkpoint folder of a two-layer byte-level model with an xl memory, block 16, whose
    random weights are large enough that greedy decoding does not repeat one byte."""
    tmp = tmp_path_factory.mktemp("harness")
    config = tiny_config(tmp)
    torch.manual_seed(0)
    model, _ = build_model_and_tokenizer(config, None)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.3)
    return save_checkpoint(tmp / "ckpt", model, step=0, config=config.to_dict())


@pytest.fixture(scope="module")
def lm(folder) -> MemplugLM:
    return MemplugLM(str(folder), device="cpu", chunk=5, precision="fp32")


def ids(text: str) -> list[int]:
    return list(text.encode("utf-8"))


@torch.no_grad()
def reference(lm: MemplugLM, context: list[int], continuation: list[int]) -> tuple[float, bool, list[int]]:
    """(log-probability of ``continuation`` after ``context``, greedy, arg-max tokens) from one
    forward call over the whole text, no streaming."""
    full = torch.tensor([context + continuation])  # (1, T)
    logits = lm.model(full[:, :-1]).logits[0].double()  # (T - 1, V)
    picked = range(len(context) - 1, full.shape[1] - 1)
    logp = torch.log_softmax(logits, dim=-1)
    total = sum(float(logp[t, full[0, t + 1]]) for t in picked)
    best = [int(logits[t].argmax()) for t in picked]
    return total, best == continuation, best


def requests(*args) -> list[SimpleNamespace]:
    return [SimpleNamespace(args=a) for a in args]


def test_loglikelihood_matches_one_forward_call(lm):
    # a context after which the model's greedy byte is ASCII: a one-character continuation then
    # is the greedy one, so both values of is_greedy are checked
    contexts = [f"def f(x):\n    return x + {i}" for i in range(20)]
    context, first = next((c, t) for c in contexts if (t := reference(lm, ids(c), [0])[2][0]) < 128)
    pairs = [(context, " y\n"), (context, " x * 2\n"), (context, chr(first)), ("", "import os")]
    got = lm.loglikelihood(requests(*pairs))
    for (ctx, cont), (logprob, is_greedy) in zip(pairs, got):
        want, want_greedy, _ = reference(lm, ids(ctx) or [NEWLINE], ids(cont))
        assert logprob == pytest.approx(want, rel=1e-5, abs=1e-5), (ctx, cont)
        assert is_greedy == want_greedy, (ctx, cont)
    assert [g for _, g in got[:3]] == [False, False, True]


def test_loglikelihood_moves_the_contexts_trailing_space_to_the_continuation(lm):
    """lm-eval's convention: "a = " + "1" is scored as "a =" + " 1"."""
    (got, _), = lm.loglikelihood(requests(("a = ", "1")))
    assert got == pytest.approx(reference(lm, ids("a ="), ids(" 1"))[0], rel=1e-5)


def test_loglikelihood_rolling_streams_long_text_in_bounded_calls(lm, monkeypatch):
    text = "".join(f"line {i}: value = {i * 7 % 13}\n" for i in range(30))  # ~600 bytes, 38 blocks of 16
    want, _, _ = reference(lm, [NEWLINE], ids(text))
    calls = []
    forward = lm.model.forward
    monkeypatch.setattr(lm.model, "forward",
                        lambda x, *a, **k: calls.append((x.shape[1], torch.is_grad_enabled())) or forward(x, *a, **k))
    (got,) = lm.loglikelihood_rolling(requests((text,)))
    assert got == pytest.approx(want, rel=1e-5)
    lengths = [n for n, _ in calls]
    assert max(lengths) <= lm.chunk and sum(lengths) == len(ids(text))
    # no call keeps an autograd graph: one would hold every earlier chunk's activations alive
    calls.clear()
    lm.loglikelihood(requests(("x = 1\n" * 20, " y")))
    lm.generate_until(requests(("x = 1\n", {"max_gen_toks": 3})))
    assert len(calls) > 3 and not any(grad for _, grad in calls)


def test_generate_until_is_greedy_and_stops_before_the_stop_string(lm):
    context = "x = 1\ny = "
    # greedy decoding one token at a time, each from a fresh forward call over the whole text
    tokens = ids(context)
    for _ in range(12):
        tokens.append(int(lm.model(torch.tensor([tokens])).logits[0, -1].argmax()))
    text = lm.tokenizer.decode(tokens[len(ids(context)):])
    start = next(i for i in range(2, len(text) - 1) if text.index(text[i:i + 2]) == i)
    stop = text[start:start + 2]  # first seen after at least two generated characters
    (cut, full) = lm.generate_until(requests((context, {"until": ["never", stop], "max_gen_toks": 12}),
                                             (context, {"until": [], "max_gen_toks": 7})))
    assert cut == text[:start]
    assert full == lm.tokenizer.decode(tokens[len(ids(context)):][:7])


def test_refusals_name_the_argument(folder, lm):
    with pytest.raises(ValueError, match="batch_size must be 1"):
        MemplugLM(str(folder), device="cpu", batch_size=8)
    with pytest.raises(ValueError, match="chunk"):
        MemplugLM(str(folder), device="cpu", chunk=0)
    with pytest.raises(ValueError, match="prefix_token_id"):
        MemplugLM(str(folder), device="cpu", prefix_token_id=256)
    with pytest.raises(ValueError, match="do_sample"):
        lm.generate_until(requests(("x", {"do_sample": True, "temperature": 0.7})))
    with pytest.raises(ValueError, match="num_beams"):
        lm.generate_until(requests(("x", {"num_beams": 4})))


def test_entry_point_names_the_class():
    """lm-eval versions with plugin discovery find the model through this entry point."""
    (ep,) = [ep for ep in entry_points(group="lm_eval.models") if ep.name == "memplug"]
    assert ep.load() is MemplugLM


TASKS = {
    "memplug_tiny_choice": """
output_type: multiple_choice
doc_to_text: "{{context}}"
doc_to_choice: "{{choices}}"
doc_to_target: "{{label}}"
metric_list:
  - metric: acc
""",
    "memplug_tiny_rolling": """
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{text}}"
metric_list:
  - metric: bits_per_byte
""",
    "memplug_tiny_generate": """
output_type: generate_until
doc_to_text: "{{prompt}}"
doc_to_target: "{{answer}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 6
  do_sample: false
metric_list:
  - metric: exact_match
""",
}


def write_tasks(root: Path, docs: dict[str, list[dict]]) -> None:
    root.mkdir()
    for name, body in TASKS.items():
        data = root / f"{name}.jsonl"
        data.write_text("".join(json.dumps(d) + "\n" for d in docs[name]))
        (root / f"{name}.yaml").write_text(
            f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
            f"test_split: test\n{body}metadata:\n  version: 1.0\n")


@pytest.mark.slow  # lm-eval indexes its own task catalogue on start: ~30 s
def test_lm_eval_command_line_runs_local_tasks_offline(folder, lm, tmp_path):
    choice = [{"context": "x = 1\ny =", "choices": ["2", "x"], "label": 0},
              {"context": "def f():\n   ", "choices": [" return", " pass", " 1"], "label": 1}]
    rolling = [{"text": "import os\nprint(os.getcwd())\n" * 3}, {"text": "a = 1\n"}]
    generate = [{"prompt": "if x:\n    ", "answer": "y"}, {"prompt": "z = ", "answer": "q"}]
    # the first generation doc's answer is the model's own greedy output: an exact match
    settings = {"until": ["\n"], "max_gen_toks": 6}
    outputs = lm.generate_until(requests(*[(d["prompt"], settings) for d in generate]))
    generate[0]["answer"] = outputs[0]
    write_tasks(tmp_path / "tasks", {"memplug_tiny_choice": choice, "memplug_tiny_rolling": rolling,
                                     "memplug_tiny_generate": generate})
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "OMP_NUM_THREADS": "1"}  # one thread, like the test workers beside it
    subprocess.run(
        [sys.executable, "-m", "memplug.app.harness", "--model", "memplug", "--model_args", f"path={folder},chunk=8",
         "--device", "cpu", "--tasks", ",".join(TASKS), "--include_path", str(tmp_path / "tasks"),
         "--output_path", str(tmp_path / "out")],
        check=True, capture_output=True, text=True, env=env, cwd=tmp_path,
    )
    (result_file,) = (tmp_path / "out").rglob("results_*.json")
    results = json.loads(result_file.read_text())["results"]

    def chosen(doc):
        scores = [reference(lm, ids(doc["context"]), ids(" " + c))[0] for c in doc["choices"]]
        return scores.index(max(scores))

    want_acc = sum(chosen(d) == d["label"] for d in choice) / len(choice)
    assert results["memplug_tiny_choice"]["acc,none"] == pytest.approx(want_acc)
    ll = [reference(lm, [NEWLINE], ids(d["text"]))[0] for d in rolling]
    want_bpb = -sum(ll) / sum(len(ids(d["text"])) for d in rolling) / math.log(2)
    assert results["memplug_tiny_rolling"]["bits_per_byte,none"] == pytest.approx(want_bpb, rel=1e-5)
    want_match = sum(out == d["answer"] for out, d in zip(outputs, generate)) / len(generate)
    assert results["memplug_tiny_generate"]["exact_match,none"] == pytest.approx(want_match)
