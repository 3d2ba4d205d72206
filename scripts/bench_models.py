#!/usr/bin/env python
"""Model-only throughput: clips/s and GFLOP/s per model, batch size, dtype and memory format.

    python scripts/bench_models.py                       # c3d, res3d_18, r2plus1d_18
    python scripts/bench_models.py -m 'r3d_18,mc3_18' -b 1 -b 8 --repeats 5
    python scripts/bench_models.py -m c3d --baseline     # + a plain nn.Sequential C3D for reference
    python scripts/bench_models.py -m all --json out.json

Random weights (the arithmetic cost does not depend on them), the model's canonical clip
(`c3dfeat models`), torch.inference_mode. GFLOP/s counts 2 FLOPs per multiply-add
(torch.utils.flop_counter). The machine's load average is printed: other processes skew results.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import os
import statistics
import sys
import time
from typing import Dict, List

import torch
import torch.nn as nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from c3dfeat.models import create_model, gflops_per_clip, get_spec, list_models  # noqa: E402

DEFAULT_MODELS = "c3d,res3d_18,r2plus1d_18"


def plain_c3d() -> nn.Module:
    """C3D as plain PyTorch layers (no feature-layer machinery): the speed ceiling for ours."""
    layers: List[nn.Module] = []
    cfg = [(3, 64, (1, 2, 2)), (64, 128, 2), (128, 256, None), (256, 256, 2), (256, 512, None),
           (512, 512, 2), (512, 512, None), (512, 512, 2)]
    for cin, cout, pool in cfg:
        layers += [nn.Conv3d(cin, cout, 3, padding=1), nn.ReLU()]
        if pool is not None:
            layers.append(nn.MaxPool3d(pool, pool, ceil_mode=True))
    layers += [nn.Flatten(), nn.Linear(8192, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(),
               nn.Linear(4096, 487)]
    return nn.Sequential(*layers).eval()


def bench_one(model: nn.Module, size, batch: int, dtype: torch.dtype, channels_last: bool,
              repeats: int, warmup: int) -> float:
    """Median seconds per batch."""
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    model = model.to(dtype=dtype, memory_format=fmt)
    x = torch.randn((batch, 3) + tuple(size)).to(dtype=dtype, memory_format=fmt)
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            t0 = time.perf_counter()
            model(x)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--models", default=DEFAULT_MODELS,
                    help=f"comma-separated names or globs, or 'all' (default {DEFAULT_MODELS})")
    ap.add_argument("-b", "--batch", type=int, action="append", help="batch sizes (default 1 and 8)")
    ap.add_argument("--dtype", action="append", choices=["fp32", "bf16"], help="default: both")
    ap.add_argument("--channels-last", action="append", choices=["on", "off"], help="default: both")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per setting (median reported)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--baseline", action="store_true",
                    help="also time a plain nn.Sequential C3D, alternating with ours run by run")
    ap.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    names: List[str] = []
    for pat in (list_models() if args.models == "all" else args.models.split(",")):
        hits = fnmatch.filter(list_models(), pat.strip()) or [pat.strip()]
        names += [h for h in hits if h not in names]
    batches = args.batch or [1, 8]
    dtypes = args.dtype or ["fp32", "bf16"]
    formats = args.channels_last or ["on", "off"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average "
          f"{os.getloadavg()[0]:.2f} (other processes on this machine skew the numbers)")
    header = f"{'model':<14} {'clip':<12} {'batch':>5} {'dtype':>5} {'ch_last':>7} {'s/batch':>8} " \
             f"{'clips/s':>8} {'GFLOP/s':>8}"
    print(header)
    print("-" * len(header))
    rows: List[Dict] = []
    for name in names:
        spec = get_spec(name)
        size = spec.input_size
        gflop = gflops_per_clip(spec)
        with_plain = args.baseline and name == "c3d"
        for batch in batches:
            for dt in dtypes:
                for cl in formats:
                    dtype = torch.float32 if dt == "fp32" else torch.bfloat16
                    variants = {name: create_model(name)}
                    if with_plain:
                        variants[name + " (plain)"] = plain_c3d()
                    # Variants alternate run by run, so a change in machine load hits both alike.
                    times: Dict[str, List[float]] = {v: [] for v in variants}
                    for r in range(args.repeats):
                        for label, model in variants.items():
                            times[label].append(bench_one(model, size, batch, dtype, cl == "on", 1,
                                                          args.warmup if r == 0 else 0))
                    for label, ts in times.items():
                        sec = statistics.median(ts)
                        row = {"model": label, "clip": "x".join(map(str, size)), "batch": batch, "dtype": dt,
                               "channels_last_3d": cl == "on", "sec_per_batch": sec, "clips_per_s": batch / sec,
                               "gflop_per_s": gflop * batch / sec, "gflop_per_clip": gflop}
                        rows.append(row)
                        print(f"{label:<14} {row['clip']:<12} {batch:>5} {dt:>5} {cl:>7} {sec:>8.3f} "
                              f"{row['clips_per_s']:>8.2f} {row['gflop_per_s']:>8.1f}", flush=True)
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
