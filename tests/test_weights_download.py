"""Weights on first use (issue 9 items 1-3): trust on first use, --require-hashes, the mirror,
download progress, the offline message, and `c3dfeat.extract` with no flag.

A local HTTP server on 127.0.0.1 serves files in the real formats, written by the tests' own
writers: torch.save state_dicts and Caffe `.binaryproto` mean cubes (tests/test_convert.py's wire
writer). The full-size C3D `.caffemodel` case is tests/test_convert.py's
``test_c3d_first_use_downloads_weights_and_mean_from_mirror``. Digests are computed here from the
bytes served, never taken from the code under test.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import c3dfeat
from c3dfeat.cli import cli
from c3dfeat.errors import ChecksumError, ConfigError, WeightsError, WeightsNotFoundError
from c3dfeat.models._registry import _REGISTRY
from c3dfeat.specs import Checkpoint
from c3dfeat.store import FeatureFile
from c3dfeat.zoo import create_model, load_mean_cube
from tests import _extract_tiny, _weights_server
from tests._weights_server import all_files, closed_port_url
from tests.synth import make_video
from tests.test_convert import _blob_v10, _write

isolated, server = _weights_server.isolated, _weights_server.server  # fixtures used here

NAME = "tiny3d_w"  # a tiny extraction model with published URLs and NO published hash
WEIGHTS_FILE, MEAN_FILE = "tiny3d_w-kinetics.pth", "tiny3d_w_mean.binaryproto"


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _weights_bytes(seed: int = 0) -> tuple:
    torch.manual_seed(seed)
    sd = _extract_tiny.Tiny3D(num_classes=5).state_dict()
    buf = io.BytesIO()
    torch.save(sd, buf)
    return buf.getvalue(), sd


def _mean_bytes(tmp_path: Path, seed: int = 0) -> tuple:
    """A C3D-layout BlobProto (1 x 3 x T x H x W) for the tiny model's 4 x 32 x 32 resized clip."""
    cube = np.random.default_rng(seed).uniform(0, 0.2, (1, 3, 4, 32, 32)).astype(np.float32)
    path = tmp_path / "mean.binaryproto"
    _write(path, _blob_v10(cube, cube.shape))
    return path.read_bytes(), cube[0]


@pytest.fixture
def tiny_w(monkeypatch, server):
    """Register `tiny3d_w`: weights + mean file, published on an unreachable host (the mirror must
    serve them); removed afterwards."""
    dead = closed_port_url("")
    spec = _extract_tiny._spec(NAME, 24)
    weights = Checkpoint(tag="kinetics", file_name=WEIGHTS_FILE, urls=(f"{dead}/pub/{WEIGHTS_FILE}",),
                         format="state_dict", num_classes=5, dataset="test")
    mean = Checkpoint(tag="mean", file_name=MEAN_FILE, urls=(f"{dead}/pub/{MEAN_FILE}",),
                      format="caffe_mean", num_classes=0, dataset="test")
    spec = dataclasses.replace(spec, checkpoints=(weights, mean),
                               preprocessing=dataclasses.replace(spec.preprocessing, mean_cube="mean"))
    monkeypatch.setitem(_REGISTRY, NAME, spec)
    return spec


def _serve(server, tmp_path, prefix="/mirror"):
    body, sd = _weights_bytes()
    mean, cube = _mean_bytes(tmp_path)
    server.routes[f"{prefix}/{WEIGHTS_FILE}"] = ("ok", body)
    server.routes[f"{prefix}/{MEAN_FILE}"] = ("ok", mean)
    return body, sd, mean, cube


def _equal(model, sd) -> bool:
    own = model.state_dict()
    return own.keys() == sd.keys() and all(torch.equal(own[k], sd[k]) for k in sd)


# ----------------------------------------------------------------------------- first use, second use
def test_first_use_downloads_with_progress_and_records_second_use_does_not(
        tiny_w, server, isolated, tmp_path, monkeypatch, capsys):
    body, sd, mean, cube = _serve(server, tmp_path)
    monkeypatch.setenv("C3DFEAT_WEIGHTS_MIRROR", server.url + "/mirror")
    model = create_model(NAME, pretrained=True)
    assert _equal(model, sd) and model.weights_sha256 == _sha(body)
    err = capsys.readouterr().err.splitlines()
    # progress (plain lines: stderr is not a terminal here), then one trust-on-first-use line each
    assert f"c3dfeat: downloading {WEIGHTS_FILE} from {server.url}/mirror/{WEIGHTS_FILE}" in err[0]
    tofu = [ln for ln in err if "first download" in ln]
    assert tofu == [
        f"c3dfeat: first download of {NAME}.kinetics from {server.url}/mirror/{WEIGHTS_FILE}, "
        f"sha256 {_sha(body)}; later loads are checked against it ({WEIGHTS_FILE}.sha256)",
        f"c3dfeat: first download of {NAME}.mean from {server.url}/mirror/{MEAN_FILE}, "
        f"sha256 {_sha(mean)}; later loads are checked against it ({MEAN_FILE}.sha256)",
    ]
    assert all_files(isolated) == sorted([WEIGHTS_FILE, WEIGHTS_FILE + ".sha256", MEAN_FILE, MEAN_FILE + ".sha256"])
    assert (isolated / MEAN_FILE).read_bytes() == mean
    # second use: everything local and checked, nothing downloaded, nothing announced
    assert np.array_equal(load_mean_cube(NAME), cube)
    assert create_model(NAME, pretrained=True).weights_sha256 == _sha(body)
    assert sum(server.hits.values()) == 2
    assert capsys.readouterr().err == ""


def test_plain_progress_lines_in_a_log(tiny_w, server, isolated, tmp_path, monkeypatch, capsys):
    """Not a terminal (a cluster job's log): plain lines with percent and MiB, no control characters."""
    from c3dfeat.weights import fetch

    body, *_ = _serve(server, tmp_path)
    monkeypatch.setattr(fetch, "_CHUNK", 4096)
    monkeypatch.setattr(fetch, "PLAIN_PROGRESS_EVERY_S", 0.0)  # a line per chunk instead of every 10 s
    create_model(NAME, pretrained=True, weights_mirror=server.url + "/mirror")
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith(f"c3dfeat: {WEIGHTS_FILE}:")]
    assert len(lines) == -(-len(body) // 4096)
    assert lines[-1].startswith(f"c3dfeat: {WEIGHTS_FILE}: 100%, ") and " MiB/s" in lines[-1]
    assert "\x1b" not in err and "\r" not in err


def test_progress_can_be_silenced(tiny_w, server, isolated, tmp_path, monkeypatch, capsys):
    _serve(server, tmp_path)
    create_model(NAME, pretrained=True, weights_mirror=server.url + "/mirror", progress=False)
    err = capsys.readouterr().err
    assert "downloading" not in err and err.count("first download") == 2  # the trust line stays


# ----------------------------------------------------------------------------- --require-hashes
def test_require_hashes_refuses_before_any_transfer(tiny_w, server, isolated, tmp_path, monkeypatch):
    _serve(server, tmp_path)
    mirror = server.url + "/mirror"
    with pytest.raises(WeightsError, match=f"{NAME}.kinetics .*no published SHA-256"):
        create_model(NAME, pretrained=True, weights_mirror=mirror, require_hashes=True)
    monkeypatch.setenv("C3DFEAT_REQUIRE_HASHES", "1")
    with pytest.raises(WeightsError, match="no published SHA-256"):
        load_mean_cube(NAME, weights_mirror=mirror)
    r = CliRunner().invoke(cli, ["weights", "download", NAME, "--weights-mirror", mirror])
    assert r.exit_code == 1 and "no published SHA-256" in r.output and "Traceback" not in r.output
    assert sum(server.hits.values()) == 0 and all_files(isolated) == []


def test_require_hashes_cli_flag(tiny_w, server, isolated, tmp_path):
    _serve(server, tmp_path)
    args = ["weights", "download", NAME, "--weights-mirror", server.url + "/mirror"]
    r = CliRunner().invoke(cli, args + ["--require-hashes"])
    assert r.exit_code == 1 and "--require-hashes" in r.output and all_files(isolated) == []
    r = CliRunner().invoke(cli, args)  # the mean file comes with the weights
    assert r.exit_code == 0, r.output
    assert [ln.split(":")[0] for ln in r.stdout.splitlines()] == [f"{NAME}.kinetics", f"{NAME}.mean"]
    assert "(recorded, sha256" in r.stdout


# ----------------------------------------------------------------------------- corrupted downloads
def test_corrupted_download_refused_and_cache_left_empty(server, isolated, monkeypatch):
    """A published hash and bytes that differ by one flipped byte: refused, nothing stays
    (no file, no .sha256, no temporary), on both the mirror and the published URL."""
    from tests.test_weights import _ckpt, _register, _tiny_bytes

    body, _ = _tiny_bytes(1)
    bad = bytearray(body)
    bad[len(bad) // 2] ^= 0xFF
    server.routes["/m/tiny.pth"] = ("ok", bytes(bad))
    server.routes["/pub/tiny.pth"] = ("ok", bytes(bad))
    _register(monkeypatch, _ckpt("v1", "tiny.pth", [server.url + "/pub/tiny.pth"], sha256=_sha(body)))
    with pytest.raises(ChecksumError, match="does not match the published") as e:
        create_model("wtest_tiny", pretrained=True, weights_mirror=server.url + "/m")
    assert "\n" not in str(e.value)
    assert all_files(isolated) == []
    assert server.hits["/m/tiny.pth"] == 1 and server.hits["/pub/tiny.pth"] == 1  # not retried


def test_error_page_instead_of_a_no_hash_file_is_refused(tiny_w, server, isolated, tmp_path, monkeypatch):
    """Without a published hash only the format can tell: an HTML page served with 200 (what file
    hosts send for a missing file) is not a state_dict and never gets a record."""
    server.routes[f"/mirror/{WEIGHTS_FILE}"] = ("ok", b"<!DOCTYPE html><html><body>quota exceeded</body></html>")
    with pytest.raises(ChecksumError, match=r"not a state_dict file \(no known checkpoint format"):
        create_model(NAME, pretrained=True, weights_mirror=server.url + "/mirror")
    assert all_files(isolated) == []


# ----------------------------------------------------------------------------- the mirror
def test_mirror_tried_first_then_published_urls(server, isolated, monkeypatch):
    from tests.test_weights import _ckpt, _register, _tiny_bytes

    body, sd = _tiny_bytes(2)
    server.routes["/pub/tiny.pth"] = ("ok", body)
    _register(monkeypatch, _ckpt("v1", "tiny.pth", [server.url + "/pub/tiny.pth"], sha256=_sha(body)))
    # the mirror has the file: the published URL is never contacted
    server.routes["/m1/tiny.pth"] = ("ok", body)
    assert _equal(create_model("wtest_tiny", pretrained=True, weights_mirror=server.url + "/m1/"), sd)
    assert server.hits["/m1/tiny.pth"] == 1 and server.hits["/pub/tiny.pth"] == 0
    # a mirror without the file (404), or with other bytes: the published URL follows
    for mirror, route in (("/m2", None), ("/m3", ("ok", b"other bytes"))):
        for p in isolated.iterdir():
            p.unlink()
        if route:
            server.routes[mirror + "/tiny.pth"] = route
        monkeypatch.setenv("C3DFEAT_WEIGHTS_MIRROR", server.url + mirror)
        assert _equal(create_model("wtest_tiny", pretrained=True), sd)
        assert server.hits[mirror + "/tiny.pth"] == 1
    assert server.hits["/pub/tiny.pth"] == 2


def test_mirror_url_quotes_the_listed_file_name():
    from c3dfeat.weights.policy import mirror_from, mirror_url

    assert mirror_url("http://m/c3dfeat/", "a b%.pth") == "http://m/c3dfeat/a%20b%25.pth"
    assert mirror_from("  ") is None and mirror_from("https://x/y/") == "https://x/y"
    with pytest.raises(ConfigError, match="not a URL.*C3DFEAT_WEIGHTS"):
        mirror_from("/data/weights")


def test_weights_list_shows_the_file_names_the_mirror_must_hold(tiny_w):
    r = CliRunner().invoke(cli, ["weights", "list", NAME, "--json"])
    assert r.exit_code == 0, r.output
    assert [row["file"] for row in json.loads(r.stdout)] == [WEIGHTS_FILE, MEAN_FILE]


# ----------------------------------------------------------------------------- offline
def test_offline_one_line_with_urls_mirror_variable_and_import_command(tiny_w, isolated, monkeypatch):
    mirror = closed_port_url("/mirror")
    monkeypatch.setenv("C3DFEAT_WEIGHTS_MIRROR", mirror)
    with pytest.raises(WeightsNotFoundError) as e:
        create_model(NAME, pretrained=True)
    msg = str(e.value)
    assert "\n" not in msg
    assert WEIGHTS_FILE in msg and f"{mirror}/{WEIGHTS_FILE}" in msg and tiny_w.checkpoints[0].urls[0] in msg
    assert "C3DFEAT_WEIGHTS_MIRROR" in msg
    assert f"`c3dfeat weights import FILE --model {NAME}.kinetics`" in msg
    assert all_files(isolated) == []
    r = CliRunner().invoke(cli, ["weights", "download", NAME])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert [ln for ln in r.output.splitlines() if ln.startswith("Error:")] == [f"Error: {msg}"]


def test_import_then_offline_use(tiny_w, server, isolated, tmp_path, monkeypatch):
    """The air-gapped workflow the offline message prints: import the file, then load with no network."""
    body, sd = _weights_bytes()
    src = tmp_path / "fetched-elsewhere.pth"
    src.write_bytes(body)
    mean, cube = _mean_bytes(tmp_path)
    msrc = tmp_path / "fetched-mean.binaryproto"
    msrc.write_bytes(mean)
    runner = CliRunner()
    for f, n in ((src, f"{NAME}.kinetics"), (msrc, f"{NAME}.mean")):
        r = runner.invoke(cli, ["weights", "import", str(f), "--model", n])
        assert r.exit_code == 0, r.output
    monkeypatch.setenv("C3DFEAT_WEIGHTS_MIRROR", closed_port_url("/m"))
    assert _equal(create_model(NAME, pretrained=True), sd)
    assert np.array_equal(load_mean_cube(NAME), cube)


# ----------------------------------------------------------------------------- extraction, no flag
def test_extract_downloads_weights_and_mean_on_first_use_then_reuses_them(
        tiny_w, server, isolated, tmp_path, monkeypatch):
    body, _, mean, cube = _serve(server, tmp_path)
    monkeypatch.setenv("C3DFEAT_WEIGHTS_MIRROR", server.url + "/mirror")
    video = make_video(tmp_path / "v" / "a.mkv", 12, size=(40, 48), fps=10)
    r1 = c3dfeat.extract([video.parent], tmp_path / "one.h5", [NAME], device="cpu", batch_size=2)
    assert r1.ok == 1 and r1.random_init == []
    assert sorted(server.hits) == sorted([f"/mirror/{MEAN_FILE}", f"/mirror/{WEIGHTS_FILE}"])
    assert sum(server.hits.values()) == 2
    info = FeatureFile(tmp_path / "one.h5").model_info(NAME)
    recorded = json.dumps(dataclasses.asdict(info) if dataclasses.is_dataclass(info) else info, default=str)
    assert _sha(body) in recorded  # the provenance names the weights file that was checked
    cube_sha = hashlib.sha256(np.ascontiguousarray(cube, dtype=np.float32).tobytes()).hexdigest()
    assert cube_sha in recorded  # and the mean cube that came with them
    # second run (another output, so it really extracts): no download
    r2 = c3dfeat.extract([video.parent], tmp_path / "two.h5", [NAME], device="cpu", batch_size=2)
    assert r2.ok == 1 and sum(server.hits.values()) == 2
    a = FeatureFile(tmp_path / "one.h5").clips("a.mkv", NAME, "conv")
    b = FeatureFile(tmp_path / "two.h5").clips("a.mkv", NAME, "conv")
    assert np.array_equal(a, b)


def test_cli_extract_first_use_no_flag(tiny_w, server, isolated, tmp_path, monkeypatch):
    _serve(server, tmp_path)
    monkeypatch.setenv("C3DFEAT_WEIGHTS_MIRROR", server.url + "/mirror")
    video = make_video(tmp_path / "v" / "a.mkv", 8, size=(40, 48), fps=10)
    r = CliRunner().invoke(cli, ["extract", str(video.parent), "-o", str(tmp_path / "f.h5"), "--model", NAME,
                                 "--device", "cpu", "--quiet"])
    assert r.exit_code == 0, r.output
    assert f"first download of {NAME}.kinetics" in r.stderr
    assert sum(server.hits.values()) == 2


# ----------------------------------------------------------------------------- one download at a time
def test_runs_starting_together_download_a_file_once(tiny_w, server, isolated, tmp_path, capsys):
    """Shards or Ray workers starting at once on one weights directory: the first downloads, the
    others wait for it and use its file. (Threads here: the lock is an flock, which holds between
    separately opened files alike, in one process or many.)"""
    import threading

    from c3dfeat.weights.loading import resolve_checkpoint_file

    body, *_ = _serve(server, tmp_path)
    server.routes[f"/mirror/{WEIGHTS_FILE}"] = ("slow", body)
    ckpt, mirror = tiny_w.checkpoints[0], server.url + "/mirror"
    got: list = []
    runs = [threading.Thread(target=lambda: got.append(resolve_checkpoint_file(f"{NAME}.kinetics", ckpt,
                                                                               mirror=mirror)))
            for _ in range(3)]
    for t in runs:
        t.start()
    for t in runs:
        t.join(timeout=60)
    assert server.hits[f"/mirror/{WEIGHTS_FILE}"] == 1
    assert len(got) == 3 and {(v.path, v.digest) for v in got} == {(isolated / WEIGHTS_FILE, _sha(body))}
    assert all_files(isolated) == [WEIGHTS_FILE, WEIGHTS_FILE + ".sha256"]  # the lock is gone too
    err = capsys.readouterr().err
    assert err.count("first download of") == 1
    assert f"c3dfeat: waiting for another process downloading {WEIGHTS_FILE} into {isolated}" in err


def test_a_download_lock_left_by_a_killed_process_does_not_block(tiny_w, server, isolated, tmp_path):
    import subprocess
    import sys

    from c3dfeat.weights.loading import resolve_checkpoint_file

    body, *_ = _serve(server, tmp_path)
    isolated.mkdir(parents=True)
    lock = isolated / f".{WEIGHTS_FILE}.lock"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
        "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(600)"), str(lock)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        holder.kill()  # mid-download: the lock file stays, its flock goes with the process
        holder.wait()
        assert lock.exists()
        v = resolve_checkpoint_file(f"{NAME}.kinetics", tiny_w.checkpoints[0], mirror=server.url + "/mirror",
                                    progress=False)
    finally:
        holder.kill()
    assert v.digest == _sha(body) and server.hits[f"/mirror/{WEIGHTS_FILE}"] == 1
    assert not lock.exists()


def test_the_download_lock_admits_one_at_a_time_though_each_holder_removes_it(tmp_path):
    """Waiters on a lock file its holder removed must not go in together (each re-checks that
    its lock is on the file of that name)."""
    import threading
    import time

    from c3dfeat.weights.fetch import download_lock

    inside, most, order = [0], [0], []
    guard = threading.Lock()

    def hold(i: int) -> None:
        with download_lock(tmp_path, "w.pth", announce=False):
            with guard:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
                order.append(i)
            time.sleep(0.2)
            with guard:
                inside[0] -= 1

    runs = [threading.Thread(target=hold, args=(i,)) for i in range(4)]
    t0 = time.monotonic()
    # 1 waits on 0's file, which 0 removes at 0.2 s; 2 and 3 come while 1 is inside
    for t, start in zip(runs, (0.0, 0.02, 0.3, 0.32)):
        time.sleep(max(0.0, t0 + start - time.monotonic()))
        t.start()
    for t in runs:
        t.join(timeout=30)
    assert sorted(order) == [0, 1, 2, 3] and most[0] == 1
    assert list(tmp_path.iterdir()) == []
