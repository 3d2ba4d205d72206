"""The papers' evaluation protocols on feature files (issue 5).

* :mod:`splits`   labels and train/test splits (UCF101, HMDB51, CSV lists, folders + k-fold CV)
* :mod:`svm`      one-vs-rest squared-hinge linear SVM: vectorised torch solver + liblinear reference
* :mod:`linear`   the linear-SVM protocol (mean of clips, L2, C by CV on the training part)
* :mod:`pca`      compactness sweep (PCA fitted on the training part only)
* :mod:`tsne`     2-D embedding
* :mod:`plots`    the figures (PCA sweep, t-SNE)
* :mod:`gblend`   Gradient-Blending fusion of several feature files
* :mod:`choices`  the protocols' choices (norms, solvers, datasets), free of numpy and torch
* :mod:`api`      path-level entry points used by the CLI

Names are imported on first use (PEP 562), so ``c3dfeat.evaluate.choices`` stays light.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Dict, List

_LAZY: Dict[str, str] = {
    "LabelSource": "c3dfeat.evaluate.api",
    "SVMOptions": "c3dfeat.evaluate.api",
    "evaluate_features": "c3dfeat.evaluate.api",
    "fuse_features": "c3dfeat.evaluate.api",
    "pca_features": "c3dfeat.evaluate.api",
    "tsne_features": "c3dfeat.evaluate.api",
    "FusionConfig": "c3dfeat.evaluate.gblend",
    "gblend_weights": "c3dfeat.evaluate.gblend",
    "linear_eval": "c3dfeat.evaluate.linear",
    "normalize": "c3dfeat.evaluate.linear",
    "fit_pca": "c3dfeat.evaluate.pca",
    "pca_sweep": "c3dfeat.evaluate.pca",
    "build_protocol": "c3dfeat.evaluate.splits",
    "LiblinearSVM": "c3dfeat.evaluate.svm",
    "TorchLinearSVM": "c3dfeat.evaluate.svm",
}

__all__ = list(_LAZY)

if TYPE_CHECKING:
    from c3dfeat.evaluate.api import (
        LabelSource as LabelSource,
        SVMOptions as SVMOptions,
        evaluate_features as evaluate_features,
        fuse_features as fuse_features,
        pca_features as pca_features,
        tsne_features as tsne_features,
    )
    from c3dfeat.evaluate.gblend import FusionConfig as FusionConfig, gblend_weights as gblend_weights
    from c3dfeat.evaluate.linear import linear_eval as linear_eval, normalize as normalize
    from c3dfeat.evaluate.pca import fit_pca as fit_pca, pca_sweep as pca_sweep
    from c3dfeat.evaluate.splits import build_protocol as build_protocol
    from c3dfeat.evaluate.svm import LiblinearSVM as LiblinearSVM, TorchLinearSVM as TorchLinearSVM


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'c3dfeat.evaluate' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_LAZY))
