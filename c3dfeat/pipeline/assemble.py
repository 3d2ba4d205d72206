"""Per-video feature buffers → store records, committed strictly in input order, in groups."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np

from c3dfeat.pipeline.decode import VideoFailed, VideoStart
from c3dfeat.pipeline.plan import PreparedModel
from c3dfeat.sampling import Clip
from c3dfeat.store import ClipTable, ModelResult, VideoRecord

__all__ = ["VideoAssembler", "ReadyVideo", "CommitGroup", "clip_table", "COMMIT_VIDEOS", "COMMIT_SECONDS"]

# One writer call (an HDF5 commit: ~20 appends and two flushes, 2-4 ms of CPU here) costs about the same
# for one video or many, and the single writer is what caps a fast run: with one commit per video
# the Ray driver wrote 74 videos/s, with groups 607 (docs/scale.md). Both engines group.
COMMIT_VIDEOS = 64  # finished videos written by one writer call, at most
COMMIT_SECONDS = 1.0  # ... or once the oldest of them has waited this long


def clip_table(clips: Sequence[Clip], fps: float, clip_len: int) -> ClipTable:
    """The clip rows of one video for one model."""
    sf = np.array([c.start_frame for c in clips], np.int64)
    return ClipTable(
        start_frame=sf,
        start_time=sf / fps if fps and fps > 0 else np.full(len(clips), np.nan),
        padded=np.array([c.padded for c in clips], np.int32),
        frame_indices=np.array([c.indices for c in clips], np.int64).reshape(len(clips), clip_len),
    )


@dataclass
class ReadyVideo:
    """A video ready for `writer.add_video(record, results)`; `results` is {} when it failed."""

    seq: int
    record: VideoRecord
    results: Dict[str, ModelResult]

    @property
    def failed(self) -> bool:
        return self.record.status == "failed"


@dataclass
class _Video:
    record: Optional[VideoRecord] = None
    clips: Optional[List[List[Clip]]] = None
    feats: Optional[List[Dict[str, np.ndarray]]] = None  # per model: layer -> (n, [crops], D)
    remaining: int = 0  # clips not yet computed
    decoded: bool = False
    failed: bool = False


class VideoAssembler:
    """Collects each video's clip features as batches finish and hands out finished videos in
    `seq` order (0, 1, 2, ...), so a resumed run equals an uninterrupted one."""

    def __init__(self, models: Sequence[PreparedModel], num_videos: int) -> None:
        self.models = list(models)
        self.num_videos = num_videos
        self.head = 0  # next seq to hand out
        self._videos: Dict[int, _Video] = {}

    def start(self, msg: VideoStart) -> int:
        """Allocate the video's buffers; returns its clip count (all models)."""
        v = self._videos.setdefault(msg.seq, _Video())
        v.record, v.clips = msg.record, msg.clips
        v.remaining = sum(len(c) for c in msg.clips)
        v.feats = []
        for m, model in enumerate(self.models):
            n = len(msg.clips[m])
            v.feats.append({layer: np.empty((n,) + model.feature_shape(layer), np.float32) for layer in model.layers})
        return v.remaining

    def fail(self, msg: VideoFailed) -> int:
        """Mark the video failed; returns how many of its planned clips will never be computed."""
        v = self._videos.setdefault(msg.seq, _Video())
        lost = v.remaining
        v.record, v.failed, v.feats, v.remaining = msg.record, True, None, 0
        return lost

    def end(self, seq: int) -> None:
        """Every clip of the video was emitted by the decoder."""
        self._videos[seq].decoded = True

    def is_failed(self, seq: int) -> bool:
        v = self._videos.get(seq)
        return v is not None and v.failed

    def put(self, seq: int, model: int, clip: int, features: Dict[str, np.ndarray]) -> bool:
        """Store one clip's features; False (ignored) if the video failed meanwhile."""
        v = self._videos.get(seq)
        if v is None or v.failed or v.feats is None:
            return False
        for layer, y in features.items():
            v.feats[model][layer][clip] = y
        v.remaining -= 1
        return True

    @property
    def head_decoded(self) -> bool:
        """The next video to commit is fully decoded (only its batches can hold it back)."""
        v = self._videos.get(self.head)
        return v is not None and (v.decoded or v.failed)

    @property
    def finished(self) -> bool:
        return self.head >= self.num_videos

    def pop_ready(self) -> Iterator[ReadyVideo]:
        """The finished videos at the head, in order (each handed out once)."""
        while self.head in self._videos:
            v = self._videos[self.head]
            if not v.failed and not (v.decoded and v.remaining == 0):
                return
            assert v.record is not None
            del self._videos[self.head]
            seq = self.head
            self.head += 1
            if v.failed:
                yield ReadyVideo(seq, v.record, {})
                continue
            assert v.clips is not None and v.feats is not None
            fps = v.record.fps
            results = {
                model.key: ModelResult(clip_table(v.clips[m], fps, model.sampling.clip_len), v.feats[m])
                for m, model in enumerate(self.models)
            }
            yield ReadyVideo(seq, v.record, results)


class CommitGroup:
    """Finished videos waiting to be written together: `due()` once `max_videos` wait (at most
    COMMIT_VIDEOS) or the oldest has waited `max_seconds` (COMMIT_SECONDS). What waits is lost
    if the process dies (a rerun redoes it), so the time bound is also the most finished work a
    crash can cost."""

    def __init__(self, max_videos: Optional[int] = None, max_seconds: Optional[float] = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_videos = COMMIT_VIDEOS if max_videos is None else max(1, min(COMMIT_VIDEOS, max_videos))
        self.max_seconds = COMMIT_SECONDS if max_seconds is None else max_seconds
        self._clock = clock
        self.videos: List[ReadyVideo] = []
        self._oldest = 0.0

    def __len__(self) -> int:
        return len(self.videos)

    def add(self, video: ReadyVideo) -> None:
        if not self.videos:
            self._oldest = self._clock()
        self.videos.append(video)

    def due(self) -> bool:
        return bool(self.videos) and (len(self.videos) >= self.max_videos or self.seconds_left() == 0.0)

    def seconds_left(self) -> Optional[float]:
        """Until the oldest waiting video is due; None when none waits."""
        if not self.videos:
            return None
        return max(0.0, self._oldest + self.max_seconds - self._clock())

    def take(self) -> List[ReadyVideo]:
        videos, self.videos = self.videos, []
        return videos
