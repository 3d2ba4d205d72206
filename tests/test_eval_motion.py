"""The C3D paper's first finding in miniature, through the real commands.

Synthetic videos of random textures moving left / right / up / down (a new texture and start
offset per video, so a single frame says nothing about the class) go through
``c3dfeat extract videos/ -o feats.h5`` and ``c3dfeat linear-eval`` (labels from the class
folders, stratified k-fold CV). Features of a RANDOMLY initialised 3D ConvNet separate the four
directions far above chance; the per-frame average of the same network's features on the same
videos (``--clip-len 1``: every frame its own clip, then the clip mean) stays near chance.
"""
import json
from typing import Dict, Sequence

import numpy as np
import pytest
import torch
import torch.nn as nn
from click.testing import CliRunner

from c3dfeat.cli import cli
from c3dfeat.models import LayerSpec, ModelSpec, Preprocessing, register_model
from c3dfeat.models._registry import _REGISTRY
from tests.synth import make_video

DIRECTIONS = {"left": (0, -2), "right": (0, 2), "up": (-2, 0), "down": (2, 0)}  # px per frame


class Motion3D(nn.Module):
    """Three 3x3x3 conv + ReLU + spatial max-pool stages, global average pool: a miniature C3D
    trunk. Random weights (fixed generator); no biases, so ReLU rectifies around zero."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)  # fixed random weights, whatever the global seed
        convs = [nn.Conv3d(a, b, 3, padding=1, bias=False) for a, b in ((3, 32), (32, 64), (64, 128))]
        with torch.no_grad():
            for c in convs:  # He-like scale keeps activations O(1) through the stages
                c.weight.copy_(torch.randn(c.weight.shape, generator=g) / c.weight[0].numel() ** 0.5)
        # spatial pooling only, so a 1-frame clip (the per-frame baseline) runs through too
        self.trunk = nn.Sequential(*[m for c in convs for m in (c, nn.ReLU(), nn.MaxPool3d((1, 2, 2)))])
        self.fc = nn.Linear(128, num_classes)

    def forward_layers(self, x: torch.Tensor, layers: Sequence[str]) -> Dict[str, torch.Tensor]:
        return {"pool": self.trunk(x).mean(dim=(2, 3, 4))}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_layers(x, ["pool"])["pool"])


@pytest.fixture
def motion_model():
    """Register the test-only model for this test, and remove it afterwards (other tests iterate
    over the registry)."""
    if "motion3d_test" not in _REGISTRY:
        register_model(ModelSpec(
            name="motion3d_test", builder=Motion3D, checkpoints=(),
            preprocessing=Preprocessing(clip_len=8, frame_step=1, stride=8, resize=(32, 32),
                                        crop_size=32, divide_by=255.0, mean=(0.5, 0.5, 0.5)),
            layers=(LayerSpec("pool", (128,)),), default_layer="pool", input_size=(8, 32, 32),
            description="test-only random 3D ConvNet for the motion test"))
    yield "motion3d_test"
    _REGISTRY.pop("motion3d_test", None)


def texture(rng, size=64):
    """Smooth random colour texture, periodic so that np.roll moves it without seams."""
    f = np.fft.fft2(rng.standard_normal((3, size, size)))
    k = np.fft.fftfreq(size)
    lowpass = np.exp(-(k[:, None] ** 2 + k[None, :] ** 2) / (2 * 0.06 ** 2))
    t = np.real(np.fft.ifft2(f * lowpass))
    t = (t - t.mean()) / t.std()
    return np.clip(128 + 50 * t, 0, 255).transpose(1, 2, 0)


def moving_clip(rng, direction, n_frames=16, size=32):
    tex = texture(rng)
    dy, dx = DIRECTIONS[direction]
    oy, ox = rng.integers(0, 64, 2)
    frames = [np.roll(tex, (-(oy + i * dy), -(ox + i * dx)), axis=(0, 1))[:size, :size]
              for i in range(n_frames)]
    return np.stack(frames).astype(np.uint8)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("motion") / "videos"
    rng = np.random.default_rng(0)
    for d in DIRECTIONS:
        for i in range(10):
            make_video(root / d / f"{d}_{i:02d}.mkv", 0, frames=moving_clip(rng, d))  # lossless
    return root


def _extract_then_eval(root, out, extra=()):
    r = CliRunner()
    res = r.invoke(cli, ["extract", str(root), "-o", str(out), "--model", "motion3d_test",
                         "--random-init", "--device", "cpu", "-q", *extra])
    assert res.exit_code == 0, res.output
    res = r.invoke(cli, ["linear-eval", str(out), "--json", "--folds", "5"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_random_3d_convnet_separates_motion_directions_per_frame_average_cannot(videos, tmp_path, motion_model):
    motion = _extract_then_eval(videos, tmp_path / "feats.h5")
    static = _extract_then_eval(videos, tmp_path / "frames.h5", ["--clip-len", "1", "--stride", "1"])
    print(f"motion: {motion['mean_top1']:.1f} %, per-frame average: {static['mean_top1']:.1f} %")
    assert motion["n_classes"] == 4 and len(motion["splits"]) == 5
    assert sum(s["n_test"] for s in motion["splits"]) == 40  # every video tested once
    # chance is 25 %: a broken pipeline (shuffled frames, constant or misaligned features,
    # labels not from the folders) cannot reach these margins
    assert motion["mean_top1"] >= 85.0, motion
    assert static["mean_top1"] <= 45.0, static
    assert motion["mean_top1"] - static["mean_top1"] >= 40.0
