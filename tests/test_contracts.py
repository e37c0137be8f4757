"""The contracts' shared pieces: the default block form of a memory and its stacked reads."""

from __future__ import annotations

import pytest
import torch

from memplug.core.contracts import Memory, MemoryRead, stack_reads
from memplug.core.layer import MemoryAttention


class LastBlockMemory(Memory):
    """Keeps the last block's mean key/value; empty before the first write (step form only)."""

    name = "test-last-block"

    def init_state(self, batch, dtype, device):
        return {}

    def read(self, state, q, t):
        if not state:
            return MemoryRead()
        return MemoryRead(keys=state["k"][:, :, None], values=state["v"][:, :, None],
                          bias=torch.zeros(1, 1, 1, 1, 1))

    def write(self, state, k, v, t0):
        return {"k": k.mean(2, keepdim=True), "v": v.mean(2, keepdim=True)}


def test_default_block_form_keeps_reads_after_an_empty_first_block():
    memory = LastBlockMemory()
    memory.setup(2, 2, 4)
    q, k, v = (torch.randn(1, 2, 3, 5, 4) for _ in range(3))  # (B, H, nb, L, D)
    read, state = memory.forward_blocks({}, q, k, v, t0=0, complete=3)
    assert read.keys.shape == (1, 2, 3, 1, 4)
    assert torch.isinf(read.bias[:, :, 0]).all() and (read.bias[:, :, 1:] == 0).all()
    torch.testing.assert_close(read.keys[:, :, 1], k[:, :, 0].mean(2, keepdim=True))
    torch.testing.assert_close(read.keys[:, :, 2], k[:, :, 1].mean(2, keepdim=True))
    torch.testing.assert_close(state["v"], v[:, :, 2].mean(2, keepdim=True))


def test_a_read_without_bias_stacks_as_a_zero_bias():
    """Elastic leaves out the bias once no block is empty; stacked next to an empty block (its
    hidden read has a -inf bias) or a read with an offset, the missing bias is zero."""
    keys = torch.randn(1, 2, 1, 3, 4)
    plain = MemoryRead(keys=keys, values=keys)
    offset = MemoryRead(keys=keys, values=keys, bias=torch.full((1, 1, 1, 1, 3), -0.5))
    read = stack_reads([MemoryRead(), plain, offset, plain])
    assert read.bias.shape == (1, 1, 4, 1, 3)
    assert torch.isinf(read.bias[:, :, 0]).all()
    assert read.bias[:, :, 1].eq(0).all() and read.bias[:, :, 2].eq(-0.5).all() and read.bias[:, :, 3].eq(0).all()
    assert stack_reads([plain, plain]).bias is None


def test_a_first_hidden_read_stacks_as_a_hidden_block():
    """Stacked per block, a ``first_hidden`` read becomes the hidden form (zero slots, -inf bias);
    the others keep their keys and their (broadcast) bias."""
    keys = torch.randn(2, 2, 3, 4, 5)
    offset = torch.full((1, 1, 1, 1, 4), 0.5)
    reads = [MemoryRead(keys=keys[:, :, i : i + 1], values=2 * keys[:, :, i : i + 1], bias=offset, first_hidden=i == 0)
             for i in range(3)]
    stacked = stack_reads(reads)
    assert not stacked.first_hidden
    assert torch.isinf(stacked.bias[:, :, 0]).all() and stacked.bias[:, :, 1:].eq(0.5).all()
    assert stacked.keys[:, :, 0].eq(0).all()
    torch.testing.assert_close(stacked.keys[:, :, 1:], keys[:, :, 1:])
    torch.testing.assert_close(stacked.values[:, :, 1:], 2 * keys[:, :, 1:])
    assert stack_reads(reads[:1]).is_empty  # nothing but a hidden block: nothing to read


def test_first_hidden_needs_keys():
    class HiddenOutput(LastBlockMemory):
        def forward_blocks(self, state, q, k, v, t0, complete):
            return MemoryRead(output=q, gate=torch.zeros(q.shape[1]), first_hidden=True), state

    q = torch.randn(1, 2, 8, 4)
    with pytest.raises(ValueError, match="first_hidden .* needs `keys`"):
        MemoryAttention(HiddenOutput(), 4)(q, q, q, {}, 0)


def test_mixed_fields_are_an_error():
    a = MemoryRead(keys=torch.zeros(1, 1, 1, 2, 3), values=torch.zeros(1, 1, 1, 2, 3))
    b = MemoryRead(output=torch.zeros(1, 1, 1, 2, 3), lse=torch.zeros(1, 1, 1, 2))
    with pytest.raises(ValueError, match="same fields"):
        stack_reads([a, b])
    assert stack_reads([MemoryRead(), MemoryRead()]).is_empty
