"""The training loop's exactness claims with a memory that holds real state (``elastic``).

``xl``, the memory of the other training tests, draws no random numbers and its state is
already detached, so a resume that forgot the random generators, or a truncated BPTT that
forgot to detach the carried state, would pass there. These tests use ``elastic`` (its LegS
state is a function of the whole history, with a gradient path through it) and the
``jittered`` retriever (fresh random positions at every training call):

- exact resume: the losses after resuming are those of the uninterrupted run, bit for bit;
- truncated BPTT: segments carrying the state give the loss of one pass, and the gradient of a
  step is the truncated one: what flows through the state stops at each segment border;
- bf16 training stays finite and learns like float32;
- a Hugging Face backbone trained with its own tokenizer learns: its loss ends well below an
  untrained model's.

Everything is observed through :func:`memplug.app.train.train` (its reported losses, and the
gradients it hands to gradient clipping), never by calling the model with ``labels``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import pytest
import torch
import torch.nn.functional as F
from train_helpers import tiny_config, tiny_llama_folder, tiny_overrides

import memplug.app.train as train_module
from memplug.app.train import train
from memplug.data import Prepared
from memplug.data.tokenizers import Tokenizer
from memplug.data.windows import WindowSampler

#: elastic, small enough for a fast CPU step: N = 8 coefficients read back as P = 8 samples.
ELASTIC = ["model.memory.order=8", "model.memory.samples=8"]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMPLUG_CACHE", str(tmp_path / "cache"))


def test_resume_with_a_random_retriever_gives_the_same_losses_bit_for_bit(tmp_path):
    jittered = [*ELASTIC, "model.memory.retriever='jittered'", "log.save_every=2", "log.keep=3"]
    full = train(tiny_config(tmp_path, "name=full", *jittered, memory="elastic"))
    config = tiny_config(tmp_path, "name=resumed", *jittered, memory="elastic")
    rest = train(config, resume=full.checkpoint.parent / "step_0000004")
    assert rest.start_step == 4 and sorted(rest.losses) == [5, 6]
    for step in (5, 6):
        assert rest.losses[step] == full.losses[step], step  # random positions drawn again, identically


@dataclass
class Run:
    """What :class:`StepSpy` saw of one ``train()`` call."""

    initial: torch.nn.Module  # a copy of the model as built, before any step
    model: torch.nn.Module
    prepared: Prepared
    tokenizer: Tokenizer
    grads: list[dict[str, torch.Tensor]] = field(default_factory=list)  # per step, before clipping

    def first_batch(self, config) -> torch.Tensor:
        """The (batch_size, seq_len + 1) windows of step 1, from the data pipeline itself."""
        data = self.prepared.split("train").tokens(self.tokenizer)
        return WindowSampler(data, config.data.seq_len, config.train.seed).batch(1, config.train.batch_size)


class StepSpy:
    """Records from inside ``train()``, one :class:`Run` per call: the model as built and the
    data it was built for, and every step's gradients as handed to gradient clipping."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.runs: list[Run] = []
        build, clip = train_module.build_model_and_tokenizer, torch.nn.utils.clip_grad_norm_

        def spy_build(config, prepared, tokenizer_json=None):
            model, tokenizer = build(config, prepared, tokenizer_json)
            self.runs.append(Run(copy.deepcopy(model), model, prepared, tokenizer))
            return model, tokenizer

        def spy_clip(parameters, max_norm, *args, **kwargs):
            model = self.runs[-1].model
            self.runs[-1].grads.append({n: p.grad.detach().clone() for n, p in model.named_parameters()
                                        if p.grad is not None})
            return clip(parameters, max_norm, *args, **kwargs)

        monkeypatch.setattr(train_module, "build_model_and_tokenizer", spy_build)
        monkeypatch.setattr(train_module.nn.utils, "clip_grad_norm_", spy_clip)


def reference_gradients(model: torch.nn.Module, rows: torch.Tensor, segment: int,
                        detach: bool) -> dict[str, torch.Tensor]:
    """The gradient of the mean next-token loss over ``rows`` (B, S+1), the model run on segments
    of ``segment`` tokens that carry the state, cut from the graph at each border when ``detach``."""
    model = copy.deepcopy(model).train()
    x, y = rows[:, :-1], rows[:, 1:]
    state, total = None, 0.0
    for s in range(0, x.shape[1], segment):
        out = model(x[:, s : s + segment], state=state)
        total = total + F.cross_entropy(out.logits.flatten(0, 1).float(), y[:, s : s + segment].flatten(),
                                        reduction="sum")
        state = out.state.detach() if detach else out.state
    (total / y.numel()).backward()
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def relative_gap(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """max |a - b| / max |b| over all parameters (same names required)."""
    assert sorted(a) == sorted(b)
    diff = max((a[n] - b[n]).abs().max().item() for n in b)
    return diff / max(b[n].abs().max().item() for n in b)


def test_truncated_bptt_with_elastic(tmp_path, monkeypatch):
    one = ["train.steps=1", "train.warmup=1", *ELASTIC]
    spy = StepSpy(monkeypatch)
    config = tiny_config(tmp_path, "name=whole", *one, memory="elastic")
    whole = train(config)
    segments = train(tiny_config(tmp_path, "name=seg", *one, "train.bptt=32", memory="elastic"))
    (first, cut), rows = spy.runs, spy.runs[0].first_batch(config)

    # The forward values: four 32-token segments carrying elastic's state are one 128-token pass.
    assert segments.losses[1] == pytest.approx(whole.losses[1], rel=1e-6)

    # The gradients: the loop's are the references', for the whole pass and for the segments cut
    # at each border; and the two differ, by far more than rounding (gradient crosses the border
    # through the memory state in one, not in the other).
    full = reference_gradients(first.initial, rows, 128, detach=False)
    truncated = reference_gradients(first.initial, rows, 32, detach=True)
    assert relative_gap(first.grads[0], full) < 1e-5
    assert relative_gap(cut.grads[0], truncated) < 1e-5
    assert relative_gap(truncated, full) > 1e-3
    # carried without the cut, the segments' gradient is the whole pass's: what the cut removes
    assert relative_gap(reference_gradients(first.initial, rows, 32, detach=False), full) < 1e-5


def test_bf16_training_is_finite_and_learns_like_float32(tmp_path):
    steps = ["train.steps=6", "train.warmup=2", *ELASTIC]
    fp32 = train(tiny_config(tmp_path, "name=fp32", *steps, memory="elastic"))
    bf16 = train(tiny_config(tmp_path, "name=bf16", *steps, "train.precision=bf16", memory="elastic"))
    assert all(math.isfinite(v) for v in bf16.losses.values())
    # it learns: an untrained model sits at ln(256) = 5.55 nats per byte; six steps reach ~5.05
    assert bf16.evals[6]["loss"] < math.log(256) - 0.3
    learned = fp32.losses[1] - fp32.losses[6]  # ~0.4 nats
    for step in range(1, 7):  # bf16 rounding moves the losses by ~2e-4, far less than what is learned
        assert abs(bf16.losses[step] - fp32.losses[step]) < 0.01 * learned, step
    assert abs(bf16.evals[6]["loss"] - fp32.evals[6]["loss"]) < 0.01 * learned


def test_hf_backbone_learns_with_its_own_tokenizer(tmp_path):
    pytest.importorskip("transformers")
    from memplug.app.config import load_config
    from memplug.app.train import backbone_overrides

    folder = tiny_llama_folder(tmp_path)
    config = load_config(None, [*tiny_overrides(tmp_path), *backbone_overrides(f"hf:{folder}"), "train.warmup=2"])
    result = train(config)
    # untrained, the random model's loss is ln(300) = 5.70 (5.71 at step 1); six steps reach ~5.39
    assert result.losses[1] > math.log(300) - 0.05
    assert result.evals[6]["loss"] < math.log(300) - 0.15
