"""Reading a feature file (either format version): metadata, state, video table, features."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import h5py
import numpy as np

from c3dfeat.errors import StoreError
from c3dfeat.store.files import open_read, writer_running
from c3dfeat.store.recovery import open_for_write_flag
from c3dfeat.store.schema import (
    FORMAT,
    READABLE_VERSIONS,
    RUN_ATTRS,
    RUN_INDEX,
    STATE_COMPLETE,
    STATE_INCOMPLETE,
    STATE_NEEDS_REPAIR,
    STATE_WRITING,
    STATUS,
    STR,
    VIDEO_COLUMNS,
    ModelInfo,
    decode_str,
    find_layer,
    model_infos,
    run_index_of,
    runs_of,
)


class FeatureFile:
    """Read a feature file (plain h5py underneath). Only committed videos are visible.

    >>> ff = FeatureFile("feats.h5")
    >>> ids, X = ff.video_matrix("c3d", "fc6")          # (n_ok, 4096), ids aligned
    >>> clips = ff.clips(ids[0], "c3d", "fc6")            # (n_clips, 4096)
    """

    def __init__(self, path: Union[str, Path]) -> None:
        self.path = Path(path)
        self._f = open_read(self.path)
        if self._f.attrs.get("format") != FORMAT:
            self._f.close()
            raise StoreError(f"{self.path} is not a c3dfeat feature file (no format attribute {FORMAT!r})")
        self.format_version = int(self._f.attrs.get("format_version", 1))
        if self.format_version not in READABLE_VERSIONS:
            self._f.close()
            raise StoreError(f"{self.path} has format version {self.format_version}, newer than this c3dfeat "
                             f"reads ({', '.join(map(str, READABLE_VERSIONS))}); upgrade c3dfeat")
        self.num_videos = int(self._f["committed"][0])
        self._index: Optional[Dict[str, int]] = None
        self._infos: Optional[Dict[str, ModelInfo]] = None

    # -- metadata -----------------------------------------------------------
    @property
    def provenance(self) -> Dict[str, Any]:
        """Everything that determines the features (JSON), plus the run attributes."""
        p: Dict[str, Any] = json.loads(self._f.attrs["provenance"])
        p["c3dfeat_version"] = decode_str(self._f.attrs.get("c3dfeat_version", ""))
        for k in RUN_ATTRS:
            p[k] = decode_str(self._f.attrs.get(k, ""))
        return p

    @property
    def runs(self) -> List[Dict[str, Any]]:
        """Every run that wrote this file, in order: its creation, each resume, and through a merge
        the shards' runs; each {"command_line", "started_utc", "shard", "run": {device, batch size
        ...}}. :attr:`run_index` says which one wrote each video."""
        return runs_of(self._f)

    @property
    def run_index(self) -> np.ndarray:
        """Per video (file order): the index in :attr:`runs` of the run that wrote it."""
        return run_index_of(self._f, self.num_videos)

    def run_of(self, video_id: str) -> Dict[str, Any]:
        """The run (an entry of :attr:`runs`) that computed `video_id`'s features."""
        i = self.index_of(video_id)
        return self.runs[int(self._f[f"videos/{RUN_INDEX}"][i]) if f"videos/{RUN_INDEX}" in self._f else 0]

    @property
    def random_init(self) -> bool:
        return bool(self._f.attrs.get("random_init", False))

    @property
    def warning(self) -> str:
        return decode_str(self._f.attrs.get("warning", ""))

    @property
    def storage_dtype(self) -> str:
        """dtype of the stored features: "float32" or "float16"."""
        return decode_str(self._f.attrs.get("storage_dtype", self._f.attrs.get("dtype", "float32")))

    @property
    def state(self) -> str:
        """The file state: "complete", "incomplete" (interrupted, or being written now) or "needs-repair" (killed)."""
        return self._state()[0]

    @property
    def state_reason(self) -> str:
        """Why the file is in its :attr:`state`, and what to do."""
        return self._state()[1]

    def _state(self) -> Tuple[str, str]:
        if open_for_write_flag(self.path):
            if writer_running(self.path):
                return STATE_INCOMPLETE, f"a writer is adding videos now ({self.num_videos} committed so far)"
            return STATE_NEEDS_REPAIR, (
                f"the writing run was killed ({self.num_videos} committed videos are readable here); rerun the "
                "same command to resume, or `c3dfeat repair FILE` to make it readable by plain h5py as it is"
            )
        stored = decode_str(self._f.attrs.get("state", ""))
        reason = decode_str(self._f.attrs.get("state_reason", ""))
        if stored == STATE_COMPLETE:
            return STATE_COMPLETE, reason or "the writing run finished and closed the file"
        if stored == STATE_INCOMPLETE:
            return STATE_INCOMPLETE, reason or "the writing run stopped early; rerun the same command to resume"
        if stored == STATE_WRITING:
            return STATE_INCOMPLETE, "the writer did not close the file cleanly; rerun the same command to resume"
        return STATE_COMPLETE, "format version 1 file (no close marker), not left open by a writer"

    @property
    def models(self) -> List[str]:
        return list(json.loads(self._f.attrs["models"]))

    def model_info(self, model: str) -> ModelInfo:
        if self._infos is None:
            self._infos = {m.key: m for m in model_infos(self._f)}
        self._group(model)
        return self._infos[model]

    def layers(self, model: str) -> List[str]:
        return [layer.name for layer in self.model_info(model).layers]

    def _group(self, model: str) -> h5py.Group:
        if model not in self.models:
            raise StoreError(f"{self.path} has no model {model!r}; it has: {', '.join(self.models)}")
        return self._f[f"models/{model}"]

    def layer_name(self, model: str, layer: str) -> str:
        """The stored name of `layer` of `model`: itself, or the layer it is an alias of (``fc6-1``)."""
        info = find_layer(self.model_info(model).layers, layer)
        if info is None:
            stored = ", ".join(la.name + (f" ({'/'.join(la.aliases)})" if la.aliases else "")
                               for la in self.model_info(model).layers)
            raise StoreError(f"{self.path}: model {model!r} has no stored layer {layer!r}; stored: {stored}")
        return info.name

    def _layer(self, model: str, layer: str) -> h5py.Group:
        return self._group(model)[f"layers/{self.layer_name(model, layer)}"]

    # -- video table ----------------------------------------------------------
    def _col(self, name: str) -> np.ndarray:
        return np.asarray(self._f[f"videos/{name}"][: self.num_videos])

    @property
    def video_ids(self) -> List[str]:
        return [decode_str(x) for x in self._col("id")]

    @property
    def status(self) -> np.ndarray:
        """Per video: "ok" or "failed"."""
        return np.asarray(np.array(STATUS, dtype=object)[self._col("status")])

    def videos(self) -> Dict[str, np.ndarray]:
        """The whole committed video table, column by column (strings decoded)."""
        out = {}
        for name, dt in VIDEO_COLUMNS:
            col = self._col(name)
            out[name] = np.array([decode_str(x) for x in col], dtype=object) if dt is STR else col
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
        return [(decode_str(ids[i]), decode_str(errs[i])) for i in idx]

    def index_of(self, video_id: str) -> int:
        if self._index is None:
            self._index = {v: i for i, v in enumerate(self.video_ids)}
        try:
            return self._index[video_id]
        except KeyError:
            raise StoreError(f"{self.path} has no video {video_id!r}") from None

    def ok_rows(self) -> np.ndarray:
        """Row numbers of the videos extracted successfully."""
        return np.flatnonzero(self._col("status") == STATUS.index("ok"))

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
        """Clip features of one video: (n_clips, D), or (n_clips, num_crops, D) when crops were kept."""
        g = self._layer(model, layer)
        a, b = self._clip_range(video_id, model)
        return np.asarray(g["clip_features"][a:b])

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
