"""What `c3dfeat extract` shows while it runs: a live line on a terminal, a log line every 30 s else.

The pipeline calls the display with a `c3dfeat.pipeline.Progress` when a video's clips are
planned ("start"), after every model batch ("batch") and after every commit ("commit"), so the
numbers move from the first batch on, not from the first committed video.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, TextIO

# Seconds between two plain progress lines when stderr is not a terminal (a log, a cluster job).
# A module attribute so that tests can shorten it.
LINE_INTERVAL_S = 30.0


@dataclass
class Snapshot:
    """The numbers every display shows, from one Progress event (plus the ETA of :class:`Tracker`)."""

    videos_done: int = 0
    videos_total: int = 0
    failed: int = 0
    clips_done: int = 0
    clips_planned: int = 0
    elapsed: float = 0.0
    current: str = ""
    clips_per_second: float = 0.0
    eta: Optional[float] = None  # seconds; None until a rate is known

    def line(self) -> str:
        """One plain line (logs) with every number."""
        eta = "?" if self.eta is None else _hms(self.eta)
        return (f"extract: {self.clips_done}/{self.clips_planned} clips, videos {self.videos_done}/"
                f"{self.videos_total}, {self.failed} failed, {self.clips_per_second:.2f} clips/s, "
                f"elapsed {_hms(self.elapsed)}, ETA {eta}" + (f", current {self.current}" if self.current else ""))


def _hms(seconds: float) -> str:
    s = int(round(max(0.0, seconds)))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class Tracker:
    """Turns the pipeline's Progress events into a :class:`Snapshot` with an ETA from clips.

    The ETA counts the clips still to compute: the planned ones not done yet, plus, for the
    videos whose headers have not been read, the mean number of clips of the planned videos.
    """

    def __init__(self) -> None:
        self.started = 0  # videos whose clips were planned in this run ("start" events)
        self.committed = 0  # "commit" events
        self.events = 0
        self.last = Snapshot()

    def update(self, p: Any) -> Snapshot:
        event = p.event
        self.events += 1
        if event == "start":
            self.started += 1
        elif event == "commit":
            self.committed += 1
        s = _snapshot(p)
        in_flight = max(0, self.started - self.committed)
        unplanned = max(0, s.videos_total - s.videos_done - in_flight)
        mean_clips = s.clips_planned / self.started if self.started else 0.0
        remaining = max(0.0, s.clips_planned - s.clips_done) + unplanned * mean_clips
        if s.clips_per_second > 0:
            s.eta = remaining / s.clips_per_second
        elif s.videos_done >= s.videos_total:
            s.eta = 0.0
        self.last = s
        return s


def _snapshot(p: Any) -> Snapshot:
    return Snapshot(p.videos_done, p.videos_total, p.failed, p.clips_done, p.clips_planned,
                    p.elapsed, p.current, float(p.clips_per_second))


class LineDisplay:
    """Not a terminal: one plain line every `interval` seconds, and one at the end."""

    def __init__(self, stream: TextIO, interval: Optional[float] = None,
                 clock: Callable[[], float] = time.monotonic, what: str = "") -> None:
        self.stream = stream
        self.interval = LINE_INTERVAL_S if interval is None else interval
        self.clock = clock
        self.tracker = Tracker()
        self.next_line = clock() + self.interval
        if what:  # the log shows at once that the run started, and what it writes
            print(f"extract: starting {what}", file=stream, flush=True)

    def __call__(self, p: Any) -> None:
        s = self.tracker.update(p)
        now = self.clock()
        if now >= self.next_line:
            self._write(s)
            self.next_line = now + self.interval

    def _write(self, s: Snapshot) -> None:
        print(s.line(), file=self.stream, flush=True)

    def close(self) -> None:
        if self.tracker.events:
            self._write(self.tracker.last)


class LiveDisplay:
    """A terminal: one live line (bar over clips, videos, failed, clips/s, ETA, current video).

    Until the first event (models loading, weights downloading with their own progress bar) a
    static "starting" line is shown; the live line starts with the first planned video.
    """

    def __init__(self, console: Any, what: str = "") -> None:
        self.console = console
        self.tracker = Tracker()
        self.live: Any = None
        console.print(f"[bold]extract[/bold] starting {what}", markup=True, highlight=False)

    def _render(self) -> Any:
        from rich.progress_bar import ProgressBar
        from rich.table import Table

        s = self.tracker.last
        grid = Table.grid(padding=(0, 1))
        eta = "?" if s.eta is None else _hms(s.eta)
        grid.add_row(
            "[bold]extract[/bold]",
            ProgressBar(total=max(s.clips_planned, 1), completed=s.clips_done, width=24),
            f"{s.clips_done}/{s.clips_planned} clips",
            f"videos {s.videos_done}/{s.videos_total}",
            f"[red]{s.failed} failed[/red]" if s.failed else "0 failed",
            f"{s.clips_per_second:.1f} clips/s",
            f"ETA {eta}",
        )
        if s.current:
            grid.add_row("", f"[dim]{s.current}[/dim]")
        return grid

    def __call__(self, p: Any) -> None:
        self.tracker.update(p)
        if self.live is None:
            from rich.live import Live

            self.live = Live(console=self.console, refresh_per_second=4, transient=False,
                             get_renderable=self._render)
            self.live.start()
        self.live.refresh()

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()


class NoDisplay:
    """--quiet: nothing."""

    def __call__(self, p: Any) -> None:
        pass

    def close(self) -> None:
        pass


def make_display(console: Any, quiet: bool, what: str = "") -> Any:
    """The display for this run: none (--quiet), live (a terminal) or plain lines (anything else)."""
    if quiet:
        return NoDisplay()
    if console.is_terminal:
        return LiveDisplay(console, what)
    return LineDisplay(console.file, what=what)
