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
    # perplexity must be below the number of points (sklearn raises otherwise)
    perp = float(min(perplexity, max(1.0, (n - 1) / 3)))
    return TSNE(n_components=2, perplexity=perp, init="pca", random_state=seed).fit_transform(Xn)


def plot_embedding(Y: np.ndarray, labels: Sequence[Optional[str]], out: str, title: str = "") -> None:
    """Scatter plot, one colour per class (legend when there are at most 20 classes)."""
    from c3dfeat.evaluate.pca import _pyplot

    plt = _pyplot()
    labs = np.array([lab if lab is not None else "(none)" for lab in labels], dtype=object)
    classes = sorted(set(labs))
    # tab10 / tab20: distinct colours (tab20 pairs light and dark shades, so only past 10 classes)
    n = len(classes)
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20" if n <= 20 else "gist_ncar")
    fig, ax = plt.subplots(figsize=(6, 5), dpi=120)
    for i, c in enumerate(classes):
        m = labs == c
        color = cmap(i) if n <= 20 else cmap(i / n)
        ax.scatter(Y[m, 0], Y[m, 1], s=12, color=color, label=str(c))
    if len(classes) <= 20:
        ax.legend(fontsize=7, markerscale=1.5, loc="best", frameon=False)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or f"t-SNE of {len(Y)} videos, {len(classes)} classes")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
