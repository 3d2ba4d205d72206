"""Path-level entry points (what the CLI calls): feature file in, result object out."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from c3dfeat.errors import EvalError
from c3dfeat.evaluate.features import VideoFeatures, align, load_features, parse_feature_spec, stored_or_folder_labels
from c3dfeat.evaluate.gblend import FusionConfig, FusionResult, fusion_eval
from c3dfeat.evaluate.linear import DEFAULT_CS, EvalResult, linear_eval
from c3dfeat.evaluate.pca import PCASweep, pca_sweep, plot_sweep, reduce_features
from c3dfeat.evaluate.plots import check_plot_path, write_coordinates
from c3dfeat.evaluate.splits import Protocol, build_protocol
from c3dfeat.evaluate.tsne import effective_perplexity, plot_embedding, tsne_embedding


@dataclass
class LabelSource:
    """Where labels and splits come from (see :func:`splits.build_protocol`)."""

    dataset: Optional[str] = None
    splits_dir: Optional[str] = None
    split: Sequence[int] = ()
    labels_csv: Optional[str] = None
    train_list: Optional[str] = None
    test_list: Optional[str] = None
    folds: int = 5
    seed: int = 0
    allow_missing: bool = False

    def protocol(self, feats: VideoFeatures, ids: Optional[Sequence[str]] = None) -> Protocol:
        ids = list(ids) if ids is not None else feats.ids
        default = None
        if ids == feats.ids:
            default = stored_or_folder_labels(feats)
        return build_protocol(ids, dataset=self.dataset, splits_dir=self.splits_dir,
                              split=list(self.split) or None, labels_csv=self.labels_csv,
                              train_list=self.train_list, test_list=self.test_list,
                              folds=self.folds, seed=self.seed, allow_missing=self.allow_missing,
                              default_labels=default)


@dataclass
class SVMOptions:
    norm: str = "l2"
    C: Optional[float] = None
    Cs: Sequence[float] = DEFAULT_CS
    cv_folds: int = 3
    solver: str = "torch"
    device: str = "auto"
    seed: int = 0

    def kwargs(self) -> dict:
        return dict(norm=self.norm, C=self.C, Cs=self.Cs, cv_folds=self.cv_folds,
                    solver=self.solver, device=self.device, seed=self.seed)


@dataclass
class Run:
    """What a command evaluated: the features, the protocol and the result."""

    features: VideoFeatures
    protocol: Optional[Protocol]  # None: t-SNE without --dataset/--labels (labels from the file)
    result: Any  # EvalResult, PCASweep, FusionResult or the (n, 2) embedding
    notes: list = field(default_factory=list)


def _load(spec: str, model: Optional[str], layer: Optional[str]) -> VideoFeatures:
    path, m, lay = parse_feature_spec(spec)
    return load_features(path, model or m, layer or lay)


def _notes(feats: VideoFeatures, protocol: Optional[Protocol]) -> list:
    notes = []
    if feats.random_init:
        notes.append(f"{feats.path}: features come from a RANDOMLY INITIALISED model "
                     "(no pretrained weights); accuracies are not the paper's")
    for name, miss in (protocol.missing.items() if protocol is not None else ()):
        notes.append(f"{name}: skipped {len(miss)} listed videos not in the feature file "
                     f"(e.g. {miss[:3]})")
    return notes


def evaluate_features(feats: str = "feats.h5", *, model: Optional[str] = None,
                      layer: Optional[str] = None, labels: Optional[LabelSource] = None,
                      svm: Optional[SVMOptions] = None, on_split=None) -> Run:
    """``c3dfeat linear-eval``: the linear-SVM protocol on one feature file."""
    labels, svm = labels or LabelSource(), svm or SVMOptions()
    f = _load(feats, model, layer)
    protocol = labels.protocol(f)
    res: EvalResult = linear_eval(f.X, protocol, on_split=on_split, **svm.kwargs())
    res.extra.update({"features": str(f.path), "model": f.model, "layer": f.layer})
    return Run(f, protocol, res, _notes(f, protocol))


def pca_features(feats: str = "feats.h5", dims: Sequence[int] = (10,), *,
                 model: Optional[str] = None, layer: Optional[str] = None,
                 labels: Optional[LabelSource] = None, svm: Optional[SVMOptions] = None,
                 out: Optional[str] = None, plot: Optional[str] = None, overwrite: bool = False,
                 command_line: str = "", on_result=None) -> Run:
    """``c3dfeat pca``: PCA (fitted on training parts) then the linear SVM at each size.

    ``out``: also write the reduced features (layers ``<layer>_pca<d>``, PCA fitted on the
    training part of the first split) in the feature-file schema, readable by every command.
    """
    labels, svm = labels or LabelSource(), svm or SVMOptions()
    if plot is not None:
        check_plot_path(plot)
    f = _load(feats, model, layer)
    protocol = labels.protocol(f)
    sweep: PCASweep = pca_sweep(f.X, protocol, dims, on_result=on_result, **svm.kwargs())
    notes = _notes(f, protocol)
    if out is not None:
        write_reduced(f, protocol, dims, out, norm=svm.norm, seed=svm.seed, overwrite=overwrite,
                      command_line=command_line)
        notes.append(f"wrote {out}: layers " + ", ".join(f"{f.model}/{f.layer}_pca{d}" for d in
                     sorted(set(dims))) + f" (PCA fitted on {protocol.splits[0].name}'s "
                     "training videos only)")
    if plot is not None:
        # the reference line: the same protocol on all dimensions
        full = linear_eval(f.X, protocol, **svm.kwargs())
        c = f"C = {svm.C:g}" if svm.C is not None else f"C by {svm.cv_folds}-fold CV on the training part"
        caption = (f"{protocol.source}; {svm.norm} descriptors, PCA fitted on the training part only, "
                   f"one-vs-rest linear SVM ({c})")
        plot_sweep(sweep, plot, title=f"{f.model}/{f.layer}: linear SVM accuracy vs. PCA dimensions",
                   full=full, full_dim=int(f.X.shape[1]), caption=caption, random_init=f.random_init)
        notes.append(f"wrote {plot}")
    return Run(f, protocol, sweep, notes)


def write_reduced(f: VideoFeatures, protocol: Protocol, dims: Sequence[int], out: str, *,
                  norm: str = "l2", seed: int = 0, overwrite: bool = False,
                  command_line: str = "") -> Path:
    """Write PCA-reduced features (fitted on the first split's training rows) via the store."""
    from c3dfeat.store import write_matrices

    split = protocol.splits[0]
    pca, reduced = reduce_features(f.X, split.train, dims, norm=norm, seed=seed)
    prov = dict(f.provenance)
    prov["pca"] = {"source": str(f.path), "model": f.model, "layer": f.layer, "norm": norm,
                   "dims": sorted(reduced), "fitted_on": f"{protocol.source}: {split.name} train",
                   "n_fit": int(pca.n_fit), "seed": seed}
    layers = {f"{f.layer}_pca{d}": reduced[d] for d in sorted(reduced)}
    labels = [protocol.classes[c] if c >= 0 else "" for c in protocol.y]
    return write_matrices(out, f.ids, {f.model: layers}, prov, labels=labels,
                          model_attrs={f.model: {"random_init": f.random_init, "pca": prov["pca"]}},
                          overwrite=overwrite, command_line=command_line)


def tsne_features(feats: str = "feats.h5", plot: Optional[str] = "tsne.png", *,
                  model: Optional[str] = None, layer: Optional[str] = None,
                  labels: Optional[LabelSource] = None, norm: str = "l2", perplexity: float = 30.0,
                  seed: int = 0, out: Optional[str] = None) -> Run:
    """``c3dfeat tsne``: 2-D embedding coloured by class (labels: file, folders or --labels).

    ``plot``: the figure (None: none); ``out``: the coordinates as CSV (id,label,x,y).
    """
    if plot is not None:
        check_plot_path(plot)
    f = _load(feats, model, layer)
    names = stored_or_folder_labels(f)
    protocol = None
    if labels is not None and (labels.dataset or labels.labels_csv):
        protocol = labels.protocol(f)
        names = [protocol.classes[c] if c >= 0 else None for c in protocol.y]
    notes = _notes(f, protocol)
    perp = effective_perplexity(len(f.ids), perplexity)
    if perp != perplexity:
        notes.append(f"perplexity {perplexity:g} is too large for {len(f.ids)} videos; "
                     f"t-SNE used {perp:g} (at most (videos - 1) / 3)")
    Y = tsne_embedding(f.X, norm=norm, perplexity=perp, seed=seed)
    if plot is not None:
        plot_embedding(Y, names, plot, random_init=f.random_init,
                       title=f"t-SNE of {f.model}/{f.layer}: {len(f.ids)} videos, {norm} descriptors, "
                             f"perplexity {perp:g}")
        notes.append(f"wrote {plot}")
    if out is not None:
        write_coordinates(out, f.ids, names, Y)
        notes.append(f"wrote {out} (id,label,x,y)")
    return Run(f, protocol, Y, notes)



def fuse_features(specs: Sequence[str], *, fusion: str = "gblend",
                  labels: Optional[LabelSource] = None, norm: str = "l2",
                  cfg: Optional[FusionConfig] = None, on_split=None) -> Run:
    """``c3dfeat linear-eval --features a.h5:m/l --features b.h5:m/l --fusion ...``."""
    if len(specs) < 2:
        raise EvalError("fusion needs at least two --features FILE:model/layer")
    labels, cfg = labels or LabelSource(), cfg or FusionConfig()
    fs = [_load(s, None, None) for s in specs]
    ids, mats = align(fs)
    first = fs[0]
    keep = {v for v in ids}
    # the protocol is built on the common ids; default labels from the first file / folders
    sub = VideoFeatures(first.path, first.model, first.layer, ids,
                        np.zeros((len(ids), 0), np.float32),
                        [lab for v, lab in zip(first.ids, first.labels) if v in keep],
                        first.provenance, first.random_init)
    protocol = labels.protocol(sub)
    names = [f"{f.path.name}:{f.name}" for f in fs]
    res: FusionResult = fusion_eval(mats, protocol, names, fusion=fusion, norm=norm, cfg=cfg,
                                    on_split=on_split)
    notes = [n for f in fs for n in _notes(f, protocol)]
    return Run(first, protocol, res, notes)
