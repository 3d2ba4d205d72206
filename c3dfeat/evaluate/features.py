"""Video descriptors from a feature file: the only place evaluate/ touches the store."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from c3dfeat.errors import C3DFeatError, EvalError, StoreError


@dataclass
class VideoFeatures:
    """One (model, layer) of a feature file: a row per successfully extracted video."""

    path: Path
    model: str
    layer: str
    ids: List[str]
    X: np.ndarray  # (n, D) clip means, as stored (normalisation happens in the protocol)
    labels: List[Optional[str]]  # stored label per row ('' / None when the file has none)
    provenance: Dict[str, Any] = field(default_factory=dict)
    random_init: bool = False

    @property
    def name(self) -> str:
        return f"{self.model}/{self.layer}"


def parse_feature_spec(spec: str) -> Tuple[str, Optional[str], Optional[str]]:
    """``a.h5``, ``a.h5:model`` or ``a.h5:model/layer`` → (path, model, layer)."""
    if ":" not in spec or Path(spec).exists():
        return spec, None, None
    path, _, rest = spec.rpartition(":")
    model, _, layer = rest.partition("/")
    return path, (model or None), (layer or None)


def load_features(path: str | Path, model: Optional[str] = None,
                  layer: Optional[str] = None) -> VideoFeatures:
    """Read the video-level matrix of ``model``/``layer`` (defaults: the only model, first layer)."""
    from c3dfeat.store import FeatureFile

    p = Path(path)
    if not p.exists():
        raise EvalError(f"feature file {p} not found: run `c3dfeat extract videos/ -o {p}` first, "
                        "or give the feature file as the first argument")
    try:
        ff = FeatureFile(p)
    except StoreError:
        raise
    except OSError as e:
        raise EvalError(f"cannot open feature file {p}: {e}") from e
    with ff:
        models = ff.models
        if model is None:
            if len(models) != 1:
                raise EvalError(f"{p} holds several models ({', '.join(models)}); choose one with "
                                "--model")
            model = models[0]
        layers = ff.layers(model)
        if layer is None:
            if not layers:
                raise EvalError(f"{p}: model {model!r} stores no layers")
            layer = layers[0]  # the first requested at extraction (the model's default layer)
        else:
            layer = resolve_layer(layer, layers, ff.model_info(model).attrs, model)
        ids, X = ff.video_matrix(model, layer)
        if not ids:
            raise EvalError(f"{p} has no successfully extracted video for {model}/{layer}")
        table = ff.videos()
        row = {vid: i for i, vid in enumerate(table["id"])}
        labels: List[Optional[str]] = (
            [table["label"][row[v]] or None for v in ids] if "label" in table else [None] * len(ids))
        return VideoFeatures(p, model, layer, list(ids), np.asarray(X, dtype=np.float32), labels,
                             ff.provenance, ff.random_init)


def resolve_layer(layer: str, stored: Sequence[str], model_attrs: Mapping[str, Any], model: str) -> str:
    """The stored layer that ``layer`` names: itself, or the stored layer it is an alias of.

    Aliases are the original frameworks' names (``fc6-1``, ``final_avg``, ``avgpool``); they
    resolve through the spec of the architecture the file records (model attribute ``arch``,
    else the model key without its ``.tag``). An unknown name is returned unchanged, so the
    reader's own error lists the stored layers.
    """
    if layer in stored:
        return layer
    arch = str(model_attrs.get("arch") or model.split(".")[0])
    try:
        from c3dfeat.models import get_spec  # the registry (and torch) only for an alias

        canonical = get_spec(arch).layer(layer).name
    except (C3DFeatError, KeyError, ValueError):  # not a registered model, or not one of its layers
        return layer
    return canonical if canonical in stored else layer


def resolve_stored_layer(path: str | Path, model: Optional[str], layer: str) -> str:
    """:func:`resolve_layer` for ``model`` (default: the only one) of the feature file ``path``."""
    from c3dfeat.store import FeatureFile

    with FeatureFile(path) as ff:
        if model is None:
            if len(ff.models) != 1:
                return layer  # the reader's error asks for --model
            model = ff.models[0]
        return resolve_layer(layer, ff.layers(model), ff.model_info(model).attrs, model)


def stored_or_folder_labels(feats: VideoFeatures) -> List[Optional[str]]:
    """Labels the file records for every video, else each id's parent folder."""
    from c3dfeat.evaluate.splits import folder_labels

    if feats.labels and all(lab for lab in feats.labels):
        return list(feats.labels)
    return folder_labels(feats.ids)


def align(features: Sequence[VideoFeatures]) -> Tuple[List[str], List[np.ndarray]]:
    """Rows common to all modalities, in the first file's order (for fusion)."""
    common = set(features[0].ids)
    for f in features[1:]:
        common &= set(f.ids)
    ids = [v for v in features[0].ids if v in common]
    if not ids:
        raise EvalError("the feature files share no video id; fusion needs the same videos in "
                        "every file: " + ", ".join(str(f.path) for f in features))
    mats = []
    for f in features:
        row = {v: i for i, v in enumerate(f.ids)}
        mats.append(f.X[[row[v] for v in ids]])
    return ids, mats
