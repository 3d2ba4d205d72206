"""`extract(...)`: check the options, prepare the models, open the file, run an engine, report."""
from __future__ import annotations

import os
import signal
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence, Tuple, Union

from c3dfeat.errors import ConfigError
from c3dfeat.pipeline.plan import ModelRequest, prepare_models
from c3dfeat.pipeline.procdecode import resolve_worker_kind
from c3dfeat.pipeline.report import ExtractReport, Progress
from c3dfeat.pipeline.run import (
    check_options,
    environment,
    finish_run,
    model_warnings,
    open_run_writer,
    pending_tasks,
    prepare_runtime,
    resolve_tasks,
    run_batch_size,
)
from c3dfeat.pipeline.scheduler import LocalScheduler
from c3dfeat.runtime import default_workers, pick_device, warn_if_gpu_unused
from c3dfeat.transforms import Crops
from c3dfeat.video import parse_decode_device

__all__ = ["extract", "ENGINES"]

PathLike = Union[str, "os.PathLike[str]"]
ModelArg = Union[str, Tuple[str, Any], ModelRequest]
ENGINES = ("local", "ray")


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


def extract(
    inputs: Union[PathLike, Sequence[PathLike]],
    output: PathLike,
    models: Sequence[ModelArg] = ("c3d",),
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
        device: "auto", "cpu", "cuda" or "cuda:N". "auto" that picks the CPU on a machine whose
            NVIDIA GPU torch cannot use (a CPU-only torch, a driver too old for its CUDA) warns
            (C3DFeatWarning, also in ``report.warnings``) with the reason.
        dtype: compute dtype: "fp32" (exact), "bf16" or "fp16" (torch.autocast; recorded).
        allow_tf32: let CUDA fp32 matmuls/convolutions use TF32 (faster, not exact; off).
        batch_size: clips per forward pass (each clip counts once, whatever the crops);
            None: the batch size of the file being resumed (same device type), else 3 on CPU,
            larger on CUDA (c3dfeat.runtime.default_batch_size).
        workers: decoders running at once; None: 2 for a model on the CPU, and on a GPU the
            usable CPU cores per visible GPU less one, 2 to 32; 4 when decoding on the GPU
            (c3dfeat.runtime.default_workers; recorded).
        worker_kind: "process" (forked decode processes, no GIL shared: Linux), "thread" (decode
            threads in this process) or "auto" (processes for a model on a GPU or more than 4
            workers, where fork is safe; else threads).
        decode_device: "cpu", or "cuda[:N]" to decode on that GPU (NVDEC; decoder="torchcodec" with
            a CUDA build, checked before any video is opened; in the provenance). The frames come
            back to the host for the transform. Not with engine="ray" yet.
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
        if decode_device != "cpu":
            raise ConfigError("GPU decoding is not supported with --engine ray yet; drop --decode-device "
                              "(decode on the CPU) or use --engine local")
        from c3dfeat.pipeline.ray_engine import extract_ray

        args = dict(locals())
        for name in ("engine", "crop", "extract_ray"):
            args.pop(name, None)
        return extract_ray(**args)
    if ray_address is not None:
        raise ConfigError("ray_address is only used with engine='ray'")
    t0 = time.monotonic()
    reqs = check_options(models, weights=weights, dtype=dtype, crop_reduce=crop_reduce, batch_size=batch_size,
                         workers=workers, decoder=decoder, decode_device=decode_device)
    decode_device = parse_decode_device(decode_device)
    if decode_device != "cpu":
        # The check above ran CUDA in this process, and a forked child cannot use CUDA again; NVDEC
        # does the work anyway, so threads suffice.
        if worker_kind == "process":
            raise ConfigError("GPU decoding runs in decode threads (a forked process cannot use CUDA): "
                              "use worker_kind='thread' (or 'auto') with decode_device")
        worker_kind = "thread"
    dev = pick_device(device)
    fallback = warn_if_gpu_unused(device, dev)  # now, not in the report after hours on the CPU
    if workers is None:
        workers = default_workers(dev, decode_device=decode_device)
    kind = resolve_worker_kind(worker_kind, dev.type, workers)
    prepare_runtime(dev, allow_tf32)
    batch_size = run_batch_size(batch_size, output, overwrite, dev, [r.name for r in reqs])
    report = ExtractReport(output=Path(output), device=str(dev), dtype=dtype, batch_size=batch_size)
    tasks, shard_kn = resolve_tasks(inputs, shard)
    overrides = dict(clip_len=clip_len, stride=stride, frame_step=frame_step, num_clips=num_clips, fps=fps, tail=tail)
    prepared = prepare_models(reqs, device=dev, random_init=random_init, weights_dir=weights_dir,
                              require_hashes=require_hashes, weights_mirror=weights_mirror,
                              sampling_overrides=overrides, crops=crops, crop_reduce=crop_reduce)
    report.random_init = [m.key for m in prepared if m.random_init]
    report.warnings.extend(([fallback] if fallback else []) + model_warnings(prepared, dev, dtype))
    writer = open_run_writer(
        output, prepared, decoder=decoder, dtype=dtype, half=half, retry_failed=retry_failed, overwrite=overwrite,
        command_line=command_line, shard=shard_kn, decode_device=decode_device,
        run={"device": str(dev), "batch_size": batch_size, "workers": workers, "worker_kind": kind,
             "decode_device": decode_device, "engine": "local", "allow_tf32": allow_tf32,
             **environment(dev, decoder)},
    )
    interrupted = False
    try:
        todo = pending_tasks(tasks, writer, report)
        t_run = time.monotonic()
        scheduler = LocalScheduler(todo, prepared, writer, report, decoder=decoder, batch_size=batch_size,
                                   workers=workers, worker_kind=kind, decode_device=decode_device, device=dev,
                                   dtype=dtype, max_pending=max_pending,
                                   progress=progress, t0=t0)
        try:
            with sigterm_as_interrupt():
                scheduler.run()
        except KeyboardInterrupt:  # the decode threads are stopped; the file is closed cleanly below
            interrupted = True
        report.run_seconds = time.monotonic() - t_run
    except BaseException:
        writer.close()  # a bug: committed videos stay, the file is marked incomplete with the reason
        raise
    return finish_run(writer, interrupted=interrupted, output=output, tasks=tasks, report=report, t0=t0)
