"""Which run wrote each video: the `/runs` table and the `videos/run_index` column, through
resume, retry-failed, merge (of merged files too), a killed writer, and files from before them."""
from __future__ import annotations

import json

import h5py
import numpy as np
from click.testing import CliRunner

from c3dfeat.cli import cli
from c3dfeat.store import FeatureFile, file_summary, merge, open_writer
from tests.test_store import MODELS, PROV, _video


def _write(path, videos, device, batch, *, shard="", retry_failed=False, failed=()):
    run = {"device": device, "batch_size": batch}
    with open_writer(path, MODELS, PROV, run=run, command_line=f"run on {device}", shard=shard,
                     retry_failed=retry_failed) as w:
        for i in videos:
            w.add_video(*_video(i, 1 + i % 3, status="failed" if i in failed else "ok"))


def _devices(ff: FeatureFile) -> dict:
    """video id -> the device of the run that wrote it"""
    return {v: ff.run_of(v)["run"]["device"] for v in ff.video_ids}


def test_a_resumed_file_lists_its_runs_and_each_video_names_the_one_that_wrote_it(tmp_path):
    p = tmp_path / "f.h5"
    _write(p, [0, 1], "cpu", 4)
    _write(p, [2, 3, 4], "cuda", 64)  # resumed on a GPU: other last bits, and now on record
    _write(p, [], "cuda:1", 64)  # a resume that committed nothing is still a run
    with FeatureFile(p) as ff:
        assert [(r["run"]["device"], r["run"]["batch_size"], r["command_line"]) for r in ff.runs] == [
            ("cpu", 4, "run on cpu"), ("cuda", 64, "run on cuda"), ("cuda:1", 64, "run on cuda:1")]
        assert all(r["started_utc"] for r in ff.runs)
        assert ff.run_index.tolist() == [0, 0, 1, 1, 1]
        assert ff.run_of("dir/v3.mp4")["run"]["device"] == "cuda"
        assert json.loads(ff.provenance["run"])["device"] == "cpu"  # the `run` attribute: the creating run's
    s = file_summary(p)
    assert [(r["run"]["device"], r["videos"]) for r in s["runs"]] == [("cpu", 2), ("cuda", 3), ("cuda:1", 0)]
    res = CliRunner().invoke(cli, ["info", str(p)])
    assert res.exit_code == 0, res.output
    assert "written by 3 runs" in res.output and "run 1: 3 videos, started " in res.output
    assert "batch_size 64, device cuda" in res.output


def test_retry_failed_keeps_each_kept_videos_run_and_gives_the_retried_ones_the_new_run(tmp_path):
    p = tmp_path / "f.h5"
    _write(p, range(4), "cpu", 4, failed=(1, 2))
    _write(p, [1, 2], "cuda", 8, retry_failed=True)
    with FeatureFile(p) as ff:
        assert ff.video_ids == ["dir/v0.mp4", "dir/v3.mp4", "dir/v1.mp4", "dir/v2.mp4"]
        assert ff.run_index.tolist() == [0, 0, 1, 1] and len(ff.runs) == 2
        assert _devices(ff) == {"dir/v0.mp4": "cpu", "dir/v3.mp4": "cpu", "dir/v1.mp4": "cuda", "dir/v2.mp4": "cuda"}


def test_merge_joins_the_shards_runs_and_remaps_each_video_even_merged_again(tmp_path):
    a, b, c = tmp_path / "a.h5", tmp_path / "b.h5", tmp_path / "c.h5"
    _write(a, [0, 3], "cuda:0", 16, shard="1/3")
    _write(a, [6], "cpu", 2, shard="1/3")  # shard 1 resumed elsewhere
    _write(b, [1, 4, 7], "cuda:1", 16, shard="2/3")
    _write(c, [2, 5], "cuda:2", 16, shard="3/3")
    want = {}
    for shard in (a, b, c):
        with FeatureFile(shard) as ff:
            want.update(_devices(ff))
    merge([a, b], tmp_path / "ab.h5")
    merge([tmp_path / "ab.h5", c], tmp_path / "abc.h5")
    with FeatureFile(tmp_path / "abc.h5") as ff:
        assert ff.video_ids == [f"dir/v{i}.mp4" for i in range(8)]  # input order
        assert [(r["run"]["device"], r["shard"]) for r in ff.runs] == [
            ("cuda:0", "1/3"), ("cpu", "1/3"), ("cuda:1", "2/3"), ("cuda:2", "3/3")]
        assert _devices(ff) == want
        assert ff.run_index.tolist() == [0, 2, 3, 0, 2, 3, 1, 2]


def test_a_killed_writers_uncommitted_rows_leave_no_run_index_behind(tmp_path):
    """The column is cut with the other tables on resume (recovery cuts every video table)."""
    p = tmp_path / "f.h5"
    _write(p, [0, 1], "cpu", 4)
    with h5py.File(p, "r+") as f:  # rows a killed writer appended past the commit
        ds = f["videos/run_index"]
        ds.resize(5, axis=0)
        ds[2:] = 7
    _write(p, [2], "cuda", 8)
    with FeatureFile(p) as ff:
        assert ff.run_index.tolist() == [0, 0, 1]


def test_a_file_from_before_per_video_runs_reads_as_one_run_and_resumes_and_merges(tmp_path):
    old, other = tmp_path / "old.h5", tmp_path / "other.h5"
    _write(old, [0, 1], "cpu", 4)
    with h5py.File(old, "r+") as f:  # what c3dfeat wrote before: no /runs, no run_index
        del f["runs"]
        del f["videos/run_index"]
    with FeatureFile(old) as ff:
        assert [r["run"] for r in ff.runs] == [{"device": "cpu", "batch_size": 4}]
        assert ff.runs[0]["command_line"] == "run on cpu" and ff.run_index.tolist() == [0, 0]
    merge([old], tmp_path / "copy.h5")  # a merge of it
    with FeatureFile(tmp_path / "copy.h5") as ff:
        assert ff.run_index.tolist() == [0, 0] and ff.runs[0]["run"]["device"] == "cpu"
    _write(old, [2], "cuda", 8)  # and a resume, which adds the table and the column
    _write(other, [3], "cuda:1", 8)
    with FeatureFile(old) as ff:
        assert ff.run_index.tolist() == [0, 0, 1] and [r["run"]["device"] for r in ff.runs] == ["cpu", "cuda"]
    merge([old, other], tmp_path / "m.h5")
    with FeatureFile(tmp_path / "m.h5") as ff:
        assert _devices(ff) == {"dir/v0.mp4": "cpu", "dir/v1.mp4": "cpu", "dir/v2.mp4": "cuda",
                                "dir/v3.mp4": "cuda:1"}
        assert np.array_equal(ff.run_index, [0, 0, 1, 2])
