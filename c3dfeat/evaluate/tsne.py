"""2-D t-SNE embedding of video descriptors, coloured by class."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from c3dfeat.errors import EvalError
from c3dfeat.evaluate.linear import normalize


def tsne_embedding(X: np.ndarray, *, norm: str = "l2", perplexity: float = 30.0,
                   pca_dims: int = 50, seed: int = 0) -> np.ndarray:
    """(n, 2) t-SNE of the normalised descriptors (PCA to ``pca_dims`` first, the usual speed-up)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    Xn = normalize(X, norm)
    n = Xn.shape[0]
    if n < 3:
        raise EvalError(f"t-SNE needs at least 3 videos, the feature file has {n}")
    if pca_dims and Xn.shape[1] > pca_dims and n > pca_dims:
        Xn = PCA(n_components=pca_dims, random_state=seed).fit_transform(Xn)
    perp = effective_perplexity(n, perplexity)
    return TSNE(n_components=2, perplexity=perp, init="pca", random_state=seed).fit_transform(Xn)


def effective_perplexity(n: int, perplexity: float) -> float:
    """The perplexity t-SNE can use on ``n`` points: at most (n - 1) / 3 (sklearn refuses more)."""
    return float(min(perplexity, max(1.0, (n - 1) / 3)))


def plot_embedding(Y: np.ndarray, labels: Sequence[Optional[str]], out: str, title: str = "",
                   random_init: bool = False) -> None:
    """Scatter plot written to ``out`` (see :func:`plots.embedding_figure`)."""
    from c3dfeat.evaluate import plots

    plots.save(plots.embedding_figure(Y, labels, title=title, random_init=random_init), out)
