"""In-process vs `--engine ray` (local runtime) on the same videos: wall time and file equality.

    .venv/bin/python scripts/bench_ray.py /work/shared/videos --model c3d --rounds 1

Alternates A (in-process) and B (Ray, its local runtime started and stopped inside the call, as
a user's `c3dfeat extract --engine ray` does) in one process; prints each wall time, the ratio
B/A per round, whether the files are equal dataset by dataset, and the load average.
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
    args = ap.parse_args()
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
            t0 = time.monotonic()
            rb = extract([args.videos], b, [args.model], engine="ray", **opts)
            tb = time.monotonic() - t0
            print(f"  ray       : {tb:7.1f} s  ({rb.ok} videos, {rb.clips} clips; pipeline {rb.run_seconds:.1f} s)"
                  f"  load {os.getloadavg()[0]:.1f}", flush=True)
            print(f"  ratio ray/in-process: {tb / ta:.2f}   files equal: {same_file(a, b)}", flush=True)


if __name__ == "__main__":
    main()
