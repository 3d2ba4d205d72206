"""Gradient-Blending (Wang, Tran & Feiszli, CVPR 2020; papers.md §5) on frozen features.

Model. Modality m has a linear map A_m (d_m → K). Its uni-modal head is A_m x_m + b_m; the fused
head is the linear classifier on the concatenated features, A_1 x_1 + ... + A_M x_M + b_f, whose
per-modality blocks ARE the uni-modal maps. So the uni-modal heads and the fused head share
parameters exactly as the paper's uni-modal heads and fused head share each modality's trunk
(here the trainable part of each "trunk" is its linear map), and the blended loss
``sum_i w_i L_i`` over the M uni-modal heads and the fused head decides how much each
modality's map is trained to stand alone. ``w = (0, ..., 0, 1)`` is naive late fusion by
concatenation. Predictions use the fused head.

Weights (offline G-Blend, Algorithm 1/2, papers.md §5.3-5.4): hold out a stratified part V of
the training set; train each head alone from initialisation on the rest T for the full schedule;
with L^T, L^V the losses on T and V at the start (0) and end (N):

    O = L^V - L^T   (overfitting),  ΔO = O_N - O_0,  ΔG = L^V_0 - L^V_N  (generalisation)
    w_i ∝ ΔG_i / ΔO_i^2,   normalised to sum to 1

(the paper's stated Z carries a stray factor 2 that would make them sum to 2; papers.md §5.3).
A head whose held-out loss did not drop (ΔG <= 0) gets weight 0.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from c3dfeat.errors import EvalError
from c3dfeat.evaluate.splits import Protocol, Split
from c3dfeat.evaluate.svm import accuracy, few_threads_if_small


@dataclass
class HeadLosses:
    """Train (T) and held-out (V) losses of one head at the start and the end of training."""

    train_start: float
    val_start: float
    train_end: float
    val_end: float

    @property
    def overfit_delta(self) -> float:  # ΔO = O_N - O_0, O = L^V - L^T
        return (self.val_end - self.train_end) - (self.val_start - self.train_start)

    @property
    def gen_delta(self) -> float:  # ΔG = L^V_0 - L^V_N
        return self.val_start - self.val_end


def gblend_weights(losses: Sequence[HeadLosses], eps: float = 1e-8) -> np.ndarray:
    """w_i = (ΔG_i / ΔO_i²) / Z with Z making them sum to 1 (ΔG <= 0 → 0; ΔO² floored at eps)."""
    raw = np.array([max(h.gen_delta, 0.0) / max(h.overfit_delta ** 2, eps) for h in losses])
    if raw.sum() <= 0:
        raise EvalError("G-Blend: no head's held-out loss decreased during training, so no "
                        "blending weights can be estimated; train longer (--epochs) or check "
                        "the labels")
    return raw / raw.sum()


class LateFusion(nn.Module):
    """M uni-modal linear heads whose maps are shared with a fused (concatenation) head."""

    def __init__(self, dims: Sequence[int], n_classes: int):
        super().__init__()
        heads = [nn.Linear(d, n_classes, bias=False) for d in dims]
        for head in heads:  # start at zero: every head starts at loss log K (O_0 = 0)
            nn.init.zeros_(head.weight)
        self.maps = nn.ModuleList(heads)
        self.uni_bias = nn.Parameter(torch.zeros(len(dims), n_classes))
        self.fused_bias = nn.Parameter(torch.zeros(n_classes))

    def forward(self, xs: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Logits of head 0..M-1 (uni-modal) and head M (fused)."""
        parts = [m(x) for m, x in zip(self.maps, xs)]
        uni = [p + self.uni_bias[i] for i, p in enumerate(parts)]
        return uni + [torch.stack(parts).sum(0) + self.fused_bias]


@dataclass(frozen=True)
class FusionConfig:
    epochs: int = 200
    lr: float = 0.05
    weight_decay: float = 1e-4
    holdout: float = 0.2  # fraction of the training part held out to estimate the weights
    seed: int = 0


def _train(xs: List[torch.Tensor], y: torch.Tensor, n_classes: int, weights: Union[Sequence[float], np.ndarray],
           cfg: FusionConfig, monitor=None) -> LateFusion:
    """Full-batch Adam on sum_i w_i CE(head_i) (the blended loss)."""
    torch.manual_seed(cfg.seed)
    model = LateFusion([x.shape[1] for x in xs], n_classes)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    w = torch.as_tensor(np.asarray(weights, dtype=np.float32))
    ce = nn.CrossEntropyLoss()
    for _ in range(cfg.epochs):
        opt.zero_grad()
        outs = model(xs)
        loss = sum(w[i] * ce(o, y) for i, o in enumerate(outs) if w[i] != 0)
        loss.backward()
        opt.step()
    return model


@torch.no_grad()
def _head_losses(model: LateFusion, xs, y) -> List[float]:
    ce = nn.CrossEntropyLoss()
    return [float(ce(o, y)) for o in model(xs)]


def estimate_weights(xs: List[np.ndarray], y: np.ndarray, n_classes: int,
                     cfg: FusionConfig) -> tuple[np.ndarray, List[HeadLosses]]:
    """Offline G-Blend weights for the M uni-modal heads + the fused head, on (xs, y) = training part."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    try:
        t_idx, v_idx = train_test_split(idx, test_size=cfg.holdout, random_state=cfg.seed, stratify=y)
    except ValueError:  # a class too small to stratify: plain random hold-out
        t_idx, v_idx = train_test_split(idx, test_size=cfg.holdout, random_state=cfg.seed)
    xt = [torch.as_tensor(x[t_idx]) for x in xs]
    xv = [torch.as_tensor(x[v_idx]) for x in xs]
    yt, yv = torch.as_tensor(y[t_idx]), torch.as_tensor(y[v_idx])
    n_heads = len(xs) + 1
    losses = []
    for h in range(n_heads):
        one_hot = [1.0 if i == h else 0.0 for i in range(n_heads)]
        torch.manual_seed(cfg.seed)
        start = LateFusion([x.shape[1] for x in xt], n_classes)
        lt0, lv0 = _head_losses(start, xt, yt)[h], _head_losses(start, xv, yv)[h]
        model = _train(xt, yt, n_classes, one_hot, cfg)
        lt, lv = _head_losses(model, xt, yt)[h], _head_losses(model, xv, yv)[h]
        losses.append(HeadLosses(lt0, lv0, lt, lv))
    return gblend_weights(losses), losses


@dataclass
class FusionSplitResult:
    name: str
    uni: List[float]  # top-1 (percent) of each modality's head trained alone
    concat: float  # naive late fusion (fused head only)
    gblend: float
    weights: List[float]  # G-Blend weights: modalities..., fused
    losses: List[HeadLosses] = field(default_factory=list)


@dataclass
class FusionResult:
    names: List[str]
    splits: List[FusionSplitResult]

    def to_dict(self) -> dict:
        """JSON-ready (percent); G-Blend entries are null with ``--fusion concat``."""

        def num(v: float):
            return None if v is None or np.isnan(v) else float(v)

        def mean(v) -> Optional[float]:
            return num(float(np.mean(v))) if len(v) else None

        concat = mean([s.concat for s in self.splits])
        gblend = mean([s.gblend for s in self.splits])
        return {
            "modalities": self.names,
            "splits": [{"name": s.name, "uni_top1": s.uni, "concat_top1": s.concat,
                        "gblend_top1": num(s.gblend), "gblend_weights": s.weights,
                        "head_losses": [vars(h) for h in s.losses]} for s in self.splits],
            "mean_uni_top1": [mean([s.uni[i] for s in self.splits]) for i in range(len(self.names))],
            "mean_concat_top1": concat,
            "mean_gblend_top1": gblend,
            "mean_top1": gblend if gblend is not None else concat,  # the fused model reported
        }


def _top1(model: LateFusion, xs, y, head: int) -> float:
    with torch.no_grad():
        pred = model(xs)[head].argmax(1).numpy()
    return 100.0 * accuracy(y, pred)[0]


def fusion_split(xs: List[np.ndarray], y: np.ndarray, split: Split, n_classes: int,
                 cfg: FusionConfig, gblend: bool = True) -> FusionSplitResult:
    """Uni-modal, naive concat and G-Blend accuracies on one split."""
    tr, te = split.train, split.test
    xtr = [torch.as_tensor(x[tr]) for x in xs]
    xte = [torch.as_tensor(x[te]) for x in xs]
    ytr = torch.as_tensor(y[tr])
    M = len(xs)
    uni = []
    for m in range(M):
        w = [1.0 if i == m else 0.0 for i in range(M + 1)]
        uni.append(_top1(_train(xtr, ytr, n_classes, w, cfg), xte, y[te], m))
    concat = _top1(_train(xtr, ytr, n_classes, [0.0] * M + [1.0], cfg), xte, y[te], M)
    if not gblend:
        return FusionSplitResult(split.name, uni, concat, float("nan"), [], [])
    weights, losses = estimate_weights([x[tr] for x in xs], y[tr], n_classes, cfg)
    gb = _top1(_train(xtr, ytr, n_classes, weights, cfg), xte, y[te], M)
    return FusionSplitResult(split.name, uni, concat, gb, [float(v) for v in weights], losses)


def fusion_eval(xs: List[np.ndarray], protocol: Protocol, names: Sequence[str], *,
                fusion: str = "gblend", norm: str = "l2", cfg: Optional[FusionConfig] = None,
                on_split=None) -> FusionResult:
    """Run the fusion comparison on every split (each modality normalised per video first)."""
    from c3dfeat.evaluate.linear import normalize

    if fusion not in ("concat", "gblend"):
        raise EvalError(f"unknown fusion {fusion!r}; choose concat or gblend")
    cfg = cfg or FusionConfig()
    xs = [normalize(x, norm) for x in xs]
    out = []
    for split in protocol.splits:
        with few_threads_if_small(sum(x.size for x in xs) * len(protocol.classes)):
            r = fusion_split(xs, protocol.y, split, len(protocol.classes), cfg, fusion == "gblend")
        out.append(r)
        if on_split is not None:
            on_split(r)
    return FusionResult(list(names), out)
