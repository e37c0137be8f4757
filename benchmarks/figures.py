"""Figures for docs/attention.md: the trapezoid mask and the block-parallel scan.

    python benchmarks/figures.py     # writes docs/img/trapezoid.png and docs/img/block_scan.png

The trapezoid panels are drawn from :func:`memplug.ops.attention.trapezoid_mask` itself, so the
figure shows the mask the code builds.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.patches import FancyArrowPatch, Rectangle  # noqa: E402

from memplug.ops.attention import trapezoid_mask  # noqa: E402

HIDDEN, MEMORY, LOCAL = 0, 1, 2
COLORS = ListedColormap(["#f4f4f4", "#e6a23c", "#4c8bd6"])


def trapezoid(ax, block: int, memory: int, span: str) -> None:
    local = 2 * block if span == "previous" else block
    mask = trapezoid_mask(block, local, memory).numpy()  # (L, P + local): 0 visible, -inf hidden
    kind = np.where(np.isinf(mask), HIDDEN, LOCAL)
    kind[:, :memory] = np.where(np.isinf(mask[:, :memory]), HIDDEN, MEMORY)
    ax.imshow(kind, cmap=COLORS, vmin=0, vmax=2, aspect="equal")
    ax.set_xticks(np.arange(-0.5, memory + local, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, block, 1), minor=True)
    ax.grid(which="minor", color="white", linewidth=0.8)
    ax.tick_params(which="both", length=0, labelbottom=False, labelleft=False)
    ax.axvline(memory - 0.5, color="black", linewidth=1.5)
    if span == "previous":
        ax.axvline(memory + block - 0.5, color="black", linewidth=0.8, linestyle="--")
    parts = [(memory / 2, f"memory\n(P={memory})")]
    if span == "previous":
        parts.append((memory + block / 2, "previous block"))
    parts.append((memory + local - block / 2, "block"))
    for x, text in parts:
        ax.text(x - 0.5, -1.0, text, ha="center", va="bottom", fontsize=9)
    ax.set_ylabel(f"queries of the block (L={block})")
    ax.set_title(f'span="{span}"', pad=34)


def block_scan(ax, blocks: int = 5, length: float = 1.0) -> None:
    """Blocks on a time axis, the states after each block (the scan) and what each block reads."""
    for i in range(blocks):
        ax.add_patch(Rectangle((i * length, 0), length, 0.5, facecolor="#4c8bd6", alpha=0.25 + 0.1 * i,
                               edgecolor="black"))
        ax.text((i + 0.5) * length, 0.25, f"block {i}", ha="center", va="center", fontsize=9)
    ax.text(-0.15, 0.25, "tokens", ha="right", va="center", fontsize=9)
    ax.text(-0.15, -0.75, "states", ha="right", va="center", fontsize=9)
    for i in range(blocks + 1):
        x = i * length
        ax.add_patch(plt.Circle((x, -0.75), 0.12, facecolor="#e6a23c" if i < blocks else "white", edgecolor="black"))
        ax.text(x, -1.05, f"$s_{{{i}}}$", ha="center", va="top", fontsize=10)
        if i < blocks:  # block i is absorbed by the scan: s_i -> s_{i+1}
            ax.add_patch(FancyArrowPatch((x + 0.13, -0.75), (x + length - 0.13, -0.75), arrowstyle="->",
                                         mutation_scale=12, color="black"))
            # ... and block i reads the state at its start, s_i, through P samples
            ax.add_patch(FancyArrowPatch((x + 0.05, -0.62), ((i + 0.5) * length, -0.02), arrowstyle="->",
                                         mutation_scale=12, color="#c0392b", linestyle="--"))
    ax.text(blocks * length + 0.2, -0.75, "carried to the next call", fontsize=8, va="center")
    ax.text(0.5 * length, -1.45, "encoder.scan: all $s_1..s_{nb}$ in parallel, exact LegS block update "
            "$s_{i+1} = M(t_i/t_{i+1})\\,s_i + U\\,x_i$", fontsize=9)
    ax.text(0.5 * length, -1.75, "retriever.read: block $i$ attends to $P$ samples of $s_i$ "
            "(times $t_i = t_0 + iL$) next to its local keys, one batched call", fontsize=9, color="#c0392b")
    ax.set_xlim(-1.0, blocks * length + 1.8)
    ax.set_ylim(-1.95, 0.7)
    ax.set_aspect("equal")
    ax.axis("off")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="docs/img")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [12, 20]})
    trapezoid(axes[0], block=8, memory=4, span="block")
    trapezoid(axes[1], block=8, memory=4, span="previous")
    handles = [Rectangle((0, 0), 1, 1, color=COLORS(i)) for i in (MEMORY, LOCAL, HIDDEN)]
    fig.legend(handles, ["memory slot (visible to every query)", "local key (causal, bottom-right)", "hidden"],
               loc="lower center", ncol=3, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 0.93))
    fig.savefig(out / "trapezoid.png", dpi=130)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(10, 3.4))
    block_scan(ax)
    fig.tight_layout()
    fig.savefig(out / "block_scan.png", dpi=130)
    plt.close(fig)
    print(f"wrote {out / 'trapezoid.png'} and {out / 'block_scan.png'}")


if __name__ == "__main__":
    main()
