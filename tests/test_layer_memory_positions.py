"""Memory keys are rotated at their true distance from the queries, whatever the local window.

The layer rotates a memory key given at ``key_positions`` (relative to the block start) at
``w0 + key_positions``, where ``w0`` is the window position of the block start: 0 with
``span="block"``, L with ``span="previous"``. With ``span="block"`` the two agree, so only a
layout with ``w0 > 0`` shows a key rotated at the wrong distance. Here: a memory holding every
key before the previous block, under ``span="previous"`` (which attends to the previous block
locally), must give plain causal attention at absolute rotary positions.
"""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from test_layers import FullKeys, brute_force, chunkings, qkv, run_chunks, visibility

from memplug.backbones.tiny import Rotary
from memplug.core.layer import MemoryAttention
from single_thread import one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


class KeysBeforeThePreviousBlock(FullKeys):
    """Every past raw key/value up to the start of the previous block (that block is local)."""

    name = "test-keys-before-previous"

    def read(self, state, q, t):
        read = super().read(state, q, t)
        slots = torch.arange(read.bias.shape[-1], device=q.device)
        read.bias = read.bias.masked_fill(slots >= t - self.block, float("-inf"))
        return read


@given(st.integers(0, 1000), st.sampled_from([4, 7, 16]), chunkings)
def test_memory_keys_under_span_previous_keep_their_distance(seed, block, cuts):
    T = 48
    q, k, v = qkv(seed, T)
    rotary = Rotary(8, 100.0)
    layer = MemoryAttention(KeysBeforeThePreviousBlock(), block, "previous", attention="sdpa")
    out, _ = run_chunks(layer, q, k, v, cuts, rotary)
    torch.testing.assert_close(out, brute_force(q, k, v, visibility(T, block, "causal"), rotary), atol=1e-10, rtol=0)
