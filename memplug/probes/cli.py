"""``memplug probe MODEL``: long-context probes on a trained model or a Hugging Face model.

``MODEL`` is a memplug checkpoint (or run folder: its latest checkpoint), or ``hf:<name or
path>`` for a Hugging Face causal LM (``hf:smollm2`` is the packaged SmolLM2-135M): read with
full attention as it is, or with ``--memory`` attached (``--block``, ``--sink``, ``--gate``,
``--memory-option KEY=VALUE``). Writes ``NAME.json``, ``NAME.md`` (command, machine, date) and
``NAME.png`` (accuracy by length and depth) into ``--out``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from ..core.hookspecs import hookimpl

DEFAULT_LENGTHS = "1024,4096,16384"
DEFAULT_DEPTHS = "0,0.25,0.5,0.75,1"


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    from . import PROBES
    from .runner import SCORINGS

    parser.add_argument("model", help="a checkpoint or run folder, or hf:<name or path> (hf:smollm2)")
    parser.add_argument("--probes", default="needle,passkey", help=f"comma-separated, from {', '.join(PROBES)}")
    parser.add_argument("--lengths", default=DEFAULT_LENGTHS, help="context lengths in tokens, comma-separated")
    parser.add_argument("--depths", default=DEFAULT_DEPTHS, help="needle depths in [0, 1], comma-separated")
    parser.add_argument("--samples", type=int, default=4, help="contexts per (probe, length, depth) cell")
    parser.add_argument("--scoring", choices=SCORINGS, default="loglik",
                        help="loglik: the likeliest candidate answer; greedy: the answer in the greedy continuation")
    parser.add_argument("--dataset", default="literature", help="corpus whose held-out text is the haystack")
    parser.add_argument("--dataset-option", action="append", default=[], metavar="KEY=VALUE",
                        help="an option of the dataset (a source path)")
    parser.add_argument("--split", default="test", choices=("train", "validation", "test"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunk", type=int, default=2048, help="tokens per model call while reading a context")
    parser.add_argument("--memory", default=None, help="hf: attach this memory (default: full attention, as is)")
    parser.add_argument("--block", type=int, default=None, help="hf: block length of the attached memory layers")
    parser.add_argument("--sink", type=int, default=0, help="hf: first tokens kept visible in every window")
    parser.add_argument("--gate", action="store_true", help="hf: let the memory in through a zero-initialised gate")
    parser.add_argument("--memory-option", action="append", default=[], metavar="KEY=VALUE",
                        help="hf: an option of the attached memory (TOML value)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", default="probes", help="output folder")
    parser.add_argument("--name", default="probes", help="report name")


def _numbers(text: str, kind: type, flag: str) -> list:
    try:
        return [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{flag} takes comma-separated {kind.__name__} values, got {text!r}") from None


def _reader(args: argparse.Namespace, device: torch.device):
    """The reader and tokenizer for ``args.model``."""
    from ..app.config import parse_pairs
    from ..data.tokenizers import HFTokenizer
    from .readers import HFCausalLMReader, MemoryModelReader

    if args.model.startswith("hf:"):
        from ..backbones.hf import HFBackbone, attach

        backbone = HFBackbone(args.model[3:])
        if backbone.tokenizer is None:
            raise ValueError(f"{args.model}: the model folder has no tokenizer files")
        tokenizer = HFTokenizer(backbone.tokenizer)
        if args.memory is None:
            return HFCausalLMReader(backbone.hf.to(device), args.chunk), tokenizer
        model = attach(backbone, memory=None if args.memory == "none" else args.memory, block=args.block,
                       sink=args.sink, gate=args.gate, memory_options=parse_pairs(args.memory_option, "--memory-option"))
        return MemoryModelReader(model.to(device).eval(), args.chunk), tokenizer
    if args.memory or args.block or args.sink or args.gate or args.memory_option:
        raise ValueError("--memory, --block, --sink, --gate and --memory-option apply to hf: models; "
                         "a checkpoint brings its own")
    from ..app.build import load_trained
    from ..app.checkpoint import latest_checkpoint

    path = Path(args.model)
    if (path / "checkpoints").is_dir():
        path = latest_checkpoint(path / "checkpoints") or path
    model, tokenizer, _ = load_trained(path, device)
    return MemoryModelReader(model.eval(), args.chunk), tokenizer


def _run(args: argparse.Namespace) -> int:
    from ..app.checkpoint import CheckpointError
    from ..app.config import ConfigError, parse_pairs
    from ..app.distributed import resolve_device
    from ..app.report import figure_markdown, write_report
    from ..core.contracts import SourceMissingError
    from . import make_probe
    from .runner import heatmap, run_probes, to_markdown

    started = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        probes = [make_probe(name.strip()) for name in args.probes.split(",") if name.strip()]
        lengths = _numbers(args.lengths, int, "--lengths")
        depths = _numbers(args.depths, float, "--depths")
        if args.chunk < 1:
            raise ValueError(f"--chunk must be a positive number of tokens, got {args.chunk}")
        reader, tokenizer = _reader(args, resolve_device(args.device))

        def progress(cell: dict) -> None:
            shown = "n/a" if cell["accuracy"] is None else f"{cell['correct']}/{cell['total']}"
            print(f"{cell['probe']} length {cell['length']:,} depth {cell['depth']:.0%}: {shown}", file=sys.stderr)

        result = run_probes(reader, tokenizer, probes, lengths, depths, samples=args.samples, scoring=args.scoring,
                            dataset=args.dataset, split=args.split, seed=args.seed, on_cell=progress,
                            dataset_options=parse_pairs(args.dataset_option, "--dataset-option", typed=False))
    except (ValueError, KeyError, ConfigError, CheckpointError, SourceMissingError, FileNotFoundError) as exc:
        print(f"memplug probe: {exc}", file=sys.stderr)
        return 2
    result["model"] = args.model
    markdown = to_markdown(result) + figure_markdown(Path(args.out), args.name, heatmap(result), size=(4 * len(probes), 3.2))
    path = write_report(args.out, args.name, markdown, result, title=f"Long-context probes: {args.model}",
                        seconds=time.perf_counter() - started)
    print(markdown)
    print(f"wrote {path}", file=sys.stderr)
    return 0


@hookimpl
def memplug_add_commands(registry) -> None:
    registry.add("probe", "long-context probes (needle, passkey, variable tracking) by length and depth",
                 _add_arguments, _run)
