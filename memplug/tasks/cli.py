"""``memplug task NAME``: train a small model with one memory on a synthetic task and score it.

    memplug task regime --memory elastic --seconds 120
    memplug task passkey --memory xl --steps 300 --option distances=[8,128] --block 64
    memplug task recall --show            # print one sequence with its scored tokens marked

Prints bits and accuracy on the scored tokens next to the task's exact oracles (the whole
history, the block alone). The full comparison of every memory is ``benchmarks/tasks_suite.py``.
"""

from __future__ import annotations

import argparse
import sys

import torch

from ..core.hookspecs import hookimpl
from . import TASKS, make_task
from .run import score_on_task, train_on_task


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task", choices=sorted(TASKS))
    parser.add_argument("--memory", default="elastic", help="a registered memory, or 'none' (default elastic)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="task option (TOML value), e.g. --option symbols=32")
    parser.add_argument("--steps", type=int, default=None, help="training steps")
    parser.add_argument("--seconds", type=float, default=None, help="training seconds (default 60 without --steps)")
    parser.add_argument("--block", type=int, default=64)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--show", action="store_true", help="print one sample sequence and exit")


def _run(args: argparse.Namespace) -> int:
    from ..app.config import ConfigError, parse_pairs
    from ..core.model import build_model

    try:
        options = parse_pairs(args.option, "--option")
    except ConfigError as exc:
        print(f"memplug task: {exc}", file=sys.stderr)
        return 2
    try:
        task = make_task(args.task, **options)
        if args.show:
            data = task.sample(1, args.length, torch.Generator().manual_seed(args.seed))
            marked = [f"[{t}]" if s else str(t) for t, s in zip(data.input_ids[0].tolist(), data.scored[0].tolist())]
            print(" ".join(marked))
            print(f"vocabulary {task.vocab_size}; [x]: the token after x is scored", file=sys.stderr)
            return 0
        torch.manual_seed(args.seed)
        memory = None if args.memory == "none" else args.memory
        model = build_model("tiny", memory=memory, block=args.block, layers=[-1] if memory else None,
                            backbone_options=dict(vocab_size=task.vocab_size, d_model=args.d_model,
                                                  n_layers=args.layers, n_heads=4))
        seconds = args.seconds if args.seconds is not None or args.steps is not None else 60.0
        run = train_on_task(model, task, length=args.length, batch=args.batch, steps=args.steps, seconds=seconds,
                            seed=args.seed, description=f"{args.task}: {args.memory}")
        result = score_on_task(model, task, length=args.length, batch=args.batch, batches=4,
                               oracles=("full", f"block:{args.block}"))
    except (ValueError, KeyError, TypeError) as exc:
        print(f"memplug task: {exc}", file=sys.stderr)
        return 2
    print(f"{args.task}, memory {args.memory}: {run.steps} steps in {run.seconds:.0f} s")
    print(f"  bits per scored token {result['bits']:.3f}, accuracy {result['accuracy']:.3f} ({result['scored']} tokens)")
    print(f"  oracle, whole history: {result['oracle_full']:.3f} bits; "
          f"block of {args.block} alone: {result[f'oracle_block:{args.block}']:.3f} bits")
    return 0


@hookimpl
def memplug_add_commands(registry) -> None:
    registry.add("task", "train and score one memory on a synthetic long-range task (regime, passkey, recall)",
                 _add_arguments, _run)
