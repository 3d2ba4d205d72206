"""`c3dfeat extract` as a user meets it: progress (terminal, log, --quiet, --json), Ctrl-C,
bad invocations, --retry-failed."""
from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner

from c3dfeat.cli import cli, progress as progress_mod
from c3dfeat.cli.extract_cmd import EXIT_INTERRUPTED, EXIT_SOME_FAILED
from tests import _extract_tiny
from tests.synth import make_broken, make_video

tiny_models = _extract_tiny.tiny_models  # the fixture that registers the tiny test models

REPO = Path(__file__).resolve().parents[1]
_MAIN = (
    "import sys; sys.path.insert(0, {repo!r}); import tests._extract_tiny as t; t.register(); "
    "from c3dfeat.cli import main; sys.argv[0] = 'c3dfeat'; main()"
)
TINY = ["--model", "tiny3d", "--random-init", "--device", "cpu", "--batch-size", "2"]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli_videos")
    for i in range(4):
        make_video(d / f"v{i}.mp4", 10 + 4 * i, size=(32, 32))
    make_broken(d, "text")
    return d


def _cmd(*args: str) -> list:
    return [sys.executable, "-c", _MAIN.format(repo=str(REPO)), *args]


def test_json_summary_on_stdout(tmp_path, videos, tiny_models):
    out = tmp_path / "f.h5"
    res = CliRunner().invoke(cli, ["extract", str(videos), "-o", str(out), *TINY, "--json", "-q"])
    assert res.exit_code == EXIT_SOME_FAILED, res.output
    d = json.loads(res.stdout)
    assert d["output"] == str(out) and d["ok"] == 4 and d["videos"] == 5
    assert [f["id"] for f in d["failed"]] == ["text.mp4"] and d["failed"][0]["reason"]
    assert d["clips"] > 0 and d["seconds"] > 0 and d["clips_per_second"] > 0
    assert d["random_init"] == ["tiny3d"] and d["interrupted"] is False and d["device"] == "cpu"


def test_quiet_prints_no_progress(tmp_path, videos, tiny_models, monkeypatch):
    monkeypatch.setattr(progress_mod, "LINE_INTERVAL_S", 0.0)
    res = CliRunner().invoke(cli, ["extract", str(videos), "-o", str(tmp_path / "f.h5"), *TINY, "-q"])
    assert res.exit_code == EXIT_SOME_FAILED, res.output
    assert "clips/s," not in res.stderr and "extract:" not in res.stderr


def test_not_a_terminal_prints_plain_lines(tmp_path, videos, tiny_models, monkeypatch):
    monkeypatch.setattr(progress_mod, "LINE_INTERVAL_S", 0.0)  # a line at every event
    res = CliRunner().invoke(cli, ["extract", str(videos), "-o", str(tmp_path / "f.h5"), *TINY])
    assert res.exit_code == EXIT_SOME_FAILED, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("extract: ")]
    assert lines[0].startswith("extract: starting tiny3d -> ")  # at once, before any video
    lines = lines[1:]
    assert len(lines) >= 5, res.stderr
    assert "\x1b[" not in res.stderr  # no terminal control codes in a log
    last = lines[-1]
    assert "videos 5/5" in last and "1 failed" in last and "clips/s" in last and "ETA" in last


def test_line_display_waits_for_its_interval():
    clock = iter([0.0, 10.0, 29.0, 31.0, 45.0, 62.0]).__next__
    lines = []
    stream = SimpleNamespace(write=lines.append, flush=lambda: None)
    d = progress_mod.LineDisplay(stream, interval=30.0, clock=clock)  # type: ignore[arg-type]
    for i in range(5):
        d(SimpleNamespace(videos_done=i, videos_total=9, failed=0, clips_done=10 * i, clips_planned=50,
                          elapsed=float(i), current=f"v{i}", event="batch", clips_per_second=2.0))
    d.close()
    text = "".join(lines)
    assert text.count("extract: ") == 3  # at 31 s, at 62 s, and the final line
    assert "videos 4/9" in text.splitlines()[-1]


def test_eta_counts_clips_of_videos_not_yet_planned():
    t = progress_mod.Tracker()
    ev = dict(videos_total=4, failed=0, elapsed=1.0, current="a", clips_per_second=10.0)
    t.update(SimpleNamespace(videos_done=0, clips_done=0, clips_planned=20, event="start", **ev))
    s = t.update(SimpleNamespace(videos_done=0, clips_done=10, clips_planned=20, event="batch", **ev))
    # 10 planned clips left + 3 unplanned videos x 20 clips each, at 10 clips/s
    assert s.eta == pytest.approx(7.0)


def test_no_videos_is_bad_usage(tmp_path, tiny_models):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt.bak").write_text("x")
    res = CliRunner().invoke(cli, ["extract", str(tmp_path / "empty"), "-o", str(tmp_path / "f.h5"), *TINY])
    assert res.exit_code == 2, res.output
    errors = [ln for ln in res.output.splitlines() if not ln.startswith("extract: starting")]
    assert len(errors) == 1 and errors[0].startswith("Error: ")  # one line, no traceback
    assert "empty" in errors[0] and ".mp4" in errors[0]


def test_a_decoder_that_does_not_load_stops_before_any_video_is_failed_for_it(tmp_path, videos, tiny_models,
                                                                             monkeypatch):
    monkeypatch.setitem(sys.modules, "decord", None)  # the package missing
    out = tmp_path / "f.h5"
    res = CliRunner().invoke(cli, ["extract", str(videos), "-o", str(out), *TINY, "--decoder", "decord"])
    assert res.exit_code == 1, res.output
    errors = [ln for ln in res.output.splitlines() if not ln.startswith("extract: starting")]
    assert errors == [errors[0]] and errors[0].startswith("Error: the decord backend is not installed")
    assert "pip install decord" in errors[0] and not out.exists()  # no file of "failed" videos


def test_missing_output_folder_is_one_line(tmp_path, videos):
    res = CliRunner().invoke(cli, ["extract", str(videos), "-o", str(tmp_path / "nope" / "f.h5")])
    assert res.exit_code == 2
    assert res.output.strip().count("\n") == 0 and "does not exist" in res.output
    assert not (tmp_path / "nope").exists()


def test_crop_alias_and_fps_zero(tmp_path, videos, tiny_models):
    out = tmp_path / "f.h5"
    res = CliRunner().invoke(cli, ["extract", str(videos / "v0.mp4"), "-o", str(out), *TINY, "-q",
                                   "--crop", "3", "--fps", "0"])
    assert res.exit_code == 0, res.output
    from c3dfeat.store import FeatureFile

    with FeatureFile(out) as ff:
        prov = ff.provenance["models"]["tiny3d"]
        assert prov["crops"] == 3 and prov["sampling"]["fps"] is None
    res = CliRunner().invoke(cli, ["extract", str(videos), "-o", str(out), "--crops", "3", "--crop", "10"])
    assert res.exit_code == 2 and "disagree" in res.output


def test_a_batch_the_device_cannot_hold_is_one_line_naming_a_batch_size_and_the_run_resumes(
        tmp_path, videos, tiny_models, commit_each_video, monkeypatch):
    from c3dfeat.pipeline import batching
    from c3dfeat.store import STATE_COMPLETE, STATE_INCOMPLETE, FeatureFile

    forward, calls = batching.extract_layers, []

    def runs_out_at_the_sixth_batch(net, x, layers):
        calls.append(len(x))
        if len(calls) == 6:  # what the caching allocator raises on a GPU
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.06 GiB. GPU 0 has a total "
                                         "capacity of 7.79 GiB of which 1.02 GiB is free.\nmore details")
        return forward(net, x, layers)

    monkeypatch.setattr(batching, "extract_layers", runs_out_at_the_sixth_batch)
    out = tmp_path / "f.h5"
    args = ["extract", str(videos), "-o", str(out), *TINY, "--workers", "1", "-q"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 1, res.output
    assert res.stderr.splitlines() == [
        "Error: tiny3d: a batch of 2 clip(s) does not fit in the memory of cpu (CUDA out of memory. Tried to "
        "allocate 3.06 GiB. GPU 0 has a total capacity of 7.79 GiB of which 1.02 GiB is free.); rerun with a "
        "smaller --batch-size, e.g. 1; the videos committed so far stay in the file and the run resumes"]
    with FeatureFile(out) as ff:
        assert ff.state == STATE_INCOMPLETE and ff.num_videos >= 1  # what was committed stays
    monkeypatch.setattr(batching, "extract_layers", forward)
    res = CliRunner().invoke(cli, [*args, "--batch-size", "1", "--json"])
    assert res.exit_code == EXIT_SOME_FAILED, res.output
    d = json.loads(res.stdout)
    assert d["skipped"] >= 1 and d["skipped"] + d["ok"] + len(d["failed"]) == 5 and d["batch_size"] == 1
    with FeatureFile(out) as ff:
        assert ff.state == STATE_COMPLETE


def test_retry_failed_extracts_failed_videos_again(tmp_path, tiny_models):
    d = tmp_path / "in"
    make_video(d / "a.mp4", 10, size=(32, 32))
    bad = make_broken(d, "text")
    out = tmp_path / "f.h5"
    args = ["extract", str(d), "-o", str(out), *TINY, "-q", "--json"]
    assert CliRunner().invoke(cli, args).exit_code == EXIT_SOME_FAILED
    bad.unlink()
    make_video(bad, 10, size=(32, 32))  # fixed: now a real video under the same name
    res = CliRunner().invoke(cli, args + ["--retry-failed"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["ok"] == 1


def test_ctrl_c_saves_and_says_how_to_resume(tmp_path, videos):
    from c3dfeat.store import FeatureFile

    out = tmp_path / "f.h5"
    cmd = _cmd("extract", str(videos), "-o", str(out), *TINY, "-q")
    env = dict(os.environ, TINY3D_SLEEP="0.3")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 120 and proc.poll() is None:
        try:
            with FeatureFile(out) as ff:
                if ff.num_videos >= 1:
                    break
        except Exception:  # noqa: BLE001 - not created yet, or being written
            pass
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_INTERRUPTED, err
    assert "saved in" in err and str(out) in err and "run the same command to resume" in err
    assert "Traceback" not in err
    with FeatureFile(out) as ff:
        saved = ff.num_videos
    assert saved >= 1
    done = subprocess.run(cmd, env=dict(os.environ), capture_output=True, text=True, timeout=300)
    assert done.returncode == EXIT_SOME_FAILED, done.stderr
    with FeatureFile(out) as ff:
        assert ff.num_videos == 5


def _read_until(fd: int, needle: bytes, deadline: float, seen: bytes = b"") -> bytes:
    """What the terminal `fd` shows, read until `needle` appears, the deadline passes or the
    program closes it."""
    while time.monotonic() < deadline and needle not in seen:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                seen += os.read(fd, 4096)
            except OSError:
                break
    return seen


def test_terminal_shows_progress_within_5_seconds(tmp_path, videos):
    """On a terminal (a pty), something is on screen within 5 s of the start."""
    master, slave = pty.openpty()
    # the real entry point and the default model (random weights: no download): the test models'
    # registration would import torch before the CLI starts, which is what the display must not wait for
    cmd = [sys.executable, "-m", "c3dfeat", "extract", str(videos), "-o", str(tmp_path / "f.h5"),
           "--random-init", "--device", "cpu", "--batch-size", "1"]
    env = dict(os.environ, TERM="xterm", COLUMNS="120")
    env.pop("NO_COLOR", None)
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    try:
        seen = _read_until(master, b"extract", t0 + 5.0)
        first = time.monotonic() - t0
        assert b"extract" in seen, f"nothing within {first:.1f} s: {seen[-500:]!r}"
        # the live line reaches the clip counts while the run goes on
        seen = _read_until(master, b"clips", t0 + 120, seen)
        assert b"clips" in seen, seen[-2000:]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        os.close(master)
