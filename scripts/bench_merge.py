"""Benchmark `c3dfeat merge` on synthetic shards in the real schema; print time and rows/s.

Makes `--shards` files (hash-style sharding: video i goes to shard i mod N, each shard in input
order, like `--shard K/N`), each video with a 4096-d `fc6` video mean and `--clips` clips of
4096-d clip features, then merges them and extrapolates linearly to 1 M video rows. With
`--baseline`, also times the former video-by-video merge on the first few hundred videos of
every shard, for the ratio.

    .venv/bin/python scripts/bench_merge.py --videos-per-shard 5000 --baseline 200

Measured here (2 cores shared with six other jobs, load 14-19), --videos-per-shard 12500
--baseline 100: 100,000 videos (6.18 GiB) merged in 50.0 s wall, 14.4 s CPU = 1,999 videos/s;
extrapolated 1 M videos: 8.3 min (2.4 min of CPU). Video-by-video: 15 videos/s (137x slower,
19 h for 1 M). Details in docs/hdf5-schema.md ("Shards and merge").
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from c3dfeat.store import (
    ClipTable,
    FeatureFile,
    LayerInfo,
    ModelInfo,
    ModelResult,
    VideoRecord,
    merge,
    open_writer,
)
from c3dfeat.store.schema import create_layout


def make_shard(path: Path, k: int, n_shards: int, n_total: int, clips: int, dim: int, seed: int) -> int:
    """Shard k of n: the videos i ≡ k (mod n), written with bulk slices (the writer's layout)."""
    rows = np.arange(k, n_total, n_shards)
    n, m = len(rows), len(rows) * clips
    model = ModelInfo("c3d", (LayerInfo("fc6", dim, (dim,)),), clip_len=16, attrs={"arch": "c3d"})
    prov = {"decoder": "pyav", "dtype": "fp32", "store": {"storage_dtype": "float32"},
            "models": {"c3d": {"arch": "c3d"}}}
    rng = np.random.default_rng(seed + k)
    with h5py.File(path, "w", libver="latest") as f:
        create_layout(f, [model], prov, "float32", {"command_line": "bench", "shard": f"{k + 1}/{n_shards}"})
        v = f["videos"]
        for ds in v.values():
            ds.resize(n, axis=0)
        v["id"][:] = np.array([f"class_{i % 101:03d}/v_{i:07d}.mp4" for i in rows], dtype=object)
        v["path"][:] = np.array([f"/data/class_{i % 101:03d}/v_{i:07d}.mp4" for i in rows], dtype=object)
        v["label"][:] = np.array([f"class_{i % 101:03d}" for i in rows], dtype=object)
        v["error"][:] = np.array([""] * n, dtype=object)
        v["input_index"][:] = rows
        v["num_frames"][:] = 300
        v["fps"][:] = 30.0
        v["duration"][:] = 10.0
        v["size_bytes"][:] = 10**6
        v["height"][:] = 240
        v["width"][:] = 320
        g = f["models/c3d"]
        g["videos/num_clips"].resize(n, axis=0)
        g["videos/clip_offset"].resize(n, axis=0)
        g["videos/num_clips"][:] = clips
        g["videos/clip_offset"][:] = np.arange(n) * clips
        for ds in g["clips"].values():
            ds.resize(m, axis=0)
        g["clips/video_index"][:] = np.repeat(np.arange(n), clips)
        sf = np.tile(np.arange(clips) * 16, n)
        g["clips/start_frame"][:] = sf
        g["clips/start_time"][:] = sf / 30.0
        g["clips/frame_indices"][:] = sf[:, None] + np.arange(16)
        cf, vm = g["layers/fc6/clip_features"], g["layers/fc6/video_mean"]
        cf.resize(m, axis=0)
        vm.resize(n, axis=0)
        step = 1024
        for a in range(0, n, step):
            b = min(n, a + step)
            x = rng.random(((b - a) * clips, dim), dtype=np.float32)
            cf[a * clips : b * clips] = x
            vm[a:b] = x.reshape(b - a, clips, dim).mean(1)
        f["committed"][0] = n
        f.attrs["state"] = "complete"
    return n


def merge_video_by_video(paths, out: Path, limit: int) -> int:
    """The former merge: every video read through FeatureFile and appended, 256 per commit."""
    files = [FeatureFile(p) for p in paths]
    order = sorted((int(ff.videos()["input_index"][i]), n, i) for n, ff in enumerate(files)
                   for i in range(min(limit, ff.num_videos)))
    ref = files[0]
    models = [ref.model_info(k) for k in ref.models]
    with open_writer(out, models, json.loads(ref.h5.attrs["provenance"]), overwrite=True) as w:
        tables = [ff.videos() for ff in files]
        for s in range(0, len(order), 256):
            items = []
            for _, n, i in order[s : s + 256]:
                ff, t = files[n], tables[n]
                rec = VideoRecord(**{k: (v[i].item() if isinstance(v[i], np.generic) else v[i]) for k, v in t.items()})
                res = {}
                for m in models:
                    ci = ff.clip_info(rec.id, m.key)
                    feats = {la.name: ff.clips(rec.id, m.key, la.name) for la in m.layers}
                    means = {la.name: ff.h5[f"models/{m.key}/layers/{la.name}/video_mean"][i] for la in m.layers}
                    res[m.key] = ModelResult(ClipTable(ci["start_frame"], ci["start_time"], ci["padded"],
                                                       ci["frame_indices"]), feats, means)
                items.append((rec, res))
            w.add_videos(items)
    for ff in files:
        ff.close()
    return len(order)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--videos-per-shard", type=int, default=5000)
    ap.add_argument("--clips", type=int, default=3, help="clips per video")
    ap.add_argument("--dim", type=int, default=4096)
    ap.add_argument("--dir", type=Path, default=None, help="where to write (default: a temporary folder)")
    ap.add_argument("--baseline", type=int, default=0, metavar="N",
                    help="also time the video-by-video merge of the first N videos of each shard")
    ap.add_argument("--keep", action="store_true", help="keep the files")
    args = ap.parse_args()
    work = args.dir or Path(tempfile.mkdtemp(prefix="bench_merge_"))
    work.mkdir(parents=True, exist_ok=True)
    total = args.shards * args.videos_per_shard
    try:
        t = time.perf_counter()
        paths = [work / f"shard{k}.h5" for k in range(args.shards)]
        for k, p in enumerate(paths):
            make_shard(p, k, args.shards, total, args.clips, args.dim, seed=0)
        size = sum(p.stat().st_size for p in paths)
        print(f"made {args.shards} shards, {total} videos x {args.clips} clips x {args.dim}-d "
              f"({size / 2**30:.2f} GiB) in {time.perf_counter() - t:.1f} s")
        t, cpu = time.perf_counter(), time.process_time()
        out = merge(paths, work / "merged.h5", overwrite=True)
        dt, dcpu = time.perf_counter() - t, time.process_time() - cpu
        rate = total / dt
        print(f"merge: {total} videos in {dt:.1f} s wall ({dcpu:.1f} s CPU) = {rate:,.0f} videos/s, "
              f"{size / 2**20 / dt:,.0f} MiB/s read; extrapolated 1 M videos: {1e6 / rate / 60:.1f} min "
              f"({1e6 / total * dcpu / 60:.1f} min of CPU)")
        with FeatureFile(out) as ff:
            assert ff.num_videos == total and ff.num_clips("c3d") == total * args.clips
            assert list(ff.h5["videos/input_index"][:1000]) == list(range(min(1000, total)))
        if args.baseline:
            t, cpu = time.perf_counter(), time.process_time()
            n = merge_video_by_video(paths, work / "baseline.h5", args.baseline)
            dt_b, dcpu = time.perf_counter() - t, time.process_time() - cpu
            print(f"video-by-video merge: {n} videos in {dt_b:.1f} s wall ({dcpu:.1f} s CPU) = "
                  f"{n / dt_b:,.0f} videos/s "
                  f"(slice merge is {rate / (n / dt_b):.0f}x faster); extrapolated 1 M videos: "
                  f"{1e6 / (n / dt_b) / 3600:.1f} h")
    finally:
        if not args.keep and args.dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
