"""What every engine does around its own scheduling: check the options, list the videos, set the
process up, open the writer with the run's provenance, and close the run the same way.

The in-process engine (api.py) and the Ray engine (ray_engine.py) both import this module; neither
imports the other's (api dispatches to ray_engine lazily, so ray_engine must not import api).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch

from c3dfeat.errors import ConfigError, ExtractInterrupted, StoreError
from c3dfeat.pipeline.decode import VideoTask
from c3dfeat.pipeline.plan import COMPUTE_DTYPES, ModelRequest, PreparedModel, default_batch_size
from c3dfeat.pipeline.report import ExtractReport

__all__ = ["check_options", "prepare_runtime", "resolve_tasks", "run_batch_size", "model_warnings", "environment",
           "open_run_writer", "pending_tasks", "failed_before", "finish_run"]

PathLike = Union[str, "os.PathLike[str]"]


def check_options(models: Sequence[Any], *, weights: Optional[PathLike], dtype: str, crop_reduce: str,
                  batch_size: Optional[int], workers: Optional[int], decoder: str,
                  decode_device: str = "cpu") -> List[ModelRequest]:
    """The model requests of a run, after the checks both engines make (ConfigError otherwise).
    A `decode_device` other than "cpu" is checked on this machine (torchcodec, CUDA) here, so a
    machine that cannot decode there stops the run before any video is opened."""
    reqs = [ModelRequest.of(m) for m in models]
    if weights is not None:
        if len(reqs) != 1:
            raise ConfigError(
                "weights=PATH needs exactly one model; set ModelRequest(name, layers, weights=...) per model"
            )
        reqs = [dataclasses.replace(reqs[0], weights=str(weights))]
    if dtype not in COMPUTE_DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(COMPUTE_DTYPES)}, got {dtype!r}")
    if crop_reduce not in ("mean", "none"):
        raise ConfigError(f"crop_reduce must be 'mean' or 'none', got {crop_reduce!r}")
    if (batch_size is not None and batch_size < 1) or (workers is not None and workers < 1):
        raise ConfigError(f"batch_size and workers must be >= 1, got {batch_size} and {workers}")
    from c3dfeat.video import BACKENDS, _import_backend

    if decoder not in BACKENDS:
        raise ConfigError(f"decoder must be one of {', '.join(BACKENDS)}, got {decoder!r}")
    _import_backend(decoder)  # not loadable: DecoderUnavailableError now, not every video failed for it
    if decode_device != "cpu":
        from c3dfeat.video import check_decode_device

        check_decode_device(decode_device, decoder)
    return reqs


def prepare_runtime(device: torch.device, allow_tf32: bool) -> None:
    """Process-wide settings, once per process that runs a model, before the first large
    allocation: the allocator (c3dfeat.runtime), on CPU no more torch threads than usable
    cores, and on CUDA TF32 (off unless asked) and cuDNN autotuning."""
    from c3dfeat.runtime import configure_allocator, usable_cores

    configure_allocator()  # freed activations stay in the heap: no page churn (C3DFEAT_MALLOC=system: off)
    cores = usable_cores()
    if device.type == "cpu" and torch.get_num_threads() > cores:
        # torch counts the node's cores; a container's or batch job's CPU quota allows fewer, and
        # OpenMP threads past the quota stall each other at every barrier once it throttles.
        torch.set_num_threads(cores)
    if device.type == "cuda":
        # fp32 stays exact: TF32 rounds matmul / conv inputs to 10 mantissa bits.
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32
        torch.backends.cudnn.allow_tf32 = allow_tf32
        # Fixed input shapes (full batches): let cuDNN pick its fastest kernels once.
        torch.backends.cudnn.benchmark = True


def resolve_tasks(
    inputs: Union[PathLike, Sequence[PathLike]], shard: Union[None, str, Tuple[int, int]] = None
) -> Tuple[List[VideoTask], Optional[Tuple[int, int]]]:
    """The run's videos (sorted by id, after `shard`) as tasks with their input_index; seq is
    the position in this list (renumbered by :func:`pending_tasks`)."""
    from c3dfeat.inputs import parse_shard, resolve_inputs, shard as shard_of

    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    shard_kn = parse_shard(shard) if isinstance(shard, str) and shard else (tuple(shard) if shard else None)
    videos = resolve_inputs(list(inputs))  # raises NoVideosError when there is none
    # input_index = position in the full sorted input list: merge orders shards by it.
    indexed = list(enumerate(videos))
    if shard_kn:
        keep = {v.id for v in shard_of(videos, int(shard_kn[0]), int(shard_kn[1]))}
        indexed = [(i, v) for i, v in indexed if v.id in keep]
    tasks = [VideoTask(seq, str(v.id), Path(v.path), str(v.label or ""), i) for seq, (i, v) in enumerate(indexed)]
    return tasks, (int(shard_kn[0]), int(shard_kn[1])) if shard_kn else None


def run_batch_size(batch_size: Optional[int], output: PathLike, overwrite: bool, device: torch.device,
                   model_names: Sequence[str]) -> int:
    """`batch_size`, or when None: the batch size the output was written with, when this run
    resumes it on the same kind of device (the batch size changes the features' last bits, and
    the default may have changed since), else the device's default."""
    if batch_size is not None:
        return batch_size
    path = Path(output)
    if not overwrite and path.exists():
        from c3dfeat.store.files import open_read

        try:
            with open_read(path) as f:
                run = json.loads(f.attrs.get("run", "") or "{}")
        except (OSError, ValueError, StoreError):
            run = {}  # opening it for writing says what is wrong with it
        size, recorded_on = run.get("batch_size"), str(run.get("device", "")).split(":")[0]
        if isinstance(size, int) and size >= 1 and recorded_on == device.type:
            return size
    return default_batch_size(device, model_names)


def model_warnings(prepared: Sequence[PreparedModel], device: torch.device, dtype: str) -> List[str]:
    """What the report says about the models and settings before the run starts."""
    out = []
    if device.type == "cpu" and dtype == "fp16":
        out.append("fp16 on CPU is slow and not exact; use fp32 or bf16 on CPU")
    for m in prepared:
        if m.transform.uses_mean_approximation:
            out.append(
                f"{m.key}: mean cube not found locally; using the per-channel mean approximation "
                f"(`c3dfeat weights download {m.spec.name}.{m.spec.preprocessing.mean_cube}` for the exact input)"
            )
    return out


def environment(device: torch.device, decoder: str) -> Dict[str, Any]:
    """What else shaped this process's bits, for the `run` record (not compared): Python and
    numpy, the decoder's library and FFmpeg, on a GPU its name, CUDA and cuDNN, and on the CPU
    torch's thread count (its kernels round otherwise with one thread than with several)."""
    import platform

    import numpy as np

    from c3dfeat.video import backend_versions

    env: Dict[str, Any] = {"python": platform.python_version(), "numpy": np.__version__,
                           "decoder_versions": backend_versions(decoder)}
    if device.type == "cuda":
        env.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version())
    else:
        env["torch_threads"] = torch.get_num_threads()
    return env


def open_run_writer(output: PathLike, models: Sequence[PreparedModel], *, decoder: str, dtype: str, half: bool,
                    retry_failed: bool, overwrite: bool, command_line: Optional[str],
                    shard: Optional[Tuple[int, int]], run: Dict[str, Any], decode_device: str = "cpu") -> Any:
    """The run's writer. The provenance (compared on resume) is the models' records plus the
    decoder, the decode device's kind (only when not the CPU) and compute dtype; `run` (device,
    batch size, engine ...) is recorded, not compared: features are bit-reproducible for the same
    device, dtype and batch size (batching.py)."""
    from c3dfeat.store import open_writer
    from c3dfeat.video import decode_device_kind

    if command_line is None:
        command_line = " ".join(shlex.quote(a) for a in sys.argv)
    provenance = {"decoder": decoder, "dtype": dtype}
    kind = decode_device_kind(decode_device)
    if kind != "cpu":
        # NVDEC converts colours differently from the CPU decoders, so a file is resumed or merged
        # only with the same kind. Absent means "cpu": older files (and CPU runs) compare equal.
        provenance["decode_device"] = kind
    return open_writer(Path(output), [m.info for m in models], provenance,
                       storage_dtype="float16" if half else "float32", retry_failed=retry_failed,
                       overwrite=overwrite, command_line=command_line,
                       shard=f"{shard[0]}/{shard[1]}" if shard else "",
                       run={"torch": torch.__version__, **run})


def pending_tasks(tasks: Sequence[VideoTask], writer: Any, report: ExtractReport) -> List[VideoTask]:
    """The tasks the file does not hold yet, renumbered 0..n-1; counts total and skipped."""
    done = set(writer.done_ids)
    todo = [dataclasses.replace(t, seq=seq) for seq, t in enumerate(t for t in tasks if t.id not in done)]
    report.total = len(tasks)
    report.skipped = len(tasks) - len(todo)
    return todo


def failed_before(output: PathLike, tasks: Sequence[VideoTask], report: ExtractReport) -> List[Tuple[str, str]]:
    """This run's inputs recorded as failed by an earlier run (kept failed on resume)."""
    from c3dfeat.store import FeatureFile

    mine = {t.id for t in tasks}
    new = {vid for vid, _ in report.failed}
    with FeatureFile(Path(output)) as ff:
        return [(v, e) for v, e in ff.failed if v in mine and v not in new]


def finish_run(writer: Any, *, interrupted: bool, output: PathLike, tasks: Sequence[VideoTask],
               report: ExtractReport, t0: float) -> ExtractReport:
    """Close the file (marked complete unless interrupted or a bug is propagating) and finish the
    report; ExtractInterrupted after Ctrl-C / SIGTERM, with what the file holds."""
    saved = int(writer.num_videos)
    writer.close(complete=None if not interrupted else False)
    report.seconds = time.monotonic() - t0
    if interrupted:
        raise ExtractInterrupted(
            f"interrupted: {saved} videos saved in {output}; run the same command to resume",
            report=report, saved=saved,
        )
    if report.skipped:
        report.failed_before = failed_before(output, tasks, report)
        report.seconds = time.monotonic() - t0
    return report
