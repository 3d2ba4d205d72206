"""`extract(..., engine="ray")` on a local Ray runtime: the same file as the in-process engine.

One runtime for the module (``ray.init(num_cpus=2)``; starting Ray costs seconds): every test
compares its file dataset by dataset (h5py: every dataset, the compared attributes) with the
in-process run of the same videos. The worker-kill test SIGKILLs a Ray worker in the middle of
a video (tests/_ray_hooks.py) and expects the retried task to change nothing.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import h5py
import numpy as np
import pytest

from c3dfeat.errors import ConfigError, DecoderUnavailableError, DeviceMemoryError, ExtractInterrupted
from c3dfeat.pipeline import extract
from c3dfeat.store import FeatureFile
from tests._extract_tiny import tiny_models  # noqa: F401  (fixture)
from tests.synth import make_broken, make_video
from tests.test_store import _assert_same_datasets

ray = pytest.importorskip("ray")
pytest.importorskip("av")

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("tiny_models")]
REPO = Path(__file__).resolve().parents[1]
MODELS = [("tiny3d", ["conv", "input"]), ("tiny3d_id", ["pool"])]  # two models: mixed batches
OPTS = dict(random_init=True, device="cpu", batch_size=3)


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    """The folder whose flag files make the module's Ray workers fail (tests/_ray_hooks.py)."""
    return tmp_path_factory.mktemp("ray_faults")


@pytest.fixture(scope="module")
def ray_runtime(faults):
    # A private runtime on this machine: no token authentication. Set for the whole process (the
    # driver keeps its auth mode across ray.init calls; test_ray_cluster.py needs it off too).
    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning",
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO), "C3DFEAT_TEST_FAULTS": str(faults)},
                          "worker_process_setup_hook": "tests._ray_hooks.setup"})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Seven videos of 3..40 frames (one long enough to span several decode windows), one that
    does not open and one that fails half way (after some of its clips were emitted)."""
    d = tmp_path_factory.mktemp("ray_videos")
    for i, n in enumerate((9, 3, 40, 12, 6, 15, 7)):
        make_video(d / f"v{i}.mp4", n, size=(32, 32), noise=10)
    make_broken(d, "text")
    make_broken(d, "truncated_faststart")
    return d


@pytest.fixture(scope="module")
def reference(videos, tmp_path_factory):
    from tests import _extract_tiny

    _extract_tiny.register()
    out = tmp_path_factory.mktemp("ray_ref") / "ref.h5"
    extract([videos], out, MODELS, **OPTS)
    return out


def _run_attr(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        return json.loads(f.attrs["run"])


def test_local_runtime_equals_in_process(ray_runtime, videos, reference, tmp_path):
    out = tmp_path / "ray.h5"
    report = extract([videos], out, MODELS, engine="ray", **OPTS)
    _assert_same_datasets(out, reference)
    assert report.engine == "ray" and report.ok == 7 and report.skipped == 0
    assert sorted(v for v, _ in report.failed) == ["text.mp4", "truncated_fs.mp4"]
    with FeatureFile(reference) as ref:  # + the clips of the video that failed half way
        assert report.clips >= sum(ref.num_clips(m) for m in ("tiny3d", "tiny3d_id")) > 0
    assert _run_attr(out)["engine"] == "ray" and _run_attr(reference)["engine"] == "local"


def test_a_model_torch_resizes_gives_the_in_process_file(ray_runtime, tmp_path, monkeypatch):
    """Ray's decode tasks run one torch thread, the in-process engine's decode threads several
    (torchvision's uint8 resize rounded otherwise at one thread before transforms.resize_planes)."""
    from c3dfeat.models._registry import _REGISTRY
    from tests._extract_tiny import torchvision_preset_spec

    spec = torchvision_preset_spec()
    monkeypatch.setitem(_REGISTRY, spec.name, spec)
    make_video(tmp_path / "v" / "a.mp4", 24, size=(240, 320), noise=20)
    models = [("tiny3d_tv", ["input"])]
    extract([tmp_path / "v"], tmp_path / "ref.h5", models, worker_kind="thread", **OPTS)
    extract([tmp_path / "v"], tmp_path / "ray.h5", models, engine="ray", **OPTS)
    _assert_same_datasets(tmp_path / "ray.h5", tmp_path / "ref.h5")


def test_worker_killed_mid_video_is_retried(ray_runtime, tmp_path):
    d = tmp_path / "vids"
    # 80 frames of 32x32: several decode windows, so the kill lands after clips were emitted
    make_video(d / "a.mp4", 10, size=(32, 32), noise=10)
    make_video(d / "kill-me.mp4", 80, size=(32, 32), noise=10)
    make_video(d / "z.mp4", 9, size=(32, 32), noise=10)
    make_broken(d, "text")
    ref = tmp_path / "ref.h5"
    extract([d], ref, MODELS, **OPTS)
    out = tmp_path / "ray.h5"
    report = extract([d], out, MODELS, engine="ray", **OPTS)
    flag = d / "kill-me.mp4.killed"
    assert flag.exists(), "the worker-kill hook did not fire"
    _assert_same_datasets(out, ref)
    assert report.ok == 3 and [v for v, _ in report.failed] == ["text.mp4"]  # failed once, not per retry
    with FeatureFile(out) as ff:
        assert ff.num_videos == 4


@pytest.mark.parametrize("fault, error, where", [
    ("decoder-missing", ConfigError, "decoding "),  # a node without the decoder's package
    ("oom", DeviceMemoryError, "running the models"),  # a batch the actor's device cannot hold
])
def test_a_typed_error_in_a_worker_stops_the_run_typed_and_the_rerun_resumes(ray_runtime, faults, videos, reference,
                                                                             tmp_path, fault, error, where):
    """Not Ray's RayTaskError / ActorDiedError with our message at the end of a traceback: the
    error itself, with the node in its notes; the file says why it stopped."""
    out = tmp_path / "out.h5"
    (faults / fault).touch()
    try:
        with pytest.raises(error, match="^test fault: ") as e:
            extract([videos], out, MODELS, engine="ray", **OPTS)
    finally:
        (faults / fault).unlink()
    assert type(e.value) is error
    assert any(n.startswith("(raised in a Ray worker on node ") and where in n for n in e.value.__notes__)
    with FeatureFile(out) as ff:
        assert ff.state == "incomplete" and f"({error.__name__})" in ff.state_reason
    extract([videos], out, MODELS, engine="ray", **OPTS)
    _assert_same_datasets(out, reference)


def test_an_actor_given_a_gpu_its_torch_cannot_use_says_so(unusable_gpus, monkeypatch):
    """A cluster node whose torch cannot run on the GPU Ray counted there (CPU-only torch here)."""
    import torch

    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # the actor's setting, not this process's

    from c3dfeat.pipeline.plan import ModelRequest, prepare_models
    from c3dfeat.pipeline.ray_actors import CLIP, ERROR, InferenceActor, pack_models, worker_error

    (m,) = prepare_models([ModelRequest("tiny3d")], device=torch.device("cpu"), random_init=True)
    actor = InferenceActor(pack_models([m]), "cuda", "fp32", False, 2, 1)
    batch = {"seq": np.array([0]), "kind": np.array([CLIP]), "model": np.array([0]), "clip": np.array([0]),
             "end": np.array([True]), "meta": np.array([b""], dtype=object), "data": np.array([b"x"], dtype=object)}
    for _ in range(2):  # every call says it (Ray Data may hand the actor several batches)
        out = actor(batch)
        assert list(out["kind"]) == [ERROR] and list(out) == list(batch)
        err = worker_error(out["meta"][0])
        assert isinstance(err, ConfigError)
        assert re.match(r"--device cuda: Ray gave an inference actor a GPU on node \S+, but torch \S+ there cannot "
                        r"use it: this machine has 2 NVIDIA GPU\(s\) \(driver 535.104.05\), but torch .* CPU-only",
                        str(err)), str(err)


def test_a_decoder_the_driver_lacks_is_refused_before_ray_starts(videos, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "decord", None)
    monkeypatch.setattr(ray, "init", None)  # not called
    with pytest.raises(DecoderUnavailableError, match="the decord backend is not installed"):
        extract([videos], tmp_path / "x.h5", MODELS, engine="ray", decoder="decord", **OPTS)
    assert not (tmp_path / "x.h5").exists()


def _interrupt_after(commits: int):
    seen = [0]

    def progress(p):
        if p.event == "commit":
            seen[0] += 1
            if seen[0] == commits:
                raise KeyboardInterrupt

    return progress


@pytest.mark.parametrize("first,then", [("local", "ray"), ("ray", "local")])
def test_resume_across_engines(ray_runtime, videos, reference, tmp_path, first, then):
    out = tmp_path / "out.h5"
    with pytest.raises(ExtractInterrupted) as e:
        extract([videos], out, MODELS, engine=first, progress=_interrupt_after(3), **OPTS)
    assert e.value.saved >= 3  # the Ray engine commits finished videos in groups
    report = extract([videos], out, MODELS, engine=then, **OPTS)
    assert report.skipped == e.value.saved and report.total == 9
    _assert_same_datasets(out, reference)
    # The engine is a run attribute (of the run that created the file), never compared provenance.
    assert _run_attr(out)["engine"] == first
    with h5py.File(out, "r") as f:
        assert "engine" not in f.attrs["provenance"]


def test_models_travel_to_the_actors_bit_equal():
    """pack_models → pickle (as the object store does) → unpack_models: every parameter and buffer
    equal, non-persistent buffers too, and a tensor two modules share stays one tensor."""
    import pickle

    import torch

    from c3dfeat.pipeline.plan import ModelRequest, prepare_models
    from c3dfeat.pipeline.ray_actors import pack_models, unpack_models

    (m,) = prepare_models([ModelRequest("tiny3d")], device=torch.device("cpu"), random_init=True)
    m.net.register_buffer("scratch", torch.arange(5.0), persistent=False)
    m.net.twin = m.net.fc  # shared parameters
    (got,) = unpack_models(pickle.loads(pickle.dumps(pack_models([m]))), torch.device("cpu"))
    want = dict(m.net.named_parameters()) | dict(m.net.named_buffers())
    have = dict(got.net.named_parameters()) | dict(got.net.named_buffers())
    assert want.keys() == have.keys() and all(torch.equal(want[k], have[k]) for k in want)
    assert got.net.twin.weight is got.net.fc.weight and got.net.training == m.net.training
    assert all(t.device.type == "cpu" for t in have.values())


def test_a_local_runtime_is_given_the_gpus_torch_can_use(monkeypatch):
    """Not those Ray would count from the driver: its GPU actors would fail beside a CPU-only torch."""
    import torch

    from c3dfeat.pipeline import ray_engine

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert ray_engine._start_ray(None, 3) is True
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    ray_engine._start_ray("local", 3)
    assert [(c["num_cpus"], c["num_gpus"]) for c in calls] == [(4, 0), (4, 2)]


def test_auto_on_a_local_runtime_says_when_the_machines_gpu_is_unusable(ray_runtime, videos, tmp_path, monkeypatch,
                                                                         unusable_gpus):
    from c3dfeat import C3DFeatWarning
    from c3dfeat.pipeline import ray_engine

    # the module's runtime stands in for one this call started (and is not stopped by it)
    monkeypatch.setattr(ray_engine, "_start_ray", lambda address, workers: True)
    monkeypatch.setattr(ray_engine, "_shutdown", lambda local: None)
    with pytest.warns(C3DFeatWarning, match=r"CPU-only build.*; running on the CPU"):
        report = extract([videos], tmp_path / "auto.h5", MODELS, engine="ray", random_init=True, batch_size=3)
    assert report.device == "cpu" and report.ok == 7
    assert report.warnings[0].startswith("this machine has 2 NVIDIA GPU(s) (driver 535.104.05), but torch ")
