"""Synthetic tasks: shapes, scored positions, and the exact oracles against brute force."""

from __future__ import annotations

import math

import pytest
import torch

from memplug.tasks import Mixture, PasskeyTask, RecallTask, RegimeTask, make_task
from memplug.tasks.base import block_start


def brute_force_regime_nll(task: RegimeTask, ids: list[int], label: int, start: int) -> float:
    """Bayes posterior over regimes from the visible inputs ids[start:], for one next token."""
    fill, ans = task.filler.numpy(), task.answers.numpy()
    if start == 0 and ids[0] > task.query:
        post = [1.0 if r == ids[0] - task.query - 1 else 0.0 for r in range(task.regimes)]
    else:
        post = [1.0] * task.regimes
        for j in range(start, len(ids)):
            if ids[j] >= task.symbols:
                continue
            law = ans if j > start and ids[j - 1] == task.query else fill
            post = [w * law[r, ids[j]] for r, w in enumerate(post)]
    z = sum(post)
    law = ans if ids[-1] == task.query else fill
    return -math.log(sum(w / z * law[r, label] for r, w in enumerate(post)))


@pytest.mark.parametrize("context", ["full", "block:16", "window:32"])
def test_regime_oracle_matches_brute_force(context):
    task = RegimeTask(symbols=6, regimes=3, query_every=4, stated=0.5)
    batch = task.sample(4, 48, torch.Generator().manual_seed(1))
    nll = task.oracle_nll(batch, context)
    start = block_start(48, context)
    checked = 0
    for b in range(4):
        ids = batch.input_ids[b].tolist()
        for t in range(48):
            if batch.targets[b, t] >= task.symbols:
                continue
            want = brute_force_regime_nll(task, ids[: t + 1], int(batch.targets[b, t]), int(start[t]))
            assert nll[b, t].item() == pytest.approx(want, rel=1e-9)
            checked += 1
    assert checked > 100


def test_regime_history_beats_the_block():
    task = RegimeTask()
    batch = task.sample(64, 1024, torch.Generator().manual_seed(0))
    late = batch.scored[:, 256:]
    full = task.oracle_nll(batch, "full")[:, 256:][late].mean()
    block = task.oracle_nll(batch, "block:64")[:, 256:][late].mean()
    assert block - full > 0.3  # nats: the history carries real information


def test_regime_answers_follow_queries():
    task = RegimeTask()
    batch = task.sample(8, 512, torch.Generator().manual_seed(0))
    assert (batch.input_ids[batch.scored] == task.query).all()
    assert batch.input_ids.max() < task.vocab_size and batch.targets.max() < task.vocab_size


@pytest.mark.parametrize("task", [PasskeyTask(distances=(40, 100)), RecallTask(span=60)])
def test_recall_tasks_oracle(task):
    batch = task.sample(8, 256, torch.Generator().manual_seed(0))
    assert batch.scored.any()
    full = task.oracle_nll(batch, "full")[batch.scored]
    local = task.oracle_nll(batch, "block:16")[batch.scored]
    assert (full == 0).all()
    assert (local > 0).all()  # every distance exceeds a 16-token block
    # the statement really is `distance` tokens back: its marker precedes it
    for b, t in torch.nonzero(batch.scored).tolist():
        assert batch.distance[b, t] > 0


def test_passkey_repeats_the_key():
    task = PasskeyTask(key_length=5, distances=(50,))
    batch = task.sample(4, 200, torch.Generator().manual_seed(0))
    for b in range(4):
        pos = torch.nonzero(batch.scored[b]).flatten()
        asked = batch.targets[b, pos]
        stated = batch.targets[b, pos - 50]
        assert torch.equal(asked, stated)


def test_passkey_repeat_states_and_asks_a_key_in_every_segment():
    task = PasskeyTask(key_length=4, distances=(6, 8), repeat=16)
    batch = task.sample(3, 160, torch.Generator().manual_seed(0))
    assert int(batch.scored.sum()) == 4 * 10 * 3  # key tokens x segments x sequences
    assert (task.oracle_nll(batch, "block:16")[batch.scored] == 0).all()  # answerable from its own block
    for b, t in torch.nonzero(batch.scored).tolist():
        d = int(batch.distance[b, t])
        assert t // 16 == (t - d) // 16 and batch.targets[b, t] == batch.targets[b, t - d]
    assert (batch.input_ids == task.key_mark).sum() == (batch.input_ids == task.ask_mark).sum() == 30
    with pytest.raises(ValueError, match="repeat"):
        PasskeyTask(key_length=4, distances=(6, 12), repeat=16)


def test_recall_repeat_keeps_every_question_inside_its_segment():
    task = RecallTask(span=16, pairs=2, queries=4, repeat=64)
    batch = task.sample(4, 256, torch.Generator().manual_seed(0))
    assert int(batch.scored.sum()) == 4 * 4 * 4  # queries x segments x sequences
    assert (task.oracle_nll(batch, "block:64")[batch.scored] == 0).all()  # answerable from its own block
    for b, t in torch.nonzero(batch.scored).tolist():  # the binding stated d tokens back has the answer
        d = int(batch.distance[b, t])
        assert batch.targets[b, t - d] == batch.targets[b, t] and batch.input_ids[b, t - d] == batch.input_ids[b, t]
    with pytest.raises(ValueError, match="repeat"):
        RecallTask(span=16, queries=4, repeat=20)


def test_recall_distance_is_to_the_latest_mention_of_the_binding():
    task = RecallTask(span=12, pairs=1, queries=6)  # one binding: every question repeats it
    batch = task.sample(2, 64, torch.Generator().manual_seed(1))
    for b in range(2):
        where = torch.nonzero(batch.scored[b]).flatten().tolist()
        ask = [t - 1 for t in where]  # ASK marker positions, in order
        assert [int(batch.distance[b, t]) for t in where[1:]] == [q - p for p, q in zip(ask, ask[1:])]


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="task must be one of"):
        make_task("nope")
    with pytest.raises(ValueError, match="answer_prob"):
        RegimeTask(answer_prob=0.01)
    with pytest.raises(ValueError, match="context"):
        block_start(10, "block:0")


def test_mixture_draws_whole_sequences_from_each_task():
    a, b = RecallTask(span=16, pairs=2, queries=4, repeat=64), RecallTask(span=60)
    batch = Mixture(a, b).sample(32, 256, torch.Generator().manual_seed(0))
    per_row = batch.scored.sum(-1)  # 16 scored tokens per row from `a`, 4 from `b`
    assert set(per_row.tolist()) == {16, 4}
    with pytest.raises(ValueError, match="vocab_size"):
        Mixture(a, PasskeyTask())


@pytest.mark.parametrize("memory_lr", [0.0, 0.05])
def test_train_on_task_gives_the_memory_its_own_learning_rate(memory_lr):
    """One Adam step (no warm-up) moves each parameter by its group's learning rate (the first
    step's update is lr * sign(grad), weight decay aside): the gate by ``memory_lr`` (``lr`` when
    0), the backbone's matrices by ``lr``."""
    import memplug
    from memplug.tasks.run import train_on_task

    torch.manual_seed(0)
    model = memplug.build_model("tiny", memory="elastic", block=16, gate=True,
                                backbone_options=dict(d_model=32, n_layers=2, n_heads=4))
    task = RegimeTask()  # 25 token ids, inside the tiny backbone's vocabulary
    before = {n: t.detach().clone() for n, t in model.named_parameters()}
    lr = 1e-3
    train_on_task(model, task, length=64, batch=2, lr=lr, memory_lr=memory_lr, steps=1, warmup=1,
                  precision="fp32", progress=False)
    moved = {n: (t.detach() - before[n]).abs().max().item() for n, t in model.named_parameters()}
    gates = [n for n in moved if n.endswith(".gate")]
    assert gates
    for n in gates:
        assert moved[n] == pytest.approx(memory_lr or lr, rel=1e-3)
    matrices = [n for n, t in model.named_parameters() if t.ndim == 2 and not n.startswith("attn.")]
    assert max(moved[n] for n in matrices) == pytest.approx(lr, rel=0.05)
    with pytest.raises(ValueError, match="memory_lr"):
        train_on_task(model, task, length=64, batch=2, memory_lr=-1.0, steps=1, progress=False)
