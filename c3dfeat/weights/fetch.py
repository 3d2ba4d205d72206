"""Download a checkpoint into a weights directory: checked before it gets its real name.

* URLs in order: the mirror (``<mirror>/<file name>``, see :mod:`.policy`) first, then the
  checkpoint's published URLs.
* Each transfer streams to ``.<file>.<random>.download`` beside the target, with a progress bar on
  stderr (rich on a terminal; on a log file a plain line at the start and every
  :data:`PLAIN_PROGRESS_EVERY_S` seconds). A body shorter than its Content-Length is an error
  (urllib returns a short body without raising when the server closes the connection early).
* Transient errors (connection refused/reset, timeouts, 5xx, 429, truncated bodies) are retried
  with backoff; 4xx, a wrong hash and bytes of the wrong format go to the next URL.
* The bytes must have the checkpoint's format (an HTML error page is not a caffemodel) and its
  published SHA-256 / prefix, or the digest recorded beside an earlier copy. Then ``os.replace``
  to the final name and the digest record ``<file>.sha256``. A checkpoint with no published hash
  is trusted on first use: its digest is recorded and printed in one line, and every later load is
  checked against it. Nothing stays under any name unless it passed.
* One download per file at a time (:func:`download_lock`): processes starting together on one
  machine or on a shared weights directory (shards, Ray workers) wait for the first one and use
  its file instead of each fetching the same hundreds of MB.
"""
from __future__ import annotations

import contextlib
import errno
import http.client
import os
import socket
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Iterator, List, Optional, Sequence

from c3dfeat.errors import ChecksumError, WeightsError, WeightsNotFoundError
from c3dfeat.specs import Checkpoint
from c3dfeat.version import __version__
from c3dfeat.weights import hashing, policy

# Seconds to wait before retry 1, 2, ... (per URL); tests set this to zeros.
RETRY_BACKOFF_S: Sequence[float] = (1.0, 4.0)
SOCKET_TIMEOUT_S = 60.0
PLAIN_PROGRESS_EVERY_S = 10.0
_CHUNK = 1 << 20
_MiB = float(1 << 20)


class _Truncated(Exception):
    pass


class _Progress:
    """Bytes received so far, on stderr: a rich bar on a terminal, plain lines otherwise."""

    def __init__(self, label: str, url: str, total: Optional[int], show: bool) -> None:
        self.label, self.total, self.n = label, total, 0
        self._rich: Any = None
        self._task: Any = None
        self._plain = show and not sys.stderr.isatty()
        self._start = self._last = time.monotonic()
        if not show:
            return
        if self._plain:
            size = f" ({total / _MiB:.1f} MiB)" if total else ""
            print(f"c3dfeat: downloading {label} from {url}{size}", file=sys.stderr, flush=True)
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._rich = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self._rich.start()
        self._task = self._rich.add_task(label, total=total)

    def update(self, n: int) -> None:
        self.n += n
        if self._rich is not None:
            self._rich.update(self._task, advance=n)
        elif self._plain:
            now = time.monotonic()
            if now - self._last >= PLAIN_PROGRESS_EVERY_S:
                self._last = now
                rate = self.n / _MiB / max(now - self._start, 1e-9)
                of = f" of {self.total / _MiB:.1f}" if self.total else ""
                pct = f" {100 * self.n // self.total}%," if self.total else ""
                print(f"c3dfeat: {self.label}:{pct} {self.n / _MiB:.1f}{of} MiB, {rate:.1f} MiB/s",
                      file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()
            self._rich = None


@contextlib.contextmanager
def download_lock(target_dir: Path, file_name: str, announce: bool = True) -> Iterator[None]:
    """Hold the lock for downloading `file_name` into `target_dir`: `.<file>.lock` beside it,
    flock'ed. A process killed mid-download releases it; it is removed when released. Where
    the directory cannot hold it, or the filesystem has no locks, downloads go unlocked (each
    is still safe: its own temporary, checked, then renamed)."""
    lock = target_dir / f".{file_name}.lock"
    fd = _take_lock(lock, f"c3dfeat: waiting for another process downloading {file_name} into {target_dir}"
                    if announce else None)
    try:
        yield
    finally:
        if fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(lock)  # before the unlock: a waiter then sees that its lock is stale
            os.close(fd)


def _take_lock(lock: Path, waiting_line: Optional[str]) -> Optional[int]:
    """An open descriptor of `lock`, flock'ed, and still the file of that name; None where
    there can be no lock."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return None
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if waiting_line:
                    print(waiting_line, file=sys.stderr, flush=True)
                    waiting_line = None
                fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                return None  # no locks on this filesystem
            raise
        try:  # the holder before us removed the file: a lock on a name no one else sees
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def _fetch(url: str, dst: Path, label: str, progress: bool) -> None:
    """One attempt: stream `url` into `dst` (the caller removes `dst` on any error)."""
    request = urllib.request.Request(url, headers={"User-Agent": f"c3dfeat/{__version__}"})
    with urllib.request.urlopen(request, timeout=SOCKET_TIMEOUT_S) as response, open(dst, "wb") as f:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        bar = _Progress(label, url, total, progress)
        try:
            while True:
                chunk = response.read(_CHUNK)
                if not chunk:
                    break
                f.write(chunk)
                bar.update(len(chunk))
        finally:
            bar.close()
    if total is not None and bar.n != total:
        raise _Truncated(f"connection closed after {bar.n} of {total} bytes")


def _transient(e: BaseException) -> bool:
    if isinstance(e, urllib.error.HTTPError):
        return e.code >= 500 or e.code in (408, 429)
    if isinstance(e, urllib.error.URLError) and isinstance(e.reason, socket.gaierror):
        return False  # name resolution failed: offline; retrying only delays the message
    return isinstance(
        e, (_Truncated, urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, socket.timeout)
    )


def _reason(e: BaseException) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code}"
    if isinstance(e, urllib.error.URLError):
        return str(e.reason)
    return f"{type(e).__name__}: {e}"


def _check_format(path: Path, ckpt: Checkpoint, url: str) -> None:
    """The downloaded bytes have the checkpoint's format (not an error page, not another file)."""
    from c3dfeat.weights.formats import detect_format, format_family

    try:
        found = f"they look like {detect_format(path)}"
    except WeightsError:
        found = "no known checkpoint format (an error page?)"
    if found != f"they look like {format_family(ckpt.format)}":
        raise ChecksumError(f"{url}: the downloaded bytes are not a {ckpt.format} file ({found})")


def import_command(name: str) -> str:
    return f"c3dfeat weights import FILE --model {name}"


def refuse_unhashed(name: str, ckpt: Checkpoint) -> WeightsError:
    return WeightsError(
        f"{name} ({ckpt.file_name}) has no published SHA-256 and hashes are required "
        f"(--require-hashes / {policy.ENV_REQUIRE_HASHES}=1); without that requirement it is trusted on "
        "first use (its digest is recorded and checked on every later load)"
    )


def tofu_line(what: str, name: str, source: str, digest: str, path: Path, recorded: bool) -> str:
    """The one line printed when a checkpoint with no published hash is trusted on first use."""
    later = (
        f"later loads are checked against it ({hashing.record_path(path).name})"
        if recorded
        else f"could not record it beside {path}: later loads hash it again"
    )
    return f"c3dfeat: first {what} of {name} from {source}, sha256 {digest}; {later}"


def offline_message(name: str, ckpt: Checkpoint, tried: Sequence[str]) -> str:
    """One line: what was tried and the ways to bring the file in."""
    attempts = "; ".join(tried) if tried else "no URL is known"
    return (
        f"cannot download {ckpt.file_name} ({name}): {attempts}. If this machine is offline, set "
        f"{policy.ENV_WEIGHTS_MIRROR}=URL (or --weights-mirror URL) to a mirror holding {ckpt.file_name}, "
        f"or fetch it elsewhere and run `{import_command(name)}`"
    )


def download_checkpoint(
    name: str,
    ckpt: Checkpoint,
    target_dir: Path,
    *,
    require_hashes: bool = False,
    mirror: Optional[str] = None,
    progress: bool = True,
) -> hashing.Verification:
    """Download `ckpt` into `target_dir` (mirror first, then its URLs), check it, return the result.

    `name` ("model.tag") is only used in messages. Raises WeightsError before any transfer when
    `require_hashes` and nothing is published; ChecksumError when every URL that answered sent
    other bytes; WeightsNotFoundError when none answered.
    """
    if require_hashes and not hashing.has_published_hash(ckpt):
        raise refuse_unhashed(name, ckpt)
    urls = ([policy.mirror_url(mirror, ckpt.file_name)] if mirror else []) + list(ckpt.urls)
    if not urls:
        raise WeightsNotFoundError(offline_message(name, ckpt, []))
    target_dir.mkdir(parents=True, exist_ok=True)
    final = target_dir / ckpt.file_name
    recorded = hashing.read_record(final)  # a record without its file still pins the bytes
    errors: List[str] = []
    mismatches: List[str] = []
    for url in urls:
        for attempt in range(len(RETRY_BACKOFF_S) + 1):
            tmp = target_dir / f".{ckpt.file_name}.{uuid.uuid4().hex}.download"
            try:
                _fetch(url, tmp, ckpt.file_name, progress)
                _check_format(tmp, ckpt, url)
                digest = hashing.sha256_file(tmp)
                status = hashing.check_digest(ckpt, digest, recorded, url)
                os.replace(tmp, final)
            except ChecksumError as e:
                mismatches.append(str(e))
                break  # a server sending other bytes will not change on retry
            except Exception as e:  # noqa: BLE001 - classified: transient ones are retried
                if _transient(e) and attempt < len(RETRY_BACKOFF_S):
                    time.sleep(RETRY_BACKOFF_S[attempt])
                    continue
                tries = f", {attempt + 1} attempts" if attempt else ""
                errors.append(f"{url} ({_reason(e)}{tries})")
                break
            finally:
                tmp.unlink(missing_ok=True)
            return _keep(name, url, final, digest, status)
    if mismatches:
        raise ChecksumError(f"{name}: refused, nothing was kept: " + "; ".join(mismatches + errors))
    raise WeightsNotFoundError(offline_message(name, ckpt, errors))


def _keep(name: str, url: str, final: Path, digest: str, status: str) -> hashing.Verification:
    """Record the digest of a file that passed; announce a first download trusted on first use."""
    try:
        hashing.write_record(final, digest)
        recorded = True
    except OSError as e:  # read-only shared directory: the bytes were checked anyway
        print(f"c3dfeat: could not record the digest beside {final}: {e}", file=sys.stderr)
        recorded = False
    if status == hashing.UNVERIFIED:
        print(tofu_line("download", name, url, digest, final, recorded), file=sys.stderr, flush=True)
        status = hashing.VERIFIED_RECORDED if recorded else hashing.UNVERIFIED
    return hashing.Verification(final, digest, status)
