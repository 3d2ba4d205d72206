"""Decode one video once into messages: VideoStart, ClipReady..., then VideoEnd or VideoFailed.

`decode_video` is a plain generator (no threads, no queues), so the in-process scheduler runs it
in its decode threads and the Ray engine runs it inside a task. It opens the video once, samples
every model's clips, and walks the union of the needed frame indices in windows of ~8 MiB of
decoded frames: each window is decoded once, each model's per-frame transform runs on the frames
*that model* needs, every clip whose frames are all there is emitted, and frames no later clip
uses are dropped. Nothing scales with the video's length.

Failure policy (docs/extract.md): only errors of *reading the video* — `VideoDecodeError` (the
readers map every PyAV / decord / torchcodec error to it) and `OSError` — make a VideoFailed message. Any
other exception is a bug in our code or torch and propagates to the caller with its traceback.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Generator, Iterator, List, Optional, Protocol, Sequence, Tuple, Type, Union

import numpy as np
import torch

from c3dfeat.errors import ConfigError, VideoDecodeError
from c3dfeat.pipeline.plan import PreparedModel
from c3dfeat.sampling import Clip, sample_clips
from c3dfeat.store import VideoRecord

__all__ = [
    "DECODE_ERRORS",
    "VideoTask",
    "VideoStart",
    "ClipReady",
    "VideoEnd",
    "VideoFailed",
    "DecodeMessage",
    "decode_video",
    "stream_clips",
    "failure_reason",
]

# What counts as "this video cannot be read" (recorded as failed; the run goes on).
DECODE_ERRORS: Tuple[Type[BaseException], ...] = (VideoDecodeError, OSError)
WINDOW_BYTES = 8 << 20  # decoded frames per window: ~8 MiB (8 frames of 720p min, 12 of 640x360)
TRANSFORM_CHUNK = 8  # frames per ClipTransform.frames call (float32 copies are 4x the uint8)


@dataclass(frozen=True)
class VideoTask:
    """One video to extract. `seq`: its position in this run's work list (commit order);
    `input_index`: its position in the full, unsharded input list (merge orders by it)."""

    seq: int
    id: str
    path: Path
    label: str = ""
    input_index: int = -1


@dataclass
class VideoStart:
    """The header is read and the clips are planned (per model, in the models' order)."""

    seq: int
    record: VideoRecord
    clips: List[List[Clip]]


@dataclass
class ClipReady:
    """One transformed clip of model `model`: (num_crops, 3, T, crop, crop) float32.

    `release`, when set, must be called exactly once when `tensor` is no longer read: the tensor
    is then a decode process's shared buffer, lent (pipeline.procdecode)."""

    seq: int
    model: int
    clip: int
    tensor: torch.Tensor
    release: Optional[Callable[[], None]] = None


@dataclass
class VideoEnd:
    """Every clip of the video was emitted."""

    seq: int


@dataclass
class VideoFailed:
    """The video cannot be read; `record.status` is "failed" and `error` says why."""

    seq: int
    record: VideoRecord
    error: str


DecodeMessage = Union[VideoStart, ClipReady, VideoEnd, VideoFailed]


class FrameReader(Protocol):
    """What stream_clips needs of a video reader (c3dfeat.video.VideoReader has it)."""

    height: int
    width: int

    def get_frames(self, indices: Sequence[int]) -> np.ndarray: ...  # uint8 (n, H, W, 3) RGB


def failure_reason(e: BaseException) -> str:
    """One line for the file's error column."""
    s = str(e) or type(e).__name__
    return s if isinstance(e, VideoDecodeError) else f"{type(e).__name__}: {s}"


def decode_video(
    task: VideoTask, models: Sequence[PreparedModel], decoder: str = "pyav", *, threads: int = 1,
    device: str = "cpu", clip_buffer: Optional[Callable[[int], torch.Tensor]] = None,
) -> Generator[DecodeMessage, None, None]:
    """Messages for one video: VideoStart, ClipReady (all models, each model's clips in order),
    then VideoEnd — or VideoFailed at the point reading failed (clips already emitted are then
    worthless). Bugs raise. Closing the generator early closes the video.

    `device` = "cuda[:N]" decodes on the GPU (torchcodec only, checked beforehand by
    c3dfeat.video.check_decode_device); the frames still come to the host, where the transforms
    run, so the clips are CPU tensors either way. `clip_buffer`: see `stream_clips` (a decode
    process computes each clip straight into its shared buffer)."""
    from c3dfeat.video import open_video

    rec = VideoRecord(id=task.id, path=str(task.path), label=task.label, input_index=task.input_index)
    try:
        rec.size_bytes = task.path.stat().st_size
    except OSError:
        pass  # open_video says why, below
    try:
        with open_video(task.path, backend=decoder, threads=threads, device=device) as reader:
            rec.num_frames, rec.fps = int(reader.num_frames), float(reader.fps)
            rec.duration, rec.height, rec.width = float(reader.duration), int(reader.height), int(reader.width)
            try:
                clips = [sample_clips(reader.num_frames, reader.fps, m.sampling) for m in models]
            except ConfigError as e:  # a property of this video (e.g. --fps without a frame rate)
                raise VideoDecodeError(f"{task.path}: {e}") from e
            yield VideoStart(task.seq, rec, clips)
            for m, k, tensor in stream_clips(reader, models, clips, clip_buffer):
                yield ClipReady(task.seq, m, k, tensor)
    except DECODE_ERRORS as e:
        rec.status, rec.error = "failed", failure_reason(e)
        yield VideoFailed(task.seq, rec, rec.error)
        return
    yield VideoEnd(task.seq)


def stream_clips(
    reader: FrameReader, models: Sequence[PreparedModel], clips: Sequence[List[Clip]],
    clip_buffer: Optional[Callable[[int], torch.Tensor]] = None,
) -> Iterator[Tuple[int, int, torch.Tensor]]:
    """(model, clip index, tensor) for every clip, decoding each needed frame once, in windows.
    `clip_buffer(model)`, when given, returns the tensor the next clip of that model is computed
    into (and yielded as), called just before it is computed."""
    needed = [{i for c in cl for i in c.indices} for cl in clips]
    union = sorted(set().union(*needed))
    frame_bytes = max(1, int(reader.height) * int(reader.width) * 3)
    window = int(min(32, max(8, WINDOW_BYTES // frame_bytes)))
    # Per model: transformed frames kept (`caches`, frame index of each in `cache_idx`), next clip.
    caches: List[Optional[torch.Tensor]] = [None] * len(models)
    cache_idx: List[List[int]] = [[] for _ in models]
    nxt = [0] * len(models)
    for w0 in range(0, len(union), window):
        idx = union[w0 : w0 + window]
        frames = reader.get_frames(idx)
        last = idx[-1]
        for m, model in enumerate(models):
            sel = [k for k, i in enumerate(idx) if i in needed[m]]
            if sel:
                # A few frames at a time (per-frame ops: the same numbers as one call).
                new = torch.cat([model.transform.frames(frames[sel[j : j + TRANSFORM_CHUNK]])
                                 for j in range(0, len(sel), TRANSFORM_CHUNK)], dim=2)
                cached = caches[m]
                caches[m] = new if cached is None else torch.cat([cached, new], dim=2)
                cache_idx[m].extend(idx[k] for k in sel)
            cl = clips[m]
            pos: Dict[int, int] = {i: p for p, i in enumerate(cache_idx[m])}
            while nxt[m] < len(cl) and max(cl[nxt[m]].indices) <= last:
                c = cl[nxt[m]]
                cache = caches[m]
                assert cache is not None  # the clip's frames are all at or before `last`
                positions = [pos[i] for i in c.indices]
                if clip_buffer is None:
                    yield m, nxt[m], model.transform.clip(cache, positions).contiguous()
                else:
                    yield m, nxt[m], model.transform.clip(cache, positions, out=clip_buffer(m))
                nxt[m] += 1
            _drop_unused(m, cl, nxt, caches, cache_idx)
        del frames
    for m, cl in enumerate(clips):
        if nxt[m] != len(cl):  # a clip whose frames were never reached: a bug, not bad input
            raise RuntimeError(f"internal error: {len(cl) - nxt[m]} clips of model {models[m].key} not emitted")


def _drop_unused(
    m: int, clips: List[Clip], nxt: List[int], caches: List[Optional[torch.Tensor]], cache_idx: List[List[int]]
) -> None:
    """Drop the cached frames of model `m` that no remaining clip uses."""
    if nxt[m] < len(clips):
        lo = min(clips[nxt[m]].indices)
        k = 0
        while k < len(cache_idx[m]) and cache_idx[m][k] < lo:
            k += 1
    else:
        k = len(cache_idx[m])
    if k:
        cache_idx[m] = cache_idx[m][k:]
        cache = caches[m]
        caches[m] = cache[:, :, k:].clone() if cache_idx[m] and cache is not None else None
