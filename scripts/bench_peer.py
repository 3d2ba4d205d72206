#!/usr/bin/env python
"""c3dfeat vs video_features (v-iashin/video_features, feature type ``r21d``) on R(2+1)D-18.

    .venv-ref/bin/python scripts/bench_peer.py PEER_DIR WEIGHTS [--videos ../shared/videos]
        [--rounds 3] [--torchvision-wheel torchvision-0.23.0-*.whl]

Both tools run from the interpreter that runs this script (use .venv-ref: the peer needs
torchvision, which only imports beside torch 2.14.1 there; pip install omegaconf for the peer),
with the same R(2+1)D-18 state_dict WEIGHTS (torchvision's key layout; e.g. a seeded random
``torchvision.models.video.r2plus1d_18().state_dict()`` saved with ``torch.save``), on the same
videos, native frame rate, 16-frame clips every 16 frames, tail dropped:

    peer:    cd PEER_DIR && R21D_WEIGHTS=WEIGHTS python main.py feature_type=r21d device=cpu \\
                 video_paths=[...] on_extraction=save_numpy output_path=OUT tmp_path=TMP \\
                 stack_size=16 step_size=16            (extraction_fps stays null: native fps)
    c3dfeat: c3dfeat extract VIDEOS -o OUT.h5 --model r2plus1d_18 --weights WEIGHTS \\
                 --fps 0 --stride 16 --tail drop       (every other setting at its default)

The peer is run alternately with c3dfeat (peer, c3dfeat, peer, ...), ``--rounds`` of each, each
under ``/usr/bin/time -v`` in a fresh process with a fresh output; the table gives medians and
the load average (``uptime``) before and after every run. Then the features are compared clip by
clip (``c3dfeat.FeatureFile(...).clips(video, "r2plus1d_18", "pool5")`` vs the peer's .npy), and
the two input differences (frame order, resize rounding) are isolated on the first clips.

The peer is patched minimally in PEER_DIR (idempotent; the script applies it when missing):
1. ``models/r21d/extract_r21d.py``: ``models.get_model('r2plus1d_18', weights='DEFAULT')`` (a
   download from torchvision's hub) -> ``weights=None`` + ``load_state_dict(torch.load($R21D_WEIGHTS))``.
2. same file: ``from torchvision.io.video import read_video`` -> ``from tv023_video import
   read_video``: torchvision 0.24+ removed ``read_video``; ``PEER_DIR/tv023_video.py`` is
   torchvision 0.23.0's own ``torchvision/io/video.py`` (its PyAV backend, the 0.23 default)
   with only its private imports redirected; it is written from ``--torchvision-wheel`` when
   absent (``pip download torchvision==0.23.0 --no-deps``).

Not a test (and not imported by any): the numbers depend on the machine and its load.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

VIDEO_EXT = {".mp4", ".avi", ".mkv", ".mov", ".webm"}
EXTRACT = "models/r21d/extract_r21d.py"
PATCHES = [
    ("from torchvision.io.video import read_video\n",
     "from tv023_video import read_video  # bench patch: torchvision>=0.24 has no read_video; 0.23's, vendored\n"),
    ("            model = models.get_model('r2plus1d_18', weights=weights_key)\n",
     "            model = models.get_model('r2plus1d_18', weights=None)  # bench patch: no internet; local state_dict\n"
     "            model.load_state_dict(torch.load(__import__('os').environ['R21D_WEIGHTS'], map_location='cpu'))\n"),
]
TV_EDITS = [
    ("from ..utils import _log_api_usage_once", "from torchvision.utils import _log_api_usage_once"),
    ("from . import _video_opt\n",
     "import types as _types\n_video_opt = _types.SimpleNamespace(default_timebase=Fraction(0, 1))"
     "  # c3dfeat bench: torchvision 0.23's value; only the pyav branch is used\n"),
    ("from ._video_deprecation_warning import _raise_video_deprecation_warning",
     "from torchvision.io._video_deprecation_warning import _raise_video_deprecation_warning"),
    ('    from torchvision import get_video_backend\n\n    if get_video_backend() != "pyav":',
     "    if False:  # c3dfeat bench: torchvision 0.23's default backend is pyav"),
]


def patch_peer(peer: Path, wheel: str | None) -> None:
    f = peer / EXTRACT
    s = f.read_text()
    for old, new in PATCHES:
        if new not in s:
            if old not in s:
                sys.exit(f"{f}: cannot find {old.strip()!r} to patch")
            s = s.replace(old, new)
    f.write_text(s)
    tv = peer / "tv023_video.py"
    if not tv.exists():
        if not wheel:
            sys.exit(f"{tv} missing: pass --torchvision-wheel (pip download torchvision==0.23.0 --no-deps)")
        with zipfile.ZipFile(wheel) as z:
            src = z.read("torchvision/io/video.py").decode()
        for old, new in TV_EDITS:
            if old not in src:
                sys.exit(f"{wheel}: torchvision/io/video.py lacks {old!r} (not 0.23?)")
            src = src.replace(old, new)
        tv.write_text("# torchvision 0.23.0 torchvision/io/video.py (BSD-3), vendored for c3dfeat's peer "
                      "benchmark (scripts/bench_peer.py)\n" + src)


def uptime() -> str:
    out = subprocess.run(["uptime"], capture_output=True, text=True).stdout
    m = re.search(r"load average: (.*)", out)
    return m.group(1).strip() if m else out.strip()


def timed(cmd: list[str], cwd: Path | None = None, env: dict | None = None) -> dict:
    before = uptime()
    p = subprocess.run(["/usr/bin/time", "-v", *cmd], cwd=cwd, env=env, capture_output=True, text=True)
    after = uptime()
    if p.returncode != 0:
        sys.stderr.write(p.stdout[-3000:] + p.stderr[-5000:])
        sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}")
    err = p.stderr

    def field(name: str) -> str:
        m = re.search(rf"^\s*{re.escape(name)}: (.*)$", err, re.M)
        if not m:
            sys.exit(f"no {name!r} in /usr/bin/time output")
        return m.group(1).strip()

    wall = 0.0
    for part in field("Elapsed (wall clock) time (h:mm:ss or m:ss)").split(":"):
        wall = wall * 60 + float(part)
    return {
        "wall": wall,
        "user": float(field("User time (seconds)")),
        "sys": float(field("System time (seconds)")),
        "minflt": int(field("Minor (reclaiming a frame) page faults")),
        "rss": int(field("Maximum resident set size (kbytes)")) * 1024,
        "load": f"{before} -> {after}",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("peer", type=Path, help="video_features checkout (patched here when needed)")
    ap.add_argument("weights", type=Path, help="torchvision-layout r2plus1d_18 state_dict (torch.save)")
    ap.add_argument("--videos", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "videos")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--torchvision-wheel", default=None)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--verify-clips", type=int, default=2, help="clips per video for the input check (0: skip)")
    a = ap.parse_args()
    peer, weights, videos = a.peer.resolve(), a.weights.resolve(), a.videos.resolve()
    patch_peer(peer, a.torchvision_wheel)
    vids = sorted(p for p in videos.iterdir() if p.suffix.lower() in VIDEO_EXT)
    work = a.workdir or Path(tempfile.mkdtemp(prefix="bench_peer_"))
    work.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    c3dfeat_bin = str(Path(py).with_name("c3dfeat"))
    env = dict(os.environ, R21D_WEIGHTS=str(weights))
    print(f"{len(vids)} videos in {videos}; {os.cpu_count()} cores; python {py}; work dir {work}", flush=True)

    runs: dict[str, list[dict]] = {"peer": [], "c3dfeat": []}
    for r in range(a.rounds):
        out = work / f"peer{r}"
        cmd = [py, "main.py", "feature_type=r21d", "device=cpu",
               "video_paths=[" + ",".join(str(v) for v in vids) + "]",
               "on_extraction=save_numpy", f"output_path={out}", f"tmp_path={work / f'tmp{r}'}",
               "stack_size=16", "step_size=16"]
        res = timed(cmd, cwd=peer, env=env)
        res["out"] = out
        runs["peer"].append(res)
        print(f"round {r + 1} peer:    wall {res['wall']:.1f} s, user {res['user']:.1f} s, sys {res['sys']:.1f} s, "
              f"{res['minflt'] / 1e6:.2f} M minflt, {res['rss'] / 2**30:.2f} GiB; load {res['load']}", flush=True)
        h5 = work / f"c3dfeat{r}.h5"
        cmd = [c3dfeat_bin, "extract", str(videos), "-o", str(h5), "--model", "r2plus1d_18",
               "--weights", str(weights), "--fps", "0", "--stride", "16", "--tail", "drop"]
        res = timed(cmd, env=env)
        res["out"] = h5
        runs["c3dfeat"].append(res)
        print(f"round {r + 1} c3dfeat: wall {res['wall']:.1f} s, user {res['user']:.1f} s, sys {res['sys']:.1f} s, "
              f"{res['minflt'] / 1e6:.2f} M minflt, {res['rss'] / 2**30:.2f} GiB; load {res['load']}", flush=True)

    def med(tool: str, key: str) -> float:
        return statistics.median(x[key] for x in runs[tool])

    rows = [("wall (median of %d)" % a.rounds, "wall", lambda v: f"{v:.1f} s"),
            ("user CPU", "user", lambda v: f"{v:.1f} s"),
            ("system CPU", "sys", lambda v: f"{v:.1f} s"),
            ("minor page faults", "minflt", lambda v: f"{v / 1e6:.2f} M"),
            ("peak RSS", "rss", lambda v: f"{v / 2**30:.2f} GiB")]
    print("\n| | peer (r21d) | c3dfeat (defaults) | c3dfeat / peer |\n|---|---|---|---|")
    for label, key, fmt in rows:
        p, c = med("peer", key), med("c3dfeat", key)
        print(f"| {label} | {fmt(p)} | {fmt(c)} | {c / p:.2f} |")
    print("\nper run (wall s, load before -> after):")
    for tool in runs:
        for i, x in enumerate(runs[tool]):
            print(f"  {tool} {i + 1}: {x['wall']:.1f} s, load {x['load']}")

    # --- features -----------------------------------------------------------------------
    import numpy as np

    import c3dfeat

    f = c3dfeat.FeatureFile(runs["c3dfeat"][-1]["out"])
    peer_dir = runs["peer"][-1]["out"] / "r21d" / "r2plus1d_18_16_kinetics"
    print("\n| video | peer clips | c3dfeat clips | max abs diff | max abs value |\n|---|---|---|---|---|")
    worst = 0.0
    for v in vids:
        pf = np.load(peer_dir / f"{v.stem}_r21d.npy")
        cf = np.asarray(f.clips(v.name, "r2plus1d_18", "pool5"), dtype=np.float64)
        cf = cf.reshape(len(cf), -1)
        n = min(len(pf), len(cf))
        d = float(np.abs(pf[:n] - cf[:n]).max()) if n else 0.0
        worst = max(worst, d)
        print(f"| {v.name} | {len(pf)} | {len(cf)} | {d:.2e} | {float(np.abs(pf).max()) if n else 0:.2f} |")
    f.close()
    if a.verify_clips:
        verify_preprocessing(peer, weights, vids, runs["peer"][-1]["out"], runs["c3dfeat"][-1]["out"],
                             a.verify_clips)


def verify_preprocessing(peer: Path, weights: Path, videos: list, peer_out: Path, h5: Path, n: int) -> None:
    """Explain the feature differences. Two inputs differ, nothing else:
    1. frames: the peer's read_video sorts decoded frames by pts; c3dfeat keeps the decoder's
       output order. Where an AVI's pts are not in display order the peer swaps frames.
    2. resize: the peer resizes the float video (x/255) without rounding; c3dfeat follows
       torchvision's VideoClassification preset: F.resize of the uint8 video, rounded to uint8.
    Each tool's features are recomputed from its own frames with its own transform (the peer's
    transform code, plus the one rounding for c3dfeat's) by one plain torchvision model."""
    import warnings

    import numpy as np
    import torch
    import torchvision

    import c3dfeat
    from c3dfeat.video import open_video

    sys.path.insert(0, str(peer))
    warnings.simplefilter("ignore")
    from models.transforms import CenterCrop, Normalize, Resize, ToFloatTensorInZeroOne  # the peer's own
    from tv023_video import read_video

    mean, std = [0.43216, 0.394666, 0.37645], [0.22803, 0.22145, 0.216989]
    peer_tf = torchvision.transforms.Compose([ToFloatTensorInZeroOne(), Resize((128, 171)),
                                              Normalize(mean=mean, std=std), CenterCrop((112, 112))])

    def tv_tf(rgb):  # torchvision preset: resize in 0-255, round to uint8 levels, then as the peer
        x = torch.nn.functional.interpolate(rgb.permute(3, 0, 1, 2).float(), size=(128, 171),
                                            mode="bilinear", align_corners=False)
        return CenterCrop((112, 112))(Normalize(mean=mean, std=std)(x.round().clamp(0, 255) / 255))

    m = torchvision.models.video.r2plus1d_18(weights=None)
    m.load_state_dict(torch.load(weights, map_location="cpu"))
    m.fc = torch.nn.Identity()
    m.eval()

    def feats(x):
        with torch.no_grad():
            return m(torch.stack([x[:, i * 16:(i + 1) * 16] for i in range(n)])).double().numpy()

    f = c3dfeat.FeatureFile(h5)
    print("\n| video | frames identical (peer vs c3dfeat decode) | mean abs frame-to-frame change, peer order / "
          "c3dfeat order | first %d clips: own recomputation vs peer output | vs c3dfeat output | "
          "c3dfeat transform on the peer's frames vs peer output |\n|---|---|---|---|---|---|" % n)
    for v in videos:
        a = read_video(str(v), pts_unit="sec")[0]
        with open_video(v) as r:
            b = torch.as_tensor(r.get_frames(list(range(len(a)))))
        same = sum(bool(torch.equal(a[i], b[i])) for i in range(len(a)))
        smooth = [float((x[1:].float() - x[:-1].float()).abs().mean()) for x in (a, b)]
        pf = np.load(peer_out / "r21d" / "r2plus1d_18_16_kinetics" / f"{v.stem}_r21d.npy")[:n]
        cf = np.asarray(f.clips(v.name, "r2plus1d_18", "pool5"), dtype=np.float64)[:n].reshape(n, -1)
        d_peer = np.abs(feats(peer_tf(a[: 16 * n])) - pf).max()
        d_c3d = np.abs(feats(tv_tf(b[: 16 * n])) - cf).max()
        d_round = np.abs(feats(tv_tf(a[: 16 * n])) - pf).max()
        print(f"| {v.name} | {same} of {len(a)} | {smooth[0]:.2f} / {smooth[1]:.2f} | {d_peer:.1e} | "
              f"{d_c3d:.1e} | {d_round:.1e} |", flush=True)
    f.close()


if __name__ == "__main__":
    main()
