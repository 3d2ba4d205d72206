"""Converters from the original Caffe / Caffe2 releases to our models' state_dicts (no Caffe needed).

Each converter walks the *target model's* state_dict keys, names the source blob for every key,
checks its shape, and fails with a ConversionError naming the blob when anything does not fit:
every model entry must be filled and every source blob used exactly once.

* C3D-v1.0 `.caffemodel` → `c3d` (models.md §1.4): conv1a→conv1, conv2a→conv2, fc6-1→fc6 ...;
  blob 0 = weight, blob 1 = bias; 5-D C3D blobs lose their leading singleton axes.
* C3D-v1.1 `.caffemodel` → `res3d_18` (models.md §2.3, §7.3): Caffe BatchNorm keeps running
  *sums* and a scale factor (blob 2): mean = blob0 / blob2, var = blob1 / blob2 (0 when blob2 is 0,
  `batch_norm_layer.cpp`); the following Scale layer's gamma/beta become the PyTorch BN affine.
* Caffe2 `.pkl` → R(2+1)D-34 / ir-CSN-152 / ip-CSN-152 / R(2+1)D-152 (models.md §4.3, §5.3, §7.4;
  the blob names of ig65m `cli/convert.py` and VMZ `convert_models.py`).
"""
from __future__ import annotations

import os
import re
from collections import OrderedDict
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from c3dfeat.errors import ConversionError

StateDict = Dict[str, torch.Tensor]


# ----------------------------------------------------------------------------- shared helpers
def _fit(arr: np.ndarray, shape: Tuple[int, ...], blob: str, key: str) -> torch.Tensor:
    """`arr` as a float32 tensor of `shape`; only leading singleton axes may be dropped (Caffe pads
    biases to (1,1,1,1,N) and fc weights to (1,1,1,N,K))."""
    if not isinstance(arr, np.ndarray) or arr.dtype.kind != "f":
        kind = type(arr).__name__ if not isinstance(arr, np.ndarray) else f"ndarray of {arr.dtype}"
        raise ConversionError(f"blob {blob!r} (for {key}) is a {kind}, expected a float array")
    a = arr
    while a.ndim > len(shape) and a.shape[0] == 1:
        a = a[0]
    if tuple(a.shape) != tuple(shape):
        raise ConversionError(
            f"blob {blob!r} has shape {tuple(arr.shape)}, but {key} needs {tuple(shape)}; "
            "is this checkpoint for another model or class count?"
        )
    if a.dtype != np.float32 or not a.flags.c_contiguous or not a.flags.writeable:
        a = np.array(a, dtype=np.float32, copy=True)  # torch.from_numpy needs writable memory
    return torch.from_numpy(a)


def _model_shapes(model: nn.Module) -> "OrderedDict[str, Tuple[int, ...]]":
    return OrderedDict((k, tuple(v.shape)) for k, v in model.state_dict().items())


def _finish(model: nn.Module, out: StateDict, unused: Sequence[str], source: str) -> StateDict:
    if unused:
        names = ", ".join(sorted(unused)[:8]) + (" ..." if len(unused) > 8 else "")
        raise ConversionError(
            f"{source}: {len(unused)} blob(s) not used by {type(model).__name__}: {names}; "
            "the checkpoint does not belong to this model"
        )
    # BatchNorm's step counter is not a weight (and is not stored by Caffe/Caffe2).
    for k, v in model.state_dict().items():
        if k.endswith("num_batches_tracked") and k not in out:
            out[k] = torch.zeros_like(v)
    missing = [k for k in model.state_dict() if k not in out]
    if missing:
        raise ConversionError(f"{source}: no blob for {', '.join(missing[:8])}")
    return out


_BN_PARAMS = ("weight", "bias", "running_mean", "running_var")


def _bn_groups(shapes: Dict[str, Tuple[int, ...]]) -> List[str]:
    """Module prefixes of the BatchNorm layers (those with a running_var)."""
    return [k[: -len(".running_var")] for k in shapes if k.endswith(".running_var")]


# ----------------------------------------------------------------------------- C3D-v1.0 → c3d
# Caffe layer name → C3D module name (models.md §1.4); other conv names are equal.
_C3D_RENAME = {"conv1a": "conv1", "conv2a": "conv2", "fc6-1": "fc6", "fc7-1": "fc7", "fc8-1": "fc8"}


def c3d_from_caffe_v1(layers, model: nn.Module, source: str = "caffemodel") -> StateDict:
    """`c3d` state_dict from the layers of a C3D-v1.0 net (see :func:`caffe.read_caffe_v1`)."""
    shapes = _model_shapes(model)
    out: StateDict = OrderedDict()
    unused: List[str] = []
    for layer in layers:
        if not layer.blobs:
            continue  # ReLU, pooling, dropout, data, softmax
        prefix = _C3D_RENAME.get(layer.name, layer.name)
        for i, arr in enumerate(layer.blobs):
            blob = f"{layer.name}[{i}]"
            key = f"{prefix}.{('weight', 'bias')[i]}" if i < 2 else None
            if key is None or key not in shapes:
                unused.append(blob)
                continue
            if key in out:
                raise ConversionError(f"{source}: blob {blob!r} maps to {key}, which another layer already filled")
            out[key] = _fit(arr, shapes[key], blob, key)
    return _finish(model, out, unused, source)


# ----------------------------------------------------------------------------- C3D-v1.1 → res3d_18
def _res3d_caffe_names(prefix: str) -> Tuple[str, str, str]:
    """(conv, BatchNorm, Scale) Caffe layer names for a torchvision-style module prefix of Res3D-18.

    stem.0 → conv1 / bn_conv1 / scale_conv1; layer{L}.{k}.conv{1,2}.0 → res{L+1}{a,b}_branch2{a,b};
    layer{L}.0.downsample.0 → res{L+1}a_branch1 (models.md §2.3).
    """
    if prefix == "stem":
        return "conv1", "bn_conv1", "scale_conv1"
    m = re.fullmatch(r"layer(\d+)\.(\d+)\.(conv1|conv2|downsample)", prefix)
    if not m:
        raise ConversionError(f"no Caffe layer for module {prefix!r} of Res3D")
    stage, block = int(m.group(1)) + 1, chr(ord("a") + int(m.group(2)))
    branch = {"conv1": "branch2a", "conv2": "branch2b", "downsample": "branch1"}[m.group(3)]
    tail = f"{stage}{block}_{branch}"
    return f"res{tail}", f"bn{tail}", f"scale{tail}"


def res3d_from_caffe_v11(layers, model: nn.Module, source: str = "caffemodel") -> StateDict:
    """`res3d_18` state_dict from the layers of the C3D-v1.1 Res3D net (see :func:`caffe.read_caffe_v11`)."""
    shapes = _model_shapes(model)
    by_name = {}
    for layer in layers:
        if layer.blobs:
            if layer.name in by_name:
                raise ConversionError(f"{source}: two layers named {layer.name!r} carry blobs")
            by_name[layer.name] = layer
    used = set()

    def take(name: str, n: int):
        layer = by_name.get(name)
        if layer is None:
            raise ConversionError(f"{source}: no layer {name!r} with blobs (is this the Res3D-18 caffemodel?)")
        if len(layer.blobs) != n:
            raise ConversionError(f"{source}: layer {name!r} has {len(layer.blobs)} blobs, expected {n}")
        if name in used:
            raise ConversionError(f"{source}: layer {name!r} would be used twice")
        used.add(name)
        return layer

    out: StateDict = OrderedDict()
    bn_eps = {n: m.eps for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    for bn_prefix in _bn_groups(shapes):
        if not bn_prefix.endswith(".1"):
            raise ConversionError(f"unexpected BatchNorm module {bn_prefix!r} in the Res3D model")
        mod = bn_prefix[:-2]  # stem.1 -> stem; layer1.0.conv1.1 -> layer1.0.conv1
        conv_name, bn_name, scale_name = _res3d_caffe_names(mod)
        conv_key = f"{mod}.0.weight"
        if conv_key not in shapes:
            raise ConversionError(f"Res3D model has no {conv_key} next to {bn_prefix}")
        conv = take(conv_name, 1)  # Res3D convs have no bias (bias_term: false)
        out[conv_key] = _fit(conv.blobs[0], shapes[conv_key], f"{conv_name}[0]", conv_key)
        bn = take(bn_name, 3)
        if bn.bn_eps is not None and bn_prefix in bn_eps and not np.isclose(bn.bn_eps, bn_eps[bn_prefix], rtol=1e-3):
            raise ConversionError(
                f"{source}: {bn_name} has eps {bn.bn_eps:g} but {bn_prefix} uses {bn_eps[bn_prefix]:g}"
            )
        factor = _fit(bn.blobs[2], (1,), f"{bn_name}[2]", f"{bn_prefix} scale factor")[0].item()
        inv = 0.0 if factor == 0 else 1.0 / factor  # batch_norm_layer.cpp
        c = shapes[f"{bn_prefix}.running_mean"]
        mean = _fit(bn.blobs[0], c, f"{bn_name}[0]", f"{bn_prefix}.running_mean")
        var = _fit(bn.blobs[1], c, f"{bn_name}[1]", f"{bn_prefix}.running_var")
        # Caffe multiplies the float sums by the float32 factor 1/blob2 (caffe_cpu_scale); do the same.
        out[f"{bn_prefix}.running_mean"] = mean * torch.tensor(inv, dtype=torch.float32)
        out[f"{bn_prefix}.running_var"] = var * torch.tensor(inv, dtype=torch.float32)
        scale = take(scale_name, 2)
        out[f"{bn_prefix}.weight"] = _fit(scale.blobs[0], c, f"{scale_name}[0]", f"{bn_prefix}.weight")
        out[f"{bn_prefix}.bias"] = _fit(scale.blobs[1], c, f"{scale_name}[1]", f"{bn_prefix}.bias")
    fc_layers = [n for n, layer in by_name.items() if layer.type in ("InnerProduct", 14)]
    if len(fc_layers) != 1 or "fc.weight" not in shapes:
        raise ConversionError(f"{source}: expected exactly one InnerProduct layer (fc8), found {fc_layers}")
    fc = take(fc_layers[0], 2)
    out["fc.weight"] = _fit(fc.blobs[0], shapes["fc.weight"], f"{fc.name}[0]", "fc.weight")
    out["fc.bias"] = _fit(fc.blobs[1], shapes["fc.bias"], f"{fc.name}[1]", "fc.bias")
    unused = [f"{n}[*]" for n in by_name if n not in used]
    return _finish(model, out, unused, source)


# ----------------------------------------------------------------------------- Caffe2 .pkl
_C2_BN = {"weight": "s", "bias": "b", "running_mean": "rm", "running_var": "riv"}


def caffe2_blobs(obj, source: str = "pkl") -> Dict[str, np.ndarray]:
    """The name → ndarray dict of a Caffe2 pickle: `obj["blobs"]`, or `obj` itself if flat."""
    if isinstance(obj, dict) and isinstance(obj.get("blobs"), dict):
        obj = obj["blobs"]
    if not isinstance(obj, dict) or not obj:
        raise ConversionError(f"{source}: not a Caffe2 checkpoint (expected a dict with 'blobs')")
    return dict(obj)


def _caffe2_name_fn(shapes: Dict[str, Tuple[int, ...]]) -> Callable[[str], str]:
    """Key → Caffe2 blob name for torchvision-style VideoResNets (stem / layerL.k / fc).

    The global block index i counts blocks over layer1..layer4. Inside a block:
    * BasicBlock (R(2+1)D-34): conv{c}.0.{0,1,3} = (2+1)D pieces → comp_i_conv_{c}_middle /
      comp_i_spatbn_{c}_middle / comp_i_conv_{c}; conv{c}.1 → comp_i_spatbn_{c};
    * Bottleneck: conv1 → comp_i_{conv,spatbn}_1; a separable conv2 (R(2+1)D-152: .0.{0,1,3};
      ip-CSN: .0.{0,1,2}) → comp_i_conv_2_middle / spatbn_2_middle / conv_2 and conv3 → _3;
      a depthwise conv2 (ir-CSN) → comp_i_*_3, conv3 → _4 (the Caffe2 builder skips an index);
    * downsample.{0,1} → shortcut_projection_i / shortcut_projection_i_spatbn.
    """
    blocks = sorted({(int(m.group(1)), int(m.group(2)))
                     for k in shapes for m in [re.match(r"layer(\d+)\.(\d+)\.", k)] if m})
    index = {b: i for i, b in enumerate(blocks)}
    two_plus_one_stem = "stem.3.weight" in shapes
    bn_modules = set(_bn_groups(shapes))

    def conv2_kind(layer: int, block: int) -> str:
        p = f"layer{layer}.{block}.conv2.0"
        if f"{p}.weight" in shapes:
            w = shapes[f"{p}.weight"]
            return "depthwise" if w[1] == 1 and w[0] > 1 else "plain"
        return "separable"

    def name(key: str) -> str:
        mod, _, param = key.rpartition(".")
        if mod.startswith("stem."):
            idx = mod.split(".")[1]
            base = {("0", True): "conv1_middle", ("1", True): "conv1_middle_spatbn_relu",
                    ("3", True): "conv1", ("4", True): "conv1_spatbn_relu",
                    ("0", False): "conv1", ("1", False): "conv1_spatbn_relu"}.get((idx, two_plus_one_stem))
        elif mod == "fc":
            return f"last_out_L{shapes['fc.weight'][0]}_{'w' if param == 'weight' else 'b'}"
        else:
            m = re.fullmatch(r"layer(\d+)\.(\d+)\.(.+)", mod)
            base = None
            if m:
                layer, block, rest = int(m.group(1)), int(m.group(2)), m.group(3)
                i = index[(layer, block)]
                bottleneck = any(k.startswith(f"layer{layer}.{block}.conv3.") for k in shapes)
                kind = conv2_kind(layer, block) if bottleneck else "basic"
                j_of = {"conv1": 1, "conv2": 3 if kind == "depthwise" else 2,
                        "conv3": 4 if kind == "depthwise" else 3}
                mm = re.fullmatch(r"(conv\d)\.(\d)(?:\.(\d))?", rest)
                if rest == "downsample.0":
                    base = f"shortcut_projection_{i}"
                elif rest == "downsample.1":
                    base = f"shortcut_projection_{i}_spatbn"
                elif mm and mm.group(1) in j_of:
                    c, sub, piece = mm.group(1), mm.group(2), mm.group(3)
                    j = j_of[c]
                    if sub == "1" and piece is None:
                        base = f"comp_{i}_spatbn_{j}"
                    elif sub == "0" and piece is None:
                        base = f"comp_{i}_conv_{j}"
                    elif sub == "0" and piece == "0":
                        base = f"comp_{i}_conv_{j}_middle"
                    elif sub == "0" and piece == "1":
                        base = f"comp_{i}_spatbn_{j}_middle"
                    elif sub == "0" and piece in ("2", "3"):
                        base = f"comp_{i}_conv_{j}"
        if base is None or (mod in bn_modules) != ("spatbn" in base):
            raise ConversionError(f"no Caffe2 blob corresponds to model entry {key!r}")
        if mod in bn_modules:
            return f"{base}_{_C2_BN[param]}"
        if param != "weight":
            raise ConversionError(f"no Caffe2 blob corresponds to model entry {key!r} (Caffe2 convs have no bias)")
        return f"{base}_w"

    return name


def from_caffe2(blobs: Dict[str, np.ndarray], model: nn.Module, source: str = "pkl") -> StateDict:
    """State_dict of a torchvision-style VideoResNet (R(2+1)D-34, ir/ip-CSN-152, R(2+1)D-152) from Caffe2 blobs."""
    shapes = _model_shapes(model)
    name_of = _caffe2_name_fn(shapes)
    fc_w = f"last_out_L{shapes['fc.weight'][0]}_w" if "fc.weight" in shapes else None
    if fc_w and fc_w not in blobs:
        heads = sorted(b for b in blobs if b.startswith("last_out_L"))
        raise ConversionError(
            f"{source}: the model has {shapes['fc.weight'][0]} classes "
            f"but the checkpoint's head is {heads or 'missing'}"
        )
    out: StateDict = OrderedDict()
    used = set()
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            continue
        blob = name_of(key)
        if blob not in blobs:
            raise ConversionError(f"{source}: blob {blob!r} (for {key}) is missing")
        if blob in used:
            raise ConversionError(f"{source}: blob {blob!r} would be used twice (again for {key})")
        used.add(blob)
        out[key] = _fit(blobs[blob], shape, blob, key)
    unused = [b for b in blobs if b not in used]
    return _finish(model, out, unused, source)


def caffe2_num_classes(blobs: Dict[str, np.ndarray]) -> Optional[int]:
    heads = [int(m.group(1)) for b in blobs for m in [re.fullmatch(r"last_out_L(\d+)_w", b)] if m]
    return heads[0] if len(heads) == 1 else None


def caffe_num_classes(layers) -> Optional[int]:
    """Rows of the last layer with a 2-D-able weight (fc8 / fc8-1)."""
    for layer in reversed(list(layers)):
        if layer.blobs:
            w = layer.blobs[0]
            squeezed = [d for d in w.shape if d != 1] or [1]
            return int(squeezed[0]) if len(squeezed) == 2 else None
    return None


def read_source(path: os.PathLike, fmt: str):
    """The parsed contents of a Caffe / Caffe2 file: a list of CaffeLayer, or the Caffe2 blob dict."""
    from c3dfeat.weights import caffe
    from c3dfeat.weights.safe_pickle import safe_load_path

    if fmt == "caffe_v1":
        return caffe.read_caffe_v1(path)
    if fmt == "caffe_v11":
        return caffe.read_caffe_v11(path)
    if fmt == "caffe2_pkl":
        return caffe2_blobs(safe_load_path(path), str(path))
    raise ConversionError(f"{path}: no converter for format {fmt!r}")


def source_num_classes(source, fmt: str) -> Optional[int]:
    """The classifier size of a parsed source (see :func:`read_source`), if it can be told."""
    return caffe2_num_classes(source) if fmt == "caffe2_pkl" else caffe_num_classes(source)


def convert_source(source, fmt: str, model: nn.Module, where: str = "checkpoint") -> StateDict:
    """`model`'s state_dict from a parsed source (see :func:`read_source`)."""
    if fmt == "caffe_v1":
        return c3d_from_caffe_v1(source, model, where)
    if fmt == "caffe_v11":
        return res3d_from_caffe_v11(source, model, where)
    if fmt == "caffe2_pkl":
        return from_caffe2(source, model, where)
    raise ConversionError(f"{where}: no converter for format {fmt!r}")


def convert_path(path: os.PathLike, fmt: str, model: nn.Module) -> StateDict:
    """Convert a Caffe / Caffe2 file of format `fmt` to `model`'s state_dict."""
    return convert_source(read_source(path, fmt), fmt, model, str(path))
