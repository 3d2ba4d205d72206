"""OpenCV's uint8 bilinear resize, reproduced bit for bit (the Caffe models' input).

C3D and Res3D were fed frames resized by ``cv::resize(src, dst, Size(171, 128), 0, 0,
INTER_LINEAR)`` on uint8 BGR images. That is a fixed-point filter, not a float bilinear one
(modules/imgproc/src/resize.cpp, ``resizeGeneric_`` with ``HResizeLinear`` and
``VResizeLinear``/``VResizeLinearVec_32s8u``):

* source coordinate of output column ``dx``: ``fx = (float)((dx + 0.5) * scale_x - 0.5)`` with
  ``scale_x = 1 / (dst_w / src_w)`` in double, then ``sx = floor(fx)``, ``fx -= sx`` in float;
  ``sx < 0`` becomes ``sx = 0, fx = 0`` and ``sx >= src_w - 1`` becomes ``sx = src_w - 1,
  fx = 0`` (border clamping); rows the same, except that their two source rows are clamped
  into the image instead of their weights;
* weights ``round((1 - f) * 2048)`` and ``round(f * 2048)`` as int16
  (``INTER_RESIZE_COEF_BITS = 11``; ``saturate_cast<short>`` rounds half to even);
* horizontal pass, exact in int32: ``H = p[sx] * a0 + p[sx + 1] * a1``;
* vertical pass as the SIMD kernel computes it for every column (the scalar form
  ``(H0 * b0 + H1 * b1 + 2**21) >> 22`` is the same filter, but this kernel truncates each
  product first): ``((H0 >> 4) * b0 >> 16) + ((H1 >> 4) * b1 >> 16) + 2 >> 2``, saturated to
  0..255;
* an exact 2x reduction in both directions is ``INTER_AREA``'s ``(a + b + c + d + 2) >> 2``,
  which the formulas above also give (all weights are 1024).

``tests/test_resize.py`` checks the result equals ``cv2.resize`` exactly on random and decoded
frames of many sizes (up and down); it was also checked equal to OpenCV 4.10 and 5.0 on every
column, the remainder after the SIMD blocks included. A build without this SIMD kernel (plain
scalar code) rounds once, ``(H0 * b0 + H1 * b1 + 2**21) >> 22``: about 1 value in 8 then differs
by one level (320x240 -> 171x128).

Two implementations compute it. OpenCV itself (``cv2.resize``; ~10x faster: 0.03 against 0.3 ms
per 320x240 frame here, ~40 % of C3D's decode-side CPU per clip) is used once a check on fixed
random frames, made at first use in each process, has found it equal to the reference below; a
build whose kernel rounds otherwise is not used (a warning says so). The reference
(`resize_linear_uint8_reference`: numpy, computes only the requested window) runs otherwise:
without OpenCV, for outputs of 65,536 pixels or more (where cv::resize would use OpenCV's
thread pool, which is not fork-safe and would compete with the decode workers), or when
``C3DFEAT_RESIZE=numpy``. ``C3DFEAT_RESIZE=opencv`` makes a missing or failing OpenCV an error.
"""
from __future__ import annotations

import os
import threading
import warnings
from typing import Any, Optional, Tuple

import numpy as np
import torch

from c3dfeat.errors import C3DFeatWarning, ConfigError

__all__ = ["opencv_linear_coefficients", "resize_linear_uint8", "resize_linear_uint8_reference", "resize_engine",
           "opencv_disagreement", "RESIZE_ENV"]

RESIZE_ENV = "C3DFEAT_RESIZE"  # auto (default) | opencv | numpy
# cv::resize splits its output into dst.total() / 2**16 stripes: below this it runs in the calling thread.
_OPENCV_MAX_PIXELS = 1 << 16
# (source (H, W), output (H, W)) of the start-up check: down, up, exact 2x (OpenCV's area path),
# near and exact identity, and C3D's own sizes.
_CHECKS = (((240, 320), (128, 171)), ((360, 480), (128, 171)), ((720, 1280), (128, 171)),
           ((97, 131), (128, 171)), ((256, 342), (128, 171)), ((130, 173), (128, 171)),
           ((128, 171), (128, 171)), ((61, 300), (50, 77)))

_COEF_BITS = 11  # INTER_RESIZE_COEF_BITS
_COEF_SCALE = 1 << _COEF_BITS


def opencv_linear_coefficients(src: int, dst: int, clamp_weights: bool) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per output index: (first source index, weight of it, weight of the next one), int64 and
    int32 as OpenCV computes them. `clamp_weights`: the column rule (index and weight clamped at
    the borders); rows keep the raw index (their two source rows are clamped by the caller)."""
    scale = 1.0 / (dst / src)  # OpenCV: scale_x = 1. / inv_scale_x, inv_scale_x = (double)dsize/ssize
    f = ((np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    s = np.floor(f).astype(np.int64)
    f = f - s.astype(np.float32)  # float32 arithmetic, as `fx -= sx`
    if clamp_weights:
        low = s < 0
        s[low], f[low] = 0, 0
        high = s >= src - 1
        s[high], f[high] = src - 1, 0
    one = np.float32(1)
    coef = np.float32(_COEF_SCALE)
    w0 = np.rint((one - f) * coef).astype(np.int32)  # saturate_cast<short>(cbuf[k] * 2048): cvRound
    w1 = np.rint(f * coef).astype(np.int32)
    return s, w0, w1


def resize_linear_uint8(
    frames: torch.Tensor,
    size: Tuple[int, int],
    rows: Tuple[int, int] | None = None,
    cols: Tuple[int, int] | None = None,
) -> torch.Tensor:
    """uint8 (n, H, W, C) → uint8 (n, rows, cols, C): the window ``rows`` x ``cols`` (output
    index ranges, default all) of ``cv2.resize(frame, (size[1], size[0]), INTER_LINEAR)`` of each
    frame, bit for bit (see the module docstring: OpenCV itself when checked, else the reference)."""
    _check_frames(frames)
    dh, dw = size
    cv2 = _checked_opencv() if dh * dw < _OPENCV_MAX_PIXELS and frames.shape[3] == 3 else None
    if cv2 is None:
        return resize_linear_uint8_reference(frames, size, rows, cols)
    r0, r1 = rows if rows is not None else (0, dh)
    c0, c1 = cols if cols is not None else (0, dw)
    src = frames.cpu().numpy()
    out = np.empty((src.shape[0], r1 - r0, c1 - c0, 3), dtype=np.uint8)
    full = np.empty((dh, dw, 3), dtype=np.uint8)
    for k in range(src.shape[0]):
        cv2.resize(np.ascontiguousarray(src[k]), (dw, dh), dst=full, interpolation=cv2.INTER_LINEAR)
        out[k] = full[r0:r1, c0:c1]
    return torch.from_numpy(out).to(frames.device)


def resize_engine() -> str:
    """What computes the resize in this process: "opencv" (checked equal) or "numpy" (the reference)."""
    return "numpy" if _checked_opencv() is None else "opencv"


def _check_frames(frames: torch.Tensor) -> None:
    if frames.dtype != torch.uint8 or frames.ndim != 4:
        raise ValueError(f"frames must be uint8 (n, H, W, C), got {frames.dtype} {tuple(frames.shape)}")


_engine_lock = threading.Lock()
_engine: Any = None  # the cv2 module once checked, False for the reference; decided once per process


def _checked_opencv() -> Optional[Any]:
    global _engine
    if _engine is None:
        with _engine_lock:  # decode threads may get here together
            if _engine is None:
                _engine = _choose_engine()
    return _engine or None


def _choose_engine() -> Any:
    choice = os.environ.get(RESIZE_ENV, "").strip().lower() or "auto"
    if choice not in ("auto", "opencv", "numpy"):
        raise ConfigError(f"{RESIZE_ENV}={choice!r}: use auto, opencv or numpy (or leave it unset)")
    if choice == "numpy":
        return False
    try:
        import cv2
    except (ImportError, OSError, AttributeError, RuntimeError) as e:  # absent, or built for another numpy / libGL
        if choice == "opencv":
            raise ConfigError(f"{RESIZE_ENV}=opencv, but OpenCV does not import ({e}): "
                              "pip install opencv-python-headless, or unset it") from None
        return False
    problem = opencv_disagreement(cv2)
    if not problem:
        return cv2
    if choice == "opencv":
        raise ConfigError(f"{RESIZE_ENV}=opencv, but {problem}; unset it to use c3dfeat's own resize")
    warnings.warn(f"{problem}: the Caffe models' resize uses c3dfeat's own implementation instead (same "
                  f"result, slower); set {RESIZE_ENV}=numpy to choose it without this check", C3DFeatWarning,
                  stacklevel=3)
    return False


def opencv_disagreement(cv2: Any) -> str:
    """"" if `cv2.resize` equals the reference on the start-up check's frames, else what differs."""
    rng = np.random.default_rng(20261130)
    for (h, w), (dh, dw) in _CHECKS:
        frame = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        want = resize_linear_uint8_reference(torch.from_numpy(frame[None]), (dh, dw)).numpy()[0]
        got = cv2.resize(frame, (dw, dh), interpolation=cv2.INTER_LINEAR)
        if got.shape != want.shape or not np.array_equal(got, want):
            n = int((got != want).sum()) if got.shape == want.shape else want.size
            return (f"OpenCV {getattr(cv2, '__version__', '?')}'s resize differs from the Caffe models' "
                    f"({h}x{w} -> {dh}x{dw}: {n} of {want.size} values)")
    return ""


def resize_linear_uint8_reference(
    frames: torch.Tensor,
    size: Tuple[int, int],
    rows: Tuple[int, int] | None = None,
    cols: Tuple[int, int] | None = None,
) -> torch.Tensor:
    """:func:`resize_linear_uint8` in numpy, computing only the window (the module docstring's
    formulas; no OpenCV needed)."""
    _check_frames(frames)
    n, h, w, c = frames.shape
    dh, dw = size
    r0, r1 = rows if rows is not None else (0, dh)
    c0, c1 = cols if cols is not None else (0, dw)
    sy, b0, b1 = (a[r0:r1] for a in opencv_linear_coefficients(h, dh, clamp_weights=False))
    sx, a0, a1 = (a[c0:c1] for a in opencv_linear_coefficients(w, dw, clamp_weights=True))
    y0 = np.clip(sy, 0, h - 1)
    y1 = np.clip(sy + 1, 0, h - 1)
    x1 = np.minimum(sx + 1, w - 1)  # where sx = w - 1 its weight a1 is 0

    # Gathers on uint8 (numpy's take is much faster than torch's index_select here), integer
    # arithmetic in numpy (torch's broadcast int32 kernels are several times slower).
    src = frames.cpu().numpy().reshape(n, h * w, c)
    wa0, wa1 = a0.reshape(1, 1, -1, 1), a1.reshape(1, 1, -1, 1)

    def horizontal(source_rows: np.ndarray, weight: np.ndarray) -> np.ndarray:
        # exact int32 p[sx] * a0 + p[sx + 1] * a1, then the kernel's (>> 4) * b >> 16
        base = source_rows[:, None] * w
        acc = np.take(src, base + sx[None, :], axis=1) * wa0  # uint8 * int32 -> int32
        acc += np.take(src, base + x1[None, :], axis=1) * wa1
        acc >>= 4
        acc *= weight.reshape(1, -1, 1, 1)
        acc >>= 16
        return acc

    acc = horizontal(y0, b0)
    acc += horizontal(y1, b1)
    acc += 2
    acc >>= 2  # at most (2 * 1020 * 1024 / 2048 + 2) >> 2 = 255: no saturation needed
    out = torch.from_numpy(acc.astype(np.uint8))
    return out.to(frames.device)
