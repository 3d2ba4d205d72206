"""Install everywhere: decord only where it has wheels, PyAV everywhere; no decord needed to run."""
from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement

SETUP_CFG = Path(__file__).resolve().parents[1] / "setup.cfg"


def _requirements():
    cfg = configparser.ConfigParser()
    cfg.read(SETUP_CFG)
    lines = [ln.strip() for ln in cfg["options"]["install_requires"].splitlines()]
    return {r.name: r for r in (Requirement(ln) for ln in lines if ln and not ln.startswith("#"))}


def test_decord_only_on_platforms_with_wheels():
    reqs = _requirements()
    decord, av = reqs["decord"], reqs["av"]
    assert av.marker is None  # PyAV: every platform
    assert decord.marker is not None
    platforms = {  # decord 0.6.0 publishes manylinux2010_x86_64 and win_amd64 wheels only
        ("Linux", "x86_64"): True, ("Windows", "AMD64"): True, ("Linux", "aarch64"): False,
        ("Darwin", "arm64"): False, ("Darwin", "x86_64"): False,
    }
    for (system, machine), expected in platforms.items():
        env = {"platform_system": system, "platform_machine": machine}
        assert decord.marker.evaluate(env) is expected, (system, machine)


def test_runs_without_decord(tmp_path):
    """With decord missing, the CLI starts and PyAV (the default decoder) reads a video."""
    from tests.synth import make_video

    video = make_video(tmp_path / "v.mp4", 6, size=(32, 32))
    code = (
        "import sys; sys.modules['decord'] = None\n"  # `import decord` raises ImportError
        "from c3dfeat.cli import cli\n"
        "cli.main(['extract', '--help'], standalone_mode=False)\n"
        "from c3dfeat.video import open_video\n"
        f"with open_video({str(video)!r}) as v: print('FRAMES', v.num_frames)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--decoder" in proc.stdout and "FRAMES 6" in proc.stdout
