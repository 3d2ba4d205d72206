"""Figures a paper can use: the PCA compactness sweep and the t-SNE embedding.

Each builder returns a matplotlib Figure (tests inspect its ticks, lines and error bars) and
:func:`save` writes it. Raster figures are at least 1200 px wide; .pdf/.svg are vector. A figure
of features from a randomly initialised model says so in red on the figure itself.
"""
from __future__ import annotations

import csv
import math
import re
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any, List, Optional, Sequence

import numpy as np

from c3dfeat.errors import EvalError

if TYPE_CHECKING:
    from c3dfeat.evaluate.linear import EvalResult
    from c3dfeat.evaluate.pca import PCASweep

DPI = 200  # 8 in x 200 dpi = 1600 px: readable when scaled to a column
RANDOM_INIT_NOTE = "RANDOM-INIT FEATURES (no pretrained weights): not the paper's numbers"
# Marker shapes cycled with the colours, so classes stay apart in grey print and for colour-blind readers.
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")


def pyplot() -> Any:
    """matplotlib.pyplot on the non-interactive Agg backend (or a clear error)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise EvalError("plotting needs matplotlib: pip install 'c3dfeat[plot]'") from e
    return plt


def plot_formats() -> List[str]:
    """File extensions matplotlib can write, e.g. ['eps', 'jpg', 'pdf', 'png', 'svg', ...]."""
    pyplot()
    from matplotlib.backend_bases import FigureCanvasBase

    return sorted(FigureCanvasBase.get_supported_filetypes())


def check_plot_path(path: str) -> None:
    """Refuse, before any computation, a plot file whose extension matplotlib cannot write."""
    ext = Path(path).suffix.lower().lstrip(".")
    formats = plot_formats()
    if ext not in formats:
        raise EvalError(f"cannot write a plot to {path}: the extension must be one of "
                        + ", ".join("." + f for f in formats))


def save(fig: Any, out: str) -> None:
    fig.savefig(out, dpi=DPI, bbox_inches="tight")
    pyplot().close(fig)


def _mark_random_init(fig: Any) -> None:
    fig.text(0.5, 0.01, RANDOM_INIT_NOTE, ha="center", va="bottom", color="red", fontsize=11,
             fontweight="bold")


def clipped_error(means: Sequence[float], stds: Sequence[float], lo: float = 0.0,
                  hi: float = 100.0) -> np.ndarray:
    """(2, n) asymmetric error bars: mean ± std clipped to [lo, hi] (accuracies are percentages)."""
    m = np.asarray(means, dtype=float)
    s = np.nan_to_num(np.asarray(stds, dtype=float))
    return np.stack([m - np.clip(m - s, lo, hi), np.clip(m + s, lo, hi) - m])


def sweep_figure(sweep: "PCASweep", *, full: Optional["EvalResult"] = None, full_dim: int = 0,
                 title: str = "", caption: str = "", random_init: bool = False) -> Any:
    """Top-1 accuracy versus PCA dimensions (the C3D paper's compactness figure).

    The dimensions are the x ticks (log axis), error bars are ± one standard deviation over the
    splits clipped to [0, 100], and ``full`` (the protocol on all ``full_dim`` dimensions) is a
    dashed reference line. ``caption`` (the protocol) goes under the title.
    """
    plt = pyplot()
    from matplotlib.ticker import FixedFormatter, FixedLocator, NullLocator

    dims = [r.dims for r in sweep.rows]
    means = [r.result.mean_top1 for r in sweep.rows]
    stds = [r.result.std_top1 for r in sweep.rows]
    n_splits = len(sweep.rows[0].result.splits) if sweep.rows else 0
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.errorbar(dims, means, yerr=clipped_error(means, stds), marker="o", capsize=4, linewidth=1.5,
                label=f"PCA + linear SVM (mean ± 1 std over {n_splits} split{'s' if n_splits != 1 else ''})")
    if full is not None:
        ax.axhline(full.mean_top1, color="grey", linestyle="--", linewidth=1.2,
                   label=f"all {full_dim} dimensions: {full.mean_top1:.1f} %")
    if len(dims) > 1 and dims[-1] / max(dims[0], 1) >= 10:
        ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(dims))
    ax.xaxis.set_major_formatter(FixedFormatter([str(d) for d in dims]))
    ax.xaxis.set_minor_locator(NullLocator())
    top = max([m + s for m, s in zip(means, np.nan_to_num(stds))] + [full.mean_top1 if full else 0.0])
    # 101: a bar capped at 100 % stays visible above the axis line
    ax.set_ylim(max(0.0, min(means + [100.0]) - 10.0) if means else 0.0, min(101.0, top + 5.0))
    ax.set_xlabel("PCA dimensions")
    ax.set_ylabel("top-1 accuracy (%)")
    caption = "\n".join(textwrap.wrap(caption, 110))
    ax.set_title((title or "Linear SVM accuracy vs. PCA dimensions") + (f"\n{caption}" if caption else ""),
                 fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=9)
    fig.tight_layout(rect=(0, 0.05 if random_init else 0, 1, 1))
    if random_init:
        _mark_random_init(fig)
    return fig


def embedding_figure(Y: np.ndarray, labels: Sequence[Optional[str]], *, title: str = "",
                     random_init: bool = False) -> Any:
    """Scatter of a 2-D embedding: each class a colour AND a marker shape, legend outside."""
    plt = pyplot()
    labs = np.array([lab if lab is not None else "(none)" for lab in labels], dtype=object)
    classes = sorted(set(labs), key=_natural_key)  # class2 before class10
    n = len(classes)
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20" if n <= 20 else "gist_ncar")
    fig, ax = plt.subplots(figsize=(9, 7))
    for i, c in enumerate(classes):
        m = labs == c
        color = cmap(i) if n <= 20 else cmap(i / n)
        ax.scatter(Y[m, 0], Y[m, 1], s=36, color=color, marker=MARKERS[i % len(MARKERS)],
                   edgecolors="black", linewidths=0.3, alpha=0.85, label=str(c))
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False,
              ncol=max(1, math.ceil(n / 30)), title=f"{n} classes")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or f"t-SNE of {len(Y)} videos, {n} classes", fontsize=10)
    fig.tight_layout(rect=(0, 0.05 if random_init else 0, 1, 1))
    if random_init:
        _mark_random_init(fig)
    return fig


def _natural_key(label: str) -> List[Any]:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", str(label))]


def write_coordinates(out: str, ids: Sequence[str], labels: Sequence[Optional[str]], Y: np.ndarray) -> None:
    """The 2-D embedding as CSV: id,label,x,y (one row per video)."""
    with open(out, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "label", "x", "y"])
        for vid, lab, (x, y) in zip(ids, labels, np.asarray(Y, dtype=float)):
            w.writerow([vid, lab or "", f"{x:.6g}", f"{y:.6g}"])
