#!/usr/bin/env python
"""Benchmark `c3dfeat extract`: model-only vs end-to-end clips/s, and peak RSS vs video length.

    .venv/bin/python scripts/bench_extract.py                       # C3D, batch 8, CPU
    .venv/bin/python scripts/bench_extract.py --videos ../shared/videos --model r2plus1d_18

Measures, for one model and batch size:
1. model-only clips/s: forward passes on random clips of the model's input size (no decoding);
2. end-to-end clips/s: `c3dfeat.extract` over the sample videos (decode + transform + model +
   HDF5 commits, the pipeline's own time, excluding model construction);
3. end-to-end clips/s and peak RSS (ru_maxrss of a fresh subprocess) on synthetic 640x360
   videos of 30 s and 5 min (generated once into --cache-dir).

Targets on a CPU with C3D: end-to-end >= 0.9 x model-only; peak RSS of the 5-minute video within
10 % of the 30-second one and under 1.5 GiB. Without pretrained weights it uses --random-init
(same arithmetic, meaningless features). Not a test: numbers depend on the machine and its load.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


def model_only(model: str, batch: int, batches: int, device: str, random_init: bool) -> float:
    import torch

    from c3dfeat.pipeline import ModelRequest
    from c3dfeat.pipeline.plan import pick_device, prepare_model
    from c3dfeat.models import extract_layers

    dev = pick_device(device)
    m = prepare_model(ModelRequest(model), random_init=random_init, device=dev)
    t, c = m.sampling.clip_len, m.transform.crop_size
    x = torch.randn(batch, 3, t, c, c).to(dev)
    extract_layers(m.net, x, m.layers)  # warm-up
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(batches):
        extract_layers(m.net, x, m.layers)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return batch * batches / (time.perf_counter() - t0)


_CHILD = """
import json, resource, sys
sys.path.insert(0, {repo!r})
from c3dfeat.pipeline import extract
kw = json.loads(sys.argv[1])
r = extract(**kw)
print(json.dumps({{"clips": r.clips, "run_seconds": r.run_seconds, "ok": r.ok, "failed": len(r.failed),
                  "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}}))
"""


def end_to_end(inputs, out: Path, **kw) -> dict:
    """Run extract in a fresh subprocess (so ru_maxrss is this run's peak)."""
    args = dict(inputs=[str(i) for i in inputs], output=str(out), overwrite=True, **kw)
    p = subprocess.run([sys.executable, "-c", _CHILD.format(repo=str(REPO)), json.dumps(args)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"extract failed:\n{p.stderr[-3000:]}")
    r = json.loads(p.stdout.strip().splitlines()[-1])
    r["clips_per_s"] = r["clips"] / r["run_seconds"] if r["run_seconds"] else 0.0
    r["peak_rss_mib"] = r["maxrss_kib"] / 1024
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=Path, default=REPO.parent / "shared" / "videos")
    ap.add_argument("--model", default="c3d")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--decoder", default="pyav", choices=["pyav", "decord"])
    ap.add_argument("--model-batches", type=int, default=4, help="timed batches for model-only")
    ap.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "c3dfeat-bench")
    ap.add_argument("--long-stride", type=int, default=None,
                    help="clip stride for the 30 s / 5 min videos (default: the model's; a larger one "
                         "keeps CPU runs short — every frame is still decoded)")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: model,videos,long")
    ap.add_argument("--weights", action="store_true", help="use pretrained weights (default: --random-init)")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    random_init = not args.weights
    common = dict(models=[args.model], batch_size=args.batch_size, workers=args.workers, device=args.device,
                  random_init=random_init, decoder=args.decoder)
    res: dict = {"model": args.model, "batch_size": args.batch_size, "workers": args.workers, "device": args.device,
                 "decoder": args.decoder, "random_init": random_init, "long_stride": args.long_stride}
    import torch

    res["torch_threads"] = torch.get_num_threads()
    out = args.cache_dir / "bench.h5"
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    if "model" not in skip:
        res["model_only_clips_per_s"] = model_only(args.model, args.batch_size, args.model_batches, args.device,
                                                   random_init)
        print(f"model-only: {res['model_only_clips_per_s']:.3f} clips/s", flush=True)
    if "videos" not in skip:
        r = end_to_end([args.videos], out, **common)
        res["shared_videos"] = r
        print(f"end-to-end {args.videos}: {r['clips']} clips, {r['clips_per_s']:.3f} clips/s, "
              f"peak RSS {r['peak_rss_mib']:.0f} MiB", flush=True)
    if "long" not in skip:
        kw = dict(common, stride=args.long_stride) if args.long_stride else common
        for name, secs in (("30s", 30), ("5min", 300)):
            v = synth_video(args.cache_dir / f"synth_640x360_{name}.mp4", secs)
            r = end_to_end([v], out, **kw)
            res[f"synthetic_{name}"] = r
            print(f"end-to-end synthetic {name} 640x360: {r['clips']} clips, {r['clips_per_s']:.3f} clips/s, "
                  f"peak RSS {r['peak_rss_mib']:.0f} MiB", flush=True)
    if "model" not in skip:
        # Again after the end-to-end runs: on a shared machine the load drifts; the ratio uses the mean.
        again = model_only(args.model, args.batch_size, args.model_batches, args.device, random_init)
        res["model_only_clips_per_s_before_after"] = [res["model_only_clips_per_s"], again]
        res["model_only_clips_per_s"] = (res["model_only_clips_per_s"] + again) / 2
        print(f"model-only (again): {again:.3f} clips/s", flush=True)
    if "model_only_clips_per_s" in res:
        for k in ("shared_videos", "synthetic_5min"):
            if k in res:
                res[f"{k}_ratio"] = res[k]["clips_per_s"] / res["model_only_clips_per_s"]
    if "synthetic_30s" in res and "synthetic_5min" in res:
        res["rss_5min_over_30s"] = res["synthetic_5min"]["peak_rss_mib"] / res["synthetic_30s"]["peak_rss_mib"]
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
