"""Opening feature files: the one-writer lock, opening for writing and for reading."""
from __future__ import annotations

import os
import time
import weakref
from pathlib import Path
from typing import IO, Optional, Union

import h5py

from c3dfeat.errors import StoreError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no lock
    fcntl = None  # type: ignore[assignment]


def lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


class RunLock:
    """An exclusive flock on `<file>.lock` for the whole writing run.

    A SWMR writer gives up HDF5's own file lock (so readers can open the file), so without this
    two runs writing the same output would both "resume" it. The kernel drops the lock when the
    process dies, so a SIGKILLed run never blocks the next one. A flock belongs to the open file,
    which a fork shares: a forked child (a decode process) closes its copy at once, or it would
    hold the lock after its parent is gone.
    """

    _live: "weakref.WeakSet[RunLock]" = weakref.WeakSet()

    def __init__(self, path: Path) -> None:
        self.path = lock_path(path)
        self._fh: Optional[IO[bytes]] = None
        if fcntl is None:  # pragma: no cover
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
        RunLock._live.add(self)

    def _close_in_child(self) -> None:
        if self._fh is not None:
            self._fh.close()  # the child's copy only: the parent's descriptor keeps the lock
            self._fh = None

    def release(self) -> None:
        if self._fh is not None:
            try:
                self.path.unlink()
            except OSError:
                pass
            self._fh.close()
            self._fh = None


def _after_fork_in_child() -> None:
    for lock in list(RunLock._live):
        lock._close_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def writer_running(path: Path) -> bool:
    """True when a live process holds the writer lock of `path` (this one included)."""
    lp = lock_path(path)
    if fcntl is None or not lp.exists():
        return False
    try:
        fh = open(lp, "rb")
    except OSError:
        return False
    with fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        return False


PAGE = 4096
# Every allocation starts on a page: a pwrite interrupted by a fatal signal stops at a page boundary
# (Linux checks for one before each page it copies), so a SIGKILL in the middle of a commit could
# tear an object header that straddles two pages -- new dimensions, old checksum, the dataset gone.
# An object header (~270 bytes) that starts a page is rewritten whole or not at all. Costs ~4 KiB
# per allocation (+0.36 MB for a test file with one model of two layers). Not stored in the file:
# every writing open passes it.
WRITE_OPTIONS = {"libver": "latest", "alignment_threshold": 1, "alignment_interval": PAGE}


def open_write(path: Path, timeout: float = 10.0) -> h5py.File:
    """Open for writing; wait while a reader holds HDF5's file lock (e.g. `c3dfeat info`)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return h5py.File(path, "r+", **WRITE_OPTIONS)
        except OSError as e:
            if "lock" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def open_read(path: Union[str, Path]) -> h5py.File:
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
