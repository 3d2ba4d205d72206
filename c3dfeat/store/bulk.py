"""Copying video rows between feature files in large contiguous slices: `merge` of shards.

:func:`copy_rows` writes a new file holding chosen (file, row) videos in a chosen order. It
reads each source in contiguous runs of rows (one run per source and block when the sources are
sorted by input position, as shards are), reorders the block in memory and writes it as one
contiguous slice: a million 4096-d rows take minutes, not hours (scripts/bench_merge.py).
The output is created under a temporary name and renamed at the end, so a crash never leaves a
half-merged file at the output path.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Tuple, Union

import h5py
import numpy as np

from c3dfeat.errors import ProvenanceMismatchError, StoreError
from c3dfeat.store.files import WRITE_OPTIONS, open_read
from c3dfeat.store.schema import (
    RUN_ATTRS,
    RUN_INDEX,
    STATE_COMPLETE,
    STATE_INCOMPLETE,
    VIDEO_COLUMNS,
    ModelInfo,
    create_layout,
    decode_str,
    model_infos,
    provenance_diff,
    run_index_of,
    runs_of,
)

BLOCK_BYTES = 128 << 20  # feature bytes read per block (the block is held twice in memory)


def run_attrs_of(f: h5py.File) -> Dict[str, str]:
    return {k: decode_str(f.attrs.get(k, "")) for k in RUN_ATTRS}


def _excl_cumsum(x: np.ndarray) -> np.ndarray:
    return np.cumsum(x) - x


def _runs(rows: np.ndarray) -> List[Tuple[int, int]]:
    """Sorted row numbers as contiguous [a, b) runs."""
    if not len(rows):
        return []
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [len(rows)]])
    return [(int(rows[s]), int(rows[e - 1]) + 1) for s, e in zip(starts, ends)]


def _read_runs(ds: h5py.Dataset, runs: Sequence[Tuple[int, int]]) -> np.ndarray:
    parts = [ds[a:b] for a, b in runs if b > a]
    if not parts:
        return np.zeros((0,) + ds.shape[1:], ds.dtype)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def copy_rows(
    sources: Sequence[Union[str, Path]],
    file_of: np.ndarray,
    row_of: np.ndarray,
    out: Union[str, Path],
    models: Sequence[ModelInfo],
    provenance: Mapping[str, Any],
    run_attrs: Mapping[str, Any],
    storage_dtype: str,
    *,
    state: Tuple[str, str] = (STATE_COMPLETE, ""),
    block_bytes: int = BLOCK_BYTES,
) -> Path:
    """Write `out` with video ``row_of[i]`` of ``sources[file_of[i]]`` as row i (all models, layers, clips)."""
    out = Path(out)
    file_of = np.asarray(file_of, np.int64)
    row_of = np.asarray(row_of, np.int64)
    n_out = len(row_of)
    srcs = [_open_source(p) for p in sources]
    tmp = out.with_name(out.name + ".partial")
    try:
        n_src = [int(s["committed"][0]) for s in srcs]
        counts = {m.key: [s[f"models/{m.key}/videos/num_clips"][:n] for s, n in zip(srcs, n_src)] for m in models}
        offsets = {m.key: [s[f"models/{m.key}/videos/clip_offset"][:n] for s, n in zip(srcs, n_src)] for m in models}
        out_counts = {}
        for m in models:
            oc = np.zeros(n_out, np.int64)
            for k in range(len(srcs)):
                sel = file_of == k
                oc[sel] = counts[m.key][k][row_of[sel]]
            out_counts[m.key] = oc
        # The runs that wrote the rows: every source's list, joined; each row's index shifted to match.
        src_runs = [runs_of(s) for s in srcs]
        first_run = np.cumsum([0] + [len(r) for r in src_runs])
        run_index = np.zeros(n_out, np.int32)
        for k, (s, n) in enumerate(zip(srcs, n_src)):
            sel = file_of == k
            run_index[sel] = run_index_of(s, n)[row_of[sel]] + first_run[k]
        with h5py.File(tmp, "w", rdcc_nbytes=0, **WRITE_OPTIONS) as dst:
            create_layout(dst, models, provenance, storage_dtype, run_attrs,
                          runs=[entry for runs in src_runs for entry in runs])
            _presize(dst, models, n_out, {k: int(v.sum()) for k, v in out_counts.items()})
            if n_out:
                dst[f"videos/{RUN_INDEX}"][:] = run_index
            itemsize = np.dtype(storage_dtype).itemsize
            clip_floats = sum(int(np.prod(la.clip_shape)) for m in models for la in m.layers)
            video_floats = sum(la.dim for m in models for la in m.layers)
            avg_clips = max((float(v.mean()) for v in out_counts.values() if n_out), default=0.0)
            per_video = (avg_clips * clip_floats + video_floats) * itemsize + 256
            block = int(min(1 << 16, max(64, block_bytes // per_video)))
            clip_base = {m.key: 0 for m in models}
            for s0 in range(0, n_out, block):
                _copy_block(srcs, file_of[s0 : s0 + block], row_of[s0 : s0 + block], s0, dst, models,
                            counts, offsets, out_counts, clip_base)
            dst["committed"][0] = n_out
            dst.attrs["state"], dst.attrs["state_reason"] = state
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        for s in srcs:
            s.close()
    return out


def _open_source(path: Union[str, Path]) -> h5py.File:
    """Open without a chunk cache: whole chunks are read straight into the numpy buffer (~15% less CPU)."""
    try:
        return h5py.File(path, "r", rdcc_nbytes=0)
    except OSError:
        return open_read(path)  # a killed writer's file: swmr fallback


def _presize(dst: h5py.File, models: Sequence[ModelInfo], n: int, clips: Mapping[str, int]) -> None:
    for ds in dst["videos"].values():
        ds.resize(n, axis=0)
    for m in models:
        gm = dst[f"models/{m.key}"]
        for ds in gm["videos"].values():
            ds.resize(n, axis=0)
        for ds in gm["clips"].values():
            ds.resize(clips[m.key], axis=0)
        for gl in gm["layers"].values():
            gl["clip_features"].resize(clips[m.key], axis=0)
            gl["video_mean"].resize(n, axis=0)


def _copy_block(
    srcs: Sequence[h5py.File],
    fo: np.ndarray,
    ro: np.ndarray,
    s0: int,
    dst: h5py.File,
    models: Sequence[ModelInfo],
    counts: Mapping[str, Sequence[np.ndarray]],
    offsets: Mapping[str, Sequence[np.ndarray]],
    out_counts: Mapping[str, np.ndarray],
    clip_base: Dict[str, int],
) -> None:
    """Output rows [s0, s0 + len(ro)): read each source's rows in runs, place them, write one slice."""
    e = s0 + len(ro)
    used = [k for k in range(len(srcs)) if (fo == k).any()]
    # per source: its rows in this block, sorted (read order), and their positions in the block
    rows, pos = {}, {}
    for k in used:
        where = np.flatnonzero(fo == k)
        order = np.argsort(ro[where], kind="stable")
        rows[k], pos[k] = ro[where][order], where[order]
    runs = {k: _runs(rows[k]) for k in used}

    def assemble(path: str, rs: Mapping[int, Sequence[Tuple[int, int]]], at: Mapping[int, np.ndarray],
                 n: int) -> np.ndarray:
        out = None
        for k in used:
            data = _read_runs(srcs[k][path], rs[k])
            if len(used) == 1 and np.array_equal(at[k], np.arange(n)):
                return data
            if out is None:
                out = np.empty((n,) + data.shape[1:], data.dtype)
            out[at[k]] = data
        assert out is not None
        return out

    for name, _ in VIDEO_COLUMNS:
        dst[f"videos/{name}"][s0:e] = assemble(f"videos/{name}", runs, pos, e - s0)
    for m in models:
        key = m.key
        cnt = out_counts[key][s0:e]
        total = int(cnt.sum())
        cb = clip_base[key]
        gv = dst[f"models/{key}/videos"]
        gv["num_clips"][s0:e] = cnt
        out_start = _excl_cumsum(cnt)
        gv["clip_offset"][s0:e] = cb + out_start
        for layer in m.layers:
            name = f"models/{key}/layers/{layer.name}/video_mean"
            dst[name][s0:e] = assemble(name, runs, pos, e - s0)
        if not total:
            continue
        # clip rows: each run of video rows owns one contiguous run of clip rows
        clip_runs, clip_pos = {}, {}
        for k in used:
            num, off = counts[key][k], offsets[key][k]
            clip_runs[k] = [(int(off[a]), int(off[b - 1] + num[b - 1])) for a, b in runs[k]]
            c = num[rows[k]]
            clip_pos[k] = np.repeat(out_start[pos[k]] - _excl_cumsum(c), c) + np.arange(int(c.sum()))
        gc = dst[f"models/{key}/clips"]
        gc["video_index"][cb : cb + total] = np.repeat(np.arange(s0, e, dtype=np.int64), cnt)
        for name in gc:
            if name != "video_index":
                gc[name][cb : cb + total] = assemble(f"models/{key}/clips/{name}", clip_runs, clip_pos, total)
        for layer in m.layers:
            name = f"models/{key}/layers/{layer.name}/clip_features"
            dst[name][cb : cb + total] = assemble(name, clip_runs, clip_pos, total)
        clip_base[key] = cb + total


def merge(
    paths: Sequence[Union[str, Path]], out: Union[str, Path], *, overwrite: bool = False,
    block_bytes: int = BLOCK_BYTES,
) -> Path:
    """Join shard files into one, ordered by input position: equal to a single run.

    Raises:
        ProvenanceMismatchError: the files were made with different settings or models.
        StoreError: a video id appears in two files, or `out` exists (without `overwrite`).
    """
    if not paths:
        raise ValueError("merge needs at least one input file")
    out = Path(out)
    if out.exists() and not overwrite:
        raise StoreError(f"{out} exists; remove it or pass --overwrite")
    inputs = [Path(p) for p in paths]
    files, rows, index = [], [], []
    unfinished: List[str] = []  # a killed, interrupted or running shard: its committed videos only
    seen: Dict[str, Path] = {}
    ref_prov: Dict[str, Any] = {}
    for k, p in enumerate(inputs):
        with open_read(p) as f:
            if f.attrs.get("format") is None or "committed" not in f:
                raise StoreError(f"{p} is not a c3dfeat feature file")
            prov = json.loads(f.attrs["provenance"])
            infos = model_infos(f)
            if k == 0:
                ref_prov, ref_infos, ref_f = prov, infos, _first_file_attrs(f)
            else:
                diff = provenance_diff(ref_prov, prov)
                if diff or [m.key for m in infos] != [m.key for m in ref_infos]:
                    raise ProvenanceMismatchError(
                        f"cannot merge {p} with {inputs[0]}: made with different settings:\n  "
                        + "\n  ".join(diff[:20] or [f"models {[m.key for m in ref_infos]} != {[m.key for m in infos]}"])
                    )
            if decode_str(f.attrs.get("state", STATE_COMPLETE)) != STATE_COMPLETE:  # (version 1: no state)
                unfinished.append(p.name)
            n = int(f["committed"][0])
            for vid in f["videos/id"][:n]:
                vid = decode_str(vid)
                if vid in seen:
                    raise StoreError(f"video {vid!r} is in both {seen[vid]} and {p}; shards must be disjoint")
                seen[vid] = p
            files.append(np.full(n, k, np.int64))
            rows.append(np.arange(n, dtype=np.int64))
            index.append(f["videos/input_index"][:n])
    file_of, row_of, input_index = np.concatenate(files), np.concatenate(rows), np.concatenate(index)
    order = np.lexsort((row_of, file_of, input_index))
    run_attrs = dict(ref_f["run_attrs"], created_utc=_utcnow(), shard="")
    state = (STATE_COMPLETE, "")
    if unfinished:
        state = (STATE_INCOMPLETE, f"merged while {len(unfinished)} of {len(inputs)} files were not complete "
                 f"({', '.join(unfinished[:5])}{', ...' if len(unfinished) > 5 else ''}): finish their runs "
                 "(rerun the same commands), then merge again")
    return copy_rows(inputs, file_of[order], row_of[order], out, ref_infos, ref_prov, run_attrs,
                     ref_f["storage_dtype"], state=state, block_bytes=block_bytes)


def _first_file_attrs(f: h5py.File) -> Dict[str, Any]:
    storage = f.attrs.get("storage_dtype", f.attrs.get("dtype", "float32"))  # version 1: `dtype`
    return {"run_attrs": run_attrs_of(f), "storage_dtype": decode_str(storage)}


def _utcnow() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
