"""The model registry: names -> ModelSpec, and the public builders on top of it."""
from __future__ import annotations

import dataclasses
import fnmatch
from typing import Dict, Iterable, List, Literal, Optional, Sequence, Union

import torch

from c3dfeat.errors import ConfigError, UnknownModelError
from c3dfeat.models._common import FeatureModel
from c3dfeat.models._meta import spec_layer_shapes
from c3dfeat.specs import ModelSpec

_REGISTRY: Dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    """Add `spec` to the registry (each family file calls this once per architecture)."""
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is registered twice")
    spec.layer(spec.default_layer)  # fail at import time on a typo
    _REGISTRY[spec.name] = spec
    return spec


def list_models(pattern: str = "*", with_tags: bool = False) -> List[str]:
    """Registered architecture names (or every `name.tag` with `with_tags`), sorted."""
    names: List[str] = []
    for name, spec in _REGISTRY.items():
        if with_tags:
            names.extend(f"{name}.{c.tag}" for c in spec.weight_checkpoints)
            if not spec.weight_checkpoints:
                names.append(name)
        else:
            names.append(name)
    return sorted(n for n in names if fnmatch.fnmatch(n, pattern))


def split_name(name: str) -> tuple:
    """"r2plus1d_34.ig65m_32f" -> ("r2plus1d_34", "ig65m_32f"); "c3d" -> ("c3d", None)."""
    arch, _, tag = name.partition(".")
    return arch, (tag or None)


def get_spec(name: str) -> ModelSpec:
    """The frozen spec of `name` ("arch" or "arch.tag"), resolved to its (default) checkpoint."""
    arch, tag = split_name(name)
    try:
        spec = _REGISTRY[arch]
    except KeyError:
        raise UnknownModelError(
            f"unknown model {arch!r}; available models: {', '.join(sorted(_REGISTRY))} "
            "(`c3dfeat models` lists them with their checkpoint tags)"
        ) from None
    resolved = spec.resolve(tag)
    if resolved.input_size != spec.input_size:
        # The checkpoint's own clip size moves the layer shapes: re-derive them from the
        # architecture (meta device, no compute).
        shapes = spec_layer_shapes(resolved, resolved.input_size)
        layers = tuple(dataclasses.replace(layer, shape=shapes[layer.name]) for layer in resolved.layers)
        resolved = dataclasses.replace(resolved, layers=layers)
    return resolved


def create_model(name: str, pretrained: Literal[False] = False, *, num_classes: Optional[int] = None) -> FeatureModel:
    """Build `name` with random weights, in eval mode; `model.spec` holds its resolved ModelSpec.

    This is the registry's builder; pretrained weights are loaded one layer up, by
    :func:`c3dfeat.create_model` (:mod:`c3dfeat.zoo`), which resolves and checks the checkpoint.

    Args:
        name: "arch" or "arch.tag" (the tag picks the checkpoint and so the class count).
        pretrained: only False here (kept so that old calls with ``pretrained=False`` work).
        num_classes: override the classifier size.
    """
    if pretrained is not False:
        raise ConfigError(
            f"c3dfeat.models.create_model builds random-init models; load pretrained weights with "
            f"c3dfeat.create_model({name!r}, pretrained=...)"
        )
    spec = get_spec(name)
    model: FeatureModel = spec.builder(num_classes=spec.num_classes if num_classes is None else num_classes)
    model.spec = spec
    model.weights_sha256 = None  # set by c3dfeat.zoo when weights are loaded; None means random init
    return model.eval()


def extract_layers(
    model: FeatureModel, clips: torch.Tensor, layers: Union[str, Sequence[str]]
) -> Dict[str, torch.Tensor]:
    """Features of several layers from ONE forward pass; layers past the deepest are skipped.

    Args:
        model: a model from :func:`c3dfeat.create_model`.
        clips: preprocessed clips, (N, C, T, H, W).
        layers: layer names (canonical or original aliases, e.g. "fc6-1").

    Returns:
        {requested name: tensor (N, ...)} — the layer's own shape per clip, not flattened.
    """
    if isinstance(layers, str):
        layers = [layers]
    spec: ModelSpec = model.spec
    canonical = {name: spec.layer(name).name for name in layers}
    with torch.inference_mode():
        out = model.forward_layers(clips, spec.canonical_layers(layers))
    return {name: out[canon] for name, canon in canonical.items()}


def all_specs() -> Iterable[ModelSpec]:
    return [_REGISTRY[n] for n in sorted(_REGISTRY)]
