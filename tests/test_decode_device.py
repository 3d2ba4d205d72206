"""GPU decoding as an option (`decode_device`, `--decode-device`): checked before any video is
opened, handed down to the readers, part of the compared provenance. No GPU needed: where a test
needs "a machine that can decode on cuda", it fakes the machine check and the reader, and the
real option plumbing (api → scheduler → decode_video → open_video) runs."""
from __future__ import annotations

import json
from typing import List

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

import c3dfeat.video as video
from c3dfeat.cli import cli
from c3dfeat.errors import ConfigError, ProvenanceMismatchError
from c3dfeat.pipeline import extract
from c3dfeat.store import FeatureFile, merge
from c3dfeat.video import check_decode_device, parse_decode_device
from c3dfeat.video._base import _import_backend
from tests._extract_tiny import tiny_models  # noqa: F401  (fixture)
from tests.synth import make_video

pytestmark = pytest.mark.usefixtures("tiny_models")
pytest.importorskip("av")


def _torchcodec_missing():
    try:
        _import_backend("torchcodec")
    except Exception as e:  # noqa: BLE001 - any reason it cannot load is a reason to skip
        return str(e)
    return None


TORCHCODEC_MISSING = _torchcodec_missing()
needs_torchcodec = pytest.mark.skipif(TORCHCODEC_MISSING is not None, reason=f"{TORCHCODEC_MISSING}")
no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("dd")
    make_video(d / "a.mp4", 9, size=(32, 32), noise=10)
    make_video(d / "b.mp4", 7, size=(32, 32), noise=10)
    return d


def _run(d, out, **kw):
    kw = {"random_init": True, "device": "cpu", "models": ["tiny3d"], **kw}
    return extract([d], out, kw.pop("models"), **kw)


def _features(path):
    """Ids, the compared provenance (the file's attribute, without the run attributes), features."""
    with FeatureFile(path) as ff:
        ids, x = ff.video_ids, ff.video_matrix("tiny3d", "conv")[1]
    with h5py.File(path, "r") as f:
        return ids, json.loads(f.attrs["provenance"]), x


@pytest.fixture
def fake_gpu(monkeypatch):
    """A machine that passes the decode-device check, and readers that record the device they are
    asked for and decode on the CPU (so the features are the CPU's: only the plumbing is tested)."""
    devices: List[str] = []
    real = video.open_video

    def open_on(path, backend="pyav", threads=0, device="cpu"):
        devices.append(device)
        return real(path, backend=backend, threads=threads, device="cpu")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr("c3dfeat.video._device._import_backend", lambda backend: None)
    monkeypatch.setattr("c3dfeat.video._device._probe", lambda decoders, device: None)
    monkeypatch.setattr(video, "open_video", open_on)
    return devices


# ----------------------------------------------------------------------------- the value
def test_decode_device_syntax():
    assert [parse_decode_device(d) for d in ("cpu", "cuda", "cuda:1", "CUDA:01")] == ["cpu", "cuda", "cuda:1",
                                                                                     "cuda:1"]
    for bad in ("gpu", "mps", "cuda:", "cpu:0", "auto", ""):
        with pytest.raises(ConfigError, match="cpu, cuda or cuda:N"):
            parse_decode_device(bad)


@pytest.mark.parametrize("decoder", ["pyav", "decord"])
def test_cuda_with_a_cpu_decoder_is_a_config_error(tmp_path, videos, decoder):
    out = tmp_path / "f.h5"
    with pytest.raises(ConfigError, match="needs the torchcodec decoder.*--decoder torchcodec") as e:
        _run(videos, out, decoder=decoder, decode_device="cuda")
    assert "\n" not in str(e.value) and not out.exists()  # one line; before the file (or a video) is opened


@no_gpu
@needs_torchcodec
def test_cuda_without_a_gpu_is_a_config_error_before_any_video(tmp_path, videos, monkeypatch):
    opened = []
    monkeypatch.setattr(video, "open_video", lambda *a, **k: opened.append(a))
    out = tmp_path / "f.h5"
    with pytest.raises(ConfigError, match="sees no CUDA GPU"):
        _run(videos, out, decoder="torchcodec", decode_device="cuda")
    assert not opened and not out.exists()


@no_gpu
@needs_torchcodec
def test_torchcodec_without_cuda_is_refused_by_the_probe(monkeypatch):
    """With a GPU torch can see but a CPU build of torchcodec (the one installed here), the tiny
    in-memory video does not open on cuda: a ConfigError says which build to install."""
    import torchcodec

    if "+cpu" not in torchcodec.__version__:
        pytest.skip(f"torchcodec {torchcodec.__version__} may have CUDA; the probe's answer depends on the machine")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match="built without CUDA.*download.pytorch.org/whl/cu"):
        check_decode_device("cuda", "torchcodec")
    with pytest.raises(ConfigError, match="1 CUDA GPU"):
        check_decode_device("cuda:1", "torchcodec")


def test_ray_engine_refuses_gpu_decoding(tmp_path, videos):
    with pytest.raises(ConfigError, match="not supported with --engine ray"):
        _run(videos, tmp_path / "f.h5", decoder="torchcodec", decode_device="cuda", engine="ray")


def test_gpu_decoding_needs_decode_threads(tmp_path, videos, fake_gpu):
    """The machine check runs CUDA in the parent; a forked decode process could not use it."""
    with pytest.raises(ConfigError, match="worker_kind='thread'"):
        _run(videos, tmp_path / "f.h5", decoder="torchcodec", decode_device="cuda", worker_kind="process")


# ----------------------------------------------------------------------------- files
@needs_torchcodec
def test_cpu_decode_device_changes_nothing(tmp_path, videos):
    """decode_device="cpu" (the default) writes the file torchcodec wrote before the option: no
    new provenance key, so older files stay resumable."""
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    _run(videos, a, decoder="torchcodec")
    _run(videos, b, decoder="torchcodec", decode_device="cpu")
    ids_a, prov_a, x_a = _features(a)
    ids_b, prov_b, x_b = _features(b)
    assert ids_a == ids_b == ["a.mp4", "b.mp4"] and prov_a == prov_b and "decode_device" not in prov_a
    np.testing.assert_array_equal(x_a, x_b)
    rep = _run(videos, a, decoder="torchcodec", decode_device="cpu")  # resumes: nothing left to do
    assert (rep.skipped, rep.ok) == (2, 0)


@needs_torchcodec  # the fake GPU's readers decode with torchcodec on the CPU
def test_cuda_decoding_reaches_the_reader_and_the_provenance(tmp_path, videos, fake_gpu):
    out = tmp_path / "gpu.h5"
    rep = _run(videos, out, decoder="torchcodec", decode_device="cuda", workers=2)
    assert rep.ok == 2 and not rep.failed
    assert fake_gpu == ["cuda", "cuda"]  # every video was opened on the decode device
    ids, prov, _ = _features(out)
    assert ids == ["a.mp4", "b.mp4"] and prov["decode_device"] == "cuda"
    with h5py.File(out, "r") as f:
        assert json.loads(f.attrs["run"])["decode_device"] == "cuda"
    # Another GPU is the same kind of decoding: the file resumes.
    rep = _run(videos, out, decoder="torchcodec", decode_device="cuda:0")
    assert (rep.skipped, rep.ok) == (2, 0)


def test_resume_across_decode_devices_is_a_provenance_mismatch(tmp_path, videos, fake_gpu):
    cpu, gpu = tmp_path / "cpu.h5", tmp_path / "gpu.h5"
    _run(videos, cpu, decoder="torchcodec")
    _run(videos, gpu, decoder="torchcodec", decode_device="cuda")
    with pytest.raises(ProvenanceMismatchError, match='decode_device: "<absent>" != "cuda"'):
        _run(videos, cpu, decoder="torchcodec", decode_device="cuda")
    with pytest.raises(ProvenanceMismatchError, match='decode_device: "cuda" != "<absent>"'):
        _run(videos, gpu, decoder="torchcodec")
    with pytest.raises(ProvenanceMismatchError, match="decode_device"):
        merge([cpu, gpu], tmp_path / "all.h5")


# ----------------------------------------------------------------------------- CLI
def _cli(*args):
    return CliRunner().invoke(cli, ["extract", *map(str, args)])


def test_cli_decode_device_reaches_the_api(tmp_path, monkeypatch):
    import c3dfeat.pipeline as pipeline

    seen = {}

    def fake_extract(inputs, output, models, **kw):
        seen.update(kw)
        raise SystemExit(0)

    monkeypatch.setattr(pipeline, "extract", fake_extract)
    (tmp_path / "v.mp4").write_bytes(b"")
    for given, expected in ((None, "cpu"), ("cuda", "cuda"), ("CUDA:1", "cuda:1")):
        args = [tmp_path / "v.mp4", "-o", tmp_path / "f.h5"] + (["--decode-device", given] if given else [])
        res = _cli(*args)
        assert res.exit_code == 0, res.output
        assert seen["decode_device"] == expected
    import inspect

    assert inspect.signature(extract).parameters["decode_device"].default == "cpu"


def test_cli_bad_decode_device_is_one_line_exit_2(tmp_path, videos):
    res = _cli(videos, "-o", tmp_path / "f.h5", "--decode-device", "gpu")
    assert res.exit_code == 2
    assert res.output.strip() == "Error: --decode-device must be cpu, cuda or cuda:N, got 'gpu'"


def test_cli_cuda_with_pyav_is_one_line_exit_1(tmp_path, videos):
    res = _cli(videos, "-o", tmp_path / "f.h5", "--model", "tiny3d", "--random-init", "-q",
               "--decode-device", "cuda")
    assert res.exit_code == 1, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "--decoder torchcodec" in errors[0], res.output
    assert not (tmp_path / "f.h5").exists()


def test_cli_help_tells_decode_device_from_device():
    res = CliRunner().invoke(cli, ["extract", "--help"])
    assert "--decode-device cpu|cuda[:N]" in res.output and "not --device" in " ".join(res.output.split())
