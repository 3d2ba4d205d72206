"""Exporting features to plain formats: .npy (+ ids sidecar), .npz, .csv; optionally clips with timestamps.

Only successfully extracted videos are exported (failed ones have no features). Rows are read in
blocks, so .npy and .csv exports never hold the whole matrix in memory (.npz does: numpy writes
each array whole).
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Iterator, List, Optional, Tuple, Union

import numpy as np

from c3dfeat.errors import StoreError
from c3dfeat.store.reader import FeatureFile

EXPORT_SUFFIXES = (".npy", ".npz", ".csv")
_BLOCK_ROWS = 4096


def _pick(ff: FeatureFile, model: Optional[str], layer: Optional[str]) -> Tuple[str, str]:
    if model is None:
        if len(ff.models) != 1:
            raise StoreError(f"{ff.path} holds several models ({', '.join(ff.models)}); choose one")
        model = ff.models[0]
    layers = ff.layers(model)
    if layer is None:
        if not layers:
            raise StoreError(f"{ff.path}: model {model!r} stores no layers")
        layer = layers[0]
    return model, ff.layer_name(model, layer)  # an alias resolves; an unknown layer is a clear error


def sidecar(out: Path, what: str) -> Path:
    """`feats.npy` -> `feats.<what>` (e.g. feats.ids.txt, feats.clips.npy)."""
    return out.with_name(f"{out.stem}.{what}")


def export(
    path: Union[str, Path],
    out: Union[str, Path],
    *,
    model: Optional[str] = None,
    layer: Optional[str] = None,
    clips: bool = False,
) -> Path:
    """Write the video matrix of `model`/`layer` (defaults: the only model, its first layer) with the ids.

    By the suffix of `out`:
      * ``.npy``: the (n, D) matrix; ids (one per line, UTF-8) in ``<stem>.ids.txt``. With
        `clips`: ``<stem>.clips.npy`` (clip features, (M, D) or (M, C, D)) and
        ``<stem>.clips.csv`` (id, clip, start_time, start_frame, padded: one row per clip row).
      * ``.npz``: arrays ``X``, ``ids``, ``labels``; with `clips` also ``clip_features``,
        ``clip_video`` (row in ``ids``), ``clip_start_time``, ``clip_start_frame``, ``clip_padded``.
      * ``.csv``: ``id,label,f0..f{D-1}``; with `clips` also ``<stem>.clips.csv``:
        ``id,clip,start_time,start_frame,padded[,crop],f0..`` (one line per crop when crops were kept).

    Returns `out`. Raises StoreError for an unknown model/layer or suffix.
    """
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in EXPORT_SUFFIXES:
        raise StoreError(f"cannot export to {out.name}: the suffix must be one of {', '.join(EXPORT_SUFFIXES)}")
    with FeatureFile(path) as ff:
        model, layer = _pick(ff, model, layer)
        rows = ff.ok_rows()
        table = ff.videos()
        ids, labels = list(table["id"][rows]), list(table["label"][rows])
        mean = ff.h5[f"models/{model}/layers/{layer}/video_mean"]
        if suffix == ".npy":
            _npy(out, mean, rows)
            sidecar(out, "ids.txt").write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
            if clips:
                _clips_npy(ff, model, layer, rows, ids, out)
        elif suffix == ".npz":
            arrays = {"X": mean[: ff.num_videos][rows], "ids": np.array(ids, dtype=str),
                      "labels": np.array(labels, dtype=str)}
            if clips:
                arrays.update(_clips_arrays(ff, model, layer, rows))
            np.savez(out, **arrays)
        else:
            with open(out, "w", newline="", encoding="utf-8") as fh:
                w = csv.writer(fh)
                w.writerow(["id", "label"] + [f"f{j}" for j in range(mean.shape[1])])
                for a, b, x in _blocks(mean, rows):
                    for i, r in enumerate(range(a, b)):
                        w.writerow([ids[r], labels[r]] + _fmt(x[i]))
            if clips:
                _clips_csv(ff, model, layer, rows, ids, sidecar(out, "clips.csv"), with_features=True)
    return out


def _fmt(x: np.ndarray) -> List[str]:
    # numpy prints the shortest string that reads back to the same value at the array's precision
    return [str(v) for v in x.ravel()]


def _blocks(ds: Any, rows: np.ndarray) -> Iterator[Tuple[int, int, np.ndarray]]:
    """(a, b, ds[rows[a:b]]) in blocks of rows."""
    for a in range(0, len(rows), _BLOCK_ROWS):
        sel = rows[a : a + _BLOCK_ROWS]
        lo, hi = int(sel[0]), int(sel[-1]) + 1
        # one slice read unless the rows are sparse (mostly failed videos): then only those rows
        x = ds[lo:hi][sel - lo] if hi - lo <= 2 * len(sel) else ds[sel]
        yield a, a + len(sel), x


def _npy(out: Path, ds: Any, rows: np.ndarray) -> None:
    mm = np.lib.format.open_memmap(out, mode="w+", dtype=ds.dtype, shape=(len(rows),) + ds.shape[1:])
    for a, b, x in _blocks(ds, rows):
        mm[a:b] = x
    mm.flush()
    del mm


def _clip_rows(ff: FeatureFile, model: str, rows: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Clip row numbers of the given videos, and the position (in `rows`) of each clip's video."""
    gv = ff.h5[f"models/{model}/videos"]
    n = ff.num_videos
    off, num = gv["clip_offset"][:n][rows], gv["num_clips"][:n][rows]
    video = np.repeat(np.arange(len(rows)), num)
    clip_rows = np.repeat(off - (np.cumsum(num) - num), num) + np.arange(int(num.sum()))
    return clip_rows, video


def _clips_arrays(ff: FeatureFile, model: str, layer: str, rows: np.ndarray) -> dict:
    crow, video = _clip_rows(ff, model, rows)
    g = ff.h5[f"models/{model}"]
    take = (lambda ds: ds[:][crow]) if len(crow) else (lambda ds: ds[:0])
    return {"clip_features": take(g[f"layers/{layer}/clip_features"]), "clip_video": video,
            "clip_start_time": take(g["clips/start_time"]), "clip_start_frame": take(g["clips/start_frame"]),
            "clip_padded": take(g["clips/padded"])}


def _clips_npy(ff: FeatureFile, model: str, layer: str, rows: np.ndarray, ids: List[str], out: Path) -> None:
    crow, _ = _clip_rows(ff, model, rows)
    _npy(sidecar(out, "clips.npy"), ff.h5[f"models/{model}/layers/{layer}/clip_features"], crow)
    _clips_csv(ff, model, layer, rows, ids, sidecar(out, "clips.csv"), with_features=False)


def _clips_csv(ff: FeatureFile, model: str, layer: str, rows: np.ndarray, ids: List[str], out: Path,
               with_features: bool) -> None:
    crow, video = _clip_rows(ff, model, rows)
    g = ff.h5[f"models/{model}"]
    feats = g[f"layers/{layer}/clip_features"]
    crops = feats.shape[1] if feats.ndim == 3 else 0
    head = ["id", "clip", "start_time", "start_frame", "padded"]
    if with_features:
        head += (["crop"] if crops else []) + [f"f{j}" for j in range(feats.shape[-1])]
    with open(out, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(head)
        first_clip = 0
        for a, b, st in _blocks(g["clips/start_time"], crow):
            sf = g["clips/start_frame"][int(crow[a]) : int(crow[b - 1]) + 1][crow[a:b] - crow[a]]
            pad = g["clips/padded"][int(crow[a]) : int(crow[b - 1]) + 1][crow[a:b] - crow[a]]
            x = feats[int(crow[a]) : int(crow[b - 1]) + 1][crow[a:b] - crow[a]] if with_features else None
            for i in range(b - a):
                v = int(video[a + i])
                if a + i == 0 or video[a + i - 1] != v:
                    first_clip = a + i
                base = [ids[v], a + i - first_clip, repr(float(st[i])), int(sf[i]), int(pad[i])]
                if x is None:
                    w.writerow(base)
                elif crops:
                    for c in range(crops):
                        w.writerow(base + [c] + _fmt(x[i, c]))
                else:
                    w.writerow(base + _fmt(x[i]))
