#!/usr/bin/env python
"""Model-only throughput (the ceiling of extraction): clips/s per model, batch, dtype, layout.

    python scripts/bench_models.py                       # c3d, res3d_18, r2plus1d_18; batch 4
    python scripts/bench_models.py -m 'r3d_18,mc3_18' -b 1 -b 8 --repeats 5
    python scripts/bench_models.py -m ir_csn_152 --clip 8,112,112   # a smaller clip, quicker
    python scripts/bench_models.py -m c3d --baseline     # + a plain nn.Sequential C3D for reference
    python scripts/bench_models.py -m all --json out.json

Same settings as the pipeline: `configure_allocator()` and `extract_layers` with the model's
inference layout; both layouts alternate run by run and `*` marks the model's default
(c3dfeat/models/_layout.py), whose figure is printed at the end as the ceiling. Random weights
(the arithmetic cost does not depend on them), the model's canonical clip (`c3dfeat models`).
GFLOP/s counts 2 FLOPs per multiply-add (torch.utils.flop_counter). The machine's load average
is printed: other processes skew results.
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

from c3dfeat.models import (
    create_model,
    default_inference_layout,
    extract_layers,
    get_spec,
    gflops_per_clip,
    list_models,
    set_inference_layout,
)
from c3dfeat.runtime import configure_allocator, default_batch_size

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


def bench_one(model: nn.Module, size, batch: int, dtype: torch.dtype, layout: str,
              repeats: int, warmup: int, layer: str = "") -> float:
    """Median seconds per batch: extract_layers (the pipeline's call) in `layout`, or a plain
    forward for a module without the feature-layer machinery."""
    model = model.to(dtype=dtype)
    if hasattr(model, "forward_layers"):
        set_inference_layout(model, layout)
        run = lambda x: extract_layers(model, x, layer or model.spec.default_layer)  # noqa: E731
    else:
        fmt = torch.channels_last_3d if layout == "channels_last_3d" else torch.contiguous_format
        model = model.to(memory_format=fmt)
        run = model
    x = torch.randn((batch, 3) + tuple(size)).to(dtype=dtype)
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            t0 = time.perf_counter()
            run(x)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--models", default=DEFAULT_MODELS,
                    help=f"comma-separated names or globs, or 'all' (default {DEFAULT_MODELS})")
    ap.add_argument("-b", "--batch", type=int, action="append", help="batch sizes (default: the device default)")
    ap.add_argument("--dtype", action="append", choices=["fp32", "bf16"], help="default: fp32")
    ap.add_argument("--layout", action="append", choices=["channels_last_3d", "contiguous", "default"],
                    help="memory layouts to time, alternating run by run (default: both)")
    ap.add_argument("--clip", default=None, metavar="T,H,W",
                    help="clip size instead of the model's canonical one (e.g. 8,112,112 for a quick CSN)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per setting (median reported)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--baseline", action="store_true",
                    help="also time a plain nn.Sequential C3D, alternating with ours run by run")
    ap.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    args = ap.parse_args(argv)

    allocator = configure_allocator()  # the pipeline's setting: the true ceiling
    if args.threads:
        torch.set_num_threads(args.threads)
    names: List[str] = []
    for pat in (list_models() if args.models == "all" else args.models.split(",")):
        hits = fnmatch.filter(list_models(), pat.strip()) or [pat.strip()]
        names += [h for h in hits if h not in names]
    batches = args.batch or [default_batch_size("cpu")]
    dtypes = args.dtype or ["fp32"]
    layouts = args.layout or ["channels_last_3d", "contiguous"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, allocator {allocator}, load average "
          f"{os.getloadavg()[0]:.2f} (other processes on this machine skew the numbers)")
    header = f"{'model':<16} {'clip':<12} {'batch':>5} {'dtype':>5} {'layout':>16} {'s/batch':>8} " \
             f"{'clips/s':>8} {'GFLOP/s':>8}"
    print(header)
    print("-" * len(header))
    rows: List[Dict] = []
    ceilings: List[str] = []
    for name in names:
        spec = get_spec(name)
        size = tuple(int(v) for v in args.clip.split(",")) if args.clip else spec.input_size
        gflop = gflops_per_clip(spec, size) if args.clip else gflops_per_clip(spec)
        with_plain = args.baseline and name == "c3d"
        default = default_inference_layout(name, "cpu")
        for batch in batches:
            for dt in dtypes:
                dtype = torch.float32 if dt == "fp32" else torch.bfloat16
                net = create_model(name)
                variants = {(name, (default if lay == "default" else lay)): net for lay in layouts}
                if with_plain:
                    variants.update({(name + " (plain)", lay): plain_c3d() for lay in layouts if lay != "default"})
                # Variants alternate run by run, so a change in machine load hits both alike.
                times: Dict = {v: [] for v in variants}
                for r in range(args.repeats):
                    for (label, lay), model in variants.items():
                        times[(label, lay)].append(bench_one(model, size, batch, dtype, lay, 1,
                                                             args.warmup if r == 0 else 0))
                for (label, lay), ts in times.items():
                    sec = statistics.median(ts)
                    row = {"model": label, "clip": "x".join(map(str, size)), "batch": batch, "dtype": dt,
                           "layout": lay, "default_layout": lay == default, "sec_per_batch": sec,
                           "clips_per_s": batch / sec, "gflop_per_s": gflop * batch / sec, "gflop_per_clip": gflop,
                           "runs": ts}
                    rows.append(row)
                    mark = "*" if lay == default and label == name else " "
                    print(f"{label:<16} {row['clip']:<12} {batch:>5} {dt:>5} {lay + mark:>16} {sec:>8.3f} "
                          f"{row['clips_per_s']:>8.2f} {row['gflop_per_s']:>8.1f}", flush=True)
                    if mark == "*":
                        ceilings.append(f"{name} batch {batch} {dt}: {row['clips_per_s']:.2f} clips/s ({lay})")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    print("ceiling (the pipeline's settings; * above):")
    for c in ceilings:
        print("  " + c)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
