"""`extract(..., engine="ray", ray_address=...)` on a two-node Ray cluster started on this machine.

The module fixture runs `ray start --head` (1 CPU) and a second `ray start --address ...` (1 CPU,
its own resources, its own temp dir), and stops exactly the processes those two commands started.
With one CPU per node, the inference actor holds one node's CPU and every decode task runs on
the other node: both nodes work. The second node also declares one GPU, which its torch (this
machine's CPU build) cannot use. Tests:

* the cluster's file equals the in-process file, dataset by dataset;
* `--device cuda` there stops with a one-line ConfigError naming the node, not Ray's ActorDiedError;
* (slow) the driver SIGKILLed mid-run (writer open): rerunning the same call resumes, and the
  file equals the uninterrupted in-process run.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import pytest

from c3dfeat.errors import ConfigError
from c3dfeat.pipeline import extract
from tests._extract_tiny import tiny_models  # noqa: F401  (fixture)
from tests.synth import make_broken, make_video
from tests.test_resume import _committed
from tests.test_store import _assert_same_datasets

ray = pytest.importorskip("ray")
pytest.importorskip("av")

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("tiny_models")]
REPO = Path(__file__).resolve().parents[1]
MODELS = [("tiny3d", ["conv", "input"])]
OPTS = dict(random_init=True, device="cpu", batch_size=2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pids_mentioning(marker: str, open_files: bool = False) -> List[int]:
    """Processes whose command line contains `marker` (our cluster's unique temp dir), or with
    `open_files` that hold a file under it open: Ray's agents rename themselves
    (``ray::DashboardAgent``) and, missed, outlived the cluster by ~90 s."""
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit() and int(p.name) != os.getpid():
            try:
                if marker in (p / "cmdline").read_bytes().decode(errors="replace") or open_files and any(
                        marker in os.readlink(fd) for fd in (p / "fd").iterdir()):
                    pids.append(int(p.name))
            except OSError:
                continue
    return pids


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if ray.is_initialized():
        ray.shutdown()
    ray_bin = str(Path(sys.executable).with_name("ray"))
    head_dir = tmp_path_factory.mktemp("rh")  # short: Ray's socket paths must fit in 107 bytes
    node_dir = tmp_path_factory.mktemp("rn")
    port = _free_port()
    # Nodes' workers import the test models (they unpickle them) and run them slowly enough for
    # the driver-kill test to land mid-run.
    # A throw-away cluster on 127.0.0.1: no token authentication (real clusters keep it, docs/scale.md).
    auth = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"  # for this process's driver too
    env = dict(os.environ, PYTHONPATH=str(REPO), TINY3D_SLEEP="0.02", RAY_USAGE_STATS_ENABLED="0")
    common = ["--num-cpus", "1", "--disable-usage-stats"]
    try:
        subprocess.run([ray_bin, "start", "--head", "--port", str(port), "--temp-dir", str(head_dir),
                        "--include-dashboard=false", *common], env=env, check=True, capture_output=True, timeout=120)
        subprocess.run([ray_bin, "start", "--address", f"127.0.0.1:{port}", "--temp-dir", str(node_dir),
                        "--resources", json.dumps({"second_node": 1}), "--num-gpus", "1", *common],
                       env=env, check=True, capture_output=True, timeout=120)
        yield f"127.0.0.1:{port}"
    finally:
        if auth is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = auth
        pids = _pids_mentioning(str(head_dir)) + _pids_mentioning(str(node_dir))
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 2  # the GCS and raylet take longer than that on SIGTERM: killed below
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
            time.sleep(0.2)
        # What is left, and the agents (they do not stop on SIGTERM within seconds).
        pids += _pids_mentioning(str(head_dir), open_files=True) + _pids_mentioning(str(node_dir), open_files=True)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("cluster_videos")
    for i in range(6):
        # the last video is long (99 clips): the run lasts a few seconds on the cluster
        make_video(d / f"v{i}.mp4", 200 if i == 5 else 6 + 3 * i, size=(32, 32), noise=10)
    make_broken(d, "text")
    return d


@pytest.fixture(scope="module")
def reference(videos, tmp_path_factory):
    from tests import _extract_tiny

    _extract_tiny.register()
    out = tmp_path_factory.mktemp("cluster_ref") / "ref.h5"
    extract([videos], out, MODELS, **OPTS)
    return out


def test_two_node_cluster_equals_in_process(cluster, videos, reference, tmp_path):
    out = tmp_path / "cluster.h5"
    report = extract([videos], out, MODELS, engine="ray", ray_address=cluster, **OPTS)
    assert not ray.is_initialized()  # extract connected itself and disconnected at the end
    _assert_same_datasets(out, reference)
    assert report.ok == 6 and [v for v, _ in report.failed] == ["text.mp4"]


def test_a_gpu_its_nodes_torch_cannot_use_stops_the_run_naming_the_node(cluster, videos, tmp_path):
    with pytest.raises(ConfigError) as e:
        extract([videos], tmp_path / "gpu.h5", MODELS, engine="ray", ray_address=cluster, random_init=True,
                device="cuda", batch_size=2)
    assert re.fullmatch(r"--device cuda: Ray gave an inference actor a GPU on node \S+, but torch \S+ there cannot "
                        r"use it: it sees no usable NVIDIA GPU; .* or use --device cpu", str(e.value)), str(e.value)
    assert not ray.is_initialized()


_DRIVER = (
    "import sys; sys.path.insert(0, {repo!r}); import tests._extract_tiny as t; t.register(); "
    "from c3dfeat.pipeline import extract; "
    "extract([{videos!r}], {out!r}, {models!r}, engine='ray', ray_address={address!r}, **{opts!r})"
)


@pytest.mark.slow  # ~40 s here: a second driver process and a resumed run
def test_driver_killed_then_rerun_resumes(cluster, videos, reference, tmp_path):
    out = tmp_path / "out.h5"
    code = _DRIVER.format(repo=str(REPO), videos=str(videos), out=str(out), models=MODELS, address=cluster,
                          opts=OPTS)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.monotonic()
        # As soon as the file exists: the writer is open and no clip is computed yet (a kill after
        # some commits is what test_ray.py's interrupted runs and tests/test_resume.py cover;
        # here commits come in groups, so "after 2 commits" can mean "after all of them").
        while proc.poll() is None and time.monotonic() - t0 < 180 and _committed(out) < 0:
            time.sleep(0.01)
        assert proc.poll() is None, f"the driver ended before the kill point: {proc.stderr.read()[-3000:]}"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    saved = _committed(out)
    assert 0 <= saved < 7
    report = extract([videos], out, MODELS, engine="ray", ray_address=cluster, **OPTS)
    assert report.skipped == saved
    _assert_same_datasets(out, reference)
