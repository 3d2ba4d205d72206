"""Resolve, verify, convert and load checkpoints into models; the mean cube for C3D."""
from __future__ import annotations

import os
import shutil
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from c3dfeat.errors import ChecksumError, ConversionError, WeightsError, WeightsNotFoundError
from c3dfeat.specs import Checkpoint, ModelSpec
from c3dfeat.weights import hashing
from c3dfeat.weights.fetch import download_checkpoint, import_command
from c3dfeat.weights.formats import TORCH, detect_format, load_torch_state_dict
from c3dfeat.weights.paths import PathLike, download_dir, find_local_file, search_dirs

StateDict = Dict[str, torch.Tensor]


def _family(fmt: str) -> str:
    return TORCH if fmt in ("state_dict", "pytorchvideo") else fmt


def state_dict_from_file(path: PathLike, model: nn.Module, fmt: Optional[str] = None) -> StateDict:
    """`model`'s state_dict read from `path` (format detected from the contents unless given)."""
    path = Path(path)
    detected = detect_format(path)
    if fmt is not None and _family(fmt) != detected:
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
    wrong = [f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if k in sd and sd[k].shape != v.shape]
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
    allow_unverified: bool = False,
    download: bool = True,
    progress: bool = True,
) -> hashing.Verification:
    """Find `ckpt` locally (verified) or download it; return the verified path and digest."""
    local = find_local_file(ckpt, weights_dir)
    if local is not None:
        v = hashing.verify_file(local, ckpt)
        if v.status == hashing.UNVERIFIED and not allow_unverified:
            raise WeightsError(
                f"{local} ({name}) has no published hash and no recorded digest, so it cannot be verified. "
                f"Record it as trusted with `c3dfeat weights import {local} --model {name} --allow-unverified`, "
                "or pass allow_unverified=True / --allow-unverified"
            )
        return v
    if not download:
        raise WeightsNotFoundError(_not_found(name, ckpt, weights_dir))
    return download_checkpoint(
        name, ckpt, download_dir(weights_dir), allow_unverified=allow_unverified, progress=progress
    )


def _not_found(name: str, ckpt: Checkpoint, weights_dir: Optional[PathLike]) -> str:
    dirs = ", ".join(str(d) for d in search_dirs(weights_dir))
    return (
        f"{ckpt.file_name} ({name}) is not in any weights directory ({dirs}). Download it from "
        f"{' or '.join(ckpt.urls) or '(no URL known)'} and run `{import_command(name, ckpt)}`"
    )


def load_pretrained(
    model: nn.Module,
    spec: ModelSpec,
    path: Optional[PathLike] = None,
    weights_dir: Optional[PathLike] = None,
    allow_unverified: bool = False,
) -> nn.Module:
    """Load `spec.checkpoint` (or the file `path`) into `model` with strict=True.

    Without `path`: the checkpoint file is found in the weights directories or downloaded, its
    SHA-256 verified (see :mod:`c3dfeat.weights.hashing`), converted by its declared format.
    With `path`: the format is detected from the contents; the file is the caller's choice, so it is
    hashed for provenance but not checked against the registry. Sets `model.weights_sha256`.
    """
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise WeightsNotFoundError(f"weights file {path} does not exist")
        digest = hashing.sha256_file(path)
        where = str(path)
        fmt = None
    else:
        ckpt = spec.checkpoint
        if ckpt is None:
            raise WeightsError(f"model {spec.name!r} has no published weights; use pretrained=False or a file path")
        if not ckpt.is_weights:
            raise WeightsError(f"{spec.full_name} is a {ckpt.format} file, not weights")
        v = resolve_checkpoint_file(spec.full_name, ckpt, weights_dir, allow_unverified)
        path, digest, where, fmt = v.path, v.digest, f"{v.path} ({spec.full_name})", ckpt.format
    sd = state_dict_from_file(path, model, fmt)
    load_state_dict_strict(model, sd, where)
    model.weights_sha256 = digest
    return model


def load_mean_cube(
    spec: ModelSpec, weights_dir: Optional[PathLike] = None, allow_unverified: bool = False
) -> Optional[np.ndarray]:
    """The (C, T, H, W) float32 mean cube of `spec` if its mean file is present locally, else None.

    The cube is in the model's channel order (C3D: BGR, like its input) and covers the resized
    frame (C3D: 3 x 16 x 128 x 171). A present file must verify (mismatch → ChecksumError); one with
    no recorded digest needs `allow_unverified` or `c3dfeat weights import`.
    """
    tag = spec.preprocessing.mean_cube
    if not tag:
        return None
    ckpt = spec.get_checkpoint(tag)
    local = find_local_file(ckpt, weights_dir)
    if local is None:
        return None
    name = f"{spec.name}.{tag}"
    v = hashing.verify_file(local, ckpt)
    if v.status == hashing.UNVERIFIED and not allow_unverified:
        raise WeightsError(
            f"{local} ({name}) has no published hash and no recorded digest. Record it with "
            f"`c3dfeat weights import {local} --model {name} --allow-unverified` (or delete it to use the "
            "per-channel mean approximation)"
        )
    from c3dfeat.weights.caffe import read_mean_cube

    cube = read_mean_cube(local)
    pre = spec.preprocessing
    if isinstance(pre.resize, tuple):
        expected = (3, pre.clip_len) + tuple(pre.resize)
        if cube.shape != expected:
            raise ConversionError(f"{local}: mean cube has shape {cube.shape}, {spec.name} needs {expected}")
    return cube


# ----------------------------------------------------------------------------- import / verify / status
def import_file(
    src: PathLike,
    name: str,
    weights_dir: Optional[PathLike] = None,
    allow_unverified: bool = False,
) -> hashing.Verification:
    """Copy `src` into the weights directory as checkpoint `name` ("model.tag"), verified.

    The contents must have the checkpoint's format and hash (prefix); without a published hash
    `allow_unverified` is required and the digest is recorded beside the copy.
    """
    from c3dfeat.models import get_spec

    spec = get_spec(name)
    ckpt = spec.checkpoint
    if ckpt is None:
        raise WeightsError(f"model {name!r} has no checkpoint to import")
    src = Path(src)
    if not src.is_file():
        raise WeightsNotFoundError(f"{src} does not exist")
    full = spec.full_name
    detected = detect_format(src)
    if detected != _family(ckpt.format):
        raise WeightsError(f"{src} looks like a {detected} file, but {full} is a {ckpt.format} file")
    digest = hashing.sha256_file(src)
    status = hashing.check_digest(ckpt, digest, None, str(src))
    if status == hashing.UNVERIFIED and not allow_unverified:
        raise WeightsError(
            f"{full} has no published hash, so {src} cannot be verified; if you trust this copy, run again "
            f"with --allow-unverified to record its SHA-256 {digest}"
        )
    target_dir = download_dir(weights_dir)
    target_dir.mkdir(parents=True, exist_ok=True)
    final = target_dir / ckpt.file_name
    if final.exists() and os.path.samefile(final, src):
        pass  # importing in place: only record the digest
    else:
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
        print(f"c3dfeat: {full}: no published hash; recorded SHA-256 {digest} for {final}", file=sys.stderr)
        status = hashing.VERIFIED_RECORDED
    return hashing.Verification(final, digest, status)


@dataclass(frozen=True)
class CheckpointStatus:
    name: str  # "model.tag"
    checkpoint: Checkpoint
    path: Optional[Path]  # None = not present
    status: str  # "absent", hashing states, or "MISMATCH: ..."
    digest: Optional[str] = None


def all_checkpoints(pattern: str = "*") -> List[Tuple[str, Checkpoint]]:
    """Every known checkpoint (mean files included) as ("model.tag", Checkpoint), sorted."""
    import fnmatch

    from c3dfeat.models import all_specs

    out = []
    for spec in all_specs():
        for c in spec.checkpoints:
            full = f"{spec.name}.{c.tag}"
            if fnmatch.fnmatch(full, pattern) or fnmatch.fnmatch(spec.name, pattern):
                out.append((full, c))
    return out


def checkpoint_status(name: str, ckpt: Checkpoint, weights_dir: Optional[PathLike] = None, hash_files: bool = True) -> CheckpointStatus:
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


def statuses(pattern: str = "*", weights_dir: Optional[PathLike] = None, hash_files: bool = True) -> List[CheckpointStatus]:
    """:func:`checkpoint_status` of every known checkpoint matching `pattern` (for `weights list/verify`)."""
    return [checkpoint_status(name, c, weights_dir, hash_files) for name, c in all_checkpoints(pattern)]


def convert_file(src: PathLike, name: str, dst: PathLike) -> Tuple[str, str]:
    """Convert `src` (any supported format, detected) for model `name` and save it to `dst`.

    Weights become a torch.save state_dict (loadable with `weights_only=True`, checked by loading
    it into the model with strict=True); a Caffe mean file becomes a `.npy` (C, T, H, W) array.
    The class count comes from the tag if given, else from the source's classifier.
    Returns (detected format, SHA-256 of dst).
    """
    from c3dfeat.models import create_model, split_name

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

            arch, tag = split_name(name)
            if fmt == TORCH:
                sd = load_torch_state_dict(src)
                classes = None if tag else _torch_classes(sd)
                model = create_model(name, num_classes=classes)
                sd = _fill_counters(sd, model)
            else:  # parse once: the class count and the tensors come from the same read
                source = convert.read_source(src, fmt)
                classes = None if tag else convert.source_num_classes(source, fmt)
                model = create_model(name, num_classes=classes)
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
