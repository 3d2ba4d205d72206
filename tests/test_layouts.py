"""Our `state_dict()` layouts equal the published checkpoints' (tests/data/manifests/, built by
running each reference implementation; see its README in ../shared/reference/manifests/).

The manifest <-> checkpoint mapping comes from the data: a manifest lists the URLs of the files it
describes, and the registry's checkpoints list theirs. So a new checkpoint is covered as soon as it
is registered, and an uncovered one fails `test_every_checkpoint_has_a_layout`.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from c3dfeat.models import all_specs

MANIFESTS = Path(__file__).parent / "data" / "manifests"
# Checkpoints without a PyTorch reference implementation: checked against the documented facts.
NO_REFERENCE = {"res3d_18"}  # Caffe-only (models.md §2.1): see test_res3d_layout_matches_the_prototxt


def _load():
    return {p.stem: json.loads(p.read_text()) for p in sorted(MANIFESTS.glob("*.json"))}


MANIFEST = _load()


def _arch_of(stem: str, manifest: dict) -> str:
    """Registry architecture a manifest describes: by checkpoint URL, else by file name."""
    urls = set(manifest["checkpoint"]["files"])
    for spec in all_specs():
        if any(urls & set(c.urls) for c in spec.checkpoints):
            return spec.name
    # a layout with no PyTorch file (VMZ R(2+1)D-152 Sports-1M exists only as a Caffe2 pkl):
    # "<source>_<arch>_<classes>"
    return stem.split("_", 1)[1].rsplit("_", 1)[0]


LAYOUTS = {stem: (_arch_of(stem, m), m["classes"]) for stem, m in MANIFEST.items()}


def _covering_manifest(arch: str, classes: int):
    for stem, key in LAYOUTS.items():
        if key == (arch, classes):
            return stem
    return None


def _meta_model(arch: str, classes: int) -> nn.Module:
    spec = next(s for s in all_specs() if s.name == arch)
    with torch.device("meta"):
        return spec.builder(num_classes=classes)


def test_manifests_are_present():
    assert len(MANIFEST) >= 18


def test_every_checkpoint_has_a_layout():
    """Every weights checkpoint of every model (any format: converted ones load into the same
    module) is described by a manifest of its architecture and class count."""
    missing = [
        f"{spec.name}.{c.tag}"
        for spec in all_specs()
        if spec.name not in NO_REFERENCE
        for c in spec.weight_checkpoints
        if _covering_manifest(spec.name, c.num_classes) is None
    ]
    assert missing == []


def test_every_manifest_url_is_a_registered_checkpoint():
    registered = {u for spec in all_specs() for c in spec.checkpoints for u in c.urls}
    for stem, m in MANIFEST.items():
        assert set(m["checkpoint"]["files"]) <= registered, stem


@pytest.mark.parametrize("stem", sorted(MANIFEST))
def test_state_dict_layout_matches_manifest(stem):
    m = MANIFEST[stem]
    arch, classes = LAYOUTS[stem]
    model = _meta_model(arch, classes)
    sd = model.state_dict()
    want = [(k, list(s)) for k, s in m["keys"]]
    got = [(k, list(v.shape)) for k, v in sd.items()]
    assert [k for k, _ in got] == [k for k, _ in want], "same keys in the same order"
    assert got == want, "same shapes"
    assert len(sd) == m["num_keys"]
    assert sum(p.numel() for p in model.parameters()) == m["num_params"]
    for k, v in sd.items():
        want_dtype = torch.int64 if k.endswith("num_batches_tracked") else torch.float32
        assert v.dtype == want_dtype, k
    bns = [mod for mod in model.modules() if isinstance(mod, nn.BatchNorm3d)]
    assert len(bns) == sum(b["count"] for b in m["batchnorm"])
    for b in m["batchnorm"]:
        assert {(x.eps, x.momentum, x.affine, x.track_running_stats) for x in bns} == {
            (b["eps"], b["momentum"], b["affine"], b["track_running_stats"])
        }


@pytest.mark.parametrize("stem", sorted(MANIFEST))
def test_forward_check_shape(stem):
    """The manifest's recorded forward: input shape -> logits shape (meta device)."""
    m = MANIFEST[stem]
    arch, classes = LAYOUTS[stem]
    model = _meta_model(arch, classes).eval()
    x = torch.empty(m["forward_check"]["input_shape"], device="meta")
    assert list(model(x).shape) == m["forward_check"]["logits_shape"]


def test_res3d_layout_matches_the_prototxt():
    """Res3D has no PyTorch reference: check the facts of models.md §2.2 independently —
    torchvision r3d_18's layout plus a projection shortcut in layer1.0, fc 487, BN eps 1e-5,
    21 convs without bias + 21 BN (Caffe BatchNorm+Scale), 33,420,327 parameters."""
    model = _meta_model("res3d_18", 487)
    r3d = {k: s for k, s in MANIFEST["torchvision_r3d_18"]["keys"]}
    sd = {k: list(v.shape) for k, v in model.state_dict().items()}
    extra = {k: s for k, s in sd.items() if k not in r3d}
    assert set(extra) == {f"layer1.0.downsample.{i}" for i in ("0.weight",)} | {
        f"layer1.0.downsample.1.{n}" for n in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    }
    assert extra["layer1.0.downsample.0.weight"] == [64, 64, 1, 1, 1]
    assert sd["fc.weight"] == [487, 512] and sd["stem.0.weight"] == [64, 3, 3, 7, 7]
    assert {k: s for k, s in sd.items() if k in r3d and not k.startswith("fc.")} == {
        k: s for k, s in r3d.items() if not k.startswith("fc.")
    }
    convs = [m for m in model.modules() if isinstance(m, nn.Conv3d)]
    assert len(convs) == 21 and all(c.bias is None for c in convs)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm3d)]
    assert len(bns) == 21 and {b.eps for b in bns} == {1e-5}
    assert sum(p.numel() for p in model.parameters()) == 33_420_327
