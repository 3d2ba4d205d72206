"""Decoding and preprocessing throughput (frames/s) — the per-frame cost of every extraction.

    .venv/bin/python scripts/bench_video.py [--threads 1] [--videos DIR]

* decode: each available backend (decord, pyav, torchcodec) reads every frame of each video in
  increasing windows of 64 indices (what the pipeline asks), frames/s;
* transform: `ClipTransform.frames` on 64 random uint8 frames, frames/s, per model preset
  (320x240 input unless stated).

Not a test: numbers depend on the machine and its load.

Measured 2026-11-26 on the 2-core dev machine while five engineers shared it (load average
7-9, so roughly a quarter to a half of the idle speed):

    decode, frames/s (--threads 2 run)  decord   pyav
      mmaction2_demo.mp4 340x256         306     520
      v_ApplyEyeMakeup (AVI)             729     830
      v_ZNVhz7ctTq0.mp4 480x360          239     510
      synthetic 640x360 (noisy)           71     114
    transform frames(), frames/s        1 thread   2 threads
      c3d     center   320x240 -> 112     319        289
      c3d     10 crops 320x240            160        120
      r2plus1d_18 center 320x240          466        304
      ir_csn_152  center 320x240 -> 224   148        113
      c3d     center   640x360            199        167
      c3d     center   1280x720            61        158   (2 threads: uint8-gather resize)

Since 2026-11-30 the torch resize runs on one-channel planes (transforms.resize_planes: the same
bits at any thread count); one-thread figures of the torch-resized models rose 1.5-6x (the
uint8 gather now passes its check at one thread too): docs/sampling.md, "Speed".
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from c3dfeat import get_spec
from c3dfeat.runtime import configure_allocator
from c3dfeat.transforms import ClipTransform
from c3dfeat.video import available_backends, open_video


def bench_decode(path: str, backend: str) -> float:
    t = time.perf_counter()
    with open_video(path, backend, threads=1) as v:
        n = v.num_frames
        for s in range(0, n, 64):
            v.get_frames(range(s, min(n, s + 64)))
    return n / (time.perf_counter() - t)


def bench_transform(model: str, crops, hw=(240, 320), n=64, reps=5) -> float:
    t = ClipTransform(get_spec(model).preprocessing, crops=crops)
    x = np.random.default_rng(0).integers(0, 256, size=(n, *hw, 3), dtype=np.uint8)
    t.frames(x)
    start = time.perf_counter()
    for _ in range(reps):
        t.frames(x)
    return reps * n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the transforms")
    ap.add_argument("--videos", default=str(Path(__file__).resolve().parents[2] / "shared" / "videos"))
    args = ap.parse_args()
    configure_allocator()  # as in extraction
    torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}, cpu count: {os.cpu_count()}")

    videos = sorted(glob.glob(os.path.join(args.videos, "*.mp4")) + glob.glob(os.path.join(args.videos, "*.avi")))
    with tempfile.TemporaryDirectory() as d:
        from tests.synth import make_video

        videos.append(str(make_video(Path(d) / "synthetic_640x360.mp4", 300, size=(360, 640), fps=30, noise=20)))
        backends = available_backends()
        print(f"\ndecode (frames/s, 1 decoder thread, windows of 64; load {os.getloadavg()[0]:.1f})")
        for p in videos:
            row = "  ".join(f"{b} {bench_decode(p, b):8.1f}" for b in backends)
            print(f"  {os.path.basename(p):32s} {row}")

    print("\ntransform frames() (frames/s, 64 frames per call)")
    for model, crops, hw in [
        ("c3d", "center", (240, 320)),
        ("c3d", 10, (240, 320)),
        ("r2plus1d_18", "center", (240, 320)),
        ("ir_csn_152", "center", (240, 320)),
        ("c3d", "center", (360, 640)),
        ("c3d", "center", (720, 1280)),
    ]:
        print(f"  {model:12s} crops={str(crops):6s} {hw[1]}x{hw[0]} -> {bench_transform(model, crops, hw):8.1f}")


if __name__ == "__main__":
    main()
