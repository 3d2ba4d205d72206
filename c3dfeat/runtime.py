"""Process-wide runtime settings for extraction: the memory allocator, default batch sizes and
decoder counts, the device (`pick_device`, what `--device` means everywhere) and why a machine's
GPU cannot be used.

    from c3dfeat.runtime import configure_allocator, default_batch_size, default_workers
    configure_allocator()                      # once, before the first large allocation
    default_batch_size("cpu", "c3d")           # -> 3
    default_workers("cuda")                    # -> the usable CPU cores per GPU less one, 2..32

Why the allocator matters: a 3D ConvNet's activations are tens of MB per batch (C3D conv1 at
batch 4: 4x64x16x112x112 floats = 205 MB), far above glibc's dynamic mmap threshold (32 MiB at
most). glibc serves each of them with a fresh ``mmap`` and returns it with ``munmap`` when the
tensor dies, so every batch faults its buffers back in page by page: measured on
scripts/bench_extract.py, system CPU time was 57 % of user time and 21 M minor page faults. With
``mallopt`` set as below, freed blocks stay in the heap and the next batch reuses them
(docs/extract.md, "Performance"). Set ``C3DFEAT_MALLOC=system`` to keep glibc's defaults.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
import os
import platform
import re
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from c3dfeat.errors import C3DFeatWarning, ConfigError

if TYPE_CHECKING:
    import torch

__all__ = ["ALLOCATOR_ENV", "configure_allocator", "allocator_settings", "default_batch_size", "default_workers",
           "usable_cores", "pick_device", "warn_if_gpu_unused", "unusable_gpu_reason", "CPU_WORKERS",
           "MAX_DEFAULT_WORKERS", "GPU_DECODE_WORKERS"]

#: Environment variable: "system" leaves the C allocator untouched.
ALLOCATOR_ENV = "C3DFEAT_MALLOC"

# glibc <malloc.h> parameter numbers.
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4

# Every allocation from the heap (never mmap: activations are above the largest mmap threshold
# glibc allows, 32 MiB), and give the heap top back to the kernel only beyond 2 GiB of free space
# (mallopt takes an int). Freed activations are reused by the next batch; the process keeps its
# peak. M_TOP_PAD stays glibc's (128 KiB): 256 MiB (until 2026-11-30) added up to ~270 MiB of
# peak RSS (C3D, batch 4: 1371-1622 vs 1354-1356 MiB) for no speed or page-fault difference.
_GLIBC_SETTINGS: Dict[str, int] = {
    "M_MMAP_MAX": 0,
    "M_TRIM_THRESHOLD": 2**31 - 1,
}
_PARAM = {"M_MMAP_MAX": _M_MMAP_MAX, "M_TRIM_THRESHOLD": _M_TRIM_THRESHOLD, "M_TOP_PAD": _M_TOP_PAD,
          "M_MMAP_THRESHOLD": _M_MMAP_THRESHOLD}

_lock = threading.Lock()
_state: Optional[str] = None  # None: not called yet; else what configure_allocator did


def _glibc() -> Optional[ctypes.CDLL]:
    """The running process's C library if it is glibc (mallopt exists and means the same)."""
    if platform.system() != "Linux":
        return None
    libc_name, _ = platform.libc_ver()
    if libc_name != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") else None


def configure_allocator() -> str:
    """Keep large freed blocks in the process heap instead of returning them to the kernel.

    Idempotent (the first call decides; later calls return the same answer) and thread-safe.
    Returns what was done: "glibc" (mallopt applied), "system" (disabled by
    ``C3DFEAT_MALLOC=system``), or "unsupported" (not glibc: macOS, musl, Windows).
    Call it before the first large allocation: blocks already mmapped stay mmapped.
    """
    global _state
    with _lock:
        if _state is not None:
            return _state
        choice = os.environ.get(ALLOCATOR_ENV, "").strip().lower()
        if choice == "system":
            _state = "system"
            return _state
        if choice not in ("", "glibc", "default"):
            raise ValueError(f"{ALLOCATOR_ENV}={choice!r}: use 'system' (glibc defaults) or leave it unset")
        libc = _glibc()
        if libc is None:
            _state = "unsupported"
            return _state
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
        for name, value in _GLIBC_SETTINGS.items():
            if libc.mallopt(_PARAM[name], value) != 1:  # pragma: no cover
                _state = "unsupported"
                return _state
        _state = "glibc"
        return _state


def allocator_settings() -> Dict[str, object]:
    """What configure_allocator did (for provenance/benchmarks): {"allocator": ..., params...}."""
    out: Dict[str, object] = {"allocator": _state or "not configured"}
    if _state == "glibc":
        out.update(_GLIBC_SETTINGS)
    return out


def _reset_for_tests() -> None:
    """Forget the first call's decision (tests only; glibc's parameters stay as set)."""
    global _state
    with _lock:
        _state = None


# Clips per forward pass. CPU values are measured (docs/extract.md, "Batch size": the fastest
# batch whose peak RSS stays <= 1.5 GiB with C3D on a 2-core machine). Batch 4 is ~2 % faster
# for C3D but its peak RSS went over 1.5 GiB in a third of the runs (1313-1610 MiB, 6 of 18:
# the heap sometimes grows by one conv1 output, ~196 MiB, that fragmentation keeps from being
# reused); batch 3 peaked at 1212-1395 MiB in 6 runs. R(2+1)D-18: same speed at 3 and 4. CUDA
# values are NOT measured yet (no GPU was at hand): large enough to keep a current GPU busy;
# scripts/bench_gpu.py measures them.
_CPU_BATCH = 3
_CUDA_BATCH = 32
_CUDA_BATCH_BY_MODEL = {"ir_csn_152": 16, "ip_csn_152": 16}  # 32-frame 224x224 clips, big activations


def default_batch_size(device: object, model_name: str = "") -> int:
    """Default clips per forward pass for `device` ("cpu", "cuda", "cuda:1", torch.device) and model."""
    kind = str(getattr(device, "type", device)).split(":")[0]
    if kind == "cuda":
        arch = model_name.partition(".")[0]
        return _CUDA_BATCH_BY_MODEL.get(arch, _CUDA_BATCH)
    return _CPU_BATCH


# Decoders (`workers`) when none are asked for. A model on the CPU takes the cores and decoding is
# ~1-2 % of its work (C3D: ~4 ms of decoding per clip against ~330 ms of CPU time in the model),
# so 2 decoders keep it fed (docs/extract.md). A model on a GPU waits for the decoders: the GPU's
# share of the usable cores decodes, less one core, which the calling process needs (batching,
# copies, commits: ~0.25-0.4 ms per clip, a whole core at a few thousand clips/s). Past ~32
# decoders that calling process is the limit, and each decoder still costs its memory (~65 MiB,
# and its rings).
CPU_WORKERS = 2
MAX_DEFAULT_WORKERS = 32
# Decoding on the GPU (NVDEC, decode_device="cuda"): the GPU's decoder engines do the work and a
# few host threads copy and transform the frames. Not measured (no GPU at hand); each thread also
# holds a decoder session on the GPU.
GPU_DECODE_WORKERS = 4
_CGROUP_ROOT = Path("/sys/fs/cgroup")
_PROC_CGROUP = Path("/proc/self/cgroup")


def default_workers(device: object, gpus: Optional[int] = None, decode_device: str = "cpu") -> int:
    """Default decoders for a model on `device` ("cpu", "cuda", "cuda:1", torch.device):
    CPU_WORKERS on a CPU; on a GPU this GPU's share of the usable cores (one run per GPU is how a
    machine's GPUs are used: `--device cuda:K` each) less one, at least 2, at most
    MAX_DEFAULT_WORKERS. `gpus`: the GPUs sharing the cores (None: the visible ones). Decoding on
    a GPU (`decode_device` not "cpu"): GPU_DECODE_WORKERS."""
    if decode_device != "cpu":
        return GPU_DECODE_WORKERS
    kind = str(getattr(device, "type", device)).split(":")[0]
    if kind != "cuda":
        return CPU_WORKERS
    if gpus is None:
        import torch

        gpus = torch.cuda.device_count()
    return max(CPU_WORKERS, min(MAX_DEFAULT_WORKERS, usable_cores() // max(1, gpus) - 1))


def usable_cores() -> int:
    """CPU cores this process may run on: its affinity mask, lowered by a container's CPU quota
    (cgroup v2 `cpu.max`, v1 `cpu.cfs_quota_us`) where one is set: a batch system's job sees
    the whole machine's cores in os.cpu_count()."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    quotas = _cgroup_quotas()
    return max(1, min([cores] + quotas))


def _cgroup_quotas() -> List[int]:
    """The CPU quotas (in whole cores, rounded up) of this process's cgroup and its parents."""
    found: List[int] = []
    try:
        lines = _PROC_CGROUP.read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        period_name: Optional[str] = None
        if hierarchy == "0" and controllers == "":  # cgroup v2
            quota_name, base = "cpu.max", _CGROUP_ROOT
        elif "cpu" in controllers.split(","):  # cgroup v1
            quota_name, period_name = "cpu.cfs_quota_us", "cpu.cfs_period_us"
            base = _CGROUP_ROOT / controllers
            if not base.is_dir():
                base = _CGROUP_ROOT / "cpu"
        else:
            continue
        parts = [p for p in path.strip("/").split("/") if p]
        for depth in range(len(parts), -1, -1):  # this cgroup, then each parent up to the root seen
            cores = _read_quota(base.joinpath(*parts[:depth]), quota_name, period_name)
            if cores is not None:
                found.append(cores)
    return found


def _read_quota(folder: Path, quota_name: str, period_name: Optional[str]) -> Optional[int]:
    try:
        if period_name is None:  # v2: "max 100000" or "150000 100000"
            quota_text, period_text = (folder / quota_name).read_text().split()[:2]
        else:
            quota_text = (folder / quota_name).read_text().strip()
            period_text = (folder / period_name).read_text().strip()
        if quota_text == "max":
            return None
        quota, period = int(quota_text), int(period_text)
    except (OSError, ValueError):
        return None
    if quota <= 0 or period <= 0:  # v1: -1 is no quota
        return None
    return max(1, math.ceil(quota / period))


def pick_device(device: str) -> "torch.device":
    """"auto" → cuda when torch can use a GPU, else cpu; checks "cpu" / "cuda[:N]" against this machine."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        d = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"--device must be auto, cpu or cuda[:N], got {device!r}") from None
    if d.type == "cuda" and not torch.cuda.is_available():
        why = unusable_gpu_reason() or "CUDA is not available on this machine"
        raise ConfigError(f"--device {device}: {why}; use --device cpu")
    if d.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device must be auto, cpu or cuda[:N], got {device!r}")
    if d.type == "cuda" and (d.index or 0) >= torch.cuda.device_count():
        # else CUDA's "invalid device ordinal" surfaces deep inside the model's set-up
        raise ConfigError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                          "numbered from cuda:0")
    return d


def warn_if_gpu_unused(requested: str, device: Any) -> Optional[str]:
    """When "auto" chose the CPU on a machine with an NVIDIA GPU that torch cannot use (a run
    hundreds of times slower than expected): warn now (C3DFeatWarning; the CLI prints one line)
    and return the text, for reports. Else None."""
    if requested != "auto" or str(getattr(device, "type", device)) != "cpu":
        return None
    why = unusable_gpu_reason()
    if why is None:
        return None
    text = f"{why}; running on the CPU (--device cpu: without this check)"
    warnings.warn(text, C3DFeatWarning, stacklevel=3)
    return text


_DEV = Path("/dev")
_NVIDIA_VERSION = Path("/proc/driver/nvidia/version")


def unusable_gpu_reason() -> Optional[str]:
    """Why torch cannot use this machine's NVIDIA GPUs, in one line; None when it can, when they
    are hidden on purpose (CUDA_VISIBLE_DEVICES empty or -1), or when there are none to use (no
    /dev/nvidiaN: a container without GPU access has none either, even on a GPU host).

    The usual causes: a CPU-only build of torch, or a CUDA build newer than the driver runs
    (PyPI's torch 2.13.0 for Linux x86_64 is built for CUDA 13.0: driver 580 or newer)."""
    import torch

    if torch.cuda.is_available():
        return None
    if os.environ.get("CUDA_VISIBLE_DEVICES", "x").strip() in ("", "-1"):
        return None
    gpus = [p for p in _DEV.glob("nvidia*") if p.name[len("nvidia"):].isdigit()]
    if not gpus:
        return None
    driver = _nvidia_driver_version()
    has = f"this machine has {len(gpus)} NVIDIA GPU(s)" + (f" (driver {driver})" if driver else "")
    if torch.version.cuda is None:
        return (f"{has}, but torch {torch.__version__} is a CPU-only build: install a CUDA build of torch "
                f"{torch.__version__.split('+')[0]} (docs/extract.md, \"GPU\")")
    return (f"{has}, but torch {torch.__version__} (built for CUDA {torch.version.cuda}) cannot use them: "
            f"{_cuda_init_error()} (docs/extract.md, \"GPU\")")


def _nvidia_driver_version() -> Optional[str]:
    """The loaded NVIDIA kernel module's version ("580.65.06"), from /proc; None if unknown."""
    try:
        first = _NVIDIA_VERSION.read_text(errors="replace").splitlines()[0]
    except (OSError, IndexError):
        return None
    # "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 ..." (or "Open Kernel
    # Module for x86_64  580.65.06 ..."): the only dotted number of three digits or more
    found = re.search(r"\b(\d{3,}\.\d+(?:\.\d+)?)\b", first)
    return found.group(1) if found else None


@functools.lru_cache(maxsize=1)
def _cuda_init_error() -> str:
    """The first line of what CUDA's initialisation raises (driver too old, no device ...).
    Once per process: a failed initialisation does not heal, and callers such as the SVM's
    `make_svm` ask on every fit."""
    import torch

    try:
        torch.cuda.init()
    except Exception as e:  # noqa: BLE001 - any failure is the answer
        text = str(e).strip()
        return text.splitlines()[0] if text else type(e).__name__
    return "torch.cuda.is_available() is False"
