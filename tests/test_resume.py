"""Kill an extraction with SIGKILL at several points, rerun the same command, compare with an
uninterrupted run: every dataset must be equal (bit for bit)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from c3dfeat.errors import StoreError
from c3dfeat.store import FeatureFile
from tests._extract_tiny import tiny_models  # noqa: F401  (fixture)
from tests.synth import make_broken, make_video
from tests.test_store import _assert_same_datasets

pytest.importorskip("av")
pytest.importorskip("decord")

REPO = Path(__file__).resolve().parents[1]
_MAIN = (
    "import sys; sys.path.insert(0, {repo!r}); import tests._extract_tiny as t; t.register(); "
    "from c3dfeat.cli import main; sys.argv[0] = 'c3dfeat'; main()"
)


def _cmd(videos: Path, out: Path):
    return [sys.executable, "-c", _MAIN.format(repo=str(REPO)), "extract", str(videos), "-o", str(out),
            "--model", "tiny3d:conv,input", "--random-init", "--device", "cpu", "--batch-size", "2", "-q",
            "--worker-kind", "process"]  # killed with decode processes running: they must go too


def _committed(out: Path) -> int:
    try:
        with FeatureFile(out) as ff:
            return ff.num_videos
    except (StoreError, OSError, KeyError):
        return -1


def _run_until(cmd, out: Path, condition, timeout: float = 120.0) -> None:
    """Start `cmd`, SIGKILL it as soon as `condition(out)` holds (fails if it ends first)."""
    env = dict(os.environ, TINY3D_SLEEP="0.04")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    try:
        while proc.poll() is None and time.monotonic() - t0 < timeout:
            if condition(out):
                children = _children(proc.pid)  # the decode processes
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                _assert_gone(children)  # they die with their parent, mid-video or idle
                KILLED_CHILDREN.extend(children)
                return
            time.sleep(0.01)
        raise AssertionError(f"run ended (rc={proc.poll()}) before the kill point: {proc.stderr.read()[-3000:]}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


KILLED_CHILDREN: list = []  # decode processes seen at the kills (the test checks there were some)


def _children(pid: int) -> list:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie has exited (whoever adopted it may not reap it at once)


def _assert_gone(pids: list, timeout: float = 10.0) -> None:
    t0 = time.monotonic()
    while any(_alive(p) for p in pids) and time.monotonic() - t0 < timeout:
        time.sleep(0.05)
    assert not [p for p in pids if _alive(p)], "decode processes outlived their killed parent"


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("resume")
    for i in range(10):
        # v5 is long (39 clips): the third kill lands in the middle of it. Not among the last
        # 4, which 2 decoders take largest first (scheduler.claim_order)
        make_video(d / f"v{i}.mp4", 80 if i == 5 else 6 + 3 * i, size=(32, 32), noise=10)
    make_broken(d, "text")  # a failed video is committed too
    return d


@pytest.mark.usefixtures("tiny_models")
def test_sigkill_at_several_points_then_resume_equals_uninterrupted(tmp_path, videos):
    from c3dfeat.pipeline import extract

    ref = tmp_path / "ref.h5"
    extract([videos], ref, [("tiny3d", ["conv", "input"])], random_init=True, device="cpu", batch_size=2)
    out = tmp_path / "out.h5"
    cmd = _cmd(videos, out)
    # 1) as soon as the file exists (before or during the first commits)
    _run_until(cmd, out, lambda p: p.exists())
    # 2) after at least 2 committed videos
    _run_until(cmd, out, lambda p: _committed(p) >= 2)
    n2 = _committed(out)
    assert n2 >= 2
    assert KILLED_CHILDREN, "no decode process was running at the kills: the orphan check saw nothing"
    # 3) in the middle of the long video: text.mp4, v0..v4 committed, v5 (~0.8 s) being extracted
    _run_until(cmd, out, lambda p: _committed(p) >= 6)
    assert _committed(out) == 6
    with FeatureFile(out) as ff:  # what `c3dfeat info` reports for a killed run's file
        assert ff.state == "needs-repair", ff.state_reason
    # finish: the same command, to the end
    proc = subprocess.run(cmd, env=dict(os.environ), capture_output=True, text=True)
    # text.mp4 failed (in the first run: ids sort before v*): still exit code 3, and listed
    assert proc.returncode == 3, proc.stderr
    assert "earlier run" in proc.stderr and "text.mp4" in proc.stderr
    _assert_same_datasets(out, ref)
    with FeatureFile(out) as ff:
        assert ff.num_videos == 11 and [v for v, _ in ff.failed] == ["text.mp4"]
        assert ff.state == "complete", ff.state_reason


@pytest.mark.usefixtures("tiny_models")
def test_a_resumed_run_keeps_the_files_batch_size(tmp_path):
    """The batch size changes the features' last bits and its default can change between
    versions: without --batch-size, a resumed run uses the one the file was written with."""
    import json

    import h5py

    from c3dfeat.pipeline import extract
    from c3dfeat.runtime import default_batch_size

    d = tmp_path / "v"
    d.mkdir()
    make_video(d / "a.mp4", 9, size=(32, 32))
    out = tmp_path / "f.h5"
    kw = dict(random_init=True, device="cpu", workers=1)
    assert default_batch_size("cpu", "tiny3d") != 2
    assert extract([d], out, [("tiny3d", ["conv"])], batch_size=2, **kw).batch_size == 2
    make_video(d / "b.mp4", 9, size=(32, 32))
    resumed = extract([d], out, [("tiny3d", ["conv"])], **kw)
    assert (resumed.skipped, resumed.ok, resumed.batch_size) == (1, 1, 2)
    with h5py.File(out, "r") as f:
        assert json.loads(f.attrs["run"])["batch_size"] == 2
    fresh = extract([d], out, [("tiny3d", ["conv"])], overwrite=True, **kw)
    assert fresh.batch_size == default_batch_size("cpu", "tiny3d")
