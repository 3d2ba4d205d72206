"""Full, zero-padded batches of one model → features per clip.

`BatchRunner` holds one model's pending clips (each with a key the caller chooses, e.g.
``(video seq, clip index)``, and optionally a `release` callback: the clip is a lent buffer,
given back once copied into a batch, see pipeline.procdecode) and runs them in batches of
exactly `batch_size` clips, zero-padded at the end. CPU and GPU kernels give bit-different
results for different batch *sizes* (~1e-8 relative; measured on C3D / R(2+1)D-18) but not for
different companions or positions in a batch of one size, so a clip's features never depend on
which videos shared its batch: resumed, sharded, in-process and Ray runs agree bit for bit for
the same device, dtype and batch size.

On CUDA the batch is assembled in pinned host memory (two buffers per model, reused: no
per-batch allocation) and copied on a side stream into one of two device buffers, so the copy of
the next batch overlaps the forward pass of the current one; the features come back with a
non-blocking copy. `launch` returns at once and `LaunchedBatch.collect` waits, so the caller
fills the next batch while the GPU computes. Every stream and event is that of `device` (also
when it is not the current CUDA device). On CPU `launch` computes synchronously into one
preallocated buffer — or, for clips lent by a decode process (pipeline.ring), in place: lent
clips are batched per lender, and a full batch of one ring's consecutive buffers is already one
contiguous tensor, so it runs where it lies and its buffers are freed after the forward pass (the
features are copies). That saves the calling process a 2.4 MB copy per C3D clip (~0.19 ms of
its ~0.4). Batches that mix lenders or are partial are copied as before. Which clips share a
batch does not change their features (above), and rows are rows: the same bits either way
(tests/test_ring.py, tests/test_procdecode.py). `dtype` "bf16" / "fp16" runs the model under `torch.autocast`
(weights stay float32); "fp32" is the exact path (TF32 off unless `allow_tf32`, see api.extract).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, Generic, Hashable, List, Optional, Sequence, Tuple, TypeVar

import numpy as np
import torch

from c3dfeat import runtime
from c3dfeat.errors import DeviceMemoryError
from c3dfeat.models import extract_layers
from c3dfeat.pipeline.plan import COMPUTE_DTYPES, PreparedModel
from c3dfeat.pipeline.ring import ClipRing, SlotLoan

__all__ = ["BatchRunner", "LaunchedBatch", "ClipFeatures", "default_copy_threads"]

K = TypeVar("K", bound=Hashable)
ClipFeatures = Dict[str, np.ndarray]  # layer -> (D,) or (num_crops, D) float32
Release = Optional[Callable[[], None]]
_Pending = Tuple[Any, torch.Tensor, Release, Optional[ClipRing]]  # key, clip, release, lender
_NO_LENDER: Any = object()


def _lender_of(release: Release) -> Optional[ClipRing]:
    """The ring a lent clip lives in (decode processes), None for any other clip."""
    return release.ring if isinstance(release, SlotLoan) else None


class LaunchedBatch(Generic[K]):
    """A batch whose forward pass was started; `collect()` waits and returns per-clip features."""

    def __init__(self, keys: List[K], outputs: Dict[str, torch.Tensor], done: Optional["torch.cuda.Event"]) -> None:
        self.keys = keys
        self._outputs = outputs  # layer -> (b, [crops,] D) float32 on the host
        self._done = done

    def collect(self) -> List[Tuple[K, ClipFeatures]]:
        """[(key, {layer: features})] in the order the clips were added."""
        if self._done is not None:
            self._done.synchronize()
        arrays = {layer: y.numpy() for layer, y in self._outputs.items()}
        return [(key, {layer: a[k] for layer, a in arrays.items()}) for k, key in enumerate(self.keys)]


class BatchRunner(Generic[K]):
    """Pending clips of one model and their batched forward passes (see the module docstring)."""

    def __init__(self, model: PreparedModel, batch_size: int, device: torch.device, dtype: str = "fp32",
                 copy_threads: Optional[int] = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.batch_size = batch_size
        self.device = device
        self.compute_dtype = COMPUTE_DTYPES[dtype]
        self._pending: List[_Pending] = []
        self._per_lender: Dict[Optional[ClipRing], int] = {}  # pending clips per lender (None: own or copied)
        shape = (batch_size,) + model.clip_shape
        self._cuda = device.type == "cuda"
        # CPU: a full batch of one decode process's consecutive buffers runs where it lies, no copy
        # (on CUDA the batch is copied into pinned memory anyway, for the asynchronous upload)
        self._in_place = not self._cuda
        self.batches_in_place = 0  # how many ran so (for tests and benchmarks)
        n_buffers = 2 if self._cuda else 1  # CUDA: one filled while the other is being copied
        # Allocated once per model (never per batch): no allocator churn, and pinned memory is
        # what makes the CUDA copy asynchronous.
        self._buffers = [torch.zeros(shape, pin_memory=self._cuda) for _ in range(n_buffers)]
        self._rows_used = [0] * n_buffers  # rows past these are still zero
        self._next_buffer = 0
        if copy_threads is None:
            copy_threads = default_copy_threads(device, batch_size)
        # Helpers for the copies into the batch (numpy releases the GIL while it copies): one
        # thread's memory bandwidth would cap a fast GPU (see default_copy_threads).
        self._copy_pool = ThreadPoolExecutor(copy_threads, thread_name_prefix="c3dfeat-batch-copy") \
            if copy_threads > 0 else None
        self._copy_chunks = copy_threads + 1  # the helpers and this thread
        if self._cuda:
            self._stages = [_CudaStage(shape, device) for _ in range(n_buffers)]
            self._copy_stream = torch.cuda.Stream(device=device)

    @property
    def asynchronous(self) -> bool:
        """True when `launch` returns before the features are computed (CUDA)."""
        return self._cuda

    def __len__(self) -> int:
        return len(self._pending)

    @property
    def full(self) -> bool:
        """Whether `launch` has a full batch to run (of one lender, where lenders are told apart)."""
        return any(n >= self.batch_size for n in self._per_lender.values())

    def add(self, key: K, clip: torch.Tensor, release: Release = None) -> bool:
        """Queue one clip, shape `model.clip_shape`; True when a full batch is waiting.
        `release` (a lent clip): called once the clip is no longer read (copied into a batch, run
        in place, or dropped). On CPU, lent clips are batched per lender (module docstring)."""
        if tuple(clip.shape) != self.model.clip_shape:
            raise ValueError(f"{self.model.key}: clip of shape {tuple(clip.shape)}, expected {self.model.clip_shape}")
        lender = _lender_of(release) if self._in_place else None
        self._pending.append((key, clip, release, lender))
        self._per_lender[lender] = n = self._per_lender.get(lender, 0) + 1
        return n >= self.batch_size

    def keys(self) -> List[K]:
        return [item[0] for item in self._pending]

    def discard(self, drop: Callable[[K], bool]) -> int:
        """Forget the pending clips whose key matches (e.g. of a video that failed); how many."""
        kept = []
        for item in self._pending:
            if not drop(item[0]):
                kept.append(item)
            elif item[2] is not None:
                item[2]()
        dropped = len(self._pending) - len(kept)
        self._set_pending(kept)
        return dropped

    def give_back_lent(self) -> int:
        """Copy every pending lent clip and release its buffer (the lender waits for one); how many."""
        n = 0
        for i, (key, clip, release, _) in enumerate(self._pending):
            if release is not None:
                self._pending[i] = (key, clip.clone(), None, None)
                release()
                n += 1
        self._set_pending(self._pending)
        return n

    def launch(self) -> Optional[LaunchedBatch[K]]:
        """Run a batch: the first `batch_size` pending clips of a lender that has that many, else
        the first `batch_size` pending clips (fewer: zero-padded); None if none pending."""
        if not self._pending:
            return None
        full = next((lender for lender, n in self._per_lender.items() if n >= self.batch_size), _NO_LENDER)
        if full is _NO_LENDER:
            items = self._pending[: self.batch_size]
            rest = self._pending[self.batch_size :]
        else:
            items, rest = [], []
            for item in self._pending:
                (items if len(items) < self.batch_size and item[3] is full else rest).append(item)
        self._set_pending(rest)
        keys = [item[0] for item in items]
        clips = [item[1] for item in items]
        releases = [item[2] for item in items if item[2] is not None]
        in_place = None
        if isinstance(full, ClipRing) and len(releases) == self.batch_size:
            in_place = full.batch_view(releases)
        return self._forward(keys, clips, releases, in_place)

    def _set_pending(self, items: List[_Pending]) -> None:
        self._pending = items
        self._per_lender = {}
        for item in items:
            self._per_lender[item[3]] = self._per_lender.get(item[3], 0) + 1

    def compute(self, clips: Sequence[torch.Tensor]) -> List[ClipFeatures]:
        """Features of up to `batch_size` clips now, bypassing the pending list (Ray actors)."""
        if not 0 < len(clips) <= self.batch_size:
            raise ValueError(f"compute takes 1..{self.batch_size} clips, got {len(clips)}")
        keys: List[Hashable] = list(range(len(clips)))
        return [f for _, f in self._forward(keys, list(clips)).collect()]

    def _forward(self, keys: List[Any], clips: Sequence[torch.Tensor],
                 releases: Sequence[Callable[[], None]] = (), in_place: Optional[torch.Tensor] = None,
                 ) -> LaunchedBatch[Any]:
        if in_place is not None:
            try:
                launched = self._run(keys, in_place.view((-1,) + self.model.clip_shape[1:]))
            finally:  # the features are copies: the lender's buffers are free again
                for release in releases:
                    release()
            self.batches_in_place += 1
            return launched
        model, b, c = self.model, len(clips), self.model.num_crops
        i = self._next_buffer
        self._next_buffer = (i + 1) % len(self._buffers)
        if self._cuda:
            self._stages[i].wait_host_free()  # the copy out of this buffer has finished: safe to refill
        buf = self._buffers[i]
        # One plain memcpy per clip (in this thread, or shared with the copy helpers): torch.stack's
        # parallel copy wakes the OpenMP pool, which competes with the decoders for cores; from a
        # decode process's buffers it cost 1.0 ms of this thread's time per C3D clip (+2.3 in the
        # pool) against 0.19 here.
        rows = buf.numpy()
        self._copy_rows(rows, clips)
        for release in releases:  # copied: lent buffers go back before the forward pass
            release()
        if b < self._rows_used[i]:
            rows[b : self._rows_used[i]] = 0  # always a full, zero-padded batch (module docstring)
        self._rows_used[i] = b
        if self._cuda:
            compute = torch.cuda.current_stream(self.device)
            x = self._stages[i].upload(buf, self._copy_stream, compute)
        else:
            x = buf
        x = x.view((self.batch_size * c,) + model.clip_shape[1:])
        done_with = self._stages[i] if self._cuda else None
        return self._run(keys, x, b, done_with)

    def _run(self, keys: List[Any], x: torch.Tensor, b: Optional[int] = None,
             stage: Optional["_CudaStage"] = None) -> LaunchedBatch[Any]:
        """The forward pass over `x` (batch_size x crops clips), features of its first `b` clips."""
        model, c = self.model, self.model.num_crops
        b = self.batch_size if b is None else b
        reduced = self.compute_dtype != torch.float32
        try:
            with torch.autocast(device_type=self.device.type, dtype=self.compute_dtype, enabled=reduced):
                out = extract_layers(model.net, x, model.layers)
        except torch.OutOfMemoryError as e:  # not a bug: a setting this device cannot hold
            raise DeviceMemoryError(self._out_of_memory(e)) from e
        host: Dict[str, torch.Tensor] = {}
        for layer in model.layers:
            y = out[layer][: b * c].reshape(b, c, -1).float()
            if not model.keep_crops:
                y = y.mean(dim=1) if c > 1 else y[:, 0]
            if self._cuda:
                pinned = torch.empty(y.shape, dtype=torch.float32, pin_memory=True)
                host[layer] = pinned.copy_(y, non_blocking=True)
            else:
                host[layer] = y.clone()  # never a view of the reused input buffer
        done = None
        if stage is not None:
            # After the copies out too: a layer may be a view of the input (e.g. "input").
            done = stage.record_consumed(torch.cuda.current_stream(self.device))
        return LaunchedBatch(keys, host, done)

    def _out_of_memory(self, error: BaseException) -> str:
        what = f"{self.model.key}: a batch of {self.batch_size} clip(s) does not fit in the memory of {self.device}"
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        if self.batch_size > 1:
            fix = (f"rerun with a smaller --batch-size, e.g. {self.batch_size // 2}; the videos committed so "
                   "far stay in the file and the run resumes")
        else:
            fix = "use a device with more memory, --dtype bf16, or --device cpu"
        return f"{what} ({first}); {fix}"

    def _copy_rows(self, rows: np.ndarray, clips: Sequence[torch.Tensor]) -> None:
        """rows[k] = clips[k], in this thread or split with the copy helpers."""
        if self._copy_pool is None or len(clips) < 2:
            for k, clip in enumerate(clips):
                np.copyto(rows[k], clip.numpy())
            return
        n = len(clips)
        bounds = [n * j // self._copy_chunks for j in range(self._copy_chunks + 1)]

        def copy_part(j: int) -> None:
            for k in range(bounds[j], bounds[j + 1]):
                np.copyto(rows[k], clips[k].numpy())

        helpers = [self._copy_pool.submit(copy_part, j) for j in range(1, self._copy_chunks)]
        copy_part(0)
        for h in helpers:
            h.result()  # waits; re-raises a helper's error here

    def close(self) -> None:
        """Stop the copy helpers (a runner is usable until then; the helpers also end with the process)."""
        if self._copy_pool is not None:
            self._copy_pool.shutdown(wait=True)
            self._copy_pool = None


def default_copy_threads(device: torch.device, batch_size: int) -> int:
    """Copy helpers for assembling batches: on CUDA with batch >= 8 on a machine of 8+ cores,
    cores / 4 (at most 4); else none. Assembling a batch is one memcpy per clip (2.4 MB for C3D):
    0.12 ms in isolation at batch 32 (20 GB/s) and ~0.19 ms in the decode-bound pipeline on this
    CPU, plus ~0.2 ms of other work per clip in the same thread: one thread tops out around
    2,500 clips/s, below what one GPU computes. Measured here (2 decode processes, batch 32, a
    model that does no work; 2 cores, so the helpers compete with the decoders): 2 helpers took
    the main thread from 0.42-0.50 to 0.32-0.38 ms per clip. On CPU the model is the bound (the
    copy is < 1 % of C3D's compute) and the cores are the model's and the decoders'."""
    cores = runtime.usable_cores()  # a job's CPU quota, not the node's cores
    if device.type != "cuda" or batch_size < 8 or cores < 8:
        return 0
    return min(4, cores // 4)


class _CudaStage:
    """One device input buffer and the events that order its use across two streams:
    host buffer → (copy stream) → device buffer → (compute stream) → forward pass."""

    def __init__(self, shape: Tuple[int, ...], device: torch.device) -> None:
        self.device_buffer = torch.empty(shape, device=device)  # lives as long as the runner
        self._copied: Optional["torch.cuda.Event"] = None  # the upload out of the host buffer ended
        self._consumed: Optional["torch.cuda.Event"] = None  # the last batch read from device_buffer ended

    def wait_host_free(self) -> None:
        """Block until the last upload out of this stage's host buffer has finished."""
        if self._copied is not None:
            self._copied.synchronize()

    def upload(self, host: torch.Tensor, copy: "torch.cuda.Stream", compute: "torch.cuda.Stream") -> torch.Tensor:
        """Copy `host` (pinned) into the device buffer on `copy`, after the forward pass that last
        read it; `compute` waits for the copy. Returns the device buffer."""
        with torch.cuda.stream(copy):
            if self._consumed is not None:
                copy.wait_event(self._consumed)
            self.device_buffer.copy_(host, non_blocking=True)
            # allocated on the current stream (the forward passes'): freed with the runner, the allocator must
            # also wait for this stream's work on it (a run stopped with batches in flight)
            self.device_buffer.record_stream(copy)
            self._copied = torch.cuda.Event()
            self._copied.record(copy)
        compute.wait_event(self._copied)
        return self.device_buffer

    def record_consumed(self, compute: "torch.cuda.Stream") -> "torch.cuda.Event":
        """Mark the end of all work just queued on `compute` that reads the device buffer (the
        forward pass and the copies of its outputs to the host); returns that event."""
        self._consumed = torch.cuda.Event()
        self._consumed.record(compute)
        return self._consumed
