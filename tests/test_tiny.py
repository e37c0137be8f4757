"""The built-in ``tiny`` backbone: sizes, rotary embedding, causality, the Backbone contract."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import memplug
from memplug.backbones.tiny import PRESETS, TinyBackbone, TinyConfig

NOMINAL = {"tiny-1m": 1e6, "tiny-3m": 3.3e6, "tiny-10m": 10e6, "tiny-30m": 30e6, "tiny-100m": 100e6}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_parameter_counts(preset):
    with torch.device("meta"):  # no memory or init time for the 100M preset
        model = TinyBackbone(preset=preset)
    count = sum(p.numel() for p in model.parameters())
    assert 0.9 * NOMINAL[preset] <= count <= 1.15 * NOMINAL[preset], count
    if preset == "tiny-100m":
        assert count >= 100e6  # "100M+"


def test_parameter_count_formula():
    cfg = TinyConfig(d_model=64, n_layers=3, n_heads=4, n_kv_heads=2, vocab_size=100)
    model = TinyBackbone(cfg)
    d, hd, hidden = 64, 16, cfg.ffn_hidden
    per_layer = d * d * 2 + 2 * d * 2 * hd + 3 * d * hidden + 2 * d  # q,o + k,v (GQA) + SwiGLU + 2 norms
    assert hidden == 192 and model.num_parameters() == 100 * d + 3 * per_layer + d  # tied head


def test_registered_and_config_errors():
    model = memplug.make_backbone("tiny", d_model=32, n_layers=1, n_heads=2)
    assert isinstance(model, TinyBackbone) and model.heads == 2 and model.kv_heads == 2 and model.head_dim == 16
    with pytest.raises(ValueError, match="n_kv_heads"):
        TinyConfig(d_model=32, n_heads=4, n_kv_heads=3)
    with pytest.raises(ValueError, match="d_model"):
        TinyConfig(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="preset"):
        TinyBackbone(preset="tiny-7b")
    with pytest.raises(ValueError, match="unknown tiny backbone options"):
        TinyBackbone(layers=3)


@given(st.floats(-50, 50), st.floats(-50, 50), st.floats(-20, 20))
def test_rotary_scores_depend_only_on_distance(pq, pk, shift):
    model = TinyBackbone(d_model=32, n_layers=1, n_heads=2)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(16, generator=g, dtype=torch.float32), torch.randn(16, generator=g)
    rot = lambda x, p: model.rotate(x[None], torch.tensor([p]))[0]  # noqa: E731
    a = rot(q, pq) @ rot(k, pk)
    b = rot(q, pq + shift) @ rot(k, pk + shift)
    assert abs(a - b) < 1e-4 * (1 + abs(a))
    torch.testing.assert_close(rot(q, 0.0), q)  # position 0 is the identity
    assert math.isclose(rot(q, pq).norm().item(), q.norm().item(), rel_tol=1e-5)  # a rotation


def test_plain_forward_is_causal_and_tied():
    torch.manual_seed(0)
    model = TinyBackbone(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2)
    assert model.lm_head.weight is model.tok_emb.weight
    ids = torch.randint(0, 256, (2, 20))
    logits = model(ids)
    assert logits.shape == (2, 20, 256)
    ids2 = ids.clone()
    ids2[:, 12] = (ids2[:, 12] + 1) % 256
    logits2 = model(ids2)
    torch.testing.assert_close(logits[:, :12], logits2[:, :12])
    assert not torch.allclose(logits[:, 12:], logits2[:, 12:])
