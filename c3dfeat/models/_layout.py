"""The memory layout a model computes in: one setting that every forward pass honours.

    from c3dfeat.models import set_inference_layout
    set_inference_layout(model, "channels_last_3d")   # or "contiguous"

The layout is stored on the model; :meth:`LayerwiseModel.forward_layers` (hence
``extract_layers`` and the extraction pipeline, which calls it) converts the weights once and
every input clip to it. So the pipeline and a direct ``extract_layers`` call on the same model
run the same kernels and agree bit for bit. Layouts only change float rounding (tested), never
the layer shapes or values beyond it.

A model without an explicit setting uses :data:`DEFAULT_LAYOUTS` for its architecture on the
device it runs on: the layout measured fastest at batch 4 (scripts/bench_models.py, figures in
docs/extract.md "Performance").
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn as nn

__all__ = [
    "LAYOUTS",
    "CHANNELS_LAST_3D",
    "CONTIGUOUS",
    "DEFAULT_LAYOUTS",
    "default_inference_layout",
    "get_inference_layout",
    "set_inference_layout",
]

CHANNELS_LAST_3D = "channels_last_3d"
CONTIGUOUS = "contiguous"
LAYOUTS = (CHANNELS_LAST_3D, CONTIGUOUS)
_FORMATS = {CHANNELS_LAST_3D: torch.channels_last_3d, CONTIGUOUS: torch.contiguous_format}

# Per device type, per architecture: the layout measured fastest (fp32, batch 4, 2-core CPU,
# scripts/bench_models.py, both layouts alternating run by run; medians, contiguous time /
# channels_last time): r2plus1d_18 1.9x, mc3_18 1.5x, r2plus1d_34 (8x112x112) 1.33x,
# ip_csn_152 (8x112x112) 1.8x, r3d_18 1.15x, res3d_18 1.05-1.2x faster in channels_last_3d;
# C3D 1.20x (6 of 6 pairs at load ~5; at load 13-25 the runs disagreed). 2026-11-30 07:52-07:59
# UTC (load 2.5-7.3, the benchmark's autogroup at nice -19; three runs each, the last in the
# reverse order):
# r2plus1d_152 (8x112x112) 1.06x / 1.16x / 1.12x (15 of 19 pairs), pytorchvideo's r2plus1d_r50
# (16x256x256) 1.23x / 1.17x / 1.33x (13 of 15 pairs), csn_r101 (32x256x256) 1.60x / 1.25x /
# 1.29x (14 of 15 pairs; depthwise 3x3x3 like ir_csn_152) in channels_last_3d. ir_csn_152: an
# older measurement (load 13-25) had channels_last_3d 4.2x slower (6.06 vs 1.46 s at 8x112x112);
# contradicted 2026-11-30 08:10-08:11 UTC (torch 2.13.0, load 2.0-2.6, autogroup nice -19, four
# runs, two in the reverse order): 8x112x112 1.27x / 1.29x (0.136 vs 0.172 s, 0.134 vs 0.173 s;
# 14 of 14 pairs), 32x224x224 1.60x / 1.36x (2.01 vs 3.21 s, 2.16 vs 2.93 s; 6 of 6 pairs)
# faster in channels_last_3d. Models not listed stay "contiguous", the layout PyTorch modules are
# created in.
# CUDA: nothing measured yet (scripts/bench_gpu.py), contiguous.
DEFAULT_LAYOUTS: Dict[str, Dict[str, str]] = {
    "cpu": {
        "c3d": CHANNELS_LAST_3D,
        "r2plus1d_18": CHANNELS_LAST_3D,
        "r2plus1d_34": CHANNELS_LAST_3D,
        "r2plus1d_152": CHANNELS_LAST_3D,
        "mc3_18": CHANNELS_LAST_3D,
        "r3d_18": CHANNELS_LAST_3D,
        "res3d_18": CHANNELS_LAST_3D,
        "ip_csn_152": CHANNELS_LAST_3D,
        "ir_csn_152": CHANNELS_LAST_3D,
        "csn_r101": CHANNELS_LAST_3D,
        "r2plus1d_r50": CHANNELS_LAST_3D,
    },
    "cuda": {},
}

_ATTR = "_c3dfeat_inference_layout"  # explicit setting (set_inference_layout)
_APPLIED = "_c3dfeat_weights_layout"  # layout the weights were last converted to


def _check(layout: str) -> str:
    if layout not in _FORMATS:
        raise ValueError(f"inference layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    return layout


def default_inference_layout(arch: str, device: object = "cpu") -> str:
    """The default layout of architecture `arch` ("c3d", "r2plus1d_34.ig65m_32f" ...) on `device`."""
    kind = str(getattr(device, "type", device)).split(":")[0]
    return DEFAULT_LAYOUTS.get(kind, {}).get(arch.partition(".")[0], CONTIGUOUS)


def set_inference_layout(model: nn.Module, layout: Optional[str]) -> nn.Module:
    """Make `model` compute in `layout` ("channels_last_3d" | "contiguous"; None: back to the
    per-architecture default). Converts the 5-D weights now; returns the model."""
    if layout is None:
        model.__dict__.pop(_ATTR, None)
        return model
    setattr(model, _ATTR, _check(layout))
    _convert_weights(model, layout)
    return model


def get_inference_layout(model: nn.Module, device: object = None) -> str:
    """The layout `model` computes in: its explicit setting, else its architecture's default on
    `device` (default: the device of its first parameter)."""
    explicit = model.__dict__.get(_ATTR)
    if explicit is not None:
        return explicit
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else "cpu"
    spec = getattr(model, "spec", None)
    return default_inference_layout(getattr(spec, "name", ""), device)


def _convert_weights(model: nn.Module, layout: str) -> None:
    if model.__dict__.get(_APPLIED) != layout:
        # Only 5-D parameters and buffers change (torch's stubs omit the memory_format overload).
        # Outside inference mode even when called from extract_layers: the converted weights must
        # stay ordinary tensors, usable by a later forward pass with autograd on.
        with torch.inference_mode(False), torch.no_grad():
            model.to(memory_format=_FORMATS[layout])  # type: ignore[call-overload]
        model.__dict__[_APPLIED] = layout


def prepare_input(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`x` in the model's layout, the weights converted to it if they are not yet (once)."""
    layout = get_inference_layout(model, x.device)
    _convert_weights(model, layout)
    if x.dim() == 5:
        x = x.contiguous(memory_format=_FORMATS[layout])
    return x
