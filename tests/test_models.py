"""Registry-wide model tests: every registered model (and checkpoint) is covered automatically.

Real arithmetic runs on small clips; shapes at the (large) canonical inputs are checked on the meta
device, which needs no memory or compute, so the 152-layer networks stay fast.
"""
from __future__ import annotations

import dataclasses
from collections import Counter

import pytest
import torch
import torch.nn as nn

import c3dfeat
from c3dfeat.errors import UnknownLayerError, UnknownModelError
from c3dfeat.models import ClipSizeError, get_spec, layer_shapes, list_models, set_inference_layout

ARCHS = list_models()
TAGGED = list_models(with_tags=True)
# Small clip for real (not meta) forward passes: T, H, W.
SMALL = (4, 16, 16)


def _meta_model(spec):
    with torch.device("meta"):
        return spec.builder(num_classes=spec.num_classes).eval()


def _meta_layers(spec, size):
    """{layer: shape, or None when the layer does not fit this clip size}: one meta-device pass
    walking the model's steps (no memory, no arithmetic)."""
    model = _meta_model(spec)
    x = torch.empty((1, 3) + tuple(size), device="meta")
    out = {name: None for name in model.layer_names}
    for step in model._steps():
        try:
            x = step[1](x)
        except ClipSizeError:
            break
        if step[0] is not None:
            out[step[0]] = tuple((step[2](x) if len(step) > 2 else x).shape[1:])
    return out


def _shape_cases():
    """One case per distinct (arch, classes, input size): tags that share all three share shapes."""
    seen = {}
    for name in TAGGED:
        spec = get_spec(name)
        seen.setdefault((spec.name, spec.num_classes, spec.input_size), name)
    return sorted(seen.values())


# ---------------------------------------------------------------- registry / spec metadata


def test_registry_has_every_network_of_the_issue():
    expected = {
        "c3d", "res3d_18", "r3d_18", "mc3_18", "r2plus1d_18", "r2plus1d_34", "ir_csn_152", "ip_csn_152",
        "csn_r101", "r2plus1d_r50", "r2plus1d_152",
    }
    assert expected <= set(ARCHS)


@pytest.mark.parametrize("arch", ARCHS)
def test_spec_is_consistent(arch):
    spec = get_spec(arch)
    tags = [c.tag for c in spec.checkpoints]
    assert len(tags) == len(set(tags)), "checkpoint tags must be unique"
    assert spec.weight_checkpoints, "every model declares at least one weights checkpoint"
    assert spec.checkpoint is spec.weight_checkpoints[0], "first weights checkpoint is the default"
    names = [layer.name for layer in spec.layers]
    assert names[-1] == "logits" and "prob" not in names
    # canonical names and aliases never collide across layers
    keys = Counter(k.lower() for layer in spec.layers for k in (layer.name,) + layer.aliases)
    assert max(keys.values()) == 1, keys
    assert spec.layer(spec.default_layer).name == spec.default_layer
    for c in spec.weight_checkpoints:
        assert c.urls and all(u.startswith(("http://", "https://")) for u in c.urls)
        assert c.num_classes > 0 and c.file_name and "/" not in c.file_name
        if c.sha256_prefix:
            assert c.sha256_prefix in c.file_name  # torch.hub convention: name-<prefix>.ext
        pre = dataclasses.replace(spec.preprocessing, **dict(c.preprocessing))
        assert pre.clip_len > 0 and pre.frame_step > 0 and pre.stride > 0


@pytest.mark.parametrize("name", TAGGED)
def test_every_tag_resolves(name):
    spec = get_spec(name)
    arch, tag = name.split(".")
    assert spec.checkpoint.tag == tag and spec.full_name == name
    assert spec.layer_shape("logits") == (spec.checkpoint.num_classes,)
    assert spec.input_size == (spec.preprocessing.clip_len, spec.preprocessing.crop_size, spec.preprocessing.crop_size)


def test_unknown_names_raise_typed_errors():
    with pytest.raises(UnknownModelError, match="available models"):
        get_spec("c3dd")
    with pytest.raises(UnknownModelError, match="known tags"):
        get_spec("r2plus1d_34.nope")
    with pytest.raises(UnknownLayerError, match="valid layers"):
        get_spec("r3d_18").layer("prob")


# ------------------------------------------------------------------ preprocessing facts (models.md)


def test_preprocessing_facts_per_source():
    """The per-source rules users get wrong (models.md §8), as declared in the specs."""
    c3d, res3d, tv = get_spec("c3d").preprocessing, get_spec("res3d_18").preprocessing, get_spec("r3d_18").preprocessing
    assert (c3d.channel_order, c3d.divide_by, c3d.crop_rounding, c3d.resize, c3d.mean_cube) == (
        "BGR", 1.0, "floor", (128, 171), "sports1m_mean")
    assert (res3d.channel_order, res3d.mean, res3d.std, res3d.clip_len, res3d.frame_step) == (
        "BGR", (128.0,) * 3, (1.0,) * 3, 8, 2)
    assert (tv.channel_order, tv.crop_rounding, tv.fps, tv.clip_len) == ("RGB", "round", 15.0, 16)
    assert tv.mean == (0.43216, 0.394666, 0.37645) and tv.std == (0.22803, 0.22145, 0.216989)
    assert get_spec("r2plus1d_34.ig65m_8f").preprocessing.clip_len == 8
    assert get_spec("r2plus1d_34.ig65m_32f").preprocessing.clip_len == 32
    csn = get_spec("ir_csn_152").preprocessing
    assert (csn.clip_len, csn.frame_step, csn.resize, csn.crop_size) == (32, 2, 256, 224)
    ptv = get_spec("r2plus1d_r50").preprocessing
    assert (ptv.clip_len, ptv.frame_step, ptv.fps, ptv.mean, ptv.std) == (16, 4, 30.0, (0.45,) * 3, (0.225,) * 3)


def test_class_counts_per_checkpoint():
    # models.md §8.7: IG-65M 359 (32f) / 487 (8f); CSN pretrains 359 / 487; fine-tuned 400.
    want = {
        "r2plus1d_34.ig65m_32f": 359, "r2plus1d_34.ig65m_8f": 487, "r2plus1d_34.kinetics_8f": 400,
        "ir_csn_152.ig65m": 359, "ir_csn_152.sports1m": 487, "ip_csn_152.sports1m_kinetics": 400,
        "r2plus1d_152.sports1m_caffe2": 487, "c3d.sports1m": 487, "res3d_18.sports1m": 487,
        "csn_r101.kinetics400": 400,
    }
    assert {n: get_spec(n).num_classes for n in want} == want


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("name", _shape_cases())
def test_declared_layer_shapes_match_architecture(name):
    """Every declared layer's shape is what the network produces at its canonical input."""
    spec = get_spec(name)
    got = _meta_layers(spec, spec.input_size)
    assert got == {layer.name: spec.layer_shape(layer.name) for layer in spec.layers}


def test_canonical_shapes_from_the_references():
    """Golden shapes quoted from models.md (V-run on the reference code), not from our code."""
    assert get_spec("c3d").layer_shape("pool5") == (512, 1, 4, 4)  # ceil mode: 7 -> 4
    assert get_spec("res3d_18").layer_shape("res5") == (512, 1, 7, 7)
    assert get_spec("mc3_18").layer_shape("res5") == (512, 16, 7, 7)  # no temporal downsampling
    assert get_spec("r2plus1d_18").layer_shape("res5") == (512, 2, 7, 7)
    assert get_spec("r2plus1d_34.ig65m_8f").layer_shape("res5") == (512, 1, 7, 7)
    assert get_spec("r2plus1d_34.ig65m_32f").layer_shape("res5") == (512, 4, 7, 7)
    assert get_spec("ir_csn_152").layer_shape("res5") == (2048, 4, 7, 7)
    assert get_spec("csn_r101").layer_shape("res5") == (2048, 4, 8, 8)
    assert layer_shapes("csn_r101", (32, 224, 224))["res5"] == (2048, 4, 7, 7)
    assert layer_shapes("r2plus1d_r50", (16, 224, 224))["res5"] == (2048, 4, 7, 7)
    assert get_spec("r2plus1d_152").layer_shape("pool5") == (2048,)


def test_r2plus1d_34_real_forward_at_8_frames():
    """The 8-frame checkpoint's shapes, from a real forward (not the meta path resolve() uses)."""
    spec = get_spec("r2plus1d_34.ig65m_8f")
    model = c3dfeat.create_model("r2plus1d_34.ig65m_8f")
    assert model.fc.out_features == 487
    out = c3dfeat.extract_layers(model, torch.randn(1, 3, 8, 112, 112), ["res5", "logits"])
    assert tuple(out["res5"].shape[1:]) == spec.layer_shape("res5") == (512, 1, 7, 7)
    assert tuple(out["logits"].shape) == (1, 487)


# ---------------------------------------------------------------- real forward, small clips


@pytest.fixture(scope="module")
def small_runs():
    """One random-init model per arch and its layers on a small clip (computed once)."""
    cache = {}

    def get(arch):
        if arch not in cache:
            torch.manual_seed(0)
            spec = get_spec(arch)
            # Layers that need a bigger clip (C3D's fc6, pytorchvideo's fixed head pool) are
            # covered on the meta device here and by test_models_c3d.py / the parity tests.
            fits = _meta_layers(spec, SMALL)
            model = c3dfeat.create_model(arch)
            x = torch.randn((1, 3) + SMALL)
            names = [n for n, s in fits.items() if s is not None]
            cache[arch] = (model, x, names, fits, c3dfeat.extract_layers(model, x, names))
        return cache[arch]

    return get


@pytest.mark.parametrize("arch", ARCHS)
def test_random_init_forward_small_clip(arch, small_runs):
    model, x, names, fits, out = small_runs(arch)
    assert model.training is False and model.weights_sha256 is None
    assert names and names[0] != "logits"
    for n in names:
        assert tuple(out[n].shape) == (x.shape[0],) + fits[n]
        assert torch.isfinite(out[n]).all()
    # layers that need a bigger clip say so with a typed error, not a shape crash
    for n, s in fits.items():
        if s is None:
            with pytest.raises(ClipSizeError):
                model.forward_layers(x, [n])
    if "logits" in names:
        with torch.inference_mode():
            torch.testing.assert_close(model(x), out["logits"], rtol=0, atol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_multi_layer_equals_single_layer(arch, small_runs):
    model, x, names, _, together = small_runs(arch)
    for n in names:
        alone = c3dfeat.extract_layers(model, x, [n])[n]
        torch.testing.assert_close(alone, together[n], rtol=0, atol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_aliases_give_the_same_tensor(arch, small_runs):
    model, x, names, _, together = small_runs(arch)
    spec = model.spec
    for layer in spec.layers:
        if layer.name in names:
            for alias in layer.aliases:
                got = c3dfeat.extract_layers(model, x, [alias.upper()])
                assert list(got) == [alias.upper()]
                torch.testing.assert_close(got[alias.upper()], together[layer.name], rtol=0, atol=0)


def _calls(model: nn.Module):
    """Count forward calls per leaf module (hooks), to prove what ran."""
    counts: Counter = Counter()
    handles = [
        m.register_forward_hook(lambda mod, i, o, name=name: counts.update([name]))
        for name, m in model.named_modules()
        if not list(m.children())
    ]
    return counts, handles


@pytest.mark.parametrize("arch", ARCHS)
def test_layers_past_the_deepest_are_not_computed(arch):
    """Asking for the shallowest layer runs no classifier; asking for all runs more modules.
    On the meta device at the canonical input, so every layer fits and nothing is computed."""
    spec = get_spec(arch)
    model = _meta_model(spec)
    model.spec = spec
    x = torch.empty((1, 3) + spec.input_size, device="meta")
    names = [layer.name for layer in spec.layers]
    counts, handles = _calls(model)
    try:
        model.forward_layers(x, [names[0]])
        shallow = Counter(counts)
        counts.clear()
        model.forward_layers(x, names)
        deep = Counter(counts)
    finally:
        for h in handles:
            h.remove()
    head = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert head and not (set(shallow) & head), f"{arch}: {names[0]} ran the classifier"
    assert set(deep) >= head and sum(deep.values()) > sum(shallow.values())
    weighted = {n for n, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))}
    assert {n: c for n, c in deep.items() if n in weighted and c != 1} == {}, "one pass: nothing runs twice"


def test_one_pass_for_several_layers():
    model = c3dfeat.create_model("r3d_18")
    counts, handles = _calls(model)
    c3dfeat.extract_layers(model, torch.randn(1, 3, 4, 32, 32), ["res5", "pool5", "logits"])
    for h in handles:
        h.remove()
    assert set(counts.values()) == {1}, "every module runs exactly once"


def test_forward_layers_rejects_unknown_canonical_name():
    model = c3dfeat.create_model("r3d_18")
    with pytest.raises(UnknownLayerError):
        model.forward_layers(torch.randn(1, 3, 4, 32, 32), ["final_avg"])  # aliases are resolved upstream


def test_create_model_num_classes_override_and_conflict():
    assert c3dfeat.create_model("r3d_18", num_classes=7).fc.out_features == 7
    with pytest.raises(ValueError):
        c3dfeat.create_model("r3d_18", pretrained=True, num_classes=7)


# ---------------------------------------------------------------- model info (c3dfeat models)


def test_model_info_counts():
    from c3dfeat.models import gflops_per_clip, model_info, num_params

    # published parameter counts (models.md §2.2, §3.1, §6.1)
    assert num_params("res3d_18") == 33_420_327
    assert num_params("r3d_18") == 33_371_472
    assert num_params("csn_r101") == 22_213_776
    # FlopCounterMode counts 2 per multiply-add; torchvision's documented r3d_18 cost is 40.697
    # G multiply-adds at 16x112x112 (models.md §3.1), C3D's 38.5 (VMZ model zoo).
    assert gflops_per_clip("r3d_18") / 2 == pytest.approx(40.697, rel=2e-3)
    assert gflops_per_clip("c3d") / 2 == pytest.approx(38.5, rel=5e-3)
    info = model_info("r2plus1d_34")
    assert info["checkpoints"][0]["default"] and info["checkpoints"][0]["tag"] == "ig65m_32f"
    assert {c["tag"]: c["clip_len"] for c in info["checkpoints"]}["ig65m_8f"] == 8
    assert [layer["dim"] for layer in info["layers"]] == [512 * 4 * 7 * 7, 512, 359]
    # the registry knows nothing of weights files; the zoo adds whether each one is present
    from c3dfeat.zoo import model_info as zoo_model_info

    assert all("present" not in c for c in info["checkpoints"])
    assert all(c["present"] in (True, False) for c in zoo_model_info("r2plus1d_34")["checkpoints"])


def test_pytorchvideo_head_pool5_is_the_averaged_head_pool_not_the_global_mean():
    """At a 256 crop the head's AvgPool3d(4,7,7)/stride 1 leaves 1x2x2 windows; pool5 averages those
    windows (models.md §6.4), and logits apply proj per window before averaging."""
    torch.manual_seed(0)
    model = c3dfeat.create_model("csn_r101")
    head = model.blocks[5]
    res5 = torch.rand(2, 2048, 4, 8, 8)
    steps = {s[0]: s for s in model._steps()}
    name, pool_fn, tap = steps["pool5"]
    pooled = pool_fn(res5)
    # by hand: the mean of the four 4x7x7 windows at offsets (0,0), (0,1), (1,0), (1,1)
    windows = [res5[:, :, :, i:i + 7, j:j + 7].mean((2, 3, 4)) for i in (0, 1) for j in (0, 1)]
    want_pool5 = torch.stack(windows).mean(0)
    torch.testing.assert_close(tap(pooled), want_pool5, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(want_pool5, res5.mean((2, 3, 4)), atol=1e-4)  # the pitfall
    want_logits = torch.stack([head.proj(w) for w in windows]).mean(0)
    torch.testing.assert_close(steps["logits"][1](pooled), want_logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["r2plus1d_18", "ip_csn_152", "r2plus1d_r50", "csn_r101", "ir_csn_152"])
def test_channels_last_3d_gives_the_same_features(arch, small_runs):
    # Both layouts set explicitly: these architectures default to channels_last_3d on the CPU, so
    # small_runs' features (default layout) would compare channels_last_3d with itself.
    model, x, names, _, _ = small_runs(arch)
    ref = c3dfeat.create_model(arch)
    ref.load_state_dict(model.state_dict())
    set_inference_layout(ref, "contiguous")
    want = c3dfeat.extract_layers(ref, x, names)
    fast = c3dfeat.create_model(arch)
    fast.load_state_dict(model.state_dict())
    set_inference_layout(fast, "channels_last_3d")
    got = c3dfeat.extract_layers(fast, x, names)
    w_ref, w_fast = (next(p for p in m.parameters() if p.dim() == 5) for m in (ref, fast))
    assert w_ref.is_contiguous() and not w_fast.is_contiguous()  # the two runs really differ
    for n in names:
        torch.testing.assert_close(got[n], want[n], rtol=1e-4, atol=1e-4)
