"""Parity with the reference implementations (`make test-parity`: torch 2.14.1, torchvision 0.29.1,
pytorchvideo 0.1.5 in .venv-ref).

Each test builds the reference model with random weights (and randomised BatchNorm statistics, so
eps and running stats matter), loads its state_dict into ours with strict=True, feeds the same
clip and compares logits and the pooled feature within 1e-4. The ig65m-pytorch and VMZ builders
are thin wrappers around torchvision's VideoResNet; they are rebuilt here from torchvision parts as
models.md §4.2 / §5.2 and the manifests README describe (neither package is installable).

The preprocessing tests feed the same uint8 frames to each reference pipeline's own transform
(torchvision's VideoClassification preset, the pytorchvideo hub tutorial's transform) and to our
ClipTransform, and require equal tensors, bit for bit.

A missing reference FAILS these tests (it never skips them): a broken reference environment must
not look green.
"""
from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import List, Tuple

import numpy as np
import pytest
import torch
import torch.nn as nn

import c3dfeat
from c3dfeat import get_spec
from c3dfeat.models import set_inference_layout
from c3dfeat.transforms import ClipTransform

pytestmark = pytest.mark.parity

TOL = dict(rtol=1e-4, atol=1e-4)


def _reference(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        pytest.fail(f"reference implementation missing ({e}); `make test-parity` installs torchvision "
                    "and pytorchvideo into .venv-ref", pytrace=False)


@pytest.fixture(scope="module")
def tv():
    return _reference("torchvision.models.video.resnet")


@pytest.fixture(scope="module")
def ptv_hub():
    return _reference("pytorchvideo.models.hub")


def _randomise(model: nn.Module, seed: int) -> nn.Module:
    """Random BN statistics and affine parameters (a fresh reference has mean 0 / var 1 / gamma 1,
    which would hide eps or statistics mix-ups)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm3d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                m.bias.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
    return model.eval()


def _ours_from(ref: nn.Module, name: str, num_classes: int):
    ours = c3dfeat.create_model(name, num_classes=num_classes)
    ours.load_state_dict(ref.state_dict(), strict=True)
    # The references compute in the contiguous layout; the same layout here makes this a check of
    # the architecture and weights alone. Layouts change float rounding only (tests/test_runtime.py).
    return set_inference_layout(ours, "contiguous")


def _tv_pool5(ref, x):
    """torchvision VideoResNet's avgpool output (fc input), flattened."""
    feats = {}
    h = ref.avgpool.register_forward_hook(lambda m, i, o: feats.setdefault("pool5", o.flatten(1)))
    with torch.inference_mode():
        logits = ref(x)
    h.remove()
    return logits, feats["pool5"]


def _compare_videoresnet(ref, name, num_classes, x):
    _randomise(ref, 0)
    ours = _ours_from(ref, name, num_classes)
    ref_logits, ref_pool5 = _tv_pool5(ref, x)
    out = c3dfeat.extract_layers(ours, x, ["pool5", "logits"])
    torch.testing.assert_close(out["logits"], ref_logits, **TOL)
    torch.testing.assert_close(out["pool5"], ref_pool5, **TOL)
    with torch.inference_mode():
        torch.testing.assert_close(ours(x), ref_logits, **TOL)
    assert ref_logits.std() > 1e-3, "degenerate comparison"


# ------------------------------------------------------------------------------ torchvision


@pytest.mark.parametrize("name", ["r3d_18", "mc3_18", "r2plus1d_18"])
def test_torchvision(tv, name):
    torch.manual_seed(0)
    ref = getattr(tv, name)(weights=None, num_classes=400)
    _compare_videoresnet(ref, name, 400, torch.randn(2, 3, 16, 112, 112))


# ------------------------------------------------------------------ ig65m-pytorch R(2+1)D-34


def _ig65m_r2plus1d_34(tv, num_classes):
    """ig65m/models.py: torchvision R(2+1)D-34, block-0 conv2 of layers 2-4 swapped for Caffe2
    mid widths 288/576/1152, every BN eps 1e-3 / momentum 0.9."""
    model = tv.VideoResNet(
        block=tv.BasicBlock, conv_makers=[tv.Conv2Plus1D] * 4, layers=[3, 4, 6, 3], stem=tv.R2Plus1dStem
    )
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    model.layer2[0].conv2[0] = tv.Conv2Plus1D(128, 128, 288)
    model.layer3[0].conv2[0] = tv.Conv2Plus1D(256, 256, 576)
    model.layer4[0].conv2[0] = tv.Conv2Plus1D(512, 512, 1152)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm3d):
            m.eps, m.momentum = 1e-3, 0.9
    return model


@pytest.mark.parametrize("classes,frames", [(359, 32), (487, 8)])
def test_ig65m_r2plus1d_34(tv, classes, frames):
    torch.manual_seed(1)
    ref = _ig65m_r2plus1d_34(tv, classes)
    _compare_videoresnet(ref, "r2plus1d_34", classes, torch.randn(1, 3, frames, 112, 112))


# --------------------------------------------------------------------------- VMZ 152-layer nets


class _Depthwise(nn.Conv3d):
    """VMZ Conv3DDepthwise: 3x3x3, groups = channels."""

    def __init__(self, in_planes, out_planes, midplanes=None, stride=1, padding=1):
        super().__init__(in_planes, out_planes, 3, stride=stride, padding=padding, groups=in_planes, bias=False)

    @staticmethod
    def get_downsample_stride(stride):
        return (stride, stride, stride)


class _IPDepthwise(nn.Sequential):
    """VMZ IPConv3DDepthwise: 1x1x1 conv, BN, depthwise — the ReLU is commented out upstream."""

    def __init__(self, in_planes, out_planes, midplanes, stride=1, padding=1):
        super().__init__(
            nn.Conv3d(in_planes, out_planes, 1, bias=False), nn.BatchNorm3d(out_planes),
            _Depthwise(out_planes, out_planes, None, stride),
        )

    @staticmethod
    def get_downsample_stride(stride):
        return (stride, stride, stride)


class _VMZConv2Plus1D(nn.Sequential):
    """VMZ Conv2Plus1D: ignores `midplanes`, recomputes it from its own in/out."""

    def __init__(self, in_planes, out_planes, midplanes, stride=1, padding=1):
        mid = (in_planes * out_planes * 27) // (in_planes * 9 + 3 * out_planes)
        super().__init__(
            nn.Conv3d(in_planes, mid, (1, 3, 3), stride=(1, stride, stride), padding=(0, padding, padding), bias=False),
            nn.BatchNorm3d(mid), nn.ReLU(inplace=True),
            nn.Conv3d(mid, out_planes, (3, 1, 1), stride=(stride, 1, 1), padding=(padding, 0, 0), bias=False),
        )

    @staticmethod
    def get_downsample_stride(stride):
        return (stride, stride, stride)


def _pool():
    return nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))


def _vmz(tv, name, num_classes):
    if name == "r2plus1d_152":
        stem = lambda: nn.Sequential(*list(tv.R2Plus1dStem().children()), _pool())  # noqa: E731
        makers = [_VMZConv2Plus1D] * 4
    else:
        stem = lambda: nn.Sequential(*list(tv.BasicStem().children()), _pool())  # noqa: E731
        makers = [_Depthwise if name == "ir_csn_152" else _IPDepthwise] * 4
    model = tv.VideoResNet(block=tv.Bottleneck, conv_makers=makers, layers=[3, 8, 36, 3], stem=stem,
                           num_classes=num_classes)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm3d):
            m.eps, m.momentum = 1e-3, 0.9
    return model


@pytest.mark.parametrize("name,classes", [("ir_csn_152", 359), ("ip_csn_152", 487), ("r2plus1d_152", 400)])
def test_vmz_152(tv, name, classes):
    torch.manual_seed(2)
    ref = _vmz(tv, name, classes)
    # a reduced clip keeps this fast; the trunk is fully convolutional up to the global average
    _compare_videoresnet(ref, name, classes, torch.randn(1, 3, 8, 112, 112))


# ------------------------------------------------------------------------------- pytorchvideo


@pytest.mark.parametrize("name,frames", [("r2plus1d_r50", 16), ("csn_r101", 32)])
@pytest.mark.parametrize("crop", [224, 256])
def test_pytorchvideo(ptv_hub, name, frames, crop):
    """224: the head pool covers res5 exactly; 256 (the test crop): the AvgPool3d(4,7,7) leaves
    1x2x2 windows, so pool5 is their average and logits average proj over them."""
    torch.manual_seed(3)
    ref = _randomise(getattr(ptv_hub, name)(pretrained=False), 3)
    ours = _ours_from(ref, name, 400)
    x = torch.randn(1, 3, frames, crop, crop)
    head = ref.blocks[5]
    feats = {}
    h = head.pool.register_forward_hook(lambda m, i, o: feats.setdefault("pool", o))
    with torch.inference_mode():
        ref_out = ref(x)  # r2plus1d_r50's hub head ends in Softmax (also in eval)
    h.remove()
    if head.activation is not None:
        head.activation = None
        with torch.inference_mode():
            ref_logits = ref(x)
    else:
        ref_logits = ref_out
    out = c3dfeat.extract_layers(ours, x, ["pool5", "logits"])
    torch.testing.assert_close(out["logits"], ref_logits, **TOL)
    if name == "r2plus1d_r50" and crop == 224:  # one window: the hub's output is softmax(logits)
        torch.testing.assert_close(out["logits"].softmax(-1), ref_out, **TOL)
    # (at 256 the hub averages per-window softmaxes, which is not softmax(logits): we return logits)
    ref_pool5 = feats["pool"].mean((2, 3, 4))  # head pool output, averaged over its positions
    assert feats["pool"].shape[2:] == ((1, 1, 1) if crop == 224 else (1, 2, 2))
    torch.testing.assert_close(out["pool5"], ref_pool5, **TOL)
    # and the head's own linear map of it is the logits (proj is linear, averaging commutes)
    torch.testing.assert_close(head.proj(ref_pool5), ref_logits, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------- preprocessing, bit for bit

# landscape, portrait, HD (our uint8-gather resize path), upscaled, no resize at all
FRAME_SIZES: List[Tuple[int, int]] = [(240, 320), (360, 480), (720, 1280), (480, 360), (101, 77), (128, 171)]


def _frames(hw: Tuple[int, int], n: int = 6) -> np.ndarray:
    return np.random.default_rng(hw[0] * 7 + hw[1]).integers(0, 256, (n, *hw, 3), dtype=np.uint8)


@pytest.mark.parametrize("hw", FRAME_SIZES)
@pytest.mark.parametrize("name", ["r3d_18", "mc3_18", "r2plus1d_18"])
def test_torchvision_preset_bit_for_bit(name, hw):
    """weights.transforms() (VideoClassification: F.resize of the uint8 video, center_crop,
    convert_image_dtype = x / 255, normalize) on a uint8 (T, C, H, W) video == ClipTransform."""
    video = _reference("torchvision.models.video")
    weights = {"r3d_18": video.R3D_18_Weights, "mc3_18": video.MC3_18_Weights,
               "r2plus1d_18": video.R2Plus1D_18_Weights}[name].KINETICS400_V1
    preset = weights.transforms()
    pre = get_spec(name).preprocessing
    assert (preset.resize_size, preset.crop_size) == (list(pre.resize), [pre.crop_size, pre.crop_size])
    assert (tuple(preset.mean), tuple(preset.std)) == (pre.mean, pre.std)
    frames = _frames(hw)
    ref = preset(torch.from_numpy(frames).permute(0, 3, 1, 2))  # (C, T, H, W)
    ours = ClipTransform(pre)(frames)[0]
    assert torch.equal(ours, ref), f"max diff {(ours - ref).abs().max().item()}"


@pytest.mark.parametrize("hw", FRAME_SIZES)
@pytest.mark.parametrize("name", ["csn_r101", "r2plus1d_r50"])
def test_pytorchvideo_transform_bit_for_bit(name, hw):
    """The hub tutorial's transform (tutorials/torchhub_inference_tutorial.ipynb): x / 255.0,
    NormalizeVideo, ShortSideScale(256) (float, no rounding), CenterCropVideo(256), on the
    float32 (C, T, H, W) video EncodedVideo returns == ClipTransform."""
    from torchvision.transforms import Compose, Lambda

    tv_video = _reference("torchvision.transforms._transforms_video")
    # pytorchvideo 0.1.5's augmentations module imports torchvision.transforms.functional_tensor,
    # which torchvision renamed _functional_tensor (0.17); alias it (the usual fix) to import it
    sys.modules.setdefault("torchvision.transforms.functional_tensor",
                           _reference("torchvision.transforms._functional_tensor"))
    ptv = _reference("pytorchvideo.transforms")
    pre = get_spec(name).preprocessing
    transform = Compose([
        Lambda(lambda x: x / 255.0),
        tv_video.NormalizeVideo(pre.mean, pre.std),
        ptv.ShortSideScale(size=pre.resize),
        tv_video.CenterCropVideo(pre.crop_size),
    ])
    frames = _frames(hw)
    ref = transform(torch.from_numpy(frames).permute(3, 0, 1, 2).to(torch.float32))
    ours = ClipTransform(pre)(frames)[0]
    assert ours.shape == ref.shape
    assert torch.equal(ours, ref), f"max diff {(ours - ref).abs().max().item()}"
