"""`extract(...)`: check the options, prepare the models, open the file, run an engine, report."""
from __future__ import annotations

import dataclasses
import os
import shlex
import signal
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch

from c3dfeat.errors import ConfigError, ExtractInterrupted
from c3dfeat.pipeline.decode import VideoTask
from c3dfeat.pipeline.plan import (
    COMPUTE_DTYPES,
    ModelRequest,
    PreparedModel,
    default_batch_size,
    pick_device,
    prepare_models,
)
from c3dfeat.pipeline.report import ExtractReport, Progress
from c3dfeat.pipeline.scheduler import LocalScheduler
from c3dfeat.store import open_writer
from c3dfeat.transforms import Crops

__all__ = ["extract", "ENGINES", "resolve_tasks", "open_run_writer", "failed_before"]

PathLike = Union[str, "os.PathLike[str]"]
ModelArg = Union[str, Tuple[str, Any], ModelRequest]
ENGINES = ("local", "ray")


def _prepare_runtime(device: torch.device, allow_tf32: bool) -> None:
    """Process-wide settings, once per run, before the first large allocation: the allocator
    (c3dfeat.runtime), and on CUDA TF32 (off unless asked) and cuDNN autotuning."""
    from c3dfeat.runtime import configure_allocator

    configure_allocator()  # freed activations stay in the heap: no page churn (C3DFEAT_MALLOC=system: off)
    if device.type == "cuda":
        # fp32 stays exact: TF32 rounds matmul / conv inputs to 10 mantissa bits.
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32
        torch.backends.cudnn.allow_tf32 = allow_tf32
        # Fixed input shapes (full batches): let cuDNN pick its fastest kernels once.
        torch.backends.cudnn.benchmark = True


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a cluster job preempted, `kill PID`) ends the run like Ctrl-C: the file is closed
    cleanly with every committed video. Only in the main thread, and only while SIGTERM has its
    default action (an application's own handler is left alone)."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def resolve_tasks(
    inputs: Sequence[PathLike], shard: Union[None, str, Tuple[int, int]] = None
) -> Tuple[List[VideoTask], Optional[Tuple[int, int]]]:
    """The run's videos (sorted by id, after `shard`) as tasks with their input_index; seq is
    the position in this list (renumber after dropping done videos)."""
    from c3dfeat.inputs import parse_shard, resolve_inputs, shard as shard_of

    shard_kn = parse_shard(shard) if isinstance(shard, str) and shard else (tuple(shard) if shard else None)
    videos = resolve_inputs(list(inputs))  # raises NoVideosError when there is none
    # input_index = position in the full sorted input list: merge orders shards by it.
    indexed = list(enumerate(videos))
    if shard_kn:
        keep = {v.id for v in shard_of(videos, shard_kn[0], shard_kn[1])}
        indexed = [(i, v) for i, v in indexed if v.id in keep]
    tasks = [VideoTask(seq, str(v.id), Path(v.path), str(v.label or ""), i) for seq, (i, v) in enumerate(indexed)]
    return tasks, (int(shard_kn[0]), int(shard_kn[1])) if shard_kn else None


def open_run_writer(output: PathLike, models: Sequence[PreparedModel], provenance: Dict[str, Any], *,
                 half: bool, retry_failed: bool, **kw: Any) -> Any:
    """The run's writer (both engines): storage float16 when `half`, failed videos redone when
    `retry_failed`; `kw` goes to :func:`c3dfeat.store.open_writer`."""
    storage_dtype = "float16" if half else "float32"
    return open_writer(Path(output), [m.info for m in models], provenance, storage_dtype=storage_dtype,
                       retry_failed=retry_failed, **kw)


def extract(
    inputs: Union[PathLike, Sequence[PathLike]],
    output: PathLike,
    models: Sequence[ModelArg] = ("c3d",),
    *,
    device: str = "auto",
    dtype: str = "fp32",
    allow_tf32: bool = False,
    batch_size: Optional[int] = None,
    workers: int = 2,
    decoder: str = "pyav",
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
    engine: str = "local",
    ray_address: Optional[str] = None,
    crop: Optional[Crops] = None,
) -> ExtractReport:
    """Extract features of `inputs` into the HDF5 file `output` (see `c3dfeat extract --help`).

    Args:
        inputs: video files, directories (recursive) and/or list files (one path per line,
            optional label column); ids are paths relative to their input root.
        output: the .h5 file; if it exists with the same settings the run resumes.
        models: names, ``(name, layers)`` pairs or :class:`ModelRequest`; layers default to the
            model's default layer (C3D fc6, others pool5).
        device: "auto", "cpu", "cuda" or "cuda:N".
        dtype: compute dtype: "fp32" (exact), "bf16" or "fp16" (torch.autocast; recorded).
        allow_tf32: let CUDA fp32 matmuls/convolutions use TF32 (faster, not exact; off).
        batch_size: clips per forward pass (each clip counts once, whatever the crops);
            None: 4 on CPU, larger on CUDA (c3dfeat.runtime.default_batch_size when present).
        workers: decoding threads.
        clip_len, stride, frame_step, num_clips, fps, tail: sampling overrides (None: the
            model's own; ``fps=0``: the native rate; docs/sampling.md).
        crops: "center", 3 or 10; crop_reduce: "mean" (average the crops) or "none" (keep them).
        weights: a local checkpoint file (single model; or set ModelRequest.weights).
        weights_dir, require_hashes, weights_mirror: where weights come from and how they are
            checked (None: the environment, C3DFEAT_REQUIRE_HASHES / C3DFEAT_WEIGHTS_MIRROR).
        random_init: run without pretrained weights (seeded; flagged in the file).
        half: store float16. overwrite: start over. retry_failed: extract again the videos
            recorded as failed. shard: "K/N".
        progress: called from the calling thread with a :class:`Progress` on every event.
        engine: "local" (this process) or "ray" (c3dfeat.pipeline.ray_engine; `ray_address`).
        crop: deprecated name of `crops`.

    Returns:
        :class:`ExtractReport`; ``report.failed`` lists the videos that could not be read.

    Raises:
        NoVideosError: the inputs hold no video.
        ExtractInterrupted: Ctrl-C; the file is closed cleanly, committed videos stay.
        ProvenanceMismatchError: `output` exists with other settings (use overwrite).
        ConfigError, UnknownModelError, UnknownLayerError, WeightsError: bad options.
        Anything else is a bug: it propagates with its traceback (committed videos stay).
    """
    if crop is not None:
        warnings.warn("extract(crop=...) is now crops=...", DeprecationWarning, stacklevel=2)
        crops = crop
    if engine not in ENGINES:
        raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "ray":
        from c3dfeat.pipeline.ray_engine import extract_ray

        args = dict(locals())
        for name in ("engine", "crop", "extract_ray"):
            args.pop(name, None)
        return extract_ray(**args)
    if ray_address is not None:
        raise ConfigError("ray_address is only used with engine='ray'")
    t0 = time.monotonic()
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
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
    if (batch_size is not None and batch_size < 1) or workers < 1:
        raise ConfigError(f"batch_size and workers must be >= 1, got {batch_size} and {workers}")
    from c3dfeat.video import BACKENDS

    if decoder not in BACKENDS:
        raise ConfigError(f"decoder must be one of {', '.join(BACKENDS)}, got {decoder!r}")
    dev = pick_device(device)
    _prepare_runtime(dev, allow_tf32)
    if batch_size is None:
        batch_size = default_batch_size(dev, [r.name for r in reqs])
    report = ExtractReport(output=Path(output), device=str(dev), dtype=dtype, batch_size=batch_size)
    if dev.type == "cpu" and dtype == "fp16":
        report.warnings.append("fp16 on CPU is slow and not exact; use fp32 or bf16 on CPU")

    tasks, shard_kn = resolve_tasks(inputs, shard)
    overrides = dict(clip_len=clip_len, stride=stride, frame_step=frame_step, num_clips=num_clips, fps=fps, tail=tail)
    prepared = prepare_models(reqs, device=dev, random_init=random_init, weights_dir=weights_dir,
                              require_hashes=require_hashes, weights_mirror=weights_mirror,
                              sampling_overrides=overrides, crops=crops, crop_reduce=crop_reduce)
    report.random_init = [m.key for m in prepared if m.random_init]
    for m in prepared:
        if m.transform.uses_mean_approximation:
            report.warnings.append(
                f"{m.key}: mean cube not found locally; using the per-channel mean approximation "
                f"(`c3dfeat weights download {m.spec.name}.{m.spec.preprocessing.mean_cube}` for the exact input)"
            )
    provenance = {"decoder": decoder, "dtype": dtype}
    if command_line is None:
        command_line = " ".join(shlex.quote(a) for a in sys.argv)
    writer = open_run_writer(
        output, prepared, provenance, half=half, retry_failed=retry_failed, overwrite=overwrite,
        command_line=command_line, shard=f"{shard_kn[0]}/{shard_kn[1]}" if shard_kn else "",
        # Features are bit-reproducible for the same device, dtype and batch size (batching.py).
        run={"device": str(dev), "batch_size": batch_size, "workers": workers, "torch": torch.__version__,
             "engine": "local", "allow_tf32": allow_tf32},
    )
    interrupted = False
    try:
        done = set(writer.done_ids)
        todo = [t for t in tasks if t.id not in done]
        todo = [dataclasses.replace(t, seq=seq) for seq, t in enumerate(todo)]
        report.total = len(tasks)
        report.skipped = len(tasks) - len(todo)
        t_run = time.monotonic()
        scheduler = LocalScheduler(todo, prepared, writer, report, decoder=decoder, batch_size=batch_size,
                                   workers=workers, device=dev, dtype=dtype, max_pending=max_pending,
                                   progress=progress, t0=t0)
        try:
            with sigterm_as_interrupt():
                scheduler.run()
        except KeyboardInterrupt:  # the decode threads are stopped; close the file cleanly below
            interrupted = True
        report.run_seconds = time.monotonic() - t_run
    finally:
        saved = int(writer.num_videos)
        # "complete" only when every video of the run is in; a bug propagating marks it too
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


def failed_before(output: PathLike, tasks: Sequence[VideoTask], report: ExtractReport) -> List[Tuple[str, str]]:
    """This run's inputs recorded as failed by an earlier run (kept failed on resume)."""
    from c3dfeat.store import FeatureFile

    mine = {t.id for t in tasks}
    new = {vid for vid, _ in report.failed}
    with FeatureFile(Path(output)) as ff:
        return [(v, e) for v, e in ff.failed if v in mine and v not in new]


# The first names of the two helpers above.
_open_writer = open_run_writer
_failed_before = failed_before
