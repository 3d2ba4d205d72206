"""What this machine offers c3dfeat, in one record (`c3dfeat env`): versions, GPUs (or why torch
cannot use them), usable cores, decoders, the Caffe models' resize engine and where weights come from.

For bug reports and for a first run on a new machine: each entry says what a run would get, and
where something is missing, why (the same words the run itself would use).
"""
from __future__ import annotations

import os
import platform
from typing import Any, Dict, List, Optional

from c3dfeat.errors import C3DFeatError
from c3dfeat.version import __version__

__all__ = ["environment_report"]


def environment_report() -> Dict[str, Any]:
    """The machine as c3dfeat sees it (JSON-able; `c3dfeat env --json`)."""
    import numpy as np
    import torch

    from c3dfeat import runtime

    return {
        "c3dfeat": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,  # None: a CPU-only build
        "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
        "gpus": _gpus(),
        "gpu_problem": runtime.unusable_gpu_reason(),
        "cores": {"usable": runtime.usable_cores(), "machine": os.cpu_count()},
        "allocator": _allocator(),
        "decoders": _decoders(),
        "gpu_decoding": _gpu_decoding(),
        "caffe_resize": _resize(),
        "weights": _weights(),
        "ray": _version_of("ray"),
    }


def _allocator() -> str:
    """What `configure_allocator` does in a run (done here too: this process allocates little)."""
    from c3dfeat import runtime

    try:
        return runtime.configure_allocator()
    except ValueError as e:  # C3DFEAT_MALLOC set to something unknown: a run stops on it
        return f"error: {e}"


def _gpus() -> List[Dict[str, Any]]:
    import torch

    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        out.append({"device": f"cuda:{i}", "name": props.name, "memory_gib": round(props.total_memory / 2**30, 1)})
    return out


def _decoders() -> Dict[str, Dict[str, str]]:
    from c3dfeat.video import BACKENDS, backend_versions

    out: Dict[str, Dict[str, str]] = {}
    for backend in BACKENDS:
        try:
            out[backend] = backend_versions(backend)
        except C3DFeatError as e:
            out[backend] = {"error": str(e)}
    return out


def _gpu_decoding() -> str:
    import torch

    from c3dfeat.video import check_decode_device

    if not torch.cuda.is_available():
        return "no usable GPU"
    try:
        check_decode_device("cuda", "torchcodec")
    except C3DFeatError as e:
        return str(e)
    return "yes (--decoder torchcodec --decode-device cuda)"


def _resize() -> str:
    from c3dfeat.resize import resize_engine

    try:
        engine = resize_engine()
    except C3DFeatError as e:  # C3DFEAT_RESIZE set to something that cannot be
        return f"error: {e}"
    if engine == "opencv":
        import cv2

        return f"opencv {cv2.__version__} (checked bit-equal to c3dfeat's reference)"
    return "numpy (c3dfeat's reference implementation)"


def _weights() -> Dict[str, Any]:
    from c3dfeat.weights import download_dir, search_dirs
    from c3dfeat.weights.policy import mirror_from, require_hashes_from

    out: Dict[str, Any] = {"searched": [str(d) for d in search_dirs()], "downloads_to": str(download_dir())}
    for key, read in (("mirror", mirror_from), ("require_hashes", require_hashes_from)):
        try:
            out[key] = read(None)  # from the environment, as a run reads it
        except C3DFeatError as e:
            out[key] = f"error: {e}"
    return out


def _version_of(module: str) -> Optional[str]:
    try:
        return str(__import__(module).__version__)
    except Exception:  # noqa: BLE001 - absent or broken: not installed, as far as a run is concerned
        return None
