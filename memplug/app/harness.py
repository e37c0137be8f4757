"""The lm-evaluation-harness model ``memplug``: any lm-eval task on a trained memplug model.

Install the extra and point lm-eval at a model folder::

    pip install 'memplug[eval]'
    lm_eval --model memplug --model_args path=DIR --tasks TASK
    python -m memplug.app.harness --model memplug --model_args path=DIR --tasks TASK

The first form needs an lm-eval that discovers models through the ``lm_eval.models`` entry-point
group (memplug declares ``memplug = memplug.app.harness:MemplugLM`` there); lm-eval 0.4.13 and
earlier do not. The second form is lm-eval's own command line (``cli_evaluate``), run after this
module has registered the model (tested with lm-eval 0.4.13).

``--model_args`` are the keyword arguments of :class:`MemplugLM`: ``path`` (required),
``chunk``, ``prefix_token_id``, ``precision``; lm-eval's ``--device`` and ``--batch_size`` reach
it too.

Every request is streamed through the model's :class:`~memplug.core.state.ModelState` in chunks
of at most ``chunk`` tokens, so a document of any length is scored in memory that does not grow
with it (beyond what the memory itself keeps), and the result equals one forward call over the
whole text. Requests run one at a time; ``batch_size`` must be 1.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..core.state import ModelState
from ..data.tokenizers import Tokenizer
from ..util.checks import positive_int
from .build import load_trained
from .precision import PRECISIONS, autocast, resolve_precision

try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError as exc:  # the optional extra
    raise ImportError("memplug's lm-eval model needs lm-eval: pip install 'memplug[eval]'") from exc

__all__ = ["MemplugLM", "load", "score", "stream"]

#: The generation arguments of a task that :meth:`MemplugLM.generate_until` reads.
GENERATION_KEYS = frozenset({"until", "max_gen_toks", "do_sample", "temperature", "top_k", "top_p"})


def load(path: str | Path, device: str | torch.device) -> tuple[nn.Module, Tokenizer]:
    """The model and tokenizer in folder ``path``, on ``device``, in eval mode.

    ``path`` is a checkpoint folder written by ``memplug train`` (read through
    :func:`memplug.app.build.load_trained`, which verifies it).
    """
    model, tokenizer, _ = load_trained(path, device)
    return model.eval(), tokenizer


def stream(model: nn.Module, ids: Tensor, state: ModelState | None, chunk: int) -> Iterator[tuple[Tensor, ModelState]]:
    """Feed ``ids`` (T,) through ``model`` in chunks of at most ``chunk`` tokens, continuing ``state``.

    Yields each chunk's logits (c, V) and the state after it. The chunks' logits together equal
    those of one call over ``ids`` (the model's streaming contract), while no call sees more
    than ``chunk`` tokens. No autograd graph is kept: the state carries no history of the calls.
    """
    for start in range(0, ids.shape[0], chunk):
        with torch.no_grad():
            out = model(ids[None, start : start + chunk], state=state)  # logits (1, c, V)
        state = out.state
        yield out.logits[0], state


def score(
    model: nn.Module, inputs: Tensor, targets: Tensor, state: ModelState | None, chunk: int
) -> tuple[float, bool, ModelState | None]:
    """Log-probability (nats) of ``targets`` (T,), each predicted after the same position of
    ``inputs`` (T,), whether every target is the arg-max (greedy) token, and the state after
    ``inputs``. Empty ``inputs`` score 0.0 and greedy, leaving ``state`` as it was."""
    total, greedy = 0.0, True
    start = 0
    for logits, state in stream(model, inputs, state, chunk):
        logits = logits.float()  # (c, V)
        y = targets[start : start + logits.shape[0]]  # (c,)
        total += float(torch.log_softmax(logits, dim=-1).gather(-1, y[:, None]).sum())
        greedy = greedy and bool((logits.argmax(dim=-1) == y).all())
        start += logits.shape[0]
    return total, greedy, state


@register_model("memplug")
class MemplugLM(LM):
    """A memplug model for lm-eval's ``loglikelihood``, ``loglikelihood_rolling`` and ``generate_until``.

    Args:
        path: a model folder (see :func:`load`).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; default: CUDA when available.
        chunk: tokens per forward call. Any value gives the same scores (streaming); it bounds
            the memory a call needs.
        prefix_token_id: the token that stands before a text with no context (an empty
            ``context``, and the first token of ``loglikelihood_rolling``). Default: the token of
            ``"\\n"``, as memplug trains on documents with no begin-of-sequence token; a
            tokenizer that does not encode ``"\\n"`` as one token needs it given.
        precision: ``"auto"``, ``"bf16"`` or ``"fp32"`` (see :mod:`memplug.app.precision`).
        batch_size: must be 1 (requests are streamed one at a time); lm-eval always passes it.
        max_batch_size: accepted and unused, for the same reason.
    """

    def __init__(
        self,
        path: str,
        device: str | None = None,
        chunk: int = 1024,
        prefix_token_id: int | None = None,
        precision: str = "auto",
        batch_size: int | str = 1,
        max_batch_size: int | None = None,
    ) -> None:
        super().__init__()
        if str(batch_size) != "1":
            raise ValueError(f"batch_size must be 1 (memplug streams requests one at a time), got {batch_size!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.chunk = positive_int("chunk", chunk)
        self._device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model, self.tokenizer = load(path, self._device)
        self.precision = resolve_precision(precision, self._device)
        if prefix_token_id is None:
            newline = self.tokenizer.encode("\n").tolist()
            if len(newline) != 1:
                raise ValueError(f'prefix_token_id: this tokenizer encodes "\\n" as {newline}, not one token; '
                                 "give the id of the token that should start a text")
            prefix_token_id = newline[0]
        self.prefix_token_id = int(prefix_token_id)
        if not 0 <= self.prefix_token_id < self.tokenizer.vocab_size:
            raise ValueError(f"prefix_token_id must be a token id below {self.tokenizer.vocab_size}, got {prefix_token_id!r}")

    def _ids(self, tokens: Sequence[int]) -> Tensor:
        return torch.as_tensor(list(tokens), dtype=torch.long, device=self._device)

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).tolist()

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Token ids of ``context`` (the prefix token when empty) and of ``continuation``.

        The pair is encoded as one text and split after the context's tokens, so a tokenizer
        that merges across the boundary gives the continuation the tokens it has in the whole
        text; trailing spaces of the context move to the continuation (lm-eval's convention).
        """
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        context_ids = self._encode(context)
        continuation_ids = self._encode(context + continuation)[len(context_ids):]
        return context_ids or [self.prefix_token_id], continuation_ids

    def loglikelihood(self, requests: list[Any]) -> list[tuple[float, bool]]:
        """(log-probability, greedy) of each request's continuation after its context.

        Requests that share a context stream it once: the state after the context continues
        into each continuation.
        """
        pairs = [self._encode_pair(*request.args) for request in requests]
        by_context: dict[tuple[int, ...], list[int]] = {}
        for i, (context_ids, _) in enumerate(pairs):
            by_context.setdefault(tuple(context_ids), []).append(i)
        results: list[tuple[float, bool]] = [(0.0, True)] * len(requests)
        with autocast(self._device, self.precision):
            for context_ids, indices in by_context.items():
                state = None
                for _, state in stream(self.model, self._ids(context_ids[:-1]), None, self.chunk):
                    pass
                for i in indices:
                    continuation = pairs[i][1]
                    inputs = self._ids([context_ids[-1], *continuation[:-1]])
                    logprob, greedy, _ = score(self.model, inputs, self._ids(continuation), state, self.chunk)
                    results[i] = (logprob, greedy)
                    self.cache_hook.add_partial("loglikelihood", requests[i].args, results[i])
        return results

    def loglikelihood_rolling(self, requests: list[Any]) -> list[float]:
        """Log-probability of each request's whole text, its first token predicted after the prefix
        token; the text streams through the model's state, so its length is not bounded."""
        results = []
        with autocast(self._device, self.precision):
            for request in requests:
                (text,) = request.args
                tokens = self._encode(text)
                logprob, _, _ = score(self.model, self._ids([self.prefix_token_id, *tokens[:-1]]),
                                      self._ids(tokens), None, self.chunk)
                results.append(logprob)
                self.cache_hook.add_partial("loglikelihood_rolling", request.args, logprob)
        return results

    def generate_until(self, requests: list[Any]) -> list[str]:
        """Greedy continuation of each request's context, cut before the first of its ``until``
        strings, at most ``max_gen_toks`` tokens (default 256). Sampling (``do_sample=True``) is
        refused: lm-eval's generation tasks decode greedily."""
        results = []
        with autocast(self._device, self.precision):
            for request in requests:
                context, kwargs = request.args
                text = self._generate(context, dict(kwargs or {}))
                results.append(text)
                self.cache_hook.add_partial("generate_until", request.args, text)
        return results

    def _generate(self, context: str, kwargs: dict[str, Any]) -> str:
        unknown = sorted(set(kwargs) - GENERATION_KEYS)
        if unknown:
            raise ValueError(f"generation arguments {unknown} are not supported; memplug reads {sorted(GENERATION_KEYS)}")
        if kwargs.get("do_sample"):
            raise ValueError("do_sample=True is not supported: memplug's lm-eval model decodes greedily")
        until = kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        max_tokens = positive_int("max_gen_toks", kwargs.get("max_gen_toks", 256))
        logits = state = None
        for logits, state in stream(self.model, self._ids(self._encode(context) or [self.prefix_token_id]),
                                    None, self.chunk):
            pass
        generated: list[int] = []
        text = ""
        for _ in range(max_tokens):
            if generated:
                logits, state = next(stream(self.model, self._ids(generated[-1:]), state, self.chunk))
            generated.append(int(logits[-1].float().argmax()))
            text = self.tokenizer.decode(generated)
            stops = [text.index(s) for s in until if s and s in text]
            if stops:
                return text[: min(stops)]
        return text


if __name__ == "__main__":  # python -m memplug.app.harness: lm-eval's command line, with "memplug" registered
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()
