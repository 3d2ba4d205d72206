"""The GPU path checked on every device this machine has: "cpu" always (so each check is known to
run and pass here), "cuda" and a second, non-current "cuda:1" where present (skipped with the
reason otherwise). On CUDA a batch goes host buffer → side copy stream → device buffer → forward
pass while the next batch is filled and uploaded (pipeline.batching): these tests keep several
batches in flight at once, so a buffer reused too early shows as wrong features."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from c3dfeat import runtime
from c3dfeat.errors import ConfigError
from c3dfeat.models import extract_layers
from c3dfeat.pipeline import ModelRequest, extract
from c3dfeat.pipeline.batching import BatchRunner
from c3dfeat.pipeline.plan import prepare_model
from c3dfeat.pipeline.run import prepare_runtime
from c3dfeat.runtime import pick_device
from c3dfeat.sampling import sample_clips
from c3dfeat.store import FeatureFile
from c3dfeat.video import open_video
from tests._extract_tiny import tiny_models  # noqa: F401  (fixture)
from tests.synth import make_video
from tests.test_pipeline import _clips

N_GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0
DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(N_GPUS < 1, reason="needs a CUDA GPU")),
    # not the current device: every stream and event must be the device's own
    pytest.param("cuda:1", id="cuda1", marks=pytest.mark.skipif(N_GPUS < 2, reason="needs 2 CUDA GPUs")),
]
needs_cuda = pytest.mark.skipif(N_GPUS < 1, reason="needs a CUDA GPU")


def _direct(model, clips, batch_size, device):
    """extract_layers on zero-padded batches of `batch_size`, one at a time: {layer: (n, D)}."""
    out = {layer: [] for layer in model.layers}
    for s in range(0, len(clips), batch_size):
        chunk = clips[s : s + batch_size]
        x = torch.zeros((batch_size,) + model.clip_shape)
        x[: len(chunk)] = torch.stack(chunk)
        y = extract_layers(model.net, x.flatten(0, 1).to(device), model.layers)
        for layer in model.layers:
            out[layer].append(y[layer][: len(chunk)].float().cpu().numpy())
    return {layer: np.concatenate(v) for layer, v in out.items()}


def _all_in_flight(runner, clips):
    """Launch every batch before collecting any (more batches in flight than buffers)."""
    launched = []
    for k, clip in enumerate(clips):
        if runner.add(k, clip):
            launched.append(runner.launch())
    last = runner.launch()
    if last is not None:
        launched.append(last)
    got = {}
    for batch in launched:
        got.update(batch.collect())
    return got


@pytest.mark.usefixtures("tiny_models")
@pytest.mark.parametrize("device", DEVICES)
def test_batches_in_flight_equal_direct_computation(device):
    dev = torch.device(device)
    model = prepare_model(ModelRequest("tiny3d", ("conv", "input")), device=dev, random_init=True)
    clips = _clips(9, shape=model.clip_shape)
    got = _all_in_flight(BatchRunner(model, 2, dev), clips)  # 5 batches, the last one padded
    want = _direct(model, clips, 2, dev)
    assert sorted(got) == list(range(9))
    for k, clip in enumerate(clips):
        np.testing.assert_array_equal(got[k]["input"], clip.flatten().numpy())  # the clip itself
        np.testing.assert_array_equal(got[k]["conv"], want["conv"][k])


@pytest.mark.parametrize("device", DEVICES)
def test_c3d_batches_in_flight_equal_direct_computation(device):
    """A real network (its forward pass takes longer than the next upload)."""
    dev = torch.device(device)
    model = prepare_model(ModelRequest("c3d", ("fc6",)), device=dev, random_init=True)
    clips = _clips(5, seed=1, shape=model.clip_shape)
    got = _all_in_flight(BatchRunner(model, 2, dev), clips)
    want = _direct(model, clips, 2, dev)
    for k in range(5):
        np.testing.assert_array_equal(got[k]["fc6"], want["fc6"][k])


@pytest.mark.usefixtures("tiny_models")
@pytest.mark.parametrize("device", DEVICES)
def test_extract_on_the_device_equals_direct_computation_and_bf16_is_recorded(tmp_path, device):
    video = make_video(tmp_path / "v" / "x.mp4", 13, size=(48, 64), fps=30, noise=20)
    make_video(tmp_path / "v" / "y.mp4", 6, size=(40, 40), fps=30, noise=20)
    fp32, bf16 = tmp_path / "fp32.h5", tmp_path / "bf16.h5"
    models = [("tiny3d", ["conv", "input"])]
    extract([tmp_path / "v"], fp32, models, random_init=True, device=device, batch_size=2)
    extract([tmp_path / "v"], bf16, models, random_init=True, device=device, batch_size=2, dtype="bf16")

    dev = torch.device(device)
    model = prepare_model(ModelRequest("tiny3d", ("conv", "input")), device=dev, random_init=True)
    indices = sample_clips(13, 30.0, model.sampling)
    with open_video(video) as reader:
        clips = [model.transform(reader.get_frames(c.indices)) for c in indices]
    want = _direct(model, clips, 2, dev)
    with FeatureFile(fp32) as a, FeatureFile(bf16) as b:
        assert a.provenance["dtype"] == "fp32" and b.provenance["dtype"] == "bf16"
        run = json.loads(a.h5.attrs["run"])
        assert run["device"] == device
        if dev.type == "cuda":
            assert run["gpu"] == torch.cuda.get_device_name(dev) and run["cuda"] == torch.version.cuda
            assert run["cudnn"] == torch.backends.cudnn.version()
        for layer in ("conv", "input"):
            np.testing.assert_array_equal(a.clips("x.mp4", "tiny3d", layer), want[layer])
        x, y = a.clips("x.mp4", "tiny3d", "conv"), b.clips("x.mp4", "tiny3d", "conv")
        assert not np.array_equal(x, y)  # bf16 really ran
        np.testing.assert_allclose(y, x, rtol=0.05, atol=0.02)


@needs_cuda
def test_cuda_fp32_is_exact_unless_tf32_is_asked_and_cudnn_autotunes():
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    try:
        prepare_runtime(torch.device("cuda"), allow_tf32=False)
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert torch.backends.cudnn.benchmark
        prepare_runtime(torch.device("cuda"), allow_tf32=True)
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = saved


def test_device_names_are_checked_against_this_machine(monkeypatch, tmp_path):
    monkeypatch.setattr(runtime, "_DEV", tmp_path)  # no /dev/nvidiaN: a machine without a GPU (on a GPU one too)
    assert pick_device("cpu") == torch.device("cpu")
    for bad in ("gpu", "mps", "cuda:x"):
        with pytest.raises(ConfigError, match="auto, cpu or cuda"):
            pick_device(bad)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="CUDA is not available on this machine; use --device cpu"):
        pick_device("cuda")
    assert pick_device("auto") == torch.device("cpu")
    # a machine with one GPU (faked: only the names are checked, nothing runs on it)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert pick_device("cuda") == torch.device("cuda") and pick_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ConfigError, match=r"--device cuda:1: this machine has 1 CUDA GPU\(s\), numbered from cuda:0"):
        pick_device("cuda:1")
