"""Decode video frames by index: PyAV (default), decord or torchcodec behind one small interface.

PyAV is the default (fastest at bounded memory here, docs/extract.md "Performance"); decord
(`--decoder decord`) is bounded by stopping its read-ahead after every request; torchcodec
(`--decoder torchcodec`, PyTorch's decoder) can decode on a CUDA GPU (NVDEC).

Frames are addressed by their index in presentation order (0 = first decoded frame), never by
timestamp: container timestamps are unreliable (the UCF101 AVI of the C3D examples has them out
of order), and clip sampling is defined on frame indices (docs/sampling.md).

    with open_video("a.mp4") as v:
        v.num_frames, v.fps, v.height, v.width
        frames = v.get_frames([0, 1, 2])   # uint8 (3, H, W, 3) RGB

Memory is bounded by the request: a reader never decodes or holds a whole video, only the frames
asked for plus the frames of the previous request (so overlapping clips do not decode twice).
Every failure (missing file, not a video, no video stream, truncated data, a frame that does not
decode) raises :class:`~c3dfeat.errors.VideoDecodeError` naming the file and the reason.
"""
from __future__ import annotations

import contextlib
import os
import re
import threading
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from c3dfeat.errors import VideoDecodeError

__all__ = ["BACKENDS", "VideoReader", "open_video", "available_backends"]

BACKENDS = ("decord", "pyav", "torchcodec")
PathLike = Union[str, os.PathLike]

_INSTALL_HINT = {
    "decord": "pip install decord   (no wheel for macOS arm64 / Linux aarch64: use --decoder pyav)",
    "pyav": "pip install av   (or: pip install 'c3dfeat[pyav]')",
    "torchcodec": "pip install 'c3dfeat[torchcodec]' and the FFmpeg shared libraries (apt-get install ffmpeg); "
    "the torchcodec release must match your torch (CPU torch: torchcodec==0.13.0+cpu, see docs/extract.md)",
}


def _import_backend(backend: str):
    """Import the backend lazily and silence its logging once (decoder noise floods terminals)."""
    if backend == "decord":
        try:
            import decord
        except ImportError as e:  # pragma: no cover - depends on the platform
            raise VideoDecodeError(f"the decord backend is not installed ({e}); {_INSTALL_HINT['decord']}") from e
        # decord forwards ffmpeg's log (e.g. "[mpeg4] ac-tex damaged") to stderr by default.
        decord.logging.set_level(decord.logging.QUIET)
        return decord
    if backend == "pyav":
        try:
            import av
        except ImportError as e:  # pragma: no cover
            raise VideoDecodeError(f"the pyav backend is not installed ({e}); {_INSTALL_HINT['pyav']}") from e
        av.logging.set_level(None)  # None = PyAV does not install ffmpeg's log callback: silent
        return av
    if backend == "torchcodec":
        try:
            from torchcodec import decoders
        except (ImportError, OSError, RuntimeError) as e:  # OSError: FFmpeg / libtorch_cuda not loadable
            reason = str(e).strip().splitlines()[-1][:300] if str(e).strip() else type(e).__name__
            raise VideoDecodeError(
                f"the torchcodec backend cannot be loaded ({reason}); {_INSTALL_HINT['torchcodec']}"
            ) from e
        return decoders
    raise VideoDecodeError(f"unknown video backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def available_backends() -> List[str]:
    """The backends that import on this machine, in order of preference."""
    out = []
    for b in BACKENDS:
        try:
            _import_backend(b)
        except VideoDecodeError:
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

    def get_frames(self, indices: Sequence[int]) -> np.ndarray:
        """Frames at `indices` (any order, repeats allowed) as uint8 (n, H, W, 3) RGB."""
        if self._closed:
            raise VideoDecodeError(f"{self.path}: reader is closed")
        idx = [int(i) for i in indices]
        for i in idx:
            if not 0 <= i < self.num_frames:
                raise VideoDecodeError(
                    f"{self.path}: frame index {i} is out of range (the video has {self.num_frames} frames)"
                )
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
        except Exception:
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


class DecordReader(VideoReader):
    """decord.VideoReader: builds a frame index at open, seeks to key frames by itself."""

    backend = "decord"

    def __init__(self, path: PathLike, threads: int = 0) -> None:
        self._threads = threads
        self._vr = None
        super().__init__(path)

    def _open(self) -> None:
        decord = _import_backend("decord")
        try:
            with _quiet_stderr():
                self._vr = decord.VideoReader(str(self.path), ctx=decord.cpu(0), num_threads=self._threads)
            self.num_frames = len(self._vr)
            self.fps = float(self._vr.get_avg_fps() or 0.0)
            if self.num_frames > 0:
                # decord exposes the size only through a decoded frame's shape; read frame 0
                # (this also proves the stream decodes at all).
                first = self._vr[0].asnumpy()
                self.height, self.width = int(first.shape[0]), int(first.shape[1])
                self._vr.seek(0)
        except VideoDecodeError:
            raise
        except Exception as e:  # decord raises DECORDError / RuntimeError with ffmpeg's text
            raise VideoDecodeError(f"{self.path}: cannot open with decord: {_decord_reason(e, self.path)}") from e

    def _read(self, indices: List[int]) -> List[np.ndarray]:
        try:
            batch = self._vr.get_batch(indices).asnumpy()
            # decord's decoder thread keeps decoding ahead of the last request into an unbounded
            # queue while the consumer (the model) is busy: resident memory grows with the video
            # length (dmlc/decord#157, #197, #208). A seek stops the read-ahead and drops the
            # queue; the next request seeks to its own key frame anyway. Measured: docs/extract.md.
            self._vr.seek(0)
        except Exception as e:
            bad = self._first_bad(indices)
            where = f"frame {bad}" if bad is not None else f"frames {_span(indices)}"
            reason = _decord_reason(e, self.path)
            raise VideoDecodeError(f"{self.path}: decoding {where} failed (decord): {reason}") from e
        if batch.shape[0] != len(indices):
            raise VideoDecodeError(
                f"{self.path}: decord returned {batch.shape[0]} frames for {len(indices)} requested "
                f"({_span(indices)}); the file is probably truncated"
            )
        return list(batch)

    def _first_bad(self, indices: List[int]) -> Optional[int]:
        """After a failed batch: the first index that does not decode, with a fresh reader
        (decord's state after an error is undefined). Runs only on the failure path."""
        decord = _import_backend("decord")
        try:
            with _quiet_stderr():
                vr = decord.VideoReader(str(self.path), ctx=decord.cpu(0), num_threads=1)
        except Exception:
            return indices[0]
        for i in indices:
            try:
                vr[i].asnumpy()
            except Exception:
                return i
        return None

    def _close(self) -> None:
        self._vr = None  # decord has no close(); dropping the reader frees the demuxer


class PyAVReader(VideoReader):
    """PyAV: decodes forward and counts frames; seeks only where every frame can be identified.

    The frame count is the number of video packets (a demux pass at open, no decoding: the
    container's frame-count field is often missing or wrong), or the declared count when that
    is larger (truncated file). A requested frame that the decoder does not produce raises
    VideoDecodeError with its index.

    Increasing requests (clips in order) decode forward without seeking. A jump more than
    `seek_threshold` frames ahead, or a request behind the current position, seeks to the
    nearest key frame before the target — but only in MP4/MOV/Matroska files whose packets all
    have distinct timestamps: there frame i is the packet with the i-th smallest pts, and every
    decoded frame is identified by its pts (a frame that cannot be identified ends seeking for
    this file, and decoding restarts from the beginning). Elsewhere (AVI: the UCF101 clips have
    out-of-order timestamps) going back restarts from the first frame.
    """

    backend = "pyav"
    seek_threshold = 64
    _SEEKABLE_FORMATS = ("mov", "mp4", "matroska", "webm")

    def __init__(self, path: PathLike, threads: int = 0) -> None:
        self._threads = threads
        self._container = None
        self._stream = None
        self._frames: Optional[Iterator] = None
        self._next = 0  # index of the frame the decoder yields next
        self._pts_index: Optional[Dict[int, int]] = None  # pts -> frame index (seekable files)
        self._keyframes: List[Tuple[int, int]] = []  # (frame index, pts) of key frames, sorted
        self.seeks = 0  # statistics, for tests and benchmarks
        self.decoded = 0
        self._rgb = _import_backend("pyav").video.reformatter.VideoReformatter()
        super().__init__(path)

    def _open_container(self):
        av = _import_backend("pyav")
        try:
            container = av.open(str(self.path), metadata_errors="ignore")
        except Exception as e:
            raise VideoDecodeError(f"{self.path}: cannot open with PyAV: {_short(e, self.path)}") from e
        if not container.streams.video:
            container.close()
            raise VideoDecodeError(f"{self.path}: no video stream (audio-only or not a video file)")
        stream = container.streams.video[0]
        if self._threads != 1:
            stream.thread_type = "AUTO"
            if self._threads > 1:
                stream.codec_context.thread_count = self._threads
        return container, stream

    def _open(self) -> None:
        container, stream = self._open_container()
        try:
            ctx = stream.codec_context
            self.width, self.height = int(ctx.width), int(ctx.height)
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            self.fps = float(rate) if rate else 0.0
            # True count = packets that carry data (no decoding, only demuxing).
            pts: List[Optional[int]] = []
            keys: List[Optional[int]] = []
            for packet in container.demux(stream):
                if packet.size > 0 and not getattr(packet, "is_discard", False):
                    pts.append(packet.pts)
                    if packet.is_keyframe:
                        keys.append(packet.pts)
            n = len(pts)
            # A container that declares more frames than it holds is truncated: keep the declared
            # count so that the missing frames fail loudly (as decord's index does) instead of
            # silently shortening the video.
            self._declared = int(stream.frames or 0)
            self.num_frames = max(n, self._declared)
            fmt = container.format.name or ""
            if (
                n == self.num_frames
                and any(f in fmt.split(",") for f in self._SEEKABLE_FORMATS)
                and None not in pts
                and len(set(pts)) == n
            ):
                order = sorted(pts)  # presentation order
                self._pts_index = {p: i for i, p in enumerate(order)}
                self._keyframes = sorted((self._pts_index[p], p) for p in keys)
        except VideoDecodeError:
            container.close()
            raise
        except Exception as e:
            container.close()
            raise VideoDecodeError(f"{self.path}: cannot read the video stream (PyAV): {_short(e, self.path)}") from e
        container.close()
        if self.width <= 0 or self.height <= 0:
            raise VideoDecodeError(f"{self.path}: the video stream has no frame size (corrupt header)")

    def _restart(self) -> None:
        """Decode from the first frame again (a fresh demuxer and decoder)."""
        if self._container is not None:
            self._container.close()
        self._container, self._stream = self._open_container()
        self._frames = iter(self._container.decode(self._stream))
        self._next = 0

    def _seek_to(self, target: int) -> bool:
        """Seek to the last key frame at or before `target`; False if that gains nothing."""
        if self._pts_index is None or not self._keyframes:
            return False
        best = None
        for idx, pts in self._keyframes:
            if idx > target:
                break
            best = (idx, pts)
        if best is None or best[0] == 0:
            return False  # from the first key frame, a plain restart is the same
        if self._frames is not None and self._next <= target and best[0] <= self._next:
            return False  # the decoder is already past that key frame: just go forward
        if self._container is None:
            self._container, self._stream = self._open_container()
        self._container.seek(best[1], stream=self._stream, backward=True, any_frame=False)
        self._frames = iter(self._container.decode(self._stream))
        self._next = -1  # unknown until the first frame is identified by its pts
        self.seeks += 1
        return True

    def _read(self, indices: List[int]) -> List[np.ndarray]:
        target = indices[0]
        if self._frames is None or target < self._next or target - self._next > self.seek_threshold:
            if not self._seek_to(target) and (self._frames is None or target < self._next):
                self._restart()
        try:
            return self._decode_until(indices)
        except _LostTrack:
            # a frame after a seek could not be identified: never seek in this file again
            self._pts_index, self._keyframes = None, []
            self._restart()
            return self._decode_until(indices)

    def _decode_until(self, indices: List[int]) -> List[np.ndarray]:
        out: List[np.ndarray] = []
        k = 0
        try:
            while k < len(indices):
                try:
                    frame = next(self._frames)
                except StopIteration:
                    raise VideoDecodeError(
                        f"{self.path}: frame {indices[k]} cannot be decoded: the stream ends after "
                        f"{max(self._next, 0)} frames although the file declares {self.num_frames} "
                        "(truncated or corrupt file)"
                    ) from None
                self.decoded += 1
                if self._pts_index is not None:
                    i = self._pts_index.get(frame.pts)
                    if i is None or (self._next >= 0 and i != self._next):
                        raise _LostTrack()
                else:
                    i = self._next
                self._next = i + 1
                if i < indices[k]:
                    continue  # before the target (also: leading frames of an open GOP)
                if i > indices[k]:
                    raise _LostTrack()
                # One reformatter per reader: frame.to_ndarray(format=...) builds a new one (and a
                # new swscale context) for every frame, 2.3x slower, all of it holding the GIL.
                out.append(self._rgb.reformat(frame, format="rgb24").to_ndarray())
                k += 1
                while k < len(indices) and indices[k] == i:  # defensive: repeats are deduplicated upstream
                    out.append(out[-1])
                    k += 1
        except (VideoDecodeError, _LostTrack):
            self._frames = None
            raise
        except Exception as e:
            self._frames = None
            raise VideoDecodeError(
                f"{self.path}: decoding frame {max(self._next, 0)} failed (PyAV): {_short(e, self.path)}"
            ) from e
        return out

    def _close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None
        self._frames = None


class TorchCodecReader(VideoReader):
    """torchcodec.decoders.VideoDecoder in exact mode (a scan at open indexes every frame by
    its presentation time, so index i is the i-th frame in presentation order, as for PyAV).

    `device="cuda"` decodes on the GPU (NVDEC) when torchcodec was built with CUDA; frames come
    back to the host for :meth:`get_frames`, :meth:`get_frames_tensor` keeps them on the device.
    """

    backend = "torchcodec"

    def __init__(self, path: PathLike, threads: int = 0, device: str = "cpu") -> None:
        self._threads = threads
        self._device = device
        self._dec = None
        super().__init__(path)

    def _open(self) -> None:
        decoders = _import_backend("torchcodec")
        try:
            self._dec = decoders.VideoDecoder(
                str(self.path), dimension_order="NHWC", seek_mode="exact", device=self._device,
                num_ffmpeg_threads=self._threads,  # 0 = FFmpeg picks (all cores); 1 = one
            )
            md = self._dec.metadata
        except Exception as e:
            raise VideoDecodeError(f"{self.path}: cannot open with torchcodec: {_short(e, self.path)}") from e
        if md.width is None or md.height is None:
            raise VideoDecodeError(f"{self.path}: the video stream has no frame size (corrupt header)")
        self.width, self.height = int(md.width), int(md.height)
        # A container that declares more frames than it holds is truncated: keep the declared
        # count so that the missing frames fail loudly (as with PyAV and decord).
        self.num_frames = max(int(md.num_frames or 0), int(md.num_frames_from_header or 0))
        fps = md.average_fps_from_header or md.average_fps
        self.fps = float(fps) if fps else 0.0

    def get_frames_tensor(self, indices: Sequence[int]):
        """Frames at `indices` as a uint8 (n, H, W, 3) torch tensor on the decoder's device."""
        if self._closed:
            raise VideoDecodeError(f"{self.path}: reader is closed")
        idx = [int(i) for i in indices]
        for i in idx:
            if not 0 <= i < self.num_frames:
                raise VideoDecodeError(
                    f"{self.path}: frame index {i} is out of range (the video has {self.num_frames} frames)"
                )
        return self._decode(idx)

    def _decode(self, indices: List[int]):
        try:
            return self._dec.get_frames_at(indices).data
        except Exception as e:
            bad = self._first_bad(indices)
            where = f"frame {bad}" if bad is not None else f"frames {_span(indices)}"
            reason = _TC_SOURCE.sub("", _short(e, self.path))
            raise VideoDecodeError(f"{self.path}: decoding {where} failed (torchcodec): {reason}") from e

    def _first_bad(self, indices: List[int]) -> Optional[int]:
        """After a failed batch: the first index that does not decode (failure path only)."""
        for i in indices:
            try:
                self._dec.get_frame_at(i)
            except Exception:
                return i
        return None

    def _read(self, indices: List[int]) -> List[np.ndarray]:
        return list(self._decode(indices).cpu().numpy())

    def _close(self) -> None:
        self._dec = None


class _LostTrack(Exception):
    """A decoded frame's timestamp does not give the expected index (PyAV seeking)."""


def open_video(path: PathLike, backend: str = "pyav", threads: int = 0, device: str = "cpu") -> VideoReader:
    """Open `path` with `backend` (one of BACKENDS); `threads` = decoder threads (0 = auto);
    `device` = "cuda[:N]" decodes on the GPU (torchcodec only)."""
    if device != "cpu" and backend != "torchcodec":
        raise VideoDecodeError(f"decoding on {device} needs backend='torchcodec' ({backend} decodes on the CPU)")
    if backend == "decord":
        return DecordReader(path, threads=threads)
    if backend == "pyav":
        return PyAVReader(path, threads=threads)
    if backend == "torchcodec":
        return TorchCodecReader(path, threads=threads, device=device)
    raise VideoDecodeError(f"unknown video backend {backend!r}; choose one of {', '.join(BACKENDS)}")


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
_DECORD_REASONS = (
    ("cannot find video stream", "no video stream (audio-only or not a video file)"),
    ("Error reading", "not a video file, or a format ffmpeg cannot read"),
    ("av_read_frame failed", "invalid data while reading packets (truncated or corrupt file)"),
    ("Error sending packet", "invalid data in the video stream (corrupt file)"),
    ("1094995529", "invalid data (corrupt or truncated file)"),
)


def _decord_reason(e: BaseException, path: Path) -> str:
    """What a decord failure means (its raw text stays in the exception chain)."""
    for pattern, reason in _DECORD_REASONS:
        if pattern in str(e):
            return reason
    return _short(e, path)


def _span(indices: List[int]) -> str:
    return f"{indices[0]}" if len(indices) == 1 else f"{indices[0]}..{indices[-1]}"
