"""Converters: files written here by independent writers in the exact wire formats, converted,
compared tensor by tensor with what the writer put in, then loaded with strict=True.

* Caffe protobuf: a hand-rolled wire writer (varints, length-delimited records, packed floats) with
  the field numbers of C3D-v1.0 / C3D-v1.1 caffe.proto (models.md §7.2, §7.3) — independent of the
  protobuf descriptors the reader builds.
* Caffe2: a Python-2 style protocol-2 pickle written opcode by opcode (py2 `str` payloads,
  `numpy.core.multiarray._reconstruct`), blob names from the reference converters' tables
  (models.md §4.3, §5.3), not from the code under test.
Full-size networks (the converters refuse anything else); one file per model, shared per module.
"""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest
import torch

from c3dfeat.errors import ConversionError
from c3dfeat.models import get_spec
from c3dfeat.weights import paths
from c3dfeat.weights.caffe import read_mean_cube
from c3dfeat.weights.convert import from_caffe2
from c3dfeat.weights.formats import detect_format
from c3dfeat.weights.loading import state_dict_from_file
from c3dfeat.zoo import convert_file, create_model, import_file, load_mean_cube
from tests import _weights_server

isolated, server = _weights_server.isolated, _weights_server.server  # fixtures used here


class _Pool:
    """Distinct random arrays cheaply: each request is a slice of one random pool at its own offset
    (full-size nets need ~100 M values; drawing them all would dominate the test time)."""

    SPREAD = 100_000

    def __init__(self, seed: int, largest: int) -> None:
        self.data = np.random.default_rng(seed).standard_normal(largest + self.SPREAD, dtype=np.float32)
        self.n = 0

    def __call__(self, shape) -> np.ndarray:
        size = int(np.prod(shape))
        self.n += 1
        start = (self.n * 4729) % self.SPREAD  # 4729 is coprime with SPREAD: no two requests alike
        return self.data[start : start + size].reshape(shape)


# ============================================================================ protobuf wire writer
def _varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64  # int32/int64 negatives: ten-byte two's complement
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


Chunks = List[bytes]


def _size(chunks: Chunks) -> int:
    return sum(len(c) if isinstance(c, bytes) else c.nbytes for c in chunks)


def _ld(field: int, chunks: Chunks) -> Chunks:
    """A length-delimited record (string, bytes, sub-message, packed array)."""
    return [_varint(field << 3 | 2) + _varint(_size(chunks))] + chunks


def _int(field: int, n: int) -> Chunks:
    return [_varint(field << 3 | 0) + _varint(n)]


def _str(field: int, s: str) -> Chunks:
    return _ld(field, [s.encode()])


def _floats_unpacked(field: int, values) -> Chunks:
    return [b"".join(_varint(field << 3 | 5) + struct.pack("<f", v) for v in values)]


def _packed(field: int, arr: np.ndarray) -> Chunks:
    return _ld(field, [np.ascontiguousarray(arr, dtype="<f4").reshape(-1).view(np.uint8)])


def _write(path: Path, chunks: Chunks) -> None:
    with open(path, "wb") as f:
        for c in chunks:
            f.write(c)


def _blob_v10(arr: np.ndarray, dims: Tuple[int, ...]) -> Chunks:
    """C3D-v1.0 BlobProto: num=1 channels=2 length=3 height=4 width=5, data=6 packed."""
    assert len(dims) == 5 and int(np.prod(dims)) == arr.size
    out: Chunks = []
    for field, d in enumerate(dims, start=1):
        out += _int(field, d)
    return out + _packed(6, arr)


def _blob_v11(arr: np.ndarray) -> Chunks:
    """C3D-v1.1 (BVLC) BlobProto: shape=7 (BlobShape dim=1 packed int64), data=5 packed."""
    dims = b"".join(_varint(d) for d in arr.shape)
    return _ld(7, _ld(1, [dims])) + _packed(5, arr)


# ============================================================================ C3D-v1.0 caffemodel
# Layer types of C3D-v1.0 caffe.proto LayerParameter.LayerType.
CONV3D, POOL3D, RELU, IP, DROPOUT, SOFTMAX, VIDEO_DATA = 30, 31, 18, 14, 6, 20, 33
_C3D_CONVS = [("conv1a", 3, 64), ("conv2a", 64, 128), ("conv3a", 128, 256), ("conv3b", 256, 256),
              ("conv4a", 256, 512), ("conv4b", 512, 512), ("conv5a", 512, 512), ("conv5b", 512, 512)]
_C3D_POOL_AFTER = {"conv1a": "pool1", "conv2a": "pool2", "conv3b": "pool3", "conv4b": "pool4", "conv5b": "pool5"}
_C3D_FCS = [("fc6-1", 8192, 4096), ("fc7-1", 4096, 4096), ("fc8-1", 4096, 487)]
# models.md §1.4: Caffe layer -> DavideA / c3dfeat module
_C3D_MAP = {"conv1a": "conv1", "conv2a": "conv2", "fc6-1": "fc6", "fc7-1": "fc7", "fc8-1": "fc8"}


def _layer_v10(name: str, ltype: int, bottom: str, top: str, blobs: List[Chunks] = ()) -> Chunks:
    out = _str(4, name) + _int(5, ltype) + _str(2, bottom) + _str(3, top)
    for b in blobs:
        out += _ld(6, b)
    if blobs:
        out += _floats_unpacked(7, [1.0, 2.0][: len(blobs)])  # blobs_lr, unpacked as Caffe writes it
        out += _floats_unpacked(8, [1.0, 0.0][: len(blobs)])  # weight_decay
    if ltype == CONV3D:  # convolution_param: num_output, pad, kernel_size, kernel_depth, temporal_pad
        out += _ld(10, _int(1, 64) + _int(3, 1) + _int(4, 3) + _int(6, 3) + _int(12, 1))
    return out


def write_c3d_caffemodel(path: Path, rng: "_Pool", fc8_classes: int = 487,
                         only_first: bool = False) -> Dict[str, np.ndarray]:
    """A C3D-v1.0 NetParameter with the feature-extractor prototxt's layers; returns {module key: array}."""
    expected: Dict[str, np.ndarray] = {}
    layers: Chunks = []
    layers += _ld(2, _layer_v10("data", VIDEO_DATA, "", "data"))
    prev = "data"
    for name, cin, cout in _C3D_CONVS:
        w, b = rng((cout, cin, 3, 3, 3)), rng((cout,))
        blobs = [_blob_v10(w, w.shape), _blob_v10(b, (1, 1, 1, 1, cout))]
        layers += _ld(2, _layer_v10(name, CONV3D, prev, name, blobs))
        layers += _ld(2, _layer_v10("relu" + name[4:], RELU, name, name))
        key = _C3D_MAP.get(name, name)
        expected[key + ".weight"], expected[key + ".bias"] = w, b
        prev = name
        if name in _C3D_POOL_AFTER:
            layers += _ld(2, _layer_v10(_C3D_POOL_AFTER[name], POOL3D, name, _C3D_POOL_AFTER[name]))
            prev = _C3D_POOL_AFTER[name]
        if only_first:
            break
    for name, k, n in _C3D_FCS if not only_first else ():
        n = fc8_classes if name == "fc8-1" else n
        w, b = rng((n, k)), rng((n,))
        blobs = [_blob_v10(w, (1, 1, 1, n, k)), _blob_v10(b, (1, 1, 1, 1, n))]
        layers += _ld(2, _layer_v10(name, IP, prev, name, blobs))
        if name != "fc8-1":
            layers += _ld(2, _layer_v10("relu" + name[2], RELU, name, name))
            layers += _ld(2, _layer_v10("drop" + name[2], DROPOUT, name, name))
        expected[_C3D_MAP[name] + ".weight"], expected[_C3D_MAP[name] + ".bias"] = w, b
        prev = name
    layers += _ld(2, _layer_v10("prob", SOFTMAX, prev, "prob"))
    _write(path, _str(1, "deep_c3d_ucf101") + layers)
    return expected


@pytest.fixture(scope="module")
def c3d_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("c3d") / "conv3d_deepnetA_sport1m_iter_1900000"
    expected = write_c3d_caffemodel(path, _Pool(0, 8192 * 4096))
    return path, expected


def test_c3d_caffemodel_converts_and_loads_strictly(c3d_file):
    path, expected = c3d_file
    assert detect_format(path) == "caffe_v1"
    model = create_model("c3d", pretrained=path)  # explicit path: format detected, strict load
    sd = model.state_dict()
    assert sorted(sd) == sorted(expected)  # 22 entries, models.md §1.4
    for key, arr in expected.items():
        assert torch.equal(sd[key], torch.from_numpy(arr.reshape(sd[key].shape))), key
    assert sum(v.numel() for v in sd.values()) == 79_991_015


def write_c3d_mean(path: Path, seed: int = 2) -> np.ndarray:
    """The C3D Sports-1M mean file's exact layout (1 x 3 x 16 x 128 x 171 BlobProto); returns the cube."""
    cube = np.random.default_rng(seed).uniform(0, 255, (1, 3, 16, 128, 171)).astype(np.float32)
    _write(path, _blob_v10(cube, cube.shape))
    return cube


def test_c3d_first_use_downloads_weights_and_mean_from_mirror(c3d_file, server, isolated, monkeypatch, capsys):
    """The default model with no flag: c3d.sports1m (no published hash) and its mean file come
    from the mirror on first use, each trusted with one printed line; the second use downloads
    nothing. The published URLs are never contacted (the mirror is tried first)."""
    import hashlib

    import c3dfeat

    path, expected = c3d_file
    mean_src = path.parent / "mean.binaryproto"
    cube = write_c3d_mean(mean_src)
    weights_file, mean_file = "conv3d_deepnetA_sport1m_iter_1900000", "sport1m_train16_128_mean.binaryproto"
    server.routes["/mirror/" + weights_file] = ("file", path)
    server.routes["/mirror/" + mean_file] = ("file", mean_src)
    monkeypatch.setenv("C3DFEAT_WEIGHTS_MIRROR", server.url + "/mirror/")
    model = c3dfeat.create_model("c3d", pretrained=True)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert model.weights_sha256 == digest
    assert torch.equal(model.fc6.weight, torch.from_numpy(expected["fc6.weight"]))
    assert torch.equal(model.conv5b.bias, torch.from_numpy(expected["conv5b.bias"]))
    err = capsys.readouterr().err
    assert f"first download of c3d.sports1m from {server.url}/mirror/{weights_file}, sha256 {digest}" in err
    assert "first download of c3d.sports1m_mean" in err
    assert sorted(p.name for p in isolated.iterdir()) == sorted(
        [weights_file, weights_file + ".sha256", mean_file, mean_file + ".sha256"])
    got = load_mean_cube("c3d")
    assert got.shape == (3, 16, 128, 171) and np.array_equal(got, cube[0])
    assert c3dfeat.create_model("c3d", pretrained=True).weights_sha256 == digest
    assert dict(server.hits) == {"/mirror/" + weights_file: 1, "/mirror/" + mean_file: 1}
    assert "first" not in capsys.readouterr().err


def test_c3d_caffemodel_wrong_shape_names_the_blob(tmp_path):
    path = tmp_path / "bad.caffemodel"
    rng = np.random.default_rng(1)
    # conv1a with 32 filters instead of 64
    w = rng.standard_normal((32, 3, 3, 3, 3), dtype=np.float32)
    b = rng.standard_normal(32, dtype=np.float32)
    blobs = [_blob_v10(w, w.shape), _blob_v10(b, (1, 1, 1, 1, 32))]
    _write(path, _ld(2, _layer_v10("conv1a", CONV3D, "data", "conv1a", blobs)))
    with pytest.raises(ConversionError, match=r"conv1a\[0\].*\(32, 3, 3, 3, 3\)"):
        state_dict_from_file(path, create_model("c3d"))
    # a net with only some layers: the rest is reported missing
    write_c3d_caffemodel(path, _Pool(1, 64 * 3 * 27), only_first=True)
    with pytest.raises(ConversionError, match="no blob for conv2.weight"):
        state_dict_from_file(path, create_model("c3d"))


# ============================================================================ mean cube (.binaryproto)
def test_mean_cube_binaryproto(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "checkout_dir", lambda: None)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("C3DFEAT_WEIGHTS", raising=False)
    src = tmp_path / "sport1m_train16_128_mean.binaryproto"
    cube = write_c3d_mean(src)
    head = src.read_bytes()[:13]
    # models.md §7.2: 08 01 10 03 18 10 20 80 01 28 ab 01 32 ...
    assert head == bytes([0x08, 1, 0x10, 3, 0x18, 16, 0x20, 0x80, 0x01, 0x28, 0xAB, 0x01, 0x32])
    assert src.stat().st_size == 4_202_513  # models.md §1.5 expected size
    assert detect_format(src) == "caffe_mean"

    spec = get_spec("c3d")
    wdir = tmp_path / "weights"
    # absent and downloads off: None, the transforms use the approximation
    assert load_mean_cube(spec, wdir, download=False) is None
    import_file(src, "c3d.sports1m_mean", wdir)  # no published hash: recorded
    got = load_mean_cube(spec, wdir, download=False)
    assert got.shape == (3, 16, 128, 171) and got.dtype == np.float32
    assert np.array_equal(got, cube[0])

    out = tmp_path / "mean.npy"
    fmt, _ = convert_file(src, "c3d", out)
    assert fmt == "caffe_mean" and np.array_equal(np.load(out), cube[0])


def test_blob_unpacked_and_split_records(tmp_path):
    """Protobuf allows unpacked floats and a packed field split over several records."""
    arr = np.arange(120, dtype=np.float32).reshape(1, 3, 2, 4, 5) / 7
    dims = _int(1, 1) + _int(2, 3) + _int(3, 2) + _int(4, 4) + _int(5, 5)
    unpacked = tmp_path / "unpacked.binaryproto"
    _write(unpacked, dims + _floats_unpacked(6, arr.reshape(-1)))
    assert np.array_equal(read_mean_cube(unpacked), arr[0])
    split = tmp_path / "split.binaryproto"
    flat = arr.reshape(-1)
    _write(split, dims + _packed(6, flat[:50]) + _packed(6, flat[50:]))
    assert np.array_equal(read_mean_cube(split), arr[0])


# ============================================================================ C3D-v1.1 Res3D caffemodel
def _layer_v11(name: str, ltype: str, blobs: List[np.ndarray] = (), bn_eps: float = None) -> Chunks:
    out = _str(1, name) + _str(2, ltype) + _str(3, "bottom") + _str(4, name)
    for b in blobs:
        out += _ld(7, _blob_v11(b))
    if ltype == "BatchNorm":  # batch_norm_param { use_global_stats: true [eps] }
        out += _ld(139, _int(1, 1) + ([_varint(3 << 3 | 5) + struct.pack("<f", bn_eps)] if bn_eps else []))
    if ltype == "Scale":
        out += _ld(142, _int(4, 1))  # scale_param { bias_term: true }
    return out


# models.md §2.3: Caffe layer -> torchvision-style r3d module (conv, bn+scale)
def _res3d_units():
    units = [("conv1", "bn_conv1", "scale_conv1", "stem.0", "stem.1", 3, 64, (3, 7, 7))]
    cin = 64
    for stage, planes in zip((2, 3, 4, 5), (64, 128, 256, 512)):
        for bi, letter in enumerate("ab"):
            layer = f"layer{stage - 1}.{bi}"
            if letter == "a":
                units.append((f"res{stage}a_branch1", f"bn{stage}a_branch1", f"scale{stage}a_branch1",
                              f"{layer}.downsample.0", f"{layer}.downsample.1", cin, planes, (1, 1, 1)))
            for branch, conv in (("2a", "conv1"), ("2b", "conv2")):
                units.append((f"res{stage}{letter}_branch{branch}", f"bn{stage}{letter}_branch{branch}",
                              f"scale{stage}{letter}_branch{branch}", f"{layer}.{conv}.0", f"{layer}.{conv}.1",
                              cin if (letter == "a" and branch == "2a") else planes, planes, (3, 3, 3)))
        cin = planes
    return units


@pytest.fixture(scope="module")
def res3d_file(tmp_path_factory):
    rng = np.random.default_rng(3)
    pool = _Pool(3, 512 * 512 * 27)
    path = tmp_path_factory.mktemp("res3d") / "c3d_resnet18_sports1m_r2_iter_2800000.caffemodel"
    expected: Dict[str, np.ndarray] = {}
    layers: Chunks = _ld(100, _layer_v11("data", "VideoData"))
    for n, (conv, bn, scale, conv_key, bn_key, cin, cout, k) in enumerate(_res3d_units()):
        w = pool((cout, cin) + k)
        # Caffe stores running sums and the normaliser; test both a normal factor and factor 0.
        factor = np.float32(0.0 if n == 5 else 999.98 + n)
        mean_sum = rng.standard_normal(cout, dtype=np.float32) * factor
        var_sum = rng.uniform(0.5, 2.0, cout).astype(np.float32) * factor
        gamma, beta = rng.standard_normal(cout, dtype=np.float32), rng.standard_normal(cout, dtype=np.float32)
        layers += _ld(100, _layer_v11(conv, "Convolution3D", [w]))
        layers += _ld(100, _layer_v11(bn, "BatchNorm", [mean_sum, var_sum, np.array([factor], np.float32)]))
        layers += _ld(100, _layer_v11(scale, "Scale", [gamma, beta]))
        layers += _ld(100, _layer_v11(conv + "_relu", "ReLU"))
        inv = 0.0 if factor == 0 else 1.0 / np.float64(factor)
        expected[conv_key + ".weight"] = w
        expected[bn_key + ".running_mean"] = (mean_sum.astype(np.float64) * inv).astype(np.float32)
        expected[bn_key + ".running_var"] = (var_sum.astype(np.float64) * inv).astype(np.float32)
        expected[bn_key + ".weight"], expected[bn_key + ".bias"] = gamma, beta
    layers += _ld(100, _layer_v11("pool5", "Pooling3D"))
    fc_w, fc_b = rng.standard_normal((487, 512), dtype=np.float32), rng.standard_normal(487, dtype=np.float32)
    layers += _ld(100, _layer_v11("fc8", "InnerProduct", [fc_w, fc_b]))
    layers += _ld(100, _layer_v11("prob", "Softmax"))
    expected["fc.weight"], expected["fc.bias"] = fc_w, fc_b
    _write(path, _str(1, "C3D-ResNet18-Sports1M") + layers)
    return path, expected


def test_res3d_caffemodel_converts_bn_and_scale(res3d_file):
    path, expected = res3d_file
    assert detect_format(path) == "caffe_v11"
    assert len(_res3d_units()) == 21  # models.md §2.3: 21 conv / BatchNorm / Scale
    model = create_model("res3d_18", pretrained=path)
    sd = model.state_dict()
    assert {k for k in sd if not k.endswith("num_batches_tracked")} == set(expected)
    for key, arr in expected.items():
        want = torch.from_numpy(arr)
        if "running_" in key:  # float32 product with 1/factor, as Caffe does: within 1 ulp
            torch.testing.assert_close(sd[key], want, rtol=3e-7, atol=0, msg=key)
        else:
            assert torch.equal(sd[key], want), key
    assert torch.count_nonzero(sd["layer1.1.conv2.1.running_var"]) == 0  # factor 0 -> 0 (unit 5)
    assert all(m.eps == 1e-5 for m in model.modules() if isinstance(m, torch.nn.BatchNorm3d))


def test_res3d_bn_eps_mismatch_is_refused(tmp_path):
    rng = np.random.default_rng(4)
    path = tmp_path / "eps.caffemodel"
    w = rng.standard_normal((64, 3, 3, 7, 7), dtype=np.float32)
    c = np.ones(64, np.float32)
    _write(path, _ld(100, _layer_v11("conv1", "Convolution3D", [w]))
           + _ld(100, _layer_v11("bn_conv1", "BatchNorm", [c, c, np.ones(1, np.float32)], bn_eps=1e-3))
           + _ld(100, _layer_v11("scale_conv1", "Scale", [c, c])))
    with pytest.raises(ConversionError, match="bn_conv1 has eps 0.001"):
        state_dict_from_file(path, create_model("res3d_18"))


# ============================================================================ Caffe2 pickles
class _Py2Pickler:
    """Protocol 2 as Python 2's cPickle wrote Caffe2 checkpoints: py2 `str` (SHORT_BINSTRING /
    BINSTRING) for names and array bytes, numpy arrays via numpy.core.multiarray._reconstruct."""

    def __init__(self, f):
        self.f = f

    def int(self, i: int) -> None:
        w = self.f.write
        if 0 <= i < 256:
            w(b"K" + bytes([i]))
        elif 0 <= i < 65536:
            w(b"M" + struct.pack("<H", i))
        else:
            w(b"J" + struct.pack("<i", i))

    def str(self, s: bytes) -> None:
        self.f.write((b"U" + bytes([len(s)]) if len(s) < 256 else b"T" + struct.pack("<I", len(s))))
        self.f.write(s)

    def array(self, a: np.ndarray) -> None:
        w = self.f.write
        w(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n")
        self.int(0)
        w(b"\x85")  # TUPLE1 -> (0,)
        self.str(b"b")
        w(b"\x87R(")  # TUPLE3, REDUCE, MARK (state tuple)
        self.int(1)
        w(b"(")
        for d in a.shape:
            self.int(d)
        w(b"t")
        w(b"cnumpy\ndtype\n")
        self.str(b"f4")
        self.int(0)
        self.int(1)
        w(b"\x87R(")
        self.int(3)
        self.str(b"<")
        w(b"NNN")
        self.int(-1)
        self.int(-1)
        self.int(0)
        w(b"tb\x89")  # dtype BUILD, then is_fortran = False
        self.str(np.ascontiguousarray(a, dtype="<f4").tobytes())
        w(b"tb")  # state tuple, BUILD

    def dump_blobs(self, blobs: Dict[str, np.ndarray]) -> None:
        w = self.f.write
        w(b"\x80\x02}(")
        self.str(b"blobs")
        w(b"}(")
        for name, arr in blobs.items():
            self.str(name.encode("latin-1"))
            self.array(arr)
        w(b"uu.")  # SETITEMS (blobs), SETITEMS (top), STOP


_BN = {"s": "weight", "b": "bias", "rm": "running_mean", "riv": "running_var"}


def _c2_table(arch: str, classes: int) -> List[Tuple[str, str]]:
    """(blob, model key) pairs from the reference converters' naming (models.md §4.3, §5.3)."""
    pairs: List[Tuple[str, str]] = []

    def conv(blob, mod):
        pairs.append((blob + "_w", mod + ".weight"))

    def bn(blob, mod):
        pairs.extend((f"{blob}_{s}", f"{mod}.{p}") for s, p in _BN.items())

    if arch in ("r2plus1d_34", "r2plus1d_152"):
        conv("conv1_middle", "stem.0"), bn("conv1_middle_spatbn_relu", "stem.1")
        conv("conv1", "stem.3"), bn("conv1_spatbn_relu", "stem.4")
    else:
        conv("conv1", "stem.0"), bn("conv1_spatbn_relu", "stem.1")
    if arch == "r2plus1d_34":
        depths, projections = (3, 4, 6, 3), {3, 7, 13}
    else:
        depths, projections = (3, 8, 36, 3), {0, 3, 11, 47}
    i = 0
    for layer, depth in enumerate(depths, start=1):
        for b in range(depth):
            m = f"layer{layer}.{b}"
            if arch == "r2plus1d_34":
                for j in (1, 2):
                    conv(f"comp_{i}_conv_{j}_middle", f"{m}.conv{j}.0.0")
                    bn(f"comp_{i}_spatbn_{j}_middle", f"{m}.conv{j}.0.1")
                    conv(f"comp_{i}_conv_{j}", f"{m}.conv{j}.0.3")
                    bn(f"comp_{i}_spatbn_{j}", f"{m}.conv{j}.1")
            elif arch == "r2plus1d_152":  # VMZ copy_bottleneck with a separable conv2
                conv(f"comp_{i}_conv_1", f"{m}.conv1.0"), bn(f"comp_{i}_spatbn_1", f"{m}.conv1.1")
                conv(f"comp_{i}_conv_2_middle", f"{m}.conv2.0.0"), bn(f"comp_{i}_spatbn_2_middle", f"{m}.conv2.0.1")
                conv(f"comp_{i}_conv_2", f"{m}.conv2.0.3"), bn(f"comp_{i}_spatbn_2", f"{m}.conv2.1")
                conv(f"comp_{i}_conv_3", f"{m}.conv3.0"), bn(f"comp_{i}_spatbn_3", f"{m}.conv3.1")
            elif arch == "ir_csn_152":  # depthwise conv2 is component 3, conv3 is 4
                for j, c in ((1, "conv1"), (3, "conv2"), (4, "conv3")):
                    conv(f"comp_{i}_conv_{j}", f"{m}.{c}.0"), bn(f"comp_{i}_spatbn_{j}", f"{m}.{c}.1")
            else:  # ip_csn_152
                conv(f"comp_{i}_conv_1", f"{m}.conv1.0"), bn(f"comp_{i}_spatbn_1", f"{m}.conv1.1")
                conv(f"comp_{i}_conv_2_middle", f"{m}.conv2.0.0"), bn(f"comp_{i}_spatbn_2_middle", f"{m}.conv2.0.1")
                conv(f"comp_{i}_conv_2", f"{m}.conv2.0.2"), bn(f"comp_{i}_spatbn_2", f"{m}.conv2.1")
                conv(f"comp_{i}_conv_3", f"{m}.conv3.0"), bn(f"comp_{i}_spatbn_3", f"{m}.conv3.1")
            if i in projections:
                conv(f"shortcut_projection_{i}", f"{m}.downsample.0")
                bn(f"shortcut_projection_{i}_spatbn", f"{m}.downsample.1")
            i += 1
    pairs += [(f"last_out_L{classes}_w", "fc.weight"), (f"last_out_L{classes}_b", "fc.bias")]
    return pairs


# expected blob counts: models.md §4.3 (347), §5.3 (ir 777, ip 1027); R(2+1)D-152: 206 convs
# (2 stem + 4 x 50 blocks + 4 projections, = the manifest's 206 BN layers) x 5 blobs + 2 = 1032
_C2_CASES = {"r2plus1d_34": ("r2plus1d_34.ig65m_32f_caffe2", 359, 347),
             "ir_csn_152": ("ir_csn_152.ig65m_caffe2", 359, 777),
             "ip_csn_152": ("ip_csn_152.ig65m_kinetics_caffe2", 400, 1027),
             "r2plus1d_152": ("r2plus1d_152.ig65m_kinetics_caffe2", 400, 1032)}


@pytest.fixture(scope="module")
def c2_files(tmp_path_factory):
    """arch -> (name, path, table, blobs), written on first use and shared by the module."""
    cache = {}

    def get(arch):
        if arch not in cache:
            name, classes, count = _C2_CASES[arch]
            table = _c2_table(arch, classes)
            if count is not None:
                assert len(table) == count
            shapes = {k: tuple(v.shape) for k, v in create_model(name).state_dict().items()}
            pool = _Pool(5, max(int(np.prod(s)) for s in shapes.values()))
            blobs = {blob: pool(shapes[key]) for blob, key in table}
            path = tmp_path_factory.mktemp("c2") / get_spec(name).checkpoint.file_name
            with open(path, "wb") as f:
                _Py2Pickler(f).dump_blobs(blobs)
            cache[arch] = (name, path, table, blobs)
        return cache[arch]

    return get


@pytest.fixture
def c2_file(c2_files):
    return c2_files("ir_csn_152")  # the smallest: for the checks that do not depend on the family


@pytest.mark.parametrize("arch", ["r2plus1d_34", "ir_csn_152", "ip_csn_152",
                                  pytest.param("r2plus1d_152", marks=pytest.mark.slow)])
def test_caffe2_pkl_converts_every_blob_and_loads_strictly(c2_files, arch):
    name, path, table, blobs = c2_files(arch)
    assert detect_format(path) == "caffe2_pkl"
    model = create_model(name, pretrained=path)
    sd = model.state_dict()
    assert {k for k in sd if not k.endswith("num_batches_tracked")} == {k for _, k in table}
    for blob, key in table:
        assert torch.equal(sd[key], torch.from_numpy(blobs[blob])), (blob, key)
    assert all(m.eps == 1e-3 for m in model.modules() if isinstance(m, torch.nn.BatchNorm3d))


def test_caffe2_mismatches_name_the_blob(c2_file):
    name, _, table, blobs = c2_file
    model = create_model(name)
    victim = table[5][0]

    bad = dict(blobs)
    bad[victim] = blobs[victim][:1]
    with pytest.raises(ConversionError, match=f"blob '{victim}' has shape"):
        from_caffe2(bad, model)
    bad = {k: v for k, v in blobs.items() if k != victim}
    with pytest.raises(ConversionError, match=f"blob '{victim}'.*missing"):
        from_caffe2(bad, model)
    bad = dict(blobs, model_iter=np.zeros(1, np.float32), extra_w=np.zeros(3, np.float32))
    with pytest.raises(ConversionError, match="2 blob\\(s\\) not used.*extra_w, model_iter"):
        from_caffe2(bad, model)
    bad = {k.replace(f"last_out_L{model.fc.out_features}", "last_out_L487"): v for k, v in blobs.items()}
    with pytest.raises(ConversionError, match="last_out_L487"):
        from_caffe2(bad, model)
    bad = dict(blobs)
    bad[victim] = blobs[victim].astype(np.int32)
    with pytest.raises(ConversionError, match=f"blob '{victim}'.*float"):
        from_caffe2(bad, model)


def test_caffe2_cli_convert_infers_classes(c2_file, tmp_path):
    name, path, table, blobs = c2_file
    arch = name.split(".")[0]
    from click.testing import CliRunner

    from c3dfeat.cli import cli

    out = tmp_path / "converted.pth"
    # no tag: the head's size comes from last_out_L{N}
    r = CliRunner().invoke(cli, ["weights", "convert", str(path), "--model", arch, "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "(caffe2_pkl)" in r.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["converted.pth"]  # no temporary left
    sd = torch.load(out, weights_only=True)
    blob, key = table[-2]
    assert torch.equal(sd[key], torch.from_numpy(blobs[blob]))
    # the converted .pth then loads as a plain state_dict
    model = create_model(name, pretrained=out)
    assert torch.equal(model.fc.bias, torch.from_numpy(blobs[table[-1][0]]))
