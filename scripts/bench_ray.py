"""In-process vs `--engine ray` (local runtime) on the same videos: wall time and file equality.

    .venv/bin/python scripts/bench_ray.py /work/shared/videos --model c3d --rounds 1
    .venv/bin/python scripts/bench_ray.py /work/shared/videos --model c3d --trace  # + Ray's phases
    .venv/bin/python scripts/bench_ray.py - --driver 2000 10     # the driver's writer alone

Alternates A (in-process) and B (Ray, its local runtime started and stopped inside the call, as
a user's `c3dfeat extract --engine ray` does) in one process; prints each wall time, the ratio
B/A per round, whether the files are equal dataset by dataset, and the load average. `--trace`
also prints each Ray run's phases (seconds from the call's start, every process: see
$C3DFEAT_RAY_TRACE in c3dfeat/pipeline/ray_actors.py).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np


def same_file(a: Path, b: Path) -> bool:
    """Every dataset (committed rows) and the compared provenance equal."""
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        if json.loads(fa.attrs["provenance"]) != json.loads(fb.attrs["provenance"]):
            return False
        names: list = []
        fa.visit(lambda n: names.append(n) if isinstance(fa[n], h5py.Dataset) else None)
        for n in names:
            if n not in fb or not np.array_equal(fa[n][()], fb[n][()]):
                print("  differs:", n)
                return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("videos")
    ap.add_argument("--model", default="c3d")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--pretrained", action="store_true", help="use the checkpoint (default: --random-init)")
    ap.add_argument("--trace", action="store_true", help="print the Ray run's phases")
    ap.add_argument("--driver", nargs=2, type=int, metavar=("VIDEOS", "CLIPS"),
                    help="measure only the driver-side writer on synthetic rows (VIDEOS videos of CLIPS clips)")
    args = ap.parse_args()
    if args.driver:
        videos, clips = args.driver
        bench_driver(videos, clips, model=args.model)
        return
    from c3dfeat.pipeline import extract

    opts = dict(random_init=not args.pretrained, device="cpu", batch_size=args.batch_size, workers=args.workers,
                overwrite=True)
    with tempfile.TemporaryDirectory() as tmp:
        a, b = Path(tmp) / "local.h5", Path(tmp) / "ray.h5"
        for r in range(args.rounds):
            print(f"round {r}: load {os.getloadavg()[0]:.1f}", flush=True)
            t0 = time.monotonic()
            ra = extract([args.videos], a, [args.model], **opts)
            ta = time.monotonic() - t0
            print(f"  in-process: {ta:7.1f} s  ({ra.ok} videos, {ra.clips} clips)  load {os.getloadavg()[0]:.1f}",
                  flush=True)
            trace = Path(tmp) / f"trace{r}.txt"
            if args.trace:
                os.environ["C3DFEAT_RAY_TRACE"] = str(trace)  # before the runtime starts: workers inherit it
            t0 = time.monotonic()
            rb = extract([args.videos], b, [args.model], engine="ray", **opts)
            tb = time.monotonic() - t0
            os.environ.pop("C3DFEAT_RAY_TRACE", None)
            print(f"  ray       : {tb:7.1f} s  ({rb.ok} videos, {rb.clips} clips; pipeline {rb.run_seconds:.1f} s)"
                  f"  load {os.getloadavg()[0]:.1f}", flush=True)
            print(f"  ratio ray/in-process: {tb / ta:.2f}   files equal: {same_file(a, b)}", flush=True)
            if args.trace:
                print_phases(trace)


def print_phases(trace: Path) -> None:
    """The trace's phases, seconds from the call's start: driver steps, per worker its first and
    last event, the inference calls summed (count, rows, CPU seconds of the actor process)."""
    lines = [(float(t), pid, ev.strip()) for t, pid, ev in (s.split(" ", 2) for s in trace.read_text().splitlines())]
    t0 = lines[0][0]
    driver = lines[0][1]
    for t, pid, ev in lines:
        if pid == driver:
            print(f"  {t - t0:6.2f}  driver   {ev}")
    for pid in dict.fromkeys(p for _, p, _ in lines if p != driver):
        evs = [(t - t0, ev) for t, p, ev in lines if p == pid]
        calls = [ev for _, ev in evs if ev.startswith("actor call")]
        decodes = [ev for _, ev in evs if ev.startswith("decode end")]
        marks = [(t, ev) for t, ev in evs if ev == "actor ready"] + [next((t, ev) for t, ev in evs if ev in calls)] \
            if calls else []
        what = f"{len(calls)} inference calls" if calls else f"{len(decodes)} videos decoded" if decodes else ""
        steps = [evs[0]] + marks + [evs[-1]]
        print(f"  {steps[0][0]:6.2f}  pid {pid:>7}  " + "  |  ".join(f"{t:.2f} {ev}" for t, ev in steps)
              + f"  ({what})")



def bench_driver(videos: int, clips: int, model: str = "c3d") -> None:
    """The Ray driver's side alone: rows in (as the actors send them) → assembled → HDF5 commits.

    Feeds `_commit_stream` (the engine's own driver loop) synthetic feature rows of `videos`
    videos with `clips` clips each, in blocks of one video, and prints videos/s and clips/s:
    the ceiling of a single driver-side writer, to compare with what a cluster delivers.
    """
    import pickle

    import torch

    from c3dfeat.pipeline import ray_engine as engine
    from c3dfeat.pipeline.decode import VideoTask
    from c3dfeat.pipeline.plan import ModelRequest, prepare_models
    from c3dfeat.pipeline.report import ExtractReport
    from c3dfeat.sampling import sample_clips
    from c3dfeat.store import VideoRecord, open_writer

    (pm,) = prepare_models([ModelRequest(model)], device=torch.device("cpu"), random_init=True)
    n_values = sum(int(np.prod(pm.feature_shape(layer))) for layer in pm.layers)
    plan = sample_clips(clips * pm.sampling.stride, 30.0, pm.sampling)[:clips]
    feature = np.random.default_rng(0).standard_normal(n_values).astype(np.float32).tobytes()

    class Stream:
        def iter_batches(self, **_: object):
            for seq in range(videos):
                rec = VideoRecord(id=f"v{seq:07d}.mp4", path=f"/data/v{seq:07d}.mp4", input_index=seq,
                                  num_frames=clips * 16, fps=30.0, duration=clips * 16 / 30, height=240, width=320)
                n = len(plan)
                meta = [pickle.dumps((rec, [plan]))] + [b""] * (n - 1)
                yield {"seq": np.full(n, seq), "kind": np.zeros(n, np.int64), "model": np.zeros(n, np.int64),
                       "clip": np.arange(n), "end": np.arange(n) == n - 1, "meta": np.array(meta, dtype=object),
                       "data": np.array([feature] * n, dtype=object)}

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "driver.h5"
        todo = [VideoTask(i, f"v{i:07d}.mp4", Path(f"/data/v{i:07d}.mp4"), "", i) for i in range(videos)]
        report = ExtractReport(output=out)
        writer = open_writer(out, [pm.info], {"decoder": "pyav", "dtype": "fp32"})
        t0 = time.monotonic()
        try:
            engine._commit_stream(Stream(), todo, [pm], writer, report, None, t0)
        finally:
            writer.close()
        dt = time.monotonic() - t0
        size = out.stat().st_size
    print(f"driver: {videos} videos x {len(plan)} clips of {model} ({n_values} values/clip): {dt:.1f} s, "
          f"{videos / dt:.0f} videos/s, {videos * len(plan) / dt:.0f} clips/s, file {size / 2**20:.0f} MiB, "
          f"load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
