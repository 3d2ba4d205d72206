"""Tell checkpoint formats apart from the file contents, and load PyTorch files safely."""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Dict

import torch

from c3dfeat.errors import UnsafePickleError, WeightsError

# torch.save's legacy (non-zip) format starts with a protocol-2 pickle of this magic number
# (torch/serialization.py MAGIC_NUMBER); DavideA's c3d.pickle is such a file (models.md §7.5).
_TORCH_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_TORCH_HEAD = b"\x80\x02\x8a\x0a" + _TORCH_MAGIC.to_bytes(10, "little")

TORCH = "torch"  # state_dict or pytorchvideo: told apart after loading


def format_family(fmt: str) -> str:
    """What :func:`detect_format` returns for a file of the declared checkpoint format `fmt`."""
    return TORCH if fmt in ("state_dict", "pytorchvideo") else fmt


def detect_format(path: os.PathLike) -> str:
    """"torch", "caffe2_pkl", "caffe_v1", "caffe_v11" or "caffe_mean", from the bytes of `path`."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(64)
    if not head:
        raise WeightsError(f"{path} is empty")
    if zipfile.is_zipfile(path) or head.startswith(_LEGACY_TORCH_HEAD):
        return TORCH
    # Pickles: protocol >= 2 starts with PROTO (0x80); Python 2's default protocol 0 with a
    # MARK "(" or a dict/list opcode ("}" / "]" are protocol-1 EMPTY_DICT / EMPTY_LIST).
    if head[:1] == b"\x80" or head[:1] in (b"(", b"}", b"]"):
        return "caffe2_pkl"
    from c3dfeat.weights.caffe import top_level_fields

    fields = top_level_fields(path)
    if fields:
        numbers = {n for n, _ in fields}
        if 100 in numbers:
            return "caffe_v11"
        # C3D BlobProto: num..width varints (1-5) and the packed data (6, wire type 2).
        if numbers <= {1, 2, 3, 4, 5, 6, 7} and (6, 2) in fields and all(
            w == 0 for n, w in fields if n <= 5
        ):
            return "caffe_mean"
        if (2, 2) in fields:
            return "caffe_v1"
    raise WeightsError(
        f"cannot tell the format of {path}: not a PyTorch file, a Caffe2 .pkl, a C3D .caffemodel "
        "or a .binaryproto mean file"
    )


def load_torch_state_dict(path: os.PathLike) -> Dict[str, torch.Tensor]:
    """A state_dict from a torch.save file (zip or legacy), with `weights_only=True`.

    A pytorchvideo `.pyth` dict yields its "model_state"; a dict holding "state_dict" that one.
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafePickleError(
            f"{path}: torch.load(weights_only=True) refused this file ({str(e).splitlines()[0]}); "
            "it holds more than tensors and plain containers — do not load it with weights_only=False "
            "unless you trust its source"
        ) from e
    except Exception as e:
        raise WeightsError(f"cannot read {path} as a PyTorch file: {e}") from e
    return unwrap_state_dict(obj, str(path))


def unwrap_state_dict(obj, where: str) -> Dict[str, torch.Tensor]:
    if isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in ("model_state", "state_dict"):  # pytorchvideo .pyth; common training dumps
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{where} does not hold a state_dict (a dict of tensors)")
    return dict(obj)

