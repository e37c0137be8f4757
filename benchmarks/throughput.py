"""Training throughput (forward + backward tokens/s) of memory models against the bare model.

Every memory in ``--memories`` (``none`` = the bare model: block-local attention, no memory) is
built on the same tiny backbone, with the memory on all layers at ``--scale`` x the memory
budget (:mod:`memplug.core.budget`; elastic at 1x with block 256 is N = P = 64). Each step is one
forward + backward on random bytes under ``--dtype`` (bf16 autocast where the device computes it fast,
float32 elsewhere; ``--device``, CPU by default) in eager mode and under
``torch.compile`` (after one eager step that fills the encoders' caches). The arms run interleaved, round after round, so a load change on the machine
hits them alike; the ratio to the bare model is the median of per-round ratios.

    python benchmarks/throughput.py --memories none,elastic --scale 1x --modes eager,compiled

Each memory arm whose memory has an encoder also reports how exact its block scan runs there (its
method and ``--scan-precision`` products, against float64): the error beside the speed.

``--count-ops`` also profiles one eager step per arm (torch.profiler) and counts the operator
calls that compute (views, reshapes and the calls inside another operator left out): on a GPU
each is about one kernel launch, so on a CPU the count stands in for the launches a GPU step
would make.

On a CUDA device it also counts the kernels one eager step launches and their summed time
(torch.profiler's CUDA activity).

``--backbone hf:smollm2`` (or ``hf:PATH`` to a Hugging Face model folder) times a pretrained
model instead of the tiny one, fully trained (every weight takes a gradient): the arm ``hf`` is
the unmodified Hugging Face model (full causal attention, the baseline of the ratios when it
runs), ``none`` the model attached with the local window of ``--block`` tokens and no memory, and
each memory the model attached with it in every layer:

    python benchmarks/throughput.py --backbone hf:smollm2 --memories hf,none,elastic --block 256 \
        --seq 2048 --batch 4 --modes eager --device cuda

Writes ``docs/results/throughput.md``, ``.json`` (machine, date, command) and ``.png``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
from collections import Counter
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

import common
import memplug
from memory_configs import build_options, parse_scales
from memplug.app.precision import PRECISIONS, resolve_precision
from memplug.core.contracts import Encoder
from memplug.hippo.fused_scan import fused_available
from memplug.hippo.scan import SCAN_METHODS, SCAN_PRECISIONS


def build(name: str, scale: int, args: argparse.Namespace, hf: torch.nn.Module | None = None) -> torch.nn.Module:
    """The arm ``name`` at ``scale``: on the tiny backbone, or around the pretrained ``hf`` (the
    arm ``hf`` is that model itself, which :func:`parse` makes sure is given; the others attach to
    it, sharing its weights)."""
    if name == "hf":
        return hf
    torch.manual_seed(0)
    options = build_options(name, scale, args.block)
    if name == "elastic":
        encoder = options["memory_options"].setdefault("encoder_options", {})
        if args.scan_method != "auto":
            encoder["scan_method"] = args.scan_method
        if args.scan_precision != "float32":
            encoder["scan_precision"] = args.scan_precision
    if hf is None:
        model = memplug.build_model(
            "tiny", block=args.block, backbone_options=dict(d_model=args.d_model, n_layers=args.layers,
                                                            n_heads=args.heads),
            **options,
        ).to(args.device)
    else:
        from memplug.backbones.hf import attach

        model = attach(hf, block=args.block, **options).to(args.device)
    if args.dense_steps:
        for module in model.modules():
            if isinstance(module, Encoder):
                module.lower_triangular = False  # this instance's scan multiplies whole transitions
    return model


def load_pretrained(spec: str, device: torch.device) -> torch.nn.Module:
    """``hf:smollm2`` or ``hf:PATH`` -> the Hugging Face model, in training mode, on ``device``."""
    from memplug.backbones.hf import HFBackbone

    return HFBackbone(spec.removeprefix("hf:")).hf.to(device).train()


#: aten operators that only re-describe memory (views, reshapes, dtype look-ups) or dispatch to
#: another operator that is counted instead: no kernel of their own.
NO_KERNEL = frozenset({
    "aten::view", "aten::reshape", "aten::_reshape_alias", "aten::as_strided", "aten::transpose", "aten::t",
    "aten::select", "aten::slice", "aten::expand", "aten::unsqueeze", "aten::squeeze", "aten::permute",
    "aten::alias", "aten::detach", "aten::unbind", "aten::split", "aten::_unsafe_view", "aten::empty",
    "aten::empty_like", "aten::empty_strided", "aten::lift_fresh", "aten::resolve_conj", "aten::resolve_neg",
    "aten::numpy_T", "aten::mT", "aten::contiguous", "aten::matmul", "aten::chunk", "aten::narrow", "aten::to",
    "aten::_to_copy", "aten::unflatten", "aten::flatten", "aten::result_type", "aten::is_nonzero", "aten::item",
    "aten::_local_scalar_dense", "aten::expand_as", "aten::view_as", "aten::detach_", "aten::set_",
    "aten::promote_types", "aten::pad",
})


def count_ops(step: Callable[[], None], opaque: str | None = None) -> Counter:
    """Operator calls of one ``step()`` that compute: aten operators outside :data:`NO_KERNEL`
    and not called from inside another such operator, by name. ``opaque`` names a
    ``torch.profiler.record_function`` range that counts as one call, whatever runs inside it (a
    Triton kernel run by Triton's interpreter on the CPU: one launch on a GPU)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()

    def inside_another(event: Any) -> bool:
        parent = event.cpu_parent
        while parent is not None:
            if (parent.name.startswith("aten::") and parent.name not in NO_KERNEL) or parent.name == opaque:
                return True
            parent = parent.cpu_parent
        return False

    return Counter(e.name for e in prof.events()
                   if ((e.name.startswith("aten::") and e.name not in NO_KERNEL) or e.name == opaque)
                   and not inside_another(e))


def count_flops(step: Callable[[], None]) -> int:
    """Floating-point operations of one ``step()`` in matrix products and attention (torch's
    FlopCounterMode: 2 per multiply-add; elementwise work is not counted). Its registry lacks the
    in-place products (elastic's block scan runs as ``baddbmm_``) and the CPU's fused attention;
    they are added here with the formulas of their out-of-place and GPU forms."""
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    same_as = {
        aten.baddbmm_: aten.baddbmm,
        aten.addmm_: aten.addmm,
        aten._scaled_dot_product_flash_attention_for_cpu: aten._scaled_dot_product_flash_attention,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: aten._scaled_dot_product_flash_attention_backward,
    }
    missing = {op: _registered(fc.flop_registry[like]) for op, like in same_as.items()}
    with fc.FlopCounterMode(display=False, custom_mapping=missing) as counter:
        step()
    return counter.get_total_flops()


def _registered(formula: Callable[..., int]) -> Callable[..., int]:
    """A formula from torch's flop registry (it already takes the op's arguments), marked so that
    FlopCounterMode's ``custom_mapping`` does not wrap it a second time."""

    def counted(*args: Any, **kwargs: Any) -> int:
        return formula(*args, **kwargs)

    counted._get_raw = True  # type: ignore[attr-defined]
    return counted


def scan_error(model: torch.nn.Module, seq: int, block: int, device: torch.device) -> float | None:
    """How exact the block scan of ``model``'s first memory encoder is, as it runs there (its
    method and products, float32 on ``device``): max |states - exact| / max |exact| over a fixed
    random signal of ``seq`` tokens x 64 channels in blocks of ``block``, the exact states from
    the same encoder in float64 with float32-style (unsplit) products on the CPU. None when the
    model has no encoder."""
    encoder = next((m for m in model.modules() if isinstance(m, Encoder)), None)
    if encoder is None:
        return None
    x = torch.randn(seq, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    reference = copy.deepcopy(encoder).cpu()
    if hasattr(reference, "scan_precision"):
        reference.scan_precision = "float32"
    with torch.no_grad():
        exact = reference.scan(x, block)
        states = encoder.scan(x.to(device, torch.float32), block).cpu().double()
    return float((states - exact).abs().max() / exact.abs().max())


def count_kernels(step: Callable[[], None]) -> tuple[int, float, Counter]:
    """CUDA kernels one ``step()`` launches: (count, summed kernel time in ms, count by name)."""
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        step()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return len(kernels), sum(e.device_time for e in kernels) / 1000, Counter(e.name for e in kernels)


def make_step(model: torch.nn.Module, compiled: bool, dtype: torch.dtype | None, ids: torch.Tensor):
    """A training step (forward + backward). For ``compiled``, one eager step runs first: it fills
    the encoders' transition caches, so the compiled graph only looks them up (tracing their
    construction takes minutes and recompiles when the cache changes)."""

    device = ids.device

    def step_with(forward) -> None:
        with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):  # None: float32
            loss = forward(ids, labels=ids).loss
        loss.backward()
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":  # time the work, not its launch
            torch.cuda.synchronize(device)

    if not compiled:
        return lambda: step_with(model)
    step_with(model)
    forward = torch.compile(model)
    return lambda: step_with(forward)


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line, checked before anything is built: a bad option ends here with one line
    (usage, exit status 2), not after minutes of warm-up. Only what needs the device (the fused
    scan's Triton) is left to :func:`main`."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--memories", default="none,elastic",
                   help="arms: none (no memory), memory names, and hf (the unmodified model of --backbone hf:...)")
    p.add_argument("--backbone", default="tiny", help="tiny (sized by --d-model etc.), hf:smollm2 or hf:PATH")
    p.add_argument("--scale", default="1x", help="memory budget multiples, e.g. 1x,16x")
    p.add_argument("--modes", default="eager,compiled")
    p.add_argument("--d-model", type=int, default=256, help="tiny backbone only (also --layers, --heads)")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--block", type=int, default=256)
    p.add_argument("--seq", type=int, default=4096)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rounds", type=int, default=7, help="timed steps per arm, interleaved")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--dtype", default="auto", choices=PRECISIONS,
                   help="bf16 autocast or float32; auto (default): bf16 where the device computes it fast")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (cuda when there is one)")
    p.add_argument("--scan-method", default="auto", choices=SCAN_METHODS,
                   help="how elastic's encoder runs the block recurrence (default auto: by size and device)")
    p.add_argument("--scan-precision", default="float32", choices=SCAN_PRECISIONS,
                   help="the products of elastic's sequential block scan: float32, or bf16x6 (float32's accuracy "
                        "from bf16 tensor-core products on a GPU; emulated, so slower, on a CPU)")
    p.add_argument("--dense-steps", action="store_true",
                   help="elastic's scan multiplies whole transitions, without skipping the zeros of triangular "
                        "ones (the skip's row chunks are smaller matmuls, which may fill a GPU less)")
    p.add_argument("--count-ops", action="store_true",
                   help="also count the computing operator calls of one eager step per arm (torch.profiler)")
    p.add_argument("--out", default="docs/results/throughput")
    args = p.parse_args(argv)
    names = arm_names(args)
    try:
        scales = parse_scales(args.scale)
        for name in names:
            if name != "hf":
                build_options(name, scales[0], args.block)
    except (KeyError, ValueError) as error:
        p.error(str(error).strip('"'))
    if not names:
        p.error("--memories names at least one arm")
    for mode in modes(args):
        if mode not in ("eager", "compiled"):
            p.error(f"--modes takes eager and/or compiled, got {mode!r}")
    if args.device not in ("cpu", "cuda", "auto") and not args.device.startswith("cuda:"):
        p.error(f"--device must be cpu, cuda, cuda:N or auto, got {args.device!r}")
    if args.backbone != "tiny" and (not args.backbone.startswith("hf:") or args.backbone == "hf:"):
        p.error(f"--backbone must be tiny, hf:smollm2 or hf:PATH, got {args.backbone!r}")
    if "hf" in names and args.backbone == "tiny":
        p.error("--memories: the arm 'hf' needs --backbone hf:MODEL")
    if args.scan_method != "auto" and "elastic" not in names:
        p.error(f"--scan-method {args.scan_method} applies to the elastic arm, which --memories lacks")
    if args.scan_precision != "float32" and "elastic" not in names:
        p.error(f"--scan-precision {args.scan_precision} applies to the elastic arm, which --memories lacks")
    if args.dense_steps and "elastic" not in names:
        p.error("--dense-steps applies to the elastic arm, which --memories lacks")
    if args.scan_method == "fused" and args.scan_precision != "float32":
        p.error(f"--scan-method fused runs float32 products, not --scan-precision {args.scan_precision}")
    for flag in ("rounds", "seq", "batch", "block"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    if args.warmup < 0:
        p.error(f"--warmup must be >= 0, got {args.warmup}")
    return args


def arm_names(args: argparse.Namespace) -> list[str]:
    """``--memories`` as a list of arm names."""
    return [n.strip() for n in args.memories.split(",") if n.strip()]


def modes(args: argparse.Namespace) -> list[str]:
    """``--modes`` as a list (eager, compiled)."""
    return [m.strip() for m in args.modes.split(",")]


def main(argv: Sequence[str] | None = None) -> None:
    args = parse(argv)
    started = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = arm_names(args)
    scales = parse_scales(args.scale)
    args.device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    precision = resolve_precision(args.dtype, args.device)
    dtype = precision.dtype
    if args.scan_method == "fused" and fused_available(args.device) is not None:
        raise SystemExit(f"--scan-method fused {fused_available(args.device)}")
    hf = None if args.backbone == "tiny" else load_pretrained(args.backbone, args.device)
    vocab = 256 if hf is None else hf.config.vocab_size
    ids = torch.randint(0, vocab, (args.batch, args.seq), generator=torch.Generator().manual_seed(0)).to(args.device)
    cuda = args.device.type == "cuda"
    baseline = "hf" if "hf" in names else "none"  # the ratios' reference: the unmodified model when it runs

    rows = []
    scan_errors: dict[tuple[str, int], float | None] = {}
    for mode in modes(args):
        arms = {}
        for name in names:
            for scale in ([1] if name in ("none", "hf") else scales):
                model = build(name, scale, args, hf)
                start = time.perf_counter()
                step = make_step(model, mode == "compiled", dtype, ids)
                for _ in range(args.warmup):
                    step()
                if (name, scale) not in scan_errors:  # a property of the arm, not of the mode: once
                    scan_errors[(name, scale)] = scan_error(model, args.seq, args.block, args.device)
                arms[(name, scale)] = dict(step=step, warmup_s=time.perf_counter() - start, times=[],
                                           params=sum(q.numel() for q in model.parameters()),
                                           scan_error=scan_errors[(name, scale)])
                if args.count_ops and mode == "eager":
                    arms[(name, scale)]["ops"] = count_ops(step)
                    arms[(name, scale)]["flops"] = count_flops(step)
                    if cuda:
                        arms[(name, scale)]["kernels"] = count_kernels(step)
                print(f"{mode} {name} {scale}x: warm-up {arms[(name, scale)]['warmup_s']:.1f}s", flush=True)
        for _ in range(args.rounds):
            for arm in arms.values():
                start = time.perf_counter()
                arm["step"]()
                arm["times"].append(time.perf_counter() - start)
        base = arms.get((baseline, 1))
        for (name, scale), arm in arms.items():
            best, median = min(arm["times"]), statistics.median(arm["times"])
            paired, interval = (None, None) if base is None else common.paired_ratio(arm["times"], base["times"])
            rows.append(dict(mode=mode, memory=name, scale=scale, step_s=best, median_step_s=median,
                             tokens_per_s=args.batch * args.seq / best,
                             ratio_to_none=None if base is None else min(base["times"]) / best,
                             median_ratio_to_none=None if base is None else statistics.median(base["times"]) / median,
                             paired_ratio_to_none=paired, paired_ratio_interval=interval,
                             step_times_s=arm["times"], warmup_s=arm["warmup_s"], parameters=arm["params"],
                             ops_per_step=sum(arm["ops"].values()) if "ops" in arm else None,
                             top_ops=arm["ops"].most_common(5) if "ops" in arm else None,
                             flops_per_step=arm.get("flops"),
                             flop_ceiling=base["flops"] / arm["flops"] if base and "flops" in base else None,
                             kernels_per_step=arm["kernels"][0] if "kernels" in arm else None,
                             kernel_ms=arm["kernels"][1] if "kernels" in arm else None,
                             top_kernels=arm["kernels"][2].most_common(5) if "kernels" in arm else None,
                             scan_error=arm["scan_error"]))
            print(f"{mode} {name} {scale}x: {rows[-1]['tokens_per_s']:.0f} tok/s"
                  + ("" if base is None else f", {rows[-1]['paired_ratio_to_none']:.3f} of {baseline}"), flush=True)

    config = {k: str(v) if k == "device" else v for k, v in vars(args).items() if k != "out"}
    model_line = (f"Tiny backbone d={args.d_model}, {args.layers} layers, {args.heads} heads" if hf is None else
                  f"{args.backbone} ({sum(q.numel() for q in hf.parameters()):,} parameters, every one trained; "
                  "`hf`: the unmodified model, full causal attention)")
    lines = [
        f"{model_line}, block {args.block}, "
        f"sequence {args.seq}, batch {args.batch}, {precision.name} on {args.device}, "
        f"{torch.get_num_threads()} torch thread(s); elastic's block scan: {args.scan_method}, {args.scan_precision} products{', whole (dense) steps' if args.dense_steps else ''}; forward + backward per step; {args.rounds} interleaved steps per arm after "
        f"{args.warmup} warm-up steps. Step time and tokens/s are from the fastest step; the median is given "
        f"beside it. The machine is shared, so load drifts during a run: the headline ratio is **paired**, the "
        f"median over rounds of ({baseline}'s step time / this arm's step time) within the same round, with "
        "its 95% confidence interval (order statistics of the rounds' ratios; none below 6 rounds).\n",
        "| mode | memory | scale | parameters | step s (fastest) | step s (median) | tokens/s (fastest) | "
        f"ratio to {baseline} (paired) | 95% interval | ratio (fastest) | ratio (medians) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    fmt = lambda x: "" if x is None else f"{x:.3f}"  # noqa: E731
    for r in rows:
        lines.append(f"| {r['mode']} | {r['memory']} | {r['scale']}x | {r['parameters']:,} | {r['step_s']:.3f} | "
                     f"{r['median_step_s']:.3f} | {r['tokens_per_s']:.0f} | **{fmt(r['paired_ratio_to_none'])}** | "
                     f"{common.interval_text(r['paired_ratio_interval'])} | "
                     f"{fmt(r['ratio_to_none'])} | {fmt(r['median_ratio_to_none'])} |")
    counted = [r for r in rows if r["ops_per_step"] is not None]
    if counted:
        lines += ["", "One eager training step: operator calls that compute (the stand-in for GPU kernel launches) "
                  "and the FLOPs of its matrix products and attention. The FLOP ceiling is "
                  f"{baseline}'s FLOPs / the arm's: the ratio the arm would reach if time went with those FLOPs.",
                  "", "| memory | scale | operator calls per step | GFLOP per step | FLOP ceiling | most called |",
                  "|---|---|---|---|---|---|"]
        for r in counted:
            top = ", ".join(f"{name.removeprefix('aten::')} {n}" for name, n in r["top_ops"])
            lines.append(f"| {r['memory']} | {r['scale']}x | {r['ops_per_step']} | {r['flops_per_step'] / 1e9:.1f} | "
                         f"{fmt(r['flop_ceiling'])} | {top} |")
    profiled = [r for r in rows if r["kernels_per_step"] is not None]
    if profiled:
        lines += ["", "CUDA kernels of one eager training step (torch.profiler):", "",
                  "| memory | scale | kernels per step | kernel time (ms) | most launched |", "|---|---|---|---|---|"]
        for r in profiled:
            top = ", ".join(f"{name[:40]} {n}" for name, n in r["top_kernels"])
            lines.append(f"| {r['memory']} | {r['scale']}x | {r['kernels_per_step']} | {r['kernel_ms']:.1f} | {top} |")
    scanned = {(r["memory"], r["scale"]): r["scan_error"] for r in rows if r["scan_error"] is not None}
    if scanned:
        lines += ["", f"How exact each memory's block scan runs here ({args.scan_precision} products, float32 "
                  f"states on {args.device}): max |states - float64 states| / max |float64 states| over {args.seq} "
                  f"tokens of a fixed random 64-channel signal in blocks of {args.block}.", "",
                  "| memory | scale | scan error vs float64 |", "|---|---|---|"]
        lines += [f"| {name} | {scale}x | {error:.1e} |" for (name, scale), error in scanned.items()]
    out = Path(args.out)
    data = dict(config=config, baseline=baseline, results=rows)
    common.report(out.parent, out.name, "\n".join(lines), data, figure(data),
                  title="Training throughput: memory models against the bare model", seconds=time.perf_counter() - started,
                  precision=precision)


def figure(data: dict[str, Any]) -> Callable[[Any], None]:
    """The plot of a throughput report's JSON ``data``: each arm's paired ratio to the baseline
    (the unmodified pretrained model, else the bare model) with its 95% interval where the report
    has one, or its tokens/s when neither ran."""
    rows = data["results"]
    paired = all(r["paired_ratio_to_none"] is not None for r in rows)
    intervals = [r.get("paired_ratio_interval") or (r["paired_ratio_to_none"],) * 2 for r in rows] if paired else None

    def draw(plt: Any) -> None:
        labels = [f"{r['memory']} {r['scale']}x ({r['mode']})" for r in rows]
        values = [r["paired_ratio_to_none" if paired else "tokens_per_s"] for r in rows]
        errors = None if intervals is None else [[v - lo for v, (lo, _) in zip(values, intervals)],
                                                 [hi - v for v, (_, hi) in zip(values, intervals)]]
        plt.barh(labels, values, xerr=errors)
        if paired:
            plt.axvline(1.0, color="black", linewidth=0.8)
        plt.gca().invert_yaxis()
        plt.yticks(fontsize=7)
        baseline = {"hf": "the unmodified model's"}.get(data.get("baseline", "none"), "bare model's")
        plt.xlabel(f"training throughput / {baseline} (paired; higher is faster)" if paired
                   else "training tokens/s (fastest step)")
        plt.title(f"{data['config'].get('device', 'cpu')}, sequence {data['config']['seq']}, "
                  f"batch {data['config']['batch']}", fontsize=9)

    return draw


if __name__ == "__main__":
    main()
