"""The evaluation protocols' choices, in a module without numpy or torch (the CLI lists them in
`--help`, which must stay fast)."""
from __future__ import annotations

from typing import Tuple

NORMS: Tuple[str, ...] = ("l2", "none", "power-l2")  # per-video normalisation; l2 = the C3D paper's
SOLVERS: Tuple[str, ...] = ("torch", "liblinear")  # linear SVM: vectorised torch / the reference
DEFAULT_CS: Tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)  # C values the CV tries
DATASETS: Tuple[str, ...] = ("ucf101", "hmdb51")  # official split lists the parsers read
