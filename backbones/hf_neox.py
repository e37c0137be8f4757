"""GPT-NeoX wiring for :class:`memplug.backbones.hf.HFBackbone` (Pythia, GPT-NeoX-20B, ...).

Differences from the Llama family, all handled here:

- one fused ``query_key_value`` projection whose output is laid out per head as
  ``[q | k | v]`` (3·D channels per head), and a ``dense`` output projection;
- partial rotary embeddings: only the first ``rotary_ndims`` channels of each head rotate (the
  backbone reads that width from the rotary embedding's ``inv_freq``);
- LayerNorm instead of RMSNorm, a GELU MLP, no grouped query attention;
- the parallel residual (``use_parallel_residual``, the default):
  ``h + attn(ln1(h)) + mlp(ln2(h))``, or the sequential form when it is off.

GPT-NeoX was chosen over GPT-2 as the second family because its positions are rotary, so they can
be made local to each attention window exactly like the Llama family's; GPT-2 adds learned
absolute position embeddings to the input, which cannot be moved to window-local positions
without changing what the model computes. This file does not import ``transformers``.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["NeoXWiring"]


class NeoXWiring:
    """Embed, project, finish a layer and read out a ``GPTNeoXForCausalLM``."""

    family = "gpt_neox"
    model_types = ("gpt_neox",)
    attention_projections = ("query_key_value", "dense")

    def decoder(self, hf: nn.Module) -> nn.Module:
        """The base model holding ``embed_in``, ``layers``, ``final_layer_norm``, ``rotary_emb``."""
        return hf.gpt_neox

    def embed(self, hf: nn.Module, input_ids: Tensor) -> Tensor:
        """(B, T) ids -> (B, T, d), with the model's embedding dropout (active in training only)."""
        base = hf.gpt_neox
        return base.emb_dropout(base.embed_in(input_ids))

    def attention_inputs(self, hf: nn.Module, layer: int, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, T, d) -> raw q, k, v, each (B, H, T, D), before the rotation."""
        block = hf.gpt_neox.layers[layer]
        heads = hf.config.num_attention_heads
        qkv = block.attention.query_key_value(block.input_layernorm(h))  # (B, T, 3·H·D)
        qkv = qkv.unflatten(-1, (heads, -1)).transpose(1, 2)  # (B, H, T, 3·D)
        q, k, v = qkv.chunk(3, dim=-1)  # each (B, H, T, D)
        return q, k, v

    def attention_output(self, hf: nn.Module, layer: int, h: Tensor, attn_out: Tensor) -> Tensor:
        """Residual stream after the layer, parallel or sequential as the config says."""
        block = hf.gpt_neox.layers[layer]
        a = attn_out.transpose(1, 2).flatten(-2)  # (B, H, T, D) -> (B, T, H*D)
        a = block.post_attention_dropout(block.attention.dense(a))
        if block.use_parallel_residual:
            # Both branches read the layer input h.
            return h + a + block.post_mlp_dropout(block.mlp(block.post_attention_layernorm(h)))
        h = h + a
        return h + block.post_mlp_dropout(block.mlp(block.post_attention_layernorm(h)))

    def head(self, hf: nn.Module, h: Tensor) -> Tensor:
        """(B, T, d) -> (B, T, vocab): final LayerNorm and the output projection."""
        return hf.get_output_embeddings()(hf.gpt_neox.final_layer_norm(h))

    def attention_scale(self, hf: nn.Module) -> float:
        """The softmax scale the model's attention uses (``head_dim ** -0.5``)."""
        attn = hf.gpt_neox.layers[0].attention
        head_dim = hf.config.hidden_size // hf.config.num_attention_heads
        return float(getattr(attn, "scaling", head_dim**-0.5))
