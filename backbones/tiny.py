"""``tiny``: a small Llama-style decoder (RMSNorm, RoPE, SwiGLU, optional GQA, tied embeddings).

Read top to bottom: the config, the presets, the small modules (RMSNorm comes from torch, the
rotary embedding, the SwiGLU MLP, the decoder layer), then the backbone. The backbone does not
run attention itself in :class:`memplug.core.model.MemoryModel`: it exposes each layer's raw
queries, keys and values (``attention_inputs``) and takes the attention back
(``attention_output``), so the driver can put a memory in between. :meth:`TinyBackbone.forward`
is the plain full-causal model with absolute positions, kept for reference and tests.

Sizes: ``TinyBackbone(preset="tiny-10m")`` or any config fields, e.g.
``make_backbone("tiny", d_model=256, n_layers=4, n_heads=4)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

import memplug
from memplug.core.contracts import Backbone
from memplug.util.checks import positive_int


@dataclass
class TinyConfig:
    """The options of the ``tiny`` backbone (``backbone_options`` / ``[model.backbone]``)."""

    vocab_size: int = 256  # bytes
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None  # None: as many as n_heads (no grouped query attention)
    ffn_hidden: int | None = None  # None: ffn_mult * d_model, rounded up to a multiple of 64
    ffn_mult: float = 8 / 3  # SwiGLU's 2/3 of a 4x MLP keeps the parameter count of 4x
    rope_theta: float = 10000.0
    tie_embeddings: bool = True
    norm_eps: float = 1e-5
    init_std: float = 0.02

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads"):
            positive_int(name, getattr(self, name))
        if self.n_kv_heads is not None:
            positive_int("n_kv_heads", self.n_kv_heads)
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be a multiple of n_heads={self.n_heads}")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError(f"head_dim={self.d_model // self.n_heads} must be even for rotary embeddings")
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} must be a multiple of n_kv_heads={self.n_kv_heads}")
        if self.ffn_hidden is None:
            self.ffn_hidden = 64 * math.ceil(self.ffn_mult * self.d_model / 64)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


#: Named sizes (the parameter count each reaches with the byte vocabulary is tested).
PRESETS: dict[str, dict] = {
    "tiny-1m": dict(d_model=128, n_layers=5, n_heads=4),  # 1.1M
    "tiny-3m": dict(d_model=256, n_layers=4, n_heads=4),  # 3.3M (the model of configs/code-elastic.toml)
    "tiny-10m": dict(d_model=384, n_layers=6, n_heads=6),  # 10.7M
    "tiny-30m": dict(d_model=512, n_layers=10, n_heads=8, n_kv_heads=4),  # 30M
    "tiny-100m": dict(d_model=768, n_layers=16, n_heads=12, n_kv_heads=4),  # 101M
}


class Rotary(nn.Module):
    """Rotary position embedding (the "rotate half" layout), at arbitrary float positions.

    Channel pairs ``(i, i + D/2)`` rotate by the angle ``position * theta^(-2i/D)``. Positions
    are given per call because the memory layer rotates at window-local positions. Angles and
    their cos/sin are computed in float32 (float64 for float64 inputs), never in a reduced
    precision, then applied in the input's dtype (as Llama does under bf16); the frequencies are
    not a buffer, so ``model.to(torch.bfloat16)`` cannot round them.
    """

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        self.head_dim, self.theta = head_dim, theta

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        # x (..., T, D), positions broadcastable to (..., T)
        dtype = torch.promote_types(x.dtype, torch.float32)
        exponents = torch.arange(0, self.head_dim, 2, dtype=torch.float64, device=x.device) / self.head_dim
        inv_freq = (self.theta ** -exponents).to(dtype)  # (D/2,)
        angles = positions.to(dtype).unsqueeze(-1) * inv_freq  # (..., T, D/2)
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)  # (..., T, D/2) each
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)  # (..., T, D)


class SwiGLU(nn.Module):
    def __init__(self, config: TinyConfig) -> None:
        super().__init__()
        self.w_gate = nn.Linear(config.d_model, config.ffn_hidden, bias=False)
        self.w_up = nn.Linear(config.d_model, config.ffn_hidden, bias=False)
        self.w_down = nn.Linear(config.ffn_hidden, config.d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


class DecoderLayer(nn.Module):
    """Pre-norm attention projections and a pre-norm SwiGLU MLP; attention runs outside."""

    def __init__(self, config: TinyConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads = config.n_heads, config.n_kv_heads
        d, hd = config.d_model, config.head_dim
        self.attn_norm = nn.RMSNorm(d, eps=config.norm_eps)
        self.wq = nn.Linear(d, config.n_heads * hd, bias=False)
        self.wk = nn.Linear(d, config.n_kv_heads * hd, bias=False)
        self.wv = nn.Linear(d, config.n_kv_heads * hd, bias=False)
        self.wo = nn.Linear(config.n_heads * hd, d, bias=False)
        self.mlp_norm = nn.RMSNorm(d, eps=config.norm_eps)
        self.mlp = SwiGLU(config)

    def qkv(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = self.attn_norm(h)  # (B, T, d)
        q = rearrange(self.wq(x), "b t (h d) -> b h t d", h=self.n_heads)  # (B, H, T, D)
        k = rearrange(self.wk(x), "b t (h d) -> b h t d", h=self.n_kv_heads)  # (B, Hkv, T, D)
        v = rearrange(self.wv(x), "b t (h d) -> b h t d", h=self.n_kv_heads)  # (B, Hkv, T, D)
        return q, k, v

    def finish(self, h: Tensor, attn: Tensor) -> Tensor:
        h = h + self.wo(rearrange(attn, "b h t d -> b t (h d)"))  # (B, T, d)
        return h + self.mlp(self.mlp_norm(h))


class TinyBackbone(Backbone):
    """Llama-style decoder for bytes (or any vocabulary): the built-in ``tiny`` backbone.

    Args:
        config: a :class:`TinyConfig` (default: ``TinyConfig()``).
        preset: a named size of :data:`PRESETS` (``"tiny-1m"``, ``"tiny-3m"``, ...).
        **overrides: fields of :class:`TinyConfig` (``vocab_size``, ``d_model``, ``n_layers``,
            ``n_heads``, ``n_kv_heads``, ``ffn_hidden``, ``ffn_mult``, ``rope_theta``,
            ``tie_embeddings``, ``norm_eps``, ``init_std``), over the preset's and the config's.
    """

    name = "tiny"
    config_class = TinyConfig
    attention_projections = ("wq", "wk", "wv", "wo")

    def __init__(self, config: TinyConfig | None = None, preset: str | None = None, **overrides) -> None:
        super().__init__()
        if preset is not None:
            if preset not in PRESETS:
                raise ValueError(f"preset={preset!r} is not one of {sorted(PRESETS)}")
            overrides = {**PRESETS[preset], **overrides}
        known = {f.name for f in fields(TinyConfig)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown tiny backbone options {unknown}; allowed: {sorted(known)}")
        config = replace(config, **overrides) if config is not None else TinyConfig(**overrides)
        self.config = config
        self.num_layers, self.heads, self.kv_heads = config.n_layers, config.n_heads, config.n_kv_heads
        self.head_dim, self.vocab_size = config.head_dim, config.vocab_size

        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.n_layers))
        self.norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self.rotary = Rotary(config.head_dim, config.rope_theta)

        self.apply(self._init_weights)
        # Residual projections scaled down with depth (GPT-2), so the stream's variance stays put.
        for name, p in self.named_parameters():
            if name.endswith(("wo.weight", "w_down.weight")):
                nn.init.normal_(p, mean=0.0, std=config.init_std / math.sqrt(2 * config.n_layers))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)

    def num_parameters(self) -> int:
        """Trainable parameters, tied weights counted once."""
        return sum(p.numel() for p in self.parameters())

    # --- the Backbone contract -------------------------------------------------------------
    def embed(self, input_ids: Tensor) -> Tensor:
        return self.tok_emb(input_ids)  # (B, T, d)

    def attention_inputs(self, layer: int, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.layers[layer].qkv(h)

    def attention_output(self, layer: int, h: Tensor, attn: Tensor) -> Tensor:
        return self.layers[layer].finish(h, attn)

    def rotate(self, x: Tensor, positions: Tensor) -> Tensor:
        return self.rotary(x, positions)

    def head(self, h: Tensor) -> Tensor:
        return self.lm_head(self.norm(h))  # (B, T, vocab)

    # --- the plain model -------------------------------------------------------------------
    def forward(self, input_ids: Tensor) -> Tensor:
        """Full causal attention at absolute positions: (B, T) ids -> (B, T, vocab) logits."""
        h = self.embed(input_ids)  # (B, T, d)
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)  # (T,)
        for layer in self.layers:
            q, k, v = layer.qkv(h)  # (B, H, T, D), (B, Hkv, T, D) x2
            q, k = self.rotate(q, pos), self.rotate(k, pos)
            attn = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.heads != self.kv_heads)
            h = layer.finish(h, attn)
        return self.head(h)


@memplug.hookimpl
def memplug_add_backbones(registry) -> None:
    registry.add(TinyBackbone)
