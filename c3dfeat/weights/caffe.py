"""Read the original Caffe files without Caffe: C3D-v1.0 and C3D-v1.1 `.caffemodel`, `.binaryproto`.

Parsed with the protobuf runtime (a core dependency: the default model is a Caffe file) through
descriptors built here in code for just the messages needed (models.md §7.2, §7.3; field numbers from
facebookarchive/C3D `C3D-v1.0/src/caffe/proto/caffe.proto` and `C3D-v1.1/src/caffe/proto/caffe.proto`). Unknown fields
(solver settings, layer parameters we do not need) are skipped by protobuf.

The float payloads are plain `repeated float ... [packed = true]` fields, so both packed and
unpacked encodings (and packed fields split over several records) parse as the spec says; with the
default upb backend `np.array(blob.data)` copies them out in bulk (C3D, 80 M floats: ~0.5 s to
parse and ~0.3 s to copy on this machine).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from c3dfeat.errors import ConversionError, WeightsError


@dataclass
class CaffeLayer:
    """One layer of a Caffe net: its name, type (enum number for v1.0, string for v1.1) and blobs."""

    name: str
    type: object
    blobs: List[np.ndarray]
    bn_eps: Optional[float] = None  # v1.1 BatchNorm only


def _protobuf():
    try:
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    except ImportError:  # pragma: no cover - depends on the environment
        raise WeightsError(
            "reading Caffe files needs the protobuf package, a dependency of c3dfeat: pip install 'protobuf>=4'"
        ) from None
    return descriptor_pb2, descriptor_pool, message_factory


def _field(msg, name: str, number: int, ftype: str, label: str = "optional", type_name: str = "", default=None):
    d2, _, _ = _protobuf()
    F = d2.FieldDescriptorProto
    f = msg.field.add()
    f.name = name
    f.number = number
    f.type = getattr(F, "TYPE_" + ftype.upper())
    f.label = getattr(F, "LABEL_" + label.upper())
    if type_name:
        f.type_name = type_name
    if default is not None:
        f.default_value = default


def _build(package: str):
    """Message classes for one schema (only the fields c3dfeat reads; others are skipped)."""
    d2, descriptor_pool, message_factory = _protobuf()
    fd = d2.FileDescriptorProto(name=f"c3dfeat_{package}.proto", package=f"c3dfeat.{package}", syntax="proto2")
    p = f".c3dfeat.{package}."
    if package == "caffe_v10":
        blob = fd.message_type.add(name="BlobProto")
        for i, n in enumerate(("num", "channels", "length", "height", "width"), start=1):
            _field(blob, n, i, "int32", default="0")
        _field(blob, "data", 6, "float", "repeated")
        layer = fd.message_type.add(name="LayerParameter")
        _field(layer, "bottom", 2, "string", "repeated")
        _field(layer, "top", 3, "string", "repeated")
        _field(layer, "name", 4, "string")
        _field(layer, "type", 5, "int32")  # LayerType enum; int32 is the same varint on the wire
        _field(layer, "blobs", 6, "message", "repeated", p + "BlobProto")
        net = fd.message_type.add(name="NetParameter")
        _field(net, "name", 1, "string")
        _field(net, "layers", 2, "message", "repeated", p + "LayerParameter")
    else:  # caffe_v11: BVLC layout + C3D extensions
        shape = fd.message_type.add(name="BlobShape")
        _field(shape, "dim", 1, "int64", "repeated")
        shape.field[0].options.packed = True
        blob = fd.message_type.add(name="BlobProto")
        for i, n in enumerate(("num", "channels", "height", "width"), start=1):
            _field(blob, n, i, "int32", default="0")
        _field(blob, "data", 5, "float", "repeated")
        _field(blob, "shape", 7, "message", type_name=p + "BlobShape")
        _field(blob, "double_data", 8, "double", "repeated")
        bn = fd.message_type.add(name="BatchNormParameter")
        _field(bn, "use_global_stats", 1, "bool")
        _field(bn, "moving_average_fraction", 2, "float", default="0.999")
        _field(bn, "eps", 3, "float", default="1e-05")
        layer = fd.message_type.add(name="LayerParameter")
        _field(layer, "name", 1, "string")
        _field(layer, "type", 2, "string")
        _field(layer, "bottom", 3, "string", "repeated")
        _field(layer, "top", 4, "string", "repeated")
        _field(layer, "blobs", 7, "message", "repeated", p + "BlobProto")
        _field(layer, "batch_norm_param", 139, "message", type_name=p + "BatchNormParameter")
        net = fd.message_type.add(name="NetParameter")
        _field(net, "name", 1, "string")
        _field(net, "layer", 100, "message", "repeated", p + "LayerParameter")
    for m in fd.message_type:  # [packed = true] as in caffe.proto (parsers accept both encodings)
        for f in m.field:
            if f.name in ("data", "double_data"):
                f.options.packed = True
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    return {m.name: message_factory.GetMessageClass(pool.FindMessageTypeByName(p[1:] + m.name))
            for m in fd.message_type}


_CLASSES: Dict[str, dict] = {}


def _classes(package: str) -> dict:
    if package not in _CLASSES:
        _CLASSES[package] = _build(package)
    return _CLASSES[package]


# ----------------------------------------------------------------------------- blobs
def _blob_array(blob, package: str, where: str) -> np.ndarray:
    if package == "caffe_v10":
        shape: Tuple[int, ...] = (blob.num, blob.channels, blob.length, blob.height, blob.width)
    elif blob.HasField("shape"):
        shape = tuple(int(d) for d in blob.shape.dim)
    else:  # legacy 4-D fields
        shape = (blob.num, blob.channels, blob.height, blob.width)
    count = int(np.prod(shape, dtype=np.int64)) if shape else 0
    values = np.array(blob.data, dtype=np.float32)
    if values.size == 0 and package == "caffe_v11" and len(blob.double_data):
        values = np.array(blob.double_data, dtype=np.float64).astype(np.float32)
    if values.size != count:
        raise ConversionError(f"{where}: blob of shape {shape} holds {values.size} values, expected {count}")
    return values.reshape(shape)


def _parse(package: str, message: str, data: bytes, path: str):
    msg = _classes(package)[message]()
    try:
        msg.ParseFromString(data)
    except Exception as e:  # google.protobuf.message.DecodeError
        raise ConversionError(f"{path}: not a valid {package} {message}: {e}") from e
    return msg


def _parse_file(package: str, message: str, path: os.PathLike):
    with open(path, "rb") as f:
        data = f.read()
    return _parse(package, message, data, str(path))


def read_caffe_v1(path: os.PathLike) -> List[CaffeLayer]:
    """The layers (with their blobs) of a C3D-v1.0 `.caffemodel` (V1 `layers`, C3D BlobProto)."""
    net = _parse_file("caffe_v10", "NetParameter", path)
    layers = []
    for lp in net.layers:
        blobs = [_blob_array(b, "caffe_v10", f"{path}: layer {lp.name!r} blob {i}") for i, b in enumerate(lp.blobs)]
        layers.append(CaffeLayer(lp.name, int(lp.type), blobs))
    if not layers:
        raise ConversionError(f"{path}: no V1 `layers` found; is this a C3D-v1.0 .caffemodel?")
    return layers


def read_caffe_v11(path: os.PathLike) -> List[CaffeLayer]:
    """The layers of a C3D-v1.1 `.caffemodel` (`layer` = 100, BlobShape)."""
    net = _parse_file("caffe_v11", "NetParameter", path)
    layers = []
    for lp in net.layer:
        blobs = [_blob_array(b, "caffe_v11", f"{path}: layer {lp.name!r} blob {i}") for i, b in enumerate(lp.blobs)]
        eps = float(lp.batch_norm_param.eps) if lp.type == "BatchNorm" else None
        layers.append(CaffeLayer(lp.name, lp.type, blobs, eps))
    if not layers:
        raise ConversionError(f"{path}: no `layer` entries found; is this a C3D-v1.1 .caffemodel?")
    return layers


def read_mean_cube(path: os.PathLike) -> np.ndarray:
    """The (C, L, H, W) float32 volume of a C3D-v1.0 `.binaryproto` mean file (num must be 1)."""
    blob = _parse_file("caffe_v10", "BlobProto", path)
    arr = _blob_array(blob, "caffe_v10", str(path))
    if arr.ndim != 5 or arr.shape[0] != 1 or arr.size == 0:
        raise ConversionError(f"{path}: mean blob has shape {arr.shape}; expected (1, C, L, H, W)")
    return arr[0]


# ----------------------------------------------------------------------------- sniffing
def top_level_fields(path: os.PathLike, limit: int = 64) -> Optional[Sequence[Tuple[int, int]]]:
    """(field number, wire type) of the first top-level protobuf records, or None if not protobuf.

    Only walks tags and skips values (seeking), so it is cheap on a 300 MB file; used to tell a
    v1.0 net (field 2), a v1.1 net (field 100) and a mean BlobProto apart.
    """
    size = os.path.getsize(path)
    out: List[Tuple[int, int]] = []
    with open(path, "rb") as f:

        def varint() -> Optional[int]:
            shift = result = 0
            for _ in range(10):
                b = f.read(1)
                if not b:
                    return None
                result |= (b[0] & 0x7F) << shift
                if not b[0] & 0x80:
                    return result
                shift += 7
            return None

        while f.tell() < size and len(out) < limit:
            tag = varint()
            if tag is None or tag >> 3 == 0:
                return None
            number, wire = tag >> 3, tag & 7
            if wire == 0:
                if varint() is None:
                    return None
            elif wire == 1:
                f.seek(8, 1)
            elif wire == 2:
                n = varint()
                if n is None or f.tell() + n > size:
                    return None
                f.seek(n, 1)
            elif wire == 5:
                f.seek(4, 1)
            else:
                return None
            if f.tell() > size:
                return None
            out.append((number, wire))
    return out
