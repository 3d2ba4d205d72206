"""Decode video frames by index: PyAV (default), decord or torchcodec behind one small interface.

PyAV is the default (fastest at bounded memory here, docs/extract.md "Performance"); decord
(`--decoder decord`) is bounded by stopping its read-ahead after every request; torchcodec
(`--decoder torchcodec`, PyTorch's decoder) can decode on a CUDA GPU (NVDEC); it reads
MP4/MOV/Matroska/WebM files, other containers (AVI) go to PyAV (see `open_video`).

Frames are addressed by their index in presentation order (0 = first decoded frame), never by
timestamp: container timestamps are unreliable (the UCF101 AVI of the C3D examples has them out
of order), and clip sampling is defined on frame indices (docs/sampling.md).

    with open_video("a.mp4") as v:
        v.num_frames, v.fps, v.height, v.width
        frames = v.get_frames([0, 1, 2])   # uint8 (3, H, W, 3) RGB

Memory is bounded by the request: a reader never decodes or holds a whole video, only the frames
asked for plus the frames of the previous request (so overlapping clips do not decode twice).
Every failure (missing file, not a video, no video stream, truncated data, a frame that does not
decode) raises :class:`~c3dfeat.errors.VideoDecodeError` naming the file and the reason. A
decoder whose library does not load raises :class:`~c3dfeat.errors.DecoderUnavailableError`
instead: that is this machine's fault, not the video's (a run stops with it).
"""
from __future__ import annotations

from c3dfeat.errors import ConfigError, VideoDecodeError
from c3dfeat.video._base import BACKENDS, PathLike, VideoReader, _import_backend, available_backends, backend_versions
from c3dfeat.video._decord import DecordReader
from c3dfeat.video._device import DECODE_DEVICES, check_decode_device, decode_device_kind, parse_decode_device
from c3dfeat.video._pyav import PyAVReader, timestamps_index_frames
from c3dfeat.video._torchcodec import TorchCodecReader

__all__ = ["BACKENDS", "DECODE_DEVICES", "VideoReader", "DecordReader", "PyAVReader", "TorchCodecReader",
           "open_video", "available_backends", "backend_versions", "check_decode_device", "decode_device_kind",
           "parse_decode_device", "_import_backend"]


def open_video(path: PathLike, backend: str = "pyav", threads: int = 0, device: str = "cpu") -> VideoReader:
    """Open `path` with `backend` (one of BACKENDS); `threads` = decoder threads (0 = auto);
    `device` = "cuda[:N]" decodes on the GPU (torchcodec only; check the machine once with
    :func:`check_decode_device` first). Files that torchcodec leaves to PyAV (below) and codecs
    NVDEC lacks (torchcodec's own fallback) are still decoded on the CPU."""
    if device != "cpu" and backend != "torchcodec":
        raise VideoDecodeError(f"decoding on {device} needs backend='torchcodec' ({backend} decodes on the CPU)")
    if backend == "decord":
        return DecordReader(path, threads=threads)
    if backend == "pyav":
        return PyAVReader(path, threads=threads)
    if backend == "torchcodec":
        if not timestamps_index_frames(path):
            # torchcodec numbers frames by their timestamps; in AVI and other such containers
            # they can be out of order (the UCF101 clips: frames swapped, the last one missing),
            # so those files are read by PyAV, whose frames torchcodec's equal elsewhere.
            return PyAVReader(path, threads=threads)
        return TorchCodecReader(path, threads=threads, device=device)
    raise ConfigError(f"unknown video backend {backend!r}; choose one of {', '.join(BACKENDS)}")
