"""Compactness (C3D paper §1.3 of papers.md): PCA to a few dimensions, then the linear SVM.

Per split the PCA is fitted on the TRAINING rows only (mean and components), then applied to
train and test rows: fitting on train+test would leak the test distribution into the features.
Order of operations: L2-normalised descriptor → PCA projection → per-video normalisation again
(``norm``) → linear SVM with C chosen on the training part.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from c3dfeat.errors import EvalError
from c3dfeat.evaluate.linear import DEFAULT_CS, EvalResult, SplitResult, evaluate_split, normalize
from c3dfeat.evaluate.splits import Protocol


@dataclass
class PCAModel:
    """A PCA fitted on the training rows: x ↦ (x - mean) @ components[:d].T."""

    mean: np.ndarray  # (D,)
    components: np.ndarray  # (k, D), orthonormal rows, by decreasing variance
    explained_variance_ratio: np.ndarray  # (k,)
    n_fit: int

    def transform(self, X: np.ndarray, dims: int) -> np.ndarray:
        return (np.asarray(X, dtype=np.float32) - self.mean) @ self.components[:dims].T


def fit_pca(X_train: np.ndarray, n_components: int, seed: int = 0) -> PCAModel:
    """PCA of ``X_train`` only (randomised SVD when few components are asked for)."""
    from sklearn.decomposition import PCA

    n, d = X_train.shape
    k = min(n_components, n, d)
    if k < 1:
        raise EvalError(f"cannot fit a PCA on {n} training videos of dimension {d}")
    solver = "randomized" if k < 0.5 * min(n, d) else "full"
    p = PCA(n_components=k, svd_solver=solver, random_state=seed).fit(X_train)
    return PCAModel(p.mean_.astype(np.float32), p.components_.astype(np.float32),
                    p.explained_variance_ratio_.astype(np.float64), n)


@dataclass
class PCARow:
    dims: int
    explained_variance: float  # percent, mean over splits (of the training-part PCA)
    result: EvalResult


@dataclass
class PCASweep:
    rows: List[PCARow]
    pcas: Dict[str, PCAModel] = field(default_factory=dict)  # split name → fitted PCA

    def to_dict(self) -> dict:
        return {"dims": [
            {"dims": r.dims, "explained_variance": r.explained_variance, **r.result.to_dict()}
            for r in self.rows]}


def pca_sweep(X: np.ndarray, protocol: Protocol, dims: Sequence[int], *, norm: str = "l2",
              C: Optional[float] = None, Cs: Sequence[float] = DEFAULT_CS, cv_folds: int = 3,
              solver: str = "torch", device: str = "auto", seed: int = 0,
              on_result=None) -> PCASweep:
    """Accuracy of the linear-SVM protocol after PCA to each of ``dims`` dimensions."""
    dims = sorted({int(d) for d in dims})
    if not dims or dims[0] < 1:
        raise EvalError(f"--dims must be positive integers, got {dims}")
    Xn = normalize(X, norm)
    per_dim: Dict[int, List[SplitResult]] = {d: [] for d in dims}
    ev: Dict[int, List[float]] = {d: [] for d in dims}
    pcas = {}
    for split in protocol.splits:
        t0 = time.perf_counter()
        pca = fit_pca(Xn[split.train], max(dims), seed)
        pcas[split.name] = pca
        fit_s = time.perf_counter() - t0
        for d in dims:
            if d > pca.components.shape[0]:
                raise EvalError(f"--dims {d} exceeds what {split.name}'s training part supports "
                                f"({pca.components.shape[0]} = min(train videos, feature dim))")
            Z = normalize(pca.transform(Xn, d), norm)
            r = evaluate_split(Z, protocol.y, split, C=C, Cs=Cs, cv_folds=cv_folds,
                               solver=solver, device=device, seed=seed)
            r.seconds += fit_s if d == dims[0] else 0.0
            per_dim[d].append(r)
            ev[d].append(100.0 * float(pca.explained_variance_ratio[:d].sum()))
            if on_result is not None:
                on_result(d, r)
    rows = [PCARow(d, float(np.mean(ev[d])),
                   EvalResult(per_dim[d], solver, norm, protocol.source, len(protocol.classes)))
            for d in dims]
    return PCASweep(rows, pcas)


def reduce_features(X: np.ndarray, train_rows: np.ndarray, dims: Sequence[int], *,
                    norm: str = "l2", seed: int = 0) -> tuple[PCAModel, Dict[int, np.ndarray]]:
    """PCA fitted on ``train_rows`` applied to every row: {dims: (n, dims)} (not re-normalised)."""
    Xn = normalize(X, norm)
    pca = fit_pca(Xn[train_rows], max(dims), seed)
    return pca, {int(d): pca.transform(Xn, int(d)) for d in dims}


def plot_sweep(sweep: PCASweep, out: str, title: str = "", **figure_kw: Any) -> None:
    """Accuracy versus PCA dimensions, written to ``out`` (see :func:`plots.sweep_figure`)."""
    from c3dfeat.evaluate import plots

    plots.save(plots.sweep_figure(sweep, title=title, **figure_kw), out)
