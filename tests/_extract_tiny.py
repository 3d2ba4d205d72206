"""A tiny model registered only for the extraction tests (fast pipeline mechanics).

`tiny3d`: clip_len 4, stride 2, frames resized to 32x32 and centre-cropped to 24 (or kept at 32
with `tiny3d_id`). Layers:
* ``input``: the network input itself, flattened (3*T*crop*crop) — so a test can read back
  exactly which frames (and which crop) each stored clip was made of;
* ``conv``: a seeded 3-D conv + ReLU + global average pool (8,) — real arithmetic;
* ``pool``: mean over time of ``input`` per channel (3,).

Nothing is registered on import (the registry-wide model tests must not see these): tests use
the `tiny_models` fixture, which registers them and removes them afterwards; subprocesses call
`register()` before running the CLI.
"""
from __future__ import annotations

import os
import time
from typing import Dict, Sequence

import pytest
import torch
import torch.nn as nn

from c3dfeat.models import LayerSpec, ModelSpec, Preprocessing, register_model
from c3dfeat.models._registry import _REGISTRY


class Tiny3D(nn.Module):
    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.conv = nn.Conv3d(3, 8, kernel_size=3, padding=1)
        self.fc = nn.Linear(8, num_classes)

    def forward_layers(self, x: torch.Tensor, layers: Sequence[str]) -> Dict[str, torch.Tensor]:
        out: Dict[str, torch.Tensor] = {}
        delay = float(os.environ.get("TINY3D_SLEEP", "0"))  # slows runs down for the kill tests
        if delay:
            time.sleep(delay)
        if "input" in layers:
            out["input"] = x.flatten(1).clone()
        if "pool" in layers:
            out["pool"] = x.mean(dim=(2, 3, 4))
        if "conv" in layers or "logits" in layers:
            h = torch.relu(self.conv(x)).mean(dim=(2, 3, 4))
            if "conv" in layers:
                out["conv"] = h
            if "logits" in layers:
                out["logits"] = self.fc(h)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_layers(x, ["logits"])["logits"]


def _spec(name: str, crop: int) -> ModelSpec:
    return ModelSpec(
        name=name,
        builder=Tiny3D,
        checkpoints=(),
        preprocessing=Preprocessing(clip_len=4, frame_step=1, stride=2, resize=(32, 32), crop_size=crop,
                                    divide_by=255.0),
        layers=(
            LayerSpec("input", (3, 4, crop, crop)),
            LayerSpec("pool", (3,)),
            LayerSpec("conv", (8,)),
            LayerSpec("logits", (5,)),
        ),
        default_layer="conv",
        input_size=(4, crop, crop),
        description="test-only tiny model",
    )


def torchvision_preset_spec() -> ModelSpec:
    """`tiny3d_tv`: the tiny network on R(2+1)D-18's own preprocessing (torchvision's uint8 resize
    to 128x171, 112 crop), 4-frame clips every 4 native frames. Not registered by `register()`."""
    import dataclasses

    from c3dfeat import get_spec

    pre = dataclasses.replace(get_spec("r2plus1d_18").preprocessing, clip_len=4, stride=4, frame_step=1, fps=None)
    return dataclasses.replace(_spec("tiny3d_tv", pre.crop_size), preprocessing=pre)


def register() -> list:
    """Register tiny3d / tiny3d_id (idempotent); returns the names this call added."""
    added = []
    for name, crop in (("tiny3d", 24), ("tiny3d_id", 32)):
        if name not in _REGISTRY:
            register_model(_spec(name, crop))
            added.append(name)
    return added


@pytest.fixture
def tiny_models():
    added = register()
    yield
    for name in added:
        _REGISTRY.pop(name, None)
