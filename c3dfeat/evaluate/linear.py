"""The linear-SVM protocol of the C3D / Res3D papers on video descriptors.

Recipe (papers.md §1.1, §2): the video descriptor is the mean of the clip features (the feature
file stores it), L2-normalised; a one-vs-rest linear SVM is trained on the training part of each
split, with C chosen by cross-validation on that training part only (papers.md: C is not
published); top-1 and mean class accuracy per split, then mean ± std over splits.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from c3dfeat.errors import EvalError
from c3dfeat.evaluate.choices import DEFAULT_CS as DEFAULT_CS, NORMS as NORMS
from c3dfeat.evaluate.splits import Protocol, Split
from c3dfeat.evaluate.svm import SOLVERS, accuracy, make_svm


def normalize(X: np.ndarray, norm: str = "l2") -> np.ndarray:
    """Per-video normalisation (stateless, so no train/test leakage).

    ``l2``: x / ||x|| (the paper's recipe); ``none``: as stored; ``power-l2``: signed square
    root then L2 (a common alternative for averaged activations).
    """
    X = np.asarray(X, dtype=np.float32)
    if norm == "none":
        return X
    if norm == "power-l2":
        X = np.sign(X) * np.sqrt(np.abs(X))
    elif norm != "l2":
        raise EvalError(f"unknown normalisation {norm!r}; choose one of {', '.join(NORMS)}")
    n = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.maximum(n, 1e-12)


@dataclass
class SplitResult:
    name: str
    n_train: int
    n_test: int
    C: float
    top1: float  # percent
    mean_class: float  # percent
    cv: Dict[float, float] = field(default_factory=dict)  # C → CV top-1 (percent)
    seconds: float = 0.0


@dataclass
class EvalResult:
    splits: List[SplitResult]
    solver: str
    norm: str
    source: str
    n_classes: int
    extra: Dict[str, object] = field(default_factory=dict)

    @property
    def mean_top1(self) -> float:
        return float(np.mean([s.top1 for s in self.splits]))

    @property
    def std_top1(self) -> float:
        return float(np.std([s.top1 for s in self.splits]))

    @property
    def mean_class(self) -> float:
        return float(np.mean([s.mean_class for s in self.splits]))

    @property
    def std_class(self) -> float:
        return float(np.std([s.mean_class for s in self.splits]))

    def to_dict(self) -> dict:
        """JSON-ready; accuracies in percent."""
        d = {
            "splits": [{**asdict(s), "cv": {str(k): v for k, v in s.cv.items()}} for s in self.splits],
            "mean_top1": self.mean_top1,
            "std_top1": self.std_top1,
            "mean_class_accuracy": self.mean_class,
            "std_class_accuracy": self.std_class,
            "solver": self.solver,
            "norm": self.norm,
            "protocol": self.source,
            "n_classes": self.n_classes,
        }
        d.update(self.extra)
        return d


def select_C(  # noqa: N802 - C is the SVM cost parameter, named as in scikit-learn
             X: np.ndarray, y: np.ndarray, Cs: Sequence[float] = DEFAULT_CS, folds: int = 3,
             solver: str = "torch", device: str = "auto", seed: int = 0,
             early_stop: bool = False, models: Optional[Dict[float, object]] = None,
             tie: float = 0.1) -> tuple[float, Dict[float, float]]:
    """Choose C by stratified k-fold CV on (X, y) — pass the TRAINING part only.

    Walks C upwards with warm starts; with ``early_stop`` the walk stops once the CV accuracy
    falls strictly below the best so far (accuracy is unimodal in C in practice), which skips the
    expensive large-C fits. The chosen C is the smallest whose CV accuracy is within ``tie``
    points of the best: near-ties are noise, and the more regularised model is also the cheaper
    final fit (measured: a 0.05-point "win" of C=1000 over C=1 cost a 4x longer final fit).
    ``models`` (if given) receives the first fold's model at each C, a warm start for the final
    fit.
    """
    from sklearn.model_selection import StratifiedKFold

    Cs = sorted(float(c) for c in Cs)
    if len(Cs) == 1:
        return Cs[0], {}
    counts = np.bincount(np.unique(y, return_inverse=True)[1])
    k = int(min(folds, counts.min()))
    if k < 2:
        # a class with one training video cannot be cross-validated; say which C is used
        return 1.0, {}
    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    fold_idx = list(skf.split(X, y))
    proto = make_svm(solver, 1.0, device=device)
    prepared = [proto.prepare(X[tr]) for tr, _ in fold_idx]
    warm: List[Optional[object]] = [None] * k
    scores: Dict[float, float] = {}
    best = -1.0
    for C in Cs:
        accs = []
        for f, (tr, va) in enumerate(fold_idx):
            # CV fits only rank C values: a looser stopping rule than the final fit (svm.CV_TOL)
            svm = make_svm(solver, C, device=device, cv=True)
            svm.fit(prepared[f], y[tr], warm_start=warm[f])
            warm[f] = svm
            if models is not None and f == 0:
                models[C] = svm
            accs.append(accuracy(y[va], svm.predict(X[va]))[0])
        scores[C] = 100.0 * float(np.mean(accs))
        if early_stop and scores[C] < best - 1e-9:
            break  # past the peak; a tie (e.g. a chance-level plateau at small C) walks on
        best = max(best, scores[C])
    best_c = min(c for c, v in scores.items() if v >= best - tie)
    return best_c, scores


def evaluate_split(X: np.ndarray, y: np.ndarray, split: Split, *, C: Optional[float] = None,
                   Cs: Sequence[float] = DEFAULT_CS, cv_folds: int = 3, solver: str = "torch",
                   device: str = "auto", seed: int = 0) -> SplitResult:
    """Train on ``split.train`` rows (choosing C on them if not given), test on ``split.test``."""
    if solver not in SOLVERS:
        raise EvalError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    t0 = time.perf_counter()
    Xtr, ytr = X[split.train], y[split.train]
    Xte, yte = X[split.test], y[split.test]
    cv: Dict[float, float] = {}
    fold_models: Dict[float, object] = {}
    if C is None:
        C, cv = select_C(Xtr, ytr, Cs, cv_folds, solver, device, seed, models=fold_models)
    svm = make_svm(solver, C, device=device)
    # warm start from the CV model at this C (same problem on 2/3 of the rows): fewer Newton steps
    svm.fit(Xtr, ytr, warm_start=fold_models.get(C))
    top1, mca = accuracy(yte, svm.predict(Xte))
    return SplitResult(split.name, len(ytr), len(yte), float(C), 100 * top1, 100 * mca, cv,
                       time.perf_counter() - t0)


def linear_eval(X: np.ndarray, protocol: Protocol, *, norm: str = "l2", C: Optional[float] = None,
                Cs: Sequence[float] = DEFAULT_CS, cv_folds: int = 3, solver: str = "torch",
                device: str = "auto", seed: int = 0, on_split=None) -> EvalResult:
    """Run the linear-SVM protocol on video descriptors ``X`` (rows = feature-file videos)."""
    Xn = normalize(X, norm)
    results = []
    for split in protocol.splits:
        r = evaluate_split(Xn, protocol.y, split, C=C, Cs=Cs, cv_folds=cv_folds, solver=solver,
                           device=device, seed=seed)
        results.append(r)
        if on_split is not None:
            on_split(r)
    return EvalResult(results, solver, norm, protocol.source, len(protocol.classes))
