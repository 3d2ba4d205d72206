"""Writing a feature file: appended video by video, each commit atomic, resumable after any crash.

Crash safety: the file is written in HDF5 SWMR mode (every dataset exists before
``swmr_mode = True``; each commit appends rows, flushes, then bumps ``/committed`` and flushes
again). Rows past ``/committed`` are ignored by readers and cut off on resume. A killed writer
leaves the superblock's "open for writing" flags set (see :mod:`c3dfeat.store.recovery`).
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import h5py
import numpy as np

from c3dfeat.errors import ProvenanceMismatchError, StoreError
from c3dfeat.store.bulk import copy_rows, run_attrs_of
from c3dfeat.store.files import WRITE_OPTIONS, RunLock, open_write
from c3dfeat.store.recovery import (
    append_rows,
    clip_count,
    damage_is_a_store_error,
    mend_torn_headers,
    recover_file,
    truncate_to_committed,
)
from c3dfeat.store.schema import (
    FORMAT,
    FORMAT_VERSION,
    RUN_INDEX,
    RUNS,
    STATE_COMPLETE,
    STATE_INCOMPLETE,
    STATE_WRITING,
    STATUS,
    STR,
    VIDEO_COLUMNS,
    ClipTable,
    LayerInfo,
    ModelInfo,
    ModelResult,
    VideoRecord,
    append_runs,
    canon,
    check_storage_dtype,
    create_layout,
    create_run_index,
    decode_str,
    model_infos,
    provenance_diff,
    run_entry,
    runs_of,
    video_mean,
)

Item = Tuple[VideoRecord, Mapping[str, ModelResult]]


class FeatureWriter:
    """Appends videos to a feature file; each :meth:`add_videos` call is one atomic commit.

    Create with :func:`open_writer` (new file, resume, or overwrite). After a crash, the rows of
    every committed video are intact and nothing else is visible. :meth:`close` marks the file
    "complete", or "incomplete" when called while an exception propagates (Ctrl-C, an error).
    """

    def __init__(self, f: h5py.File, models: Sequence[ModelInfo], storage_dtype: str) -> None:
        self._f = f
        self._lock: Optional[RunLock] = None
        self.path = Path(f.filename)
        self.models = {m.key: m for m in models}
        self.storage_dtype = np.dtype(storage_dtype)
        self._committed = f["committed"]
        self.num_videos = int(self._committed[0])
        self._num_clips = {m.key: clip_count(f, m.key, self.num_videos) for m in models}
        ids = f["videos/id"][: self.num_videos] if self.num_videos else []
        self.done_ids: List[str] = [decode_str(i) for i in ids]
        self._run_row = f[RUNS].shape[0] - 1  # this run: the last row of /runs (open_writer added it)
        self._datasets: Dict[str, h5py.Dataset] = {}

    def _ds(self, path: str) -> h5py.Dataset:
        """The dataset at `path`, looked up once: h5py's path lookups were a fifth of a commit's
        time, and a commit runs on the thread that feeds the model."""
        ds = self._datasets.get(path)
        if ds is None:
            ds = self._datasets[path] = self._f[path]
        return ds

    def _append(self, path: str, values: Any) -> None:
        append_rows(self._ds(path), values)

    # -- appending -----------------------------------------------------------
    def add_video(self, record: VideoRecord, results: Mapping[str, ModelResult]) -> None:
        """Append one video (all models) and commit it."""
        self.add_videos([(record, results)])

    def add_videos(self, items: Sequence[Item]) -> None:
        """Append several videos and commit them together (one flush pair)."""
        if not items:
            return
        f = self._f
        n0, k = self.num_videos, len(items)
        records = [r for r, _ in items]
        for rec in records:
            if rec.status not in STATUS:
                raise ValueError(f"status must be one of {STATUS}, got {rec.status!r}")
        for name, dt in VIDEO_COLUMNS:
            values = [getattr(r, name) for r in records]
            if name == "status":
                values = [STATUS.index(v) for v in values]
            self._append(f"videos/{name}", np.array(values, dtype=object if dt is STR else dt))
        self._append(f"videos/{RUN_INDEX}", np.full(k, self._run_row, np.int32))
        for key, m in self.models.items():
            self._append_model(m, n0, [res.get(key) for _, res in items])
        f.flush()
        # The commit marker goes last: a crash before this line leaves the previous commit intact.
        self._committed[0] = n0 + k
        f.flush()
        self.num_videos = n0 + k
        self.done_ids.extend(r.id for r in records)

    def _append_model(self, m: ModelInfo, n0: int, results: Sequence[Optional[ModelResult]]) -> None:
        gm = f"models/{m.key}"
        c0 = self._num_clips[m.key]
        tables = [res.clips if res is not None else ClipTable.empty(m.clip_len) for res in results]
        counts = np.array([len(t) for t in tables], np.int64)
        c = c0 + int(counts.sum())
        self._append(f"{gm}/videos/num_clips", counts)
        self._append(f"{gm}/videos/clip_offset", c0 + np.cumsum(counts) - counts)
        if c > c0:
            self._append(f"{gm}/clips/video_index", np.repeat(np.arange(n0, n0 + len(tables), dtype=np.int64), counts))
            for column, dtype in (("start_frame", np.int64), ("start_time", np.float64), ("padded", np.int32)):
                self._append(f"{gm}/clips/{column}",
                             np.concatenate([np.asarray(getattr(t, column), dtype) for t in tables]))
            if m.clip_len:
                fi = []
                for t in tables:
                    if len(t) and t.frame_indices is None:
                        raise ValueError(f"model {m.key!r}: frame_indices are required (clip_len={m.clip_len})")
                    fi.append(np.asarray(t.frame_indices, np.int64).reshape(len(t), m.clip_len))
                self._append(f"{gm}/clips/frame_indices", np.concatenate(fi))
        for layer in m.layers:
            self._append_layer(gm, layer, tables, results, c > c0)
        self._num_clips[m.key] = c

    def _append_layer(self, gm: str, layer: LayerInfo, tables: Sequence[ClipTable],
                      results: Sequence[Optional[ModelResult]], any_clips: bool) -> None:
        tail = layer.clip_shape
        feats, means = [], []
        for t, res in zip(tables, results):
            x = None if res is None else res.features.get(layer.name)
            x = np.zeros((0,) + tail, np.float32) if x is None else np.asarray(x)
            if x.shape != (len(t),) + tail:
                raise ValueError(
                    f"model {gm.rsplit('/', 1)[-1]!r} layer {layer.name!r}: features {x.shape} do not match "
                    f"{len(t)} clips x {tail}"
                )
            feats.append(x)
            v = None if res is None or res.video is None else res.video.get(layer.name)
            means.append(video_mean(x) if v is None else np.asarray(v, np.float64).reshape(layer.dim))
        if any_clips:
            self._append(f"{gm}/layers/{layer.name}/clip_features", np.concatenate(feats).astype(self.storage_dtype))
        self._append(f"{gm}/layers/{layer.name}/video_mean", np.stack(means).astype(self.storage_dtype))

    # -- closing ---------------------------------------------------------------
    def close(self, complete: Optional[bool] = None) -> None:
        """Close the file and mark it "complete" (default: unless an exception is propagating)."""
        if self._f.id.valid:
            if complete is None:
                complete = sys.exc_info()[0] is None
            exc = sys.exc_info()[1]
            state, reason = STATE_COMPLETE, ""
            if not complete:
                why = type(exc).__name__ if exc is not None else "the run stopped early"
                state = STATE_INCOMPLETE
                reason = (f"interrupted ({why}) after {self.num_videos} committed videos; "
                          "rerun the same command to resume")
            try:  # HDF5 2.0 lets a SWMR writer rewrite an existing attribute
                self._f.attrs["state"], self._f.attrs["state_reason"] = state, reason
                marked = True
            except (OSError, RuntimeError, KeyError):
                marked = False
            self._f.close()
            if not marked:  # older HDF5: reopen without SWMR (waits while a reader holds the file lock)
                _mark(self.path, state, reason)
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> "FeatureWriter":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.close(complete=exc_type is None)


def _mark(path: Path, state: str, reason: str) -> None:
    """Record how the writer ended (a clean close; reopening costs milliseconds)."""
    try:
        with open_write(path) as f:
            f.attrs["state"] = state
            f.attrs["state_reason"] = reason
    except OSError as e:  # the file stays "writing", which readers report as incomplete
        warnings.warn(f"could not mark {path} {state}: {e}", stacklevel=3)


def open_writer(
    path: Union[str, Path],
    models: Sequence[ModelInfo],
    provenance: Mapping[str, Any],
    *,
    storage_dtype: str = "float32",
    overwrite: bool = False,
    retry_failed: bool = False,
    command_line: str = "",
    shard: str = "",
    run: Optional[Mapping[str, Any]] = None,
) -> FeatureWriter:
    """A writer for `path`: a new file, or (when it exists) a resume of the same run.

    Args:
        path: the .h5 file.
        models: what the file holds (keys, layers, clip length, per-model provenance).
        provenance: everything that determines the features (compared on resume).
        storage_dtype: dtype of the stored features, "float32" or "float16".
        overwrite: start over even if `path` exists.
        retry_failed: on resume, drop the rows of videos recorded as failed (the file is
            rewritten without them, atomically), so they are not in ``done_ids`` and are
            written again, at the end, when the caller retries them.
        command_line, shard, run: recorded as run attributes (not compared); `run` is a
            JSON-able dict (device, batch size, engine, torch version ...).

    Raises:
        ProvenanceMismatchError: `path` holds features made with other settings.
        StoreError: `path` exists but is not a c3dfeat feature file of this format version.
    """
    path = Path(path)
    storage_dtype = check_storage_dtype(storage_dtype)
    keys = [m.key for m in models]
    if len(set(keys)) != len(keys):
        raise ValueError(f"model keys must be unique, got {keys}")
    lock = RunLock(path)
    try:
        run_attrs = {"command_line": command_line, "created_utc": _utcnow(), "shard": shard,
                     "run": json.dumps(canon(dict(run or {})), sort_keys=True)}
        full = {**canon(provenance), "store": {"storage_dtype": storage_dtype}}
        full["models"] = {m.key: canon(dict(m.attrs)) for m in models}  # per-model provenance lives in ModelInfo
        if overwrite or not path.exists():
            w = _create(path, models, full, storage_dtype, run_attrs)
        else:
            w = _resume(path, models, full, storage_dtype, retry_failed, run_attrs)
    except BaseException:
        lock.release()
        raise
    w._lock = lock
    return w


def _create(path: Path, models: Sequence[ModelInfo], provenance: Mapping[str, Any], storage_dtype: str,
            run_attrs: Mapping[str, Any]) -> FeatureWriter:
    path.unlink(missing_ok=True)
    tmp = path.with_name(path.name + ".creating")
    try:
        with h5py.File(tmp, "w", **WRITE_OPTIONS) as f:
            create_layout(f, models, provenance, storage_dtype, run_attrs)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)  # a half-created layout never sits at `path`
    f = open_write(path)
    f.swmr_mode = True
    return FeatureWriter(f, models, storage_dtype)


def _resume(path: Path, models: Sequence[ModelInfo], full: Mapping[str, Any], storage_dtype: str,
            retry_failed: bool, run_attrs: Mapping[str, Any]) -> FeatureWriter:
    recovered = recover_file(path)
    if recovered:
        with damage_is_a_store_error(path):
            mend_torn_headers(path)
    f = _reopen(path)
    try:
        _check_resumable(f, path, models, full)
        with damage_is_a_store_error(path):
            truncate_to_committed(f, rebuild_strings=recovered)
        n = int(f["committed"][0])
        failed = np.flatnonzero(f["videos/status"][:n] == STATUS.index("failed"))
        if retry_failed and len(failed):
            keep = np.setdiff1d(np.arange(n), failed)
            stored = (model_infos(f), json.loads(f.attrs["provenance"]), run_attrs_of(f))
            f.close()
            tmp = path.with_name(path.name + ".retry")
            copy_rows([path], np.zeros(len(keep), np.int64), keep, tmp, *stored, storage_dtype,
                      state=(STATE_WRITING, ""))
            os.replace(tmp, path)  # atomic: a crash leaves the old file (failed rows and all)
            f = _reopen(path)
        with damage_is_a_store_error(path):
            if RUNS not in f:  # written before per-video runs: its creating run wrote every row
                append_runs(f, runs_of(f))
                create_run_index(f, int(f["committed"][0]))
            append_runs(f, [run_entry(run_attrs)])  # this run: its videos' run_index
        f.attrs["state"] = STATE_WRITING
        f.attrs["state_reason"] = ""
        w = FeatureWriter(f, models, storage_dtype)
        f.flush()
        f.swmr_mode = True
        return w
    except BaseException:
        if f.id.valid:
            f.close()
        raise


def _reopen(path: Path) -> h5py.File:
    try:
        return open_write(path)
    except OSError as e:
        raise StoreError(
            f"cannot reopen {path} to resume: {e}; if another process has it open, wait for it, "
            "else use --overwrite to start over"
        ) from None


def _check_resumable(f: h5py.File, path: Path, models: Sequence[ModelInfo], full: Mapping[str, Any]) -> None:
    if f.attrs.get("format") != FORMAT:
        raise StoreError(f"{path} is not a c3dfeat feature file; choose another output or use --overwrite")
    version = int(f.attrs.get("format_version", 1))
    if version != FORMAT_VERSION:
        raise StoreError(
            f"{path} is a format-version-{version} feature file; this c3dfeat writes version {FORMAT_VERSION} "
            "and can read it but not add to it: write the rest to a new file, or pass --overwrite to start over"
        )
    diff = provenance_diff(json.loads(f.attrs["provenance"]), full)
    if diff:
        raise ProvenanceMismatchError(
            f"{path} holds features made with different settings (file != this run):\n  "
            + "\n  ".join(diff[:20])
            + "\nRerun with the original settings to resume, write to a new file, or pass --overwrite to start over."
        )
    stored_keys = json.loads(f.attrs["models"])
    keys = [m.key for m in models]
    if stored_keys != keys:
        raise ProvenanceMismatchError(f"{path} holds models {stored_keys}, this run has {keys}; use --overwrite")


def _utcnow() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_matrices(
    path: Union[str, Path],
    ids: Sequence[str],
    matrices: Mapping[str, Mapping[str, np.ndarray]],
    provenance: Mapping[str, Any],
    *,
    labels: Optional[Sequence[str]] = None,
    model_attrs: Optional[Mapping[str, Mapping[str, Any]]] = None,
    storage_dtype: str = "float32",
    overwrite: bool = False,
    command_line: str = "",
) -> Path:
    """Write precomputed video-level features (e.g. PCA-reduced) in the same schema.

    Args:
        ids: video ids, one per row.
        matrices: {model key: {layer name: (len(ids), D) array}}; stored as ``video_mean``,
            with zero clips per video.
        provenance: how the matrices were made (e.g. source file's provenance + PCA settings).
        labels: optional label per video.
        model_attrs: optional per-model provenance (random_init, checkpoint, ...).
    """
    if Path(path).exists() and not overwrite:
        raise StoreError(f"{path} exists; remove it or pass overwrite=True")
    models = []
    for key, layers in matrices.items():
        infos = []
        for name, x in layers.items():
            x = np.asarray(x)
            if x.ndim != 2 or x.shape[0] != len(ids):
                raise ValueError(f"{key}/{name}: expected ({len(ids)}, D), got {x.shape}")
            infos.append(LayerInfo(name, int(x.shape[1]), (int(x.shape[1]),)))
        models.append(ModelInfo(key, tuple(infos), 0, dict((model_attrs or {}).get(key, {}))))
    w = open_writer(path, models, provenance, storage_dtype=storage_dtype, overwrite=overwrite,
                    command_line=command_line)
    with w:
        items: List[Item] = []
        for i, vid in enumerate(ids):
            res: Dict[str, ModelResult] = {
                key: ModelResult(ClipTable.empty(), {}, {name: np.asarray(x)[i] for name, x in layers.items()})
                for key, layers in matrices.items()
            }
            items.append((VideoRecord(id=str(vid), label=labels[i] if labels else "", input_index=i), res))
        for s in range(0, len(items), 1024):
            w.add_videos(items[s : s + 1024])
    return Path(path)
