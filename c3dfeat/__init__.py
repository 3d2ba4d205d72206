"""c3dfeat: spatiotemporal features from the published 3D ConvNets, in one HDF5 file.

The public names are imported on first use (PEP 562 module ``__getattr__``): ``import c3dfeat``
and the CLI's ``--help`` stay free of torch, which alone takes about a second to import.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Dict, List

from c3dfeat.errors import C3DFeatError as C3DFeatError, C3DFeatWarning as C3DFeatWarning
from c3dfeat.version import __version__ as __version__

# public name -> module that defines it
_LAZY: Dict[str, str] = {
    "create_model": "c3dfeat.zoo",  # resolves names and loads checked weights
    "extract_layers": "c3dfeat.models",
    "get_spec": "c3dfeat.models",
    "list_models": "c3dfeat.models",
    # Python API of `c3dfeat extract` and the feature-file reader.
    "extract": "c3dfeat.pipeline",
    "FeatureFile": "c3dfeat.store",
    # Python API of `c3dfeat linear-eval` (the papers' linear-SVM protocol on a feature file).
    "evaluate_features": "c3dfeat.evaluate",
}

__all__ = ["C3DFeatError", "C3DFeatWarning", "__version__", *_LAZY]

if TYPE_CHECKING:  # static checkers and IDEs see the real objects
    from c3dfeat.evaluate import evaluate_features as evaluate_features
    from c3dfeat.models import (
        extract_layers as extract_layers,
        get_spec as get_spec,
        list_models as list_models,
    )
    from c3dfeat.pipeline import extract as extract
    from c3dfeat.store import FeatureFile as FeatureFile
    from c3dfeat.zoo import create_model as create_model


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'c3dfeat' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_LAZY))
