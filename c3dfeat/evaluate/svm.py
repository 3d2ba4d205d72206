"""One-vs-rest linear SVMs: a vectorised torch solver and the liblinear reference.

Both solve the SAME problem, liblinear's ``L2R_L2LOSS_SVC`` (scikit-learn ``LinearSVC`` with its
defaults: ``penalty="l2"``, ``loss="squared_hinge"``, ``multi_class="ovr"``,
``fit_intercept=True``, ``intercept_scaling=1``): for every class k, with labels y_ik = +1 for
class k and -1 otherwise,

    min_w  0.5 * ||w||^2 + C * sum_i max(0, 1 - y_ik * w . [x_i, b])^2

where ``b`` (= 1) is an extra constant feature, so the intercept is *penalised* exactly as
liblinear does it (its ``-B 1`` bias term). Prediction is the argmax of the K decision values.

The torch solver (:class:`TorchLinearSVM`) runs all K problems at once: a truncated Newton method
(Keerthi & DeCoste 2005, "A modified finite Newton method for fast solution of large scale linear
SVMs"; liblinear's own primal solver is the same idea with a trust region) whose conjugate
gradient inner loop is vectorised over classes, so every step is two dense matmuls over the
data for all classes together. It warm-starts from a previous solution, which makes a path over C cheap.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from c3dfeat.errors import EvalError
from c3dfeat.evaluate.choices import SOLVERS as SOLVERS
from c3dfeat.runtime import pick_device, warn_if_gpu_unused

# Stopping tolerance of the fits that only RANK the C values in cross-validation (the final fit
# uses liblinear's 1e-4). Measured on synthetic fc6-like data (4,000 x 1,024, 101 classes), the
# C path 0.01..1000 costs 4x less than at 1e-3 with the same held-out accuracy for C <= 1 and
# at most 1 point lower for C >= 10.
CV_TOL = 1e-2


@dataclass
class SolverStats:
    """How a fit went: Newton iterations, matrix passes, final relative gradient norm."""

    newton_iters: int = 0
    cg_iters: int = 0
    rel_grad: float = float("nan")
    seconds: float = 0.0
    converged: bool = False


@contextlib.contextmanager
def few_threads_if_small(numel: int, limit: int = 4_000_000):
    """Run tiny problems on one thread: on a busy 2-core machine thread hand-offs for many small
    matmuls cost more than the maths (measured: 100 Adam steps on 100x500 took 4.5 s on 2
    threads, 0.19 s on 1)."""
    if numel >= limit or torch.get_num_threads() == 1:
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _as_tensor(x: np.ndarray | torch.Tensor, device, dtype) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(device=device, dtype=dtype)
    return torch.as_tensor(np.ascontiguousarray(x), device=device, dtype=dtype)


def _one_vs_rest(y: torch.Tensor, n_classes: int, dtype) -> torch.Tensor:
    """(n,) int labels → (n, K) matrix of +1 / -1."""
    Y = torch.full((y.shape[0], n_classes), -1.0, dtype=dtype, device=y.device)
    Y[torch.arange(y.shape[0], device=y.device), y] = 1.0
    return Y


@dataclass
class TorchLinearSVM:
    """All-classes-at-once one-vs-rest squared-hinge L2 linear SVM (liblinear's problem).

    Args:
        C: regularisation constant (liblinear's C).
        bias: value of the appended constant feature (liblinear ``-B``, sklearn
            ``intercept_scaling``); its weight is penalised like the others. 0 disables it.
        tol: stop when every class's gradient norm is below ``tol`` times its norm at w = 0
            (liblinear's primal stopping rule).
        max_iter: Newton iterations at most.
        device / dtype: where and in which precision to compute (float32 is plenty for
            accuracy; float64 for objective comparisons).
    """

    C: float = 1.0
    bias: float = 1.0
    tol: float = 1e-4
    max_iter: int = 50
    max_cg: int = 60
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    coef_: Optional[np.ndarray] = None
    intercept_: Optional[np.ndarray] = None
    classes_: Optional[np.ndarray] = None
    stats: SolverStats = field(default_factory=SolverStats)
    _W: Optional[torch.Tensor] = None  # (d+1, K) solution, kept for warm starts

    # -- data preparation -------------------------------------------------------------------------
    def _design(self, X) -> torch.Tensor:
        Xt = _as_tensor(X, self.device, self.dtype)
        if self.bias:
            Xt = torch.cat([Xt, torch.full((Xt.shape[0], 1), float(self.bias), dtype=self.dtype,
                                           device=Xt.device)], dim=1)
        return Xt

    def prepare(self, X) -> "PreparedData":
        """Design matrix (with the bias column) on the device, reusable across C values."""
        return PreparedData(self._design(X))

    def fit(self, X, y, warm_start: Optional["TorchLinearSVM"] = None) -> "TorchLinearSVM":
        """Fit on features ``X`` (n, d) (or a :meth:`prepare` result) and labels ``y`` (n,)."""
        t0 = time.perf_counter()
        data = X if isinstance(X, PreparedData) else self.prepare(X)
        Xt = data.X
        y_np = np.asarray(y)
        classes, y_idx = np.unique(y_np, return_inverse=True)
        if len(classes) < 2:
            raise EvalError(f"a linear SVM needs at least 2 classes in the training part, got {len(classes)}")
        self.classes_ = classes
        yt = torch.as_tensor(y_idx, device=Xt.device)
        # liblinear solves 2 classes as ONE problem (class 1 positive); OvR with K=2 would fit the
        # same problem twice with opposite signs, so solve one column and mirror it.
        K = 1 if len(classes) == 2 else len(classes)
        Y = _one_vs_rest(yt, 2, self.dtype)[:, 1:] if K == 1 else _one_vs_rest(yt, K, self.dtype)
        if warm_start is not None and warm_start._W is not None and warm_start._W.shape == (Xt.shape[1], K):
            W = warm_start._W.clone()
        else:
            W = torch.zeros(Xt.shape[1], K, dtype=self.dtype, device=Xt.device)
        with few_threads_if_small(Xt.numel() * max(K, 1)):
            W = self._newton(Xt, Y, W)
        self._W = W
        coef = W.T.cpu().numpy()
        if self.bias:
            self.coef_, self.intercept_ = coef[:, :-1] * 1.0, coef[:, -1] * float(self.bias)
        else:
            self.coef_, self.intercept_ = coef, np.zeros(coef.shape[0], dtype=coef.dtype)
        self.stats.seconds = time.perf_counter() - t0
        return self

    # -- the solver ---------------------------------------------------------------------------------
    def _newton(self, X: torch.Tensor, Y: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
        C = float(self.C)
        stats = self.stats = SolverStats()
        # liblinear's primal stopping rule: ||g|| <= eps * max(min(#pos, #neg), 1) / n * ||g(0)||
        n_pos = (Y > 0).sum(0).to(self.dtype)
        scale = torch.clamp(torch.minimum(n_pos, Y.shape[0] - n_pos), min=1) / Y.shape[0]
        g0 = (2 * C * (X.T @ Y)).norm(dim=0) * scale  # gradient at w = 0 is -2C X^T y
        XW = X @ W
        idx = torch.arange(W.shape[1], device=W.device)  # classes not converged yet
        for _ in range(self.max_iter):
            # Only the classes that have not converged cost anything: every matmul below runs
            # on their columns alone (one-vs-rest problems finish at different times, and a
            # converged class's w no longer changes).
            Yi = Y[:, idx]
            M = Yi * XW[:, idx]
            A = (M < 1).to(self.dtype)  # active set: margin violators
            G = W[:, idx] - 2 * C * (X.T @ (Yi * A * (1 - M)))
            gnorm = G.norm(dim=0)
            rel = gnorm / g0[idx].clamp_min(1e-30)
            stats.rel_grad = float(rel.max())  # converged classes are below tol already
            todo = rel > self.tol
            if not bool(todo.any()):
                stats.converged = True
                break
            stats.newton_iters += 1
            idx, Yi, M, A, G, gnorm = idx[todo], Yi[:, todo], M[:, todo], A[:, todo], G[:, todo], gnorm[todo]
            D = self._cg(X, A, G, C, gnorm)
            # exact line search on the piecewise-quadratic 1-D objective (one matmul)
            XD = X @ D
            t = self._line_search(W[:, idx], D, M, Yi * XD, C)
            W[:, idx] += t * D
            XW[:, idx] += t * XD
        return W

    def _cg(self, X, A, G, C, gnorm) -> torch.Tensor:
        """Solve H_k d_k = -g_k for the given classes at once (CG, vectorised over classes).

        H_k = I + 2C X^T diag(A_k) X is the generalised Hessian of the squared hinge. Inexact
        Newton: stop a class when its residual is below 0.1 ||g_k||. Columns that are done
        drop out of the matmuls.
        """
        D = torch.zeros_like(G)
        cols = torch.arange(G.shape[1], device=G.device)  # which classes are still iterating
        R = -G
        P = R.clone()
        rr = (R * R).sum(0)
        stop2 = (0.1 * gnorm) ** 2
        for _ in range(self.max_cg):
            self.stats.cg_iters += 1
            Ac = A[:, cols]
            HP = P + 2 * C * (X.T @ (Ac * (X @ P)))
            alpha = rr / (P * HP).sum(0).clamp_min(1e-30)
            D[:, cols] += alpha * P
            R = R - alpha * HP
            rr_new = (R * R).sum(0)
            keep = rr_new > stop2[cols]
            if not bool(keep.any()):
                break
            beta = rr_new / rr.clamp_min(1e-30)
            P = R + beta * P
            if not bool(keep.all()):
                cols, R, P, rr_new = cols[keep], R[:, keep], P[:, keep], rr_new[keep]
            rr = rr_new
        return D

    @staticmethod
    def _line_search(W, D, M, YXD, C, iters: int = 20) -> torch.Tensor:
        """Per-class step t minimising f(W + t D); f is convex piecewise quadratic in t."""
        wd = (W * D).sum(0)
        dd = (D * D).sum(0)
        t = torch.ones_like(wd)
        for _ in range(iters):
            Mt = M + t * YXD
            A = (Mt < 1).to(W.dtype)
            g = wd + t * dd - 2 * C * (A * (1 - Mt) * YXD).sum(0)
            h = dd + 2 * C * (A * YXD * YXD).sum(0)
            step = g / h.clamp_min(1e-30)
            t = t - step
            if bool((step.abs() <= 1e-6 * t.abs().clamp_min(1e-6)).all()):
                break
        return t

    # -- inference ----------------------------------------------------------------------------------
    def decision_function(self, X) -> np.ndarray:
        if self.coef_ is None:
            raise RuntimeError("fit first")
        s = np.asarray(X, dtype=self.coef_.dtype) @ self.coef_.T + self.intercept_
        return s

    def predict(self, X) -> np.ndarray:
        s = self.decision_function(X)
        classes = self.classes_
        assert classes is not None  # set by fit together with coef_ (decision_function checked it)
        if s.shape[1] == 1:
            return classes[(s[:, 0] > 0).astype(int)]
        return classes[s.argmax(1)]

    def objective(self, X, y) -> np.ndarray:
        """Per-problem primal objective at the solution (float64), for comparisons."""
        return svm_objective(self.coef_, self.intercept_, X, y, self.C, self.bias, self.classes_)


@dataclass
class PreparedData:
    """Design matrix (bias column appended) on the solver's device."""

    X: torch.Tensor


def svm_objective(coef, intercept, X, y, C, bias, classes) -> np.ndarray:
    """liblinear's primal objective for each one-vs-rest problem, in float64."""
    X = np.asarray(X, dtype=np.float64)
    coef = np.asarray(coef, dtype=np.float64)
    intercept = np.asarray(intercept, dtype=np.float64)
    y = np.asarray(y)
    if coef.shape[0] == 1:  # binary: one problem, positive = classes[1]
        Y = np.where(y == classes[1], 1.0, -1.0)[:, None]
    else:
        Y = np.where(y[:, None] == np.asarray(classes)[None, :], 1.0, -1.0)
    S = X @ coef.T + intercept
    hinge = np.maximum(0.0, 1.0 - Y * S)
    wb = intercept / bias if bias else np.zeros_like(intercept)
    return 0.5 * ((coef ** 2).sum(1) + wb ** 2) + C * (hinge ** 2).sum(0)


class LiblinearSVM:
    """The reference: scikit-learn ``LinearSVC`` (liblinear) with the same problem settings."""

    def __init__(self, C: float = 1.0, bias: float = 1.0, tol: float = 1e-4, max_iter: int = 1000):
        from sklearn.svm import LinearSVC

        self.C, self.bias = C, bias
        self._clf = LinearSVC(C=C, loss="squared_hinge", penalty="l2", dual="auto",
                              fit_intercept=bool(bias), intercept_scaling=bias or 1.0,
                              tol=tol, max_iter=max_iter)
        self.stats = SolverStats()

    def prepare(self, X):
        return np.asarray(X)

    def fit(self, X, y, warm_start=None) -> "LiblinearSVM":
        import warnings

        from sklearn.exceptions import ConvergenceWarning

        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self._clf.fit(np.asarray(X), np.asarray(y))
        self.coef_, self.intercept_ = self._clf.coef_, self._clf.intercept_
        self.classes_ = self._clf.classes_
        self.stats.seconds = time.perf_counter() - t0
        self.stats.converged = True
        return self

    def decision_function(self, X) -> np.ndarray:
        s = self._clf.decision_function(np.asarray(X))
        return s[:, None] if s.ndim == 1 else s

    def predict(self, X) -> np.ndarray:
        return self._clf.predict(np.asarray(X))

    def objective(self, X, y) -> np.ndarray:
        return svm_objective(self.coef_, self.intercept_, X, y, self.C, self.bias, self.classes_)


def make_svm(solver: str = "torch", C: float = 1.0, device: str = "auto", cv: bool = False):
    """Build a linear SVM for ``solver`` in :data:`SOLVERS` (``cv``: looser tolerance, torch).

    ``device``: "auto" (the first GPU if any, else the CPU), "cpu", "cuda" or "cuda:N", as in
    extraction (c3dfeat.runtime.pick_device: checked, and "auto" says why a GPU goes unused).
    """
    if solver == "torch":
        chosen = pick_device(device)
        warn_if_gpu_unused(device, chosen)
        return TorchLinearSVM(C=C, device=str(chosen), tol=CV_TOL if cv else 1e-4)
    if solver == "liblinear":
        return LiblinearSVM(C=C)
    raise EvalError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, float]:
    """(top-1 accuracy, mean class accuracy), both in [0, 1]."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    top1 = float((y_true == y_pred).mean()) if len(y_true) else float("nan")
    per_class = [float((y_pred[y_true == c] == c).mean()) for c in np.unique(y_true)]
    return top1, float(np.mean(per_class)) if per_class else float("nan")
