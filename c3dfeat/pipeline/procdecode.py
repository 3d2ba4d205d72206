"""Decode worker processes: `decode_video` in forked children, clips back through shared memory.

Why: a decode thread holds the GIL for ~15 % of its time (PyAV's frame iteration and
reformatting, the per-frame transform's Python), so threads stop scaling long before the 16+
cores a GPU machine gives its decoders. A forked child has its own interpreter.

    proc = DecodeProcess(models, "pyav", None, batch_size)   # fork now, before any decode thread
    for msg in proc.decode(task): ...              # the same messages as decode_video(task, ...)
    proc.close()

Each child owns, per model, a ring of clip buffers in shared memory (pipeline.ring: mapped before
the fork, so both sides use the same pages: no per-clip allocation or page faults, no /dev/shm
file), a busy flag per buffer and a semaphore counting the free ones. The child decodes with
`decode_video`, which computes each clip straight into a free buffer (`clip_buffer`), and sends
small tuples over a pipe, half a ring's worth per message (fewer wakeups of the parent), which
reach the scheduler's queue as one list (`decode_grouped`). The parent lends that buffer
itself to the batch (`ClipReady.tensor` is a view of it, `ClipReady.release` a `SlotLoan` that
frees it). On a CPU device a batch of one child's
consecutive buffers runs where it lies (the ring is mirrored so that this holds across its wrap
too); otherwise the batch copies each clip and frees its buffer: at most one copy of a clip in
the parent. A ring holds two batches and two clips (`slots_for`), so the child runs that far
ahead and the bounded queues downstream still bound memory.

A consumer may hold buffers while it waits for more clips (a batch being filled), and a child
with no free buffer waits for the consumer: before the consumer blocks on its input it must copy
and free the clips it holds of a child that has no free buffer left (`DecodeProcess.starved`;
the scheduler does). Freed buffers may come back in any order (a failed video's clips are dropped
while older ones wait in a batch); the flags, not the order, say which are free.

The messages are those of decode_video, so `VideoFailed` keeps its meaning (the video cannot be
read). Two more outcomes:

* a bug in the child (any exception decode_video lets through) is re-raised in the parent, the
  same exception with the child's traceback as a note (:class:`DecodeProcessError` with the
  traceback if it does not pickle): it stops the run, as in a decode thread;
* the child *dies* (a decoder crashing on a malformed file, the OOM killer): the video is recorded
  as failed with the signal, a fresh child is forked with fresh rings (the dead child's buffers
  may still sit in a batch) and the run goes on; after `MAX_CONSECUTIVE_DEATHS` deaths in a row
  without a video read in between, the run stops, since then the cause is not the videos.

Fork only (Linux): the children inherit the prepared models and the shared buffers without
pickling. `worker_kind="thread"` (api.extract) keeps everything in one process; "auto" chooses
processes where decoding is the bottleneck (`resolve_worker_kind`).
"""
from __future__ import annotations

import ctypes
import gc
import math
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import traceback
from multiprocessing.connection import Connection
from typing import Any, Generator, List, Optional, Sequence, Tuple, Union

import torch

from c3dfeat.errors import DecoderUnavailableError
from c3dfeat.pipeline.decode import (
    ClipReady,
    DecodeMessage,
    VideoEnd,
    VideoFailed,
    VideoStart,
    VideoTask,
    decode_video,
)
from c3dfeat.pipeline.plan import PreparedModel
from c3dfeat.pipeline.ring import ClipRing
from c3dfeat.specs import WORKER_KINDS
from c3dfeat.store import VideoRecord

__all__ = ["DecodeProcess", "DecodeProcessError", "close_all", "WORKER_KINDS", "fork_available", "resolve_worker_kind",
           "slots_for", "AUTO_PROCESS_WORKERS", "MIN_SLOTS", "RING_BYTES", "MAX_CONSECUTIVE_DEATHS"]

MIN_SLOTS = 4  # clip buffers per model per child, at least
RING_BYTES = 256 << 20  # ... and at most this much per ring, past MIN_SLOTS (ir_csn_152's clips: 19 MB)
MAX_CONSECUTIVE_DEATHS = 3
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_FORK_LOCK = threading.Lock()
_CLIPS = "clips"
_CRASH = "crash"


class DecodeProcessError(RuntimeError):
    """Decode processes failing for a reason that is not a video's (a bug whose exception does
    not pickle, or children dying one after another); the child's traceback is in the message."""


def fork_available() -> bool:
    """Whether decode processes can be forked safely here (POSIX with fork; not macOS, where
    system frameworks are not fork-safe)."""
    return os.name == "posix" and sys.platform != "darwin" and "fork" in multiprocessing.get_all_start_methods()


# "auto" picks processes where the decoders are the bottleneck: a model on a GPU, or more decoders
# than a few threads can share the GIL with (a decode thread holds it ~15 % of its time). On a CPU
# model the decoders take ~10-15 % of the CPU, threads keep up, and processes would cost ~250 MiB
# more for no speed (C3D, batch 4, 2 workers: docs/extract.md "Decode processes"). The threshold
# of 4 sits below the ~6.8 threads the GIL share allows; it is not measured (a 2-core machine).
AUTO_PROCESS_WORKERS = 4


def resolve_worker_kind(kind: str, device: str = "cpu", workers: int = 2) -> str:
    """"process" or "thread" for `kind`; "auto" → "process" when the model's `device` is a GPU
    or `workers` > AUTO_PROCESS_WORKERS (and fork is safe: Linux), else "thread"."""
    from c3dfeat.errors import ConfigError

    if kind not in WORKER_KINDS:
        raise ConfigError(f"worker_kind must be one of {', '.join(WORKER_KINDS)}, got {kind!r}")
    usable = fork_available()
    if kind == "process" and not usable:
        raise ConfigError("decode worker processes need fork (Linux); use worker_kind='thread'")
    if kind == "auto":
        decode_bound = not str(device).startswith("cpu") or workers > AUTO_PROCESS_WORKERS
        return "process" if usable and decode_bound else "thread"
    return kind


def slots_for(batch_size: int, clip_shape: Sequence[int]) -> int:
    """Clip buffers in one child's ring for one model: two batches and two more, so that a child
    rarely waits for the clips a batch being filled holds (each wait costs the consumer a copy,
    module docstring) and sends batch + 1 clips per message (a ring of batch + 2: 10 % more of
    the parent's CPU per clip, decode-bound C3D at batch 4); at least MIN_SLOTS, and past that
    at most RING_BYTES."""
    by_size = RING_BYTES // (_numel(clip_shape) * 4)
    return max(MIN_SLOTS, min(2 * batch_size + 2, by_size))


class DecodeProcess:
    """One forked child that decodes the tasks its parent thread sends it (module docstring).
    `batch_size` sizes the rings (`slots_for`)."""

    def __init__(self, models: Sequence[PreparedModel], decoder: str, decode_options: Optional[dict],
                 batch_size: int) -> None:
        self.models = list(models)
        self.decoder = decoder
        self.decode_options = dict(decode_options or {})
        self.batch_size = batch_size
        self.slots = [slots_for(batch_size, m.clip_shape) for m in self.models]
        self._ctx = multiprocessing.get_context("fork")
        self._process: Optional[Any] = None
        self._conn: Optional[Connection] = None
        self._rings: List[ClipRing] = []
        self.deaths_in_a_row = 0
        _preload_decoder(decoder)
        self._start()

    # ------------------------------------------------------------------ parent side
    def decode(self, task: VideoTask) -> Generator[DecodeMessage, None, None]:
        """The messages of `decode_video(task, ...)`, computed in the child. Closing the
        generator before the video's last message kills the child (it is mid-video) and forks
        a fresh one."""
        for msg in self.decode_grouped(task):
            if isinstance(msg, list):
                yield from msg
            else:
                yield msg

    def decode_grouped(self, task: VideoTask) -> Generator[Union[DecodeMessage, List[ClipReady]], None, None]:
        """`decode`, with the clips of each pipe message as one list: one hand-over to the
        consumer per group instead of per clip (the scheduler's queue; with 16 children on one
        queue, per-clip hand-overs cost the calling process more than the clips' batching)."""
        if self._conn is None:
            self._start()
        conn = self._conn
        assert conn is not None
        finished = False
        record: Optional[VideoRecord] = None
        try:
            conn.send(task)
            while True:
                try:
                    msg = conn.recv()
                except (EOFError, OSError):
                    yield self._died(task, record)
                    finished = True
                    return
                if type(msg) is tuple and msg[0] == _CLIPS:
                    rings = self._rings
                    yield [ClipReady(seq, m, clip, rings[m].data[slot], rings[m].loan(slot))
                           for seq, m, clip, slot in msg[1]]
                    continue
                if type(msg) is tuple and msg[0] == _CRASH:
                    finished = True
                    self.close()
                    where = f"in the decode process, while reading {task.path}:\n{msg[1]}"
                    error = _unpickle_exception(msg[2])
                    if error is None:
                        raise DecodeProcessError(f"internal error {where}")
                    error.add_note(where)  # same type as in a decode thread; the child's traceback as a note
                    raise error
                if isinstance(msg, VideoStart):
                    record = msg.record
                yield msg
                if isinstance(msg, (VideoEnd, VideoFailed)):
                    self.deaths_in_a_row = 0
                    finished = True
                    return
        finally:
            if not finished:  # abandoned mid-video (the run is stopping): the child is out of step
                self.close(kill=True)

    def starved(self) -> bool:
        """Whether the child has used up a ring: its consumer must then free what it holds of it
        before waiting for more (module docstring)."""
        return any(ring.starved() for ring in self._rings)

    def close(self, kill: bool = False) -> None:
        """Stop the child: politely when idle, by SIGKILL when `kill` (mid-video)."""
        close_all([self], kill)

    def _ask_to_stop(self, kill: bool) -> Optional[Tuple[Any, Optional[Connection]]]:
        """First half of closing: tell the child to stop (or kill it); what `_wait_stopped` joins."""
        proc, conn = self._process, self._conn
        self._process, self._conn = None, None
        if proc is None:
            return None
        if not kill and conn is not None:
            try:
                conn.send(None)
            except OSError:
                kill = True
        if kill:
            proc.kill()
        return proc, conn

    @staticmethod
    def _wait_stopped(proc: Any, conn: Optional[Connection]) -> None:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
            proc.join()
        if conn is not None:
            conn.close()

    # ------------------------------------------------------------------ helpers
    def _start(self) -> None:
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        # Fresh rings for every child: buffers of a dead one may still sit in a batch.
        self._rings = [ClipRing(self._ctx, m.clip_shape, n, window=self.batch_size)
                       for m, n in zip(self.models, self.slots)]
        proc = self._ctx.Process(target=_child_main, name="c3dfeat-decode-proc", daemon=True,
                                 args=(child_conn, os.getpid(), self.models, self.decoder, self.decode_options,
                                       self._rings))
        # The child must never destroy an object it inherited (see _child_main): it starts with
        # everything frozen, from its first allocation on. Freezing costs nothing, where a full
        # collection takes ~60 ms (torch's ~180k objects; 16 children: a second before decoding).
        # Thawed here at once: what is garbage stays this process's to collect. One fork at a
        # time: decode threads replacing dead children at once must not thaw each other's forks.
        with _FORK_LOCK:
            gc.freeze()
            try:
                proc.start()
            finally:
                gc.unfreeze()
        child_conn.close()  # so that the child's death is an EOF here
        self._process, self._conn = proc, parent_conn

    def _died(self, task: VideoTask, record: Optional[VideoRecord]) -> VideoFailed:
        """The child died while reading `task`: that video failed; fork a fresh child."""
        proc = self._process
        code = None
        if proc is not None:
            proc.join(timeout=10)
            code = proc.exitcode
        self.close(kill=True)
        self.deaths_in_a_row += 1
        how = f"signal {-code} ({_signal_name(-code)})" if code is not None and code < 0 else f"exit code {code}"
        if self.deaths_in_a_row >= MAX_CONSECUTIVE_DEATHS:
            raise DecodeProcessError(
                f"{self.deaths_in_a_row} decode processes in a row died ({how}, last on {task.path}): "
                "not a property of the videos; rerun with worker_kind='thread' (--worker-kind thread) "
                "to see the error")
        rec = record or VideoRecord(id=task.id, path=str(task.path), label=task.label, input_index=task.input_index)
        rec.status = "failed"
        rec.error = f"{task.path}: the decoder process died with {how} while reading this video"
        self._start()
        return VideoFailed(task.seq, rec, rec.error)


def close_all(procs: Sequence[DecodeProcess], kill: bool = False) -> None:
    """Close `procs` side by side: all are told to stop before any is waited for (a child took
    7-9 ms to exit and be joined here; 16 of them one after another would hold up the end of
    every run)."""
    stopping = [s for s in (p._ask_to_stop(kill) for p in procs) if s is not None]
    for proc, conn in stopping:
        DecodeProcess._wait_stopped(proc, conn)


def _preload_decoder(decoder: str) -> None:
    """Import the decoder's library here, before the fork: every child then shares its pages and
    skips the import (a PyAV decode child's private memory: 75 -> 65 MiB, C3D on 640x360)."""
    from c3dfeat.video import _import_backend

    for backend in {decoder, "pyav"}:  # torchcodec leaves AVI files to PyAV
        try:
            _import_backend(backend)
        except DecoderUnavailableError:
            pass  # check_options checked the decoder; PyAV beside torchcodec: the child raises it, as a thread


def _numel(shape: Sequence[int]) -> int:
    return int(math.prod(shape))


def _unpickle_exception(data: Optional[bytes]) -> Optional[BaseException]:
    """The child's exception, when it survived pickling (our own exceptions do)."""
    if data is None:
        return None
    try:
        e = pickle.loads(data)  # our own child's bytes, over our own pipe
    except Exception:  # noqa: BLE001
        return None
    return e if isinstance(e, BaseException) else None


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return "unknown"


def _die_with_parent(parent: int) -> None:
    """A parent killed by SIGKILL cannot stop us, and a child waiting for a free slot would wait
    forever: ask Linux to SIGKILL this process when the parent goes (PR_SET_PDEATHSIG). The signal
    follows the *thread* that forked: a child respawned by a decode thread goes when that thread
    ends, which is when the run no longer needs it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux: the pipe's EOF still ends an idle child
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _child_main(conn: Connection, parent: int, models: Sequence[PreparedModel], decoder: str, decode_options: dict,
                rings: Sequence[ClipRing]) -> None:
    """The child: decode each task received, clips into the rings, messages up the pipe."""
    # Ctrl-C, and a batch system's SIGTERM, reach the whole process group: the parent decides what
    # stops and kills us. Dying of them here would record the video being read as failed.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent(parent)
    # Never collect what the parent left: an object owning native threads (e.g. a PyAV decoder's
    # slice threads, in a reference cycle the parent's collector had not reached yet) would be
    # destroyed here, where its threads do not exist, and FFmpeg waits for them forever (seen:
    # pthread_cond_destroy in avpriv_slicethread_free). Also spares the shared pages copies. The
    # parent forked with everything frozen (DecodeProcess._start); frozen again for good here.
    gc.freeze()
    # One thread: decoders scale by process; an OpenMP pool inherited through fork must not be used.
    torch.set_num_threads(1)
    next_slot = [0] * len(models)
    # Clips go up in groups of half a ring: one pipe message, and one wakeup of the parent's
    # threads, per group instead of per clip (those wakeups take cores from the decoders). A
    # group is sent early before anything else is sent and before waiting for a buffer.
    group = max(1, min(ring.slots for ring in rings) // 2)
    unsent: List[Tuple[int, int, int, int]] = []  # (seq, model, clip, slot)

    def send_clips() -> None:
        if unsent:
            conn.send((_CLIPS, list(unsent)))
            unsent.clear()

    # Each clip is computed straight into a free buffer (decode_video's clip_buffer): no clip
    # tensor allocated, no copy. `taken[m]`: the buffer handed out for model m's next clip.
    taken: List[Optional[int]] = [None] * len(models)

    def buffer_for(m: int) -> torch.Tensor:
        slot = rings[m].take(next_slot[m], send_clips)
        taken[m] = slot
        return rings[m].data[slot]

    while True:
        try:
            task = conn.recv()
        except EOFError:
            return  # the parent is gone
        if task is None:
            return
        try:
            for msg in decode_video(task, models, decoder, clip_buffer=buffer_for, **decode_options):
                if isinstance(msg, ClipReady):
                    m, slot = msg.model, taken[msg.model]
                    taken[m] = None
                    if slot is None:  # made without the buffer (a replaced decode_video): copy it in
                        slot = rings[m].take(next_slot[m], send_clips)
                        rings[m].data[slot].copy_(msg.tensor)
                    next_slot[m] = (slot + 1) % rings[m].slots
                    unsent.append((msg.seq, m, msg.clip, slot))
                    if len(unsent) >= group:
                        send_clips()
                else:
                    send_clips()
                    conn.send(msg)
            for m, slot in enumerate(taken):  # handed out for a clip that never came: not lost
                if slot is not None:
                    rings[m].release(slot)
                    taken[m] = None
        except BaseException as e:  # noqa: BLE001 - a bug: the parent re-raises it with this traceback
            try:
                cause: Optional[bytes] = pickle.dumps(e)
            except Exception:  # noqa: BLE001 - not every exception pickles; the traceback text suffices
                cause = None
            conn.send((_CRASH, traceback.format_exc(), cause))
            return
