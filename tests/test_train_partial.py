"""Training part of a pretrained model: ``train.trainable`` (memory, LoRA), checkpoints that hold
only the trained tensors over a checked base, gradient checkpointing, BPTT on a Hugging Face
backbone."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from memplug.app.build import load_trained
from memplug.app.checkpoint import CheckpointError, read_checkpoint
from memplug.app.config import load_config
from memplug.app.evaluate import evaluate
from memplug.app.precision import resolve_precision
from memplug.app.train import backbone_overrides, prepare_data, train
from memplug.core.model import build_model
from memplug.data.windows import eval_starts, gather
from train_helpers import tiny_config, tiny_llama_folder, tiny_overrides

pytest.importorskip("transformers")


def hf_config(tmp_path, *extra: str):
    """The tiny corpus on a random Llama folder with Elastic (gated) in both layers, 2 steps."""
    folder = tiny_llama_folder(tmp_path)
    return load_config(None, [*tiny_overrides(tmp_path, memory="elastic"), *backbone_overrides(f"hf:{folder}"),
                              "model.memory.order=8", "model.memory.samples=8", "model.gate=true",
                              "train.steps=2", "train.warmup=1", "train.lr=0.05", *extra])


def validation_loss(model, tokenizer, config) -> float:
    """The loss ``train`` reports on its validation windows, computed again for ``model``."""
    data = prepare_data(config).split("validation").tokens(tokenizer)
    seq = config.data.seq_len
    windows = gather(data.tokens, eval_starts(data, seq, config.log.eval_windows), seq + 1)
    return evaluate(model, windows, tokenizer=tokenizer, batch_size=config.train.batch_size,
                    precision=resolve_precision("fp32", "cpu"), compare_masked=False)["memory"]["loss"]


@pytest.mark.parametrize("mode", ["memory", "lora"])
def test_partial_run_stores_only_trained_tensors_and_reloads_to_the_trained_model(tmp_path, mode):
    config = hf_config(tmp_path, f"train.trainable={mode}", "train.lora_rank=2")
    result = train(config)
    stored = load_file(str(result.checkpoint / "model.safetensors"))
    gates = {name for name in stored if name.startswith("attn.") and name.endswith(".gate")}
    assert gates == {"attn.0.gate", "attn.1.gate"}
    others = set(stored) - gates
    if mode == "memory":
        assert not others
    else:  # the adapters of q, k, v and o in both layers, nothing of the base
        assert others and all(".lora_A." in n or ".lora_B." in n for n in others), sorted(others)[:4]
        assert len(others) == 2 * 4 * 2
    assert result.trainable["mode"] == mode
    assert result.trainable["trainable"] == sum(t.numel() for t in stored.values())
    assert 0 < result.trainable["trainable"] < result.trainable["total"]
    meta = read_checkpoint(result.checkpoint).meta
    assert meta["tensors"] == "trained" and len(meta["base_sha256"]) == 64
    assert meta["trainable"] == result.trainable
    assert any(bool(t.abs().max() > 0) for t in stored.values() if t.ndim == 1)  # the gates opened

    # The base plus the stored tensors is the trained model: it scores the validation windows as
    # the run did (frozen weights that had moved, or LoRA not re-applied, would change this).
    model, tokenizer, loaded_config = load_trained(result.checkpoint)
    assert validation_loss(model, tokenizer, loaded_config) == pytest.approx(result.evals[2]["loss"], abs=1e-6)


def test_partial_checkpoint_refuses_a_different_base(tmp_path):
    config = hf_config(tmp_path, "train.trainable=memory")
    result = train(config)
    folder = tmp_path / "llama-0"
    other = tiny_llama_folder(tmp_path, seed=1)
    for name in ("model.safetensors", "config.json"):
        (folder / name).write_bytes((other / name).read_bytes())
    with pytest.raises(CheckpointError, match="base"):
        load_trained(result.checkpoint)


def test_partial_run_resumes_to_the_losses_of_one_run(tmp_path):
    steps = ["train.trainable=memory", "train.steps=4", "log.save_every=2", "log.keep=2"]
    whole = train(hf_config(tmp_path, "name=whole", *steps))
    rest = train(hf_config(tmp_path, "name=rest", *steps), resume=whole.checkpoint.parent / "step_0000002")
    assert rest.start_step == 2 and sorted(rest.losses) == [3, 4]
    for step in (3, 4):
        assert rest.losses[step] == pytest.approx(whole.losses[step], abs=1e-6), step


def test_memory_learning_rate_applies_to_memory_parameters_only(tmp_path):
    from memplug.app.train import param_groups

    model = build_model("tiny", "elastic", 16, backbone_options=dict(d_model=32, n_layers=2, n_heads=2),
                        memory_options=dict(order=8, samples=8), gate=True)
    groups = param_groups(model, 0.1, memory_lr_scale=10.0)
    memory = {id(p) for n, p in model.named_parameters() if n.startswith("attn.")}
    for group in groups:
        in_memory = {id(p) in memory for p in group["params"]}
        assert len(in_memory) == 1
        assert group["lr_scale"] == (10.0 if in_memory.pop() else 1.0)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    # at the same rate the memory is no group of its own: the optimizer state of earlier runs still fits
    assert [g["weight_decay"] for g in param_groups(model, 0.1)] == [0.1, 0.0]


def test_gradient_checkpointing_recomputes_layers_to_the_same_gradients():
    torch.manual_seed(0)
    model = build_model("tiny", "elastic", 16, backbone_options=dict(d_model=32, n_layers=2, n_heads=2),
                        memory_options=dict(order=8, samples=8), gate=True).double()
    with torch.no_grad():
        for layer in model.attn:
            layer.gate.fill_(0.5)  # the memory takes part, so its path is recomputed too
    ids = torch.randint(0, 256, (2, 70))
    calls = []
    inputs = model.backbone.attention_inputs
    model.backbone.attention_inputs = lambda i, h: (calls.append(i), inputs(i, h))[1]

    def grads() -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        calls.clear()
        model(ids, labels=ids).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    model.train()
    plain = grads()
    assert calls == [0, 1]
    model.gradient_checkpointing_enable()
    assert model.is_gradient_checkpointing
    recomputed = grads()
    assert calls == [0, 1, 1, 0]  # each layer again in the backward pass, last layer first
    for name, grad in plain.items():
        torch.testing.assert_close(recomputed[name], grad, rtol=1e-12, atol=1e-12, msg=name)
    with torch.no_grad():  # no recomputation where there is no backward pass
        calls.clear()
        model(ids)
        assert calls == [0, 1]
    with pytest.raises(ValueError, match="use_reentrant=True is not supported"):
        model.gradient_checkpointing_enable({"use_reentrant": True})


def test_gradient_checkpointing_in_a_run_gives_the_same_losses(tmp_path):
    plain = train(tiny_config(tmp_path, "name=plain", "train.steps=2", "train.warmup=1"))
    recomputed = train(tiny_config(tmp_path, "name=ckpt", "train.steps=2", "train.warmup=1",
                                   "train.gradient_checkpointing=true"))
    for step in (1, 2):
        assert recomputed.losses[step] == pytest.approx(plain.losses[step], abs=1e-6)


def test_bptt_on_a_hugging_face_backbone_streams_the_exact_loss(tmp_path):
    # the first step's loss is computed before any update: cut into two BPTT segments carried
    # by the stream state, it is the loss of the whole window
    whole = train(hf_config(tmp_path, "name=whole", "train.steps=1"))
    segments = train(hf_config(tmp_path, "name=bptt", "train.steps=1", "train.bptt=64"))
    assert segments.losses[1] == pytest.approx(whole.losses[1], abs=1e-5)


def test_resume_refuses_another_trainable_set(tmp_path):
    run = train(hf_config(tmp_path, "name=first", "train.trainable=memory"))
    with pytest.raises(CheckpointError, match="train.trainable was memory, the config says lora"):
        train(hf_config(tmp_path, "name=other", "train.trainable=lora"), resume=run.checkpoint)
