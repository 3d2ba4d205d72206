"""torchcodec backend (CPU or CUDA decoding)."""
from __future__ import annotations

from typing import Any, List, Optional, Sequence

import numpy as np

from c3dfeat.errors import VideoDecodeError
from c3dfeat.video._base import _TC_SOURCE, PathLike, VideoReader, _import_backend, _short, _span


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
        self._dec: Any = None  # torchcodec.decoders.VideoDecoder
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
        return self._decode(self._checked(indices))

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
            except (RuntimeError, IndexError, ValueError):  # what torchcodec raises for bad data
                return i
        return None

    def _read(self, indices: List[int]) -> List[np.ndarray]:
        return list(self._decode(indices).cpu().numpy())

    def _close(self) -> None:
        self._dec = None
