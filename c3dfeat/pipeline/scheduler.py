"""The in-process engine: decode threads feed one main thread that batches, runs and commits.

    scheduler = LocalScheduler(tasks, models, writer, report, decoder="pyav", batch_size=4,
                               workers=2, device=torch.device("cpu"), dtype="fp32")
    scheduler.run()

Steps, each a method:

* **decode** (`_decode_worker`, `workers` threads): take the next video (`claim_order`), run
  :func:`~c3dfeat.pipeline.decode.decode_video` — in the thread itself (`worker_kind="thread"`),
  or in that thread's forked decode process (`"process"`, :mod:`~c3dfeat.pipeline.procdecode`:
  no GIL shared between decoders; its clips are buffers lent until batched) — and put its
  messages on one bounded queue. At most
  `max_pending` videos are in flight past the last commit, so buffered features stay bounded.
* **batch** (`batch`): a clip goes into its model's :class:`BatchRunner`; a full batch runs.
* **run** (`run_batch`): the forward pass; the features are scattered to their videos.
* **commit** (`commit`): finished videos go to the writer strictly in input order, in groups
  (:class:`~c3dfeat.pipeline.assemble.CommitGroup`: up to 64 videos, or once the oldest has
  waited 1 s, sooner if the group would hold up the decoders); whatever waits is written when
  the run stops (Ctrl-C, SIGTERM, a bug), so only a killed process loses finished videos.

When the queue is empty the main thread runs a partial (zero-padded) batch only if the next
commit waits for it, gives back the lent clips of a decode process that has none left, then
blocks on the queue until a message comes or the waiting group falls due: no polling. Every
worker ends with a message
(done or crashed), so a bug in a worker always reaches the main thread, with its traceback.
"""
from __future__ import annotations

import collections
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Deque, Dict, Generator, List, Optional, Sequence, Tuple

import torch

from c3dfeat.pipeline.assemble import CommitGroup, ReadyVideo, VideoAssembler
from c3dfeat.pipeline.batching import BatchRunner, LaunchedBatch
from c3dfeat.pipeline.decode import ClipReady, VideoEnd, VideoFailed, VideoStart, VideoTask, decode_video
from c3dfeat.pipeline.plan import PreparedModel
from c3dfeat.pipeline.procdecode import DecodeProcess, close_all
from c3dfeat.pipeline.report import ExtractReport, Progress

__all__ = ["LocalScheduler"]

ClipKey = Tuple[int, int]  # (video seq, clip index)
SHUTDOWN_SECONDS = 30.0  # how long stopping waits for decode threads to notice


@dataclass
class _WorkerDone:
    pass


@dataclass
class _WorkerCrash:
    error: BaseException


class _Stopped(Exception):
    """Raised inside a decode thread when the run is stopping."""


def claim_order(tasks: Sequence[VideoTask], last: int) -> List[int]:
    """The order in which decoders take the videos: input order, except that the `last` ones
    (the scheduler: 2 per decoder) go largest file first. The run ends when the last video does:
    a large one taken last leaves the other decoders idle while one reads it (2 decoders on 8
    copies of the shared videos: one idle 0.16-0.21 s of a ~3.7 s run). Commits stay in input
    order."""
    order = list(range(len(tasks)))
    tail = order[len(order) - min(last, len(order)):]
    order[len(order) - len(tail):] = sorted(tail, key=lambda seq: -_file_size(tasks[seq].path))
    return order


def _file_size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except (OSError, TypeError, ValueError):
        return 0  # unreadable or not a file: the decoder reports it, in its turn


class LocalScheduler:
    """Runs `tasks` (seq 0..n-1, input order) through `models` into `writer` (see module doc)."""

    def __init__(
        self,
        tasks: Sequence[VideoTask],
        models: Sequence[PreparedModel],
        writer: Any,
        report: ExtractReport,
        *,
        decoder: str = "pyav",
        batch_size: int = 4,
        workers: int = 2,
        worker_kind: str = "thread",
        decode_device: str = "cpu",
        device: Optional[torch.device] = None,
        dtype: str = "fp32",
        max_pending: Optional[int] = None,
        progress: Optional[Callable[[Progress], None]] = None,
        t0: Optional[float] = None,
    ) -> None:
        if [t.seq for t in tasks] != list(range(len(tasks))):
            raise ValueError("tasks must be numbered 0..n-1 in commit order")
        self.tasks = list(tasks)
        self.models = list(models)
        self.writer = writer
        self.report = report
        self.decoder = decoder
        self.workers = workers
        if worker_kind not in ("thread", "process"):
            raise ValueError(f"worker_kind must be 'thread' or 'process' (resolved), got {worker_kind!r}")
        self.worker_kind = worker_kind
        # Only passed on when not the default: decode_video(device=...) is GPU decoding (torchcodec).
        self._decode_options: Dict[str, Any] = {} if decode_device == "cpu" else {"device": decode_device}
        self._procs: List[DecodeProcess] = []
        self.progress = progress
        self.t0 = time.monotonic() if t0 is None else t0
        self.batch_size = batch_size
        dev = device or torch.device("cpu")
        self.runners: List[BatchRunner[ClipKey]] = [BatchRunner(m, batch_size, dev, dtype) for m in self.models]
        self.assembler = VideoAssembler(self.models, len(self.tasks))
        self.clips_planned = 0
        self._inflight: Deque[Tuple[int, LaunchedBatch[ClipKey]]] = collections.deque()
        self._queue: "queue.Queue[Any]" = queue.Queue(maxsize=max(4, 2 * batch_size * len(self.models)))
        self._stop = threading.Event()
        max_pending = max_pending or max(16, 4 * workers)
        self._pending = threading.Semaphore(max_pending)
        # Finished videos are written in groups (assemble.CommitGroup). They keep their places in
        # `max_pending` until written, so a group is written before it could hold up the decoders
        # (a decoder is at about 2 videos past the head: decoding one, its clips waiting in a batch).
        self._group = CommitGroup(max_videos=max_pending - 2 * workers)
        self._written = 0  # videos written by this run
        self._claim_lock = threading.Lock()
        # One decoder has no one to wait for. At most max_pending: with the head video not yet
        # taken, the others taken before it must leave a place free for it.
        self._claim_order = claim_order(self.tasks, min(2 * workers, max_pending) if workers > 1 else 0)
        self._next_task = 0
        self._workers_left = workers
        self._threads: List[threading.Thread] = []

    # ------------------------------------------------------------------ driver
    def run(self) -> None:
        """Extract every task; returns when all are committed. A bug, a worker crash or Ctrl-C
        raises here after the decode threads are stopped (committed videos stay)."""
        if self.worker_kind == "process":
            # Forked here, before this run starts any thread of its own.
            self._procs = [DecodeProcess(self.models, self.decoder, self._decode_options, self.batch_size)
                           for _ in range(self.workers)]
        self._threads = [threading.Thread(target=self._decode_worker, args=(i,), name=f"c3dfeat-decode-{i}",
                                          daemon=True) for i in range(self.workers)]
        for t in self._threads:
            t.start()
        try:
            while not self.assembler.finished:
                try:
                    msg = self._queue.get_nowait()
                except queue.Empty:
                    if self._unblock_head():
                        continue
                    if self._workers_left == 0:
                        raise RuntimeError(
                            "internal error: decoding ended before every video was committed"
                        ) from None
                    self._give_back_if_starved()
                    try:  # wakes up when the waiting group falls due, also if nothing arrives
                        msg = self._queue.get(timeout=self._group.seconds_left())
                    except queue.Empty:
                        self.commit()
                        continue
                self._handle(msg)
            self._collect(all_batches=True)
            self.commit(force=True)
        except BaseException as stop:
            # Ctrl-C, SIGTERM or a bug: the finished videos are still written, so a rerun skips
            # them. (The group is empty while a write is under way: a write cut short is never
            # followed by another, whose rows would land behind the ones reopening cuts back.)
            if len(self._group):
                waiting = self._group.take()
                try:
                    self._write(waiting, announce=False)
                except Exception as e:  # noqa: BLE001 - the first error is the one to report
                    stop.add_note(f"the {len(waiting)} finished videos waiting to be written were lost: {e}")
            raise
        finally:
            self._shutdown()

    def _handle(self, msg: Any) -> None:
        if isinstance(msg, ClipReady):
            self.batch(msg)
        elif isinstance(msg, list):  # a decode process's group of clips
            for clip in msg:
                self.batch(clip)
        elif isinstance(msg, VideoStart):
            self.clips_planned += self.assembler.start(msg)
            self._emit("start", msg.record.id)
        elif isinstance(msg, VideoEnd):
            self.assembler.end(msg.seq)
            self.commit()
        elif isinstance(msg, VideoFailed):
            self.clips_planned -= self.assembler.fail(msg)
            for runner in self.runners:  # its queued clips are not worth computing
                runner.discard(lambda key: key[0] == msg.seq)
            self.commit()
        elif isinstance(msg, _WorkerDone):
            self._workers_left -= 1
        elif isinstance(msg, _WorkerCrash):
            raise msg.error
        else:  # pragma: no cover - defensive
            raise RuntimeError(f"internal error: unexpected message {msg!r}")

    def _unblock_head(self) -> bool:
        """The queue is empty: finish what the next commit waits for. True if anything ran.

        A partial batch costs a padded forward pass, so it runs only when the head video is fully
        decoded (nothing more of it can come) or when decoding is over."""
        ran = self._collect(all_batches=True)
        if self.assembler.head_decoded or self._workers_left == 0:
            head = self.assembler.head
            for m, runner in enumerate(self.runners):
                if len(runner) and (self._workers_left == 0 or any(k[0] == head for k in runner.keys())):
                    self.run_batch(m)
                    ran = True
            ran = self._collect(all_batches=True) or ran
        if ran:
            self.commit()
        return ran

    # ------------------------------------------------------------------ steps
    def _decode_worker(self, index: int) -> None:
        """decode: videos in order → messages on the queue (a crash is a message too)."""
        try:
            while True:
                self._pending.acquire()
                if self._stop.is_set():
                    return
                with self._claim_lock:
                    nth = self._next_task
                    self._next_task += 1
                if nth >= len(self.tasks):
                    self._pending.release()
                    break
                seq = self._claim_order[nth]
                task = self.tasks[seq]
                messages: Generator[Any, None, None] = (
                    self._procs[index].decode_grouped(task) if self._procs
                    else decode_video(task, self.models, self.decoder, **self._decode_options))
                try:
                    for msg in messages:
                        self._put(msg)
                finally:
                    messages.close()  # closes the video at once, also when stopping
        except _Stopped:
            return
        except BaseException as e:  # noqa: BLE001 - a bug: the main thread re-raises it, traceback included
            self._queue.put(_WorkerCrash(e))
            return
        self._queue.put(_WorkerDone())

    def _put(self, msg: Any) -> None:
        if self._stop.is_set():
            raise _Stopped()
        self._queue.put(msg)  # blocks while the queue is full; stopping drains it

    def batch(self, msg: ClipReady) -> None:
        """batch: queue a clip for its model; run the batch when it is full."""
        if self.assembler.is_failed(msg.seq):
            if msg.release is not None:
                msg.release()
            return
        if self.runners[msg.model].add((msg.seq, msg.clip), msg.tensor, msg.release):
            self.run_batch(msg.model)
            self._collect(all_batches=False)
            self.commit()

    def run_batch(self, m: int) -> None:
        """run: launch model `m`'s next batch (full, or zero-padded)."""
        launched = self.runners[m].launch()
        if launched is not None:
            self._inflight.append((m, launched))

    def _collect(self, all_batches: bool) -> bool:
        """Scatter finished batches' features to their videos. Unless `all_batches`, the newest
        batch of an asynchronous (CUDA) runner stays in flight while the queue is read."""
        got = False
        while self._inflight:
            m, launched = self._inflight[0]
            if not all_batches and len(self._inflight) == 1 and self.runners[m].asynchronous:
                break
            self._inflight.popleft()
            for (seq, clip), features in launched.collect():
                if self.assembler.put(seq, m, clip, features):
                    self.report.clips += 1
            got = True
            self._emit("batch", self.tasks[launched.keys[-1][0]].id if launched.keys else "")
        return got

    def commit(self, force: bool = False) -> None:
        """commit: the finished videos at the head join the waiting group, in input order; the
        group is written in one writer call when it is due (assemble.CommitGroup: 64 videos or
        1 s) or `force`d — one HDF5 commit costs about the same for one video or many."""
        for video in self.assembler.pop_ready():
            self._group.add(video)
        if len(self._group) and (force or self._group.due()):
            self._write(self._group.take())

    def _write(self, ready: List[ReadyVideo], announce: bool = True) -> None:
        self.writer.add_videos([(r.record, r.results) for r in ready])
        self._written += len(ready)
        for r in ready:
            if r.failed:
                self.report.failed.append((r.record.id, r.record.error))
            else:
                self.report.ok += 1
            self._pending.release()
        if announce:
            for r in ready:
                self._emit("commit", r.record.id)

    # ------------------------------------------------------------------ helpers
    def _give_back_if_starved(self) -> None:
        """About to wait for the queue: a decode process with no free buffer waits for the clips
        we hold of it (a batch being filled), so copy and release them first. Checked before
        every wait: a process takes a buffer before it sends the clip in it, and sends what it
        holds before it waits for one, so that message wakes us to check again."""
        if any(proc.starved() for proc in self._procs):
            for runner in self.runners:
                runner.give_back_lent()

    def _emit(self, event: str, current: str) -> None:
        if self.progress is None:
            return
        r = self.report
        self.progress(Progress(
            videos_done=r.skipped + self._written, videos_total=r.total, failed=len(r.failed),
            clips_done=r.clips, clips_planned=self.clips_planned, elapsed=time.monotonic() - self.t0,
            current=current, event=event,
        ))

    def _shutdown(self) -> None:
        """Stop the decode threads: wake those waiting for a slot, drain the queue for those
        waiting to put, and join them (bounded: they are daemons). Lent clips go back first: a
        decode process waiting for one of its buffers would keep its thread waiting on its pipe."""
        self._stop.set()
        for runner in self.runners:
            runner.discard(lambda key: True)
        for _ in self._threads:
            self._pending.release()
        deadline = time.monotonic() + SHUTDOWN_SECONDS
        for t in self._threads:
            while t.is_alive() and time.monotonic() < deadline:
                self._drain()
                t.join(timeout=0.05)
        self._drain()
        close_all(self._procs, kill=any(t.is_alive() for t in self._threads))
        for runner in self.runners:
            runner.close()

    def _drain(self) -> None:
        try:
            while True:
                msg = self._queue.get_nowait()
                for clip in msg if isinstance(msg, list) else [msg]:
                    if isinstance(clip, ClipReady) and clip.release is not None:
                        clip.release()  # so that a decode process waiting for a buffer can stop politely
        except queue.Empty:
            pass
