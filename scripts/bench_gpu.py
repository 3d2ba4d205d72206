#!/usr/bin/env python
"""One command for a GPU machine: model-only and end-to-end throughput in one table.

    make install
    # PyPI's torch 2.13.0 for Linux x86_64 is a CUDA 13.0 build (driver >= 580); where a CPU
    # wheel was installed instead (a local wheel first, as on our CI machines), replace it:
    .venv/bin/pip install --force-reinstall torch==2.13.0 --index-url https://pypi.org/simple
    # GPU decoding needs FFmpeg's shared libraries and the torchcodec release made for torch 2.13
    # (torchcodec's README pairs each release with one torch): NNN below
    apt-get install -y ffmpeg && .venv/bin/pip install torchcodec==NNN
    .venv/bin/python scripts/bench_gpu.py                # ~5-8 minutes; add --json out.json
    .venv/bin/python scripts/bench_gpu.py --device cpu --quick     # checks the script itself on a CPU

On a GPU machine with no network whose python3 already has a CUDA torch (this workplace's device
machines): `make device-wheels` here, then `bash scripts/device_gpu.sh` there with `.whl` carried
(PyAV as a wheel; no GPU decoding there: torchcodec needs FFmpeg's shared libraries).

Prints one table:

* model only, per model (c3d, r2plus1d_18, r2plus1d_34, ir_csn_152) at fp32 and bf16 (autocast,
  as `--dtype bf16`), with the default batch of the device (c3dfeat.runtime.default_batch_size):
  clips/s of the pipeline's own batch runner (pinned buffers, asynchronous copies, the model's
  layout) and the peak GPU memory;
* end to end (`c3dfeat.extract`, random-init C3D, HDF5 output) on synthetic H.264 videos of
  320x240 and 1280x720: CPU decoding with PyAV (the default workers: on a GPU the usable cores
  less one, c3dfeat.runtime.default_workers) and GPU decoding with
  torchcodec (`decode_device="cuda"`, NVDEC; frames come back to the host for the transform).
  The end-to-end ratio to the model-only figure says how far decoding is from feeding the GPU;
  "cores/1k" (host CPU seconds per clip x 1000) says how many CPU cores 1000 clips/s keep busy
  with each kind of decoding: the cores NVDEC frees.

Before any figure it runs tests/test_cuda.py on the device (the pipeline's overlapped batches
equal the direct computation bit for bit, fp32 exact, bf16 recorded; ~1 minute) and stops if they
fail: throughput of wrong features means nothing. `--no-check` skips them.

Random weights (the arithmetic does not depend on them). Not a test: figures depend on the
machine and its load, printed with the table.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import torch  # noqa: E402

from c3dfeat.runtime import configure_allocator, default_batch_size, default_workers  # noqa: E402

MODELS = ("c3d", "r2plus1d_18", "r2plus1d_34", "ir_csn_152")


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def model_only(name: str, dev: torch.device, dtype: str, batch: int, seconds: float) -> Dict[str, float]:
    """clips/s of the pipeline's BatchRunner on random clips for about `seconds` — one batch in
    flight while the next is assembled and uploaded, as the scheduler runs it — and peak GPU memory."""
    from c3dfeat.pipeline.batching import BatchRunner
    from c3dfeat.pipeline.plan import ModelRequest, prepare_model

    m = prepare_model(ModelRequest(name), device=dev, random_init=True)
    runner = BatchRunner(m, batch, dev, dtype)
    clips = [torch.randn(m.clip_shape) for _ in range(batch)]
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    in_flight = None

    def step() -> None:  # launch the next batch, then collect the one before it
        nonlocal in_flight
        for k, clip in enumerate(clips):
            runner.add(k, clip)
        launched = runner.launch()
        if in_flight is not None:
            in_flight.collect()
        in_flight = launched

    for _ in range(2):  # warm-up: cuDNN autotuning, allocator
        step()
    _sync(dev)
    n, t0 = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - t0 < seconds:
        step()
        n += 1
    in_flight.collect()
    _sync(dev)
    dt = time.perf_counter() - t0
    mem = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else float("nan")
    runner.close()
    return {"clips_per_s": n * batch / dt, "gpu_mem_gib": mem, "batches": n}


def exactness_checks() -> int:
    """tests/test_cuda.py (every device present; the GPU ones are what matter here): exit status."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(REPO / "tests" / "test_cuda.py")]
    print("exactness on this machine's devices:", " ".join(cmd[2:]), flush=True)
    return subprocess.run(cmd, cwd=REPO).returncode


def _videos(cache: Path, size, seconds: float, copies: int) -> Path:
    """A folder of `copies` hard links to one synthetic video (parallel work for the workers)."""
    from bench_extract import synth_video

    h, w = size
    src = synth_video(cache / f"synth_{w}x{h}_{seconds:g}s.mp4", seconds, size=(h, w))
    d = cache / f"set_{w}x{h}_{seconds:g}s_{copies}"
    if d.exists():
        return d
    tmp = Path(tempfile.mkdtemp(dir=cache))
    for i in range(copies):
        try:
            os.link(src, tmp / f"v{i:03d}.mp4")
        except OSError:
            shutil.copy(src, tmp / f"v{i:03d}.mp4")
    os.replace(tmp, d)
    return d


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its reaped children (decode processes)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def end_to_end(folder: Path, dev: torch.device, model: str, dtype: str, batch: int, workers: int,
               decoder: str, decode_device: str, out: Path) -> Dict[str, float]:
    """clips/s of `c3dfeat.extract`, and the host CPU seconds per clip (what GPU decoding saves)."""
    from c3dfeat.pipeline import extract

    cpu0: List[float] = []

    def first_event(p: object) -> None:  # CPU time from the first video on: not the model's set-up
        if not cpu0:
            cpu0.append(_cpu_seconds())

    r = extract([folder], out, [model], device=str(dev), dtype=dtype, batch_size=batch, workers=workers,
                decoder=decoder, decode_device=decode_device, random_init=True, overwrite=True,
                progress=first_event)
    if r.failed:
        raise SystemExit(f"end to end failed: {r.failed[:2]}")
    cpu_per_clip = (_cpu_seconds() - cpu0[0]) / max(1, r.clips)
    return {"clips_per_s": r.clips_per_second, "clips": r.clips, "seconds": r.run_seconds,
            "cpu_s_per_clip": cpu_per_clip, "cores_per_1000_clips_s": 1000 * cpu_per_clip}


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda[:N] (default) or cpu")
    ap.add_argument("--quick", action="store_true",
                    help="a small check of the script: C3D only at batch 2, 2-second videos")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--seconds", type=float, default=4.0, help="timed seconds per model-only setting")
    ap.add_argument("--video-seconds", type=float, default=20.0, help="length of the synthetic videos")
    ap.add_argument("--e2e-model", default="c3d")
    ap.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "c3dfeat-bench")
    ap.add_argument("--json", metavar="PATH")
    ap.add_argument("--no-check", action="store_true", help="skip the exactness tests run first")
    args = ap.parse_args(argv)

    allocator = configure_allocator()
    dev = torch.device(args.device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit(f"--device {args.device}: torch {torch.__version__} has no usable CUDA "
                             "(CPU wheel?); see this script's docstring, or use --device cpu --quick")
        torch.backends.cudnn.benchmark = True
        name = torch.cuda.get_device_name(dev)
    else:
        name = "CPU"
    models = ["c3d"] if args.quick else [m for m in args.models.split(",") if m]
    seconds = 0.5 if args.quick else args.seconds
    video_seconds = 2.0 if args.quick else args.video_seconds
    cores = os.cpu_count() or 1
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    from c3dfeat.video import available_backends

    has_tc = "torchcodec" in available_backends()
    gpu_decoding = ""  # why GPU decoding is skipped ("": it runs)
    if not has_tc:
        gpu_decoding = "torchcodec does not load"
    elif dev.type == "cuda":
        from c3dfeat.errors import ConfigError
        from c3dfeat.video import check_decode_device

        try:
            check_decode_device(str(dev), "torchcodec")
        except ConfigError as e:
            gpu_decoding = str(e)
    print(f"device {name}, torch {torch.__version__}, {cores} CPU cores, allocator {allocator}, "
          f"torchcodec {'yes' if has_tc else 'no'}, load average {os.getloadavg()[0]:.1f}", flush=True)
    if dev.type == "cuda" and gpu_decoding:
        print(f"GPU decoding skipped: {gpu_decoding}", flush=True)

    if not args.no_check and exactness_checks() != 0:
        raise SystemExit("the exactness tests failed on this machine: no figures (see above)")

    rows: List[Dict[str, object]] = []
    for model in models:
        batch = 2 if args.quick else default_batch_size(dev, model)
        for dtype in ("fp32", "bf16"):
            r = model_only(model, dev, dtype, batch, seconds)
            rows.append({"kind": "model only", "model": model, "dtype": dtype, "batch": batch, **r})
            print(f"  model only {model} {dtype} batch {batch}: {r['clips_per_s']:.1f} clips/s", flush=True)
    ceiling = {(r["model"], r["dtype"]): r["clips_per_s"] for r in rows}

    e2e_batch = 2 if args.quick else default_batch_size(dev, args.e2e_model)
    out = args.cache_dir / "bench_gpu.h5"
    for size in ((240, 320), (720, 1280)):
        folder = _videos(args.cache_dir, size, video_seconds, copies=max(2, min(cores, 4 if args.quick else 32)))
        plans = [("pyav", "cpu", default_workers(dev))]  # what a user gets: on a GPU the cores less one
        if has_tc and dev.type == "cpu":
            plans.append(("torchcodec", "cpu", max(1, min(cores, 4))))
        elif not gpu_decoding:  # NVDEC does the decoding: a few host threads copy and transform
            plans.append(("torchcodec", str(dev), default_workers(dev, decode_device=str(dev))))
        for decoder, ddev, workers in plans:
            for dtype in ("fp32", "bf16"):
                if args.quick and dtype == "bf16":
                    continue
                r = end_to_end(folder, dev, args.e2e_model, dtype, e2e_batch, workers, decoder, ddev, out)
                ratio = r["clips_per_s"] / ceiling[(args.e2e_model, dtype)] if (args.e2e_model, dtype) in ceiling \
                    else float("nan")
                rows.append({"kind": f"end to end {size[1]}x{size[0]}", "model": args.e2e_model, "dtype": dtype,
                             "batch": e2e_batch, "decoder": f"{decoder} ({ddev}, {workers} workers)",
                             "ratio_to_model_only": ratio, **r})
                print(f"  end to end {size[1]}x{size[0]} {decoder}@{ddev} x{workers} {dtype}: "
                      f"{r['clips_per_s']:.1f} clips/s, {r['cores_per_1000_clips_s']:.1f} host cores "
                      "per 1000 clips/s", flush=True)

    print()
    header = (f"{'what':<22} {'model':<12} {'dtype':<5} {'batch':>5} {'clips/s':>9} {'GPU GiB':>8} "
              f"{'x model':>8} {'cores/1k':>8}  decoder")
    print(header)
    print("-" * len(header))
    for r in rows:
        mem = r.get("gpu_mem_gib", float("nan"))
        ratio = r.get("ratio_to_model_only", float("nan"))
        cores_k = r.get("cores_per_1000_clips_s", float("nan"))
        print(f"{r['kind']:<22} {r['model']:<12} {r['dtype']:<5} {r['batch']:>5} {r['clips_per_s']:>9.1f} "
              f"{mem:>8.2f} {ratio:>8.2f} {cores_k:>8.1f}  {r.get('decoder', '')}")
    print("cores/1k: host CPU seconds per clip x 1000 = CPU cores busy per 1000 clips/s (end to end; "
          "compare CPU decoding with GPU decoding)")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
