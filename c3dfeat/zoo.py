"""Model names to models with their pretrained weights: the one layer above the registry and the files.

Layers point one way (tests/test_import_graph.py checks it)::

    c3dfeat.specs  (records: ModelSpec, Checkpoint, Preprocessing, LayerSpec; no torch)
        ▲                         ▲
    c3dfeat.models            c3dfeat.weights
    (architectures, registry,  (checkpoint files: find, download, verify, convert, load;
     random-init builder)       never imports the registry)
        ▲                         ▲
        └────── c3dfeat.zoo ──────┘   names → spec → checkpoint → loaded model
                     ▲
        c3dfeat.pipeline, c3dfeat.cli, c3dfeat (top-level API)

``require_hashes=None`` and ``weights_mirror=None`` read ``$C3DFEAT_REQUIRE_HASHES`` and
``$C3DFEAT_WEIGHTS_MIRROR`` (:mod:`c3dfeat.weights.policy`).
"""
from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from c3dfeat import models, weights
from c3dfeat.errors import ConfigError, WeightsError
from c3dfeat.models._common import FeatureModel
from c3dfeat.specs import Checkpoint, ModelSpec
from c3dfeat.weights import hashing, policy

__all__ = [
    "create_model",
    "load_mean_cube",
    "download",
    "import_file",
    "all_checkpoints",
    "statuses",
    "convert_file",
    "model_info",
]

PathLike = Union[str, Path]


def create_model(
    name: str,
    pretrained: Union[bool, str, Path] = False,
    *,
    weights_dir: Optional[PathLike] = None,
    require_hashes: Optional[bool] = None,
    weights_mirror: Optional[str] = None,
    num_classes: Optional[int] = None,
    progress: bool = True,
) -> FeatureModel:
    """Build `name` in eval mode; ``model.spec`` is its resolved ModelSpec and
    ``model.weights_sha256`` the SHA-256 of the loaded file (None: random init).

    Args:
        name: "arch" or "arch.tag" (the tag picks the checkpoint; default: the first one).
        pretrained: False for random init; True for the checkpoint, found in the weights
            directories or downloaded (with its mean file, for models that have one); or a path
            to a local file in any supported format (detected; hashed, not checked).
        weights_dir: a weights directory searched first and downloaded into.
        require_hashes: refuse checkpoints without a published hash (None: the environment).
        weights_mirror: base URL tried before the published ones (None: the environment).
        num_classes: override the classifier size (only without pretrained weights).
        progress: show download progress on stderr.
    """
    spec = models.get_spec(name)
    if pretrained is not False and num_classes is not None and num_classes != spec.num_classes:
        raise ConfigError(f"num_classes={num_classes} conflicts with checkpoint {spec.full_name} ({spec.num_classes})")
    model = models.create_model(name, num_classes=num_classes)
    if pretrained is False:
        return model
    if pretrained is True:
        ckpt = spec.checkpoint
        if ckpt is None:
            raise WeightsError(f"model {spec.name!r} has no published weights; use pretrained=False or a file path")
        strict, mirror = policy.require_hashes_from(require_hashes), policy.mirror_from(weights_mirror)
        digest = weights.load_checkpoint(model, spec.full_name, ckpt, weights_dir, require_hashes=strict,
                                         mirror=mirror, progress=progress)
        mean = _mean_checkpoint(spec)
        if mean is not None:  # the mean file comes with the model
            weights.resolve_checkpoint_file(*mean, weights_dir, require_hashes=strict, mirror=mirror,
                                            progress=progress)
    else:
        digest = weights.load_file(model, pretrained)
    model.weights_sha256 = digest
    return model


def _mean_checkpoint(spec: ModelSpec) -> Optional[Tuple[str, Checkpoint]]:
    tag = spec.preprocessing.mean_cube
    return (f"{spec.name}.{tag}", spec.get_checkpoint(tag)) if tag else None


def load_mean_cube(
    spec: Union[str, ModelSpec],
    weights_dir: Optional[PathLike] = None,
    require_hashes: Optional[bool] = None,
    weights_mirror: Optional[str] = None,
    *,
    download: bool = True,
    progress: bool = True,
) -> Optional[np.ndarray]:
    """The (C, T, H, W) float32 mean cube of a model (C3D: BGR, 3 x 16 x 128 x 171), or None if the
    model has none. Found or downloaded and checked like weights; with ``download=False`` an absent
    file gives None (the transforms then use the per-channel approximation)."""
    spec = models.get_spec(spec) if isinstance(spec, str) else spec
    mean = _mean_checkpoint(spec)
    if mean is None:
        return None
    pre = spec.preprocessing
    shape = (3, pre.clip_len) + tuple(pre.resize) if isinstance(pre.resize, tuple) else None
    return weights.load_mean_checkpoint(
        *mean, shape, weights_dir, require_hashes=policy.require_hashes_from(require_hashes),
        mirror=policy.mirror_from(weights_mirror), download=download, progress=progress,
    )


def _checkpoint_of(name: str) -> Tuple[ModelSpec, Checkpoint]:
    spec = models.get_spec(name)
    if spec.checkpoint is None:
        raise WeightsError(f"model {name!r} has no published checkpoint")
    return spec, spec.checkpoint


def download(
    name: str,
    weights_dir: Optional[PathLike] = None,
    require_hashes: Optional[bool] = None,
    weights_mirror: Optional[str] = None,
    progress: bool = True,
) -> List[Tuple[str, hashing.Verification]]:
    """Make checkpoint `name` ("model.tag", or "model" for its default) present and checked, with its
    mean file if the model has one; returns ("model.tag", verification) per file."""
    spec, ckpt = _checkpoint_of(name)
    strict, mirror = policy.require_hashes_from(require_hashes), policy.mirror_from(weights_mirror)
    wanted = [(spec.full_name, ckpt)]
    mean = _mean_checkpoint(spec) if ckpt.is_weights else None
    if mean is not None:
        wanted.append(mean)
    return [
        (full, weights.resolve_checkpoint_file(full, c, weights_dir, require_hashes=strict, mirror=mirror,
                                               progress=progress))
        for full, c in wanted
    ]


def import_file(
    src: PathLike, name: str, weights_dir: Optional[PathLike] = None, require_hashes: Optional[bool] = None
) -> hashing.Verification:
    """Copy `src` into the weights directory as checkpoint `name` ("model.tag"), checked."""
    spec, ckpt = _checkpoint_of(name)
    return weights.import_file(src, spec.full_name, ckpt, weights_dir,
                               require_hashes=policy.require_hashes_from(require_hashes))


def all_checkpoints(pattern: str = "*") -> List[Tuple[str, Checkpoint]]:
    """Every known checkpoint (mean files included) as ("model.tag", Checkpoint), sorted by model."""
    out = []
    for spec in models.all_specs():
        for c in spec.checkpoints:
            full = f"{spec.name}.{c.tag}"
            if fnmatch.fnmatch(full, pattern) or fnmatch.fnmatch(spec.name, pattern):
                out.append((full, c))
    return out


def statuses(
    pattern: str = "*", weights_dir: Optional[PathLike] = None, hash_files: bool = True
) -> List[weights.CheckpointStatus]:
    """Presence and verification of every known checkpoint matching `pattern` (`weights list/verify`)."""
    return [weights.checkpoint_status(name, c, weights_dir, hash_files) for name, c in all_checkpoints(pattern)]


def convert_file(src: PathLike, name: str, dst: PathLike) -> Tuple[str, str]:
    """Convert `src` for model `name` into `dst` (see :func:`c3dfeat.weights.convert_file`); the
    class count comes from the tag if given, else from the source's classifier."""
    _, tag = models.split_name(name)

    def build(classes_in_file: Optional[int]) -> FeatureModel:
        return models.create_model(name, num_classes=None if tag else classes_in_file)

    return weights.convert_file(src, dst, build)


def model_info(spec: Union[str, ModelSpec], weights_dir: Optional[PathLike] = None) -> Dict[str, Any]:
    """:func:`c3dfeat.models.model_info` plus, per checkpoint, whether its file is present locally."""
    spec = models.get_spec(spec) if isinstance(spec, str) else spec
    info = models.model_info(spec)
    files = {c.tag: c for c in spec.checkpoints}
    for entry in info["checkpoints"]:
        entry["present"] = weights.find_local_file(files[entry["tag"]], weights_dir) is not None
    return info
