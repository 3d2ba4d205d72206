"""What to run: model requests → prepared models (network, transform, sampling, file records).

`prepare_models` is the one place a network is built for extraction; both engines (the
in-process scheduler and Ray) call it, so every engine runs the same network with the same
transform, sampling and provenance.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from c3dfeat import runtime, zoo
from c3dfeat.errors import ConfigError
from c3dfeat.models import create_model, get_spec
from c3dfeat.models._common import FeatureModel
from c3dfeat.sampling import SamplingConfig
from c3dfeat.store import LayerInfo, ModelInfo
from c3dfeat.transforms import ClipTransform, Crops

__all__ = [
    "RANDOM_INIT_SEED",
    "COMPUTE_DTYPES",
    "ModelRequest",
    "PreparedModel",
    "default_batch_size",
    "prepare_model",
    "prepare_models",
]

PathLike = Union[str, "os.PathLike[str]"]

# Random-init weights are seeded so that a resumed run, every shard and a rerun compute the
# same (meaningless) features; recorded in the provenance.
RANDOM_INIT_SEED = 0
COMPUTE_DTYPES: Dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class ModelRequest:
    """A model to run: registry name ("arch" or "arch.tag") and its layers (None: the default)."""

    name: str
    layers: Optional[Tuple[str, ...]] = None
    weights: Optional[str] = None  # local checkpoint file (None: the default checkpoint)

    @classmethod
    def of(cls, x: Any) -> "ModelRequest":
        """A request from a name, a ``(name, layers)`` pair or a request."""
        if isinstance(x, ModelRequest):
            return x
        if isinstance(x, str):
            return cls(x)
        name, layers = x
        if isinstance(layers, str):
            layers = tuple(s for s in layers.split(",") if s)
        return cls(name, tuple(layers) if layers else None)


@dataclass
class PreparedModel:
    """A model ready to run: network on its device, transform, sampling and file records."""

    key: str  # the name the user gave: group name in the file
    spec: Any  # the resolved ModelSpec
    net: FeatureModel
    layers: Tuple[str, ...]  # canonical names, in the user's order
    transform: ClipTransform
    sampling: SamplingConfig
    info: ModelInfo  # what the file stores (layers, dims, provenance attrs)
    keep_crops: bool  # crop_reduce "none" with several crops: features are (clips, crops, D)
    num_crops: int
    random_init: bool

    @property
    def clip_shape(self) -> Tuple[int, int, int, int, int]:
        """Shape of one transformed clip: (num_crops, 3, T, crop_size, crop_size)."""
        c = self.transform.crop_size
        return (self.num_crops, 3, self.sampling.clip_len, c, c)

    def feature_shape(self, layer: str) -> Tuple[int, ...]:
        """Stored shape of one clip's features for `layer`: (D,) or (num_crops, D)."""
        li = next(x for x in self.info.layers if x.name == layer)
        return (self.num_crops, li.dim) if self.keep_crops else (li.dim,)


def default_batch_size(device: torch.device, model_names: Sequence[str]) -> int:
    """The batch size when none is given: the smallest per-model default on this device
    (c3dfeat.runtime's measured table)."""
    return min(runtime.default_batch_size(device, name) for name in model_names)


def _sha256_array(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a, dtype=np.float32).tobytes()).hexdigest()


def _path(p: Optional[PathLike]) -> Optional[Path]:
    return None if p is None else Path(p)


def prepare_model(
    req: ModelRequest,
    *,
    device: torch.device,
    random_init: bool = False,
    weights_dir: Optional[PathLike] = None,
    require_hashes: Optional[bool] = None,
    weights_mirror: Optional[str] = None,
    sampling_overrides: Optional[Mapping[str, Any]] = None,
    crops: Crops = "center",
    crop_reduce: str = "mean",
) -> PreparedModel:
    """Build `req`'s network (weights verified, or seeded random init) with its transform,
    sampling and file records. The network stays float32: reduced precision is autocast at
    run time (batching.BatchRunner), so the weights are never rounded."""
    get_spec(req.name)  # unknown names fail before any download
    if random_init:
        if req.weights:
            raise ConfigError(f"{req.name}: --weights and --random-init exclude each other; pick one")
        # Seeded: every shard / resume builds the same random network.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            net = create_model(req.name, pretrained=False)
    else:
        net = zoo.create_model(req.name, pretrained=req.weights or True, weights_dir=_path(weights_dir),
                               require_hashes=require_hashes, weights_mirror=weights_mirror)
    spec = net.spec
    requested_order = [spec.layer(n).name for n in (req.layers or (spec.default_layer,))]
    layers = tuple(dict.fromkeys(requested_order))  # user's order, no duplicates
    mean_cube = None
    if spec.preprocessing.mean_cube:
        # The mean file comes with the weights (downloaded if needed); a random-init run only
        # uses one already present.
        mean_cube = zoo.load_mean_cube(spec, _path(weights_dir), require_hashes, weights_mirror,
                                       download=not random_init)
    transform = ClipTransform(spec.preprocessing, mean_cube=mean_cube, crops=crops)  # checks the value
    sampling = SamplingConfig.from_preprocessing(spec.preprocessing, **dict(sampling_overrides or {}))
    if mean_cube is not None and sampling.clip_len != spec.preprocessing.clip_len:
        raise ConfigError(
            f"{req.name}: the mean cube has {spec.preprocessing.clip_len} frames; --clip-len "
            f"{sampling.clip_len} does not fit it (remove the mean file to use the per-channel mean)"
        )
    from c3dfeat.models._info import layer_shapes

    size = (sampling.clip_len, transform.crop_size, transform.crop_size)
    shapes = layer_shapes(spec, size)
    num_crops = transform.num_crops
    keep = crop_reduce == "none" and num_crops > 1
    infos = []
    for name in layers:
        shape = tuple(int(s) for s in shapes[name])
        infos.append(LayerInfo(name, int(np.prod(shape)), shape, num_crops if keep else 0, spec.layer(name).aliases))
    attrs = {
        "arch": spec.name,
        "checkpoint": None if random_init or spec.checkpoint is None else spec.checkpoint.tag,
        "weights_sha256": None if random_init else getattr(net, "weights_sha256", None),
        "random_init": bool(random_init),
        "random_init_seed": RANDOM_INIT_SEED if random_init else None,
        "layers": list(layers),
        "sampling": sampling.to_dict(),
        "preprocessing": transform.describe(),
        "mean_cube_sha256": None if mean_cube is None else _sha256_array(mean_cube),
        "crops": transform.crops,
        "crop_reduce": crop_reduce if num_crops > 1 else "none",
        "input_size": list(size),
    }
    net = net.to(device=device)
    # THROUGHPUT: the inference memory layout (c3dfeat.models.set_inference_layout) is applied here.
    return PreparedModel(
        key=req.name,
        spec=spec,
        net=net,
        layers=layers,
        transform=transform,
        sampling=sampling,
        info=ModelInfo(req.name, tuple(infos), sampling.clip_len, attrs),
        keep_crops=keep,
        num_crops=num_crops,
        random_init=bool(random_init),
    )


def prepare_models(
    requests: Sequence[ModelRequest],
    *,
    device: torch.device,
    random_init: bool = False,
    weights_dir: Optional[PathLike] = None,
    require_hashes: Optional[bool] = None,
    weights_mirror: Optional[str] = None,
    sampling_overrides: Optional[Mapping[str, Any]] = None,
    crops: Crops = "center",
    crop_reduce: str = "mean",
) -> List[PreparedModel]:
    """:func:`prepare_model` for each request, in order (each model once)."""
    keys = [r.name for r in requests]
    if not keys:
        raise ConfigError("no model given; pass at least one, e.g. models=['c3d']")
    if len(set(keys)) != len(keys):
        raise ConfigError(f"a model is listed twice: {keys}; give each model once with all its layers")
    if crop_reduce not in ("mean", "none"):
        raise ConfigError(f"crop_reduce must be 'mean' or 'none', got {crop_reduce!r}")
    return [
        prepare_model(r, device=device, random_init=random_init, weights_dir=weights_dir,
                      require_hashes=require_hashes, weights_mirror=weights_mirror,
                      sampling_overrides=sampling_overrides, crops=crops, crop_reduce=crop_reduce)
        for r in requests
    ]
