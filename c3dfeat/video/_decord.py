"""decord backend."""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import numpy as np

from c3dfeat.errors import VideoDecodeError
from c3dfeat.video._base import PathLike, VideoReader, _import_backend, _quiet_stderr, _short, _span


class DecordReader(VideoReader):
    """decord.VideoReader: builds a frame index at open, seeks to key frames by itself."""

    backend = "decord"

    def __init__(self, path: PathLike, threads: int = 0) -> None:
        self._threads = threads
        self._vr: Any = None  # decord.VideoReader (untyped library)
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
            # What the seek cannot bound: *during* a request decord's demuxer loop reads one more
            # packet each time it finds no decoded frame ready (FFMPEGThreadedDecoder::Pop does not
            # wait), so one request holds up to the rest of the compressed file in its packet queue
            # (the 5 min synthetic video: 128 MB read ahead for 16 frames; ~105 MB on a 20 min one,
            # where time, not the file's end, stops it). Only decord itself can change that.
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
        except Exception:  # noqa: BLE001 - decord's errors have no common type; failure path only
            return indices[0]
        for i in indices:
            try:
                vr[i].asnumpy()
            except Exception:  # noqa: BLE001 - as above
                return i
        return None

    def _close(self) -> None:
        self._vr = None  # decord has no close(); dropping the reader frees the demuxer

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
