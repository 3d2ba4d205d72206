"""`c3dfeat env`: what this machine offers, and why not where something is missing."""
from __future__ import annotations

import json
import os
import platform

import av
import torch
from click.testing import CliRunner

from c3dfeat import runtime
from c3dfeat.cli import cli
from c3dfeat.version import __version__


def _env(*args: str):
    res = CliRunner().invoke(cli, ["env", *args])
    assert res.exit_code == 0, res.output
    return res


def test_env_json_says_what_a_run_would_get(monkeypatch, tmp_path):
    monkeypatch.setattr(runtime, "_DEV", tmp_path)  # no GPU device nodes, whatever this machine has
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    r = json.loads(_env("--json").stdout)
    assert r["c3dfeat"] == __version__ and r["python"] == platform.python_version()
    assert r["torch"] == torch.__version__ and r["torch_cuda"] == torch.version.cuda
    assert r["gpus"] == [] and r["gpu_problem"] is None and r["gpu_decoding"] == "no usable GPU"
    assert r["cores"] == {"usable": runtime.usable_cores(), "machine": os.cpu_count()}
    assert r["decoders"]["pyav"] == {"av": av.__version__, "ffmpeg": av.ffmpeg_version_info}
    assert r["allocator"] in ("glibc", "unsupported")
    assert r["caffe_resize"].startswith(("opencv ", "numpy "))
    assert r["weights"]["downloads_to"] in r["weights"]["searched"] and r["weights"]["require_hashes"] is False


def test_env_names_the_reason_a_gpu_goes_unused_and_bad_settings(unusable_gpus, monkeypatch):
    monkeypatch.setenv("C3DFEAT_REQUIRE_HASHES", "maybe")
    monkeypatch.setenv("C3DFEAT_WEIGHTS_MIRROR", "https://mirror.example.org/c3dfeat")
    r = json.loads(_env("--json").stdout)
    assert r["gpu_problem"] == runtime.unusable_gpu_reason() and r["gpu_problem"].startswith(
        "this machine has 2 NVIDIA GPU(s) (driver 535.104.05), but torch ")
    assert r["weights"]["mirror"] == "https://mirror.example.org/c3dfeat"
    assert r["weights"]["require_hashes"].startswith("error: C3DFEAT_REQUIRE_HASHES='maybe'")
    lines = _env().stdout.splitlines()
    assert lines[2] == f"GPUs: none usable ({r['gpu_problem']})"
    assert any(line.startswith("decoders: ") and f"pyav (av {av.__version__}, ffmpeg " in line for line in lines)
    assert lines[-1].startswith("ray: ")


def test_env_reports_an_allocator_setting_a_run_would_refuse(monkeypatch):
    monkeypatch.setattr(runtime, "_state", None)  # decided again, as in a fresh process
    monkeypatch.setenv(runtime.ALLOCATOR_ENV, "bogus")
    r = json.loads(_env("--json").stdout)
    assert r["allocator"].startswith(f"error: {runtime.ALLOCATOR_ENV}='bogus'")
