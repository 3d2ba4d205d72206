"""The pipeline's seams: failure policy (bad videos vs bugs), interrupts, progress events, the
batch runner (padding, buffers, dtype), fps=0 and the engine switch."""
from __future__ import annotations

import dataclasses
import threading

import h5py
import numpy as np
import pytest
import torch

from c3dfeat.errors import ConfigError, ExtractInterrupted, NoVideosError
from c3dfeat.models import get_spec, register_model
from c3dfeat.models._registry import _REGISTRY
from c3dfeat.pipeline import Progress, extract, procdecode as procdecode_module, scheduler as scheduler_module
from c3dfeat.pipeline.batching import BatchRunner
from c3dfeat.pipeline.decode import ClipReady, VideoEnd, VideoStart, VideoTask, decode_video
from c3dfeat.pipeline.plan import ModelRequest, prepare_model
from c3dfeat.pipeline.report import ExtractReport
from c3dfeat.pipeline.run import resolve_tasks
from c3dfeat.pipeline.scheduler import LocalScheduler
from c3dfeat.store import FeatureFile
from c3dfeat.transforms import ClipTransform
from tests._extract_tiny import tiny_models  # noqa: F401  (fixture)
from tests.synth import make_broken, make_video

pytestmark = pytest.mark.usefixtures("tiny_models")
pytest.importorskip("av")

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """a, b: 32x32; c: 40x40 (so a patched transform can pick it out); sorted a < b < c."""
    d = tmp_path_factory.mktemp("pipe")
    make_video(d / "a.mp4", 9, size=(32, 32), noise=10)
    make_video(d / "b.mp4", 7, size=(32, 32), noise=10)
    make_video(d / "c.mp4", 8, size=(40, 40), noise=10)
    return d


def _run(d, out, **kw):
    kw = {"random_init": True, "device": "cpu", **kw}
    return extract([d], out, kw.pop("models", ["tiny3d"]), **kw)


# ----------------------------------------------------------------------------- failures vs bugs
@pytest.mark.parametrize("worker_kind", ["thread", "process"])
def test_bug_in_transform_stops_the_run_committed_videos_stay(tmp_path, videos, monkeypatch, worker_kind):
    original = ClipTransform.frames

    def buggy_frames(self, frames):
        if frames.shape[1] == 40:  # only c.mp4 (40x40), the last video
            raise RuntimeError("shape bug in our transform")
        return original(self, frames)

    monkeypatch.setattr(ClipTransform, "frames", buggy_frames)
    out = tmp_path / "f.h5"
    # one worker, batch 1: a and b are committed before c's crash reaches the main thread
    with pytest.raises(RuntimeError, match="shape bug") as e:
        _run(videos, out, workers=1, batch_size=1, worker_kind=worker_kind)
    if worker_kind == "thread":  # the worker's traceback
        assert "buggy_frames" in "".join(str(tb.name) for tb in e.traceback)
    else:  # the child's traceback, as a note on the same exception
        assert type(e.value) is RuntimeError and "buggy_frames" in "".join(e.value.__notes__)
    with h5py.File(out, "r") as f:  # closed cleanly: plain h5py opens it
        assert f["committed"][0] == 2
    with FeatureFile(out) as ff:
        assert ff.video_ids == ["a.mp4", "b.mp4"] and not ff.failed  # a bug is not a failed video
        assert ff.state == "incomplete"
    monkeypatch.setattr(ClipTransform, "frames", original)
    rep = _run(videos, out, workers=1, batch_size=1)  # fixed: the same command resumes
    assert (rep.skipped, rep.ok) == (2, 1)


@pytest.mark.parametrize("worker_kind", ["thread", "process"])
@pytest.mark.parametrize("error", [ValueError("bad index"), TypeError("wrong type"), KeyError("k")])
def test_any_non_read_error_propagates(tmp_path, videos, monkeypatch, error, worker_kind):
    def broken(self, frames):
        raise error

    monkeypatch.setattr(ClipTransform, "frames", broken)
    with pytest.raises(type(error)):
        _run(videos, tmp_path / "f.h5", workers=2, worker_kind=worker_kind)


def test_unreadable_videos_are_recorded_and_the_run_goes_on(tmp_path):
    d = tmp_path / "in"
    make_video(d / "good.mp4", 9, size=(32, 32))
    make_broken(d, "truncated")
    (d / "garbage.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    lst = tmp_path / "list.txt"
    lst.write_text(f"{d / 'good.mp4'}\n{d / 'garbage.mp4'}\n{d / 'truncated.mp4'}\n{d / 'missing.mp4'}\n")
    rep = _run(lst, tmp_path / "f.h5")
    assert rep.ok == 1
    failed = dict(rep.failed)
    assert set(failed) == {"in/garbage.mp4", "in/truncated.mp4", "in/missing.mp4"}
    assert "no such file" in failed["in/missing.mp4"]
    with FeatureFile(tmp_path / "f.h5") as ff:
        assert dict(ff.failed) == failed


@pytest.mark.parametrize("worker_kind", ["thread", "process"])
def test_worker_crash_reaches_the_main_thread_even_with_a_full_queue(tmp_path, videos, monkeypatch, worker_kind):
    """The crash comes after many clips, while the main thread is slow: the queue is full for
    longer than any timeout would wait, and the error still arrives."""
    def crashing_decode(task, models, decoder="pyav", **kw):  # its clips are its own, never into a buffer
        messages = decode_video(task, models, decoder)
        start = next(messages)
        n = len(start.clips[0])
        # many more clips than the queue holds
        yield dataclasses.replace(start, clips=[list(c) * 20 for c in start.clips])
        for msg in messages:
            if isinstance(msg, ClipReady):
                for k in range(20):
                    yield dataclasses.replace(msg, clip=msg.clip + k * n)
        raise AssertionError("crash after the clips")

    monkeypatch.setattr(scheduler_module, "decode_video", crashing_decode)
    monkeypatch.setattr(procdecode_module, "decode_video", crashing_decode)  # inherited by the fork
    slow = threading.Event()

    def progress(p: Progress) -> None:
        slow.wait(0.01)

    with pytest.raises(AssertionError, match="crash after the clips"):
        _run(videos, tmp_path / "f.h5", workers=1, batch_size=1, progress=progress, max_pending=1,
             worker_kind=worker_kind)


# ----------------------------------------------------------------------------- interrupts, progress
def test_ctrl_c_closes_the_file_and_reports_what_was_saved(tmp_path, videos, commit_each_video):
    out = tmp_path / "f.h5"

    def interrupt_after_first_commit(p: Progress) -> None:
        if p.event == "commit":
            raise KeyboardInterrupt

    with pytest.raises(ExtractInterrupted) as e:
        _run(videos, out, progress=interrupt_after_first_commit, workers=1)
    assert e.value.saved == 1 and e.value.report.ok == 1
    assert "1 videos saved" in str(e.value) and "resume" in str(e.value)
    with h5py.File(out, "r") as f:
        assert f["committed"][0] == 1
    with FeatureFile(out) as ff:
        assert ff.state == "incomplete" and "resume" in ff.state_reason
    rep = _run(videos, out)
    assert (rep.skipped, rep.ok) == (1, 2)
    with FeatureFile(out) as ff:
        assert ff.state == "complete"
    ref = tmp_path / "ref.h5"
    _run(videos, ref)
    with FeatureFile(out) as a, FeatureFile(ref) as b:
        for vid in b.video_ids:
            np.testing.assert_array_equal(a.clips(vid, "tiny3d", "conv"), b.clips(vid, "tiny3d", "conv"))


def test_progress_events_from_the_first_video_on(tmp_path, videos):
    events = []
    caller = threading.get_ident()

    def record(p: Progress) -> None:
        assert threading.get_ident() == caller  # always from the calling thread
        events.append(p)

    rep = _run(videos, tmp_path / "f.h5", progress=record, batch_size=2)
    kinds = [p.event for p in events]
    assert set(kinds) == {"start", "batch", "commit"}
    assert kinds.index("start") < kinds.index("batch") < kinds.index("commit")
    assert kinds.count("start") == 3 and kinds.count("commit") == 3
    assert kinds.count("batch") >= rep.clips // 2
    first_batch = events[kinds.index("batch")]
    assert first_batch.videos_done == 0 and first_batch.clips_done > 0 and first_batch.clips_planned > 0
    assert all(p.videos_total == 3 for p in events)
    assert [p.clips_done for p in events] == sorted(p.clips_done for p in events)
    last = events[-1]
    assert (last.videos_done, last.clips_done, last.clips_planned, last.failed) == (3, rep.clips, rep.clips, 0)
    assert last.clips_per_second > 0 and last.current == "c.mp4"


def test_failed_video_leaves_clips_planned_consistent(tmp_path):
    d = tmp_path / "in"
    make_video(d / "good.mp4", 9, size=(32, 32))
    make_broken(d, "truncated_faststart")  # opens (clips planned), fails in the middle
    events = []
    rep = _run(d, tmp_path / "f.h5", progress=events.append)
    assert len(rep.failed) == 1
    last = events[-1]
    assert (last.videos_done, last.failed) == (2, 1)
    # the failed video's clips that will never come are no longer planned: the bar ends full
    assert last.clips_planned == last.clips_done == rep.clips
    assert max(p.clips_planned for p in events) > rep.clips  # they were planned at first


def test_no_video_in_the_inputs(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoVideosError, match="empty"):
        _run(tmp_path / "empty", tmp_path / "f.h5")
    assert not (tmp_path / "f.h5").exists()


def test_engine_choice(tmp_path, videos):
    with pytest.raises(ConfigError, match="engine"):
        _run(videos, tmp_path / "f.h5", engine="spark")
    with pytest.raises(ConfigError, match="ray_address"):
        _run(videos, tmp_path / "f.h5", ray_address="auto")


def test_ray_engine_takes_exactly_extracts_arguments():
    """extract(engine="ray") hands every argument to extract_ray by name: the two signatures are
    written twice (typed, with defaults), so an option added to one must be added to the other."""
    import inspect

    from c3dfeat.pipeline.api import extract as local_extract
    from c3dfeat.pipeline.ray_engine import extract_ray

    local = {k: v for k, v in inspect.signature(local_extract).parameters.items() if k not in ("engine", "crop")}
    ray = dict(inspect.signature(extract_ray).parameters)
    assert list(ray) == list(local)
    assert [(p.kind, p.default) for p in ray.values()] == [(p.kind, p.default) for p in local.values()]


# ----------------------------------------------------------------------------- batching, dtype
def _clips(n, seed=0, shape=(1, 3, 4, 24, 24)):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(shape, generator=g) for _ in range(n)]


def test_one_clip_the_device_cannot_hold_says_what_else_to_try(monkeypatch):
    from c3dfeat.errors import DeviceMemoryError
    from c3dfeat.pipeline import batching

    def out_of_memory(net, x, layers):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB.")

    model = prepare_model(ModelRequest("tiny3d", ("conv",)), device=CPU, random_init=True)
    monkeypatch.setattr(batching, "extract_layers", out_of_memory)
    with pytest.raises(DeviceMemoryError) as e:
        BatchRunner(model, 1, CPU).compute(_clips(1))
    assert str(e.value) == ("tiny3d: a batch of 1 clip(s) does not fit in the memory of cpu (CUDA out of memory. "
                            "Tried to allocate 9.00 GiB.); use a device with more memory, --dtype bf16, or "
                            "--device cpu")
    assert isinstance(e.value.__cause__, torch.OutOfMemoryError)


def test_batch_runner_full_padded_batches_independent_of_companions():
    model = prepare_model(ModelRequest("tiny3d", ("conv", "input")), device=CPU, random_init=True)
    clips = _clips(7)
    runner = BatchRunner(model, 3, CPU)
    results = {}
    for k, c in enumerate(clips):
        if runner.add(k, c):
            results.update(runner.launch().collect())
    results.update(runner.launch().collect())  # the last, zero-padded batch
    assert runner.launch() is None and sorted(results) == list(range(7))
    # the same clip with other companions, at another position: the same bits
    alone = BatchRunner(model, 3, CPU).compute([clips[6], clips[0]])
    for layer in ("conv", "input"):
        np.testing.assert_array_equal(alone[0][layer], results[6][layer])
        np.testing.assert_array_equal(alone[1][layer], results[0][layer])
    np.testing.assert_array_equal(results[4]["input"], clips[4].flatten().numpy())
    # discard drops pending clips of a failed video
    runner.add(("v", 0), clips[0])
    runner.add(("w", 0), clips[1])
    assert runner.discard(lambda key: key[0] == "v") == 1 and runner.keys() == [("w", 0)]
    with pytest.raises(ValueError, match="shape"):
        runner.add(("x", 0), torch.zeros(1, 3, 4, 32, 32))


def test_copy_helpers_assemble_the_same_batches_and_padding_stays_zero():
    """Batches assembled by copy helpers (on for CUDA at large batches, forced here) hold the same
    bits; every lent clip is released once; the rows past a partial batch are zero again after a
    full batch used them (only those rows are cleared)."""
    model = prepare_model(ModelRequest("tiny3d", ("conv", "input")), device=CPU, random_init=True)
    clips = _clips(11, seed=4)
    results = []
    for copy_threads in (0, 3):
        runner = BatchRunner(model, 5, CPU, copy_threads=copy_threads)
        released = []
        got = {}
        for k, c in enumerate(clips):  # 5 + 5 + a partial batch of 1
            if runner.add(k, c, release=lambda k=k, done=released: done.append(k)):
                got.update(runner.launch().collect())
        got.update(runner.launch().collect())
        assert sorted(released) == list(range(11))
        buffer = runner._buffers[0]
        assert torch.equal(buffer[0], clips[10]) and not buffer[1:].any()  # the full batch's rows cleared
        runner.close()
        results.append(got)
    for k in range(11):
        for layer in ("conv", "input"):
            np.testing.assert_array_equal(results[1][k][layer], results[0][k][layer])
        np.testing.assert_array_equal(results[1][k]["input"], clips[k].flatten().numpy())


def test_copy_helpers_only_for_large_cuda_batches_on_many_cores(monkeypatch):
    from c3dfeat import runtime
    from c3dfeat.pipeline import batching

    monkeypatch.setattr(runtime, "usable_cores", lambda: 16)
    cuda = torch.device("cuda")
    assert batching.default_copy_threads(cuda, 32) == 4 and batching.default_copy_threads(CPU, 32) == 0
    assert batching.default_copy_threads(cuda, 4) == 0
    monkeypatch.setattr(runtime, "usable_cores", lambda: 8)
    assert batching.default_copy_threads(cuda, 32) == 2
    monkeypatch.setattr(runtime, "usable_cores", lambda: 4)
    assert batching.default_copy_threads(cuda, 32) == 0


def test_bf16_autocast_recorded_and_close_fp32_exact(tmp_path, videos):
    a, b = tmp_path / "fp32.h5", tmp_path / "bf16.h5"
    _run(videos, a)
    rep = _run(videos, b, dtype="bf16")
    assert rep.dtype == "bf16"
    with FeatureFile(a) as fa, FeatureFile(b) as fb:
        assert fa.provenance["dtype"] == "fp32" and fb.provenance["dtype"] == "bf16"
        x, y = fa.clips("a.mp4", "tiny3d", "conv"), fb.clips("a.mp4", "tiny3d", "conv")
        assert not np.array_equal(x, y)  # bf16 really ran
        np.testing.assert_allclose(y, x, rtol=0.05, atol=0.02)
    model = prepare_model(ModelRequest("tiny3d"), device=CPU, random_init=True)
    assert next(model.net.parameters()).dtype == torch.float32  # weights are never rounded


# ----------------------------------------------------------------------------- sampling options
@pytest.fixture
def resampling_model():
    spec = get_spec("tiny3d")
    name = "tiny3d_5fps"
    register_model(dataclasses.replace(spec, name=name,
                                       preprocessing=dataclasses.replace(spec.preprocessing, fps=5.0)))
    yield name
    _REGISTRY.pop(name, None)


def test_fps_zero_means_the_native_rate(tmp_path, resampling_model):
    v = make_video(tmp_path / "v" / "x.mp4", 20, size=(32, 32), fps=20)
    own, native = tmp_path / "own.h5", tmp_path / "native.h5"
    _run(v, own, models=[resampling_model])
    _run(v, native, models=[resampling_model], fps=0)
    with FeatureFile(own) as fo, FeatureFile(native) as fn:
        assert fo.provenance["models"][resampling_model]["sampling"]["fps"] == 5.0
        assert fn.provenance["models"][resampling_model]["sampling"]["fps"] is None
        # 5 fps: every 4th frame; native: consecutive frames
        assert list(fo.clip_info("x.mp4", resampling_model)["frame_indices"][0]) == [0, 4, 8, 12]
        assert list(fn.clip_info("x.mp4", resampling_model)["frame_indices"][0]) == [0, 1, 2, 3]


def test_decode_video_is_a_plain_generator(videos):
    """What the Ray engine calls inside a task: no threads, messages in order."""
    model = prepare_model(ModelRequest("tiny3d"), device=CPU, random_init=True)
    msgs = list(decode_video(VideoTask(0, "a.mp4", videos / "a.mp4"), [model]))
    assert isinstance(msgs[0], VideoStart) and type(msgs[-1]).__name__ == "VideoEnd"
    clips = [m for m in msgs if isinstance(m, ClipReady)]
    assert [m.clip for m in clips] == list(range(len(msgs[0].clips[0])))
    assert all(tuple(m.tensor.shape) == model.clip_shape for m in clips)
    failed = list(decode_video(VideoTask(1, "nope.mp4", videos / "nope.mp4"), [model]))
    assert len(failed) == 1 and type(failed[0]).__name__ == "VideoFailed" and "no such file" in failed[0].error


def test_retry_failed_extracts_only_the_failed_videos_again(tmp_path):
    d = tmp_path / "in"
    make_video(d / "a.mp4", 9, size=(32, 32))
    (d / "b.mp4").write_text("not yet a video")
    out = tmp_path / "f.h5"
    rep = _run(d, out)
    assert rep.ok == 1 and [v for v, _ in rep.failed] == ["b.mp4"]
    make_video(d / "b.mp4", 7, size=(32, 32))  # the user fixed the file
    rep = _run(d, out)  # a plain resume keeps it failed
    assert (rep.ok, rep.skipped, [v for v, _ in rep.failed_before]) == (0, 2, ["b.mp4"])
    rep = _run(d, out, retry_failed=True)
    assert (rep.ok, rep.skipped, rep.failed, rep.failed_before) == (1, 1, [], [])
    ref = tmp_path / "ref.h5"
    _run(d, ref)
    with FeatureFile(out) as ff, FeatureFile(ref) as want:
        assert not ff.failed and sorted(ff.video_ids) == ["a.mp4", "b.mp4"]
        for vid in want.video_ids:
            np.testing.assert_array_equal(ff.clips(vid, "tiny3d", "conv"), want.clips(vid, "tiny3d", "conv"))


class _ListWriter:
    """A writer that keeps what it is given (the scheduler's only output)."""

    def __init__(self):
        self.videos = []
        self.commits = []  # videos per writer call

    def add_videos(self, items):
        self.videos.extend(items)
        self.commits.append(len(items))


def test_scheduler_commits_in_input_order_whatever_finishes_first(tmp_path):
    d = tmp_path / "in"
    make_video(d / "a_long.mp4", 60, size=(32, 32))  # decoded by one worker while the other does b..d
    for name in ("b", "c", "d"):
        make_video(d / f"{name}.mp4", 5, size=(32, 32))
    make_broken(d, "text")
    tasks, _ = resolve_tasks([d])
    models = [prepare_model(ModelRequest("tiny3d", ("conv",)), device=CPU, random_init=True),
              prepare_model(ModelRequest("tiny3d_id", ("pool",)), device=CPU, random_init=True,
                            sampling_overrides={"stride": 3})]
    writer, report = _ListWriter(), ExtractReport(output=tmp_path / "unused.h5", total=len(tasks))
    LocalScheduler(tasks, models, writer, report, batch_size=4, workers=2).run()
    assert [r.id for r, _ in writer.videos] == [t.id for t in tasks]  # sorted ids, input order
    assert sum(writer.commits) == len(tasks)
    assert (report.ok, [v for v, _ in report.failed]) == (4, ["text.mp4"])
    for record, results in writer.videos:
        if record.status == "failed":
            assert results == {} and record.error
            continue
        for model in models:
            res = results[model.key]
            n = len(res.clips.start_frame)
            assert n > 0 and all(f.shape[0] == n for f in res.features.values())
    assert report.clips == sum(len(res.clips.start_frame) for _, r in writer.videos for res in r.values())


def test_videos_finished_together_share_one_writer_call(tmp_path, monkeypatch):
    """The head video ends last: every video that finished while it was read is committed with
    it in one writer call (one HDF5 commit), still in input order."""
    d = tmp_path / "in"
    make_video(d / "a_long.mp4", 30, size=(32, 32))
    for name in ("b", "c", "d"):
        make_video(d / f"{name}.mp4", 5, size=(32, 32))
    tasks, _ = resolve_tasks([d])
    others_done = threading.Event()
    ended = []

    def head_ends_last(task, models, decoder="pyav", **kw):
        for msg in decode_video(task, models, decoder, **kw):
            if isinstance(msg, VideoEnd) and task.id == "a_long.mp4":
                assert others_done.wait(60)
            yield msg  # returns once the scheduler has queued it
            if isinstance(msg, VideoEnd) and task.id != "a_long.mp4":
                ended.append(task.id)
                if len(ended) == 3:
                    others_done.set()

    monkeypatch.setattr(scheduler_module, "decode_video", head_ends_last)
    model = prepare_model(ModelRequest("tiny3d", ("conv",)), device=CPU, random_init=True)
    writer, report = _ListWriter(), ExtractReport(output=tmp_path / "unused.h5", total=len(tasks))
    LocalScheduler(tasks, [model], writer, report, batch_size=1, workers=2).run()
    assert writer.commits == [4] and [r.id for r, _ in writer.videos] == [t.id for t in tasks]


_CHILD = """
import sys
sys.path.insert(0, {repo!r})
from tests import _extract_tiny
_extract_tiny.register()
from c3dfeat.errors import ExtractInterrupted
from c3dfeat.pipeline import extract
try:
    extract([{videos!r}], {out!r}, ["tiny3d"], random_init=True, device="cpu", workers=1, batch_size=1,
            worker_kind={kind!r}, progress=lambda p: print(p.event, flush=True))
except ExtractInterrupted as e:
    print("saved", e.saved, flush=True)
    sys.exit(130)
"""


@pytest.mark.parametrize("worker_kind", ["thread", "process"])
def test_sigterm_closes_the_file_like_ctrl_c(tmp_path, videos, worker_kind):
    """SIGTERM to the whole process group (a batch system preempting the job), decode processes
    included: the run stops like Ctrl-C and no video is recorded as failed."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "f.h5"
    repo = str(Path(__file__).resolve().parents[1])
    code = _CHILD.format(repo=repo, videos=str(videos), out=str(out), kind=worker_kind)
    env = dict(os.environ, TINY3D_SLEEP="0.3")  # about a second per video
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, start_new_session=True)
    for line in proc.stdout:
        if line.strip() == "commit":
            os.killpg(proc.pid, signal.SIGTERM)
            break
    rest, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    saved = int(rest.split("saved ")[-1])
    assert 1 <= saved < 3
    with FeatureFile(out) as ff:
        assert ff.num_videos == saved and ff.state == "incomplete"
        assert not ff.failed  # no video was recorded as failed by the signal
