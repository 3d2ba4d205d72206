"""``extract(..., engine="ray")``: the in-process pipeline's features and file, computed on Ray Data.

    report = c3dfeat.extract(["videos/"], "feats.h5", ["c3d"], engine="ray")              # local runtime
    report = c3dfeat.extract(["videos/"], "feats.h5", ["c3d"], engine="ray", ray_address="auto")

Data flow (docs/scale.md):

* **Driver** (this process): lists the inputs, builds the models once (weights loaded here and
  shipped to the actors through the object store, so worker nodes need no weights cache),
  opens the one HDF5 writer, and commits finished videos **in input order** with the same
  protocol as the in-process engine — so resume, failure rows and provenance are the same,
  and a file started by one engine can be finished by the other.
* **Decode tasks** (Ray Data ``flat_map``, one CPU each, retried when their worker dies): one
  task per video runs the pipeline's own decoder (same sampling, same transforms) and streams
  clips out as rows; Ray Data cuts the stream into small blocks, so a video is never whole in
  memory. A video that cannot be read is a *result* (a ``failed`` row), not an exception.
* **Inference actors** (``map_batches`` over an actor pool, ``num_gpus=1`` each where the
  cluster has GPUs): clips of several videos share a batch; every forward pass is a full,
  zero-padded batch of ``batch_size`` clips, exactly as in process, so features are bit-equal
  for the same device, dtype and batch size.

What runs in the workers (decode rows, the actor, model shipping) is c3dfeat.pipeline.ray_actors.

Exactly-once without trusting Ray's retry semantics: every clip row carries (video, model,
clip), the driver keeps one value per key and commits a video only when its last clip and its
header have arrived; rows of already committed videos are ignored.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import importlib
import logging
import os
import pickle
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from c3dfeat.errors import ConfigError
from c3dfeat.pipeline.assemble import CommitGroup, ReadyVideo, VideoAssembler
from c3dfeat.pipeline.decode import VideoFailed, VideoStart, VideoTask
from c3dfeat.pipeline.plan import (
    Crops,
    PreparedModel,
    prepare_models,
)
from c3dfeat.pipeline.ray_actors import (
    CLIP,
    ERROR,
    FAILED,
    InferenceActor,
    decode_rows,
    import_worker,
    pack_models,
    trace,
    worker_error,
)
from c3dfeat.pipeline.report import ExtractReport, Progress
from c3dfeat.pipeline.run import (
    check_options,
    finish_run,
    model_warnings,
    open_run_writer,
    pending_tasks,
    resolve_tasks,
    run_batch_size,
)
from c3dfeat.runtime import default_workers, warn_if_gpu_unused

__all__ = ["extract_ray"]

PathLike = Union[str, "os.PathLike[str]"]
_BLOCK_BYTES = 16 << 20  # Ray Data block target: a few C3D clips (2.4 MB each) per block
_CALL_BYTES = 128 << 20  # clip bytes per inference actor call ...
_MAX_BATCHES_PER_CALL = 16  # ... as at most this many model batches
_NO_NET: Any = None  # decode tasks get the models without their networks


# ----------------------------------------------------------------------------- driver
@dataclasses.dataclass
class _Early:
    """Rows of a video that arrived before its header (rows of different blocks race)."""

    features: Dict[Tuple[int, int], bytes] = dataclasses.field(default_factory=dict)
    ended: bool = False


class _Collector:
    """Feeds the stream's rows to the pipeline's VideoAssembler exactly once each.

    Ray may deliver a row twice (a retried task re-emits what its dead attempt had sent) and
    rows of one video in any order; keys (video, model, clip) make both harmless.
    """

    def __init__(self, models: Sequence[PreparedModel], num_videos: int) -> None:
        self.models = list(models)
        self.assembler = VideoAssembler(models, num_videos)
        self._started: Dict[int, set] = {}  # seq -> keys already put
        self._early: Dict[int, _Early] = {}
        self.planned = 0  # clips of the videos whose header was read (failed ones' lost clips off)
        self.computed = 0  # distinct clips received

    def add(self, seq: int, kind: int, model: int, clip: int, end: bool, meta: bytes, data: bytes) -> Optional[str]:
        """Take one row; returns the id of a video whose header was just read (progress)."""
        if kind == ERROR:  # a worker's typed error (its seq is no video's): the run stops with it
            raise worker_error(meta)
        if seq < self.assembler.head or self.assembler.is_failed(seq):
            return None  # a duplicate of a committed / failed video's row
        if kind == FAILED:
            record = pickle.loads(meta)
            self.planned -= self.assembler.fail(VideoFailed(seq, record, record.error))
            self._started.pop(seq, None)
            self._early.pop(seq, None)
            return None
        started_id = None
        if seq not in self._started:
            early = self._early.setdefault(seq, _Early())
            if kind == CLIP:
                early.features.setdefault((model, clip), data)
            early.ended = early.ended or end
            if not len(meta):
                return None
            record, clips = pickle.loads(meta)
            self.planned += self.assembler.start(VideoStart(seq, record, clips))
            self._started[seq] = set()
            del self._early[seq]
            for (m, c), d in early.features.items():
                self._put(seq, m, c, d)
            if early.ended:
                self.assembler.end(seq)
            return str(record.id)
        if kind == CLIP:
            self._put(seq, model, clip, data)
        if end:
            self.assembler.end(seq)
        return started_id

    def forget(self, seq: int) -> None:
        """The video left the assembler (committed): later copies of its rows are ignored."""
        self._started.pop(seq, None)

    def _put(self, seq: int, model: int, clip: int, data: bytes) -> None:
        seen = self._started[seq]
        if (model, clip) in seen:
            return
        seen.add((model, clip))
        self.computed += 1
        flat = np.frombuffer(data, dtype=np.float32)
        pm = self.models[model]
        feats, at = {}, 0
        for layer in pm.layers:
            shape = pm.feature_shape(layer)
            n = int(np.prod(shape))
            feats[layer] = flat[at : at + n].reshape(shape)
            at += n
        if at != flat.size:
            raise RuntimeError(f"internal error: {flat.size} feature values for {pm.key}, expected {at}")
        self.assembler.put(seq, model, clip, feats)


def _is_local(ray_address: Optional[str]) -> bool:
    """Whether `ray_address` asks for a runtime started on this machine (not a cluster to join)."""
    return ray_address in (None, "", "local")


def _start_ray(ray_address: Optional[str], workers: int) -> bool:
    """Connect to Ray; True when this call started a local runtime (shut down at the end)."""
    import ray

    if ray.is_initialized():
        return False
    if _is_local(ray_address):
        # The in-process engine's shape: `workers` decoders beside one inference worker.
        # worker_niceness 0: Ray starts its workers at nice 15 (to keep its own daemons responsive
        # on a shared node); here they do this run's work, which the in-process engine does at 0.
        # num_gpus: the GPUs torch can use. Ray would count the driver's, and beside a CPU-only
        # torch (or a driver too old for its CUDA) its GPU actors would fail on their first tensor.
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        ray.init(num_cpus=workers + 1, num_gpus=gpus, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING, _system_config={"worker_niceness": 0})
        return True
    try:
        ray.init(address=ray_address, log_to_driver=False, logging_level=logging.WARNING)
    except ConnectionError as e:
        raise ConfigError(f"--ray-address {ray_address}: no Ray cluster answers there ({e}); start one with "
                          "`ray start --head`, or leave --ray-address out for a local runtime") from None
    return True


def _shutdown(local: bool) -> None:
    """Disconnect; a local runtime this call started is stopped (a cluster is left running).

    Ray stops its processes one by one, SIGTERM then up to 1 s each. Its autoscaler monitor
    takes the whole second: it is stopped after the GCS, and its SIGTERM handler tries to report
    to the GCS first. A local runtime has nothing to autoscale, so the monitor is killed first
    (measured: `ray.shutdown` 1.1 s → 0.1 s).
    """
    import ray

    monitors: List[Any] = []
    if local:
        try:
            from ray._private import ray_constants, worker as ray_worker

            node = ray_worker._global_node
            if node is not None:
                monitors = list(node.all_processes.get(ray_constants.PROCESS_TYPE_MONITOR, []))
        except (ImportError, AttributeError):  # another Ray version: its own shutdown does it all
            pass
        for info in monitors:
            info.process.kill()
            info.process.wait(timeout=10)
    ray.shutdown()


def _warm_workers(actor_cpus: int) -> List[Any]:
    """Start the import in the workers that will decode, while the driver builds the models.

    Ray reuses these worker processes for the decode tasks, but never for an actor (an actor
    gets a fresh process), so only the CPUs the actors leave are warmed: one more import would
    only compete for the CPU with the actor's own (on 2 cores, seconds).
    """
    import ray

    warm = ray.remote(num_cpus=1)(import_worker)  # unpickling it imports torch and c3dfeat
    cpus = int(ray.cluster_resources().get("CPU", 1))
    return [warm.remote() for _ in range(min(256, max(1, cpus - actor_cpus)))]


def _cluster_device(device: str) -> Tuple[torch.device, int]:
    """The actors' device and the cluster's GPU count ("auto": cuda when the cluster has GPUs)."""
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0))
    if device == "auto":
        return torch.device("cuda" if gpus else "cpu"), gpus
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"--device must be auto, cpu or cuda[:N], got {device!r}") from None
    if dev.type == "cuda" and not gpus:
        raise ConfigError(f"--device {device}: the Ray cluster has no GPU; use --device cpu or add GPU nodes")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device must be auto, cpu or cuda[:N], got {device!r}")
    # Each actor sees the one GPU Ray gave it as cuda:0.
    return torch.device(dev.type), gpus


def _dataset(todo: Sequence[VideoTask], prepared: Sequence[PreparedModel], *, decoder: str, device: torch.device,
             dtype: str, allow_tf32: bool, batch_size: int, gpus: int) -> Any:
    """The Ray Data plan: videos → decode tasks (flat_map) → inference actor pool (map_batches)."""
    import ray
    import ray.data

    logging.getLogger("ray.data").setLevel(logging.WARNING)  # no per-dataset INFO lines in the CLI's output
    ctx = ray.data.DataContext.get_current()
    ctx.target_max_block_size = _BLOCK_BYTES
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    rows = [{"seq": t.seq, "id": t.id, "path": str(t.path), "label": t.label, "input_index": t.input_index}
            for t in todo]
    # One video per block (up to 10k blocks): a retried task redoes one video, and decode tasks
    # start in input order, which keeps the driver's in-order commit buffer short.
    videos = ray.data.from_items(rows, override_num_blocks=min(len(rows), 10_000))
    light = [dataclasses.replace(m, net=_NO_NET) for m in prepared]  # decoders need transforms, not nets
    clips = videos.flat_map(functools.partial(decode_rows, models=light, decoder=decoder), num_cpus=1)
    pool, num_cpus, num_gpus = _actor_pool(device, gpus)
    models_ref = ray.put(pack_models(prepared))
    # enable_true_multi_threading: the actor's calls run in its main thread. Ray Data otherwise runs
    # them in a thread of its own, and glibc serves a non-main thread from an arena whose heaps hold
    # at most 64 MiB: every activation above that was mmapped and unmapped per batch, whatever
    # configure_allocator says (C3D on CPU: 100k page faults and 0.19 s of system time per batch,
    # 0.75 s per batch instead of 0.62). One call at a time: the runners reuse their buffers.
    return clips.map_batches(
        InferenceActor,
        fn_constructor_args=(models_ref, device.type, dtype, allow_tf32, batch_size, 0),
        batch_size=_rows_per_call(prepared, batch_size), batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(
            size=pool, enable_true_multi_threading=True, max_concurrent_calls_per_actor=1),
        num_cpus=num_cpus, num_gpus=num_gpus,
    )


def _actor_pool(device: torch.device, gpus: int) -> Tuple[int, Optional[int], Optional[int]]:
    """The inference actors: (how many, CPUs each, GPUs each)."""
    import ray

    if device.type == "cuda":
        return max(1, gpus), None, 1
    # CPU inference: one actor per node at most, most CPUs left to decoding; the actor's torch
    # uses the node's cores like the in-process engine's main thread does.
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    cpus = int(ray.cluster_resources().get("CPU", 1))
    return max(1, min(nodes, cpus // 4)), 1, None


def _rows_per_call(prepared: Sequence[PreparedModel], batch_size: int) -> int:
    """Rows handed to one actor call: several model batches' worth (~`_CALL_BYTES` of clips).

    Each call runs full batches and zero-pads its last one; Ray Data cuts calls at block
    boundaries, so one call per model batch padded ~a third of the batches (measured on
    ../shared/videos: 1.74x the in-process time); k batches per call pad at most 1 in k+1.
    """
    clip_bytes = max(4 * int(np.prod(m.clip_shape)) for m in prepared)
    return batch_size * max(1, min(_MAX_BATCHES_PER_CALL, _CALL_BYTES // (batch_size * clip_bytes)))


def _commit_stream(stream: Any, todo: Sequence[VideoTask], prepared: Sequence[PreparedModel], writer: Any,
                   report: ExtractReport, progress: Optional[Callable[[Progress], None]], t0: float) -> None:
    """Drain the dataset; commit finished videos in input order (the in-process protocol).

    Finished videos are committed together (assemble.CommitGroup: up to 64 at a time, or once
    the oldest has waited 1 s): one ``add_videos`` call costs about what one ``add_video`` does,
    and the single writer is the ceiling of a cluster run (docs/scale.md;
    scripts/bench_ray.py --driver).
    """
    collector = _Collector(prepared, len(todo))
    group = CommitGroup()
    committed = 0

    def emit(event: str, current: str) -> None:
        if progress is not None:
            progress(Progress(report.skipped + committed, report.total, len(report.failed), report.clips,
                              collector.planned, time.monotonic() - t0, current, event))

    def commit(ready: List[ReadyVideo]) -> None:
        nonlocal committed
        writer.add_videos([(r.record, r.results) for r in ready])
        for r in ready:
            committed += 1
            if r.failed:
                report.failed.append((r.record.id, r.record.error))
            else:
                report.ok += 1
            emit("commit", r.record.id)

    for batch in stream.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2):
        cols = (batch["seq"], batch["kind"], batch["model"], batch["clip"], batch["end"], batch["meta"], batch["data"])
        clips_before = report.clips
        for seq, kind, model, clip, end, meta, data in zip(*cols):
            started = collector.add(int(seq), int(kind), int(model), int(clip), bool(end), bytes(meta), bytes(data))
            report.clips = collector.computed
            if started is not None:
                emit("start", started)
        if report.clips != clips_before:
            emit("batch", "")
        if group.due():
            commit(group.take())  # what has waited long enough, before adding what this batch finished
        for video in collector.assembler.pop_ready():
            collector.forget(video.seq)
            group.add(video)
        if len(group) >= group.max_videos:
            commit(group.take())
    if len(group):
        commit(group.take())
    if not collector.assembler.finished:
        raise RuntimeError(f"internal error: the Ray stream ended with {len(todo) - collector.assembler.head} "
                           "videos uncommitted")


def extract_ray(
    inputs: Union[PathLike, Sequence[PathLike]],
    output: PathLike,
    models: Sequence[Any] = ("c3d",),
    *,
    device: str = "auto",
    dtype: str = "fp32",
    allow_tf32: bool = False,
    batch_size: Optional[int] = None,
    workers: Optional[int] = None,
    worker_kind: str = "auto",
    decoder: str = "pyav",
    decode_device: str = "cpu",
    clip_len: Optional[int] = None,
    stride: Optional[int] = None,
    frame_step: Optional[int] = None,
    num_clips: Optional[int] = None,
    fps: Optional[float] = None,
    tail: str = "pad",
    crops: Crops = "center",
    crop_reduce: str = "mean",
    weights: Optional[PathLike] = None,
    weights_dir: Optional[PathLike] = None,
    require_hashes: Optional[bool] = None,
    weights_mirror: Optional[str] = None,
    random_init: bool = False,
    half: bool = False,
    overwrite: bool = False,
    retry_failed: bool = False,
    shard: Union[None, str, Tuple[int, int]] = None,
    progress: Optional[Callable[[Progress], None]] = None,
    command_line: Optional[str] = None,
    max_pending: Optional[int] = None,
    ray_address: Optional[str] = None,
) -> ExtractReport:
    """:func:`c3dfeat.extract` on Ray Data: same arguments, same file (docs/scale.md).

    ``ray_address``: None starts a local runtime with ``workers`` decode CPUs plus one for
    inference (stopped at the end; None: as in c3dfeat.extract, for this machine's device);
    ``"auto"`` (or ``"host:6379"``) joins a running cluster.
    A Ray runtime already initialised in this process is used as it is. `max_pending` is not
    used: Ray Data's backpressure bounds what is in flight. `worker_kind` neither: decode tasks
    always run in Ray's worker processes. `decode_device` must be "cpu".
    """
    import ray

    t0 = time.monotonic()
    if decode_device != "cpu":
        raise ConfigError("GPU decoding is not supported with --engine ray yet; drop --decode-device "
                          "(decode on the CPU) or use --engine local")
    reqs = check_options(models, weights=weights, dtype=dtype, crop_reduce=crop_reduce, batch_size=batch_size,
                         workers=workers, decoder=decoder)
    tasks, shard_kn = resolve_tasks(inputs, shard)
    overrides = dict(clip_len=clip_len, stride=stride, frame_step=frame_step, num_clips=num_clips, fps=fps,
                     tail=tail)
    # Built once here, on CPU: the actors get these very networks (and weights) through the
    # object store, so worker nodes need no weights cache and every actor runs the same model.
    # Built in a thread while Ray's runtime starts: the two do not depend on each other, and
    # the runtime's start is mostly waiting for its processes (~4 s of a short job here).
    builder = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="c3dfeat-models")
    building = builder.submit(
        prepare_models, reqs, device=torch.device("cpu"), random_init=random_init, weights_dir=weights_dir,
        require_hashes=require_hashes, weights_mirror=weights_mirror, sampling_overrides=overrides, crops=crops,
        crop_reduce=crop_reduce)
    # ray.data's import (~1 CPU-s) is needed right after the runtime is up: done meanwhile too.
    importing = builder.submit(importlib.import_module, "ray.data")
    builder.shutdown(wait=False)  # its one job still runs; the thread ends with it
    trace("extract start")
    if workers is None:  # this machine's: only a local runtime uses it (a cluster's driver may have no GPU)
        workers = default_workers("cuda" if device != "cpu" and torch.cuda.is_available() else "cpu")
    started = _start_ray(ray_address, workers)
    trace("ray.init done")
    try:
        dev, gpus = _cluster_device(device)
        # A local runtime is this machine: say so when "auto" left its GPU unused (the local engine's check)
        fallback = warn_if_gpu_unused(device, dev) if started and _is_local(ray_address) else None
        actors, cpus_each, _ = _actor_pool(dev, gpus)
        warming = _warm_workers(actors * (cpus_each or 0))  # noqa: F841  (kept alive until the dataset starts)
        batch_size = run_batch_size(batch_size, output, overwrite, dev, [r.name for r in reqs])
        report = ExtractReport(output=Path(output), device=str(dev), dtype=dtype, batch_size=batch_size, engine="ray")
        prepared = building.result()
        importing.result()
        trace("models built")
        report.random_init = [m.key for m in prepared if m.random_init]
        report.warnings.extend(([fallback] if fallback else []) + model_warnings(prepared, dev, dtype))
        writer = open_run_writer(
            output, prepared, decoder=decoder, dtype=dtype, half=half, retry_failed=retry_failed,
            overwrite=overwrite, command_line=command_line, shard=shard_kn,
            run={"device": str(dev), "batch_size": batch_size, "workers": workers, "engine": "ray",
                 "ray_address": ray_address or "local", "ray": ray.__version__, "allow_tf32": allow_tf32},
        )
        interrupted = False
        try:
            todo = pending_tasks(tasks, writer, report)
            t_run = time.monotonic()
            try:
                if todo:
                    stream = _dataset(todo, prepared, decoder=decoder, device=dev, dtype=dtype,
                                      allow_tf32=allow_tf32, batch_size=batch_size, gpus=gpus)
                    trace("dataset planned")
                    _commit_stream(stream, todo, prepared, writer, report, progress, t0)
            except KeyboardInterrupt:
                interrupted = True
            report.run_seconds = time.monotonic() - t_run
        except BaseException:
            writer.close()  # a bug: committed videos stay, the file is marked incomplete with the reason
            raise
        trace("stream done")
        return finish_run(writer, interrupted=interrupted, output=output, tasks=tasks, report=report, t0=t0)
    finally:
        if started:
            _shutdown(local=_is_local(ray_address))
        trace("shutdown done")
