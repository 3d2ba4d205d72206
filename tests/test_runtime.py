"""Runtime settings: the allocator switch, default batch sizes, and the inference layout that the
pipeline and extract_layers share (pipeline = direct computation, bit for bit, in any layout)."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch
import torch.nn as nn

from c3dfeat import runtime
from c3dfeat.models import (
    LayerSpec,
    ModelSpec,
    Preprocessing,
    _layout,
    create_model,
    extract_layers,
    get_inference_layout,
    register_model,
    set_inference_layout,
)
from c3dfeat.models._layers import LayerwiseModel, Step
from c3dfeat.models._registry import _REGISTRY
from tests._extract_tiny import tiny_models  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- allocator
def _configure_in_child(env: Dict[str, str]) -> List[str]:
    code = ("from c3dfeat.runtime import configure_allocator as c; a = c(); b = c(); "
            "print(a, b)")
    full = {**os.environ, **env, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_configure_allocator_is_idempotent_and_the_env_switch_disables_it():
    env = {runtime.ALLOCATOR_ENV: ""}
    first, second = _configure_in_child(env)
    assert first == second
    glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert first == ("glibc" if glibc else "unsupported")
    assert _configure_in_child({runtime.ALLOCATOR_ENV: "system"}) == ["system", "system"]


def test_configure_allocator_in_process(monkeypatch):
    monkeypatch.setenv(runtime.ALLOCATOR_ENV, "system")
    runtime._reset_for_tests()
    try:
        assert runtime.configure_allocator() == "system"
        monkeypatch.delenv(runtime.ALLOCATOR_ENV)
        assert runtime.configure_allocator() == "system"  # the first call decided
        assert runtime.allocator_settings() == {"allocator": "system"}
        runtime._reset_for_tests()
        monkeypatch.setenv(runtime.ALLOCATOR_ENV, "jemalloc")
        with pytest.raises(ValueError, match="C3DFEAT_MALLOC"):
            runtime.configure_allocator()
    finally:
        runtime._reset_for_tests()
        monkeypatch.delenv(runtime.ALLOCATOR_ENV, raising=False)
        runtime.configure_allocator()


def test_default_batch_size():
    assert runtime.default_batch_size("cpu", "c3d") == 3
    assert runtime.default_batch_size(torch.device("cpu"), "r2plus1d_18") == 3
    assert runtime.default_batch_size("cuda:1", "c3d") >= 16
    assert runtime.default_batch_size("cuda", "ir_csn_152.ig65m") <= runtime.default_batch_size("cuda", "c3d")


# ----------------------------------------------------------------------------- decoders
@pytest.mark.parametrize("cores,gpus,expected", [(1, 1, 2), (2, 1, 2), (3, 1, 2), (4, 1, 3), (16, 1, 15),
                                                 (64, 1, 32), (64, 4, 15), (96, 8, 11), (16, 8, 2)])
def test_default_workers(monkeypatch, cores, gpus, expected):
    monkeypatch.setattr(runtime, "usable_cores", lambda: cores)
    assert runtime.default_workers("cuda", gpus) == runtime.default_workers(torch.device("cuda", 1), gpus) == expected
    assert runtime.default_workers("cpu") == runtime.default_workers(torch.device("cpu")) == runtime.CPU_WORKERS == 2
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    assert runtime.default_workers("cuda") == expected  # the visible GPUs share the cores
    # NVDEC decodes: a few host threads, whatever the cores
    assert runtime.default_workers("cuda", gpus, decode_device="cuda:0") == runtime.GPU_DECODE_WORKERS == 4


def _fake_cgroups(tmp_path, monkeypatch, proc_lines: str, files: Dict[str, str], affinity: int = 16) -> None:
    root = tmp_path / "cgroup"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (tmp_path / "proc_cgroup").write_text(proc_lines)
    monkeypatch.setattr(runtime, "_CGROUP_ROOT", root)
    monkeypatch.setattr(runtime, "_PROC_CGROUP", tmp_path / "proc_cgroup")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(affinity)))


def test_usable_cores_follow_a_cgroup_v2_quota_of_the_job_or_a_parent(tmp_path, monkeypatch):
    """A batch system's job sees every core of the node in os.cpu_count(); its quota is in
    its cgroup, or in a parent's (the tighter wins), rounded up to whole cores."""
    _fake_cgroups(tmp_path, monkeypatch, "0::/job/step\n",
                  {"job/step/cpu.max": "max 100000\n", "job/cpu.max": "350000 100000\n", "cpu.max": "max 100000\n"})
    assert runtime.usable_cores() == 4
    assert runtime.default_workers("cuda", gpus=1) == 3


def test_usable_cores_follow_a_cgroup_v1_quota(tmp_path, monkeypatch):
    v1 = "cpu,cpuacct/slurm"
    _fake_cgroups(tmp_path, monkeypatch, "4:memory:/slurm/j1\n3:cpu,cpuacct:/slurm/j1\n",
                  {f"{v1}/j1/cpu.cfs_quota_us": "-1\n", f"{v1}/j1/cpu.cfs_period_us": "100000\n",
                   f"{v1}/cpu.cfs_quota_us": "200000\n", f"{v1}/cpu.cfs_period_us": "100000\n"})
    assert runtime.usable_cores() == 2


def test_usable_cores_without_a_quota_are_the_affinity_mask(tmp_path, monkeypatch):
    _fake_cgroups(tmp_path, monkeypatch, "0::/\n", {"cpu.max": "max 100000\n"}, affinity=6)
    assert runtime.usable_cores() == 6
    monkeypatch.setattr(runtime, "_PROC_CGROUP", tmp_path / "absent")  # not Linux's layout: no quota known
    assert runtime.usable_cores() == 6
    _fake_cgroups(tmp_path, monkeypatch, "0::/\n", {"cpu.max": "12500 100000\n"}, affinity=6)
    assert runtime.usable_cores() == 1  # an eighth of a core: still one


@pytest.mark.usefixtures("tiny_models")
def test_extract_without_workers_uses_the_default_for_its_device_and_records_it(tmp_path, monkeypatch):
    """None reaches the scheduler as runtime.default_workers(device), and the file says how many ran."""
    import json

    import h5py

    from c3dfeat.pipeline import api
    from tests.synth import make_video

    asked = []
    monkeypatch.setattr(api, "default_workers", lambda dev, decode_device: asked.append((str(dev), decode_device)) or 3)
    make_video(tmp_path / "v" / "a.mp4", 8, size=(32, 32))
    api.extract([tmp_path / "v"], tmp_path / "f.h5", ["tiny3d"], random_init=True, device="cpu")
    with h5py.File(tmp_path / "f.h5", "r") as f:
        run = json.loads(f.attrs["run"])
    assert asked == [("cpu", "cpu")] and run["workers"] == 3 and run["worker_kind"] == "thread"
    # what else shaped the bits, for the record
    import av

    assert run["python"] == platform.python_version() and run["numpy"] == np.__version__
    assert run["decoder_versions"] == {"av": av.__version__, "ffmpeg": av.ffmpeg_version_info}
    assert "gpu" not in run and "cuda" not in run  # on a GPU: its name, CUDA and cuDNN (test_cuda.py)
    assert run["torch_threads"] == torch.get_num_threads()  # what ran the model (capped at the usable cores)


# ----------------------------------------------------------------------------- a GPU torch cannot use
DRIVER_535 = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023"
TOO_OLD = ("The NVIDIA driver on your system is too old (found version 12020). Please update your GPU driver.\n"
           "second line")


# `unusable_gpus` (conftest.py): two NVIDIA GPUs, driver 535.104.05, torch cannot use them
def test_a_gpu_beside_a_cpu_only_torch_is_reported_with_what_to_install(unusable_gpus):
    base = torch.__version__.split("+")[0]
    assert runtime.unusable_gpu_reason() == (
        f"this machine has 2 NVIDIA GPU(s) (driver 535.104.05), but torch {torch.__version__} is a CPU-only "
        f'build: install a CUDA build of torch {base} (docs/extract.md, "GPU")')


def test_a_driver_too_old_for_torchs_cuda_is_reported_with_cudas_own_words(unusable_gpus, monkeypatch):
    def init():
        raise RuntimeError(TOO_OLD)

    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "init", init)
    why = runtime.unusable_gpu_reason()
    assert why is not None
    assert why.startswith("this machine has 2 NVIDIA GPU(s) (driver 535.104.05), but torch ")
    assert "(built for CUDA 13.0) cannot use them: The NVIDIA driver on your system is too old (found " \
           "version 12020). Please update your GPU driver." in why
    assert "second line" not in why


def test_cuda_is_asked_to_start_once_per_process(unusable_gpus, monkeypatch):
    """make_svm asks on every fit; a failed CUDA start does not heal, so it is tried once."""
    tries = []

    def init():
        tries.append(1)
        raise RuntimeError(TOO_OLD)

    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "init", init)
    assert runtime.unusable_gpu_reason() == runtime.unusable_gpu_reason()
    assert len(tries) == 1


def test_no_gpu_hidden_gpus_and_a_container_without_gpu_access_are_not_reported(unusable_gpus, monkeypatch):
    dev, version = unusable_gpus
    for hidden in ("", "-1", " "):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)
        assert runtime.unusable_gpu_reason() is None
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    (dev / "nvidia0").unlink()
    (dev / "nvidia1").unlink()  # /dev/nvidiactl alone: no GPU this process may open
    assert runtime.unusable_gpu_reason() is None
    (dev / "nvidia3").touch()
    version.unlink()  # the driver's version unknown: left out
    assert runtime.unusable_gpu_reason().startswith("this machine has 1 NVIDIA GPU(s), but torch ")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert runtime.unusable_gpu_reason() is None


@pytest.mark.parametrize("line, version", [
    (DRIVER_535, "535.104.05"),
    ("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.65.06  Release Build  "
     "(dvs-builder@U16-I3-B13-4-2)  Sun Jul 27 07:09:33 UTC 2025", "580.65.06"),
    ("NVRM version: NVIDIA UNIX aarch64 Kernel Module  550.54  Tue Feb 20 2024", "550.54"),
    ("something else", None),
])
def test_the_driver_version_is_read_from_the_kernel_modules_line(tmp_path, monkeypatch, line, version):
    (tmp_path / "v").write_text(line + "\n")
    monkeypatch.setattr(runtime, "_NVIDIA_VERSION", tmp_path / "v")
    assert runtime._nvidia_driver_version() == version


def test_device_choice_on_a_gpu_torch_cannot_use(unusable_gpus):
    from c3dfeat import C3DFeatWarning
    from c3dfeat.errors import ConfigError

    why = runtime.unusable_gpu_reason()
    with pytest.raises(ConfigError) as e:
        runtime.pick_device("cuda")
    assert str(e.value) == f"--device cuda: {why}; use --device cpu"
    cpu = runtime.pick_device("auto")
    assert cpu == torch.device("cpu")
    note = f"{why}; running on the CPU (--device cpu: without this check)"
    with pytest.warns(C3DFeatWarning) as caught:
        assert runtime.warn_if_gpu_unused("auto", cpu) == note
    assert [str(w.message) for w in caught] == [note]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert runtime.warn_if_gpu_unused("cpu", cpu) is None  # asked for: nothing to say


@pytest.mark.usefixtures("tiny_models")
def test_extract_and_the_cli_say_at_once_that_auto_fell_back_to_the_cpu(tmp_path, unusable_gpus):
    import json

    from click.testing import CliRunner

    from c3dfeat import C3DFeatWarning
    from c3dfeat.cli import cli
    from c3dfeat.pipeline import extract
    from tests.synth import make_video

    make_video(tmp_path / "v" / "a.mp4", 8, size=(32, 32))
    note = runtime.unusable_gpu_reason() + "; running on the CPU (--device cpu: without this check)"
    with pytest.warns(C3DFeatWarning) as caught:
        report = extract([tmp_path / "v"], tmp_path / "api.h5", ["tiny3d"], random_init=True)
    assert [str(w.message) for w in caught if w.category is C3DFeatWarning] == [note]
    assert report.device == "cpu" and report.warnings == [note]

    base = ["extract", str(tmp_path / "v"), "--model", "tiny3d", "--random-init"]
    res = CliRunner().invoke(cli, [*base, "-o", str(tmp_path / "json.h5"), "--json", "-q"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["warnings"] == [note]
    assert res.stderr.splitlines()[0] == f"warning: {note}"  # before the run, in one line
    res = CliRunner().invoke(cli, [*base, "-o", str(tmp_path / "summary.h5")])
    assert res.exit_code == 0, res.output
    assert res.stderr.count(note) == 1  # not again in the summary's notes
    lines = res.stderr.splitlines()
    assert lines[0].startswith("extract: starting") and lines[1] == f"warning: {note}", lines  # then the run


# ----------------------------------------------------------------------------- layout
class _TinyLW(LayerwiseModel):
    """A LayerwiseModel (so the layout machinery applies) that records its input's layout."""

    layer_names = ("conv", "pool")

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv3d(3, 8, kernel_size=3, padding=1)
        self.conv2 = nn.Conv3d(8, 8, kernel_size=3, padding=1)
        self.seen: List[bool] = []

    def _record(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous())
        return x

    def _steps(self) -> List[Step]:
        return [
            (None, self._record),
            ("conv", lambda x: self.conv2(torch.relu(self.conv(x)))),
            ("pool", lambda x: x.mean(dim=(2, 3, 4))),
        ]


@pytest.fixture
def tiny_lw(monkeypatch):
    name = "tiny_lw"
    if name not in _REGISTRY:
        register_model(ModelSpec(
            name=name, builder=_TinyLW, checkpoints=(),
            preprocessing=Preprocessing(clip_len=4, stride=2, resize=(32, 32), crop_size=24, divide_by=255.0),
            layers=(LayerSpec("conv", (8, 4, 24, 24)), LayerSpec("pool", (8,))),
            default_layer="pool", input_size=(4, 24, 24), description="test-only"))
    monkeypatch.setitem(_layout.DEFAULT_LAYOUTS["cpu"], name, _layout.CHANNELS_LAST_3D)
    yield name
    _REGISTRY.pop(name, None)


def test_layout_setting_is_honoured_and_stored(tiny_lw):
    m = create_model(tiny_lw)
    assert get_inference_layout(m) == "channels_last_3d"  # the table's default for this model
    x = torch.rand(2, 3, 4, 24, 24)
    extract_layers(m, x, "pool")
    assert m.seen == [True]
    assert m.conv.weight.is_contiguous(memory_format=torch.channels_last_3d)
    set_inference_layout(m, "contiguous")
    extract_layers(m, x, "pool")
    assert m.seen == [True, False] and m.conv.weight.is_contiguous()
    set_inference_layout(m, None)
    assert get_inference_layout(m) == "channels_last_3d"
    with pytest.raises(ValueError, match="channels_last_3d"):
        set_inference_layout(m, "nhwc")


def test_pipeline_equals_direct_with_channels_last(tiny_lw, tmp_path):
    from c3dfeat.pipeline import extract
    from c3dfeat.sampling import SamplingConfig, sample_clips
    from c3dfeat.store import FeatureFile
    from c3dfeat.transforms import ClipTransform
    from c3dfeat.video import open_video
    from tests.synth import make_video

    v = make_video(tmp_path / "v" / "x.mp4", 13, size=(48, 64), fps=30, noise=20)
    make_video(tmp_path / "v" / "y.mp4", 6, size=(40, 40), fps=30, noise=20)
    out = tmp_path / "f.h5"
    extract([tmp_path / "v"], out, [(tiny_lw, ["pool", "conv"])], random_init=True, device="cpu", batch_size=4)
    ff = FeatureFile(out)
    spec = create_model(tiny_lw).spec
    clips = sample_clips(13, 30.0, SamplingConfig.from_preprocessing(spec.preprocessing))
    tf = ClipTransform(spec.preprocessing)
    with open_video(v) as r:
        xs = [tf(r.get_frames(c.indices))[0] for c in clips]
    net = create_model(tiny_lw)
    want: Dict[str, list] = {"pool": [], "conv": []}
    for s in range(0, len(xs), 4):  # full, zero-padded batches of 4, like the pipeline
        x = torch.zeros((4,) + tuple(xs[0].shape))
        x[: len(xs[s:s + 4])] = torch.stack(xs[s:s + 4])
        y = extract_layers(net, x, ["pool", "conv"])
        for k in want:
            want[k].append(y[k][: len(xs[s:s + 4])].reshape(len(xs[s:s + 4]), -1).numpy())
    assert net.seen and all(net.seen)  # the direct run computed in channels_last_3d
    for k in want:
        np.testing.assert_array_equal(ff.clips("x.mp4", tiny_lw, k), np.concatenate(want[k]))


@pytest.mark.parametrize("name,size", [("c3d", (16, 112, 112)), ("r2plus1d_18", (8, 64, 64)),
                                       ("ir_csn_152", (8, 64, 64))])
def test_layout_changes_only_float_rounding(name, size):
    torch.manual_seed(0)
    m = create_model(name)
    x = torch.randn((2, 3) + size)
    layer = "fc6" if name == "c3d" else "pool5"
    set_inference_layout(m, "contiguous")
    a = extract_layers(m, x, layer)[layer]
    set_inference_layout(m, "channels_last_3d")
    b = extract_layers(m, x, layer)[layer]
    assert a.shape == b.shape
    scale = float(a.abs().max())
    np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-4, atol=1e-5 * scale)


def test_weights_converted_inside_inference_mode_stay_ordinary_tensors(tiny_lw):
    """extract_layers runs in inference mode; the lazy weight conversion must not leave
    inference tensors behind (a later forward with autograd on would fail)."""
    m = create_model(tiny_lw)
    x = torch.rand(1, 3, 4, 24, 24)
    extract_layers(m, x, "pool")  # converts the weights to channels_last_3d, in inference mode
    assert not m.conv.weight.is_inference()
    y = m.forward_layers(x.requires_grad_(), ["pool"])["pool"]  # autograd on
    y.sum().backward()
    assert x.grad is not None


def test_a_cpu_run_uses_no_more_torch_threads_than_its_cpu_quota_allows(monkeypatch):
    from c3dfeat.pipeline.run import prepare_runtime

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        monkeypatch.setattr(runtime, "usable_cores", lambda: 1)  # e.g. a pod limited to one CPU
        prepare_runtime(torch.device("cpu"), allow_tf32=False)
        assert torch.get_num_threads() == 1
        monkeypatch.setattr(runtime, "usable_cores", lambda: 8)  # more than asked: left as set
        prepare_runtime(torch.device("cpu"), allow_tf32=False)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
