"""The papers' evaluation protocols on feature files (issue 5).

* :mod:`splits`   labels and train/test splits (UCF101, HMDB51, CSV lists, folders + k-fold CV)
* :mod:`svm`      one-vs-rest squared-hinge linear SVM: vectorised torch solver + liblinear reference
* :mod:`linear`   the linear-SVM protocol (mean of clips, L2, C by CV on the training part)
* :mod:`pca`      compactness sweep (PCA fitted on the training part only)
* :mod:`tsne`     2-D embedding plot
* :mod:`gblend`   Gradient-Blending fusion of several feature files
* :mod:`api`      path-level entry points used by the CLI
"""
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
