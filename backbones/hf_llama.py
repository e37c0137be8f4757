"""Llama-family wiring for :class:`memplug.backbones.hf.HFBackbone`.

Covers the Hugging Face decoders laid out like Llama: ``model.layers[i]`` with
``input_layernorm -> self_attn(q_proj, k_proj, v_proj, o_proj) -> + residual ->
post_attention_layernorm -> mlp -> + residual``, a final ``model.norm`` and rotary position
embeddings on the whole head dimension. That is Llama (and SmolLM, which is a Llama), Mistral,
Qwen2 (q/k/v projections with biases: ``nn.Linear`` applies them) and Qwen3 (a per-head RMSNorm
on queries and keys before the rotation). Grouped query attention comes for free: keys and values
keep their ``num_key_value_heads`` heads.

Every call goes through the model's own modules, so its weights, biases, norms and activation are
used as they are and nothing is copied. This file does not import ``transformers``.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["LlamaWiring"]


class LlamaWiring:
    """Embed, project, finish a layer and read out a Llama-family ``*ForCausalLM``."""

    family = "llama"
    model_types = ("llama", "mistral", "qwen2", "qwen3")
    attention_projections = ("q_proj", "k_proj", "v_proj", "o_proj")

    def decoder(self, hf: nn.Module) -> nn.Module:
        """The base model holding ``embed_tokens``, ``layers``, ``norm`` and ``rotary_emb``."""
        return hf.model

    def embed(self, hf: nn.Module, input_ids: Tensor) -> Tensor:
        """(B, T) ids -> (B, T, d): the token embedding, nothing added (positions are rotary)."""
        return hf.model.embed_tokens(input_ids)

    def attention_inputs(self, hf: nn.Module, layer: int, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, T, d) -> raw q (B, H, T, D), k and v (B, Hkv, T, D), before the rotation."""
        block = hf.model.layers[layer]
        attn = block.self_attn
        x = block.input_layernorm(h)
        head_dim = attn.head_dim
        q = attn.q_proj(x).unflatten(-1, (-1, head_dim))  # (B, T, H, D)
        k = attn.k_proj(x).unflatten(-1, (-1, head_dim))  # (B, T, Hkv, D)
        v = attn.v_proj(x).unflatten(-1, (-1, head_dim))  # (B, T, Hkv, D)
        if hasattr(attn, "q_norm"):  # Qwen3: RMSNorm over each head's D channels, before RoPE
            q, k = attn.q_norm(q), attn.k_norm(k)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H|Hkv, T, D)

    def attention_output(self, hf: nn.Module, layer: int, h: Tensor, attn_out: Tensor) -> Tensor:
        """Residual stream after the layer: h + o_proj(attn), then h + mlp(norm(h))."""
        block = hf.model.layers[layer]
        a = attn_out.transpose(1, 2).flatten(-2)  # (B, H, T, D) -> (B, T, H*D)
        h = h + block.self_attn.o_proj(a)
        return h + block.mlp(block.post_attention_layernorm(h))

    def head(self, hf: nn.Module, h: Tensor) -> Tensor:
        """(B, T, d) -> (B, T, vocab): final norm and the (possibly tied) output projection."""
        return hf.get_output_embeddings()(hf.model.norm(h))

    def attention_scale(self, hf: nn.Module) -> float:
        """The softmax scale the model's attention uses (``head_dim ** -0.5`` for this family)."""
        attn = hf.model.layers[0].self_attn
        return float(getattr(attn, "scaling", attn.head_dim**-0.5))
