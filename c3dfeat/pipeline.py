"""The extraction pipeline: videos → clips → features → one HDF5 file, streaming and resumable.

    report = c3dfeat.extract(["videos/"], "feats.h5", models=[("c3d", ["fc6", "fc7"]), "r2plus1d_18"])

Threads and data flow (everything bounded; nothing scales with a video's length):

* **Decode workers** (``workers`` threads; decord, PyAV and torch release the GIL) take videos
  in input order. Each opens its video once, samples every model's clips
  (:func:`c3dfeat.sampling.sample_clips`), and walks the union of the needed frame indices in
  windows of a few dozen frames: decode the window once, run each model's per-frame transform
  on the frames *that model* needs (``ClipTransform.frames``), assemble the clips whose frames
  are all there (``ClipTransform.clip``), and drop frames no later clip uses. Clips go into one
  bounded queue.
* **The main thread** pulls clips from the queue into one batch per model — clips of several
  videos share a batch — runs the model when a batch is full (or when the queue runs dry),
  scatters the features back to their videos, and commits finished videos to the store **in
  input order**. At most ``max_pending`` videos are in flight, so their buffered features are
  bounded too.

A resumed run (same command, same output) skips the committed videos: because commits follow
input order, the result equals an uninterrupted run (docs/hdf5-schema.md).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import queue
import shlex
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from c3dfeat.errors import C3DFeatError, ConfigError, VideoDecodeError
from c3dfeat.models import create_model, extract_layers, get_spec
from c3dfeat.sampling import Clip, SamplingConfig, sample_clips
from c3dfeat.store import ClipTable, LayerInfo, ModelInfo, ModelResult, VideoRecord, open_writer
from c3dfeat.transforms import ClipTransform

__all__ = ["extract", "ExtractReport", "ModelRequest", "Progress", "RANDOM_INIT_SEED"]

PathLike = Union[str, os.PathLike]
# Random-init weights are seeded so that a resumed run, every shard and a rerun compute the
# same (meaningless) features; recorded in the provenance.
RANDOM_INIT_SEED = 0
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_WINDOW_BYTES = 8 << 20  # decoded frames per window: ~8 MiB (8 frames of 720p min, 12 of 640x360)
_TRANSFORM_CHUNK = 8  # frames per ClipTransform.frames call


# ----------------------------------------------------------------------------- requests
@dataclass(frozen=True)
class ModelRequest:
    """A model to run: registry name ("arch" or "arch.tag") and its layers (None: the default)."""

    name: str
    layers: Optional[Tuple[str, ...]] = None
    weights: Optional[str] = None  # local checkpoint file (None: the default checkpoint)

    @classmethod
    def of(cls, x: Any) -> "ModelRequest":
        if isinstance(x, ModelRequest):
            return x
        if isinstance(x, str):
            return cls(x)
        name, layers = x
        if isinstance(layers, str):
            layers = tuple(s for s in layers.split(",") if s)
        return cls(name, tuple(layers) if layers else None)


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
    clips: int = 0
    seconds: float = 0.0  # whole call
    run_seconds: float = 0.0  # decode + inference + commits (without model building / input listing)
    random_init: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    device: str = "cpu"

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
    """Passed to the `progress` callback after every committed video."""

    done: int  # videos committed by this run (+ skipped)
    total: int
    failed: int
    clips: int
    elapsed: float
    last_id: str = ""


# ----------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class _Input:
    id: str
    path: Path
    label: str = ""


def _resolve_inputs(inputs: Sequence[PathLike]) -> List[_Input]:
    from c3dfeat.inputs import resolve_inputs  # Engineer VIDEO's module

    out = []
    for v in resolve_inputs(list(inputs)):
        out.append(_Input(str(v.id), Path(v.path), str(getattr(v, "label", "") or "")))
    return out


# ----------------------------------------------------------------------------- models
@dataclass
class _Model:
    key: str
    spec: Any
    net: torch.nn.Module
    layers: Tuple[str, ...]  # canonical
    transform: ClipTransform
    sampling: SamplingConfig
    info: ModelInfo
    keep_crops: bool
    n_crops: int
    random_init: bool


def _sha256_array(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a, dtype=np.float32).tobytes()).hexdigest()


def _build_model(
    req: ModelRequest,
    *,
    random_init: bool,
    weights_dir: Optional[PathLike],
    sampling_overrides: Mapping[str, Any],
    crops: Union[str, int],
    crop_reduce: str,
    device: torch.device,
    dtype: torch.dtype,
) -> _Model:
    spec = get_spec(req.name)
    if random_init:
        if req.weights:
            raise ConfigError(f"{req.name}: --weights and --random-init exclude each other; pick one")
        # Seeded: every shard / resume builds the same random network.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            net = create_model(req.name, pretrained=False)
    else:
        net = create_model(req.name, pretrained=req.weights or True, weights_dir=weights_dir)
    spec = net.spec
    requested_order = [spec.layer(n).name for n in (req.layers or (spec.default_layer,))]
    layers = tuple(dict.fromkeys(requested_order))  # user's order, no duplicates
    mean_cube = None
    if spec.preprocessing.mean_cube:
        from c3dfeat.weights import load_mean_cube

        mean_cube = load_mean_cube(spec, weights_dir=weights_dir)
    transform = ClipTransform(spec.preprocessing, mean_cube=mean_cube, crops=crops)
    sampling = SamplingConfig.from_preprocessing(spec.preprocessing, **sampling_overrides)
    if mean_cube is not None and sampling.clip_len != spec.preprocessing.clip_len:
        raise ConfigError(
            f"{req.name}: the mean cube has {spec.preprocessing.clip_len} frames; --clip-len "
            f"{sampling.clip_len} does not fit it (remove the mean file to use the per-channel mean)"
        )
    from c3dfeat.models._info import layer_shapes

    size = (sampling.clip_len, transform.crop_size, transform.crop_size)
    shapes = layer_shapes(spec, size)
    n_crops = transform.num_crops
    keep = crop_reduce == "none" and n_crops > 1
    infos = []
    for name in layers:
        shape = tuple(int(s) for s in shapes[name])
        dim = int(np.prod(shape))
        infos.append(LayerInfo(name, dim, shape, n_crops if keep else 0))
    weights_sha = getattr(net, "weights_sha256", None)
    attrs = {
        "arch": spec.name,
        "checkpoint": None if random_init or spec.checkpoint is None else spec.checkpoint.tag,
        "weights_sha256": None if random_init else weights_sha,
        "random_init": bool(random_init),
        "random_init_seed": RANDOM_INIT_SEED if random_init else None,
        "layers": list(layers),
        "sampling": sampling.to_dict(),
        "preprocessing": transform.describe(),
        "mean_cube_sha256": None if mean_cube is None else _sha256_array(mean_cube),
        "crops": transform.crops,
        "crop_reduce": crop_reduce if n_crops > 1 else "none",
        "input_size": list(size),
    }
    net = net.to(device=device, dtype=dtype)
    return _Model(
        key=req.name,
        spec=spec,
        net=net,
        layers=layers,
        transform=transform,
        sampling=sampling,
        info=ModelInfo(req.name, tuple(infos), sampling.clip_len, attrs),
        keep_crops=keep,
        n_crops=n_crops,
        random_init=bool(random_init),
    )


def _pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        d = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"--device must be auto, cpu or cuda[:N], got {device!r}") from None
    if d.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    if d.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device must be auto, cpu or cuda[:N], got {device!r}")
    return d


# ----------------------------------------------------------------------------- messages
@dataclass
class _Start:
    seq: int
    record: VideoRecord
    clips: List[List[Clip]]  # per model


@dataclass
class _ClipItem:
    seq: int
    model: int
    clip: int
    tensor: torch.Tensor  # (n_crops, 3, T, h, w)


@dataclass
class _End:
    seq: int


@dataclass
class _Failed:
    seq: int
    record: VideoRecord
    error: str


@dataclass
class _WorkerCrash:
    error: BaseException


class _Stop(Exception):
    pass


# ----------------------------------------------------------------------------- decoding
def _decode_video(
    seq: int,
    item: _Input,
    input_index: int,
    models: Sequence[_Model],
    decoder: str,
    put: Callable[[Any], None],
    stop: threading.Event,
) -> None:
    """Decode one video once; emit _Start, its clips (all models), then _End or _Failed."""
    from c3dfeat.video import open_video

    rec = VideoRecord(id=item.id, path=str(item.path), label=item.label, input_index=input_index)
    try:
        rec.size_bytes = item.path.stat().st_size
    except OSError:
        pass
    try:
        with open_video(item.path, backend=decoder, threads=1) as reader:
            rec.num_frames, rec.fps = int(reader.num_frames), float(reader.fps)
            rec.duration, rec.height, rec.width = float(reader.duration), int(reader.height), int(reader.width)
            clips = [sample_clips(reader.num_frames, reader.fps, m.sampling) for m in models]
            put(_Start(seq, rec, clips))
            _stream_clips(seq, reader, models, clips, put, stop)
        put(_End(seq))
    except _Stop:
        raise
    except (C3DFeatError, OSError, RuntimeError, ValueError) as e:
        rec.status, rec.error = "failed", _reason(e)
        put(_Failed(seq, rec, rec.error))


def _reason(e: BaseException) -> str:
    s = str(e) or type(e).__name__
    return s if isinstance(e, VideoDecodeError) else f"{type(e).__name__}: {s}"


def _stream_clips(
    seq: int,
    reader: Any,
    models: Sequence[_Model],
    clips: Sequence[List[Clip]],
    put: Callable[[Any], None],
    stop: threading.Event,
) -> None:
    """Walk the union of needed frames window by window; emit each clip as soon as it is whole."""
    needed = [sorted({i for c in cl for i in c.indices}) for cl in clips]
    union = sorted(set().union(*map(set, needed)))
    frame_bytes = max(1, reader.height * reader.width * 3)
    window = int(min(32, max(8, _WINDOW_BYTES // frame_bytes)))
    # Per model: transformed frames kept (index -> position in `cache`), next clip to emit.
    caches: List[Optional[torch.Tensor]] = [None] * len(models)
    cache_idx: List[List[int]] = [[] for _ in models]
    nxt = [0] * len(models)
    needed_sets = [set(n) for n in needed]
    for w0 in range(0, len(union), window):
        if stop.is_set():
            raise _Stop()
        idx = union[w0 : w0 + window]
        frames = reader.get_frames(idx)
        last = idx[-1]
        for m, model in enumerate(models):
            sel = [k for k, i in enumerate(idx) if i in needed_sets[m]]
            if sel:
                # A few frames at a time: the float32 copy at full resolution is 4x the uint8
                # window (per-frame ops: same numbers as one call).
                new = torch.cat([model.transform.frames(frames[sel[j : j + _TRANSFORM_CHUNK]])
                                 for j in range(0, len(sel), _TRANSFORM_CHUNK)], dim=2)
                caches[m] = new if caches[m] is None else torch.cat([caches[m], new], dim=2)
                cache_idx[m].extend(idx[k] for k in sel)
            cl = clips[m]
            pos = {i: p for p, i in enumerate(cache_idx[m])}
            while nxt[m] < len(cl) and max(cl[nxt[m]].indices) <= last:
                c = cl[nxt[m]]
                t = model.transform.clip(caches[m], [pos[i] for i in c.indices])
                put(_ClipItem(seq, m, nxt[m], t.contiguous()))
                nxt[m] += 1
            # Drop frames that no remaining clip of this model uses.
            if nxt[m] < len(cl):
                lo = min(cl[nxt[m]].indices)
                k = 0
                while k < len(cache_idx[m]) and cache_idx[m][k] < lo:
                    k += 1
            else:
                k = len(cache_idx[m])
            if k:
                cache_idx[m] = cache_idx[m][k:]
                caches[m] = caches[m][:, :, k:].clone() if cache_idx[m] else None
        del frames
    for m, cl in enumerate(clips):
        if nxt[m] != len(cl):  # a clip whose frames were never reached: a bug, not bad input
            raise RuntimeError(f"internal error: {len(cl) - nxt[m]} clips of model {models[m].key} not emitted")


# ----------------------------------------------------------------------------- main loop
@dataclass
class _VideoState:
    record: Optional[VideoRecord] = None
    clips: Optional[List[List[Clip]]] = None
    feats: Optional[List[Dict[str, np.ndarray]]] = None  # per model: layer -> (n, [crops], D)
    remaining: int = 0  # clips not yet computed
    decoded: bool = False
    failed: Optional[str] = None


def extract(
    inputs: Union[PathLike, Sequence[PathLike]],
    output: PathLike,
    models: Sequence[Union[str, Tuple[str, Any], ModelRequest]] = ("c3d",),
    *,
    device: str = "auto",
    dtype: str = "fp32",
    batch_size: int = 4,
    workers: int = 2,
    decoder: str = "pyav",
    clip_len: Optional[int] = None,
    stride: Optional[int] = None,
    frame_step: Optional[int] = None,
    num_clips: Optional[int] = None,
    fps: Optional[float] = None,
    tail: str = "pad",
    crop: Union[str, int] = "center",
    crop_reduce: str = "mean",
    weights: Optional[PathLike] = None,
    weights_dir: Optional[PathLike] = None,
    random_init: bool = False,
    half: bool = False,
    overwrite: bool = False,
    shard: Union[None, str, Tuple[int, int]] = None,
    progress: Optional[Callable[[Progress], None]] = None,
    command_line: Optional[str] = None,
    max_pending: Optional[int] = None,
) -> ExtractReport:
    """Extract features of `inputs` into the HDF5 file `output` (see `c3dfeat extract --help`).

    Args:
        inputs: video files, directories (recursive) and/or list files (one path per line,
            optional label column); ids are paths relative to their input root.
        output: the .h5 file; if it exists with the same settings the run resumes.
        models: names, ``(name, layers)`` pairs or :class:`ModelRequest`; layers default to the
            model's default layer (C3D fc6, others pool5).
        device: "auto", "cpu", "cuda" or "cuda:N". dtype: compute dtype, "fp32" (exact) /
            "bf16" / "fp16".
        batch_size: clips per forward pass (each clip counts once, whatever the crops).
        workers: decoding threads.
        clip_len, stride, frame_step, num_clips, fps, tail: sampling overrides (None: the
            model's own; docs/sampling.md).
        crop: "center", 3 or 10; crop_reduce: "mean" (average the crops) or "none" (keep them).
        weights: a local checkpoint file (single model; or set ModelRequest.weights).
        random_init: run without pretrained weights (seeded; flagged in the file).
        half: store float16. overwrite: start over. shard: "K/N".
        progress: called after every committed video with a :class:`Progress`.

    Returns:
        :class:`ExtractReport`; ``report.failed`` lists the videos that could not be read.

    Raises:
        ProvenanceMismatchError: `output` exists with other settings (use overwrite).
        ConfigError, UnknownModelError, UnknownLayerError, WeightsError: bad options.
    """
    t0 = time.monotonic()
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    reqs = [ModelRequest.of(m) for m in models]
    if not reqs:
        raise ConfigError("no model given; pass at least one, e.g. models=['c3d']")
    if weights is not None:
        if len(reqs) != 1:
            raise ConfigError("weights=PATH needs exactly one model; set ModelRequest(name, layers, weights=...) per model")
        reqs = [dataclasses.replace(reqs[0], weights=str(weights))]
    keys = [r.name for r in reqs]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"a model is listed twice: {keys}; give each model once with all its layers")
    if dtype not in _DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    if crop_reduce not in ("mean", "none"):
        raise ConfigError(f"crop_reduce must be 'mean' or 'none', got {crop_reduce!r}")
    if batch_size < 1 or workers < 1:
        raise ConfigError(f"batch_size and workers must be >= 1, got {batch_size} and {workers}")
    from c3dfeat.video import BACKENDS

    if decoder not in BACKENDS:
        raise ConfigError(f"decoder must be one of {', '.join(BACKENDS)}, got {decoder!r}")
    from c3dfeat.inputs import parse_shard, shard as shard_of

    shard_kn = parse_shard(shard) if isinstance(shard, str) and shard else (tuple(shard) if shard else None)
    dev = _pick_device(device)
    tdtype = _DTYPES[dtype]
    report = ExtractReport(output=Path(output), device=str(dev))
    if dev.type == "cpu" and tdtype == torch.float16:
        report.warnings.append("fp16 on CPU is slow and not exact; use fp32 or bf16 on CPU")

    all_inputs = _resolve_inputs(inputs)
    # input_index = position in the full sorted input list: merge orders shards by it.
    indexed = list(enumerate(all_inputs))
    if shard_kn:
        keep = {v.id for v in shard_of(all_inputs, *shard_kn)}  # hash of the id (inputs.py)
        indexed = [(i, v) for i, v in indexed if v.id in keep]

    overrides = dict(clip_len=clip_len, stride=stride, frame_step=frame_step, num_clips=num_clips, fps=fps, tail=tail)
    built = [
        _build_model(r, random_init=random_init, weights_dir=weights_dir, sampling_overrides=overrides,
                     crops=crop, crop_reduce=crop_reduce, device=dev, dtype=tdtype)
        for r in reqs
    ]
    report.random_init = [m.key for m in built if m.random_init]
    for m in built:
        if m.transform.uses_mean_approximation:
            report.warnings.append(
                f"{m.key}: mean cube not found locally; using the per-channel mean approximation "
                f"(`c3dfeat weights download {m.spec.name}.{m.spec.preprocessing.mean_cube}` for the exact input)"
            )
    provenance = {"decoder": decoder, "compute_dtype": dtype}
    if command_line is None:
        command_line = " ".join(shlex.quote(a) for a in sys.argv)
    writer = open_writer(
        output,
        [m.info for m in built],
        provenance,
        dtype="float16" if half else "float32",
        overwrite=overwrite,
        command_line=command_line,
        shard=f"{shard_kn[0]}/{shard_kn[1]}" if shard_kn else "",
        # Features are bit-reproducible for the same device, dtype and batch size (see run_batch).
        run={"device": str(dev), "batch_size": batch_size, "workers": workers, "torch": torch.__version__},
    )
    try:
        done = set(writer.done_ids)
        todo = [(i, v) for i, v in indexed if v.id not in done]
        report.total = len(indexed)
        report.skipped = len(indexed) - len(todo)
        t_run = time.monotonic()
        _run(todo, built, writer, report, decoder=decoder, batch_size=batch_size, workers=workers,
             device=dev, dtype=tdtype, progress=progress, t0=t0,
             max_pending=max_pending or max(16, 4 * workers))
        report.run_seconds = time.monotonic() - t_run
    finally:
        writer.close()
    if report.skipped:
        from c3dfeat.store import FeatureFile

        mine = {v.id for _, v in indexed}
        new = {vid for vid, _ in report.failed}
        with FeatureFile(output) as ff:
            report.failed_before = [(v, e) for v, e in ff.failed if v in mine and v not in new]
    report.seconds = time.monotonic() - t0
    return report


def _run(
    todo: List[Tuple[int, _Input]],
    models: List[_Model],
    writer: Any,
    report: ExtractReport,
    *,
    decoder: str,
    batch_size: int,
    workers: int,
    device: torch.device,
    dtype: torch.dtype,
    progress: Optional[Callable[[Progress], None]],
    t0: float,
    max_pending: int,
) -> None:
    n_models = len(models)
    q: "queue.Queue[Any]" = queue.Queue(maxsize=max(4, 2 * batch_size * n_models))
    stop = threading.Event()
    pending = threading.Semaphore(max_pending)  # videos decoded ahead of the commit
    lock = threading.Lock()
    next_task = [0]

    def put(msg: Any) -> None:
        while True:
            if stop.is_set():
                raise _Stop()
            try:
                q.put(msg, timeout=0.1)
                return
            except queue.Full:
                continue

    def worker() -> None:
        try:
            while not stop.is_set():
                while not pending.acquire(timeout=0.1):
                    if stop.is_set():
                        return
                with lock:
                    seq = next_task[0]
                    next_task[0] += 1
                if seq >= len(todo):
                    pending.release()
                    return
                idx, item = todo[seq]
                _decode_video(seq, item, idx, models, decoder, put, stop)
        except _Stop:
            return
        except BaseException as e:  # a bug: stop the run, re-raised in the main thread
            try:
                q.put(_WorkerCrash(e), timeout=5)
            except queue.Full:
                pass

    threads = [threading.Thread(target=worker, name=f"c3dfeat-decode-{i}", daemon=True) for i in range(workers)]
    for t in threads:
        t.start()

    states: Dict[int, _VideoState] = {}
    batches: List[List[_ClipItem]] = [[] for _ in models]
    head = 0  # next seq to commit
    committed_ok = 0

    def run_batch(m: int) -> None:
        items = [it for it in batches[m] if states[it.seq].failed is None]
        batches[m] = []
        if not items:
            return
        model = models[m]
        first = items[0].tensor
        # Always a full batch (zero-padded): CPU and GPU kernels give bit-different results for
        # different batch sizes (~1e-8 relative; measured on C3D / R(2+1)D-18) but not for
        # different companions or positions in the batch. So a clip's features never depend
        # on which videos happened to share its batch: resumed, sharded and uninterrupted runs
        # agree bit for bit.
        x = torch.zeros((batch_size,) + tuple(first.shape), dtype=first.dtype)
        torch.stack([it.tensor for it in items], out=x[: len(items)])
        b, c = len(items), first.shape[0]
        x = x.view((batch_size * c,) + tuple(first.shape[1:])).to(device=device, dtype=dtype, non_blocking=True)
        out = extract_layers(model.net, x, model.layers)
        for layer in model.layers:
            y = out[layer][: b * c].reshape(b, c, -1).float()
            if not model.keep_crops:
                y = y.mean(dim=1) if c > 1 else y[:, 0]
            y = y.cpu().numpy()
            for k, it in enumerate(items):
                states[it.seq].feats[m][layer][it.clip] = y[k]
        for it in items:
            states[it.seq].remaining -= 1
        report.clips += len(items)

    def commit_ready() -> None:
        nonlocal head, committed_ok
        while head in states:
            st = states[head]
            if st.failed is None and not (st.decoded and st.remaining == 0):
                return
            if st.failed is not None:
                st.record.status, st.record.error = "failed", st.failed
                writer.add_video(st.record, {})
                report.failed.append((st.record.id, st.failed))
            else:
                res = {}
                for m, model in enumerate(models):
                    cl = st.clips[m]
                    sf = np.array([c.start_frame for c in cl], np.int64)
                    fps = st.record.fps
                    table = ClipTable(
                        start_frame=sf,
                        start_time=sf / fps if fps and fps > 0 else np.full(len(cl), np.nan),
                        padded=np.array([c.padded for c in cl], np.int32),
                        frame_indices=np.array([c.indices for c in cl], np.int64).reshape(len(cl), model.sampling.clip_len),
                    )
                    res[model.key] = ModelResult(table, st.feats[m])
                writer.add_video(st.record, res)
                report.ok += 1
            del states[head]
            head += 1
            pending.release()
            if progress is not None:
                progress(Progress(report.skipped + head, report.total, len(report.failed), report.clips,
                                  time.monotonic() - t0, todo[head - 1][1].id))

    try:
        while head < len(todo):
            try:
                msg = q.get(timeout=0.05)
            except queue.Empty:
                # Decoders are behind. Run a partial batch only when the next commit waits for
                # it (padding costs compute), or when decoding is over.
                st = states.get(head)
                alive = any(t.is_alive() for t in threads)
                for m in range(n_models):
                    if batches[m] and (not alive or (st is not None and st.decoded and any(
                            it.seq == head for it in batches[m]))):
                        run_batch(m)
                commit_ready()
                if not alive and q.empty() and head < len(todo) and not any(batches):
                    raise RuntimeError("internal error: decode workers ended before every video was committed")
                continue
            if isinstance(msg, _ClipItem):
                if states[msg.seq].failed is None:
                    batches[msg.model].append(msg)
                    if len(batches[msg.model]) >= batch_size:
                        run_batch(msg.model)
                        commit_ready()
            elif isinstance(msg, _Start):
                st = states.setdefault(msg.seq, _VideoState())
                st.record, st.clips = msg.record, msg.clips
                st.remaining = sum(len(c) for c in msg.clips)
                st.feats = []
                for m, model in enumerate(models):
                    d = {}
                    for li in model.info.layers:
                        tail = (li.crops, li.dim) if li.crops else (li.dim,)
                        d[li.name] = np.empty((len(msg.clips[m]),) + tail, np.float32)
                    st.feats.append(d)
            elif isinstance(msg, _End):
                states[msg.seq].decoded = True
                commit_ready()
            elif isinstance(msg, _Failed):
                st = states.setdefault(msg.seq, _VideoState())
                st.record, st.failed = msg.record, msg.error
                for m in range(n_models):  # its queued clips are not worth computing
                    batches[m] = [it for it in batches[m] if it.seq != msg.seq]
                commit_ready()
            elif isinstance(msg, _WorkerCrash):
                raise msg.error
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
