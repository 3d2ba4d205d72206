"""Architectures on PyTorch's meta device: shapes without memory or arithmetic.

The registry re-derives a checkpoint's layer shapes with it (``get_spec``) and :mod:`._info`
builds the public facts on it, so it sits below both.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Dict, Tuple

import torch

from c3dfeat.models._common import FeatureModel
from c3dfeat.specs import ModelSpec

Size = Tuple[int, int, int]


def meta_model(builder: Callable[..., Any], num_classes: int) -> FeatureModel:
    with torch.device("meta"):
        model: FeatureModel = builder(num_classes=num_classes).eval()
        return model


# Caches are keyed on (builder, classes, ...), not on the spec: ModelSpec equality ignores the
# resolved checkpoint, so two checkpoints with different class counts would share an entry.
@functools.lru_cache(maxsize=256)
def _shapes(builder: Callable[..., Any], num_classes: int, names: Tuple[str, ...], size: Size
            ) -> Tuple[Tuple[str, Tuple[int, ...]], ...]:
    model = meta_model(builder, num_classes)
    x = torch.empty((1, 3) + tuple(size), device="meta")
    with torch.no_grad():
        out = model.forward_layers(x, names)
    return tuple((name, tuple(v.shape[1:])) for name, v in out.items())


def spec_layer_shapes(spec: ModelSpec, input_size: Size) -> Dict[str, Tuple[int, ...]]:
    """Per-clip shape of every layer `spec` declares, for clips of `input_size` (T, H, W)."""
    names = tuple(layer.name for layer in spec.layers)
    return dict(_shapes(spec.builder, spec.num_classes, names, tuple(input_size)))
