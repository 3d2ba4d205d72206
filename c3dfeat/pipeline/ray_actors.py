"""What the Ray engine runs in Ray's worker processes: decode tasks, the inference actor, model shipping.

The driver side (plan, commit loop, runtime start) is c3dfeat.pipeline.ray_engine; this module is
all a worker imports, so it stays free of the driver's imports (ray.data, the HDF5 writer).

Models travel to the actors as a *skeleton* (the module with its tensors on the meta device: a few
KB to pickle) plus the tensors as numpy arrays: the object store keeps numpy arrays out of band,
so `ray.put` is one copy and the actor's `ray.get` none (a pickled torch module is copied on both
sides: C3D's 312 MB took 0.5 s to put and 0.3–0.7 s to get here, the arrays 0.17 s and 0.01 s).
Worker nodes need no weights cache, and every actor runs the very weights the driver loaded.
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import os
import pickle
import time
import warnings
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from c3dfeat.errors import C3DFeatError, ConfigError
from c3dfeat.pipeline.batching import BatchRunner
from c3dfeat.pipeline.decode import ClipReady, VideoEnd, VideoFailed, VideoStart, VideoTask, decode_video
from c3dfeat.pipeline.plan import PreparedModel
from c3dfeat.pipeline.run import prepare_runtime
from c3dfeat.runtime import unusable_gpu_reason, usable_cores

# Row kinds of the decode → inference → driver stream (one schema for every row). ERROR carries
# one of our typed errors (a pickled C3DFeatError) to the driver, which raises it again: raised
# in the worker, it would arrive as Ray's RayTaskError / ActorDiedError, our one-line message
# only at the end of a traceback's text.
CLIP, EMPTY, FAILED, ERROR = 0, 1, 2, 3
TRACE_ENV = "C3DFEAT_RAY_TRACE"  # a file: every process appends "<unix time> <pid> <phase>" lines

Weights = Dict[str, Any]  # tensor name -> numpy array (a torch tensor where numpy has no dtype)


def trace(event: str) -> None:
    """Append one phase line to $C3DFEAT_RAY_TRACE (scripts/bench_ray.py --trace); no-op when unset."""
    path = os.environ.get(TRACE_ENV)
    if path:
        with open(path, "a") as f:
            f.write(f"{time.time():.3f} {os.getpid()} {event}\n")


def _minor_faults() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def import_worker() -> int:
    """Runs in a Ray worker ahead of its first task: the imports a decode task needs (seconds)."""
    trace("worker imported")
    return os.getpid()


# ----------------------------------------------------------------------------- decode tasks
def decode_rows(row: Dict[str, Any], *, models: Sequence[PreparedModel], decoder: str) -> Iterator[Dict[str, Any]]:
    """One video → its clip rows (streamed as decoded), an ``EMPTY`` row or a ``FAILED`` row.

    Runs the pipeline's own decoder. The video's header (record + clip plan) rides on its first
    row; the last row carries ``end`` (one clip row is held back until the decoder says so).
    Decode failures come out as a row (a result, never retried); bugs raise and fail the run.
    """
    task = VideoTask(int(row["seq"]), str(row["id"]), Path(str(row["path"])), str(row["label"]),
                     int(row["input_index"]))
    trace(f"decode start {task.seq}")
    try:
        yield from _video_rows(task, models, decoder)
    except C3DFeatError as e:  # not the video's fault (decode_video made those a FAILED row): the run's
        yield error_row(e, f"decoding {task.path}")
    trace(f"decode end {task.seq}")


def _video_rows(task: VideoTask, models: Sequence[PreparedModel], decoder: str) -> Iterator[Dict[str, Any]]:
    header = b""
    held: Optional[Dict[str, Any]] = None
    for msg in decode_video(task, models, decoder):
        if isinstance(msg, VideoStart):
            header = pickle.dumps((msg.record, msg.clips), protocol=pickle.HIGHEST_PROTOCOL)
        elif isinstance(msg, ClipReady):
            if held is not None:
                yield held
            if msg.tensor.dtype != torch.float32:
                raise RuntimeError(f"internal error: clip tensor is {msg.tensor.dtype}, expected float32")
            held = _row(task.seq, CLIP, msg.model, msg.clip, header, msg.tensor.numpy().tobytes())
            header = b""
        elif isinstance(msg, VideoEnd):
            if held is None:  # no clip at all (e.g. tail="drop" on a short video)
                held = _row(task.seq, EMPTY, -1, -1, header, b"")
            held["end"] = True
        elif isinstance(msg, VideoFailed):
            if held is not None:
                yield held
                held = None
            yield _row(task.seq, FAILED, -1, -1, pickle.dumps(msg.record), b"")
    if held is not None:
        yield held


def _row(seq: int, kind: int, model: int, clip: int, meta: bytes, data: bytes) -> Dict[str, Any]:
    return {"seq": seq, "kind": kind, "model": model, "clip": clip, "end": False, "meta": meta, "data": data}


def _node() -> str:
    import ray

    return str(ray.util.get_node_ip_address())


def error_row(error: C3DFeatError, where: str) -> Dict[str, Any]:
    """`error` as an ERROR row; the node and what the worker was doing go into its notes."""
    error.add_note(f"(raised in a Ray worker on node {_node()}, {where})")
    return _row(-1, ERROR, -1, -1, pickle.dumps(error, protocol=pickle.HIGHEST_PROTOCOL), b"")


def worker_error(meta: bytes) -> C3DFeatError:
    """The typed error an ERROR row carries (the driver raises it)."""
    error = pickle.loads(meta)  # our own workers' bytes, through the object store
    if not isinstance(error, C3DFeatError):
        raise RuntimeError(f"internal error: an ERROR row carries {type(error).__name__}, not a C3DFeatError")
    return error


# ----------------------------------------------------------------------------- model shipping
def _tensors(net: torch.nn.Module) -> Iterator[Tuple[str, torch.Tensor]]:
    """Every parameter and buffer (non-persistent ones too: they are not in the state dict)."""
    return itertools.chain(net.named_parameters(), net.named_buffers())


def pack_models(prepared: Sequence[PreparedModel]) -> List[Tuple[PreparedModel, Weights]]:
    """Each model as (the model with a weightless skeleton network, its tensors as arrays)."""
    packed = []
    for m in prepared:
        memo: Dict[int, Any] = {}
        weights: Weights = {}
        for name, t in _tensors(m.net):
            meta = torch.empty_like(t, device="meta")
            memo[id(t)] = torch.nn.Parameter(meta, t.requires_grad) if isinstance(t, torch.nn.Parameter) else meta
            data = t.detach().cpu()
            try:
                weights[name] = data.numpy()
            except TypeError:  # bfloat16 & co.: no numpy dtype; pickled as a tensor
                weights[name] = data
        packed.append((dataclasses.replace(m, net=copy.deepcopy(m.net, memo)), weights))
    return packed


def unpack_models(packed: Sequence[Tuple[PreparedModel, Weights]], device: torch.device) -> List[PreparedModel]:
    """The networks rebuilt on `device` from `pack_models`' output: bit-equal weights."""
    out = []
    for m, weights in packed:
        net = m.net.to_empty(device=device)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # read-only arrays (the object store's): copied at once
            for name, t in _tensors(net):
                w = weights[name]
                t.copy_(w if isinstance(w, torch.Tensor) else torch.from_numpy(w))
        out.append(dataclasses.replace(m, net=net))
    return out


# ----------------------------------------------------------------------------- inference actors
class InferenceActor:
    """Runs the models on the clip rows of a batch (other rows pass through); one per actor."""

    def __init__(self, models_ref: Any, device: str, dtype: str, allow_tf32: bool, batch_size: int,
                 threads: int) -> None:
        import ray

        trace("actor init")
        # A typed error here is kept and returned by every call: raised, it would reach the driver
        # as Ray's ActorDiedError (after Ray Data's restarts), its message lost in a traceback.
        self.error: Optional[Dict[str, np.ndarray]] = None
        self.runners: List[BatchRunner[int]] = []
        try:
            # Ray sets OMP_NUM_THREADS=1 in its workers; a CPU actor uses the node's usable cores (its
            # affinity and CPU quota) as the in-process engine's main thread does (decode tasks run
            # beside it there too).
            torch.set_num_threads(threads if threads > 0 else usable_cores() if device == "cpu" else 1)
            dev = torch.device(device)
            if dev.type == "cuda" and not torch.cuda.is_available():
                # Ray counts a node's GPUs itself; torch's build there may not run on them (docs/scale.md)
                why = unusable_gpu_reason() or "it sees no usable NVIDIA GPU"
                raise ConfigError(f"--device {device}: Ray gave an inference actor a GPU on node {_node()}, but "
                                  f"torch {torch.__version__} there cannot use it: {why}; give that node a "
                                  "CUDA build of torch its driver runs, or use --device cpu")
            prepare_runtime(dev, allow_tf32)
            packed = ray.get(models_ref) if isinstance(models_ref, ray.ObjectRef) else models_ref
            self.runners = [BatchRunner(m, batch_size, dev, dtype) for m in unpack_models(packed, dev)]
        except C3DFeatError as e:
            self.error = _one_row(error_row(e, "starting an inference actor"))
        trace("actor ready")

    def __call__(self, batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        if self.error is None:
            try:
                return self._compute(batch)
            except C3DFeatError as e:  # e.g. DeviceMemoryError: stops the run, typed (later calls say it again)
                self.error = _one_row(error_row(e, "running the models"))
        return self.error

    def _compute(self, batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        kinds, model_of, data = batch["kind"], batch["model"], batch["data"]
        trace(f"actor call {len(kinds)} rows, cpu {time.process_time():.2f} s, {_minor_faults()} page faults")
        out = np.empty(len(kinds), dtype=object)
        out[:] = b""
        for m, runner in enumerate(self.runners):
            rows = np.flatnonzero((kinds == CLIP) & (model_of == m))
            shape = runner.model.clip_shape
            for s in range(0, len(rows), runner.batch_size):
                sel = rows[s : s + runner.batch_size]
                clips = [torch.from_numpy(np.frombuffer(data[i], dtype=np.float32).reshape(shape)) for i in sel]
                for i, feats in zip(sel, runner.compute(clips)):
                    out[i] = b"".join(np.ascontiguousarray(feats[layer], np.float32).tobytes()
                                      for layer in runner.model.layers)
        batch = dict(batch)
        batch["data"] = out
        trace(f"actor done, cpu {time.process_time():.2f} s, {_minor_faults()} page faults")
        return batch


def _one_row(row: Dict[str, Any]) -> Dict[str, np.ndarray]:
    """A row as a one-row numpy batch (map_batches' output format)."""
    out = {}
    for key, value in row.items():
        column = np.empty(1, dtype=object if isinstance(value, bytes) else type(value))
        column[0] = value
        out[key] = column
    return out
