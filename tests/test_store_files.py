"""The store around the writer: version-1 files, file state, repair, export, the plain-h5py recipe."""
from __future__ import annotations

import csv
import os
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from c3dfeat.cli import cli
from c3dfeat.errors import StoreError
from c3dfeat.store import (
    ClipTable,
    FeatureFile,
    LayerInfo,
    ModelInfo,
    ModelResult,
    VideoRecord,
    export,
    file_summary,
    merge,
    open_writer,
    repair,
)
from tests.test_store import _WRITER, MODELS, PROV, _run_and_kill, _video

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).resolve().parents[1]
V1_IDS = ["broken.mp4", "a/v0.mp4", "b/v1.mp4", "é/vidéo 2.mp4"]


# ----------------------------------------------------------------------------- format version 1
def _v1_expected(i: int, n: int):
    """The values tests/data/make_v1_small.py wrote for video i with n clips."""
    fc6 = 100 * i + 10 * np.arange(n)[:, None] + np.arange(4) + 0.25
    pool5 = 100 * i + 10 * np.arange(n)[:, None, None] + np.arange(6).reshape(3, 2) + 0.5
    avg = -100 * i - np.arange(n + 1)[:, None] * np.arange(1, 4)
    return fc6, pool5, avg


@pytest.mark.parametrize("name, storage", [("v1_small.h5", "float32"), ("v1_small_f16.h5", "float16")])
def test_reads_a_format_version_1_file(name, storage):
    with FeatureFile(DATA / name) as ff:
        assert ff.format_version == 1 and ff.storage_dtype == storage
        assert ff.state == "complete" and "version 1" in ff.state_reason
        assert ff.video_ids == V1_IDS
        assert ff.failed == [("broken.mp4", "cannot decode: invalid data")]
        assert ff.models == ["c3d", "r2plus1d"]
        info = ff.model_info("c3d")
        assert info.layers == (LayerInfo("fc6", 4, (4,), 0), LayerInfo("pool5", 2, (2, 1, 1), num_crops=3))
        assert info.clip_len == 3 and info.attrs["crop_reduce"] == "none"
        assert ff.provenance["compute_dtype"] == "fp32" and ff.provenance["store"] == {"dtype": storage}
        assert ff.provenance["command_line"] == "c3dfeat extract data -o x.h5"
        ids, x = ff.video_matrix("c3d", "fc6")
        assert ids == V1_IDS[1:] and x.dtype == np.dtype(storage)
        for i, n in ((0, 2), (1, 3), (2, 1)):
            fc6, pool5, avg = _v1_expected(i, n)
            vid = V1_IDS[i + 1]
            np.testing.assert_array_equal(x[i], fc6.mean(0).astype(storage))
            np.testing.assert_array_equal(ff.clips(vid, "c3d", "fc6"), fc6.astype(storage))
            np.testing.assert_array_equal(ff.clips(vid, "c3d", "pool5"), pool5.astype(storage))
            np.testing.assert_array_equal(ff.clips(vid, "r2plus1d", "avgpool"), avg.astype(storage))
            ci = ff.clip_info(vid, "c3d")
            np.testing.assert_array_equal(ci["start_frame"], np.arange(n) * 4)
            np.testing.assert_array_equal(ci["start_time"], np.arange(n) * 4 / 25.0)
            np.testing.assert_array_equal(ci["padded"], [0] * (n - 1) + [1])
            np.testing.assert_array_equal(ci["frame_indices"], np.arange(n)[:, None] * 4 + np.arange(3))
        assert ff.clips("broken.mp4", "c3d", "pool5").shape == (0, 3, 2)
        assert list(ff.videos()["label"]) == ["", "run", "jump", "run"]
    s = file_summary(DATA / name)
    assert s["format_version"] == 1 and s["storage_dtype"] == storage and s["failed"] == 1
    assert s["models"]["c3d"]["layers"][1]["num_crops"] == 3


def test_version_1_file_is_not_resumed_but_merges_into_version_2(tmp_path):
    p = tmp_path / "v1.h5"
    shutil.copy(DATA / "v1_small.h5", p)
    with FeatureFile(p) as ff:
        models = [ff.model_info(k) for k in ff.models]
    with pytest.raises(StoreError, match="format-version-1 .* can read it but not add to it"):
        open_writer(p, models, {"decoder": "pyav", "compute_dtype": "fp32"})
    assert FeatureFile(p).num_videos == 4  # untouched
    out = merge([p], tmp_path / "v2.h5")
    with FeatureFile(out) as a, FeatureFile(p) as b:
        assert a.format_version == 2 and a.h5.attrs["storage_dtype"] == "float32"
        assert a.h5["models/c3d/layers/pool5"].attrs["num_crops"] == 3
        assert a.video_ids == V1_IDS[1:] + V1_IDS[:1] and a.failed == b.failed  # merge orders by input_index
        np.testing.assert_array_equal(a.video_matrix("c3d", "pool5")[1], b.video_matrix("c3d", "pool5")[1])
        np.testing.assert_array_equal(a.clips("b/v1.mp4", "c3d", "pool5"), b.clips("b/v1.mp4", "c3d", "pool5"))


# ----------------------------------------------------------------------------- state and repair
def test_state_after_clean_close_error_and_interrupt(tmp_path):
    p = tmp_path / "f.h5"
    w = open_writer(p, MODELS, PROV)
    w.add_video(*_video(0, 1))
    with FeatureFile(p) as ff:  # the writer is alive (the lock is held in this process)
        assert ff.state == "incomplete" and "writer is adding videos now" in ff.state_reason
    w.close()
    with FeatureFile(p) as ff:
        assert ff.state == "complete"
    with pytest.raises(RuntimeError):
        with open_writer(p, MODELS, PROV) as w:
            w.add_video(*_video(1, 2))
            raise RuntimeError("a bug")
    with FeatureFile(p) as ff:
        assert ff.state == "incomplete" and "RuntimeError" in ff.state_reason and ff.num_videos == 2
    w = open_writer(p, MODELS, PROV)
    with pytest.raises(KeyboardInterrupt):
        try:
            w.add_video(*_video(2, 1))
            raise KeyboardInterrupt
        finally:
            w.close()  # how the pipeline closes: try/finally, while Ctrl-C propagates
    with FeatureFile(p) as ff:
        assert ff.state == "incomplete" and "KeyboardInterrupt" in ff.state_reason
        assert "3 committed videos" in ff.state_reason
    with open_writer(p, MODELS, PROV) as w:  # a resumed run that ends normally completes the file
        w.add_video(*_video(3, 1))
    assert file_summary(p)["state"] == "complete"


def test_merging_an_unfinished_shard_gives_an_incomplete_file_that_names_it(tmp_path):
    done, cut = tmp_path / "s1.h5", tmp_path / "s2.h5"
    with open_writer(done, MODELS, PROV, shard="1/2") as w:
        w.add_video(*_video(0, 1))
    w = open_writer(cut, MODELS, PROV, shard="2/2")
    w.add_video(*_video(1, 2))
    w.close(complete=False)  # interrupted: its other videos were never written
    with FeatureFile(merge([done], tmp_path / "one.h5")) as ff:
        assert ff.state == "complete"
    with FeatureFile(merge([done, cut], tmp_path / "both.h5")) as ff:
        assert ff.num_videos == 2 and ff.state == "incomplete"
        assert "1 of 2 files were not complete (s2.h5)" in ff.state_reason and "merge again" in ff.state_reason
    res = CliRunner().invoke(cli, ["merge", str(done), str(cut), "-o", str(tmp_path / "cli.h5")])
    assert res.exit_code == 0 and "cli.h5 is incomplete: merged while 1 of 2 files" in res.output


def test_killed_run_needs_repair_and_repair_makes_it_plain_h5py_readable(tmp_path):
    p = tmp_path / "k.h5"
    _run_and_kill(_WRITER.format(tests=os.path.dirname(__file__)), p)
    with FeatureFile(p) as ff:
        assert ff.state == "needs-repair" and "c3dfeat repair" in ff.state_reason
        n = ff.num_videos
        ids, x = ff.video_matrix("m", "a")
    with pytest.raises(OSError):
        h5py.File(p, "r")
    report = repair(p)
    assert report["repaired"] and report["flag_cleared"] and report["videos"] == n
    assert report["state"] == "incomplete"
    with h5py.File(p, "r") as f:  # plain h5py, no swmr
        assert int(f["committed"][0]) == n
        assert all(ds.shape[0] == n for ds in f["videos"].values())
        assert f["models/m/layers/b/clip_features"].shape[0] == f["models/m/clips/start_frame"].shape[0]
    with FeatureFile(p) as ff:
        assert ff.state == "incomplete" and "repaired after a killed run" in ff.state_reason
        ids2, x2 = ff.video_matrix("m", "a")
    assert ids2 == ids
    np.testing.assert_array_equal(x2, x)
    assert repair(p)["repaired"] is False  # nothing left to do
    with open_writer(p, MODELS, PROV) as w:  # and it still resumes
        assert len(w.done_ids) == n
        w.add_video(*_video(n, 2))
    with FeatureFile(p) as ff:
        assert ff.num_videos == n + 1 and ff.state == "complete"


def test_repair_refuses_while_a_writer_runs(tmp_path):
    p = tmp_path / "f.h5"
    with open_writer(p, MODELS, PROV) as w:
        w.add_video(*_video(0, 1))
        with pytest.raises(StoreError, match="another process is writing"):
            repair(p)


# ----------------------------------------------------------------------------- plain h5py
def _recipe() -> str:
    text = (REPO / "docs" / "hdf5-schema.md").read_text(encoding="utf-8")
    section = text.split("## Reading with plain h5py", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_schema_doc_plain_h5py_recipe_reads_unicode_ids(tmp_path, monkeypatch):
    models = (ModelInfo("c3d", (LayerInfo("fc6", 3, (3,)),), clip_len=2),)
    with open_writer(tmp_path / "feats.h5", models, {}) as w:
        for i, vid in enumerate(["vidéo 1.mp4", "日本/クリップ.mp4", "bad ü.mp4"]):
            ok = i != 2
            n = 2 if ok else 0
            sf = np.arange(n, dtype=np.int64) * 3
            clips = ClipTable(sf, sf / 30.0, np.zeros(n, np.int32), sf[:, None] + np.arange(2))
            feats = np.full((n, 3), i, np.float32) + np.arange(n)[:, None]
            rec = VideoRecord(vid, input_index=i, status="ok" if ok else "failed", error="" if ok else "x")
            w.add_video(rec, {"c3d": ModelResult(clips, {"fc6": feats})} if ok else {})
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(_recipe(), scope)  # the documented code, verbatim
    assert list(scope["ids"]) == ["vidéo 1.mp4", "日本/クリップ.mp4", "bad ü.mp4"]
    assert list(scope["ok_ids"]) == ["vidéo 1.mp4", "日本/クリップ.mp4"]
    np.testing.assert_array_equal(scope["X"], [[0.5] * 3, [1.5] * 3])
    np.testing.assert_array_equal(scope["clips"], [[0, 0, 0], [1, 1, 1]])
    np.testing.assert_array_equal(scope["start_time"], [0, 0.1])
    scope["f"].close()


# ----------------------------------------------------------------------------- export
def _five(tmp_path) -> Path:
    p = tmp_path / "f.h5"
    with open_writer(p, MODELS, PROV) as w:
        for i in range(5):
            rec, res = _video(i, 1 + i % 3, status="failed" if i == 2 else "ok")
            rec.label = f"class {i % 2}" if i != 2 else ""
            rec.id = f"dir/vidéo {i}.mp4"
            w.add_video(rec, res)
    return p


def test_export_npy_npz_csv_with_ids_and_clips(tmp_path):
    p = _five(tmp_path)
    ff = FeatureFile(p)
    ids, x = ff.video_matrix("m", "a")
    labels = ["class 0", "class 1", "class 1", "class 0"]
    assert len(ids) == 4
    # .npy + ids sidecar (+ clips)
    out = export(p, tmp_path / "x.npy", clips=True)
    np.testing.assert_array_equal(np.load(out), x)
    assert (tmp_path / "x.ids.txt").read_text(encoding="utf-8").splitlines() == ids
    clip_x = np.concatenate([ff.clips(v, "m", "a") for v in ids])
    np.testing.assert_array_equal(np.load(tmp_path / "x.clips.npy"), clip_x)
    with open(tmp_path / "x.clips.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["id"] for r in rows] == [v for v in ids for _ in range(len(ff.clips(v, "m", "a")))]
    assert [int(r["clip"]) for r in rows] == [c for v in ids for c in range(len(ff.clips(v, "m", "a")))]
    st = np.concatenate([ff.clip_info(v, "m")["start_time"] for v in ids])
    np.testing.assert_array_equal([float(r["start_time"]) for r in rows], st)
    sf = np.concatenate([ff.clip_info(v, "m")["start_frame"] for v in ids])
    assert [int(r["start_frame"]) for r in rows] == list(sf)
    # .npz, the crops-kept layer
    z = np.load(export(p, tmp_path / "x.npz", layer="b", clips=True))
    np.testing.assert_array_equal(z["X"], ff.video_matrix("m", "b")[1])
    assert list(z["ids"]) == ids and list(z["labels"]) == labels
    cb = np.concatenate([ff.clips(v, "m", "b") for v in ids])
    np.testing.assert_array_equal(z["clip_features"], cb)
    assert z["clip_features"].shape[1:] == (2, 2)
    np.testing.assert_array_equal(z["clip_video"], np.repeat(np.arange(4), [len(ff.clips(v, "m", "b")) for v in ids]))
    np.testing.assert_array_equal(z["clip_start_time"], st)
    # .csv: id,label,f0.. and clips with a crop column
    export(p, tmp_path / "x.csv", model="m", layer="b", clips=True)
    with open(tmp_path / "x.csv", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["id", "label", "f0", "f1"]
    assert [r[0] for r in rows[1:]] == ids and [r[1] for r in rows[1:]] == labels
    np.testing.assert_array_equal(np.array([r[2:] for r in rows[1:]], np.float32), ff.video_matrix("m", "b")[1])
    with open(tmp_path / "x.clips.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * len(cb) and [r["crop"] for r in rows[:2]] == ["0", "1"]
    np.testing.assert_array_equal(np.array([[r["f0"], r["f1"]] for r in rows], np.float32), cb.reshape(-1, 2))
    ff.close()


def test_export_refuses_unknown_suffix_and_layer(tmp_path):
    p = _five(tmp_path)
    with pytest.raises(StoreError, match=r"\.npy, \.npz, \.csv"):
        export(p, tmp_path / "x.parquet")
    with pytest.raises(StoreError, match="no stored layer 'zz'"):
        export(p, tmp_path / "x.npy", layer="zz")


def test_export_reads_sparse_rows(tmp_path):
    """Mostly failed videos: only the ok rows are read and written, in order."""
    p = tmp_path / "f.h5"
    with open_writer(p, MODELS, PROV) as w:
        for i in range(12):
            w.add_video(*_video(i, 1 + i % 3, status="ok" if i in (0, 11) else "failed"))
    ids, x = FeatureFile(p).video_matrix("m", "a")
    out = export(p, tmp_path / "x.npy")
    np.testing.assert_array_equal(np.load(out), x)
    assert (tmp_path / "x.ids.txt").read_text().split() == ids == ["dir/v0.mp4", "dir/v11.mp4"]


def test_layer_aliases_resolve_where_the_file_is_read(tmp_path):
    models = (ModelInfo("c3d", (LayerInfo("fc6", 3, (3,), aliases=("fc6-1",)),
                                LayerInfo("pool5", 2, (2,))), clip_len=0),)
    p = tmp_path / "f.h5"
    sf = np.arange(2, dtype=np.int64)
    with open_writer(p, models, {}) as w:
        feats = {"fc6": np.arange(6, dtype=np.float32).reshape(2, 3), "pool5": np.ones((2, 2), np.float32)}
        w.add_video(VideoRecord("v"), {"c3d": ModelResult(ClipTable(sf, sf / 1.0, np.zeros(2, np.int32)), feats)})
    with FeatureFile(p) as ff:
        assert ff.layers("c3d") == ["fc6", "pool5"]
        assert ff.layer_name("c3d", "FC6-1") == "fc6"
        np.testing.assert_array_equal(ff.video_matrix("c3d", "fc6-1")[1], ff.video_matrix("c3d", "fc6")[1])
        np.testing.assert_array_equal(ff.clips("v", "c3d", "fc6-1"), feats["fc6"])
        assert ff.h5["models/c3d/layers/fc6"].attrs["aliases"] == '["fc6-1"]'
        with pytest.raises(StoreError, match=r"no stored layer .fc7.; stored: fc6 \(fc6-1\), pool5$"):
            ff.video_matrix("c3d", "fc7")
    np.testing.assert_array_equal(np.load(export(p, tmp_path / "x.npy", layer="fc6-1")), [[1.5, 2.5, 3.5]])



def test_state_mark_fallback_reopens_the_closed_file(tmp_path, monkeypatch):
    """Where HDF5 refuses attribute writes in SWMR mode, close() reopens the file to mark it."""
    import c3dfeat.store.writer as writer_module

    p = tmp_path / "f.h5"
    w = open_writer(p, MODELS, PROV)
    w.add_video(*_video(0, 1))

    class RefusingAttrs:
        def __setitem__(self, key, value):
            raise RuntimeError("no attribute writes in SWMR mode")

    real_file = w._f
    monkeypatch.setattr(w, "_f", type("F", (), {"attrs": RefusingAttrs(), "id": real_file.id,
                                                "close": real_file.close})())
    marked = []
    real_mark = writer_module._mark
    monkeypatch.setattr(writer_module, "_mark", lambda *a: (marked.append(a[1:]), real_mark(*a)))
    w.close()
    assert marked == [("complete", "")]
    with FeatureFile(p) as ff:
        assert ff.state == "complete" and ff.num_videos == 1


@pytest.mark.skipif(not hasattr(os, "register_at_fork"), reason="POSIX fork only")
def test_a_forked_child_does_not_keep_the_writer_lock(tmp_path):
    """Decode processes are forked while the writer holds its flock: a child must not keep it,
    or a run killed with SIGKILL would stay locked while an orphan lives."""
    import fcntl
    import multiprocessing

    from c3dfeat.store.files import RunLock

    lock = RunLock(tmp_path / "f.h5")
    ctx = multiprocessing.get_context("fork")
    ready, go = ctx.Event(), ctx.Event()

    def child_main() -> None:
        ready.set()
        go.wait(60)

    child = ctx.Process(target=child_main)
    child.start()  # forked while the lock was held
    try:
        assert ready.wait(60)  # the child is running (fork hooks done)
        other = open(lock.path, "rb")
        lock._fh.close()  # the parent's own descriptor goes: only a child could still hold the lock
        lock._fh = None
        fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if the child holds it
        other.close()
    finally:
        go.set()
        child.join()
