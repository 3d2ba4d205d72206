"""What a run reports: the final ExtractReport and the Progress events on the way."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Tuple

__all__ = ["ExtractReport", "Progress", "PROGRESS_EVENTS"]

# "start": a video's header is read and its clips planned; "batch": a model batch finished;
# "commit": a video (ok or failed) is in the file.
PROGRESS_EVENTS = ("start", "batch", "commit")


@dataclass
class ExtractReport:
    """What a run did."""

    output: Path
    total: int = 0  # videos in this run's input (after --shard)
    skipped: int = 0  # already in the file (resume)
    ok: int = 0
    failed: List[Tuple[str, str]] = field(default_factory=list)  # (id, reason) of this run
    # (id, reason) of this run's inputs that failed in an earlier, interrupted run of it
    failed_before: List[Tuple[str, str]] = field(default_factory=list)
    clips: int = 0  # clips computed (every model's clips count)
    seconds: float = 0.0  # whole call
    run_seconds: float = 0.0  # decode + inference + commits (without model building / input listing)
    random_init: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    device: str = "cpu"
    dtype: str = "fp32"
    batch_size: int = 0
    engine: str = "local"

    @property
    def any_failed(self) -> bool:
        """True when any input of this run is recorded as failed (now or by an earlier run)."""
        return bool(self.failed or self.failed_before)

    @property
    def clips_per_second(self) -> float:
        """Clips per second of the pipeline itself (decode, transform, model, commit)."""
        t = self.run_seconds or self.seconds
        return self.clips / t if t > 0 else 0.0


@dataclass
class Progress:
    """Passed to the `progress` callback (from the main thread) on every event.

    `clips_planned` sums the clips (all models) of the videos whose header has been read, less
    the clips a failed video will never have; `videos_done` counts skipped (resumed) videos too.
    """

    videos_done: int
    videos_total: int
    failed: int
    clips_done: int
    clips_planned: int
    elapsed: float
    current: str = ""  # id of the video the event is about
    event: str = "commit"  # one of PROGRESS_EVENTS

    @property
    def clips_per_second(self) -> float:
        return self.clips_done / self.elapsed if self.elapsed > 0 else 0.0
