"""Model facts computed from the architecture itself, without weights or real compute.

Everything here builds the model on PyTorch's meta device (shapes only, no memory, no arithmetic),
so it is instant even for the 152-layer networks: per-layer shapes for any input, parameter
counts, and FLOPs per clip (torch.utils.flop_counter, which counts one multiply-add as 2 FLOPs).
"""
from __future__ import annotations

import functools
from typing import Any, Dict, Optional, Tuple, Union

import torch

from c3dfeat.models._meta import Size, meta_model, spec_layer_shapes
from c3dfeat.models._registry import get_spec
from c3dfeat.specs import ModelSpec

__all__ = ["layer_shapes", "num_params", "gflops_per_clip", "model_info"]


def _spec(spec: Union[str, ModelSpec]) -> ModelSpec:
    return get_spec(spec) if isinstance(spec, str) else spec


def layer_shapes(spec: Union[str, ModelSpec], input_size: Optional[Size] = None) -> Dict[str, Tuple[int, ...]]:
    """Per-clip shape of every declared layer for clips of `input_size` (T, H, W)
    (default: the spec's canonical input)."""
    spec = _spec(spec)
    return spec_layer_shapes(spec, input_size or spec.input_size)


@functools.lru_cache(maxsize=64)
def _num_params(builder, num_classes: int) -> int:
    return sum(p.numel() for p in meta_model(builder, num_classes).parameters())


def num_params(spec: Union[str, ModelSpec]) -> int:
    """Learned parameters (BatchNorm running statistics excluded), for the spec's classes."""
    spec = _spec(spec)
    return _num_params(spec.builder, spec.num_classes)


@functools.lru_cache(maxsize=64)
def _flops(builder, num_classes: int, size: Size) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    model = meta_model(builder, num_classes)
    x = torch.empty((1, 3) + tuple(size), device="meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return int(counter.get_total_flops())


def gflops_per_clip(spec: Union[str, ModelSpec], input_size: Optional[Size] = None) -> float:
    """GFLOPs (2 per multiply-add, convolutions and matmuls) of one forward pass on one clip."""
    spec = _spec(spec)
    return _flops(spec.builder, spec.num_classes, tuple(input_size or spec.input_size)) / 1e9


def model_info(spec: Union[str, ModelSpec]) -> Dict[str, Any]:
    """What `c3dfeat models` shows about one architecture, JSON-serialisable (whether the weights
    files are present is added by :func:`c3dfeat.zoo.model_info`)."""
    spec = _spec(spec)
    pre = spec.preprocessing
    return {
        "name": spec.name,
        "description": spec.description,
        "paper": spec.paper,
        "input_size": list(spec.input_size),
        "clip": {
            "clip_len": pre.clip_len,
            "frame_step": pre.frame_step,
            "stride": pre.stride,
            "fps": pre.fps,
            "resize": list(pre.resize) if isinstance(pre.resize, tuple) else pre.resize,
            "crop_size": pre.crop_size,
            "channel_order": pre.channel_order,
        },
        "layers": [
            {
                "name": layer.name,
                "aliases": list(layer.aliases),
                "shape": list(spec.layer_shape(layer.name)),
                "dim": _prod(spec.layer_shape(layer.name)),
                "default": layer.name == spec.default_layer,
            }
            for layer in spec.layers
        ],
        "params": num_params(spec),
        "gflops": round(gflops_per_clip(spec), 2),
        "checkpoints": [
            {
                "tag": c.tag,
                "default": spec.checkpoint is not None and c.tag == spec.checkpoint.tag,
                "format": c.format,
                "classes": c.num_classes,
                "dataset": c.dataset,
                "file_name": c.file_name,
                "clip_len": dict(c.preprocessing).get("clip_len", pre.clip_len) if c.is_weights else None,
            }
            for c in spec.checkpoints
        ],
    }


def _prod(shape: Tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
