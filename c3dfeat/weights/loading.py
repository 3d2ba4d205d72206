"""Checkpoint files into modules: resolve (find or download), verify, convert, load strictly.

Everything here works on :class:`~c3dfeat.specs.Checkpoint` records, files and modules; the names
("model.tag") only appear in messages. Resolving names is :mod:`c3dfeat.zoo`'s job.
"""
from __future__ import annotations

import os
import shutil
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn

from c3dfeat.errors import ChecksumError, ConversionError, WeightsError, WeightsNotFoundError
from c3dfeat.specs import Checkpoint
from c3dfeat.weights import hashing
from c3dfeat.weights.fetch import download_checkpoint, download_lock, offline_message, refuse_unhashed, tofu_line
from c3dfeat.weights.formats import TORCH, detect_format, format_family, load_torch_state_dict
from c3dfeat.weights.paths import PathLike, download_dir, find_local_file

StateDict = Dict[str, torch.Tensor]


def state_dict_from_file(path: PathLike, model: nn.Module, fmt: Optional[str] = None) -> StateDict:
    """`model`'s state_dict read from `path` (format detected from the contents unless given)."""
    path = Path(path)
    detected = detect_format(path)
    if fmt is not None and format_family(fmt) != detected:
        raise WeightsError(f"{path} looks like a {detected} file, but its checkpoint is declared as {fmt}")
    if detected == "caffe_mean":
        raise WeightsError(f"{path} is a Caffe mean file, not weights; it is used by the preprocessing")
    if detected == TORCH:
        return _fill_counters(load_torch_state_dict(path), model)
    from c3dfeat.weights.convert import convert_path

    return convert_path(path, detected, model)


def _fill_counters(sd: StateDict, model: nn.Module) -> StateDict:
    """Add BatchNorm `num_batches_tracked` counters a checkpoint lacks (they are not weights)."""
    for k, v in model.state_dict().items():
        if k.endswith("num_batches_tracked") and k not in sd:
            sd[k] = torch.zeros_like(v)
    return sd


def load_state_dict_strict(model: nn.Module, sd: StateDict, where: str) -> None:
    """`model.load_state_dict(sd, strict=True)` with a message that lists what does not fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong = [f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}"
             for k, v in own.items() if k in sd and sd[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} ({', '.join(missing[:5])})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} ({', '.join(unexpected[:5])})")
        if wrong:
            parts.append(f"wrong shape ({'; '.join(wrong[:5])})")
        raise ConversionError(f"{where} does not fit {type(model).__name__}: " + ", ".join(parts))
    model.load_state_dict(sd, strict=True)


def resolve_checkpoint_file(
    name: str,
    ckpt: Checkpoint,
    weights_dir: Optional[PathLike] = None,
    *,
    require_hashes: bool = False,
    mirror: Optional[str] = None,
    download: bool = True,
    progress: bool = True,
) -> hashing.Verification:
    """Find `ckpt` locally or download it; return the checked path and digest.

    A file with a published hash must match it; one without is refused with `require_hashes`,
    else checked against the digest recorded beside it, or trusted on first use (the digest is
    recorded and one line printed). `name` ("model.tag") is only used in messages.
    """
    if require_hashes and not hashing.has_published_hash(ckpt):
        raise refuse_unhashed(name, ckpt)
    local = find_local_file(ckpt, weights_dir)
    if local is None:
        if not download:
            raise WeightsNotFoundError(offline_message(name, ckpt, ["downloads are off"]))
        target = download_dir(weights_dir)
        target.mkdir(parents=True, exist_ok=True)
        with download_lock(target, ckpt.file_name, announce=progress):
            local = find_local_file(ckpt, weights_dir)  # fetched by the process we waited for
            if local is None:
                return download_checkpoint(name, ckpt, target, require_hashes=require_hashes, mirror=mirror,
                                           progress=progress)
    v = hashing.verify_file(local, ckpt)
    if v.status != hashing.UNVERIFIED:
        return v
    try:  # a file put there by hand, never recorded: trust on first use, like a download
        hashing.write_record(local, v.digest)
        recorded = True
    except OSError:
        recorded = False
    print(tofu_line("use", name, str(local), v.digest, local, recorded), file=sys.stderr, flush=True)
    return hashing.Verification(local, v.digest, hashing.VERIFIED_RECORDED if recorded else hashing.UNVERIFIED)


def load_checkpoint(
    model: nn.Module,
    name: str,
    ckpt: Checkpoint,
    weights_dir: Optional[PathLike] = None,
    *,
    require_hashes: bool = False,
    mirror: Optional[str] = None,
    progress: bool = True,
) -> str:
    """Load checkpoint `ckpt` into `model` (strict) and return the file's SHA-256.

    The file is found or downloaded and checked (:func:`resolve_checkpoint_file`), then converted
    by its declared format.
    """
    if not ckpt.is_weights:
        raise WeightsError(f"{name} is a {ckpt.format} file, not weights")
    v = resolve_checkpoint_file(name, ckpt, weights_dir, require_hashes=require_hashes, mirror=mirror,
                                progress=progress)
    load_state_dict_strict(model, state_dict_from_file(v.path, model, ckpt.format), f"{v.path} ({name})")
    return v.digest


def load_file(model: nn.Module, path: PathLike) -> str:
    """Load the weights file `path` (format detected) into `model` (strict); return its SHA-256.

    The file is the caller's choice: it is hashed for the provenance, not checked against any
    published hash.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"weights file {path} does not exist")
    digest = hashing.sha256_file(path)
    load_state_dict_strict(model, state_dict_from_file(path, model), str(path))
    return digest


def load_mean_checkpoint(
    name: str,
    ckpt: Checkpoint,
    shape: Optional[Tuple[int, ...]] = None,
    weights_dir: Optional[PathLike] = None,
    *,
    require_hashes: bool = False,
    mirror: Optional[str] = None,
    download: bool = True,
    progress: bool = True,
) -> Optional[np.ndarray]:
    """The (C, T, H, W) float32 cube of the mean file `ckpt`, found or downloaded and checked like
    weights; None if it is absent and `download` is off. `shape`, if given, must match."""
    if download or find_local_file(ckpt, weights_dir) is not None:
        v = resolve_checkpoint_file(name, ckpt, weights_dir, require_hashes=require_hashes, mirror=mirror,
                                    download=download, progress=progress)
    else:
        return None
    from c3dfeat.weights.caffe import read_mean_cube

    cube = read_mean_cube(v.path)
    if shape is not None and cube.shape != tuple(shape):
        raise ConversionError(f"{v.path} ({name}): mean cube has shape {cube.shape}, the model needs {tuple(shape)}")
    return cube


# ----------------------------------------------------------------------------- import / status / convert
def import_file(
    src: PathLike,
    name: str,
    ckpt: Checkpoint,
    weights_dir: Optional[PathLike] = None,
    *,
    require_hashes: bool = False,
) -> hashing.Verification:
    """Copy `src` into the weights directory as checkpoint `ckpt` (called `name` in messages).

    The contents must have the checkpoint's format and published hash (prefix); without a
    published hash the copy is trusted (refused with `require_hashes`) and its digest recorded.
    """
    src = Path(src)
    if not src.is_file():
        raise WeightsNotFoundError(f"{src} does not exist")
    if require_hashes and not hashing.has_published_hash(ckpt):
        raise refuse_unhashed(name, ckpt)
    detected = detect_format(src)
    if detected != format_family(ckpt.format):
        raise WeightsError(f"{src} looks like a {detected} file, but {name} is a {ckpt.format} file")
    digest = hashing.sha256_file(src)
    status = hashing.check_digest(ckpt, digest, None, str(src))
    target_dir = download_dir(weights_dir)
    target_dir.mkdir(parents=True, exist_ok=True)
    final = target_dir / ckpt.file_name
    if not (final.exists() and os.path.samefile(final, src)):  # in place: only record the digest
        tmp = target_dir / f".{ckpt.file_name}.{uuid.uuid4().hex}.import"
        try:
            shutil.copyfile(src, tmp)
            if hashing.sha256_file(tmp) != digest:
                raise ChecksumError(f"{src} changed while it was copied; run the import again")
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
    hashing.write_record(final, digest)
    if status == hashing.UNVERIFIED:
        print(f"c3dfeat: {name}: no published hash; recorded SHA-256 {digest} for {final}; "
              "later loads are checked against it", file=sys.stderr)
        status = hashing.VERIFIED_RECORDED
    return hashing.Verification(final, digest, status)


@dataclass(frozen=True)
class CheckpointStatus:
    name: str  # "model.tag"
    checkpoint: Checkpoint
    path: Optional[Path]  # None = not present
    status: str  # "absent", "present" (not hashed), hashing states, or "MISMATCH: ..."
    digest: Optional[str] = None


def checkpoint_status(
    name: str, ckpt: Checkpoint, weights_dir: Optional[PathLike] = None, hash_files: bool = True
) -> CheckpointStatus:
    """Whether `ckpt` is present and what its verification says (hashes the file if `hash_files`)."""
    local = find_local_file(ckpt, weights_dir)
    if local is None:
        return CheckpointStatus(name, ckpt, None, "absent")
    if not hash_files:
        return CheckpointStatus(name, ckpt, local, "present")
    try:
        v = hashing.verify_file(local, ckpt)
    except ChecksumError as e:
        return CheckpointStatus(name, ckpt, local, f"MISMATCH: {e}")
    return CheckpointStatus(name, ckpt, local, v.status, v.digest)


def convert_file(src: PathLike, dst: PathLike, build_model: Callable[[Optional[int]], nn.Module]) -> Tuple[str, str]:
    """Convert `src` (any supported format, detected) and save it to `dst`.

    Weights become a torch.save state_dict (loadable with `weights_only=True`), checked by loading
    it with strict=True into ``build_model(classes)``, where `classes` is the classifier size read
    from the source (None if unknown); a Caffe mean file becomes a `.npy` (C, T, H, W) array.
    Returns (detected format, SHA-256 of dst).
    """
    src, dst = Path(src), Path(dst)
    fmt = detect_format(src)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex}.part")
    try:
        if fmt == "caffe_mean":
            from c3dfeat.weights.caffe import read_mean_cube

            with open(tmp, "wb") as f:
                np.save(f, read_mean_cube(src))
        else:
            from c3dfeat.weights import convert

            if fmt == TORCH:
                sd = load_torch_state_dict(src)
                model = build_model(_torch_classes(sd))
                sd = _fill_counters(sd, model)
            else:  # parse once: the class count and the tensors come from the same read
                source = convert.read_source(src, fmt)
                model = build_model(convert.source_num_classes(source, fmt))
                sd = convert.convert_source(source, fmt, model, str(src))
                del source
            load_state_dict_strict(model, sd, str(src))
            torch.save(model.state_dict(), tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return fmt, hashing.sha256_file(dst)


def _torch_classes(sd: StateDict) -> Optional[int]:
    for key in ("fc.weight", "fc8.weight", "blocks.5.proj.weight"):  # VideoResNets, C3D, pytorchvideo
        if key in sd:
            return int(sd[key].shape[0])
    return None
