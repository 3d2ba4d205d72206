"""SHA-256 of checkpoint files, the recorded digest beside them, and the verification rule.

Hash knowledge per checkpoint, strongest first (models.md §0.2, §9: no full digest is published;
torchvision and ig65m publish an 8-hex prefix in the file name):
* `Checkpoint.sha256`: the full digest must match;
* `Checkpoint.sha256_prefix`: the digest must start with it;
* neither: the file is trusted on first use (refused with `require_hashes`): its digest is recorded
  in `<file>.sha256` (sha256sum format) so that later loads detect a changed file.
A recorded digest is also checked when a published prefix exists (it pins the full digest).
"""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from c3dfeat.errors import ChecksumError, WeightsError
from c3dfeat.specs import Checkpoint

_CHUNK = 1 << 20
_HEX64 = re.compile(r"^[0-9a-f]{64}$")

# Verification states, as shown by `c3dfeat weights list/verify`.
VERIFIED_FULL = "sha256"  # matches the published full digest
VERIFIED_PREFIX = "prefix"  # matches the published prefix
VERIFIED_RECORDED = "recorded"  # no published hash; matches the digest recorded at download/import
UNVERIFIED = "unverified"  # no published hash and nothing recorded


def sha256_file(path: os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            chunk = f.read(_CHUNK)
            if not chunk:
                break
            h.update(chunk)
    return h.hexdigest()


def record_path(path: os.PathLike) -> Path:
    return Path(str(path) + ".sha256")


def read_record(path: os.PathLike) -> Optional[str]:
    """The digest recorded beside `path`, or None (a malformed record is an error, not ignored)."""
    rec = record_path(path)
    if not rec.is_file():
        return None
    text = rec.read_text(encoding="utf-8").strip()
    digest = text.split()[0].lower() if text else ""
    if not _HEX64.match(digest):
        raise WeightsError(f"malformed digest record {rec}; delete it and re-import {path}")
    return digest


def write_record(path: os.PathLike, digest: str) -> Path:
    """Write `<path>.sha256` atomically in `sha256sum -c` format."""
    rec = record_path(path)
    fd, tmp = tempfile.mkstemp(prefix=".", suffix=".sha256.part", dir=str(rec.parent))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(f"{digest}  {Path(path).name}\n")
        os.replace(tmp, rec)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return rec


def has_published_hash(ckpt: Checkpoint) -> bool:
    return bool(ckpt.sha256 or ckpt.sha256_prefix)


def hash_knowledge(ckpt: Checkpoint) -> str:
    """Short description of what is published: "sha256", "prefix 91a641e6" or "none"."""
    if ckpt.sha256:
        return "sha256"
    if ckpt.sha256_prefix:
        return f"prefix {ckpt.sha256_prefix}"
    return "none"


@dataclass(frozen=True)
class Verification:
    path: Path
    digest: str
    status: str  # one of VERIFIED_FULL, VERIFIED_PREFIX, VERIFIED_RECORDED, UNVERIFIED


def check_digest(ckpt: Checkpoint, digest: str, recorded: Optional[str], where: str) -> str:
    """The verification status of `digest` for `ckpt`; raise ChecksumError on any mismatch."""
    if ckpt.sha256:
        if digest != ckpt.sha256.lower():
            raise ChecksumError(
                f"{where}: SHA-256 {digest} does not match the published {ckpt.sha256}; "
                "delete the file and download it again (`c3dfeat weights download`)"
            )
        return VERIFIED_FULL
    if recorded is not None and digest != recorded:
        raise ChecksumError(
            f"{where}: SHA-256 {digest} differs from the digest {recorded} recorded when the file was "
            "downloaded or imported; the file changed: delete it and its .sha256 and download or import it again"
        )
    if ckpt.sha256_prefix:
        if not digest.startswith(ckpt.sha256_prefix.lower()):
            raise ChecksumError(
                f"{where}: SHA-256 {digest} does not start with the published prefix {ckpt.sha256_prefix}; "
                "delete the file and download it again (`c3dfeat weights download`)"
            )
        return VERIFIED_PREFIX
    return VERIFIED_RECORDED if recorded is not None else UNVERIFIED


def verify_file(path: os.PathLike, ckpt: Checkpoint) -> Verification:
    """Hash `path` and check it against `ckpt` and the record beside it (mismatch → ChecksumError).

    Returns the status; UNVERIFIED (nothing published, nothing recorded) is returned, not raised:
    the caller trusts it on first use or refuses it (`require_hashes`).
    """
    path = Path(path)
    digest = sha256_file(path)
    status = check_digest(ckpt, digest, read_record(path), str(path))
    return Verification(path, digest, status)
