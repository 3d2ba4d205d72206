"""Figures a paper can use: checked on the matplotlib objects (ticks, lines, error bars, size)."""
from __future__ import annotations

import csv

import numpy as np
import pytest
from click.testing import CliRunner

from c3dfeat.cli import cli
from c3dfeat.evaluate import plots
from c3dfeat.evaluate.linear import EvalResult, SplitResult
from c3dfeat.evaluate.pca import PCARow, PCASweep
from c3dfeat.store import write_matrices

pytest.importorskip("matplotlib")


def _result(top1s):
    splits = [SplitResult(name=f"s{i}", n_train=10, n_test=5, C=1.0, top1=t, mean_class=t, cv={}, seconds=0.1)
              for i, t in enumerate(top1s)]
    return EvalResult(splits, "torch", "l2", "test protocol", 3)


def _sweep():
    return PCASweep([PCARow(10, 50.0, _result([60.0, 70.0, 65.0])), PCARow(50, 70.0, _result([90.0, 99.0, 93.0])),
                     PCARow(100, 80.0, _result([100.0, 100.0, 94.0])),  # mean + std passes 100
                     PCARow(500, 95.0, _result([97.0, 99.0, 98.0]))])


def test_sweep_figure_ticks_reference_line_error_bars_size():
    full = _result([96.0, 98.0, 97.0])
    fig = plots.sweep_figure(_sweep(), full=full, full_dim=4096, title="c3d/fc6", caption="UCF101 split 1-3")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["10", "50", "100", "500"]
    assert list(ax.get_xticks()) == [10, 50, 100, 500] and ax.get_xscale() == "log"
    ref = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    assert len(ref) == 1 and ref[0].get_ydata()[0] == pytest.approx(97.0)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("all 4096 dimensions" in t for t in legend) and any("± 1 std over 3 splits" in t for t in legend)
    # error bars: mean ± std clipped to [0, 100]
    segs = ax.collections[0].get_segments()
    lows, highs = [s[0][1] for s in segs], [s[1][1] for s in segs]
    means = [r.result.mean_top1 for r in _sweep().rows]
    stds = [r.result.std_top1 for r in _sweep().rows]
    assert highs == pytest.approx([min(100, m + s) for m, s in zip(means, stds)])
    assert lows == pytest.approx([max(0, m - s) for m, s in zip(means, stds)])
    assert max(highs) <= 100.0 and max(m + s for m, s in zip(means, stds)) > 100.0
    assert "UCF101 split 1-3" in ax.get_title() and "c3d/fc6" in ax.get_title()
    assert fig.get_size_inches()[0] * plots.DPI >= 1200
    assert not any(plots.RANDOM_INIT_NOTE in t.get_text() for t in fig.texts)
    plots.pyplot().close(fig)


def test_random_init_is_said_on_every_figure():
    fig = plots.sweep_figure(_sweep(), random_init=True)
    assert any(plots.RANDOM_INIT_NOTE in t.get_text() for t in fig.texts)
    fig2 = plots.embedding_figure(np.zeros((4, 2)), ["a", "b", "a", "b"], random_init=True)
    assert any(plots.RANDOM_INIT_NOTE in t.get_text() for t in fig2.texts)
    plots.pyplot().close("all")


def test_embedding_figure_colour_and_marker_per_class_legend_outside():
    rng = np.random.default_rng(0)
    labels = [f"class{i % 14}" for i in range(70)]
    fig = plots.embedding_figure(rng.standard_normal((70, 2)), labels, title="t-SNE, perplexity 5")
    ax = fig.axes[0]
    assert len(ax.collections) == 14
    marker_paths = [tuple(map(tuple, c.get_paths()[0].vertices.round(3))) for c in ax.collections]
    colours = [tuple(c.get_facecolor()[0].round(3)) for c in ax.collections]
    pairs = set(zip(marker_paths, colours))
    assert len(pairs) == 14  # each class its own (marker, colour)
    assert len(set(marker_paths)) > 1  # not colour alone
    assert all(c.get_sizes()[0] >= 30 for c in ax.collections)  # readable markers
    anchor = ax.get_legend().get_bbox_to_anchor().transformed(ax.transAxes.inverted())
    assert anchor.x0 >= 1.0  # the legend is right of the axes, not on the points
    assert "perplexity 5" in ax.get_title()
    assert fig.get_size_inches()[0] * plots.DPI >= 1200
    plots.pyplot().close(fig)


@pytest.fixture
def feats(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    ids = [f"{c}/v{i}.avi" for c in ("a", "b") for i in range(6)]
    y = np.repeat(np.arange(2), 6)
    X = np.maximum(rng.standard_normal((2, 12))[y] * 3 + rng.standard_normal((12, 12)), 0)
    write_matrices(tmp_path / "feats.h5", ids, {"c3d": {"fc6": X}}, {"kind": "test"})
    return ids


def test_unknown_plot_extension_is_one_line(feats):
    for args in (["pca", "--dims", "2", "--plot", "p.xyz"], ["tsne", "--plot", "t.xyz"]):
        res = CliRunner().invoke(cli, args)
        assert res.exit_code == 1, res.output
        assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1
        assert ".xyz" in res.output and ".pdf" in res.output and ".svg" in res.output and ".png" in res.output


def test_tsne_writes_coordinates_and_says_when_perplexity_is_lowered(feats):
    res = CliRunner().invoke(cli, ["tsne", "--plot", "t.svg", "-o", "t.csv"])  # default perplexity 30 > (12-1)/3
    assert res.exit_code == 0, res.output
    assert "perplexity 30 is too large for 12 videos" in " ".join(res.stderr.split())
    with open("t.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["id", "label", "x", "y"] and [r[0] for r in rows[1:]] == feats
    assert {r[1] for r in rows[1:]} == {"a", "b"} and all(np.isfinite(float(r[2])) for r in rows[1:])
    assert open("t.svg", encoding="utf-8").read(200).lstrip().startswith("<?xml")


def test_pca_plot_vector_and_wide_raster(feats):
    res = CliRunner().invoke(cli, ["pca", "--dims", "2", "--dims", "4", "--folds", "2", "--C", "1",
                                   "--plot", "p.pdf"])
    assert res.exit_code == 0, res.output
    assert open("p.pdf", "rb").read(5) == b"%PDF-"
    res = CliRunner().invoke(cli, ["pca", "--dims", "2", "--folds", "2", "--C", "1", "--plot", "p.png"])
    assert res.exit_code == 0, res.output
    from PIL import Image

    assert Image.open("p.png").size[0] >= 1200
