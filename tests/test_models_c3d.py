"""C3D and Res3D have no installable reference implementation (Caffe C3D-v1.0 / v1.1), so these
tests compute Caffe's semantics independently, by hand, and compare (models.md §0.4, §1, §2)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import c3dfeat
from c3dfeat.models import ClipSizeError, set_inference_layout

# --------------------------------------------------------------------------- Caffe Pooling3D


def caffe_maxpool3d(x: np.ndarray, k, s) -> np.ndarray:
    """Caffe Pooling3D MAX, literally: out = ceil((in - k) / s) + 1, windows start at 0 and are
    clipped at the far edge (C3D-v1.0 pool3d_layer.cpp)."""
    n, c, t, h, w = x.shape
    ot, oh, ow = (int(math.ceil((d - kk) / ss)) + 1 for d, kk, ss in zip((t, h, w), k, s))
    out = np.empty((n, c, ot, oh, ow), x.dtype)
    for a in range(ot):
        for b in range(oh):
            for d in range(ow):
                win = x[:, :, a * s[0]:min(a * s[0] + k[0], t), b * s[1]:min(b * s[1] + k[1], h),
                        d * s[2]:min(d * s[2] + k[2], w)]
                out[:, :, a, b, d] = win.max(axis=(2, 3, 4))
    return out


@pytest.fixture(scope="module")
def c3d():
    torch.manual_seed(0)
    return c3dfeat.create_model("c3d")


def test_pool5_windows_are_caffe_ceil_mode(c3d):
    x = torch.rand(2, 3, 2, 7, 7)  # post-ReLU values are non-negative
    got = c3d.pool5(x)
    assert got.shape == (2, 3, 1, 4, 4)
    np.testing.assert_array_equal(got.numpy(), caffe_maxpool3d(x.numpy(), (2, 2, 2), (2, 2, 2)))
    # the windows, spelled out: rows/cols {0,1}, {2,3}, {4,5}, {6}
    xn = x.numpy()
    for i, rows in enumerate([(0, 2), (2, 4), (4, 6), (6, 7)]):
        for j, cols in enumerate([(0, 2), (2, 4), (4, 6), (6, 7)]):
            want = xn[:, :, 0:2, rows[0]:rows[1], cols[0]:cols[1]].max(axis=(2, 3, 4))
            np.testing.assert_array_equal(got[:, :, 0, i, j].numpy(), want)


def test_pool5_differs_from_the_popular_symmetric_padding(c3d):
    """DavideA / mmaction2 use MaxPool3d(2, 2, padding=(0,1,1)): windows {-1,0},{1,2},{3,4},{5,6} —
    same 4x4 shape, different numbers (models.md §1.2)."""
    torch.manual_seed(1)
    x = torch.rand(1, 8, 2, 7, 7)
    ports = nn.MaxPool3d(2, 2, padding=(0, 1, 1))(x)
    assert ports.shape == c3d.pool5(x).shape
    assert not torch.equal(ports, c3d.pool5(x))


@pytest.mark.parametrize("size", range(2, 12))
def test_every_c3d_pool_rounds_up_like_caffe(c3d, size):
    x = torch.rand(1, 2, size, size, size)
    for name, k in [("pool1", (1, 2, 2)), ("pool2", (2, 2, 2)), ("pool3", (2, 2, 2))]:
        got = getattr(c3d, name)(x).numpy()
        np.testing.assert_array_equal(got, caffe_maxpool3d(x.numpy(), k, k))


# --------------------------------------------------------------------------- whole C3D network


def caffe_c3d_forward(sd: dict, x: torch.Tensor) -> dict:
    """C3D from the prototxt table (models.md §1.2), with only functional ops. Pools use the
    *other* exact form (zero-pad one cell at the far end, then floor pooling; valid because the
    input is post-ReLU), so ceil_mode is not tested against itself."""
    def conv(name, x):
        return F.relu(F.conv3d(x, sd[name + ".weight"], sd[name + ".bias"], padding=1))

    def pool(x, k):
        pads = []
        for d, kk in zip(reversed(x.shape[2:]), reversed(k)):
            pads += [0, (-(d - kk)) % kk if d >= kk else 0]
        return F.max_pool3d(F.pad(x, pads), k, k)

    x = pool(conv("conv1", x), (1, 2, 2))
    x = pool(conv("conv2", x), (2, 2, 2))
    x = pool(conv("conv3b", conv("conv3a", x)), (2, 2, 2))
    x = pool(conv("conv4b", conv("conv4a", x)), (2, 2, 2))
    conv5b = conv("conv5b", conv("conv5a", x))
    pool5 = pool(conv5b, (2, 2, 2))
    fc6 = F.relu(F.linear(pool5.flatten(1), sd["fc6.weight"], sd["fc6.bias"]))  # relu6 in place on fc6-1
    fc7 = F.relu(F.linear(fc6, sd["fc7.weight"], sd["fc7.bias"]))
    logits = F.linear(fc7, sd["fc8.weight"], sd["fc8.bias"])
    return {"conv5b": conv5b, "pool5": pool5, "fc6": fc6, "fc7": fc7, "logits": logits}


def test_c3d_equals_hand_written_caffe_network(c3d):
    torch.manual_seed(2)
    x = torch.randn(1, 3, 16, 112, 112) * 50
    layers = ["conv5b", "pool5", "fc6", "fc7", "logits"]
    got = c3dfeat.extract_layers(c3d, x, ["conv5b", "pool5", "fc6-1", "fc7-1", "fc8-1"])
    with torch.inference_mode():
        want = caffe_c3d_forward(c3d.state_dict(), x)
    for ours, name in zip(["conv5b", "pool5", "fc6-1", "fc7-1", "fc8-1"], layers):
        torch.testing.assert_close(got[ours], want[name], rtol=1e-4, atol=1e-4)
    assert (got["fc6-1"] >= 0).all() and (got["fc7-1"] >= 0).all(), "fc6/fc7 are post-ReLU"
    assert (got["fc8-1"] < 0).any(), "logits are raw scores (no ReLU, no softmax)"
    # one pass for several layers = each layer alone (the fc layers only fit at 16x112x112)
    for name in ("fc6", "logits"):
        alone = c3dfeat.extract_layers(c3d, x, [name])[name]
        torch.testing.assert_close(alone, got["fc6-1" if name == "fc6" else "fc8-1"], rtol=0, atol=0)


def test_c3d_fc6_needs_the_canonical_clip(c3d):
    with pytest.raises(ClipSizeError, match="16x112x112"):
        c3dfeat.extract_layers(c3d, torch.randn(1, 3, 8, 64, 64), ["fc6"])
    # the conv layers work at any size
    out = c3dfeat.extract_layers(c3d, torch.randn(1, 3, 8, 64, 64), ["pool5"])
    assert out["pool5"].shape == (1, 512, 1, 2, 2)


def test_c3d_layout_is_davidea_c3d_pickle():
    sd = c3dfeat.create_model("c3d").state_dict()
    assert list(sd)[:4] == ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"]
    assert sd["fc6.weight"].shape == (4096, 8192) and sd["fc8.weight"].shape == (487, 4096)


# --------------------------------------------------------------------------- Res3D


def caffe_res3d_forward(sd: dict, x: torch.Tensor, eps: float = 1e-5) -> dict:
    """Res3D from the C3D-v1.1 prototxt (models.md §2.2) with functional ops: Convolution3D
    (no bias) -> BatchNorm (global stats) -> Scale -> ReLU; res{2..5}{a,b}; projection
    `branch1` in every `a` block (also res2a, stride 1); pool5 = Pooling3D AVE 7x7, depth 1."""
    def bn(prefix, x):
        # Caffe BatchNorm normalises with the stored stats, then Scale applies gamma / beta.
        mean, var = sd[prefix + ".running_mean"], sd[prefix + ".running_var"]
        y = (x - mean[None, :, None, None, None]) / torch.sqrt(var[None, :, None, None, None] + eps)
        return y * sd[prefix + ".weight"][None, :, None, None, None] + sd[prefix + ".bias"][None, :, None, None, None]

    x = F.relu(bn("stem.1", F.conv3d(x, sd["stem.0.weight"], stride=(1, 2, 2), padding=(1, 3, 3))))
    for stage in range(1, 5):  # res2 .. res5
        for blk in ("0", "1"):  # a, b
            p = f"layer{stage}.{blk}"
            s = 2 if (stage > 1 and blk == "0") else 1
            y = F.relu(bn(p + ".conv1.1", F.conv3d(x, sd[p + ".conv1.0.weight"], stride=s, padding=1)))
            y = bn(p + ".conv2.1", F.conv3d(y, sd[p + ".conv2.0.weight"], padding=1))
            short = x
            if blk == "0":  # res{n}a_branch1: 1x1x1 conv + bn + scale
                short = bn(p + ".downsample.1", F.conv3d(x, sd[p + ".downsample.0.weight"], stride=s))
            x = F.relu(y + short)  # Eltwise SUM then in-place ReLU
    res5 = x
    pool5 = F.avg_pool3d(res5, (1, 7, 7), stride=1).flatten(1)
    logits = F.linear(pool5, sd["fc.weight"], sd["fc.bias"])
    return {"res5": res5, "pool5": pool5, "logits": logits}


def test_res3d_equals_hand_written_caffe_network():
    torch.manual_seed(3)
    model = c3dfeat.create_model("res3d_18")
    # non-trivial BN statistics / affine parameters (random init has mean 0, var 1, gamma 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm3d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    x = torch.randn(2, 3, 8, 112, 112) * 60  # BGR 0-255 minus 128
    # The hand-written network runs contiguous kernels; compare the architecture in that layout
    # (the layouts differ by float rounding only: tests/test_runtime.py).
    set_inference_layout(model, "contiguous")
    got = c3dfeat.extract_layers(model, x, ["res5b", "pool5", "fc8"])
    with torch.inference_mode():
        want = caffe_res3d_forward(model.state_dict(), x)
    assert got["res5b"].shape == (2, 512, 1, 7, 7)
    torch.testing.assert_close(got["res5b"], want["res5"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got["pool5"], want["pool5"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got["fc8"], want["logits"], rtol=1e-4, atol=1e-4)


def test_c3d_channels_last_3d_gives_the_same_features():
    """The fast memory format must not change the numbers (fc6's flatten follows C, T, H, W)."""
    torch.manual_seed(4)
    model = c3dfeat.create_model("c3d")
    x = torch.randn(1, 3, 16, 112, 112) * 50
    set_inference_layout(model, "contiguous")
    want = c3dfeat.extract_layers(model, x, ["pool5", "fc6"])
    set_inference_layout(model, "channels_last_3d")
    got = c3dfeat.extract_layers(model, x.contiguous(memory_format=torch.channels_last_3d), ["pool5", "fc6"])
    torch.testing.assert_close(got["pool5"], want["pool5"], rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(got["fc6"], want["fc6"], rtol=1e-4, atol=1e-3)
