"""Decode worker processes (c3dfeat.pipeline.procdecode): same file as decode threads, a child
that dies fails only its video, children that keep dying stop the run, nothing left behind."""
from __future__ import annotations

import json
import multiprocessing
import os
import signal

import h5py
import pytest

from c3dfeat.errors import ConfigError, ExtractInterrupted
from c3dfeat.pipeline import Progress, extract, procdecode
from c3dfeat.pipeline.decode import decode_video
from c3dfeat.pipeline.procdecode import (
    AUTO_PROCESS_WORKERS,
    MAX_CONSECUTIVE_DEATHS,
    DecodeProcessError,
    resolve_worker_kind,
)
from c3dfeat.store import FeatureFile
from tests._extract_tiny import tiny_models  # noqa: F401  (fixture)
from tests.synth import make_broken, make_video
from tests.test_store import _assert_same_datasets

pytestmark = [pytest.mark.usefixtures("tiny_models"),
              pytest.mark.skipif(not procdecode.fork_available(), reason="decode processes need fork")]
pytest.importorskip("av")

MODELS = [("tiny3d", ["conv", "input"]), ("tiny3d_id", ["input"])]  # two clip shapes: one ring each


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("procs")
    for name, frames in [("a", 9), ("b", 30), ("c", 7), ("d", 12), ("e", 40)]:
        make_video(d / f"{name}.mp4", frames, size=(32, 32), noise=10)
    make_broken(d, "truncated")
    return d


def _run(d, out, **kw):
    return extract([d], out, kw.pop("models", MODELS), random_init=True, device="cpu", **kw)


def _count_batches_in_place(monkeypatch) -> list:
    """[batches run in place from a decode process's ring] per runner closed from now on."""
    from c3dfeat.pipeline.batching import BatchRunner

    counts: list = []
    close = BatchRunner.close

    def counting_close(self) -> None:
        counts.append(self.batches_in_place)
        close(self)

    monkeypatch.setattr(BatchRunner, "close", counting_close)
    return counts


def _run_attr(path) -> dict:
    with h5py.File(path, "r") as f:
        return json.loads(f.attrs["run"])


@pytest.mark.parametrize("workers,batch_size", [(1, 1), (2, 3)])
def test_processes_give_the_threads_file(tmp_path, videos, workers, batch_size, monkeypatch):
    threads, procs = tmp_path / "threads.h5", tmp_path / "procs.h5"
    rt = _run(videos, threads, workers=workers, batch_size=batch_size, worker_kind="thread")
    in_place = _count_batches_in_place(monkeypatch)
    rp = _run(videos, procs, workers=workers, batch_size=batch_size, worker_kind="process")
    # batches from one ring's consecutive buffers ran there, without a copy (pipeline.ring)
    assert len(in_place) == 2 and all(n > 0 for n in in_place), in_place
    _assert_same_datasets(procs, threads)
    _assert_same_datasets(threads, procs)
    assert (rp.ok, rp.clips, rp.failed) == (rt.ok, rt.clips, rt.failed) and rp.ok == 5
    assert [v for v, _ in rp.failed] == ["truncated.mp4"]  # a bad video is still just a failed video
    assert _run_attr(procs)["worker_kind"] == "process" and _run_attr(threads)["worker_kind"] == "thread"
    assert not multiprocessing.active_children()


def test_processes_give_the_threads_file_for_a_model_torch_resizes(tmp_path, monkeypatch):
    """A decode process runs one torch thread, the calling process several; torchvision's uint8
    resize (R(2+1)D-18's preset) rounded some pixels to another level at one thread (before
    transforms.resize_planes), so the two worker kinds gave different clips."""
    from c3dfeat.models._registry import _REGISTRY
    from tests._extract_tiny import torchvision_preset_spec

    spec = torchvision_preset_spec()
    monkeypatch.setitem(_REGISTRY, spec.name, spec)
    make_video(tmp_path / "v" / "a.mp4", 24, size=(240, 320), noise=20)  # 6 clips: 3 levels differed
    models = [("tiny3d_tv", ["input"])]
    threads, procs = tmp_path / "threads.h5", tmp_path / "procs.h5"
    _run(tmp_path / "v", threads, models=models, workers=1, batch_size=2, worker_kind="thread")
    _run(tmp_path / "v", procs, models=models, workers=1, batch_size=2, worker_kind="process")
    _assert_same_datasets(procs, threads)


def test_resume_across_worker_kinds(tmp_path, videos, commit_each_video):
    out, ref = tmp_path / "f.h5", tmp_path / "ref.h5"
    _run(videos, ref, worker_kind="thread", batch_size=1)

    def stop_after_two(p: Progress) -> None:
        if p.event == "commit" and p.videos_done >= 2:
            raise KeyboardInterrupt

    with pytest.raises(ExtractInterrupted) as e:
        _run(videos, out, worker_kind="process", progress=stop_after_two, batch_size=1)
    assert not multiprocessing.active_children()  # children stopped mid-video are gone
    assert 2 <= e.value.saved < 6
    rep = _run(videos, out, worker_kind="thread", batch_size=1)
    assert rep.skipped == e.value.saved
    _assert_same_datasets(out, ref)


def _kill_child_on(names, monkeypatch):
    """Patch decode_video (before the fork, so children inherit it) to SIGKILL the decoding
    process itself after the first clip of the videos named in `names`."""
    def dying_decode(task, models, decoder="pyav", **kw):
        for n, msg in enumerate(decode_video(task, models, decoder, **kw)):
            if task.path.stem in names and n == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            yield msg

    monkeypatch.setattr(procdecode, "decode_video", dying_decode)


def test_a_child_that_dies_fails_its_video_and_the_run_goes_on(tmp_path, videos, monkeypatch):
    ref = tmp_path / "ref.h5"
    _run(videos, ref, worker_kind="thread", workers=2)
    _kill_child_on({"b"}, monkeypatch)
    out = tmp_path / "f.h5"
    rep = _run(videos, out, worker_kind="process", workers=2)
    failed = dict(rep.failed)
    assert set(failed) == {"b.mp4", "truncated.mp4"} and rep.ok == 4
    assert "decoder process died with signal 9 (SIGKILL)" in failed["b.mp4"]
    with FeatureFile(out) as f, FeatureFile(ref) as r:
        assert f.video_ids == r.video_ids  # input order kept
        for vid in ("a.mp4", "c.mp4", "d.mp4", "e.mp4"):  # the others are untouched
            for model, layer in (("tiny3d", "conv"), ("tiny3d_id", "input")):
                assert (f.clips(vid, model, layer) == r.clips(vid, model, layer)).all()
    assert not multiprocessing.active_children()
    monkeypatch.undo()
    rep = _run(videos, out, retry_failed=True)  # a later run can try it again
    assert "b.mp4" not in dict(rep.failed)


def test_children_dying_again_and_again_stop_the_run(tmp_path, videos, monkeypatch):
    _kill_child_on({"a", "b", "c", "d", "e"}, monkeypatch)
    with pytest.raises(DecodeProcessError, match=f"{MAX_CONSECUTIVE_DEATHS} decode processes in a row died"):
        _run(videos, tmp_path / "f.h5", worker_kind="process", workers=1)
    assert not multiprocessing.active_children()
    with FeatureFile(tmp_path / "f.h5") as ff:
        assert ff.state == "incomplete"  # a stopped run, resumable, not a finished one


def test_an_exception_that_does_not_pickle_still_arrives(tmp_path, videos, monkeypatch):
    class Unpicklable(Exception):
        def __reduce__(self):
            raise TypeError("no")

    def broken(task, models, decoder="pyav", **kw):
        raise Unpicklable("our bug")
        yield  # pragma: no cover

    monkeypatch.setattr(procdecode, "decode_video", broken)
    with pytest.raises(DecodeProcessError, match="our bug"):  # the child's traceback, as text
        _run(videos, tmp_path / "f.h5", worker_kind="process", workers=1)
    assert not multiprocessing.active_children()


def test_worker_kind_choices():
    assert resolve_worker_kind("thread", "cuda", 16) == "thread"
    assert resolve_worker_kind("process", "cpu", 1) == "process"
    # auto (Linux: fork is there): processes where decoding is the bottleneck
    assert resolve_worker_kind("auto", "cuda", 2) == "process"
    assert resolve_worker_kind("auto", "cpu", AUTO_PROCESS_WORKERS + 1) == "process"
    assert resolve_worker_kind("auto", "cpu", AUTO_PROCESS_WORKERS) == "thread"
    with pytest.raises(ConfigError, match="worker_kind must be one of"):
        resolve_worker_kind("fiber")


def test_auto_is_recorded_as_what_ran(tmp_path, videos):
    _run(videos, tmp_path / "a.h5", workers=2)
    assert _run_attr(tmp_path / "a.h5")["worker_kind"] == "thread"  # a CPU model, 2 workers
    _run(videos, tmp_path / "b.h5", workers=AUTO_PROCESS_WORKERS + 1)
    assert _run_attr(tmp_path / "b.h5")["worker_kind"] == "process"


def test_a_signal_to_a_decode_process_alone_changes_nothing(tmp_path, videos, commit_each_video):
    """SIGTERM/SIGINT reaching a child (a group signal, `pkill -f` matching the parent's command
    line, which children share) must not stop or fail anything: the parent decides."""
    import time

    sent = []

    def signal_children(p: Progress) -> None:
        if p.event == "commit" and not sent:
            for child in multiprocessing.active_children():
                os.kill(child.pid, signal.SIGTERM)
                os.kill(child.pid, signal.SIGINT)
                sent.append(child.pid)
            time.sleep(0.2)  # let the signals land before the run goes on

    rep = _run(videos, tmp_path / "f.h5", worker_kind="process", workers=2, batch_size=1, progress=signal_children)
    assert sent, "no decode process was running at the first commit"
    assert rep.ok == 5 and [v for v, _ in rep.failed] == ["truncated.mp4"]


def _tiny_prepared():
    import torch

    from c3dfeat.pipeline.plan import ModelRequest, prepare_model

    return prepare_model(ModelRequest("tiny3d", ("input",)), device=torch.device("cpu"), random_init=True)


def test_lent_buffers_come_back_in_any_order_and_held_ones_stay_intact(videos):
    """The parent holds some clips (views of the child's buffers) while it releases others out
    of order; the child writes its next clips only into released buffers."""
    from c3dfeat.pipeline.decode import ClipReady, VideoTask

    model = _tiny_prepared()
    task = VideoTask(0, "e.mp4", videos / "e.mp4")  # 19 clips
    expected = [m.tensor for m in decode_video(task, [model], "pyav") if isinstance(m, ClipReady)]
    proc = procdecode.DecodeProcess([model], "pyav", None, batch_size=1)
    assert proc.slots == [procdecode.MIN_SLOTS]
    try:
        held, waiting, got = [], [], []
        for msg in proc.decode(task):
            if not isinstance(msg, ClipReady):
                continue
            assert msg.release is not None
            got.append(msg.clip)
            if msg.clip in (1, 2):  # kept to the end, while the buffers around them are reused
                held.append(msg)
                continue
            assert msg.tensor.equal(expected[msg.clip])
            waiting.append(msg)
            if len(waiting) == 2:  # every buffer is in our hands now: give two back, newest first
                waiting.pop().release()
                waiting.pop().release()
        assert got == list(range(len(expected)))
        for msg in held:
            assert msg.tensor.equal(expected[msg.clip]), f"clip {msg.clip}'s buffer was overwritten"
            msg.release()
    finally:
        proc.close()


def test_a_child_out_of_buffers_is_reported_starved(videos):
    from c3dfeat.pipeline.decode import ClipReady, VideoEnd, VideoTask

    proc = procdecode.DecodeProcess([_tiny_prepared()], "pyav", None, batch_size=1)
    try:
        lent = []
        for msg in proc.decode(VideoTask(0, "e.mp4", videos / "e.mp4")):
            if isinstance(msg, ClipReady):
                lent.append(msg)
                if len(lent) == procdecode.MIN_SLOTS:
                    # We hold every buffer: the child took the last one before it sent this clip.
                    assert proc.starved()
                    for held in lent:
                        held.release()
                    lent = []
            elif isinstance(msg, VideoEnd):
                for held in lent:
                    held.release()
                assert not proc.starved()  # the child is idle and every buffer is back
    finally:
        proc.close()


def test_a_batch_larger_than_the_ring_does_not_deadlock(tmp_path, videos, monkeypatch):
    """4 buffers per child, batches of 16: the scheduler must copy and give back the clips it
    holds before it waits, or the child and the scheduler wait for each other forever."""
    import threading

    monkeypatch.setattr(procdecode, "RING_BYTES", 1)  # rings of MIN_SLOTS buffers
    threads, procs = tmp_path / "threads.h5", tmp_path / "procs.h5"
    _run(videos, threads, workers=1, batch_size=16, worker_kind="thread")
    done: list = []
    t = threading.Thread(target=lambda: done.append(
        _run(videos, procs, workers=1, batch_size=16, worker_kind="process")), daemon=True)
    t.start()
    t.join(timeout=120)
    assert done, "extraction with decode processes deadlocked (clips held in a batch, child waiting for a buffer)"
    assert done[0].ok == 5
    _assert_same_datasets(procs, threads)


def test_stopping_while_clips_are_lent_is_prompt(tmp_path, videos, monkeypatch):
    """Ctrl-C while the scheduler holds a child's last buffers (the child waits for one, its
    thread waits on the pipe): the buffers go back, so the run stops at once, not after the
    shutdown timeout."""
    import time

    from c3dfeat.pipeline import scheduler as scheduler_module

    monkeypatch.setattr(procdecode, "RING_BYTES", 1)  # rings of MIN_SLOTS buffers
    monkeypatch.setattr(scheduler_module, "SHUTDOWN_SECONDS", 60.0)

    def interrupt_instead(self) -> None:
        if any(proc.starved() for proc in self._procs):  # we hold its buffers: stop right here
            raise KeyboardInterrupt

    monkeypatch.setattr(scheduler_module.LocalScheduler, "_give_back_if_starved", interrupt_instead)
    long_one = tmp_path / "in"
    long_one.mkdir()
    (long_one / "e.mp4").symlink_to(videos / "e.mp4")  # 19 clips: the child needs a 5th buffer
    t0 = time.monotonic()
    with pytest.raises(ExtractInterrupted):
        _run(long_one, tmp_path / "f.h5", workers=1, batch_size=16, worker_kind="process",
             models=[("tiny3d", ["input"])])  # one model: nothing unsent when the child waits
    assert time.monotonic() - t0 < 30, "the run waited for the shutdown timeout"
    assert not multiprocessing.active_children()


def test_opencv_resize_in_decode_processes_equals_the_reference(tmp_path, monkeypatch):
    """C3D's resize is cv2.resize once checked (c3dfeat.resize); children forked after the check
    use it too. Threads with the numpy reference, processes with OpenCV: the same file."""
    from c3dfeat import resize

    assert resize.resize_engine() == "opencv"  # opencv-python-headless is a dependency
    make_video(tmp_path / "v" / "x.mp4", 26, size=(48, 64), noise=30)
    make_video(tmp_path / "v" / "y.mp4", 17, size=(40, 72), noise=30)
    reference, forked = tmp_path / "numpy.h5", tmp_path / "opencv.h5"
    models = [("c3d", ["fc6"])]
    with monkeypatch.context() as m:
        m.setattr(resize, "_engine", False)  # the numpy reproduction, in this process's threads
        _run(tmp_path / "v", reference, models=models, workers=2, batch_size=2, worker_kind="thread")
    in_place = _count_batches_in_place(monkeypatch)
    _run(tmp_path / "v", forked, models=models, workers=2, batch_size=2, worker_kind="process")
    _assert_same_datasets(forked, reference)
    assert in_place[0] > 0  # C3D's real forward pass on a ring's memory: the same bits
    with FeatureFile(forked) as f:
        assert f.clips("x.mp4", "c3d", "fc6").shape == (3, 4096)


class _Sentinel:
    """Garbage in a reference cycle whose finalizer says in which process it ran."""

    def __init__(self, log) -> None:
        self.log = log
        self.me = self

    def __del__(self) -> None:
        with open(self.log, "a") as f:
            f.write(f"{os.getpid()}\n")


def _decode_all(proc, videos) -> int:
    from c3dfeat.pipeline.decode import ClipReady, VideoTask

    n = 0
    for msg in proc.decode(VideoTask(0, "a.mp4", videos / "a.mp4")):
        if isinstance(msg, ClipReady):
            msg.release()
            n += 1
    return n


@pytest.fixture
def collecting_children(monkeypatch):
    """Decode processes that run their garbage collector before each video, as they will sooner or
    later; the parent's collector off while a test makes garbage (it is back on afterwards)."""
    import gc

    def collecting_decode(task, models, decoder="pyav", **kw):
        gc.collect()
        yield from decode_video(task, models, decoder, **kw)

    monkeypatch.setattr(procdecode, "decode_video", collecting_decode)  # inherited by the fork
    gc.disable()
    yield
    gc.enable()


def test_a_decode_process_never_collects_what_it_inherited(tmp_path, videos, collecting_children, monkeypatch):
    """An object owning native threads, destroyed in a forked child, can wait forever for threads
    that do not exist there (a PyAV decoder's slice threads hung a CI run): garbage the child
    inherits is never collected there, not even by a collection at its very start (the fork is
    made frozen); it stays the parent's to collect, and the fork did not pay for collecting it."""
    import gc

    child_main = procdecode._child_main

    def collecting_first(*args):
        gc.collect()  # before _child_main's own gc.freeze
        child_main(*args)

    monkeypatch.setattr(procdecode, "_child_main", collecting_first)  # inherited by the fork
    log = tmp_path / "finalized"
    _Sentinel(log)  # garbage: only the cycle collector frees it
    proc = procdecode.DecodeProcess([_tiny_prepared()], "pyav", None, batch_size=1)
    try:
        assert _decode_all(proc, videos) > 0
    finally:
        proc.close()
    assert not log.exists()  # nothing was finalized in the child, nor here by the fork
    gc.collect()
    assert log.read_text().split() == [str(os.getpid())]


def test_decode_processes_forked_at_once_from_two_threads_fork_one_at_a_time(monkeypatch):
    """Decode threads replacing dead children at the same moment: one thread's thaw must not
    come between the other's freeze and fork."""
    import gc
    import threading
    import time
    import types

    events: list = []

    def freeze() -> None:
        events.append("freeze")
        time.sleep(0.05)
        gc.freeze()

    def unfreeze() -> None:
        events.append("unfreeze")
        gc.unfreeze()

    monkeypatch.setattr(procdecode, "gc", types.SimpleNamespace(freeze=freeze, unfreeze=unfreeze, collect=gc.collect))
    procs: list = []
    forks = [threading.Thread(target=lambda: procs.append(
        procdecode.DecodeProcess([_tiny_prepared()], "pyav", None, batch_size=1))) for _ in range(2)]
    for t in forks:
        t.start()
    for t in forks:
        t.join(timeout=60)
    procdecode.close_all(procs)
    assert len(procs) == 2 and events == ["freeze", "unfreeze"] * 2


def test_closing_decode_processes_asks_them_all_before_waiting_for_any(monkeypatch):
    """The end of a run does not wait for each child's exit in turn."""
    events = []
    procs = [procdecode.DecodeProcess([_tiny_prepared()], "pyav", None, batch_size=1) for _ in range(3)]
    ask, wait = procdecode.DecodeProcess._ask_to_stop, procdecode.DecodeProcess._wait_stopped
    monkeypatch.setattr(procdecode.DecodeProcess, "_ask_to_stop",
                        lambda self, kill: events.append("ask") or ask(self, kill))
    monkeypatch.setattr(procdecode.DecodeProcess, "_wait_stopped",
                        staticmethod(lambda proc, conn: events.append("wait") or wait(proc, conn)))
    children = [p._process for p in procs]
    procdecode.close_all(procs)
    assert events == ["ask"] * 3 + ["wait"] * 3
    assert all(c.exitcode == 0 for c in children)  # stopped politely, all of them


def test_a_decode_process_hands_its_clips_over_in_groups(tmp_path, videos, monkeypatch):
    """One queue item per pipe message of clips, not one per clip: with many children on one
    queue, per-clip hand-overs dominated the calling process's CPU (docs/extract.md)."""
    from c3dfeat.pipeline import scheduler as scheduler_module
    from c3dfeat.pipeline.decode import ClipReady

    items: list = []
    put = scheduler_module.LocalScheduler._put
    monkeypatch.setattr(scheduler_module.LocalScheduler, "_put", lambda self, msg: items.append(msg) or put(self, msg))
    rep = _run(videos, tmp_path / "f.h5", workers=2, batch_size=3, worker_kind="process")
    groups = [m for m in items if isinstance(m, list)]
    assert not [m for m in items if isinstance(m, ClipReady)]  # no clip travels alone
    assert all(isinstance(c, ClipReady) for g in groups for c in g)
    assert sum(len(g) for g in groups) == rep.clips and max(len(g) for g in groups) > 1


def test_a_decode_process_computes_each_clip_straight_into_its_buffer(tmp_path, videos, monkeypatch):
    """No clip tensor of its own and no copy: every clip a child sends is the ring buffer it was
    computed into (decode_video's clip_buffer); the file is unchanged (the threads test above)."""
    from c3dfeat.pipeline.decode import ClipReady

    def checking_decode(task, models, decoder="pyav", clip_buffer=None, **kw):
        assert clip_buffer is not None, "the child did not hand out its buffers"
        handed = {}

        def remembering(m):
            handed[m] = clip_buffer(m)
            return handed[m]

        for msg in decode_video(task, models, decoder, clip_buffer=remembering, **kw):
            if isinstance(msg, ClipReady):
                assert msg.tensor.data_ptr() == handed.pop(msg.model).data_ptr(), "a clip was copied"
            yield msg

    monkeypatch.setattr(procdecode, "decode_video", checking_decode)  # inherited by the fork
    rep = _run(videos, tmp_path / "f.h5", workers=2, batch_size=3, worker_kind="process")
    assert rep.ok == 5 and rep.clips > 0
