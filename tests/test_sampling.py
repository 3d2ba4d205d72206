"""Golden clip counts and indices (worked out by hand in docs/sampling.md)."""
import pytest

from c3dfeat.errors import ConfigError
from c3dfeat.sampling import Clip, SamplingConfig, frames_needed, sample_clips, timeline

C3D = SamplingConfig(clip_len=16, frame_step=1, stride=8)


def r(a, b, step=1):
    return tuple(range(a, b, step))


def test_c3d_on_the_164_frame_ucf101_clip():
    clips = sample_clips(164, 25.0, C3D)
    assert [c.start_frame for c in clips] == list(range(0, 153, 8))  # 0, 8, ..., 152
    assert len(clips) == 20
    assert all(c.padded == 0 and c.indices == r(c.start_frame, c.start_frame + 16) for c in clips[:19])
    # 144..159 is the last full clip; 160..163 remain -> one clip at 152, 4 frames repeated
    assert clips[-1] == Clip(152, r(152, 164) + (163,) * 4, 4)
    dropped = sample_clips(164, 25.0, SamplingConfig(16, 1, 8, tail="drop"))
    assert len(dropped) == 19 and dropped[-1].start_frame == 144


def test_res3d_8x2():
    clips = sample_clips(164, 25.0, SamplingConfig(clip_len=8, frame_step=2, stride=8))
    assert clips[0] == Clip(0, (0, 2, 4, 6, 8, 10, 12, 14), 0)
    assert clips[18] == Clip(144, (144, 146, 148, 150, 152, 154, 156, 158), 0)  # spans 15 frames
    assert clips[19] == Clip(152, (152, 154, 156, 158, 160, 162, 163, 163), 2)
    assert len(clips) == 20


def test_fps_15_on_a_30fps_video():
    cfg = SamplingConfig(16, 1, 8, fps=15)
    assert timeline(60, 30.0, 15) == list(range(0, 60, 2))
    clips = sample_clips(60, 30.0, cfg)
    assert clips[0] == Clip(0, r(0, 32, 2), 0)
    assert clips[1] == Clip(16, r(16, 48, 2), 0)  # stride 8 on the 15 fps timeline = 16 native frames
    assert clips[2] == Clip(32, r(32, 60, 2) + (58, 58), 2)
    assert len(clips) == 3


def test_fps_non_integer_ratios():
    # 25 -> 15 fps: native floor(j * 5/3) for every j with j/15 < 10/25
    assert timeline(10, 25.0, 15) == [0, 1, 3, 5, 6, 8]
    # 29.97 -> 9.99 is a ratio of 3 up to binary rounding; the epsilon keeps 3*j exact
    assert timeline(30, 29.97, 9.99) == list(range(0, 30, 3))
    tl = timeline(1000, 29.97, 15)
    assert len(tl) == 501 and tl[-1] == 999  # ceil(1000 * 15 / 29.97) = 501 instants
    # upsampling repeats frames
    assert timeline(5, 15.0, 30) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    with pytest.raises(ConfigError, match="frame rate is unknown"):
        timeline(10, 0.0, 15)


def test_short_video_yields_one_padded_clip_whatever_tail_says():
    for tail in ("pad", "drop"):
        clips = sample_clips(10, 30.0, SamplingConfig(16, 1, 8, tail=tail))
        assert clips == [Clip(0, r(0, 10) + (9,) * 6, 6)]
    assert sample_clips(1, 30.0, C3D) == [Clip(0, (0,) * 16, 15)]
    assert sample_clips(0, 30.0, C3D) == []


def test_tail_only_when_frames_remain():
    assert [c.start_frame for c in sample_clips(24, 30.0, C3D)] == [0, 8]  # 8..23 ends the video
    clips = sample_clips(25, 30.0, C3D)
    assert [c.start_frame for c in clips] == [0, 8, 16] and clips[-1].padded == 7


def test_stride_longer_than_clip():
    cfg = SamplingConfig(16, 1, 32)
    assert [(c.start_frame, c.padded) for c in sample_clips(70, 30.0, cfg)] == [(0, 0), (32, 0), (64, 10)]
    # next start 64 lies beyond a 50-frame video: no tail clip (the gap is deliberate)
    assert [c.start_frame for c in sample_clips(50, 30.0, cfg)] == [0, 32]


def test_num_clips_uniform():
    cfg = SamplingConfig(16, 1, 8, num_clips=5)
    clips = sample_clips(164, 25.0, cfg)
    assert [c.start_frame for c in clips] == [0, 37, 74, 111, 148]  # round(k * 148 / 4)
    assert all(c.padded == 0 for c in clips)
    assert [c.start_frame for c in sample_clips(164, 25.0, SamplingConfig(16, num_clips=1))] == [0]
    # 2 clips over 0..148 -> 0 and 148; 4 clips over 0..9 -> 0, 3, 6, 9 (3.0, 6.0 exact)
    assert [c.start_frame for c in sample_clips(164, 25.0, SamplingConfig(16, num_clips=2))] == [0, 148]
    assert [c.start_frame for c in sample_clips(25, 25.0, SamplingConfig(16, num_clips=4))] == [0, 3, 6, 9]
    # halves round up: 3 clips over 0..3 -> 0, 1.5 -> 2, 3
    assert [c.start_frame for c in sample_clips(19, 25.0, SamplingConfig(16, num_clips=3))] == [0, 2, 3]
    # too short: still exactly N clips, all at 0 and padded
    short = sample_clips(10, 25.0, SamplingConfig(16, num_clips=3))
    assert len(short) == 3 and all(c == Clip(0, r(0, 10) + (9,) * 6, 6) for c in short)


def test_num_clips_on_resampled_timeline():
    cfg = SamplingConfig(4, 1, 8, num_clips=2, fps=10)
    # 30 fps, 30 frames -> timeline 0, 3, ..., 27 (10 positions); starts 0 and 6 -> native 0 and 18
    clips = sample_clips(30, 30.0, cfg)
    assert clips == [Clip(0, (0, 3, 6, 9), 0), Clip(18, (18, 21, 24, 27), 0)]


def test_frames_needed():
    clips = sample_clips(30, 30.0, SamplingConfig(8, 2, 8))
    assert frames_needed(clips) == sorted({i for c in clips for i in c.indices})
    assert frames_needed(clips)[:3] == [0, 2, 4]


def test_from_preprocessing_and_overrides():
    from c3dfeat import get_spec

    pre = get_spec("c3d").preprocessing
    assert SamplingConfig.from_preprocessing(pre) == SamplingConfig(16, 1, 8, None, None, "pad")
    cfg = SamplingConfig.from_preprocessing(pre, stride=16, num_clips=None, fps=None, tail="drop")
    assert (cfg.stride, cfg.tail, cfg.clip_len) == (16, "drop", 16)
    tv = get_spec("r2plus1d_18").preprocessing
    assert SamplingConfig.from_preprocessing(tv).fps == tv.fps == 15
    assert SamplingConfig.from_preprocessing(tv, fps=0).fps is None  # --fps 0: native rate
    assert SamplingConfig.from_preprocessing(tv, fps=None).fps == 15
    with pytest.raises(ConfigError, match="unknown option"):
        SamplingConfig.from_preprocessing(pre, strde=3)
    assert SamplingConfig(16).to_dict()["clip_len"] == 16


@pytest.mark.parametrize(
    "kwargs",
    [dict(clip_len=0), dict(clip_len=16, stride=0), dict(clip_len=16, frame_step=-1), dict(clip_len=16, tail="keep"),
     dict(clip_len=16, fps=0), dict(clip_len=16, num_clips=0), dict(clip_len=2.5)],
)
def test_invalid_configs(kwargs):
    with pytest.raises(ConfigError):
        SamplingConfig(**kwargs)


def test_sampling_on_a_synthetic_video_decodes_the_chosen_frames(tmp_path):
    """End to end: the indices chosen by --fps 15 on a 30 fps file are the frames decoded."""
    from c3dfeat.video import open_video
    from tests.synth import frame_index, make_video

    p = make_video(tmp_path / "v.mp4", 40, size=(32, 32), fps=30)
    with open_video(p, "pyav") as v:
        clips = sample_clips(v.num_frames, v.fps, SamplingConfig(8, 1, 8, fps=15))
        assert [c.indices for c in clips] == [r(0, 16, 2), r(16, 32, 2), r(32, 40, 2) + (38, 38, 38, 38)]
        for c in clips:
            assert tuple(frame_index(f) for f in v.get_frames(c.indices)) == c.indices
