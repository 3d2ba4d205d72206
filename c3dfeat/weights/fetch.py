"""Download a checkpoint into a weights directory: verified before it gets its real name.

The HTTP transfer is torch.hub's `download_url_to_file` (it streams to `<dst>.<uuid>.partial` and
removes that on any error). Around it:
* rich progress on stderr (torch.hub renders through a module-level `tqdm`; a small adapter is
  swapped in for the call, since torch.hub has no progress hook);
* a completeness check: urllib returns a short body without error when the server closes the
  connection early (http.client does not raise IncompleteRead on `read(amt)`), so the byte count is
  compared with Content-Length;
* retries with backoff on transient errors (connection refused/reset, timeouts, 5xx, 429,
  truncated bodies); 4xx and a wrong hash go to the next mirror;
* the SHA-256 check, then `os.replace` to the final name, then the digest record `<file>.sha256`.
Nothing is left under the final name unless it passed the check.
"""
from __future__ import annotations

import http.client
import os
import socket
import sys
import time
import urllib.error
import uuid
from pathlib import Path
from typing import List, Optional, Sequence

from c3dfeat.errors import ChecksumError, WeightsError, WeightsNotFoundError
from c3dfeat.specs import Checkpoint
from c3dfeat.weights import hashing

# Seconds to wait before retry 1, 2, ... (per mirror); tests set this to zeros.
RETRY_BACKOFF_S: Sequence[float] = (1.0, 4.0)
SOCKET_TIMEOUT_S = 60.0


class _Truncated(Exception):
    pass


class _RichProgress:
    """The subset of the tqdm interface torch.hub uses; renders with rich on stderr if `show`."""

    def __init__(self, label: str, show: bool):
        self.label = label
        self.show = show
        self.n = 0
        self.total: Optional[int] = None
        self._progress = None
        self._task = None

    def __call__(self, total=None, disable=False, **_):  # torch.hub calls tqdm(total=..., disable=...)
        self.total = total
        self.n = 0
        if self.show and not disable:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(self.label, total=total)
        return self

    def update(self, n: int) -> None:
        self.n += n
        if self._progress is not None:
            self._progress.update(self._task, advance=n)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _fetch(url: str, dst: Path, label: str, progress: bool) -> None:
    """One attempt: torch.hub download of `url` to `dst` (complete or absent afterwards)."""
    import torch.hub

    bar = _RichProgress(label, progress)
    saved_tqdm, saved_timeout = torch.hub.tqdm, socket.getdefaulttimeout()
    torch.hub.tqdm = bar  # see module docstring
    socket.setdefaulttimeout(SOCKET_TIMEOUT_S)  # torch.hub's urlopen has no timeout of its own
    try:
        torch.hub.download_url_to_file(url, str(dst), hash_prefix=None, progress=True)
    finally:
        torch.hub.tqdm = saved_tqdm
        socket.setdefaulttimeout(saved_timeout)
        bar.close()
    if bar.total is not None and bar.n != bar.total:
        dst.unlink(missing_ok=True)
        raise _Truncated(f"connection closed after {bar.n} of {bar.total} bytes")


def _transient(e: BaseException) -> bool:
    if isinstance(e, urllib.error.HTTPError):
        return e.code >= 500 or e.code in (408, 429)
    if isinstance(e, urllib.error.URLError) and isinstance(e.reason, socket.gaierror):
        return False  # name resolution failed: offline; retrying only delays the message
    return isinstance(
        e, (_Truncated, urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, socket.timeout)
    )


def import_command(name: str, ckpt: Checkpoint) -> str:
    flag = "" if hashing.has_published_hash(ckpt) else " --allow-unverified"
    return f"c3dfeat weights import FILE --model {name}{flag}"


def download_checkpoint(
    name: str,
    ckpt: Checkpoint,
    target_dir: Path,
    *,
    allow_unverified: bool = False,
    progress: bool = True,
) -> hashing.Verification:
    """Download `ckpt` (mirrors in order) into `target_dir`, verify it, and return its verification.

    `name` ("model.tag") is only used in messages. A checkpoint without a published hash needs
    `allow_unverified`; its digest is then printed on stderr and recorded beside the file.
    """
    if not ckpt.urls:
        raise WeightsNotFoundError(
            f"{name} has no download URL; bring the file in with `{import_command(name, ckpt)}`"
        )
    if not hashing.has_published_hash(ckpt) and not allow_unverified:
        raise WeightsError(
            f"{name} ({ckpt.file_name}) has no published SHA-256, so a download cannot be verified. "
            "Pass --allow-unverified (allow_unverified=True) to download it and record its digest, "
            f"or import a copy you trust: `{import_command(name, ckpt)}`"
        )
    target_dir.mkdir(parents=True, exist_ok=True)
    final = target_dir / ckpt.file_name
    errors: List[str] = []
    mismatches = 0
    for url in ckpt.urls:
        attempts = 0
        for attempt in range(len(RETRY_BACKOFF_S) + 1):
            attempts += 1
            tmp = target_dir / f".{ckpt.file_name}.{uuid.uuid4().hex}.download"
            try:
                _fetch(url, tmp, ckpt.file_name, progress)
                digest = hashing.sha256_file(tmp)
                status = hashing.check_digest(ckpt, digest, None, url)
                os.replace(tmp, final)
            except ChecksumError as e:
                mismatches += 1
                errors.append(str(e))
                break  # a mirror serving other bytes will not change on retry
            except Exception as e:  # noqa: BLE001 - classified below
                if _transient(e) and attempt < len(RETRY_BACKOFF_S):
                    time.sleep(RETRY_BACKOFF_S[attempt])
                    continue
                tries = f" ({attempts} attempts)" if attempts > 1 else ""
                errors.append(f"{url}: {type(e).__name__}: {e}{tries}")
                break
            finally:
                tmp.unlink(missing_ok=True)
            try:
                hashing.write_record(final, digest)
            except OSError as e:  # read-only shared dir: the file is verified anyway
                print(f"c3dfeat: could not record the digest beside {final}: {e}", file=sys.stderr)
            if status == hashing.UNVERIFIED:
                print(
                    f"c3dfeat: {name}: no published hash; downloaded {final} has SHA-256 {digest} "
                    f"(recorded in {hashing.record_path(final).name})",
                    file=sys.stderr,
                )
                status = hashing.VERIFIED_RECORDED
            return hashing.Verification(final, digest, status)
    if mismatches == len(ckpt.urls):
        raise ChecksumError(f"{name}: nothing was kept; " + "; ".join(errors))
    raise WeightsNotFoundError(
        f"cannot download {name} ({ckpt.file_name}): " + "; ".join(errors) + ". "
        f"If this machine is offline, fetch {' or '.join(ckpt.urls)} elsewhere and run "
        f"`{import_command(name, ckpt)}`, or put the file into {target_dir}"
    )

