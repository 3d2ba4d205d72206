"""`c3dfeat linear-eval`, `c3dfeat pca`, `c3dfeat tsne`: the papers' evaluation protocols."""
from __future__ import annotations

import json
import math
import sys
from typing import Any, Dict, Optional, Sequence

import click

from c3dfeat.cli import options
from c3dfeat.cli.options import DEFAULT_FEATS
from c3dfeat.cli.root import cli

_svm_options = options.stack(
    options.model_in_file,
    options.layer_in_file,
    options.norm,
    options.svm,
    options.device,
    options.as_json,
)
_label_options = options.stack(options.label_source, options.split_choice, options.seed)


def _labels(kw: Dict[str, Any]) -> Any:
    """A LabelSource from the label (and, where the command has them, split) options."""
    from c3dfeat.evaluate import LabelSource

    return LabelSource(kw["dataset"], kw["splits_dir"], kw.get("split", ()), kw["labels_csv"],
                       kw.get("train_list"), kw.get("test_list"), kw.get("folds", 5), kw["seed"],
                       kw.get("allow_missing", False))


def _svm(kw: Dict[str, Any]) -> Any:
    from c3dfeat.evaluate import SVMOptions

    try:
        grid = tuple(float(c) for c in kw["C_grid"].split(",") if c.strip())
    except ValueError:
        raise click.BadParameter(f"{kw['C_grid']!r} is not a comma-separated list of numbers",
                                 param_hint="--C-grid") from None
    if not grid or min(grid) <= 0:
        raise click.BadParameter("C values must be positive", param_hint="--C-grid")
    return SVMOptions(kw["norm"], kw["C"], grid, kw["cv_folds"], kw["solver"], kw["device"],
                      kw["seed"])


def _source(run: Any) -> str:
    return run.protocol.source if run.protocol is not None else "labels from the file"


def _err(msg: str) -> None:
    click.echo(msg, err=True)


def _pct(v: float) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


def _console():
    from rich.console import Console

    return Console()


def _print_eval(run) -> None:
    from rich.table import Table

    r = run.result
    t = Table(title=f"linear SVM on {r.extra.get('model')}/{r.extra.get('layer')} "
                    f"({r.norm}, {r.solver}) — {_source(run)}")
    for col in ("split", "train", "test", "C", "top-1 %", "mean class %", "s"):
        t.add_column(col, justify="right" if col != "split" else "left")
    for s in r.splits:
        t.add_row(s.name, str(s.n_train), str(s.n_test), f"{s.C:g}", _pct(s.top1),
                  _pct(s.mean_class), f"{s.seconds:.1f}")
    t.add_row("mean ± std", "", "", "", f"{r.mean_top1:.2f} ± {r.std_top1:.2f}",
              f"{r.mean_class:.2f} ± {r.std_class:.2f}", "", style="bold")
    _console().print(t)


def _print_fusion(run) -> None:
    from rich.table import Table

    d = run.result.to_dict()
    names = d["modalities"]
    t = Table(title=f"fusion — {_source(run)}")
    t.add_column("split")
    for n in names:
        t.add_column(f"{n} %", justify="right")
    for col in ("naive concat %", "G-Blend %", "G-Blend weights (modalities…, fused)"):
        t.add_column(col, justify="right")
    for s in d["splits"]:
        t.add_row(s["name"], *[_pct(v) for v in s["uni_top1"]], _pct(s["concat_top1"]),
                  _pct(s["gblend_top1"]), ", ".join(f"{w:.3f}" for w in s["gblend_weights"]))
    t.add_row("mean", *[_pct(v) for v in d["mean_uni_top1"]], _pct(d["mean_concat_top1"]),
              _pct(d["mean_gblend_top1"]), "", style="bold")
    _console().print(t)


@cli.command("linear-eval", epilog="""\b
Examples:
  c3dfeat linear-eval                                   # feats.h5, labels = parent folders, 5-fold CV
  c3dfeat linear-eval feats.h5 --dataset ucf101 --splits ucfTrainTestlist/
  c3dfeat linear-eval feats.h5 --dataset hmdb51 --splits testTrainMulti_7030_splits/ --split 1
  c3dfeat linear-eval feats.h5 --labels labels.csv --train-list train.txt --test-list test.txt --json
  c3dfeat linear-eval --features rgb.h5:c3d/fc6 --features flow.h5:r2plus1d_18/final_avg --fusion gblend
""")
@options.feats_argument
@_svm_options
@_label_options
@click.option("--features", "feature_specs", multiple=True, metavar="FILE[:MODEL[/LAYER]]",
              help="Fusion: one per modality (repeat); compares uni-modal, concat and G-Blend.")
@click.option("--fusion", type=click.Choice(["concat", "gblend"]), default=None,
              help="With --features: naive concatenation only, or also Gradient-Blending.")
@click.option("--epochs", type=click.IntRange(1, None), default=200, show_default=True,
              help="Fusion: full-batch Adam steps per head.")
@click.option("--lr", type=float, default=0.05, show_default=True, help="Fusion: learning rate.")
@click.option("--holdout", type=click.FloatRange(0.01, 0.9), default=0.2, show_default=True,
              help="G-Blend: fraction of each training part held out to estimate the weights.")
def linear_eval_command(feats: Optional[str], feature_specs: Sequence[str], fusion: Optional[str],
                        epochs: int, lr: float, holdout: float, as_json: bool, **kw) -> None:
    """Linear-SVM accuracy of video features (the C3D/Res3D protocol), or multi-modal fusion.

    The video descriptor is the mean of its clip features, L2-normalised; a one-vs-rest linear
    SVM is trained per split with C chosen by cross-validation on the training part only.
    """
    from c3dfeat.evaluate import FusionConfig, evaluate_features, fuse_features

    labels = _labels(kw)
    if feature_specs or fusion:
        specs = list(feature_specs)
        if feats:
            specs.insert(0, feats)
        if len(specs) < 2:
            raise click.UsageError("fusion needs at least two --features FILE:model/layer")
        cfg = FusionConfig(epochs=epochs, lr=lr, holdout=holdout, seed=kw["seed"])
        run = fuse_features(specs, fusion=fusion or "gblend", labels=labels, norm=kw["norm"],
                            cfg=cfg, on_split=None if as_json else
                            lambda s: _err(f"{s.name}: concat {s.concat:.2f}%, G-Blend "
                                           f"{_pct(s.gblend)}%"))
        _report(run, as_json, _print_fusion)
        return
    svm = _svm(kw)
    run = evaluate_features(feats or DEFAULT_FEATS, model=kw["model"], layer=kw["layer"],
                            labels=labels, svm=svm,
                            on_split=None if as_json else
                            lambda s: _err(f"{s.name}: top-1 {s.top1:.2f}% (C={s.C:g}, "
                                           f"{s.seconds:.1f} s)"))
    _report(run, as_json, _print_eval)


def _report(run, as_json: bool, printer) -> None:
    """Notes on stderr, then the result as JSON or as `printer`'s table."""
    for n in run.notes:
        _err(n)
    if as_json:
        click.echo(json.dumps(run.result.to_dict(), indent=2))
    else:
        printer(run)


@cli.command("pca", epilog="""\b
Examples:
  c3dfeat pca --dims 10                                  # feats.h5, parent-folder labels
  c3dfeat pca feats.h5 --dataset ucf101 --splits ucfTrainTestlist/ \\
      --dims 10 --dims 50 --dims 100 --dims 500 --plot pca.pdf
  c3dfeat pca feats.h5 --dims 128 -o feats_pca.h5        # reduced features, same schema
""")
@options.feats_argument
@click.option("--dims", "dims", type=click.IntRange(1, None), multiple=True, required=True,
              help="Target dimensionality (repeat for a sweep).")
@click.option("-o", "--output", "out", type=options.OutputFile(), default=None,
              help="Write the reduced features (layers <layer>_pca<d>) to this feature file.")
@click.option("--overwrite", is_flag=True, help="Replace an existing -o file.")
@click.option("--plot", type=options.OutputFile(), default=None,
              help="Save accuracy vs. dimensions as a figure: .pdf/.svg (vector), .png (1600 px), ...")
@_svm_options
@_label_options
def pca_command(feats: Optional[str], dims: Sequence[int], out: Optional[str], overwrite: bool,
                plot: Optional[str], as_json: bool, **kw) -> None:
    """PCA (fitted on each training part only) then the linear SVM, per dimensionality."""
    from rich.table import Table

    from c3dfeat.evaluate import pca_features

    run = pca_features(feats or DEFAULT_FEATS, dims, model=kw["model"], layer=kw["layer"],
                       labels=_labels(kw), svm=_svm(kw), out=out, plot=plot, overwrite=overwrite,
                       command_line=" ".join(sys.argv),
                       on_result=None if as_json else
                       lambda d, s: _err(f"{d} dims, {s.name}: top-1 {s.top1:.2f}% (C={s.C:g})"))
    for n in run.notes:
        _err(n)
    if as_json:
        click.echo(json.dumps(run.result.to_dict(), indent=2))
        return
    t = Table(title=f"PCA + linear SVM on {run.features.name} — {_source(run)}")
    for col in ("dims", "explained variance %", "top-1 %", "mean class %", "C per split"):
        t.add_column(col, justify="right")
    for row in run.result.rows:
        r = row.result
        t.add_row(str(row.dims), f"{row.explained_variance:.1f}",
                  f"{r.mean_top1:.2f} ± {r.std_top1:.2f}", f"{r.mean_class:.2f} ± {r.std_class:.2f}",
                  ", ".join(f"{s.C:g}" for s in r.splits))
    _console().print(t)


@cli.command("tsne", epilog="""\b
Examples:
  c3dfeat tsne feats.h5 --plot tsne.png
  c3dfeat tsne feats.h5 --labels labels.csv --plot tsne.pdf -o tsne.csv
""")
@options.feats_argument
@click.option("--plot", type=options.OutputFile(), default="tsne.png", show_default=True,
              help="The figure (.png, .pdf, .svg, ...).")
@click.option("-o", "--output", "out", type=options.OutputFile(), default=None,
              help="Also write the 2-D coordinates as CSV (id,label,x,y).")
@options.model_in_file
@options.layer_in_file
@options.norm
@click.option("--perplexity", type=click.FloatRange(1, None), default=30.0, show_default=True,
              help="t-SNE perplexity (lowered, with a note, when the file has too few videos).")
@options.label_source
@options.seed
def tsne_command(feats: Optional[str], plot: str, out: Optional[str], model: Optional[str],
                 layer: Optional[str], norm: str, perplexity: float, **kw: Any) -> None:
    """2-D t-SNE of the video descriptors, one colour and marker per class."""
    from c3dfeat.evaluate import tsne_features

    run = tsne_features(feats or DEFAULT_FEATS, plot, model=model, layer=layer, labels=_labels(kw),
                        norm=norm, perplexity=perplexity, seed=kw["seed"], out=out)
    for n in run.notes:
        _err(n)
