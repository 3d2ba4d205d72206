"""Where videos are decoded: the check a run makes once, before it opens any video.

"cpu" works with every backend. "cuda[:N]" (NVDEC) needs the torchcodec backend, a torch that
sees that GPU, and a torchcodec build with CUDA; otherwise :func:`check_decode_device` raises a
ConfigError saying what to install or change, so a run never records every video as failed for
a reason that is the machine's, not the videos'.
"""
from __future__ import annotations

import io
import re
from typing import Any, Optional

from c3dfeat.errors import ConfigError, VideoDecodeError
from c3dfeat.runtime import unusable_gpu_reason
from c3dfeat.video._base import _import_backend, _short

__all__ = ["DECODE_DEVICES", "check_decode_device", "parse_decode_device", "decode_device_kind"]

DECODE_DEVICES = ("cpu", "cuda")  # device types; "cuda:N" picks a GPU
_SYNTAX = re.compile(r"cpu|cuda(?::(\d+))?")
_CUDA_TORCHCODEC = ("pip install torchcodec --index-url https://download.pytorch.org/whl/cu128 "
                    "(the CUDA build matching your torch; docs/extract.md, Decoders)")


def parse_decode_device(device: str) -> str:
    """"cpu", "cuda" or "cuda:N" (as torch spells them); ConfigError for anything else.
    Torch-free, so that the CLI can check the option's syntax while parsing it."""
    m = _SYNTAX.fullmatch(device.strip().lower()) if isinstance(device, str) else None
    if m is None:
        raise ConfigError(f"decode_device must be cpu, cuda or cuda:N, got {device!r}")
    if m.group(0) == "cpu":
        return "cpu"
    return "cuda" if m.group(1) is None else f"cuda:{int(m.group(1))}"


def decode_device_kind(device: str) -> str:
    """"cpu" or "cuda": what the provenance compares (any GPU's NVDEC, not a GPU index)."""
    return device.partition(":")[0]


def check_decode_device(device: str, backend: str) -> str:
    """`device` (canonical, see :func:`parse_decode_device`) once it is known to work with
    `backend` on this machine. ConfigError otherwise, with what to do, in one line."""
    device = parse_decode_device(device)
    if device == "cpu":
        return device
    if backend != "torchcodec":
        raise ConfigError(f"decoding on {device} needs the torchcodec decoder ({backend} decodes on the CPU only): "
                          f"add --decoder torchcodec (decoder='torchcodec'), or drop --decode-device")
    import torch

    if not torch.cuda.is_available():
        why = unusable_gpu_reason() or (f"torch {torch.__version__} sees no CUDA GPU (a CPU build of torch, or no "
                                        "GPU / driver)")
        raise ConfigError(f"--decode-device {device}: {why}; decode on the CPU (--decode-device cpu)")
    index = int(device.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise ConfigError(f"--decode-device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    try:
        decoders = _import_backend("torchcodec")
    except VideoDecodeError as e:
        raise ConfigError(f"--decode-device {device}: {e}") from None
    problem = _probe(decoders, device)
    if problem:
        raise ConfigError(f"--decode-device {device}: {problem}")
    return device


def _probe(decoders: Any, device: str) -> Optional[str]:
    """Why torchcodec cannot decode on `device` (None: it can): open a tiny in-memory video there."""
    import torchcodec

    try:
        dec = decoders.VideoDecoder(_tiny_video(), device=device, seek_mode="exact")
        dec.get_frame_at(0)
    except Exception as e:  # noqa: BLE001 - every failure here is a reason to refuse the device
        reason = _short(e)
        if "Unsupported device" in str(e):
            return f"torchcodec {torchcodec.__version__} is built without CUDA; {_CUDA_TORCHCODEC}"
        return f"torchcodec cannot decode there ({reason})"
    fallback = dec.cpu_fallback
    if fallback and getattr(fallback, "_nvcuvid_unavailable", False):
        # The driver's NVDEC library is missing: every video would silently decode on the CPU.
        return ("NVDEC is not usable (the NVIDIA driver's libnvcuvid is not found); install the full driver, "
                "or decode on the CPU")
    return None


def _tiny_video() -> bytes:
    """Two 128x128 frames (H.264 where PyAV has libx264, else MPEG-4: FFmpeg's own encoder)."""
    import av
    import numpy as np

    for codec in ("libx264", "mpeg4"):
        buf = io.BytesIO()
        try:
            with av.open(buf, "w", format="mp4") as out:
                stream = out.add_stream(codec, rate=25)
                stream.width = stream.height = 128
                stream.pix_fmt = "yuv420p"
                for i in range(2):
                    frame = av.VideoFrame.from_ndarray(np.full((128, 128, 3), 60 * i, np.uint8), format="rgb24")
                    out.mux(stream.encode(frame))
                out.mux(stream.encode())
        except (av.error.FFmpegError, ValueError):  # this PyAV build lacks the encoder
            continue
        return buf.getvalue()
    raise ConfigError("cannot make a test video to check GPU decoding (PyAV has neither libx264 nor mpeg4)")
