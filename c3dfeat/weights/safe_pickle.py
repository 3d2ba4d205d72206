"""A restricted unpickler for Caffe2 `.pkl` checkpoints (models.md §7.4).

The files are Python-2 pickles of `{"blobs": {name: ndarray}}`, read with `encoding="latin1"`
(Python-2 `str` holds the raw array bytes). Unpickling runs whatever callables the stream names,
so only the globals numpy needs to rebuild an ndarray, its dtype and numpy scalars are admitted
(plus a latin-1-only stand-in for `_codecs.encode`, which Python 3 uses for bytes at protocol 2);
containers, strings and numbers need no global at all. Anything else — `os.system`, `eval`,
`builtins.getattr`, `copyreg._reconstructor` — is refused with UnsafePickleError before it is
looked up, so it never runs.
"""
from __future__ import annotations

import io
import os
import pickle
from typing import Any, BinaryIO, Dict, Tuple

import numpy as np

from c3dfeat.errors import UnsafePickleError

try:  # numpy >= 2 moved the C module; pickles written by numpy 1.x / Python 2 name the old path
    from numpy._core import multiarray as _multiarray
except ImportError:  # pragma: no cover - numpy < 2
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]

# (module, name) -> object. Both module spellings resolve to the real numpy objects directly:
# nothing is imported by name from the stream.
_ALLOWED: Dict[Tuple[str, str], Any] = {}
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED[(_mod, "_reconstruct")] = _multiarray._reconstruct
    _ALLOWED[(_mod, "scalar")] = _multiarray.scalar
for _mod in ("numpy", "numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED[(_mod, "ndarray")] = np.ndarray
    _ALLOWED[(_mod, "dtype")] = np.dtype


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """Stand-in for `_codecs.encode`: Python 3 writes `bytes` at protocol 2 as
    `_codecs.encode(str, "latin1")` (e.g. an ndarray's raw data). Only that codec is admitted."""
    if not isinstance(text, str) or encoding.lower().replace("-", "").replace("_", "") not in ("latin1", "iso88591"):
        raise UnsafePickleError(f"refusing _codecs.encode with codec {encoding!r} (only latin-1 holds array bytes)")
    return text.encode("latin1")


_ALLOWED[("_codecs", "encode")] = _latin1_encode


class RestrictedUnpickler(pickle.Unpickler):
    """Admits containers, strings, numbers, ndarrays, dtypes and numpy scalars; nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to unpickle {module}.{name}: a Caffe2 checkpoint holds only arrays, "
                "containers, strings and numbers; this file tries to call code. Do not load it "
                "with pickle; get the checkpoint from its official URL"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("refusing a pickle with persistent ids (not a Caffe2 checkpoint)")


def safe_load(f: BinaryIO) -> Any:
    """Unpickle `f` with :class:`RestrictedUnpickler` (latin-1 for Python-2 strings)."""
    try:
        return RestrictedUnpickler(f, encoding="latin1").load()
    except UnsafePickleError:
        raise
    except Exception as e:  # corrupt stream: EOFError, UnpicklingError, ValueError ...
        raise UnsafePickleError(f"cannot unpickle {getattr(f, 'name', 'stream')}: {e}") from e


def safe_load_path(path: os.PathLike) -> Any:
    with open(path, "rb") as f:
        return safe_load(f)


def safe_loads(data: bytes) -> Any:
    return safe_load(io.BytesIO(data))
