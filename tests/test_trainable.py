"""set_trainable: train all of a model, only its memory, or LoRA adapters plus the memory."""

import pytest
import torch

import memplug
from memplug.core.trainable import LoraOptions, set_trainable
from single_thread import one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2)


def model(**options):
    torch.manual_seed(0)
    options = {"memory": "elastic", "gate": True, "memory_options": dict(order=8, samples=8), **options}
    return memplug.build_model("tiny", block=16, backbone_options=SMALL, **options)


def ids():
    return torch.randint(0, 256, (2, 70), generator=torch.Generator().manual_seed(3))


def step(m):
    """One optimizer step on the trainable parameters; returns the parameters before it."""
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    x = ids()
    m(x, labels=x).loss.backward()
    torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=0.05).step()
    return before


def changed(m, before):
    return {n for n, p in m.named_parameters() if not torch.equal(p.detach(), before[n])}


def test_memory_mode_trains_the_gates_alone():
    m = model()
    summary = set_trainable(m, "memory")
    assert summary.trainable == 2 * 4 and summary.total == sum(p.numel() for p in m.parameters())
    assert {n for n, p in m.named_parameters() if p.requires_grad} == {"attn.0.gate", "attn.1.gate"}
    assert changed(m, step(m)) == {"attn.0.gate", "attn.1.gate"}
    assert "8 of" in str(summary) and "trainable=memory" in str(summary)


def test_memory_mode_includes_a_memory_plugins_own_weights():
    m = model(memory="elastic", gate=False, memory_options=dict(order=8, samples=8, retriever="learned"))
    set_trainable(m, "memory")
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("attn.") and ".memory.retriever." in n for n in trainable)


def test_memory_mode_without_memory_parameters_is_refused():
    with pytest.raises(ValueError, match="leaves nothing to train.*gate=True"):
        set_trainable(model(gate=False), "memory")


def test_lora_starts_as_a_no_op_and_trains_adapters_and_gates_only():
    m = model()
    x = ids()
    with torch.no_grad():
        plain = m(x).logits
    summary = set_trainable(m, "lora", LoraOptions(rank=2, alpha=4))
    with torch.no_grad():
        torch.testing.assert_close(m(x).logits, plain, atol=0, rtol=0)  # peft zero-initialises B
    names = {n for n, p in m.named_parameters() if p.requires_grad}
    assert {n for n in names if n.startswith("attn.")} == {"attn.0.gate", "attn.1.gate"}
    lora = names - {"attn.0.gate", "attn.1.gate"}
    assert len(lora) == 2 * 4 * 2  # 2 layers x 4 projections x (A, B)
    assert all(".lora_A." in n or ".lora_B." in n for n in lora)
    # rank 2: A is (2, in), B is (out, 2); wq/wo are 32x32, wk/wv 16x32 (2 kv heads of 8)
    assert summary.trainable == 8 + 2 * (2 * (32 + 32) * 2 + 2 * (32 + 16) * 2)
    after = changed(m, step(m))
    assert after and after <= names  # the backbone's own weights never move


def test_lora_on_a_hugging_face_model():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(config)
    from memplug.backbones.hf import attach

    m = attach(hf, memory="elastic", block=16, gate=True, memory_options=dict(order=8, samples=8))
    set_trainable(m, "lora")
    adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, p in m.named_parameters() if ".lora_" in n}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert all(not p.requires_grad for n, p in hf.named_parameters() if ".lora_" not in n)


def test_bad_modes_and_targets_are_named():
    with pytest.raises(ValueError, match="trainable must be one of all, memory, lora; got 'head'"):
        set_trainable(model(), "head")
    with pytest.raises(ValueError, match=r"LoRA targets \['q_proj'\] are not linear modules .*'wq'"):
        set_trainable(model(), "lora", LoraOptions(targets=("q_proj",)))
    with pytest.raises(ValueError, match="need trainable='lora'"):
        set_trainable(model(), "memory", LoraOptions())


def test_all_mode_trains_everything():
    m = model()
    summary = set_trainable(m, "all")
    assert summary.trainable == summary.total and all(p.requires_grad for p in m.parameters())


def test_merged_lora_keeps_the_outputs_and_saves_like_any_model(tmp_path):
    from memplug.core.model import from_pretrained
    from memplug.core.trainable import merge_lora

    m = model()
    set_trainable(m, "lora", LoraOptions(rank=2))
    with torch.no_grad():  # adapters that do something (peft starts B at zero)
        for name, p in m.named_parameters():
            if ".lora_B." in name:
                p.normal_(0, 0.5)
    x = torch.randint(0, 256, (1, 40))
    adapted = m(x).logits
    with pytest.raises(ValueError, match="holds LoRA adapters.*merge_lora"):
        m.save_pretrained(tmp_path / "unmerged")
    assert merge_lora(m) == 2 * 4  # wq, wk, wv, wo in both layers
    assert not any(".lora_" in n or "base_layer" in n for n in m.state_dict())
    torch.testing.assert_close(m(x).logits, adapted, atol=1e-5, rtol=1e-5)
    m.save_pretrained(tmp_path / "merged")
    torch.testing.assert_close(from_pretrained(tmp_path / "merged")(x).logits, m.eval()(x).logits, atol=0, rtol=0)
