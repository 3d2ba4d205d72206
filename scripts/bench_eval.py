"""Benchmark the evaluation protocols at UCF101 size (split 1: 9,537 train / 3,783 test videos,
4,096-d fc6, 101 classes), on synthetic features with class structure.

    .venv/bin/python scripts/bench_eval.py                 # linear SVM split incl. C by CV, PCA sweep
    .venv/bin/python scripts/bench_eval.py --liblinear     # + ONE LinearSVC(C=1) fit, the reference
    .venv/bin/python scripts/bench_eval.py --device cuda   # torch solver on a GPU

Timings are wall-clock on whatever the machine is doing; say how busy it was when you quote them.

Measured 2026-11-26 on the shared 2-core dev VM (CPU torch 2.13, 2 threads; load average 1-8 from
other engineers' jobs during the runs):
  one LinearSVC(C=1) fit (liblinear)            232.8 s   top-1 96.83 %
  one TorchLinearSVM(C=1) fit                    44.4 s   top-1 96.83 %, objective +5.8e-8 relative
  one split incl. C by 3-fold CV (6 C values)    55.6 s   (103.7 CPU-s), C=1, top-1 96.83 %
  PCA sweep 10/50/100/500 incl. C by CV          40.2 s   (77.2 CPU-s)
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from c3dfeat.evaluate.linear import DEFAULT_CS, evaluate_split, normalize
from c3dfeat.evaluate.pca import pca_sweep
from c3dfeat.evaluate.splits import Protocol, Split
from c3dfeat.evaluate.svm import LiblinearSVM, TorchLinearSVM, accuracy


def ucf_like(n_train=9537, n_test=3783, dim=4096, n_classes=101, rank=128, seed=0):
    """fc6-like features: post-ReLU, a shared positive base, class means and within-class
    variation in a rank-128 subspace with a decaying spectrum (so PCA finds the classes, as it
    does for C3D), plus isotropic noise."""
    rng = np.random.default_rng(seed)
    s = (np.arange(1, rank + 1) ** -0.5).astype(np.float32)
    basis = (rng.standard_normal((rank, dim)) / np.sqrt(rank) * 8).astype(np.float32) * s[:, None]
    centers = rng.standard_normal((n_classes, rank)).astype(np.float32)
    base = np.abs(rng.standard_normal(dim)).astype(np.float32)
    n = n_train + n_test
    y = rng.integers(0, n_classes, n)
    X = np.empty((n, dim), np.float32)
    for a in range(0, n, 2048):  # chunked: keep peak memory low
        b = min(n, a + 2048)
        z = centers[y[a:b]] + rng.standard_normal((b - a, rank), dtype=np.float32) * 2.0
        X[a:b] = np.maximum(base + z @ basis + rng.standard_normal((b - a, dim), dtype=np.float32) * 2.0, 0)
    split = Split("split1", np.arange(n_train), np.arange(n_train, n))
    return X, y, Protocol([str(k) for k in range(n_classes)], y, [split], "synthetic UCF101-size")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--liblinear", action="store_true", help="also time one LinearSVC(C=1) fit")
    ap.add_argument("--dims", default="10,50,100,500")
    ap.add_argument("--skip-pca", action="store_true")
    ap.add_argument("--skip-split", action="store_true")
    ap.add_argument("--json", default=None, help="write the figures here")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    out = {"device": args.device, "threads": torch.get_num_threads(), "load_avg": os.getloadavg()}
    t = time.perf_counter()
    X, y, p = ucf_like()
    out["make_data_s"] = time.perf_counter() - t
    Xn = normalize(X)
    split = p.splits[0]
    print(f"data: {X.shape}, {len(p.classes)} classes; load average {out['load_avg']}", flush=True)

    # one fit at C=1: torch vs (optionally) liblinear, same problem
    t, c = time.perf_counter(), time.process_time()
    m = TorchLinearSVM(C=1.0, device=args.device).fit(Xn[split.train], y[split.train])
    out["torch_fit_C1_s"] = time.perf_counter() - t
    out["torch_fit_C1_cpu_s"] = time.process_time() - c
    out["torch_fit_C1_top1"] = 100 * accuracy(y[split.test], m.predict(Xn[split.test]))[0]
    out["torch_fit_C1_stats"] = vars(m.stats)
    print(f"torch LinearSVM C=1: {out['torch_fit_C1_s']:.1f} s (CPU {out['torch_fit_C1_cpu_s']:.1f} s), "
          f"top-1 {out['torch_fit_C1_top1']:.2f} % "
          f"({m.stats.newton_iters} Newton / {m.stats.cg_iters} CG steps)", flush=True)
    if args.liblinear:
        t, c = time.perf_counter(), time.process_time()
        ref = LiblinearSVM(C=1.0).fit(Xn[split.train], y[split.train])
        out["liblinear_fit_C1_s"] = time.perf_counter() - t
        out["liblinear_fit_C1_cpu_s"] = time.process_time() - c
        out["liblinear_fit_C1_top1"] = 100 * accuracy(y[split.test], ref.predict(Xn[split.test]))[0]
        f_ref = ref.objective(Xn[split.train], y[split.train]).sum()
        f_ours = m.objective(Xn[split.train], y[split.train]).sum()
        out["objective_rel_diff"] = float((f_ours - f_ref) / f_ref)
        print(f"liblinear LinearSVC C=1: {out['liblinear_fit_C1_s']:.1f} s (CPU "
              f"{out['liblinear_fit_C1_cpu_s']:.1f} s), top-1 "
              f"{out['liblinear_fit_C1_top1']:.2f} %; objective ours/ref - 1 = {out['objective_rel_diff']:.2e}",
              flush=True)

    # the protocol: one split including the choice of C (3-fold CV on the training part)
    if not args.skip_split:
        t, c = time.perf_counter(), time.process_time()
        r = evaluate_split(Xn, y, split, Cs=DEFAULT_CS, device=args.device)
        out["split_with_cv_s"] = time.perf_counter() - t
        out["split_with_cv_cpu_s"] = time.process_time() - c
        out["split_with_cv"] = {"C": r.C, "top1": r.top1, "cv": r.cv}
        print(f"one split incl. C by 3-fold CV over {DEFAULT_CS}: {out['split_with_cv_s']:.1f} s "
              f"(CPU {out['split_with_cv_cpu_s']:.1f} s on {out['threads']} threads), "
              f"C={r.C:g}, top-1 {r.top1:.2f} %, CV {r.cv}", flush=True)

    if not args.skip_pca:
        dims = [int(d) for d in args.dims.split(",")]
        t, c = time.perf_counter(), time.process_time()
        sweep = pca_sweep(X, p, dims, device=args.device)
        out["pca_sweep_s"] = time.perf_counter() - t
        out["pca_sweep_cpu_s"] = time.process_time() - c
        out["pca_sweep"] = [{"dims": row.dims, "top1": row.result.mean_top1, "ev": row.explained_variance,
                             "C": row.result.splits[0].C} for row in sweep.rows]
        print(f"PCA sweep {dims} (PCA on train + SVM with C by CV at each size): {out['pca_sweep_s']:.1f} s "
              f"(CPU {out['pca_sweep_cpu_s']:.1f} s)",
              flush=True)
        for row in out["pca_sweep"]:
            print(f"  {row['dims']:>4} dims: top-1 {row['top1']:.2f} %, explained variance {row['ev']:.1f} %, "
                  f"C={row['C']:g}")
    out["load_avg_end"] = os.getloadavg()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2, default=str)


if __name__ == "__main__":
    main()
