"""Which frames make up each clip: pure functions of (frame count, native fps, config).

The rules, with worked examples, are in docs/sampling.md. In short:

* The *timeline* is the native frames 0..N-1, or, with ``fps=F``, the resampled frames
  j = 0..M-1 where resampled frame j shows native frame ``floor(j * native_fps / F)`` (the frame
  on screen at time j / F) and M counts every j whose instant lies inside the video
  (``j / F < N / native_fps``). No re-encoding: only indices are chosen.
* A clip is ``clip_len`` timeline positions ``s, s + frame_step, ...``; it spans
  ``span = (clip_len - 1) * frame_step + 1`` positions.
* Stride mode: starts 0, stride, 2·stride, ... for every clip that fits. If frames remain
  after the last full clip and the next start lies inside the video, ``tail="pad"`` adds that
  one clip, padded by repeating the last frame; ``tail="drop"`` leaves them out.
* ``num_clips=K``: K starts spread evenly over the valid range, ``round(k * (M - span) / (K - 1))``
  with halves rounded up (pytorchvideo's ``ConstantClipsPerVideoSampler`` rule: K = 1 starts at
  0); always exactly K clips.
* Every video with at least one frame yields at least one clip: a video shorter than one clip
  gives a single clip at 0, padded, whatever ``tail`` says.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, List, Literal, NamedTuple, Optional, Sequence, Tuple

from c3dfeat.errors import ConfigError

__all__ = ["Clip", "SamplingConfig", "sample_clips", "timeline", "frames_needed"]

# Guards floor() against binary fractions: 29.97 / 15 * 500 must give 999, not 998.
_EPS = 1e-6


class Clip(NamedTuple):
    """One clip: native frame indices in temporal order, and how many of them are padding.

    ``padded`` counts the trailing positions that repeat the last frame because the video ended.
    """

    start_frame: int
    indices: Tuple[int, ...]
    padded: int


@dataclass(frozen=True)
class SamplingConfig:
    """Clip sampling parameters (see the module docstring for the rules)."""

    clip_len: int
    frame_step: int = 1
    stride: int = 8
    num_clips: Optional[int] = None
    fps: Optional[float] = None
    tail: Literal["pad", "drop"] = "pad"

    def __post_init__(self) -> None:
        for name in ("clip_len", "frame_step", "stride"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"sampling: {name} must be a positive integer, got {v!r}")
        if self.num_clips is not None and (not isinstance(self.num_clips, int) or self.num_clips < 1):
            raise ConfigError(f"sampling: num_clips must be a positive integer or None, got {self.num_clips!r}")
        fps_ok = isinstance(self.fps, (int, float)) and self.fps > 0 and math.isfinite(self.fps)
        if self.fps is not None and not fps_ok:
            raise ConfigError(f"sampling: fps must be a positive number or None, got {self.fps!r}")
        if self.tail not in ("pad", "drop"):
            raise ConfigError(f"sampling: tail must be 'pad' or 'drop', got {self.tail!r}")

    @property
    def span(self) -> int:
        """Timeline positions one clip covers, first to last inclusive."""
        return (self.clip_len - 1) * self.frame_step + 1

    @classmethod
    def from_preprocessing(cls, pre: Any, **overrides: Any) -> "SamplingConfig":
        """Defaults from a model's `Preprocessing` (clip_len, frame_step, stride, fps).

        `overrides` whose value is None are ignored (so CLI options can be passed straight);
        ``fps=0`` means "no resampling" for a model whose spec resamples (torchvision: 15).
        """
        values = dict(clip_len=pre.clip_len, frame_step=pre.frame_step, stride=pre.stride, fps=pre.fps)
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"sampling: unknown option(s) {', '.join(sorted(unknown))}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        if values.get("fps") == 0:
            values["fps"] = None
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def timeline(num_frames: int, native_fps: float, fps: Optional[float]) -> List[int]:
    """Native frame index of each timeline position (identity when `fps` is None).

    Resampled frame j ↔ native ``floor(j * native_fps / fps + 1e-6)``, for every j with
    ``j / fps < num_frames / native_fps``. Upsampling (fps > native) repeats frames.
    """
    if num_frames <= 0:
        return []
    if fps is None:
        return list(range(num_frames))
    if not native_fps or native_fps <= 0 or not math.isfinite(native_fps):
        raise ConfigError(
            f"sampling: cannot resample to {fps} fps because the video's frame rate is unknown "
            f"({native_fps!r}); sample without --fps"
        )
    ratio = native_fps / fps
    count = math.ceil(num_frames / ratio - _EPS)  # j < N / ratio
    out = [min(int(math.floor(j * ratio + _EPS)), num_frames - 1) for j in range(count)]
    return out or [0]


def sample_clips(num_frames: int, native_fps: float, cfg: SamplingConfig) -> List[Clip]:
    """The clips of a video with `num_frames` frames at `native_fps` (docs/sampling.md)."""
    if num_frames <= 0:
        return []
    tl = timeline(num_frames, native_fps, cfg.fps)
    m, span = len(tl), cfg.span
    if cfg.num_clips is not None:
        k = cfg.num_clips
        last = max(m - span, 0)
        starts = [0] if k == 1 else [int(math.floor(i * last / (k - 1) + 0.5)) for i in range(k)]
    else:
        starts = list(range(0, m - span + 1, cfg.stride)) if m >= span else []
        if not starts:  # shorter than one clip: the one padded clip at 0, whatever `tail` says
            starts = [0]
        elif cfg.tail == "pad":
            nxt = starts[-1] + cfg.stride
            # Only when frames remain after the last full clip, and the next start is still
            # inside the video (with stride > span the gaps are deliberate).
            if starts[-1] + span < m and nxt < m:
                starts.append(nxt)
    clips = []
    for s in starts:
        pos = [s + i * cfg.frame_step for i in range(cfg.clip_len)]
        padded = sum(p >= m for p in pos)
        idx = tuple(tl[min(p, m - 1)] for p in pos)
        clips.append(Clip(idx[0], idx, padded))
    return clips


def frames_needed(clips: Sequence[Clip]) -> List[int]:
    """Sorted distinct native frame indices the clips use (what to decode)."""
    return sorted({i for c in clips for i in c.indices})
