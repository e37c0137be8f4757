"""memplug.probes: haystacks, probe samples, branching readers, scoring and the command line."""

from __future__ import annotations

import json
import random
import re

import pytest
import torch
import torch.nn.functional as F
from train_helpers import make_corpus

import memplug
from memplug.app.cli import main
from memplug.data.tokenizers import ByteTokenizer
from memplug.probes import PROBES, Haystack, MemoryModelReader, Reader, make_probe, run_probes, to_markdown
from memplug.probes.runner import _greedy, _loglik
from single_thread import one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")
TOK = ByteTokenizer()


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMPLUG_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def corpus(tmp_path):
    """A small code corpus whose test split is the haystack (options of the ``code`` dataset)."""
    return {"root": str(make_corpus(tmp_path / "src", files=20, words=400))}


def haystack(corpus) -> Haystack:
    return Haystack(TOK, "code", "test", options=corpus)


@pytest.mark.parametrize("name", sorted(PROBES))
@pytest.mark.parametrize("depth", [0.0, 0.4, 1.0])
def test_context_holds_the_needles_at_their_depths(corpus, name, depth):
    hay = haystack(corpus)
    sample = make_probe(name).sample(depth, random.Random(1))
    context, question = hay.context(sample, 900, random.Random(2))
    assert len(context) + len(question) == 900
    text = TOK.decode(context)
    asked = sample.needles[0]
    at = text.index(asked.text)
    room = len(context) - sum(len(hay.encode(" " + n.text + " ")) for n in sample.needles)
    before = sum(len(" " + n.text + " ") for n in sample.needles if n.depth < asked.depth)
    assert abs((at - 1 - before) - depth * room) <= 1  # byte tokens: one character each
    assert TOK.decode(question) == "\n\n" + sample.question
    assert len(set(sample.candidates)) == len(sample.candidates) == 4


def test_each_probe_states_its_right_answer(corpus):
    rng = random.Random(0)
    for name in PROBES:
        sample = make_probe(name).sample(0.5, rng)
        right = sample.candidates[sample.answer].strip()
        stated = " ".join(n.text for n in sample.needles)
        if name == "variables":
            value = re.search(r"value (\d+)", sample.question).group(1)
            assert f"VAR {right.split()[0]} = {value}." in stated
        else:
            for part in right.split(", "):
                assert part in stated
        for k, wrong in enumerate(sample.candidates):
            if k != sample.answer and name in ("needle", "passkey"):
                assert wrong.strip() not in stated


def test_lengths_beyond_the_corpus_or_too_short_are_refused(corpus):
    hay = haystack(corpus)
    sample = make_probe("passkey").sample(0.5, random.Random(0))
    with pytest.raises(ValueError, match="more than the test split of code has"):
        hay.context(sample, len(hay.tokens) + 500, random.Random(0))
    with pytest.raises(ValueError, match="too short"):
        hay.context(sample, 20, random.Random(0))
    with pytest.raises(ValueError, match="more haystack than the test split"):
        run_probes(OracleReader(), TOK, [make_probe("passkey")], [len(hay.tokens) + 1], dataset="code",
                   split="test", samples=1, dataset_options=corpus)


class OracleReader(Reader):
    """Knows the pass key: reads the text, and right after "The pass key is" gives the key's next
    byte a high logit, everything else uniform. A probe pipeline that loses or misplaces the
    needle, or scores the wrong tokens, cannot reach accuracy 1 with it."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit

    def read(self, ids, state=None):
        seen = list(state or [])
        logits = torch.zeros(len(ids), 256)
        for i, token in enumerate(ids.tolist()):
            seen.append(token)
            text = TOK.decode(seen)
            key = re.search(r"The pass key is (\d+)\. Remember it", text)
            tail = re.search(r"What is the pass key\? The pass key is( \d*)?$", text)
            if key and tail:
                target, said = " " + key.group(1), tail.group(1) or ""
                if len(said) < len(target):
                    logits[i, ord(target[len(said)])] = 10.0
        return logits, seen


def test_an_oracle_answers_everything_and_a_blind_reader_is_at_chance(corpus):
    settings = dict(lengths=[300, 700], depths=[0.0, 0.5, 1.0], samples=4, dataset="code", split="test",
                    dataset_options=corpus)
    right = run_probes(OracleReader(), TOK, [make_probe("passkey")], **settings)
    assert all(cell["accuracy"] == 1.0 for cell in right["cells"])
    greedy = run_probes(OracleReader(), TOK, [make_probe("passkey")], scoring="greedy", **settings)
    assert all(cell["accuracy"] == 1.0 for cell in greedy["cells"])

    class Blind(Reader):
        def read(self, ids, state=None):
            return torch.zeros(len(ids), 256), None

    blind = run_probes(Blind(), TOK, [make_probe("passkey")], **settings)
    mean = sum(c["accuracy"] for c in blind["cells"]) / len(blind["cells"])
    assert mean < 0.6  # ties go to the first candidate: right a quarter of the time on average


def test_lengths_past_the_readers_limit_are_not_applicable(corpus):
    result = run_probes(OracleReader(limit=500), TOK, [make_probe("passkey")], [300, 700], depths=[0.5],
                        samples=2, dataset="code", split="test", dataset_options=corpus)
    assert [c["accuracy"] for c in result["cells"]] == [1.0, None]
    assert "| 50% | 1.00 | n/a |" in to_markdown(result)


def tiny_model():
    torch.manual_seed(0)
    return memplug.build_model("tiny", memory="elastic", block=16, backbone_options=dict(d_model=32, n_layers=2,
                               n_heads=2), memory_options=dict(order=8, samples=8)).eval()


def test_branching_from_the_state_scores_like_one_pass():
    """A candidate's log-likelihood read from the question's state equals the one computed in a
    single call over context + question + candidate: the state is shared by branches unchanged."""
    model = tiny_model()
    reader = MemoryModelReader(model, chunk=7)
    ids = torch.randint(0, 256, (60,), generator=torch.Generator().manual_seed(0))
    context, question = ids[:40], ids[40:50]
    candidates = [ids[50:55], ids[55:60]]
    _, state = reader.read(context)
    logits_q, state = reader.read(question, state)
    with torch.no_grad():
        for cand in candidates:
            full = model(torch.cat([context, question, cand])[None]).logits[0].float()
            want = F.log_softmax(full[49:-1], dim=-1).gather(1, cand[:, None]).sum()
            assert _loglik(logits_q, reader, state, cand.numpy()) == pytest.approx(float(want), abs=1e-4)
        tokens = _greedy(logits_q, reader, state, 4)
        seq = torch.cat([context, question])
        for token in tokens:
            assert token == int(model(seq[None]).logits[0, -1].argmax())
            seq = torch.cat([seq, torch.tensor([token])])


def test_hugging_face_reader_branches_through_its_cache():
    transformers = pytest.importorskip("transformers")
    from memplug.probes import HFCausalLMReader

    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=128)).eval()
    reader = HFCausalLMReader(hf, chunk=16)
    assert reader.limit == 128
    ids = torch.randint(0, 256, (50,), generator=torch.Generator().manual_seed(0))
    _, state = reader.read(ids[:40])
    first, _ = reader.read(ids[40:45], state)
    second, _ = reader.read(ids[45:50], state)  # the cache is cropped back to the context first
    with torch.no_grad():
        whole = hf(torch.cat([ids[:40], ids[45:50]])[None]).logits[0]
        torch.testing.assert_close(second, whole[40:].float(), atol=1e-4, rtol=1e-4)


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="probe must be one of needle"):
        make_probe("haystack")
    with pytest.raises(ValueError, match="depths must lie in"):
        run_probes(OracleReader(), TOK, [make_probe("passkey")], [300], depths=[1.5])
    with pytest.raises(ValueError, match="scoring must be one of loglik, greedy"):
        run_probes(OracleReader(), TOK, [make_probe("passkey")], [300], scoring="beam")
    with pytest.raises(ValueError, match="candidates must be an int >= 2"):
        make_probe("passkey", candidates=1)


def test_cli_writes_a_report_and_refuses_bad_input_in_one_line(tmp_path, corpus, capsys):
    hf = pytest.importorskip("transformers")
    from memplug.data.tokenizers import BPETokenizer

    folder = tmp_path / "llama"
    bpe = BPETokenizer.train(["def f(x): return x"] * 10, 300)
    torch.manual_seed(0)
    hf.LlamaForCausalLM(hf.LlamaConfig(vocab_size=bpe.vocab_size, hidden_size=32, intermediate_size=64,
                                       num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                       max_position_embeddings=512)).save_pretrained(folder)
    hf.PreTrainedTokenizerFast(tokenizer_object=bpe._tok).save_pretrained(folder)
    out = tmp_path / "out"
    code = main(["probe", f"hf:{folder}", "--probes", "passkey", "--lengths", "200,600", "--depths", "0.5",
                 "--samples", "1", "--dataset", "code", "--dataset-option", f"root={corpus['root']}",
                 "--out", str(out), "--threads", "1"])
    assert code == 0
    report = json.loads((out / "probes.json").read_text())
    assert [c["accuracy"] for c in report["data"]["cells"]][1] is None  # 600 > 512 trained positions
    assert (out / "probes.png").exists() and "n/a" in (out / "probes.md").read_text()
    capsys.readouterr()
    assert main(["probe", f"hf:{folder}", "--lengths", "1k"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["memplug probe: --lengths takes comma-separated int values, got '1k'"]
