"""How exact must the block transitions' matmuls be? Split tensor-core schemes on a long stream.

    python benchmarks/scan_precision.py --orders 64,1024 --tokens 1000000 --threads 1

On a GPU the state's recurrence ``c <- A c + u`` runs in float32 without tensor cores (the
issue of docs/results/throughput.md: at 16x most of a step's kernel time). Tensor cores read
TF32 (10 mantissa bits) or bf16 (7); a "split" scheme writes each float32 operand as a sum of
parts of that format, ``x = x0 + x1 + ...`` (each part the rounding of what the others left), and
sums the products of the parts that matter, ``sum_{i + j < k} a_i b_j``: 3xTF32 (k = 2, three
products) and bf16x6 (k = 3, six products) are the usual ones. The bf16x6 row runs the library's
own split (``scan_precision="bf16x6"`` of the exact encoders).

This script measures, with no GPU, what each scheme does to a LegS state over a long stream, the
float32 stream test's setting (tests/test_encoders_legs.py: 1M tokens, blocks of 4,096, four
channels, a new transition every block). The schemes are emulated exactly: parts are rounded to
nearest in float32 storage, their products are exact in float32 (at most 2 x 11 significant
bits), and they are summed in float32, as a tensor core accumulates. The tokens' own projection
(the drive) stays in float32. The error is ``|c - c_64| / |c_64|`` at the end of the stream, against
the same recurrence in float64.

The table says which scheme a tensor-core scan may use: one whose error is within a small factor
of float32's. It does not time anything; the speed of each needs a GPU.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from common import int_list
from memplug.app.report import write_report
from memplug.hippo import scan
from memplug.hippo.scale_invariant import ScaleInvariantMeasure


def round_bf16(x: Tensor) -> Tensor:
    """float32 ``x`` rounded to bf16 (8 significant bits, to nearest even), kept in float32."""
    return x.to(torch.bfloat16).to(x.dtype)


def round_tf32(x: Tensor) -> Tensor:
    """float32 ``x`` rounded to TF32 (11 significant bits, to nearest even), kept in float32."""
    bits = x.view(torch.int32)
    bits = (bits + (0x0FFF + ((bits >> 13) & 1))) & ~0x1FFF
    return bits.view(torch.float32)


def split(x: Tensor, parts: int, rounding: Callable[[Tensor], Tensor]) -> list[Tensor]:
    """``x`` as ``parts`` terms in the rounded format, largest first: each the rounding of what
    the earlier ones left (``x - x0`` is exact in float32)."""
    out, rest = [], x
    for _ in range(parts):
        out.append(rounding(rest))
        rest = rest - out[-1]
    return out


def split_matmul(a: Tensor, b: Tensor, parts: int, rounding: Callable[[Tensor], Tensor]) -> Tensor:
    """``a @ b`` as ``sum_{i + j < parts} a_i @ b_j`` of the split operands, the smallest products
    first (float32 sums lose least that way)."""
    pa, pb = split(a, parts, rounding), split(b, parts, rounding)
    terms = sorted(((i, j) for i in range(parts) for j in range(parts) if i + j < parts), key=sum, reverse=True)
    out = torch.zeros(a.shape[0], b.shape[1], dtype=a.dtype)
    for i, j in terms:
        out += pa[i] @ pb[j]
    return out


#: name -> (tensor-core products per matmul, the matmul); "float32" is the scan as it runs now
SCHEMES: dict[str, tuple[int, Callable[[Tensor, Tensor], Tensor]]] = {
    "float32": (1, lambda a, b: a @ b),
    "TF32": (1, lambda a, b: split_matmul(a, b, 1, round_tf32)),
    "3xTF32": (3, lambda a, b: split_matmul(a, b, 2, round_tf32)),
    "bf16": (1, lambda a, b: split_matmul(a, b, 1, round_bf16)),
    "bf16x3": (3, lambda a, b: split_matmul(a, b, 2, round_bf16)),
    # the library's own split (memplug.hippo.scan, scan_precision="bf16x6"): one matmul of its operands
    "bf16x6": (6, lambda a, b: (lambda a6, b6: a6.float() @ b6.float())(*scan.bf16x6_operands(a, b))),
}


def stream_errors(order: int, tokens: int, block: int, channels: int) -> dict[str, float]:
    """Relative error of each scheme's final state against float64 after ``tokens`` tokens."""
    rng = np.random.default_rng(0)
    s = np.arange(tokens)[:, None]
    periods = np.geomspace(50, 3e5, channels)
    x = torch.from_numpy(rng.standard_normal((tokens, channels)) + np.sin(2 * np.pi * s / periods))  # (T, C)
    measure = ScaleInvariantMeasure(order)
    exact = torch.zeros(order, channels, dtype=torch.float64)
    states = {name: torch.zeros(order, channels) for name in SCHEMES}
    for lo in range(0, tokens, block):
        span = [(lo, min(tokens, lo + block))]
        xb = x[lo : span[0][1]].unsqueeze(0)  # (1, L, C)
        exact = (measure.span_transitions(span, torch.float64, x.device)[0] @ exact
                 + measure.span_drive(xb, span, torch.float64)[0])
        transition = measure.span_transitions(span, torch.float32, x.device)[0]  # (N, N)
        drive = measure.span_drive(xb.float(), span, torch.float32)[0]  # (N, C)
        for name, (_, matmul) in SCHEMES.items():
            states[name] = matmul(transition, states[name]) + drive
    return {name: float((c.double() - exact).norm() / exact.norm()) for name, c in states.items()}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--orders", default="64,1024", help="comma-separated N (64: elastic at 1x, 1024: at 16x)")
    p.add_argument("--tokens", type=int, default=1_000_000)
    p.add_argument("--block", type=int, default=4096, help="tokens per step of the recurrence")
    p.add_argument("--channels", type=int, default=4)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--out", default="docs/results")
    p.add_argument("--name", default="scan_precision")
    args = p.parse_args(argv)
    orders = int_list(args.orders, "--orders")
    for name in ("tokens", "block", "channels"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name} must be a positive integer, got {getattr(args, name)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    errors = {}
    for order in orders:
        errors[order] = stream_errors(order, args.tokens, args.block, args.channels)
        print(order, errors[order], flush=True)
    header = "| scheme | tensor-core products | " + " | ".join(
        f"N = {n}: error | N = {n}: / float32" for n in orders) + " |"
    lines = [header, "|" + "---|" * (2 + 2 * len(orders))]
    for name, (products, _) in SCHEMES.items():
        cells = [f"{errors[n][name]:.2e} | {errors[n][name] / errors[n]['float32']:.3g}" for n in orders]
        lines.append(f"| {name} | {products if name != 'float32' else 'none (SIMT)'} | " + " | ".join(cells) + " |")
    markdown = (
        f"LegS state after {args.tokens:,} tokens in steps of {args.block:,} ({args.channels} channels, a new "
        "transition every step), each scheme's transition products emulated exactly on the CPU; the error is "
        "against the same recurrence in float64.\n\n" + "\n".join(lines)
    )
    path = write_report(args.out, args.name, markdown, {"errors": {str(n): e for n, e in errors.items()},
                                                        "products": {k: v[0] for k, v in SCHEMES.items()}},
                        title="Transition products in split tensor-core formats: error on a long stream",
                        seconds=time.perf_counter() - started)
    print(markdown, f"\nwrote {path}", sep="\n")
    return errors


if __name__ == "__main__":
    main()
