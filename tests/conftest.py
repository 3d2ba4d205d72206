import os

import pytest
import torch

# Two cores: keep the test process from oversubscribing them.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def rng():
    torch.manual_seed(0)
    import numpy as np

    return np.random.default_rng(0)


@pytest.fixture
def commit_each_video(monkeypatch):
    """Write every finished video at once (as before commits were grouped): for tests that use
    a "commit" event as a point in the middle of a run."""
    from c3dfeat.pipeline import assemble

    monkeypatch.setattr(assemble, "COMMIT_SECONDS", 0.0)


@pytest.fixture
def unusable_gpus(tmp_path, monkeypatch):
    """A machine with two NVIDIA GPUs (device nodes, driver 535) that torch cannot use."""
    dev = tmp_path / "dev"
    dev.mkdir()
    for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm", "null"):
        (dev / name).touch()
    version = tmp_path / "nvidia_version"
    version.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023\n"
                       "GCC version:  gcc version 12.2.0\n")
    from c3dfeat import runtime

    monkeypatch.setattr(runtime, "_DEV", dev)
    monkeypatch.setattr(runtime, "_NVIDIA_VERSION", version)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)  # the CPU wheel
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    runtime._cuda_init_error.cache_clear()  # a test may fake torch.cuda.init
    yield dev, version
    runtime._cuda_init_error.cache_clear()
