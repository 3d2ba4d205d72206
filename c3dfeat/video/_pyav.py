"""PyAV backend."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple, cast

import numpy as np

from c3dfeat.errors import VideoDecodeError
from c3dfeat.video._base import PathLike, VideoReader, _import_backend, _short


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
        self._container: Any = None  # av.container.InputContainer
        self._stream: Any = None
        self._frames: Any = None  # the decoder's frame iterator
        self._next = 0  # index of the frame the decoder yields next
        self._pts_index: Optional[Dict[int, int]] = None  # pts -> frame index (seekable files)
        self._keyframes: List[Tuple[int, int]] = []  # (frame index, pts) of key frames, sorted
        self.seeks = 0  # statistics, for tests and benchmarks
        self.decoded = 0
        self._rgb = _import_backend("pyav").video.reformatter.VideoReformatter()
        # swscale's own threads: PyAV's default (0) gives every reader a pool the size of the
        # machine. A one-thread reader is a pipeline decoder (they scale by process): 16 of them
        # on 16 cores must not start 256 conversion threads.
        self._rgb_options: Dict[str, Any] = {"format": "rgb24", "threads": self._threads}
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
                order = sorted(cast(List[int], pts))  # presentation order (no None: checked above)
                index = {p: i for i, p in enumerate(order)}
                self._pts_index = index
                self._keyframes = sorted((index[p], p) for p in cast(List[int], keys))
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
                out.append(self._to_rgb(frame))
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

    def _to_rgb(self, frame: Any) -> np.ndarray:
        try:
            return self._rgb.reformat(frame, **self._rgb_options).to_ndarray()
        except TypeError:  # an older PyAV without `threads` (its swscale runs in one thread)
            if "threads" not in self._rgb_options:
                raise
            del self._rgb_options["threads"]
            return self._rgb.reformat(frame, **self._rgb_options).to_ndarray()

    def _close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None
        self._frames = None

class _LostTrack(Exception):
    """A decoded frame's timestamp does not give the expected index (PyAV seeking)."""


def timestamps_index_frames(path: PathLike) -> bool:
    """True unless `path` opens as a container whose timestamps may not give the frame order
    (anything but MP4/MOV/Matroska/WebM). A file PyAV cannot open answers True: the caller's
    own reader then says why it cannot be read."""
    av = _import_backend("pyav")
    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            fmt = container.format.name or ""
    except Exception:  # noqa: BLE001 - the caller's reader reports the real error
        return True
    return any(f in fmt.split(",") for f in PyAVReader._SEEKABLE_FORMATS)
