"""The HDF5 store: layout, round trip, commit marker, crash recovery, resume, merge."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest

from c3dfeat.errors import ProvenanceMismatchError, StoreError
from c3dfeat.store import (
    ClipTable,
    FeatureFile,
    LayerInfo,
    ModelInfo,
    ModelResult,
    VideoRecord,
    _lookup3,
    merge,
    open_writer,
    recover_file,
    write_matrices,
)

MODELS = (
    ModelInfo("m", (LayerInfo("a", 3, (3,)), LayerInfo("b", 2, (2,), num_crops=2)), clip_len=4, attrs={"ckpt": "x"}),
)
PROV = {"sampling": {"clip_len": 4, "stride": 2}}


def _video(i: int, n_clips: int, status: str = "ok"):
    """Deterministic fake results: values encode (video, clip, feature)."""
    rec = VideoRecord(id=f"dir/v{i}.mp4", path=f"/x/dir/v{i}.mp4", input_index=i, status=status,
                      error="" if status == "ok" else "boom", num_frames=10 * i, fps=25.0, duration=0.4 * i,
                      size_bytes=100 + i, height=240, width=320)
    if status != "ok":
        return rec, {}
    sf = np.arange(n_clips, dtype=np.int64) * 2
    clips = ClipTable(sf, sf / 25.0, np.zeros(n_clips, np.int32), sf[:, None] + np.arange(4))
    a = (100 * i + 10 * np.arange(n_clips)[:, None] + np.arange(3)).astype(np.float32)
    b = (100 * i + 10 * np.arange(n_clips)[:, None, None] + np.arange(4).reshape(2, 2)).astype(np.float32)
    return rec, {"m": ModelResult(clips, {"a": a, "b": b})}


def test_round_trip_layout_and_reader(tmp_path):
    p = tmp_path / "f.h5"
    with open_writer(p, MODELS, PROV, command_line="c3dfeat extract x") as w:
        w.add_video(*_video(1, 2))
        w.add_video(*_video(2, 0, status="failed"))
        w.add_video(*_video(3, 3))
    # plain h5py sees the documented layout
    with h5py.File(p, "r") as f:
        assert f["committed"][0] == 3
        assert [x.decode() for x in f["videos/id"][:]] == ["dir/v1.mp4", "dir/v2.mp4", "dir/v3.mp4"]
        assert list(f["videos/status"][:]) == [0, 1, 0]
        assert list(f["models/m/videos/num_clips"][:]) == [2, 0, 3]
        assert list(f["models/m/videos/clip_offset"][:]) == [0, 2, 2]
        assert list(f["models/m/clips/video_index"][:]) == [0, 0, 2, 2, 2]
        assert f["models/m/layers/b/clip_features"].shape == (5, 2, 2)
        assert f["models/m/layers/a/clip_features"].chunks[1] == 3
        assert f["models/m/layers/a/clip_features"].maxshape == (None, None)  # a v2 B-tree chunk index
        assert f.attrs["random_init"] == False  # noqa: E712
        assert json.loads(f.attrs["provenance"])["models"]["m"] == {"ckpt": "x"}
    ff = FeatureFile(p)
    assert ff.video_ids == ["dir/v1.mp4", "dir/v2.mp4", "dir/v3.mp4"]
    assert ff.models == ["m"] and ff.layers("m") == ["a", "b"]
    assert ff.failed == [("dir/v2.mp4", "boom")]
    ids, x = ff.video_matrix("m", "a")
    assert ids == ["dir/v1.mp4", "dir/v3.mp4"]
    # video mean = mean over clips: clip values 100i + 10c + j
    np.testing.assert_array_equal(x, [[105, 106, 107], [310, 311, 312]])
    ids_all, x_all = ff.video_matrix("m", "b", status=None)
    assert len(ids_all) == 3 and np.isnan(x_all[1]).all()
    # crops kept: mean over clips and crops
    np.testing.assert_array_equal(x_all[0], [105 + 1, 105 + 2])
    np.testing.assert_array_equal(ff.clips("dir/v3.mp4", "m", "a")[:, 0], [300, 310, 320])
    info = ff.clip_info("dir/v3.mp4", "m")
    np.testing.assert_array_equal(info["start_frame"], [0, 2, 4])
    np.testing.assert_array_equal(info["frame_indices"][2], [4, 5, 6, 7])
    assert ff.provenance["command_line"] == "c3dfeat extract x"
    with pytest.raises(StoreError, match="no video"):
        ff.clips("nope", "m", "a")
    with pytest.raises(StoreError, match="no stored layer 'c'"):
        ff.video_matrix("m", "c")


def test_half_storage(tmp_path):
    p = tmp_path / "h.h5"
    with open_writer(p, MODELS, PROV, storage_dtype="float16") as w:
        w.add_video(*_video(1, 3))
    ff = FeatureFile(p)
    assert ff.h5["models/m/layers/a/clip_features"].dtype == np.float16
    assert ff.video_matrix("m", "a")[1].dtype == np.float16


def test_resume_refuses_other_provenance_and_overwrite_starts_over(tmp_path):
    p = tmp_path / "f.h5"
    with open_writer(p, MODELS, PROV) as w:
        w.add_video(*_video(1, 2))
    with pytest.raises(ProvenanceMismatchError, match=r"sampling.stride: 2 != 3"):
        open_writer(p, MODELS, {"sampling": {"clip_len": 4, "stride": 3}})
    with pytest.raises(ProvenanceMismatchError, match="store.storage_dtype"):
        open_writer(p, MODELS, PROV, storage_dtype="float16")
    with open_writer(p, MODELS, PROV) as w:  # same settings: resume
        assert w.done_ids == ["dir/v1.mp4"]
    with open_writer(p, MODELS, PROV, overwrite=True) as w:
        assert w.done_ids == []


def test_not_a_feature_file(tmp_path):
    p = tmp_path / "x.h5"
    p.write_text("hello")
    with pytest.raises(StoreError):
        FeatureFile(p)
    with pytest.raises(StoreError):
        open_writer(p, MODELS, PROV)


def test_lookup3_known_vectors():
    # Published test vectors of Bob Jenkins' lookup3.c driver5 (hashlittle).
    assert _lookup3(b"", 0) == 0xDEADBEEF
    assert _lookup3(b"", 0xDEADBEEF) == 0xBD5B7DDE
    assert _lookup3(b"Four score and seven years ago", 0) == 0x17770551
    assert _lookup3(b"Four score and seven years ago", 1) == 0xCD628161


_WRITER = textwrap.dedent(
    """
    import sys, numpy as np
    sys.path.insert(0, {tests!r})
    from test_store import _video, MODELS, PROV
    from c3dfeat.store import open_writer
    w = open_writer(sys.argv[1], MODELS, PROV)
    start = w.num_videos
    print("start", start, flush=True)
    for i in range(start, 100000):
        w.add_video(*_video(i, 1 + i % 3))
        if i == start + 20:
            print("ready", flush=True)
    """
)


def _run_and_kill(script, path):
    proc = subprocess.Popen([sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("ready"):
            break
    time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return int(lines[0].split()[1])


def test_sigkill_writer_leaves_readable_file_and_resumes(tmp_path):
    p = tmp_path / "k.h5"
    script = _WRITER.format(tests=os.path.dirname(__file__))
    assert _run_and_kill(script, p) == 0
    with pytest.raises(OSError):  # the killed writer left the "open for SWMR write" flag
        h5py.File(p, "r")
    ff = FeatureFile(p)  # falls back to swmr=True
    n = ff.num_videos
    assert n > 20
    ids, x = ff.video_matrix("m", "a")
    assert ids == [f"dir/v{i}.mp4" for i in range(n)]
    for i in (0, n - 1):
        np.testing.assert_array_equal(ff.clips(f"dir/v{i}.mp4", "m", "b"), _video(i, 1 + i % 3)[1]["m"].features["b"])
    ff.close()
    # resume twice more, then compare with an uninterrupted write of the same rows
    assert _run_and_kill(script, p) == n
    assert _run_and_kill(script, p) > n
    ff = FeatureFile(p)
    total = ff.num_videos
    ref = tmp_path / "ref.h5"
    with open_writer(ref, MODELS, PROV) as w:
        for i in range(total):
            w.add_video(*_video(i, 1 + i % 3))
    _assert_same_datasets(p, ref, nrows={"": total})


def _assert_same_datasets(a, b, nrows=None):
    """Every dataset equal (committed rows) and the compared attributes equal; not `/runs` and
    `run_index` (which run wrote a row: a resumed or merged file's differ by design, tests/test_store_runs.py)."""
    fa, fb = FeatureFile(a), FeatureFile(b)
    assert fa.num_videos == fb.num_videos
    assert json.loads(fa.h5.attrs["provenance"]) == json.loads(fb.h5.attrs["provenance"])
    names = []
    fb.h5.visit(lambda n: names.append(n) if isinstance(fb.h5[n], h5py.Dataset) else None)
    for name in names:
        da, db = fa.h5[name], fb.h5[name]
        if name in ("committed", "runs", "videos/run_index"):
            continue
        n = db.shape[0]
        assert da.shape[0] >= n, name
        va, vb = da[:n], db[:n]
        if va.dtype.kind == "f":
            np.testing.assert_array_equal(va, vb, err_msg=name)
        else:
            assert (va == vb).all(), name
    fa.close()
    fb.close()


def test_merge_orders_by_input_index_and_refuses_mismatch(tmp_path):
    full = tmp_path / "full.h5"
    with open_writer(full, MODELS, PROV) as w:
        for i in range(7):
            w.add_video(*_video(i, i % 3, status="failed" if i == 4 else "ok"))
    shards = []
    for k in range(3):
        s = tmp_path / f"s{k}.h5"
        with open_writer(s, MODELS, PROV, shard=f"{k + 1}/3") as w:
            for i in range(k, 7, 3):
                w.add_video(*_video(i, i % 3, status="failed" if i == 4 else "ok"))
        shards.append(s)
    out = merge(shards[::-1], tmp_path / "merged.h5")
    _assert_same_datasets(out, full)
    bad = tmp_path / "bad.h5"
    with open_writer(bad, MODELS, {"sampling": {"clip_len": 4, "stride": 5}}) as w:
        w.add_video(*_video(9, 1))
    with pytest.raises(ProvenanceMismatchError, match="stride"):
        merge([shards[0], bad], tmp_path / "m2.h5")
    with pytest.raises(StoreError, match="both"):
        merge([shards[0], shards[0]], tmp_path / "m3.h5")


def test_write_matrices_same_schema(tmp_path):
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    p = write_matrices(tmp_path / "pca.h5", ["a", "b", "c", "d"], {"c3d": {"fc6_pca3": x}},
                       {"source": "feats.h5", "pca": {"dim": 3}}, labels=["x", "y", "x", "y"])
    ff = FeatureFile(p)
    ids, y = ff.video_matrix("c3d", "fc6_pca3")
    assert ids == ["a", "b", "c", "d"]
    np.testing.assert_array_equal(y, x)
    assert list(ff.videos()["label"]) == ["x", "y", "x", "y"]
    assert ff.clips("b", "c3d", "fc6_pca3").shape == (0, 3)
    ff.close()
    with pytest.raises(StoreError, match="exists"):  # the existing file is left as it was
        write_matrices(p, ["a"], {"c3d": {"fc6_pca3": x[:1]}}, {"source": "feats.h5", "pca": {"dim": 3}})
    with FeatureFile(p) as ff:
        assert ff.num_videos == 4 and ff.state == "complete"
    write_matrices(p, ["a"], {"c3d": {"fc6_pca3": x[:1]}}, {}, overwrite=True)
    assert FeatureFile(p).video_ids == ["a"]


def test_recover_file_clears_flags_only_when_set(tmp_path):
    p = tmp_path / "f.h5"
    with open_writer(p, MODELS, PROV) as w:
        w.add_video(*_video(1, 1))
    assert recover_file(p) is False  # cleanly closed


def test_second_writer_on_the_same_file_is_refused(tmp_path):
    p = tmp_path / "f.h5"
    with open_writer(p, MODELS, PROV) as w:
        w.add_video(*_video(1, 1))
        with pytest.raises(StoreError, match="another process is writing"):
            open_writer(p, MODELS, PROV)
        assert FeatureFile(p).num_videos == 1  # readers are welcome meanwhile
    assert not (tmp_path / "f.h5.lock").exists()
    with open_writer(p, MODELS, PROV) as w:  # released on close
        assert w.done_ids == ["dir/v1.mp4"]


def _merge_video_by_video(paths, out):
    """The reference: read every video through FeatureFile and append it, in input order."""
    files = [FeatureFile(p) for p in paths]
    order = sorted((int(ff.videos()["input_index"][i]), n, i)
                   for n, ff in enumerate(files) for i in range(ff.num_videos))
    ref = files[0]
    models = [ref.model_info(k) for k in ref.models]
    with open_writer(out, models, json.loads(ref.h5.attrs["provenance"]), storage_dtype=ref.storage_dtype) as w:
        for _, n, i in order:
            ff = files[n]
            t = ff.videos()
            rec = VideoRecord(**{k: (v[i].item() if isinstance(v[i], np.generic) else v[i]) for k, v in t.items()})
            res = {}
            for m in models:
                ci = ff.clip_info(rec.id, m.key)
                clips = ClipTable(ci["start_frame"], ci["start_time"], ci["padded"], ci.get("frame_indices"))
                feats = {la.name: ff.clips(rec.id, m.key, la.name) for la in m.layers}
                means = {la.name: ff.video_matrix(m.key, la.name, status=None)[1][i] for la in m.layers}
                res[m.key] = ModelResult(clips, feats, means)
            w.add_video(rec, res)
    for ff in files:
        ff.close()


@pytest.mark.parametrize("block_bytes", [1, 1 << 20])
def test_merge_in_slices_equals_video_by_video(tmp_path, block_bytes):
    two = MODELS + (ModelInfo("n", (LayerInfo("z", 5, (5,)),), clip_len=0),)
    shards = []
    for k in range(3):
        s = tmp_path / f"s{k}.h5"
        with open_writer(s, two, PROV, storage_dtype="float16") as w:
            rows = [i for i in range(150) if i % 3 == k]
            if k == 2:
                rows = rows[25:] + rows[:25]  # a shard not in input order (e.g. after a retry)
            for i in rows:
                rec, res = _video(i, i % 4, status="failed" if i % 17 == 0 else "ok")
                if res:
                    n = len(res["m"].clips)
                    z = (np.arange(n * 5).reshape(n, 5) + i).astype(np.float32)
                    res["n"] = ModelResult(ClipTable(res["m"].clips.start_frame, res["m"].clips.start_time,
                                                     res["m"].clips.padded), {"z": z})
                w.add_video(rec, res)
        shards.append(s)
    ref = tmp_path / "ref.h5"
    _merge_video_by_video(shards, ref)
    out = merge(shards, tmp_path / "merged.h5", block_bytes=block_bytes)  # 1: blocks of 64 videos
    _assert_same_datasets(out, ref)
    with FeatureFile(out) as ff:
        assert ff.num_videos == 150 and ff.storage_dtype == "float16" and ff.state == "complete"
        assert list(ff.videos()["input_index"]) == list(range(150))
        assert not list(tmp_path.glob("*.partial"))


def test_retry_failed_rewrites_failed_videos_once(tmp_path):
    p = tmp_path / "f.h5"
    with open_writer(p, MODELS, PROV) as w:
        for i in range(6):
            w.add_video(*_video(i, 1 + i % 3, status="failed" if i in (1, 4) else "ok"))
    with open_writer(p, MODELS, PROV) as w:  # a plain resume keeps the failures
        assert len(w.done_ids) == 6
    with open_writer(p, MODELS, PROV, retry_failed=True) as w:
        assert w.done_ids == [f"dir/v{i}.mp4" for i in (0, 2, 3, 5)] and w.num_videos == 4
        w.add_video(*_video(1, 2))  # the retry succeeds this time
        w.add_video(*_video(4, 0, status="failed"))  # and this one fails again
    with FeatureFile(p) as ff:
        ids = ff.video_ids
        assert sorted(ids) == [f"dir/v{i}.mp4" for i in range(6)] and len(set(ids)) == 6
        assert ff.failed == [("dir/v4.mp4", "boom")]
        for i in (0, 1, 2, 3, 5):
            expect = _video(i, 2 if i == 1 else 1 + i % 3)[1]["m"]
            np.testing.assert_array_equal(ff.clips(f"dir/v{i}.mp4", "m", "b"), expect.features["b"])
            np.testing.assert_array_equal(ff.clip_info(f"dir/v{i}.mp4", "m")["frame_indices"],
                                          expect.clips.frame_indices)
        vids, x = ff.video_matrix("m", "a")
        for v, row in zip(vids, x):
            np.testing.assert_array_equal(row, ff.clips(v, "m", "a").mean(0))
        n = ff.num_videos
        np.testing.assert_array_equal(ff.h5["models/m/clips/video_index"][:],
                                      np.repeat(np.arange(n), ff.h5["models/m/videos/num_clips"][:n]))
        assert ff.state == "complete"
    assert not (tmp_path / "f.h5.retry").exists()


def test_run_attribute_engine_is_not_compared_on_resume(tmp_path):
    p = tmp_path / "f.h5"
    with open_writer(p, MODELS, PROV, run={"engine": "local", "device": "cpu"}) as w:
        w.add_video(*_video(0, 1))
    with open_writer(p, MODELS, PROV, run={"engine": "ray", "device": "cuda:0"}) as w:
        assert w.done_ids == ["dir/v0.mp4"]
    with FeatureFile(p) as ff:
        assert json.loads(ff.provenance["run"])["engine"] == "local"  # the run that created the file
