"""The reader interface (frames by index, bounded cache), backend loading and error texts."""
from __future__ import annotations

import contextlib
import os
import re
import threading
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from c3dfeat.errors import ConfigError, DecoderUnavailableError, VideoDecodeError

BACKENDS = ("decord", "pyav", "torchcodec")
PathLike = Union[str, os.PathLike]

_INSTALL_HINT = {
    "decord": "pip install decord   (no wheel for macOS arm64 / Linux aarch64: use --decoder pyav)",
    "pyav": "pip install av   (PyAV is a dependency of c3dfeat: reinstalling c3dfeat also brings it)",
    "torchcodec": "pip install 'c3dfeat[torchcodec]' and the FFmpeg shared libraries (apt-get install ffmpeg); "
    "the torchcodec release must match your torch (CPU torch: torchcodec==0.13.0+cpu, see docs/extract.md)",
}


def _import_backend(backend: str):
    """Import the backend lazily and silence its logging once (decoder noise floods terminals)."""
    if backend == "decord":
        try:
            import decord
        except ImportError as e:
            raise DecoderUnavailableError(
                f"the decord backend is not installed ({e}); {_INSTALL_HINT['decord']}") from e
        # decord forwards ffmpeg's log (e.g. "[mpeg4] ac-tex damaged") to stderr by default.
        decord.logging.set_level(decord.logging.QUIET)
        return decord
    if backend == "pyav":
        try:
            import av
        except ImportError as e:
            raise DecoderUnavailableError(f"the pyav backend is not installed ({e}); {_INSTALL_HINT['pyav']}") from e
        av.logging.set_level(None)  # None = PyAV does not install ffmpeg's log callback: silent
        return av
    if backend == "torchcodec":
        try:
            from torchcodec import decoders
        except (ImportError, OSError, RuntimeError) as e:  # OSError: FFmpeg / libtorch_cuda not loadable
            reason = str(e).strip().splitlines()[-1][:300] if str(e).strip() else type(e).__name__
            raise DecoderUnavailableError(
                f"the torchcodec backend cannot be loaded ({reason}); {_INSTALL_HINT['torchcodec']}"
            ) from e
        return decoders
    raise ConfigError(f"unknown video backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def backend_versions(backend: str) -> Dict[str, str]:
    """The versions behind `backend`'s frames, for the record (FFmpeg's too, where PyAV says it).
    torchcodec hands AVI-like containers to PyAV (`open_video`), so PyAV's are listed with it."""
    module = _import_backend(backend)
    if backend == "decord":
        return {"decord": str(module.__version__)}
    if backend == "torchcodec":
        import torchcodec

        return {"torchcodec": str(torchcodec.__version__), **backend_versions("pyav")}
    return {"av": str(module.__version__), "ffmpeg": str(getattr(module, "ffmpeg_version_info", "unknown"))}


def available_backends() -> List[str]:
    """The backends that import on this machine, in order of preference."""
    out = []
    for b in BACKENDS:
        try:
            _import_backend(b)
        except DecoderUnavailableError:
            continue
        out.append(b)
    return out


_STDERR_LOCK = threading.Lock()


@contextlib.contextmanager
def _quiet_stderr():
    """Silence file descriptor 2 while decord opens a file.

    decord's own C++ logger (not ffmpeg's, so `decord.logging` cannot stop it) prints
    "ERROR opening: <file>" for every unreadable file; the reason reaches us in the exception
    anyway. Other threads' stderr output during these few milliseconds is lost too (a rich
    progress refresh at worst).
    """
    with _STDERR_LOCK:
        try:
            saved = os.dup(2)
        except OSError:  # no fd 2 at all
            yield
            return
        try:
            with open(os.devnull, "wb") as null:
                os.dup2(null.fileno(), 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _check_file(path: Path) -> None:
    if not path.exists():
        raise VideoDecodeError(f"{path}: no such file")
    if path.is_dir():
        raise VideoDecodeError(f"{path}: is a directory, not a video file")
    if path.stat().st_size == 0:
        raise VideoDecodeError(f"{path}: empty file (0 bytes)")

class VideoReader:
    """Random access to the frames of one video by index (see the module docstring).

    Subclasses implement `_open`, `_read(sorted_unique_indices) -> list of (H, W, 3) uint8`
    and `_close`; this class validates indices, keeps the previous request's frames and
    assembles the answer in the order asked.
    """

    backend: str = ""

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        self.num_frames: int = 0
        self.fps: float = 0.0
        self.height: int = 0
        self.width: int = 0
        self._cache: Dict[int, np.ndarray] = {}
        self._closed = False
        _check_file(self.path)
        self._open()
        if self.num_frames <= 0:
            self.close()
            raise VideoDecodeError(f"{self.path}: the video stream has no frames")

    # ---------------------------------------------------------------- public
    @property
    def duration(self) -> float:
        """Seconds, from the frame count and the average frame rate (0 when fps is unknown)."""
        return self.num_frames / self.fps if self.fps > 0 else 0.0

    def _checked(self, indices: Sequence[int]) -> List[int]:
        """`indices` as ints, after checking the reader is open and each index is in range."""
        if self._closed:
            raise VideoDecodeError(f"{self.path}: reader is closed")
        idx = [int(i) for i in indices]
        for i in idx:
            if not 0 <= i < self.num_frames:
                raise VideoDecodeError(
                    f"{self.path}: frame index {i} is out of range (the video has {self.num_frames} frames)"
                )
        return idx

    def get_frames(self, indices: Sequence[int]) -> np.ndarray:
        """Frames at `indices` (any order, repeats allowed) as uint8 (n, H, W, 3) RGB."""
        idx = self._checked(indices)
        out = np.empty((len(idx), self.height, self.width, 3), dtype=np.uint8)
        if not idx:
            return out
        wanted = sorted(set(idx))
        missing = [i for i in wanted if i not in self._cache]
        got: Dict[int, np.ndarray] = {i: self._cache[i] for i in wanted if i in self._cache}
        if missing:
            frames = self._read(missing)
            for i, f in zip(missing, frames):
                if f.shape != (self.height, self.width, 3):
                    raise VideoDecodeError(
                        f"{self.path}: frame {i} has shape {f.shape[:2]}, the stream says "
                        f"{(self.height, self.width)} (resolution changes inside a video are not supported)"
                    )
                got[i] = f
        for k, i in enumerate(idx):
            out[k] = got[i]
        # Keep exactly this request's frames: the next overlapping clip reuses them, memory stays
        # bounded by one request.
        self._cache = got
        return out

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._cache = {}
            self._close()

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:  # noqa: BLE001 - a finalizer must not raise
            pass

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({str(self.path)!r}, frames={self.num_frames}, fps={self.fps:.3f}, "
            f"size={self.width}x{self.height})"
        )

    # ---------------------------------------------------------------- backend hooks
    def _open(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _read(self, indices: List[int]) -> List[np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _close(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

_LOG_PREFIX = re.compile(r"\[\d\d:\d\d:\d\d\] \S+:\d+: ")


_ERRNO = re.compile(r"^\[Errno -?\d+\] ")
# torchcodec prefixes its messages with the C++ function and source location.
_TC_SOURCE = re.compile(r"^.*?\S+\.cpp:\d+, ")


def _short(e: BaseException, path: Optional[Path] = None, limit: int = 300) -> str:
    """The useful line of an exception's text: without decord's log prefixes and C++ stack
    trace, PyAV's errno number, or the file name (the message names the file already)."""
    text = [_LOG_PREFIX.sub("", line).strip() for line in str(e).strip().splitlines()]
    text = [line for line in text if line and not line.startswith("Stack trace")]
    msg = text[0] if text else type(e).__name__
    for line in text:
        if "Check failed" in line or "Error" in line or "ERROR" in line:
            msg = line
            break
    msg = _ERRNO.sub("", msg)
    if path is not None:
        for form in (f": '{path}'", f" {path}...", f" {path}", str(path)):
            msg = msg.replace(form, "")
    return msg.strip()[:limit] or type(e).__name__


# decord's messages are C++ check failures; say what they mean (ffmpeg's AVERROR_INVALIDDATA is
# -1094995529, "INDA").


def _span(indices: List[int]) -> str:
    return f"{indices[0]}" if len(indices) == 1 else f"{indices[0]}..{indices[-1]}"
