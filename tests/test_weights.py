"""Weights: search order, hash-verified downloads from a local HTTP server, safe loading, CLI.

The server on 127.0.0.1 serves checkpoints the tests generate in the real formats (torch.save zip
and legacy files, pytorchvideo dicts). Digests in the tests are computed from the bytes the test
itself wrote, never taken from the code under test.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from click.testing import CliRunner

from c3dfeat.cli import cli
from c3dfeat.errors import ChecksumError, UnsafePickleError, WeightsError, WeightsNotFoundError
from c3dfeat.models import _registry, get_spec
from c3dfeat.specs import Checkpoint, LayerSpec, ModelSpec, Preprocessing
from c3dfeat.weights import find_local_file, load_file, paths, search_dirs
from c3dfeat.weights.safe_pickle import safe_loads
from c3dfeat.zoo import create_model
from tests import _weights_server
from tests._weights_server import all_files as _all_files, closed_port_url as _closed_port_url

isolated, server = _weights_server.isolated, _weights_server.server  # fixtures used here

_REAL_CHECKOUT_DIR = paths.checkout_dir  # before the `isolated` fixture replaces it


@pytest.fixture(autouse=True)
def _isolated_everywhere(isolated):
    """Every test here runs without the real weights directories, mirrors or retry sleeps."""
    return isolated


# ----------------------------------------------------------------------------- a tiny registered model
class Tiny(nn.Module):
    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.conv = nn.Conv3d(3, 4, 3, bias=False)
        self.bn = nn.BatchNorm3d(4)
        self.fc = nn.Linear(4, num_classes)


def _tiny_bytes(seed: int, legacy: bool = False, wrap: bool = False) -> tuple:
    torch.manual_seed(seed)
    sd = Tiny().state_dict()
    for v in sd.values():
        if v.is_floating_point():
            v.copy_(torch.randn_like(v))
    buf = io.BytesIO()
    obj = {"model_state": sd, "epoch": 7, "cfg": "x"} if wrap else sd
    torch.save(obj, buf, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue(), sd


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _register(monkeypatch, *checkpoints: Checkpoint) -> ModelSpec:
    spec = ModelSpec(
        name="wtest_tiny",
        builder=Tiny,
        checkpoints=checkpoints,
        preprocessing=Preprocessing(clip_len=4),
        layers=(LayerSpec("logits", (5,)),),
        default_layer="logits",
        input_size=(4, 112, 112),  # = (clip_len, crop, crop): no shape inference on resolve
    )
    monkeypatch.setitem(_registry._REGISTRY, "wtest_tiny", spec)
    return spec


def _ckpt(tag: str, file_name: str, urls, **kw) -> Checkpoint:
    return Checkpoint(tag=tag, file_name=file_name, urls=tuple(urls), format=kw.pop("format", "state_dict"),
                      num_classes=5, dataset="test", **kw)


def _equal(model: nn.Module, sd: dict) -> bool:
    own = model.state_dict()
    return own.keys() == sd.keys() and all(torch.equal(own[k], sd[k]) for k in sd)


# ----------------------------------------------------------------------------- search order
def test_search_order_explicit_env_checkout_cache(tmp_path, monkeypatch, isolated):
    explicit, env1, env2, checkout = (tmp_path / n for n in ("explicit", "env1", "env2", "checkout"))
    monkeypatch.setenv("C3DFEAT_WEIGHTS", f"{env1}{os.pathsep}{env2}")
    monkeypatch.setattr(paths, "checkout_dir", lambda: checkout)
    assert search_dirs(explicit) == [explicit, env1, env2, checkout, isolated]
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "other"))
    assert search_dirs()[-1] == tmp_path / "other" / "c3dfeat" / "weights"

    ckpt = _ckpt("v1", "tiny.pth", ())
    assert find_local_file(ckpt, explicit) is None
    for i, d in enumerate((tmp_path / "other" / "c3dfeat" / "weights", checkout, env2, env1, explicit)):
        d.mkdir(parents=True)
        (d / "tiny.pth").write_bytes(b"%d" % i)
        assert find_local_file(ckpt, explicit) == d / "tiny.pth"  # each new, earlier dir wins


def test_checkout_dir_is_this_checkout():
    assert _REAL_CHECKOUT_DIR() == Path(__file__).resolve().parents[1] / "weights"


# ----------------------------------------------------------------------------- downloads
def test_download_full_hash_accepted_and_loaded_strictly(server, monkeypatch, isolated):
    body, sd = _tiny_bytes(1)
    server.routes["/tiny.pth"] = ("ok", body)
    _register(monkeypatch, _ckpt("v1", "tiny.pth", [server.url + "/tiny.pth"], sha256=_sha(body)))
    model = create_model("wtest_tiny", pretrained=True)
    assert _equal(model, sd)
    assert model.weights_sha256 == _sha(body)
    assert (isolated / "tiny.pth").read_bytes() == body
    assert (isolated / "tiny.pth.sha256").read_text() == f"{_sha(body)}  tiny.pth\n"
    assert _all_files(isolated) == ["tiny.pth", "tiny.pth.sha256"]
    # second load: found locally, no new request
    create_model("wtest_tiny", pretrained=True)
    assert server.hits["/tiny.pth"] == 1


def test_download_published_prefix_and_mirror_fallback(server, monkeypatch, isolated):
    body, sd = _tiny_bytes(2)
    prefix = _sha(body)[:8]
    name = f"tiny-{prefix}.pth"
    server.routes["/b/" + name] = ("ok", body)  # first mirror: 404
    urls = [server.url + "/a/" + name, server.url + "/b/" + name]
    _register(monkeypatch, _ckpt("v1", name, urls, sha256_prefix=prefix))
    model = create_model("wtest_tiny.v1", pretrained=True)
    assert _equal(model, sd) and model.weights_sha256 == _sha(body)
    assert server.hits["/a/" + name] == 1  # 404 is not retried


def test_wrong_hash_refused_and_nothing_left(server, monkeypatch, isolated):
    body, _ = _tiny_bytes(3)
    other, _ = _tiny_bytes(4)
    server.routes["/tiny.pth"] = ("ok", body)
    _register(monkeypatch, _ckpt("v1", "tiny.pth", [server.url + "/tiny.pth"], sha256=_sha(other)))
    with pytest.raises(ChecksumError, match=_sha(body)):
        create_model("wtest_tiny", pretrained=True)
    assert _all_files(isolated) == []
    assert server.hits["/tiny.pth"] == 1  # a wrong hash is not retried


def test_wrong_prefix_refused(server, monkeypatch, isolated):
    body, _ = _tiny_bytes(3)
    server.routes["/tiny.pth"] = ("ok", body)
    bad = "0" * 8 if not _sha(body).startswith("0" * 8) else "f" * 8
    _register(monkeypatch, _ckpt("v1", "tiny.pth", [server.url + "/tiny.pth"], sha256_prefix=bad))
    with pytest.raises(ChecksumError, match="prefix"):
        create_model("wtest_tiny", pretrained=True)
    assert _all_files(isolated) == []


def test_cut_connection_leaves_nothing_that_passes_later(server, monkeypatch, isolated):
    # Worst case: no published hash, so only the length check can tell a truncated body.
    body, sd = _tiny_bytes(5)
    server.routes["/tiny.pth"] = ("cut", body)
    _register(monkeypatch, _ckpt("v1", "tiny.pth", [server.url + "/tiny.pth"]))
    with pytest.raises(WeightsNotFoundError, match="connection closed after"):
        create_model("wtest_tiny", pretrained=True)
    assert server.hits["/tiny.pth"] == 3  # 1 try + 2 retries
    assert _all_files(isolated) == []
    assert find_local_file(get_spec("wtest_tiny").checkpoint) is None
    server.routes["/tiny.pth"] = ("ok", body)  # the server recovers: a clean download follows
    model = create_model("wtest_tiny", pretrained=True)
    assert _equal(model, sd)


def test_transient_errors_are_retried(server, monkeypatch, isolated):
    body, sd = _tiny_bytes(6)
    server.routes["/cut.pth"] = ("cut_once", body)
    server.routes["/err.pth"] = ("500_once", body)
    for path in ("/cut.pth", "/err.pth"):
        _register(monkeypatch, _ckpt("v1", path[1:], [server.url + path], sha256=_sha(body)))
        assert _equal(create_model("wtest_tiny", pretrained=True), sd)
        assert server.hits[path] == 2


def test_no_server_clear_error(monkeypatch, isolated):
    url = _closed_port_url()
    _register(monkeypatch, _ckpt("v1", "tiny.pth", [url], sha256="ab" * 32))
    with pytest.raises(WeightsNotFoundError) as e:
        create_model("wtest_tiny", pretrained=True)
    msg = str(e.value)
    assert "\n" not in msg and url in msg and "tiny.pth" in msg
    assert "C3DFEAT_WEIGHTS_MIRROR" in msg
    assert msg.endswith("`c3dfeat weights import FILE --model wtest_tiny.v1`")
    assert _all_files(isolated) == []


def test_no_published_hash_trusted_on_first_use_then_checked(server, monkeypatch, isolated, capsys):
    body, sd = _tiny_bytes(7)
    server.routes["/tiny.pth"] = ("ok", body)
    url = server.url + "/tiny.pth"
    _register(monkeypatch, _ckpt("v1", "tiny.pth", [url]))
    model = create_model("wtest_tiny", pretrained=True)  # no flag
    assert _equal(model, sd) and model.weights_sha256 == _sha(body)
    tofu = [ln for ln in capsys.readouterr().err.splitlines() if "first download" in ln]
    assert tofu == [f"c3dfeat: first download of wtest_tiny.v1 from {url}, sha256 {_sha(body)}; "
                    "later loads are checked against it (tiny.pth.sha256)"]
    assert (isolated / "tiny.pth.sha256").read_text() == f"{_sha(body)}  tiny.pth\n"
    # later loads: no download, no announcement, checked against the record
    assert create_model("wtest_tiny", pretrained=True).weights_sha256 == _sha(body)
    assert server.hits["/tiny.pth"] == 1 and "first" not in capsys.readouterr().err
    other, _ = _tiny_bytes(8)
    (isolated / "tiny.pth").write_bytes(other)
    with pytest.raises(ChecksumError, match="recorded"):
        create_model("wtest_tiny", pretrained=True)
    # the record outlives its file: a re-download with other bytes is refused too
    (isolated / "tiny.pth").unlink()
    server.routes["/tiny.pth"] = ("ok", other)
    with pytest.raises(ChecksumError, match="recorded"):
        create_model("wtest_tiny", pretrained=True)
    assert _all_files(isolated) == ["tiny.pth.sha256"]


def test_require_hashes_refuses_unpublished(server, monkeypatch, isolated):
    body, sd = _tiny_bytes(7)
    server.routes["/tiny.pth"] = ("ok", body)
    _register(monkeypatch, _ckpt("v1", "tiny.pth", [server.url + "/tiny.pth"]))
    with pytest.raises(WeightsError, match="no published SHA-256.*--require-hashes"):
        create_model("wtest_tiny", pretrained=True, require_hashes=True)
    monkeypatch.setenv("C3DFEAT_REQUIRE_HASHES", "1")
    with pytest.raises(WeightsError, match="C3DFEAT_REQUIRE_HASHES"):
        create_model("wtest_tiny", pretrained=True)
    assert server.hits["/tiny.pth"] == 0 and _all_files(isolated) == []  # refused before any transfer
    # an explicit False wins over the environment; afterwards the record alone does not satisfy it
    assert _equal(create_model("wtest_tiny", pretrained=True, require_hashes=False), sd)
    with pytest.raises(WeightsError, match="no published SHA-256"):
        create_model("wtest_tiny", pretrained=True)
    monkeypatch.setenv("C3DFEAT_REQUIRE_HASHES", "0")
    assert _equal(create_model("wtest_tiny", pretrained=True), sd)


def test_published_hash_passes_require_hashes(server, monkeypatch, isolated):
    body, sd = _tiny_bytes(7)
    server.routes["/tiny.pth"] = ("ok", body)
    _register(monkeypatch, _ckpt("v1", "tiny.pth", [server.url + "/tiny.pth"], sha256=_sha(body)))
    assert _equal(create_model("wtest_tiny", pretrained=True, require_hashes=True), sd)


def test_local_file_without_record_trusted_on_first_use(monkeypatch, isolated, capsys):
    body, sd = _tiny_bytes(9)
    isolated.mkdir(parents=True)
    (isolated / "tiny.pth").write_bytes(body)
    _register(monkeypatch, _ckpt("v1", "tiny.pth", ["http://127.0.0.1:9/never"]))
    with pytest.raises(WeightsError, match="--require-hashes"):
        create_model("wtest_tiny", pretrained=True, require_hashes=True)
    assert _equal(create_model("wtest_tiny", pretrained=True), sd)
    assert f"first use of wtest_tiny.v1 from {isolated / 'tiny.pth'}, sha256 {_sha(body)}" in capsys.readouterr().err
    assert (isolated / "tiny.pth.sha256").read_text().split()[0] == _sha(body)


# ----------------------------------------------------------------------------- containers and safe loading
@pytest.mark.parametrize("legacy,wrap", [(False, False), (True, False), (False, True), (True, True)])
def test_torch_containers_load_with_weights_only(tmp_path, legacy, wrap):
    body, sd = _tiny_bytes(10, legacy=legacy, wrap=wrap)
    p = tmp_path / "w.bin"
    p.write_bytes(body)
    if legacy:
        assert not body.startswith(b"PK")  # really the pre-1.6 format (DavideA c3d.pickle)
    model = Tiny()
    assert load_file(model, p) == _sha(body)
    assert _equal(model, sd)


def _make_marker(path):  # what a malicious pickle would run
    Path(path).write_text("pwned")


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (_make_marker, (str(self.marker),))


class _EvilShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("evil", [_Evil, _EvilShell])
def test_malicious_caffe2_pickle_is_refused(tmp_path, evil):
    marker = tmp_path / "marker"
    data = pickle.dumps({"blobs": {"conv1_w": evil(marker)}}, protocol=2)
    p = tmp_path / "evil.pkl"
    p.write_bytes(data)
    with pytest.raises(UnsafePickleError, match="refusing to unpickle"):
        safe_loads(data)
    with pytest.raises(UnsafePickleError):
        load_file(Tiny(), p)  # detected as caffe2_pkl, goes through the restricted unpickler
    assert not marker.exists()
    # Sanity: the same pickle does create the marker when loaded without restrictions.
    if evil is _Evil:
        pickle.loads(data)
        assert marker.exists()


@pytest.mark.parametrize("legacy", [False, True])
def test_malicious_torch_file_is_refused(tmp_path, legacy):
    marker = tmp_path / "marker"
    p = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(2), "x": _Evil(marker)}, p, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(UnsafePickleError, match="weights_only"):
        load_file(Tiny(), p)
    assert not marker.exists()


def test_safe_unpickler_admits_plain_data():
    obj = {"blobs": {"a": [1, 2.5, "s", (None, True)]}, "model_iter": 3}
    assert safe_loads(pickle.dumps(obj, protocol=2)) == obj
    assert safe_loads(pickle.dumps(obj, protocol=0)) == obj
    import numpy as np

    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    out = safe_loads(pickle.dumps({"blobs": {"a": arr, "s": np.float32(2.0)}}, protocol=2))
    assert np.array_equal(out["blobs"]["a"], arr) and out["blobs"]["s"] == 2.0


# ----------------------------------------------------------------------------- CLI
def test_cli_download_list_verify_import(server, monkeypatch, isolated, tmp_path):
    body, sd = _tiny_bytes(11)
    prefix = _sha(body)[:8]
    server.routes["/tiny.pth"] = ("ok", body)
    _register(
        monkeypatch,
        _ckpt("v1", f"tiny-{prefix}.pth", [server.url + "/tiny.pth"], sha256_prefix=prefix),
        _ckpt("v2", "tiny2.pth", [server.url + "/none.pth"]),
    )
    runner = CliRunner()
    r = runner.invoke(cli, ["weights", "list", "wtest_tiny*", "--json"])
    assert r.exit_code == 0, r.output
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert rows["wtest_tiny.v1"]["status"] == "absent" and rows["wtest_tiny.v1"]["published_hash"] == f"prefix {prefix}"

    r = runner.invoke(cli, ["weights", "download", "wtest_tiny.v1"])
    assert r.exit_code == 0, r.output
    assert _sha(body) in r.stdout
    r = runner.invoke(cli, ["weights", "list", "wtest_tiny*"])
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("wtest_tiny.v1"))
    assert line.split()[-2:] == ["yes", "prefix"]

    # import a file fetched "by other means": v2 has no hash -> refused with --require-hashes,
    # else trusted and its digest recorded
    other, sd2 = _tiny_bytes(12)
    src = tmp_path / "fetched.pth"
    src.write_bytes(other)
    r = runner.invoke(cli, ["weights", "import", str(src), "--model", "wtest_tiny.v2", "--require-hashes"])
    assert r.exit_code == 1 and "no published SHA-256" in r.output and not (isolated / "tiny2.pth").exists()
    r = runner.invoke(cli, ["weights", "import", str(src), "--model", "wtest_tiny.v2"])
    assert r.exit_code == 0, r.output
    assert "wtest_tiny.v2" in r.stdout and "(recorded, sha256 " + _sha(other) in r.stdout
    assert (isolated / "tiny2.pth").read_bytes() == other
    assert _equal(create_model("wtest_tiny.v2", pretrained=True), sd2)
    # importing a file of the wrong format is refused
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps({"blobs": {}}, protocol=2))
    r = runner.invoke(cli, ["weights", "import", str(bad), "--model", "wtest_tiny.v1"])
    assert r.exit_code == 1 and "caffe2_pkl" in r.output

    r = runner.invoke(cli, ["weights", "verify", "wtest_tiny*"])
    assert r.exit_code == 0, r.output
    assert "wtest_tiny.v1: prefix" in r.stdout and "wtest_tiny.v2: recorded" in r.stdout
    (isolated / "tiny2.pth").write_bytes(body)  # tampered
    r = runner.invoke(cli, ["weights", "verify", "wtest_tiny*"])
    assert r.exit_code == 1 and "wtest_tiny.v2: MISMATCH" in r.stdout


def test_cli_download_offline_names_url_and_import_command(monkeypatch, isolated):
    url = _closed_port_url()
    _register(monkeypatch, _ckpt("v1", "tiny.pth", [url]))
    r = CliRunner().invoke(cli, ["weights", "download", "wtest_tiny.v1"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    (line,) = [ln for ln in r.output.splitlines() if ln.startswith("Error:")]  # one line
    assert url in line and "C3DFEAT_WEIGHTS_MIRROR" in line
    assert "`c3dfeat weights import FILE --model wtest_tiny.v1`" in line


def test_every_registered_checkpoint_is_well_formed():
    """The registry's hash knowledge is consistent with the file names (models.md §0.2)."""
    import re

    from c3dfeat.zoo import all_checkpoints

    known = all_checkpoints()
    assert len(known) >= 30
    for name, c in known:
        assert c.urls, name
        if c.sha256_prefix:
            m = re.search(r"-([a-f0-9]+)\.", c.file_name)  # torch.hub's HASH_REGEX
            assert m and m.group(1) == c.sha256_prefix, name
        if c.sha256:
            assert re.fullmatch(r"[0-9a-f]{64}", c.sha256), name


def test_codecs_encode_only_for_latin1():
    import codecs

    class _Rot13:
        def __reduce__(self):
            return (codecs.encode, ("abc", "rot13"))

    data = pickle.dumps(_Rot13(), protocol=2)
    assert b"_codecs" in data
    with pytest.raises(UnsafePickleError, match="rot13"):
        safe_loads(data)


def test_detect_format_from_contents(tmp_path):
    from c3dfeat.weights.formats import detect_format

    cases = {
        "zip": _tiny_bytes(0)[0],
        "legacy": _tiny_bytes(0, legacy=True)[0],
        "p2": pickle.dumps({"blobs": {}}, protocol=2),
        "p0": pickle.dumps({"blobs": {}}, protocol=0),  # Python 2's default protocol
        "v1": b"\x0a\x03net\x12\x06\x22\x04conv",  # name=1, layers=2 {name=4}
        "v11": b"\x0a\x03net\xa2\x06\x06\x0a\x04conv",  # name=1, layer=100 {name=1}
        "mean": b"\x08\x01\x10\x01\x18\x01\x20\x01\x28\x01\x32\x04\x00\x00\x80\x3f",
    }
    want = {"zip": "torch", "legacy": "torch", "p2": "caffe2_pkl", "p0": "caffe2_pkl",
            "v1": "caffe_v1", "v11": "caffe_v11", "mean": "caffe_mean"}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        assert detect_format(tmp_path / name) == want[name], name
    (tmp_path / "junk").write_bytes(b"\xff\xfe not a checkpoint")
    with pytest.raises(WeightsError, match="cannot tell the format"):
        detect_format(tmp_path / "junk")


def test_download_registered_architecture_end_to_end(server, monkeypatch, isolated):
    """A full-size torchvision-layout checkpoint (mc3_18, 44 MiB) with a torch.hub-style prefix name."""
    import dataclasses

    torch.manual_seed(0)
    sd = create_model("mc3_18").state_dict()  # random init
    buf = io.BytesIO()
    torch.save(sd, buf)
    body = buf.getvalue()
    prefix = _sha(body)[:8]
    spec = _registry._REGISTRY["mc3_18"]
    ckpt = dataclasses.replace(spec.checkpoints[0], file_name=f"mc3_18-{prefix}.pth",
                               urls=(server.url + "/mc3_18.pth",), sha256_prefix=prefix)
    monkeypatch.setitem(_registry._REGISTRY, "mc3_18", dataclasses.replace(spec, checkpoints=(ckpt,)))
    server.routes["/mc3_18.pth"] = ("ok", body)
    model = create_model("mc3_18.kinetics400", pretrained=True)
    assert model.weights_sha256 == _sha(body)
    assert _equal(model, sd)
    assert (isolated / f"mc3_18-{prefix}.pth.sha256").read_text().split()[0] == _sha(body)


def test_strict_load_reports_what_does_not_fit(tmp_path):
    from c3dfeat.errors import ConversionError

    body, sd = _tiny_bytes(13)
    p = tmp_path / "w.pth"
    p.write_bytes(body)
    with pytest.raises(ConversionError, match=r"wrong shape \(fc.weight \(5, 4\) vs \(3, 4\)"):
        load_file(Tiny(num_classes=3), p)
    extra = dict(sd, **{"head.weight": torch.zeros(1)})
    torch.save(extra, p)
    with pytest.raises(ConversionError, match=r"unexpected 1 \(head.weight\)"):
        load_file(Tiny(), p)
    # BatchNorm step counters are not weights: a checkpoint without them still loads strictly
    torch.save({k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}, p)
    model = Tiny()
    load_file(model, p)
    assert _equal(model, sd)
    del sd["fc.bias"]
    torch.save(sd, p)
    with pytest.raises(ConversionError, match=r"missing 1 \(fc.bias\)"):
        load_file(Tiny(), p)
