"""One HDF5 feature file: flat, chunked, resizable datasets, appended video by video, crash safe.

Layout (docs/hdf5-schema.md has the full table): a video table under ``/videos``, per model a
clip table under ``/models/<key>/clips`` and the features of each layer under
``/models/<key>/layers/<layer>/{clip_features,video_mean}``; provenance in root attributes.

Crash safety: the file is written in HDF5 SWMR mode (every dataset exists before
``swmr_mode = True``; each commit appends rows, flushes, then bumps ``/committed`` and flushes
again). Rows past ``/committed`` are ignored by readers and cut off on resume. A killed writer
leaves the superblock's "open for writing" flags set; readers then open with ``swmr=True``, and
:func:`recover_file` clears the flags (what ``h5clear -s --increment`` does) before a resume.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import h5py
import numpy as np

from c3dfeat.errors import ProvenanceMismatchError, StoreError
from c3dfeat.version import __version__

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "LayerInfo",
    "ModelInfo",
    "VideoRecord",
    "ClipTable",
    "ModelResult",
    "FeatureWriter",
    "FeatureFile",
    "open_writer",
    "write_matrices",
    "merge",
    "recover_file",
    "provenance_diff",
    "file_summary",
]

FORMAT = "c3dfeat-features"
FORMAT_VERSION = 1
STATUS = ("ok", "failed")  # /videos/status codes
RANDOM_INIT_WARNING = (
    "RANDOM INIT: at least one model ran WITHOUT pretrained weights; these features are "
    "meaningless for anything but testing"
)
# Root attributes that describe *this run* rather than the features; never compared.
_RUN_ATTRS = ("command_line", "created_utc", "shard", "run")

_STR = h5py.string_dtype("utf-8")
_VIDEO_COLUMNS: Tuple[Tuple[str, Any], ...] = (
    ("id", _STR),
    ("path", _STR),
    ("label", _STR),
    ("input_index", np.int64),
    ("status", np.uint8),
    ("error", _STR),
    ("num_frames", np.int64),
    ("fps", np.float64),
    ("duration", np.float64),
    ("size_bytes", np.int64),
    ("height", np.int32),
    ("width", np.int32),
)
_CLIP_COLUMNS: Tuple[Tuple[str, Any], ...] = (
    ("video_index", np.int64),
    ("start_frame", np.int64),
    ("start_time", np.float64),
    ("padded", np.int32),
)
_TABLE_CHUNK = 4096  # rows per chunk of 1-D tables (32 KiB of int64)
_FEATURE_CHUNK_BYTES = 1 << 20  # ~1 MiB chunks for feature matrices


# ----------------------------------------------------------------------------- records
@dataclass(frozen=True)
class LayerInfo:
    """One stored layer: `dim` values per clip (per crop when `crops` > 0)."""

    name: str
    dim: int
    shape: Tuple[int, ...] = ()  # per-clip shape before flattening (documentation)
    crops: int = 0  # 0: no crop axis stored; n: clip features are (N, n, dim)


@dataclass(frozen=True)
class ModelInfo:
    """One model in the file: its key (group name), layers, clip length and provenance attrs."""

    key: str
    layers: Tuple[LayerInfo, ...]
    clip_len: int = 0  # width of clips/frame_indices (0: not stored, e.g. reduced features)
    attrs: Mapping[str, Any] = field(default_factory=dict)  # JSON-able: checkpoint, sha256, sampling ...

    @property
    def random_init(self) -> bool:
        return bool(self.attrs.get("random_init", False))


@dataclass
class VideoRecord:
    """One row of the video table."""

    id: str
    path: str = ""
    label: str = ""
    input_index: int = -1  # position in the full (unsharded) input list; merge sorts by it
    status: str = "ok"  # "ok" | "failed"
    error: str = ""
    num_frames: int = -1
    fps: float = math.nan
    duration: float = math.nan
    size_bytes: int = -1
    height: int = -1
    width: int = -1


@dataclass
class ClipTable:
    """Per-clip rows of one video for one model."""

    start_frame: np.ndarray  # int64 (n,)
    start_time: np.ndarray  # float64 (n,) seconds = start_frame / native fps
    padded: np.ndarray  # int32 (n,) frames repeated at the end of the clip
    frame_indices: Optional[np.ndarray] = None  # int64 (n, clip_len): native frame indices

    @classmethod
    def empty(cls, clip_len: int = 0) -> "ClipTable":
        return cls(
            np.zeros(0, np.int64), np.zeros(0, np.float64), np.zeros(0, np.int32), np.zeros((0, clip_len), np.int64)
        )

    def __len__(self) -> int:
        return len(self.start_frame)


@dataclass
class ModelResult:
    """What one model produced for one video."""

    clips: ClipTable
    features: Dict[str, np.ndarray]  # layer -> (n, dim) or (n, crops, dim)
    video: Optional[Dict[str, np.ndarray]] = None  # layer -> (dim,); None: mean of `features`


def video_mean(features: np.ndarray) -> np.ndarray:
    """The video-level feature: mean over clips (and crops), computed in float64."""
    x = np.asarray(features, dtype=np.float64)
    if x.shape[0] == 0:
        return np.full(x.shape[-1], np.nan)
    return x.reshape(-1, x.shape[-1]).mean(axis=0)


# ----------------------------------------------------------------------------- provenance
def _canon(obj: Any) -> Any:
    """JSON round trip, so tuples/lists and numpy scalars compare equal to what was stored."""
    return json.loads(json.dumps(obj, sort_keys=True, default=_json_default))


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {o!r}")


def _flatten(d: Any, prefix: str = "") -> Dict[str, Any]:
    if isinstance(d, dict):
        out: Dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        if not d and prefix:
            out[prefix] = {}
        return out
    return {prefix: d}


def provenance_diff(a: Mapping[str, Any], b: Mapping[str, Any]) -> List[str]:
    """Human-readable differences between two provenance dicts ("key: a != b")."""
    fa, fb = _flatten(_canon(a)), _flatten(_canon(b))
    lines = []
    for k in sorted(set(fa) | set(fb)):
        va, vb = fa.get(k, "<absent>"), fb.get(k, "<absent>")
        if va != vb:
            lines.append(f"{k}: {json.dumps(va)} != {json.dumps(vb)}")
    return lines


# ----------------------------------------------------------------------------- recovery
def _lookup3(data: bytes, initval: int = 0) -> int:
    """Bob Jenkins' lookup3 hashlittle: the checksum of HDF5 superblock v2/v3 (H5checksum.c)."""
    m = 0xFFFFFFFF

    def rot(x: int, k: int) -> int:
        return ((x << k) | (x >> (32 - k))) & m

    n = len(data)
    a = b = c = (0xDEADBEEF + n + initval) & m
    i = 0
    while n > 12:
        a = (a + int.from_bytes(data[i : i + 4], "little")) & m
        b = (b + int.from_bytes(data[i + 4 : i + 8], "little")) & m
        c = (c + int.from_bytes(data[i + 8 : i + 12], "little")) & m
        a = (a - c) & m; a ^= rot(c, 4); c = (c + b) & m  # noqa: E702
        b = (b - a) & m; b ^= rot(a, 6); a = (a + c) & m  # noqa: E702
        c = (c - b) & m; c ^= rot(b, 8); b = (b + a) & m  # noqa: E702
        a = (a - c) & m; a ^= rot(c, 16); c = (c + b) & m  # noqa: E702
        b = (b - a) & m; b ^= rot(a, 19); a = (a + c) & m  # noqa: E702
        c = (c - b) & m; c ^= rot(b, 4); b = (b + a) & m  # noqa: E702
        n -= 12
        i += 12
    if n == 0:
        return c
    tail = data[i:] + bytes(12 - n)
    a = (a + int.from_bytes(tail[0:4], "little")) & m
    b = (b + int.from_bytes(tail[4:8], "little")) & m
    c = (c + int.from_bytes(tail[8:12], "little")) & m
    c ^= b; c = (c - rot(b, 14)) & m  # noqa: E702
    a ^= c; a = (a - rot(c, 11)) & m  # noqa: E702
    b ^= a; b = (b - rot(a, 25)) & m  # noqa: E702
    c ^= b; c = (c - rot(b, 16)) & m  # noqa: E702
    a ^= c; a = (a - rot(c, 4)) & m  # noqa: E702
    b ^= a; b = (b - rot(a, 14)) & m  # noqa: E702
    c ^= b; c = (c - rot(b, 24)) & m  # noqa: E702
    return c


_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def recover_file(path: Union[str, Path]) -> bool:
    """Clear the "open for (SWMR) writing" flags a killed writer left; True if they were set.

    Same effect as ``h5clear -s --increment=0``: the consistency flags byte of the version-3
    superblock is zeroed, the stored end-of-allocation address is raised to the physical file
    size (so new allocations never land on bytes the killed writer already used), and the
    superblock checksum (lookup3) is recomputed. Only safe when no process has the file open.
    """
    with open(path, "r+b") as fh:
        sb = bytearray(fh.read(48))
        if sb[:8] != _SIGNATURE:
            raise StoreError(f"{path} is not an HDF5 file (or has a user block); remove it or use --overwrite")
        if sb[8] not in (2, 3) or sb[9] != 8 or sb[10] != 8:
            return False  # old superblock (no flags there): nothing a SWMR writer can leave behind
        if struct.unpack("<I", sb[44:48])[0] != _lookup3(bytes(sb[:44])):
            raise StoreError(f"{path}: HDF5 superblock checksum mismatch; the file is damaged, use --overwrite")
        if sb[11] == 0:
            return False
        eoa = struct.unpack("<Q", sb[28:36])[0]
        size = os.fstat(fh.fileno()).st_size
        sb[11] = 0
        sb[28:36] = struct.pack("<Q", max(eoa, size))
        sb[44:48] = struct.pack("<I", _lookup3(bytes(sb[:44])))
        fh.seek(0)
        fh.write(sb)
        fh.flush()
        os.fsync(fh.fileno())
    return True


class _RunLock:
    """An exclusive flock on `<file>.lock` for the whole writing run.

    A SWMR writer gives up HDF5's own file lock (so readers can open the file), so without this
    two runs writing the same output would both "resume" it. The kernel drops the lock when the
    process dies, so a SIGKILLed run never blocks the next one.
    """

    def __init__(self, path: Path) -> None:
        self.path = path.with_name(path.name + ".lock")
        self._fh = None
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return
        fh = open(self.path, "a+b")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            raise StoreError(
                f"another process is writing {path} (lock {self.path} is held); wait for it to finish "
                "or write to another file"
            ) from None
        self._fh = fh

    def release(self) -> None:
        if self._fh is not None:
            try:
                self.path.unlink()
            except OSError:
                pass
            self._fh.close()
            self._fh = None


def _open_write(path: Path, timeout: float = 10.0) -> h5py.File:
    """Open for writing; wait while a reader holds HDF5's file lock (e.g. `c3dfeat info`)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return h5py.File(path, "r+", libver="latest")
        except OSError as e:
            if "lock" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _open_read(path: Union[str, Path]) -> h5py.File:
    path = Path(path)
    if not path.exists():
        raise StoreError(f"feature file {path} does not exist")
    try:
        return h5py.File(path, "r")
    except OSError:
        pass
    try:
        # A writer is running, or was killed: the superblock still says "open for SWMR write".
        return h5py.File(path, "r", swmr=True)
    except OSError as e:
        raise StoreError(f"cannot open {path} as an HDF5 feature file: {e}") from None


# ----------------------------------------------------------------------------- writer
def _feature_chunk(dim: int, crops: int, itemsize: int) -> Tuple[int, ...]:
    row = max(1, dim * max(crops, 1) * itemsize)
    rows = int(max(1, min(_TABLE_CHUNK, _FEATURE_CHUNK_BYTES // row)))
    return (rows, crops, dim) if crops else (rows, dim)


class FeatureWriter:
    """Appends videos to a feature file; each :meth:`add_videos` call is one atomic commit.

    Create with :func:`open_writer` (new file, resume, or overwrite). After a crash, the rows of
    every committed video are intact and nothing else is visible.
    """

    def __init__(self, f: h5py.File, models: Sequence[ModelInfo], dtype: str) -> None:
        self._f = f
        self.path = Path(f.filename)
        self.models = {m.key: m for m in models}
        self.dtype = np.dtype(dtype)
        self._committed = f["committed"]
        self.num_videos = int(self._committed[0])
        self._num_clips = {m.key: self._clip_count(m.key) for m in models}
        ids = f["videos/id"][: self.num_videos] if self.num_videos else []
        self.done_ids: List[str] = [i.decode() if isinstance(i, bytes) else i for i in ids]

    # -- creation / resume --------------------------------------------------
    @classmethod
    def _create(
        cls,
        path: Path,
        models: Sequence[ModelInfo],
        provenance: Mapping[str, Any],
        dtype: str,
        run_attrs: Mapping[str, Any],
    ) -> "FeatureWriter":
        tmp = path.with_name(path.name + ".creating")
        f = h5py.File(tmp, "w", libver="latest")
        try:
            cls._layout(f, models, provenance, dtype, run_attrs)
        except BaseException:
            f.close()
            tmp.unlink(missing_ok=True)
            raise
        f.close()
        os.replace(tmp, path)  # a half-created layout never sits at `path`
        f = _open_write(path)
        f.swmr_mode = True
        return cls(f, models, dtype)

    @staticmethod
    def _layout(
        f: h5py.File,
        models: Sequence[ModelInfo],
        provenance: Mapping[str, Any],
        dtype: str,
        run_attrs: Mapping[str, Any],
    ) -> None:
        """Create every dataset up front: SWMR allows no new objects once writing starts."""
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["c3dfeat_version"] = __version__
        f.attrs["provenance"] = json.dumps(_canon(provenance), sort_keys=True)
        f.attrs["dtype"] = np.dtype(dtype).name
        f.attrs["models"] = json.dumps([m.key for m in models])
        random = [m.key for m in models if m.random_init]
        f.attrs["random_init"] = bool(random)
        if random:
            f.attrs["warning"] = f"{RANDOM_INIT_WARNING} ({', '.join(random)})"
        for k in _RUN_ATTRS:
            f.attrs[k] = str(run_attrs.get(k, ""))
        f.create_dataset("committed", data=np.zeros(1, np.int64))
        g = f.create_group("videos")
        for name, dt in _VIDEO_COLUMNS:
            g.create_dataset(name, shape=(0,), maxshape=(None,), chunks=(_TABLE_CHUNK,), dtype=dt)
        g["status"].attrs["codes"] = json.dumps(list(STATUS))
        mg = f.create_group("models")
        for m in models:
            gm = mg.create_group(m.key)
            gm.attrs["info"] = json.dumps(_canon(dict(m.attrs)), sort_keys=True)
            gm.attrs["layers"] = json.dumps([dataclasses.asdict(layer) for layer in m.layers])
            gm.attrs["clip_len"] = m.clip_len
            gm.attrs["random_init"] = m.random_init
            gv = gm.create_group("videos")
            for name in ("num_clips", "clip_offset"):
                gv.create_dataset(name, shape=(0,), maxshape=(None,), chunks=(_TABLE_CHUNK,), dtype=np.int64)
            gc = gm.create_group("clips")
            for name, dt in _CLIP_COLUMNS:
                gc.create_dataset(name, shape=(0,), maxshape=(None,), chunks=(_TABLE_CHUNK,), dtype=dt)
            if m.clip_len:
                gc.create_dataset(
                    "frame_indices",
                    shape=(0, m.clip_len),
                    maxshape=(None, m.clip_len),
                    chunks=(max(1, _TABLE_CHUNK // m.clip_len), m.clip_len),
                    dtype=np.int64,
                )
            gl = gm.create_group("layers")
            for layer in m.layers:
                g1 = gl.create_group(layer.name)
                g1.attrs["dim"] = layer.dim
                g1.attrs["shape"] = json.dumps(list(layer.shape))
                g1.attrs["crops"] = layer.crops
                tail = (layer.crops, layer.dim) if layer.crops else (layer.dim,)
                g1.create_dataset(
                    "clip_features",
                    shape=(0,) + tail,
                    maxshape=(None,) + tail,
                    chunks=_feature_chunk(layer.dim, layer.crops, np.dtype(dtype).itemsize),
                    dtype=dtype,
                )
                g1.create_dataset(
                    "video_mean",
                    shape=(0, layer.dim),
                    maxshape=(None, layer.dim),
                    chunks=_feature_chunk(layer.dim, 0, np.dtype(dtype).itemsize),
                    dtype=dtype,
                )

    def _clip_count(self, key: str) -> int:
        n = self.num_videos
        if n == 0:
            return 0
        g = self._f[f"models/{key}/videos"]
        return int(g["clip_offset"][n - 1] + g["num_clips"][n - 1])

    def _truncate(self, recovered: bool) -> None:
        """Cut every table back to the committed rows (a crash can leave partial appends).

        String columns are rebuilt instead of shrunk: the rows past the commit may point at
        global-heap objects the killed writer never flushed, and HDF5 frees the old heap object
        of every vlen element it overwrites ("bad heap index" on the next append otherwise).
        """
        n = self.num_videos
        g = self._f["videos"]
        for name, dt in _VIDEO_COLUMNS:
            ds = g[name]
            if dt is _STR and (recovered or ds.shape[0] != n):
                keep = ds[:n]
                attrs = dict(ds.attrs)
                del g[name]
                ds = g.create_dataset(name, shape=(0,), maxshape=(None,), chunks=(_TABLE_CHUNK,), dtype=dt)
                ds.attrs.update(attrs)
                if n:
                    _append(ds, keep)
            else:
                ds.resize((n,))
        for key, m in self.models.items():
            gm = self._f[f"models/{key}"]
            for name in ("num_clips", "clip_offset"):
                gm["videos"][name].resize((n,))
            c = self._num_clips[key]
            for name, _ in _CLIP_COLUMNS:
                gm["clips"][name].resize((c,))
            if "frame_indices" in gm["clips"]:
                gm["clips/frame_indices"].resize((c, m.clip_len))
            for layer in m.layers:
                gm[f"layers/{layer.name}/clip_features"].resize(c, axis=0)
                gm[f"layers/{layer.name}/video_mean"].resize(n, axis=0)

    # -- appending -----------------------------------------------------------
    def add_video(self, record: VideoRecord, results: Mapping[str, ModelResult]) -> None:
        """Append one video (all models) and commit it."""
        self.add_videos([(record, results)])

    def add_videos(self, items: Sequence[Tuple[VideoRecord, Mapping[str, ModelResult]]]) -> None:
        """Append several videos and commit them together (one flush pair)."""
        if not items:
            return
        f = self._f
        n0, k = self.num_videos, len(items)
        records = [r for r, _ in items]
        for rec in records:
            if rec.status not in STATUS:
                raise ValueError(f"status must be one of {STATUS}, got {rec.status!r}")
        cols = {
            "id": [r.id for r in records],
            "path": [r.path for r in records],
            "label": [r.label for r in records],
            "input_index": np.array([r.input_index for r in records], np.int64),
            "status": np.array([STATUS.index(r.status) for r in records], np.uint8),
            "error": [r.error for r in records],
            "num_frames": np.array([r.num_frames for r in records], np.int64),
            "fps": np.array([r.fps for r in records], np.float64),
            "duration": np.array([r.duration for r in records], np.float64),
            "size_bytes": np.array([r.size_bytes for r in records], np.int64),
            "height": np.array([r.height for r in records], np.int32),
            "width": np.array([r.width for r in records], np.int32),
        }
        for name, _ in _VIDEO_COLUMNS:
            _append(f["videos"][name], cols[name] if not isinstance(cols[name], list) else np.array(cols[name], object))
        for key, m in self.models.items():
            self._append_model(m, n0, [res.get(key) for _, res in items])
        f.flush()
        # The commit marker goes last: a crash before this line leaves the previous commit intact.
        self._committed[0] = n0 + k
        f.flush()
        self.num_videos = n0 + k
        self.done_ids.extend(r.id for r in records)

    def _append_model(self, m: ModelInfo, n0: int, results: Sequence[Optional[ModelResult]]) -> None:
        gm = self._f[f"models/{m.key}"]
        c0 = self._num_clips[m.key]
        counts, offsets, tables = [], [], []
        c = c0
        for i, res in enumerate(results):
            t = res.clips if res is not None else ClipTable.empty(m.clip_len)
            counts.append(len(t))
            offsets.append(c)
            tables.append((n0 + i, t))
            c += len(t)
        _append(gm["videos/num_clips"], np.array(counts, np.int64))
        _append(gm["videos/clip_offset"], np.array(offsets, np.int64))
        if c > c0:
            _append(gm["clips/video_index"], np.concatenate([np.full(len(t), v, np.int64) for v, t in tables]))
            _append(gm["clips/start_frame"], np.concatenate([np.asarray(t.start_frame, np.int64) for _, t in tables]))
            _append(gm["clips/start_time"], np.concatenate([np.asarray(t.start_time, np.float64) for _, t in tables]))
            _append(gm["clips/padded"], np.concatenate([np.asarray(t.padded, np.int32) for _, t in tables]))
            if m.clip_len:
                fi = []
                for _, t in tables:
                    if len(t) and t.frame_indices is None:
                        raise ValueError(f"model {m.key!r}: frame_indices are required (clip_len={m.clip_len})")
                    fi.append(np.asarray(t.frame_indices, np.int64).reshape(len(t), m.clip_len))
                _append(gm["clips/frame_indices"], np.concatenate(fi))
        for layer in m.layers:
            tail = (layer.crops, layer.dim) if layer.crops else (layer.dim,)
            feats, means = [], []
            for (_, t), res in zip(tables, results):
                x = None if res is None else res.features.get(layer.name)
                if x is None:
                    x = np.zeros((0,) + tail, np.float32)
                x = np.asarray(x)
                if x.shape != (len(t),) + tail:
                    raise ValueError(
                        f"model {m.key!r} layer {layer.name!r}: features {x.shape} do not match "
                        f"{len(t)} clips x {tail}"
                    )
                feats.append(x)
                v = None if res is None or res.video is None else res.video.get(layer.name)
                means.append(video_mean(x) if v is None else np.asarray(v, np.float64).reshape(layer.dim))
            if c > c0:
                _append(gm[f"layers/{layer.name}/clip_features"], np.concatenate(feats).astype(self.dtype))
            _append(gm[f"layers/{layer.name}/video_mean"], np.stack(means).astype(self.dtype))
        self._num_clips[m.key] = c

    def close(self) -> None:
        if self._f.id.valid:
            self._f.close()
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.release()

    def __enter__(self) -> "FeatureWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _append(ds: h5py.Dataset, values: np.ndarray) -> None:
    n = ds.shape[0]
    ds.resize(n + len(values), axis=0)
    ds[n:] = values


def open_writer(
    path: Union[str, Path],
    models: Sequence[ModelInfo],
    provenance: Mapping[str, Any],
    *,
    dtype: str = "float32",
    overwrite: bool = False,
    command_line: str = "",
    shard: str = "",
    run: Optional[Mapping[str, Any]] = None,
) -> FeatureWriter:
    """A writer for `path`: a new file, or (when it exists) a resume of the same run.

    Args:
        path: the .h5 file.
        models: what the file holds (keys, layers, clip length, per-model provenance).
        provenance: everything that determines the features (compared on resume).
        dtype: storage dtype of features, "float32" or "float16".
        overwrite: start over even if `path` exists.
        command_line, shard, run: recorded as run attributes (not compared); `run` is a
            JSON-able dict (device, batch size, torch version ...).

    Raises:
        ProvenanceMismatchError: `path` holds features made with other settings.
        StoreError: `path` exists but is not a c3dfeat feature file.
    """
    path = Path(path)
    if np.dtype(dtype) not in (np.dtype("float32"), np.dtype("float16")):
        raise ValueError(f"dtype must be float32 or float16, got {dtype!r}")
    keys = [m.key for m in models]
    if len(set(keys)) != len(keys):
        raise ValueError(f"model keys must be unique, got {keys}")
    lock = _RunLock(path)
    try:
        w = _open_writer(path, models, provenance, dtype, overwrite, command_line, shard, run)
    except BaseException:
        lock.release()
        raise
    w._lock = lock
    return w


def _open_writer(path, models, provenance, dtype, overwrite, command_line, shard, run) -> FeatureWriter:
    keys = [m.key for m in models]
    run_attrs = {"command_line": command_line, "created_utc": _utcnow(), "shard": shard,
                 "run": json.dumps(_canon(dict(run or {})), sort_keys=True)}
    full = {**_canon(provenance), "store": {"dtype": np.dtype(dtype).name}}
    full["models"] = {m.key: _canon(dict(m.attrs)) for m in models}  # per-model provenance lives in ModelInfo
    if overwrite or not path.exists():
        if overwrite and path.exists():
            path.unlink()
        return FeatureWriter._create(path, models, full, dtype, run_attrs)
    recovered = recover_file(path)
    try:
        f = _open_write(path)
    except OSError as e:
        raise StoreError(
            f"cannot reopen {path} to resume: {e}; if another process has it open, wait for it, "
            "else use --overwrite to start over"
        ) from None
    try:
        if f.attrs.get("format") != FORMAT:
            raise StoreError(f"{path} is not a c3dfeat feature file; choose another output or use --overwrite")
        stored = json.loads(f.attrs["provenance"])
        diff = provenance_diff(stored, full)
        if diff:
            raise ProvenanceMismatchError(
                f"{path} holds features made with different settings (file != this run):\n  "
                + "\n  ".join(diff[:20])
                + "\nRerun with the original settings to resume, write to a new file, or pass --overwrite to start over."
            )
        stored_keys = json.loads(f.attrs["models"])
        if stored_keys != keys:
            raise ProvenanceMismatchError(f"{path} holds models {stored_keys}, this run has {keys}; use --overwrite")
        w = FeatureWriter(f, models, dtype)
        w._truncate(recovered)
        f.flush()
        f.swmr_mode = True
        return w
    except BaseException:
        if f.id.valid:
            f.close()
        raise


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
    dtype: str = "float32",
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
    models = []
    for key, layers in matrices.items():
        infos = []
        for name, x in layers.items():
            x = np.asarray(x)
            if x.ndim != 2 or x.shape[0] != len(ids):
                raise ValueError(f"{key}/{name}: expected ({len(ids)}, D), got {x.shape}")
            infos.append(LayerInfo(name, int(x.shape[1]), (int(x.shape[1]),)))
        models.append(ModelInfo(key, tuple(infos), 0, dict((model_attrs or {}).get(key, {}))))
    w = open_writer(path, models, provenance, dtype=dtype, overwrite=overwrite, command_line=command_line)
    try:
        if w.num_videos:
            raise StoreError(f"{path} already holds {w.num_videos} videos; use overwrite=True")
        items = []
        for i, vid in enumerate(ids):
            res = {
                key: ModelResult(ClipTable.empty(), {}, {name: np.asarray(x)[i] for name, x in layers.items()})
                for key, layers in matrices.items()
            }
            items.append((VideoRecord(id=str(vid), label=labels[i] if labels else "", input_index=i), res))
        for s in range(0, len(items), 1024):
            w.add_videos(items[s : s + 1024])
    finally:
        w.close()
    return Path(path)


# ----------------------------------------------------------------------------- reader
def _s(x: Any) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


class FeatureFile:
    """Read a feature file (plain h5py underneath). Only committed videos are visible.

    >>> ff = FeatureFile("feats.h5")
    >>> ids, X = ff.video_matrix("c3d", "fc6")          # (n_ok, 4096), ids aligned
    >>> clips = ff.clips(ids[0], "c3d", "fc6")            # (n_clips, 4096)
    """

    def __init__(self, path: Union[str, Path]) -> None:
        self.path = Path(path)
        self._f = _open_read(self.path)
        if self._f.attrs.get("format") != FORMAT:
            self._f.close()
            raise StoreError(f"{self.path} is not a c3dfeat feature file (no format attribute {FORMAT!r})")
        self.num_videos = int(self._f["committed"][0])
        self._index: Optional[Dict[str, int]] = None

    # -- metadata -----------------------------------------------------------
    @property
    def provenance(self) -> Dict[str, Any]:
        """Everything that determines the features (JSON), plus the run attributes."""
        p = json.loads(self._f.attrs["provenance"])
        p["c3dfeat_version"] = _s(self._f.attrs.get("c3dfeat_version", ""))
        for k in _RUN_ATTRS:
            p[k] = _s(self._f.attrs.get(k, ""))
        return p

    @property
    def random_init(self) -> bool:
        return bool(self._f.attrs.get("random_init", False))

    @property
    def warning(self) -> str:
        return _s(self._f.attrs.get("warning", ""))

    @property
    def dtype(self) -> str:
        return _s(self._f.attrs.get("dtype", "float32"))

    @property
    def models(self) -> List[str]:
        return list(json.loads(self._f.attrs["models"]))

    def model_info(self, model: str) -> ModelInfo:
        gm = self._group(model)
        layers = tuple(
            LayerInfo(d["name"], int(d["dim"]), tuple(d["shape"]), int(d["crops"])) for d in json.loads(gm.attrs["layers"])
        )
        return ModelInfo(model, layers, int(gm.attrs["clip_len"]), json.loads(gm.attrs["info"]))

    def layers(self, model: str) -> List[str]:
        return [layer.name for layer in self.model_info(model).layers]

    def _group(self, model: str) -> h5py.Group:
        if model not in self.models:
            raise StoreError(f"{self.path} has no model {model!r}; it has: {', '.join(self.models)}")
        return self._f[f"models/{model}"]

    def _layer(self, model: str, layer: str) -> h5py.Group:
        gm = self._group(model)
        if layer not in gm["layers"]:
            raise StoreError(
                f"{self.path}: model {model!r} has no stored layer {layer!r}; stored: {', '.join(self.layers(model))}"
            )
        return gm[f"layers/{layer}"]

    # -- video table ----------------------------------------------------------
    def _col(self, name: str) -> np.ndarray:
        return self._f[f"videos/{name}"][: self.num_videos]

    @property
    def video_ids(self) -> List[str]:
        return [_s(x) for x in self._col("id")]

    @property
    def status(self) -> np.ndarray:
        """Per video: "ok" or "failed"."""
        return np.array(STATUS, dtype=object)[self._col("status")]

    def videos(self) -> Dict[str, np.ndarray]:
        """The whole committed video table, column by column (strings decoded)."""
        out = {}
        for name, dt in _VIDEO_COLUMNS:
            col = self._col(name)
            out[name] = np.array([_s(x) for x in col], dtype=object) if dt is _STR else col
        out["status"] = np.array(STATUS, dtype=object)[out["status"]]
        return out

    @property
    def failed(self) -> List[Tuple[str, str]]:
        """(video id, reason) of every video that could not be extracted."""
        st = self._col("status")
        idx = np.flatnonzero(st == STATUS.index("failed"))
        if not len(idx):
            return []
        ids, errs = self._col("id"), self._col("error")
        return [(_s(ids[i]), _s(errs[i])) for i in idx]

    def index_of(self, video_id: str) -> int:
        if self._index is None:
            self._index = {v: i for i, v in enumerate(self.video_ids)}
        try:
            return self._index[video_id]
        except KeyError:
            raise StoreError(f"{self.path} has no video {video_id!r}") from None

    # -- features ---------------------------------------------------------------
    def video_matrix(self, model: str, layer: str, status: Optional[str] = "ok") -> Tuple[List[str], np.ndarray]:
        """(ids, X): one row per video (its clip mean), only `status` videos (None: all)."""
        g = self._layer(model, layer)
        x = g["video_mean"][: self.num_videos]
        ids = self.video_ids
        if status is None:
            return ids, x
        keep = np.flatnonzero(self._col("status") == STATUS.index(status))
        return [ids[i] for i in keep], x[keep]

    def clips(self, video_id: str, model: str, layer: str) -> np.ndarray:
        """Clip features of one video: (n_clips, D), or (n_clips, crops, D) when crops were kept."""
        g = self._layer(model, layer)
        a, b = self._clip_range(video_id, model)
        return g["clip_features"][a:b]

    def clip_info(self, video_id: str, model: str) -> Dict[str, np.ndarray]:
        """The clip table rows of one video: start_frame, start_time, padded, frame_indices."""
        gm = self._group(model)
        a, b = self._clip_range(video_id, model)
        return {name: gm[f"clips/{name}"][a:b] for name in gm["clips"] if name != "video_index"}

    def _clip_range(self, video_id: str, model: str) -> Tuple[int, int]:
        i = self.index_of(video_id)
        gv = self._group(model)["videos"]
        a = int(gv["clip_offset"][i])
        return a, a + int(gv["num_clips"][i])

    def num_clips(self, model: str) -> int:
        n = self.num_videos
        if n == 0:
            return 0
        gv = self._group(model)["videos"]
        return int(gv["clip_offset"][n - 1] + gv["num_clips"][n - 1])

    @property
    def h5(self) -> h5py.File:
        """The underlying h5py file (read only)."""
        return self._f

    def close(self) -> None:
        if self._f.id.valid:
            self._f.close()

    def __enter__(self) -> "FeatureFile":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FeatureFile({str(self.path)!r}, videos={self.num_videos}, models={self.models})"


# ----------------------------------------------------------------------------- merge
def _compared(p: Mapping[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in p.items() if k not in _RUN_ATTRS}


def merge(
    paths: Sequence[Union[str, Path]], out: Union[str, Path], *, overwrite: bool = False, batch: int = 256
) -> Path:
    """Join shard files into one, ordered by input position: equal to a single run.

    Raises:
        ProvenanceMismatchError: the files were made with different settings or models.
        StoreError: a video id appears in two files.
    """
    if not paths:
        raise ValueError("merge needs at least one input file")
    out = Path(out)
    if out.exists() and not overwrite:
        raise StoreError(f"{out} exists; remove it or pass --overwrite")
    files = [FeatureFile(p) for p in paths]
    try:
        ref = files[0]
        ref_p = _compared(ref.provenance)
        for ff in files[1:]:
            diff = provenance_diff(ref_p, _compared(ff.provenance))
            if diff or ff.models != ref.models:
                raise ProvenanceMismatchError(
                    f"cannot merge {ff.path} with {ref.path}: made with different settings:\n  "
                    + "\n  ".join(diff[:20] or [f"models {ref.models} != {ff.models}"])
                )
        models = [ref.model_info(k) for k in ref.models]
        order = []  # (input_index, file number, row)
        seen: Dict[str, Path] = {}
        for n, ff in enumerate(files):
            cols = ff.videos()
            for i in range(ff.num_videos):
                vid = cols["id"][i]
                if vid in seen:
                    raise StoreError(f"video {vid!r} is in both {seen[vid]} and {ff.path}; shards must be disjoint")
                seen[vid] = ff.path
                order.append((int(cols["input_index"][i]), n, i))
        order.sort()
        tables = [ff.videos() for ff in files]
        prov = json.loads(ref.h5.attrs["provenance"])
        w = open_writer(out, models, prov, dtype=ref.dtype, overwrite=True,
                        command_line=_s(ref.h5.attrs.get("command_line", "")),
                        run=json.loads(_s(ref.h5.attrs.get("run", "{}")) or "{}"))
        try:
            for s in range(0, len(order), batch):
                items = []
                for _, n, i in order[s : s + batch]:
                    ff, t = files[n], tables[n]
                    rec = VideoRecord(**{name: _py(t[name][i]) for name, _ in _VIDEO_COLUMNS})
                    res = {}
                    for m in models:
                        vid = rec.id
                        info = ff.clip_info(vid, m.key)
                        clips = ClipTable(info["start_frame"], info["start_time"], info["padded"],
                                          info.get("frame_indices"))
                        feats = {layer.name: ff.clips(vid, m.key, layer.name) for layer in m.layers}
                        video = {layer.name: ff._layer(m.key, layer.name)["video_mean"][i] for layer in m.layers}
                        res[m.key] = ModelResult(clips, feats, video)
                    items.append((rec, res))
                w.add_videos(items)
        finally:
            w.close()
        return out
    finally:
        for ff in files:
            ff.close()


def _py(x: Any) -> Any:
    return x.item() if isinstance(x, np.generic) else x


def iter_chunks(n: int, size: int) -> Iterator[Tuple[int, int]]:
    for s in range(0, n, size):
        yield s, min(n, s + size)


def file_summary(path: Union[str, Path]) -> Dict[str, Any]:
    """What `c3dfeat info` shows: provenance, counts, layers, failures (JSON-able)."""
    with FeatureFile(path) as ff:
        prov = ff.provenance
        failed = ff.failed
        models = {}
        for key in ff.models:
            mi = ff.model_info(key)
            d = dict(mi.attrs)
            d["clips"] = ff.num_clips(key)
            d["layers"] = [dataclasses.asdict(layer) for layer in mi.layers]
            models[key] = d
        return {
            "path": str(path),
            "c3dfeat_version": prov.get("c3dfeat_version", ""),
            "dtype": ff.dtype,
            "videos": ff.num_videos,
            "ok": ff.num_videos - len(failed),
            "failed": len(failed),
            "failures": failed,
            "random_init": ff.random_init,
            "warning": ff.warning,
            "models": models,
            "provenance": {k: v for k, v in prov.items() if k not in _RUN_ATTRS},
            "command_line": prov.get("command_line", ""),
            "created_utc": prov.get("created_utc", ""),
            "shard": prov.get("shard", ""),
            "run": json.loads(prov.get("run") or "{}"),
        }
