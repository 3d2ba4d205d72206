"""Finished videos are written in groups (pipeline.assemble.CommitGroup): fewer HDF5 commits, the
same file. A waiting group is written when it falls due even if nothing else arrives, before it
could hold up the decoders, and when the run stops."""
from __future__ import annotations

import threading
import time

import pytest

from c3dfeat.errors import ExtractInterrupted
from c3dfeat.pipeline import Progress, assemble, extract, scheduler as scheduler_module
from c3dfeat.pipeline.assemble import COMMIT_VIDEOS, CommitGroup, ReadyVideo
from c3dfeat.pipeline.decode import decode_video
from c3dfeat.store import FeatureFile, VideoRecord
from c3dfeat.store.writer import FeatureWriter
from tests._extract_tiny import tiny_models  # noqa: F401  (fixture)
from tests.synth import make_broken, make_video
from tests.test_store import _assert_same_datasets

pytestmark = pytest.mark.usefixtures("tiny_models")
pytest.importorskip("av")


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("commits")
    for name, frames in [("a", 9), ("b", 7), ("c", 8), ("d", 12)]:
        make_video(d / f"{name}.mp4", frames, size=(32, 32), noise=10)
    make_broken(d, "truncated")  # a failed video is written with the others
    return d


@pytest.fixture
def writes(monkeypatch):
    """[(time, [video ids])] of every writer call from now on."""
    calls: list = []
    add_videos = FeatureWriter.add_videos

    def recording(self, items):
        calls.append((time.monotonic(), [record.id for record, _ in items]))
        return add_videos(self, items)

    monkeypatch.setattr(FeatureWriter, "add_videos", recording)
    return calls


def _run(d, out, **kw):
    return extract([d], out, ["tiny3d"], random_init=True, device="cpu", **{"workers": 1, "batch_size": 1, **kw})


def _ready(seq: int) -> ReadyVideo:
    return ReadyVideo(seq, VideoRecord(id=f"v{seq}", path=f"v{seq}.mp4"), {})


def test_a_group_falls_due_when_full_or_when_its_oldest_has_waited():
    now = [0.0]
    group = CommitGroup(max_videos=3, max_seconds=1.0, clock=lambda: now[0])
    assert not group.due() and group.seconds_left() is None
    group.add(_ready(0))
    now[0] = 0.4
    group.add(_ready(1))
    assert not group.due() and group.seconds_left() == pytest.approx(0.6)
    now[0] = 1.0
    assert group.due() and group.seconds_left() == 0.0
    assert [v.seq for v in group.take()] == [0, 1] and len(group) == 0 and not group.due()
    for seq in range(2, 5):
        group.add(_ready(seq))
    assert group.due() and group.seconds_left() == pytest.approx(1.0)  # full, though young
    assert CommitGroup(max_videos=10_000).max_videos == COMMIT_VIDEOS
    assert CommitGroup(max_videos=-2).max_videos == 1


def test_grouped_writes_give_the_file_of_one_write_per_video(tmp_path, videos, writes, monkeypatch):
    each, grouped = tmp_path / "each.h5", tmp_path / "grouped.h5"
    monkeypatch.setattr(assemble, "COMMIT_SECONDS", 0.0)
    _run(videos, each)  # one worker: each video has finished before the next one starts
    per_video = [ids for _, ids in writes]
    writes.clear()
    monkeypatch.setattr(assemble, "COMMIT_SECONDS", 600.0)
    rep = _run(videos, grouped, workers=2)
    assert len(per_video) == 5 and all(len(ids) == 1 for ids in per_video)
    assert [ids for _, ids in writes] == [["a.mp4", "b.mp4", "c.mp4", "d.mp4", "truncated.mp4"]]
    assert (rep.ok, [v for v, _ in rep.failed]) == (4, ["truncated.mp4"])
    _assert_same_datasets(grouped, each)
    _assert_same_datasets(each, grouped)


def test_a_group_is_written_before_it_could_hold_up_the_decoders(tmp_path, videos, writes, monkeypatch):
    """max_pending videos may be past the last write; a decoder is ~2 videos ahead of the
    head, so with max_pending 4 and one worker a group holds at most 2."""
    monkeypatch.setattr(assemble, "COMMIT_SECONDS", 600.0)  # only the size bound can write early
    done: list = []
    t = threading.Thread(target=lambda: done.append(_run(videos, tmp_path / "f.h5", max_pending=4)), daemon=True)
    t.start()
    t.join(timeout=120)
    assert done, "the decoders waited for a group to fall due"
    assert [len(ids) for _, ids in writes] == [2, 2, 1]


def test_a_waiting_group_is_written_when_due_though_nothing_arrives(tmp_path, videos, writes, monkeypatch):
    monkeypatch.setattr(assemble, "COMMIT_SECONDS", 0.3)
    stall_ended: list = []

    def stalling_decode(task, models, decoder="pyav", **kw):
        if task.id == "c.mp4":  # nothing reaches the scheduler for 3 s
            time.sleep(3.0)
            stall_ended.append(time.monotonic())
        yield from decode_video(task, models, decoder, **kw)

    monkeypatch.setattr(scheduler_module, "decode_video", stalling_decode)
    _run(videos, tmp_path / "f.h5")
    first_time, first_ids = writes[0]
    assert first_ids == ["a.mp4", "b.mp4"] and first_time < stall_ended[0]


@pytest.mark.parametrize("worker_kind", ["thread", "process"])
def test_ctrl_c_writes_the_waiting_group(tmp_path, videos, monkeypatch, worker_kind):
    monkeypatch.setattr(assemble, "COMMIT_SECONDS", 600.0)
    out = tmp_path / "f.h5"

    def interrupt_at_c(p: Progress) -> None:
        if p.event == "start" and p.current == "c.mp4":  # a and b are finished, not yet written
            raise KeyboardInterrupt

    with pytest.raises(ExtractInterrupted) as e:
        _run(videos, out, progress=interrupt_at_c, worker_kind=worker_kind)
    assert e.value.saved == 2
    with FeatureFile(out) as ff:
        assert ff.video_ids == ["a.mp4", "b.mp4"] and ff.state == "incomplete"
    rep = _run(videos, out)
    assert (rep.skipped, rep.ok) == (2, 2)


def test_the_last_videos_are_taken_largest_first(tmp_path):
    """So that no decoder is left reading a large video alone at the end (scheduler.claim_order)."""
    from pathlib import Path

    from c3dfeat.pipeline.decode import VideoTask
    from c3dfeat.pipeline.scheduler import claim_order

    sizes = [50, 10, 40, 20, 30, None, 60]  # None: no such file (it fails in its turn)
    tasks = []
    for seq, size in enumerate(sizes):
        path = tmp_path / f"v{seq}.mp4"
        if size is not None:
            path.write_bytes(b"x" * size)
        tasks.append(VideoTask(seq, path.name, Path(path)))
    assert claim_order(tasks, 4) == [0, 1, 2, 6, 4, 3, 5]
    assert claim_order(tasks, 0) == list(range(7))
    assert claim_order(tasks, 100) == [6, 0, 2, 4, 3, 1, 5]


@pytest.mark.parametrize("max_pending", [2, 3, 5])
def test_taking_the_last_videos_out_of_order_never_blocks_the_head(tmp_path, videos, monkeypatch, max_pending):
    """The head video may be taken after later ones, which must leave it a place within
    max_pending (2: the last 4 in size order would hold both places; the head could never be
    taken). The file is the same as in input order (one decoder)."""
    taken: list = []

    def recording_decode(task, models, decoder="pyav", **kw):
        taken.append(task.id)
        yield from decode_video(task, models, decoder, **kw)

    one = tmp_path / "one.h5"
    _run(videos, one)
    monkeypatch.setattr(scheduler_module, "decode_video", recording_decode)
    done: list = []
    two = tmp_path / "two.h5"
    run = threading.Thread(target=lambda: done.append(_run(videos, two, workers=2, max_pending=max_pending)),
                           daemon=True)
    run.start()
    run.join(timeout=120)
    assert done, "the decoders waited for the head video, which none could take"
    names = ["a.mp4", "b.mp4", "c.mp4", "d.mp4", "truncated.mp4"]
    tail = sorted(names[-min(4, max_pending):], key=lambda n: -(videos / n).stat().st_size)
    assert taken == names[: len(names) - len(tail)] + tail
    assert (taken != names) == (max_pending > 2)  # 2: d, truncated.mp4 are in size order already
    _assert_same_datasets(one, two)
