#!/usr/bin/env python
"""Benchmark `c3dfeat extract`: model-only vs end-to-end clips/s, and peak RSS vs video length.

    .venv/bin/python scripts/bench_extract.py                       # C3D, default batch, CPU
    .venv/bin/python scripts/bench_extract.py --videos ../shared/videos --model r2plus1d_18
    .venv/bin/python scripts/bench_extract.py --decode-bound 3 --copies 4   # 1 vs 2 decode workers
    .venv/bin/python scripts/bench_extract.py --allocator-ab 2          # mallopt on vs off

Measures, for one model and batch size:
1. model-only clips/s (the ceiling): the pipeline's own batch runner on random clips, with the
   pipeline's allocator and layout settings (no decoding);
2. end-to-end clips/s: `c3dfeat.extract` over the sample videos (decode + transform + model +
   HDF5 commits, the pipeline's own time, excluding model construction);
3. end-to-end clips/s and peak RSS (ru_maxrss of a fresh subprocess) on synthetic 640x360
   videos of 30 s and 5 min (generated once into --cache-dir).

--decode-bound replaces the model by one that does no work (C3D's sampling and preprocessing):
decode + sampling + transform + batching + store, the most a GPU could be fed per worker; it
alternates worker counts (--decode-workers) and kinds (--decode-kinds: threads, processes, and
"independent": N separate one-worker extractions side by side, each with its own calling
process and a share of the videos balanced by file size; "bare": N processes that only run
`decode_video` on such shares, with no calling process, batching or store — what this machine
gives N decoders, the ceiling for the others).
--copies N runs on N copies of each video (the 6 shared clips alone take ~1.5 s per run).
--allocator-ab compares glibc's defaults with `configure_allocator()` (system CPU, page faults).

Targets on a CPU with C3D: end-to-end >= 0.95 x model-only; peak RSS of the 5-minute video within
10 % of the 30-second one and under 1.5 GiB. Without pretrained weights it uses --random-init
(same arithmetic, meaningless features). Not a test: numbers depend on the machine and its load.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def synth_video(path: Path, seconds: float, fps: int = 30, size=(360, 640)) -> Path:
    """A moving-gradient H.264 video (realistic decode cost), written once."""
    if path.exists():
        return path
    import av
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part.mp4")
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 24, size=(h, w, 3), dtype=np.uint8)
    with av.open(str(tmp), mode="w") as out:
        s = out.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"preset": "veryfast", "crf": "23", "g": "60"}
        for i in range(int(seconds * fps)):
            img = np.empty((h, w, 3), np.uint8)
            img[..., 0] = (xx + 3 * i) % 256
            img[..., 1] = (yy + 2 * i) % 256
            img[..., 2] = ((xx + yy) // 2 + i) % 256
            img = img + np.roll(noise, i % 7, axis=1)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(p)
        for p in s.encode(None):
            out.mux(p)
    os.replace(tmp, path)
    return path


def copies_of(folder: Path, n: int, dest: Path) -> Path:
    """`dest` holding n copies of every file in `folder` (real copies: inputs are de-duplicated
    by their resolved path, so links would count once)."""
    import shutil

    dest.mkdir(parents=True, exist_ok=True)
    for src in sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in (".mp4", ".avi")):
        for k in range(n):
            target = dest / f"copy{k}_{src.name}"
            if not target.exists():
                shutil.copyfile(src, target)
    return dest


def model_only(model: str, batch: int, batches: int, device: str, random_init: bool) -> float:
    """Clips/s of the pipeline's own batch runner on random clips: the ceiling of extraction
    (same network, layout, allocator, padding and copies as `extract`; no decoding).
    Also sets MODEL_CPU["clips_per_cpu_s"]: clips per second of process CPU time, a figure
    that a busy shared machine skews far less than wall-clock time."""
    import torch

    from c3dfeat.pipeline.batching import BatchRunner
    from c3dfeat.pipeline.plan import ModelRequest, prepare_model
    from c3dfeat.runtime import configure_allocator, pick_device

    configure_allocator()
    dev = pick_device(device)
    m = prepare_model(ModelRequest(model), device=dev, random_init=random_init)
    runner = BatchRunner(m, batch, dev)
    clips = [torch.randn(m.clip_shape) for _ in range(batch)]
    runner.compute(clips)  # warm-up
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(batches):
        runner.compute(clips)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    MODEL_CPU["clips_per_cpu_s"] = batch * batches / (time.process_time() - c0)
    return batch * batches / (time.perf_counter() - t0)


MODEL_CPU: Dict[str, float] = {}


NULL_MODEL = "null_c3d"


def register_null_model() -> str:
    """Register `null_c3d`: C3D's sampling and preprocessing (16 frames every 8, 112x112 crops)
    and a network that does no work (zeros for fc6), so extract measures everything else:
    decode + sampling + transform + batching + store."""
    import dataclasses

    import torch
    import torch.nn as nn

    from c3dfeat.models import get_spec, register_model
    from c3dfeat.models._registry import _REGISTRY

    class NullNet(nn.Module):
        def __init__(self, num_classes: int = 487) -> None:
            super().__init__()
            self.anchor = nn.Parameter(torch.zeros(1))  # a parameter, so the model has a device

        def forward_layers(self, x, layers):
            return {name: x.new_zeros((x.shape[0], 4096)) for name in layers}

    if NULL_MODEL not in _REGISTRY:
        c3d = get_spec("c3d")
        fc6 = c3d.layer("fc6")
        register_model(dataclasses.replace(
            c3d, name=NULL_MODEL, builder=NullNet, checkpoints=(), checkpoint=None, layers=(fc6,),
            default_layer="fc6", preprocessing=dataclasses.replace(c3d.preprocessing, mean_cube=None),
            description="benchmark only: C3D's input pipeline, no network"))
    return NULL_MODEL


_CHILD = """
import json, resource, sys
sys.path.insert(0, {repo!r})
sys.path.insert(0, {scripts!r})
from bench_extract import PssSampler
from c3dfeat.pipeline import extract
kw = json.loads(sys.argv[1])
if kw.pop("null_model", False):
    from bench_extract import register_null_model
    kw["models"] = [register_null_model()]
import time
first_event = []  # this process's CPU time at the first progress event: the run itself starts
kw["progress"] = lambda p: first_event.append(time.process_time()) if not first_event else None
pss = PssSampler(active=kw.pop("sample_pss", True))  # off where the calling process's CPU is measured
with pss:
    r = extract(**kw)
parent_cpu_run = time.process_time() - first_event[0] if first_event else 0.0
ru = resource.getrusage(resource.RUSAGE_SELF)
ch = resource.getrusage(resource.RUSAGE_CHILDREN)  # decode processes (worker_kind="process")
print(json.dumps({{"clips": r.clips, "run_seconds": r.run_seconds, "ok": r.ok, "failed": len(r.failed),
                  "maxrss_kib": ru.ru_maxrss, "child_maxrss_kib": ch.ru_maxrss, "peak_pss_kib": pss.peak_kib,
                  "parent_cpu_run_s": parent_cpu_run,
                  "user_s": ru.ru_utime + ch.ru_utime, "sys_s": ru.ru_stime + ch.ru_stime,
                  "minor_faults": ru.ru_minflt + ch.ru_minflt}}))
"""


_BARE = """
import json, resource, sys, time
from pathlib import Path
sys.path.insert(0, {repo!r})
sys.path.insert(0, {scripts!r})
import torch
torch.set_num_threads(1)  # as in a decode process
from bench_extract import register_null_model
from c3dfeat.pipeline.decode import ClipReady, VideoTask, decode_video
from c3dfeat.pipeline.plan import ModelRequest, prepare_model
kw = json.loads(sys.argv[1])
model = prepare_model(ModelRequest(register_null_model()), device=torch.device("cpu"), random_init=True)
paths = sorted(Path(p) for p in kw["inputs"])
t0, clips = time.perf_counter(), 0
for i, path in enumerate(paths):
    for msg in decode_video(VideoTask(i, path.name, path, input_index=i), [model], kw.get("decoder", "pyav")):
        clips += isinstance(msg, ClipReady)
seconds = time.perf_counter() - t0
ru = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({{"clips": clips, "run_seconds": seconds, "ok": len(paths), "failed": 0,
                  "maxrss_kib": ru.ru_maxrss, "child_maxrss_kib": 0, "peak_pss_kib": 0, "parent_cpu_run_s": 0.0,
                  "user_s": ru.ru_utime, "sys_s": ru.ru_stime, "minor_faults": ru.ru_minflt}}))
"""


class PssSampler:
    """Peak total PSS of this process and its children (decode processes), sampled every 0.5 s
    (reading smaps costs CPU): RSS counts the pages a forked child shares with its parent twice,
    PSS splits them."""

    def __init__(self, period: float = 0.5, active: bool = True) -> None:
        self.period, self.peak_kib, self.active = period, 0, active
        import threading

        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "PssSampler":
        if self.active:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self.active:
            self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            self.peak_kib = max(self.peak_kib, sum(_pss_kib(p) for p in [os.getpid()] + _children(os.getpid())))


def _children(pid: int) -> List[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def end_to_end(inputs, out: Path, env: Optional[Dict[str, str]] = None, **kw) -> dict:
    """Run extract in a fresh subprocess (so ru_maxrss, CPU times and page faults are this run's)."""
    return _result(_spawn(inputs, out, env, **kw))


def side_by_side(n: int, inputs, out: Path, script: str = _CHILD, **kw) -> dict:
    """`n` one-worker extractions at once, each in its own process, on a share of the videos
    balanced by file size (the same work as one run with n workers, split as well as it can be
    beforehand): all their clips over the longest one's run time (summing each run's own clips/s
    would credit the last one running alone, on a core the others had left, as if it had shared)."""
    files = [f for i in inputs for f in (Path(i).iterdir() if Path(i).is_dir() else [Path(i)]) if f.is_file()]
    shares: List[List[Path]] = [[] for _ in range(n)]
    sizes = [0] * n
    for f in sorted(files, key=lambda f: f.stat().st_size, reverse=True):  # largest first, to the lightest share
        k = sizes.index(min(sizes))
        shares[k].append(f)
        sizes[k] += f.stat().st_size
    procs = [_spawn(sorted(share), out.with_name(f"{out.stem}_{k}{out.suffix}"), None, script, **dict(kw, workers=1))
             for k, share in enumerate(shares)]
    runs = [_result(p) for p in procs]
    total = {k: sum(r[k] for r in runs) for k in ("clips", "user_s", "sys_s", "minor_faults", "parent_cpu_run_s")}
    longest = max(r["run_seconds"] for r in runs)
    return {**runs[0], **total, "clips_per_s": total["clips"] / longest if longest else 0.0,
            "maxrss_kib": max(r["maxrss_kib"] for r in runs), "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
            "sys_over_user": total["sys_s"] / total["user_s"] if total["user_s"] else 0.0}


def _spawn(inputs, out: Path, env: Optional[Dict[str, str]], script: str = _CHILD, **kw) -> "subprocess.Popen[str]":
    args = dict(inputs=[str(i) for i in inputs], output=str(out), overwrite=True, **kw)
    child = script.format(repo=str(REPO), scripts=str(REPO / "scripts"))
    return subprocess.Popen([sys.executable, "-c", child, json.dumps(args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})


def _result(p: "subprocess.Popen[str]") -> dict:
    stdout, stderr = p.communicate()
    if p.returncode != 0:
        raise SystemExit(f"extract failed:\n{stderr[-3000:]}")
    r = json.loads(stdout.strip().splitlines()[-1])
    r["clips_per_s"] = r["clips"] / r["run_seconds"] if r["run_seconds"] else 0.0
    r["peak_rss_mib"] = r["maxrss_kib"] / 1024
    r["sys_over_user"] = r["sys_s"] / r["user_s"] if r["user_s"] else 0.0
    r["load"] = os.getloadavg()[0]
    return r


def _line(label: str, r: dict) -> str:
    child = f" (largest child {r['child_maxrss_kib'] / 1024:.0f} MiB)" if r.get("child_maxrss_kib") else ""
    child += f", peak PSS with children {r['peak_pss_kib'] / 1024:.0f} MiB" if r.get("peak_pss_kib") else ""
    return (f"{label}: {r['clips']} clips, {r['clips_per_s']:.3f} clips/s, "
            f"peak RSS {r['peak_rss_mib']:.0f} MiB{child}, "
            f"user {r['user_s']:.1f} s, sys {r['sys_s']:.1f} s ({100 * r['sys_over_user']:.0f} %), "
            f"{r['minor_faults'] / 1e6:.2f} M minor faults, load {r['load']:.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=Path, default=REPO.parent / "shared" / "videos")
    ap.add_argument("--model", default="c3d")
    ap.add_argument("--batch-size", type=int, default=None, help="default: c3dfeat.runtime.default_batch_size")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--worker-kind", default="auto", choices=["auto", "thread", "process"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--decoder", default="pyav", choices=["pyav", "decord", "torchcodec"])
    ap.add_argument("--model-batches", type=int, default=4, help="timed batches for model-only")
    ap.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "c3dfeat-bench")
    ap.add_argument("--long-stride", type=int, default=None,
                    help="clip stride for the 30 s / 5 min videos (default: the model's; a larger one "
                         "keeps CPU runs short — every frame is still decoded)")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: model,videos,long")
    ap.add_argument("--weights", action="store_true", help="use pretrained weights (default: --random-init)")
    ap.add_argument("--allocator-ab", type=int, default=0, metavar="N",
                    help="instead: N rounds of end to end on --videos alternating C3DFEAT_MALLOC=system and "
                         "the default (CPU time, system time, page faults per run)")
    ap.add_argument("--decode-bound", type=int, default=0, metavar="N",
                    help="instead: N rounds of the decode-bound run (a C3D-shaped model that does no work) "
                         "alternating --decode-workers")
    ap.add_argument("--decode-workers", default="1,2", help="worker counts for --decode-bound")
    ap.add_argument("--decode-kinds", default="thread,process,independent,bare",
                    help="worker kinds for --decode-bound (independent: N one-worker runs side by side; "
                         "bare: N processes running decode_video alone)")
    ap.add_argument("--copies", type=int, default=1, help="run on N copies of each of --videos")
    args = ap.parse_args()
    from c3dfeat.runtime import default_batch_size

    batch = args.batch_size or default_batch_size(args.device, args.model)
    skip = set(filter(None, args.skip.split(",")))
    random_init = not args.weights
    common = dict(models=[args.model], batch_size=batch, workers=args.workers, device=args.device,
                  random_init=random_init, decoder=args.decoder, worker_kind=args.worker_kind)
    out = args.cache_dir / "bench.h5"
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    if args.copies > 1:
        args.videos = copies_of(args.videos, args.copies, args.cache_dir / f"copies{args.copies}")
    print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores", flush=True)

    if args.decode_bound:
        counts = [int(w) for w in args.decode_workers.split(",")]
        kinds = args.decode_kinds.split(",")
        runs: Dict[tuple, List[float]] = {(k, w): [] for k in kinds for w in counts}
        for _ in range(args.decode_bound):
            for kind, w in runs:  # alternating: load drift hits every setting alike
                run = dict(common, null_model=True, models=[], sample_pss=False)
                if kind == "independent":  # w separate one-worker runs (decode processes) at once
                    r = side_by_side(w, [args.videos], out, **dict(run, worker_kind="process"))
                elif kind == "bare":  # w processes that only run decode_video: no calling process at all
                    r = side_by_side(w, [args.videos], out, _BARE, decoder=args.decoder)
                else:
                    r = end_to_end([args.videos], out, **dict(run, workers=w, worker_kind=kind))
                runs[kind, w].append(r["clips_per_s"])
                per_clip = r["parent_cpu_run_s"] / max(1, r["clips"])
                calling = f"; calling process {1e3 * per_clip:.2f} CPU ms per clip" if kind != "bare" else ""
                print(_line(f"decode-bound, {w} {kind} worker(s)", r) + calling, flush=True)
        med = {key: statistics.median(v) for key, v in runs.items()}
        for kind, w in runs:
            base = med[kind, counts[0]]
            print(f"decode-bound {w} {kind} worker(s): median {med[kind, w]:.1f} clips/s "
                  f"({med[kind, w] / base:.2f}x {counts[0]} {kind} worker(s))")
        print(f"load average at the end: {os.getloadavg()[0]:.2f}")
        return
    if args.allocator_ab:
        for _ in range(args.allocator_ab):
            for label, env in (("C3DFEAT_MALLOC=system", {"C3DFEAT_MALLOC": "system"}),
                               ("configure_allocator (default)", {"C3DFEAT_MALLOC": ""})):
                print(_line(f"{label}", end_to_end([args.videos], out, env=env, **common)), flush=True)
        print(f"load average at the end: {os.getloadavg()[0]:.2f}")
        return

    res: dict = {"model": args.model, "batch_size": batch, "workers": args.workers, "device": args.device,
                 "decoder": args.decoder, "random_init": random_init, "long_stride": args.long_stride}
    import torch

    res["torch_threads"] = torch.get_num_threads()
    if "model" not in skip:
        res["model_only_clips_per_s"] = model_only(args.model, batch, args.model_batches, args.device, random_init)
        cpu_rates = [MODEL_CPU["clips_per_cpu_s"]]
        print(f"model-only (ceiling): {res['model_only_clips_per_s']:.3f} clips/s, "
              f"{cpu_rates[-1]:.3f} clips per CPU second", flush=True)
    if "videos" not in skip:
        r = end_to_end([args.videos], out, **common)
        res["shared_videos"] = r
        print(_line(f"end-to-end {args.videos}", r), flush=True)
    if "long" not in skip:
        kw = dict(common, stride=args.long_stride) if args.long_stride else common
        for name, secs in (("30s", 30), ("5min", 300)):
            v = synth_video(args.cache_dir / f"synth_640x360_{name}.mp4", secs)
            r = end_to_end([v], out, **kw)
            res[f"synthetic_{name}"] = r
            print(_line(f"end-to-end synthetic {name} 640x360", r), flush=True)
    if "model" not in skip:
        # Again after the end-to-end runs: on a shared machine the load drifts; the ratio uses the mean.
        again = model_only(args.model, batch, args.model_batches, args.device, random_init)
        cpu_rates.append(MODEL_CPU["clips_per_cpu_s"])
        res["model_only_clips_per_s_before_after"] = [res["model_only_clips_per_s"], again]
        res["model_only_clips_per_s"] = (res["model_only_clips_per_s"] + again) / 2
        res["model_only_clips_per_cpu_s"] = sum(cpu_rates) / len(cpu_rates)
        print(f"model-only (ceiling, again): {again:.3f} clips/s, {cpu_rates[-1]:.3f} clips per CPU second",
              flush=True)
    if "model_only_clips_per_s" in res:
        for k in ("shared_videos", "synthetic_5min"):
            if k in res:
                res[f"{k}_ratio"] = res[k]["clips_per_s"] / res["model_only_clips_per_s"]
                print(f"{k}: end to end = {res[f'{k}_ratio']:.2f} x the model-only ceiling (wall clock)")
                if "model_only_clips_per_cpu_s" in res:
                    cpu = res[k]["clips"] / (res[k]["user_s"] + res[k]["sys_s"])
                    res[f"{k}_cpu_ratio"] = cpu / res["model_only_clips_per_cpu_s"]
                    print(f"{k}: end to end = {res[f'{k}_cpu_ratio']:.2f} x the model-only ceiling per CPU second "
                          "(whole process: imports, model building and HDF5 included)")
    if "synthetic_30s" in res and "synthetic_5min" in res:
        res["rss_5min_over_30s"] = res["synthetic_5min"]["peak_rss_mib"] / res["synthetic_30s"]["peak_rss_mib"]
        print(f"peak RSS 5 min / 30 s: {res['rss_5min_over_30s']:.2f}")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
