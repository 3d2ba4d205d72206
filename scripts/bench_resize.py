"""The Caffe models' OpenCV resize emulation vs the float resize, frames/s (one run, alternating).

    .venv/bin/python scripts/bench_resize.py [--threads 2] [--rounds 2]

`ClipTransform(C3D).frames` on 64 random uint8 frames (best of 5) with the spec's own
`resize_backend="opencv"` (c3dfeat/resize.py: cv::resize INTER_LINEAR bit for bit) and with
`resize_backend="torch"` (F.interpolate + round, what C3D used before), alternating A and B so
both see the same load. With cv2 installed it also prints cv2.resize itself (C++, for scale).
Since 2026-11-30 the "opencv" path calls cv2.resize itself once its start-up check passes
(c3dfeat.resize.resize_engine, printed); `C3DFEAT_RESIZE=numpy` times the numpy reproduction
(the figures below are the reproduction's).
Not a test: numbers depend on the machine and its load.

Measured 2026-11-30 on the 2-core dev machine shared by seven engineers, 2 threads, frames/s,
opencv emulation vs float path, two rounds (load average 10-15):

    320x240  center    385-521 vs 295-308   (1.3-1.7x)
    320x240  10 crops  125-148 vs 113-127   (1.1-1.2x)
    1280x720 center    435-906 vs 120-125   (3.6-7.3x)
    1280x720 10 crops  159-204 vs  77-108   (1.5-2.6x)
    cv2.resize itself (C++, whole frame): 13,000 (320x240) and 4,000 (1280x720) frames/s
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Union

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from c3dfeat import get_spec
from c3dfeat.resize import resize_engine
from c3dfeat.specs import Preprocessing
from c3dfeat.transforms import ClipTransform


def frames_per_second(pre: Preprocessing, frames: np.ndarray, crops: Union[str, int], reps: int = 5) -> float:
    t = ClipTransform(pre, crops=crops)
    t.frames(frames[:4])  # warm-up
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        t.frames(frames)
        best = min(best, time.perf_counter() - start)
    return len(frames) / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    c3d = get_spec("c3d").preprocessing
    float_path = dataclasses.replace(c3d, resize_backend="torch")
    rng = np.random.default_rng(0)
    try:
        import cv2
    except ImportError:
        cv2 = None
    for hw in [(240, 320), (720, 1280)]:
        frames = rng.integers(0, 256, (64, *hw, 3), dtype=np.uint8)
        for crops in ("center", 10):
            for _ in range(args.rounds):
                a = frames_per_second(c3d, frames, crops)
                b = frames_per_second(float_path, frames, crops)
                print(f"{hw[1]}x{hw[0]} crops={crops}: opencv-exact ({resize_engine()}) {a:.0f} frames/s, "
                      f"float resize {b:.0f} frames/s, ratio {a / b:.2f}", flush=True)
        if cv2 is not None:
            start = time.perf_counter()
            for f in frames:
                cv2.resize(f, (171, 128), interpolation=cv2.INTER_LINEAR)
            rate = len(frames) / (time.perf_counter() - start)
            print(f"{hw[1]}x{hw[0]}: cv2.resize (whole frame) {rate:.0f} frames/s")


if __name__ == "__main__":
    main()
