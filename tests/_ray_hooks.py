"""Ray worker set-up hook for the Ray engine tests (``runtime_env["worker_process_setup_hook"]``).

Runs in every Ray worker process the tests start:

* registers the tiny test models (the actors unpickle them; decoders use their transforms), and
  `tiny3d_tv` (the tiny network on R(2+1)D-18's preprocessing);
* writes this worker's node id under ``$C3DFEAT_TEST_NODES`` (when set): the cluster test checks
  that both nodes did work;
* wraps ``c3dfeat.video.open_video`` so that the *first* time any worker reads the second window
  of a video whose file name contains ``kill-me``, that worker SIGKILLs itself mid-video — a
  flag file ``<video>.killed`` (holding the killed pid) makes it happen once per test run;
* with ``$C3DFEAT_TEST_FAULTS`` set (a folder): while ``<folder>/decoder-missing`` exists, opening
  a video raises the ConfigError a node without the decoder's package would; while
  ``<folder>/oom`` exists, the inference actor's batches raise DeviceMemoryError.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

KILL_MARK = "kill-me"


def setup() -> None:
    import torch

    # A Ray task sees OMP_NUM_THREADS=1 and, without this hook, torch runs one thread there; torch
    # imported by this hook kept the machine's count (measured: 2 vs 1). Decode tasks must run as
    # they do for users: one thread.
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 1))
    from c3dfeat.models._registry import _REGISTRY
    from tests import _extract_tiny

    _extract_tiny.register()
    spec = _extract_tiny.torchvision_preset_spec()
    _REGISTRY.setdefault(spec.name, spec)
    nodes = os.environ.get("C3DFEAT_TEST_NODES")
    if nodes:
        import ray

        Path(nodes).mkdir(parents=True, exist_ok=True)
        (Path(nodes) / ray.get_runtime_context().get_node_id()).touch()
    import c3dfeat.video as video
    from c3dfeat.errors import ConfigError, DeviceMemoryError
    from c3dfeat.pipeline.batching import BatchRunner

    if getattr(video.open_video, "_kill_hook", False):
        return
    original = video.open_video
    faults = os.environ.get("C3DFEAT_TEST_FAULTS")

    def open_video(path: Any, *args: Any, **kwargs: Any) -> Any:
        if faults and Path(faults, "decoder-missing").exists():
            raise ConfigError("test fault: this node has no decoder package")
        reader = original(path, *args, **kwargs)
        flag = Path(str(path) + ".killed")
        if KILL_MARK in Path(path).name and not flag.exists():
            get_frames = reader.get_frames
            calls = [0]

            def killing_get_frames(indices: Any) -> Any:
                calls[0] += 1
                if calls[0] == 2 and not flag.exists():  # clips of the first window are out
                    flag.write_text(str(os.getpid()))
                    os.kill(os.getpid(), signal.SIGKILL)
                return get_frames(indices)

            reader.get_frames = killing_get_frames
        return reader

    open_video._kill_hook = True  # type: ignore[attr-defined]
    video.open_video = open_video

    compute = BatchRunner.compute

    def failing_compute(self: Any, clips: Any) -> Any:
        if faults and Path(faults, "oom").exists():
            raise DeviceMemoryError("test fault: the batch does not fit")
        return compute(self, clips)

    BatchRunner.compute = failing_compute  # type: ignore[method-assign]
