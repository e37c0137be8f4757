"""Text generation with Hugging Face's arguments and defaults, through the streaming state.

:func:`generate` feeds the prompt once, then one token per call, carrying the model's
:class:`~memplug.core.state.ModelState`: each step costs one token's worth of work and the memory
stays bounded however long the output. The arguments and defaults are those of
``transformers``' ``generate``: greedy unless ``do_sample=True``; when sampling, the logits are
divided by ``temperature``, then cut to the ``top_k`` most likely tokens, then to the smallest set
whose probability reaches ``top_p`` (:func:`filter_logits`); rows that emit ``eos_token_id``
continue with ``pad_token_id`` and generation stops once every row has ended.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..util.checks import non_negative_int

if TYPE_CHECKING:
    from .state import ModelState

__all__ = ["filter_logits", "generate"]

#: transformers' defaults: ``max_length`` (prompt included) when ``max_new_tokens`` is not given, and ``top_k``.
DEFAULT_MAX_LENGTH = 20
DEFAULT_TOP_K = 50


def filter_logits(logits: Tensor, top_k: int | None = None, top_p: float = 1.0) -> Tensor:
    """``logits`` (B, V) with ``-inf`` outside the tokens a sampler may draw.

    ``top_k``: keep the k largest (ties with the k-th kept too); ``None`` or 0 keeps all.
    ``top_p``: then keep the smallest set of most likely tokens whose probability reaches
    ``top_p`` (at least one token); 1.0 keeps all. The order and rules are those of
    ``transformers``' ``TopKLogitsWarper`` and ``TopPLogitsWarper``.
    """
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[..., -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        ascending, order = torch.sort(logits, dim=-1)  # (B, V)
        cumulative = ascending.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative <= 1 - top_p  # the least likely tokens whose total stays within 1 - top_p
        drop[..., -1] = False  # the most likely token is always kept
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def _eos_ids(eos_token_id: int | Sequence[int] | None) -> list[int]:
    ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or [])
    for i in ids:
        non_negative_int("eos_token_id", i)
    return ids


def _check_sampling(temperature: float, top_k: int | None, top_p: float) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
            math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0 when sampling (do_sample=False is greedy), "
                         f"got {temperature!r}")
    if top_k is not None:
        non_negative_int("top_k", top_k)
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise ValueError(f"top_p must be a number in (0, 1], got {top_p!r}")


@torch.no_grad()
def generate(
    model: torch.nn.Module,  # a MemoryModel (its module imports this one)
    input_ids: Tensor,
    max_new_tokens: int | None = None,
    *,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = DEFAULT_TOP_K,
    top_p: float = 1.0,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    max_length: int | None = None,
    streamer: Any = None,
    attention_mask: Tensor | None = None,
    state: ModelState | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The prompt (B, T) followed by up to ``max_new_tokens`` generated tokens: (B, T + n).

    ``max_new_tokens`` defaults to ``max_length - T`` (``max_length`` defaults to 20, as in
    ``transformers``). ``streamer`` (e.g. ``transformers.TextStreamer``) receives the prompt,
    then each new token, then ``end()``. ``state`` continues an earlier stream (the prompt
    follows it); ``generator`` drives the sampling. ``attention_mask`` may only be all ones.
    """
    if not isinstance(do_sample, bool):
        raise ValueError(f"do_sample must be True or False, got {do_sample!r}")
    if max_new_tokens is None:
        limit = DEFAULT_MAX_LENGTH if max_length is None else non_negative_int("max_length", max_length)
        max_new_tokens = max(0, limit - (input_ids.shape[-1] if input_ids.ndim else 0))
    non_negative_int("max_new_tokens", max_new_tokens)
    if do_sample:
        _check_sampling(temperature, top_k, top_p)
    eos = _eos_ids(eos_token_id)
    if input_ids.ndim == 2 and input_ids.shape[0] and not input_ids.shape[1]:
        raise ValueError("input_ids must hold at least one token to generate from, got shape "
                         f"{tuple(input_ids.shape)}")
    if eos and pad_token_id is None:
        pad_token_id = eos[0]  # as transformers does, with a warning there
    out = model(input_ids, state=state, attention_mask=attention_mask)
    batch = input_ids.shape[0]
    if streamer is not None:
        streamer.put(input_ids.cpu())
    tokens = [input_ids]
    running = torch.ones(batch, dtype=torch.bool, device=input_ids.device)  # (B,) rows that have not ended
    for step in range(max_new_tokens if batch else 0):
        logits = out.logits[:, -1, :].float()  # (B, V)
        if do_sample:
            logits = filter_logits(logits / temperature, top_k, top_p)
            nxt = torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)[:, 0]  # (B,)
        else:
            nxt = logits.argmax(dim=-1)  # (B,)
        if eos:
            nxt = torch.where(running, nxt, torch.full_like(nxt, pad_token_id))
            running &= ~torch.isin(nxt, torch.tensor(eos, device=nxt.device))
        tokens.append(nxt[:, None])
        if streamer is not None:
            streamer.put(nxt.cpu())
        if (eos and not running.any()) or step + 1 == max_new_tokens:
            break
        out = model(nxt[:, None], state=out.state)
    if streamer is not None:
        streamer.end()
    if not batch:
        tokens.append(input_ids.new_zeros(0, max_new_tokens))
    return torch.cat(tokens, dim=1)
