"""The feature file's schema: names, columns, chunking, the records written and read, provenance.

A leaf of the store package: no h5py file is opened here, only described (docs/hdf5-schema.md).
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import h5py
import numpy as np

from c3dfeat.version import __version__

FORMAT = "c3dfeat-features"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: attributes `dtype` (root) and `crops` (layer); 2: `storage_dtype`, `num_crops`
STATUS = ("ok", "failed")  # /videos/status codes
STORAGE_DTYPES = ("float32", "float16")
RANDOM_INIT_WARNING = (
    "RANDOM INIT: at least one model ran WITHOUT pretrained weights; these features are "
    "meaningless for anything but testing"
)
# Root attributes that describe *this run* rather than the features; never compared.
# `run` is JSON (device, batch size, engine, torch version ...).
RUN_ATTRS = ("command_line", "created_utc", "shard", "run")
# Dataset `/runs`: one JSON string per run that wrote to the file (its creation, each resume;
# merge joins the inputs' lists), each {"command_line", "started_utc", "shard", "run"}; the video
# column `run_index` gives each row's run. A dataset, appended row by row, not an attribute
# rewritten whole: it stays as small as the other strings in HDF5's 4 KiB global-heap collections,
# which in page-aligned files never straddle a page (docs/hdf5-schema.md, "Torn writes"). The
# RUN_ATTRS stay the creating run's. A file from before them reads as one run that wrote every row.
RUNS = "runs"
RUN_INDEX = "run_index"
# Root attribute `state`: "writing" while a writer has the file, then "complete" or "incomplete".
STATE_WRITING = "writing"
STATE_COMPLETE = "complete"
STATE_INCOMPLETE = "incomplete"
STATE_NEEDS_REPAIR = "needs-repair"  # never stored: read from the superblock flag

STR = h5py.string_dtype("utf-8")
VIDEO_COLUMNS: Tuple[Tuple[str, Any], ...] = (
    ("id", STR),
    ("path", STR),
    ("label", STR),
    ("input_index", np.int64),
    ("status", np.uint8),
    ("error", STR),
    ("num_frames", np.int64),
    ("fps", np.float64),
    ("duration", np.float64),
    ("size_bytes", np.int64),
    ("height", np.int32),
    ("width", np.int32),
)
CLIP_COLUMNS: Tuple[Tuple[str, Any], ...] = (
    ("video_index", np.int64),
    ("start_frame", np.int64),
    ("start_time", np.float64),
    ("padded", np.int32),
)
TABLE_CHUNK = 4096  # rows per chunk of 1-D tables (32 KiB of int64)
FEATURE_CHUNK_BYTES = 1 << 20  # ~1 MiB chunks for feature matrices


# ----------------------------------------------------------------------------- records
@dataclass(frozen=True)
class LayerInfo:
    """One stored layer: `dim` values per clip (per crop when `num_crops` > 0)."""

    name: str
    dim: int
    shape: Tuple[int, ...] = ()  # per-clip shape before flattening (documentation)
    num_crops: int = 0  # 0: no crop axis stored; n: clip features are (N, n, dim)
    aliases: Tuple[str, ...] = ()  # other names of the layer (the original framework's: fc6-1, final_avg)

    @property
    def clip_shape(self) -> Tuple[int, ...]:
        """Shape of one clip's row in `clip_features`."""
        return (self.num_crops, self.dim) if self.num_crops else (self.dim,)

    def to_json(self) -> Dict[str, Any]:
        return {"name": self.name, "dim": self.dim, "shape": list(self.shape), "num_crops": self.num_crops,
                "aliases": list(self.aliases)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "LayerInfo":
        """Read a layer record; format version 1 called the count `crops`."""
        n = d["num_crops"] if "num_crops" in d else d.get("crops", 0)
        aliases = tuple(str(a) for a in d.get("aliases", ()))
        return cls(str(d["name"]), int(d["dim"]), tuple(int(s) for s in d["shape"]), int(n), aliases)


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
    features: Dict[str, np.ndarray]  # layer -> (n, dim) or (n, num_crops, dim)
    video: Optional[Dict[str, np.ndarray]] = None  # layer -> (dim,); None: mean of `features`


def video_mean(features: np.ndarray) -> np.ndarray:
    """The video-level feature: mean over clips (and crops), computed in float64."""
    x = np.asarray(features, dtype=np.float64)
    if x.shape[0] == 0:
        return np.full(x.shape[-1], np.nan)
    return x.reshape(-1, x.shape[-1]).mean(axis=0)


def decode_str(x: Any) -> str:
    """An HDF5 string value as str (h5py returns vlen strings as bytes)."""
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def check_storage_dtype(storage_dtype: str) -> str:
    name = np.dtype(storage_dtype).name
    if name not in STORAGE_DTYPES:
        raise ValueError(f"storage_dtype must be one of {', '.join(STORAGE_DTYPES)}, got {storage_dtype!r}")
    return name


# ----------------------------------------------------------------------------- provenance
def canon(obj: Any) -> Any:
    """JSON round trip, so tuples/lists and numpy scalars compare equal to what was stored."""
    return json.loads(json.dumps(obj, sort_keys=True, default=_json_default))


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
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
    fa, fb = _flatten(canon(a)), _flatten(canon(b))
    lines = []
    for k in sorted(set(fa) | set(fb)):
        va, vb = fa.get(k, "<absent>"), fb.get(k, "<absent>")
        if va != vb:
            lines.append(f"{k}: {json.dumps(va)} != {json.dumps(vb)}")
    return lines


# ----------------------------------------------------------------------------- layout
def growable(ndim: int) -> Tuple[None, ...]:
    """maxshape of a matrix: it only grows along rows, yet every dimension is declared unlimited.

    That makes HDF5 index its chunks with a version-2 B-tree (2 KiB nodes) instead of an extensible
    array, whose data blocks outgrow a page after ~8,200 chunks (fc6: ~520k clips) and are rewritten
    whenever a chunk is added: a SIGKILL in that write would tear one and lose every chunk it
    indexes (docs/hdf5-schema.md, "Torn writes"). Same write and read speed (measured, 20k chunks).
    """
    return (None,) * ndim


def feature_chunk(layer: LayerInfo, itemsize: int, per_clip: bool = True) -> Tuple[int, ...]:
    tail = layer.clip_shape if per_clip else (layer.dim,)
    row = max(1, int(np.prod(tail)) * itemsize)
    rows = int(max(1, min(TABLE_CHUNK, FEATURE_CHUNK_BYTES // row)))
    return (rows,) + tail


def create_layout(
    f: h5py.File,
    models: Sequence[ModelInfo],
    provenance: Mapping[str, Any],
    storage_dtype: str,
    run_attrs: Mapping[str, Any],
    runs: Optional[Sequence[Mapping[str, Any]]] = None,
) -> None:
    """Create every attribute and (empty, resizable) dataset: SWMR allows no new objects later.
    `runs`: the `/runs` rows (default: the one run of `run_attrs`)."""
    f.attrs["format"] = FORMAT
    f.attrs["format_version"] = FORMAT_VERSION
    f.attrs["c3dfeat_version"] = __version__
    f.attrs["provenance"] = json.dumps(canon(provenance), sort_keys=True)
    f.attrs["storage_dtype"] = np.dtype(storage_dtype).name
    f.attrs["models"] = json.dumps([m.key for m in models])
    f.attrs["state"] = STATE_WRITING
    f.attrs["state_reason"] = ""
    random = [m.key for m in models if m.random_init]
    f.attrs["random_init"] = bool(random)
    if random:
        f.attrs["warning"] = f"{RANDOM_INIT_WARNING} ({', '.join(random)})"
    for k in RUN_ATTRS:
        f.attrs[k] = str(run_attrs.get(k, ""))
    f.create_dataset("committed", data=np.zeros(1, np.int64))
    g = f.create_group("videos")
    for name, dt in VIDEO_COLUMNS:
        g.create_dataset(name, shape=(0,), maxshape=(None,), chunks=(TABLE_CHUNK,), dtype=dt)
    create_run_index(f, 0)
    g["status"].attrs["codes"] = json.dumps(list(STATUS))
    itemsize = np.dtype(storage_dtype).itemsize
    mg = f.create_group("models")
    for m in models:
        gm = mg.create_group(m.key)
        gm.attrs["info"] = json.dumps(canon(dict(m.attrs)), sort_keys=True)
        gm.attrs["layers"] = json.dumps([layer.to_json() for layer in m.layers])
        gm.attrs["clip_len"] = m.clip_len
        gm.attrs["random_init"] = m.random_init
        gv = gm.create_group("videos")
        for name in ("num_clips", "clip_offset"):
            gv.create_dataset(name, shape=(0,), maxshape=(None,), chunks=(TABLE_CHUNK,), dtype=np.int64)
        gc = gm.create_group("clips")
        for name, dt in CLIP_COLUMNS:
            gc.create_dataset(name, shape=(0,), maxshape=(None,), chunks=(TABLE_CHUNK,), dtype=dt)
        if m.clip_len:
            gc.create_dataset(
                "frame_indices",
                shape=(0, m.clip_len),
                maxshape=growable(2),
                chunks=(max(1, TABLE_CHUNK // m.clip_len), m.clip_len),
                dtype=np.int64,
            )
        gl = gm.create_group("layers")
        for layer in m.layers:
            g1 = gl.create_group(layer.name)
            g1.attrs["dim"] = layer.dim
            g1.attrs["shape"] = json.dumps(list(layer.shape))
            g1.attrs["num_crops"] = layer.num_crops
            g1.attrs["aliases"] = json.dumps(list(layer.aliases))
            tail = layer.clip_shape
            g1.create_dataset(
                "clip_features",
                shape=(0,) + tail,
                maxshape=growable(1 + len(tail)),
                chunks=feature_chunk(layer, itemsize),
                dtype=storage_dtype,
            )
            g1.create_dataset(
                "video_mean",
                shape=(0, layer.dim),
                maxshape=growable(2),
                chunks=feature_chunk(layer, itemsize, per_clip=False),
                dtype=storage_dtype,
            )
    append_runs(f, [run_entry(run_attrs)] if runs is None else runs)


def run_entry(run_attrs: Mapping[str, Any]) -> Dict[str, Any]:
    """One row of `/runs`, from a run's RUN_ATTRS (`run` as its JSON text)."""
    run = run_attrs.get("run") or "{}"
    return {"command_line": str(run_attrs.get("command_line", "")),
            "started_utc": str(run_attrs.get("created_utc", "")), "shard": str(run_attrs.get("shard", "")),
            "run": json.loads(run) if isinstance(run, str) else dict(run)}


def runs_of(f: h5py.File) -> List[Dict[str, Any]]:
    """The runs that wrote an open file (`/runs`); a file from before them: its creating run."""
    if RUNS in f:
        return [json.loads(decode_str(x)) for x in f[RUNS][:]]
    return [run_entry({k: decode_str(f.attrs.get(k, "")) for k in RUN_ATTRS})]


def append_runs(f: h5py.File, entries: Sequence[Mapping[str, Any]]) -> None:
    """Add rows to `/runs` (created when absent); before SWMR mode only (a writer's open)."""
    if RUNS not in f:
        f.create_dataset(RUNS, shape=(0,), maxshape=(None,), chunks=(64,), dtype=STR)
    ds = f[RUNS]
    n0 = ds.shape[0]
    ds.resize(n0 + len(entries), axis=0)
    if entries:
        ds[n0:] = np.array([json.dumps(canon(dict(e)), sort_keys=True) for e in entries], dtype=object)


def run_index_of(f: h5py.File, n: int) -> np.ndarray:
    """Which entry of `runs_of(f)` wrote each of the first `n` video rows (int64)."""
    if f"videos/{RUN_INDEX}" not in f:
        return np.zeros(n, np.int64)
    return np.asarray(f[f"videos/{RUN_INDEX}"][:n], np.int64)


def create_run_index(f: h5py.File, n: int) -> None:
    """The `run_index` column, `n` rows of 0, HDF5's fill value (a file from before it: its creating
    run wrote them)."""
    f["videos"].create_dataset(RUN_INDEX, shape=(n,), maxshape=(None,), chunks=(TABLE_CHUNK,), dtype=np.int32)


def model_infos(f: h5py.File) -> List[ModelInfo]:
    """The models of an open feature file (either format version)."""
    out = []
    for key in json.loads(f.attrs["models"]):
        gm = f[f"models/{key}"]
        layers = tuple(LayerInfo.from_json(d) for d in json.loads(gm.attrs["layers"]))
        out.append(ModelInfo(key, layers, int(gm.attrs["clip_len"]), json.loads(gm.attrs["info"])))
    return out


def layer_record(layer: LayerInfo) -> Dict[str, Any]:
    """A layer as `c3dfeat info --json` shows it."""
    return dataclasses.asdict(layer)


def find_layer(layers: Sequence[LayerInfo], name: str) -> Optional[LayerInfo]:
    """The stored layer called `name`: exactly, else by canonical name or alias, case-insensitive."""
    for layer in layers:
        if layer.name == name:
            return layer
    key = name.lower()
    for layer in layers:
        if key == layer.name.lower() or key in (a.lower() for a in layer.aliases):
            return layer
    return None
