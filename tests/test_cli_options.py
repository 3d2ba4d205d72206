"""One vocabulary across commands, fast --help (no torch), defaults taken from the library."""
from __future__ import annotations

import inspect
import json
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from c3dfeat.cli import cli
from c3dfeat.specs import COMPUTE_DTYPES, CROP_MODES
from c3dfeat.video import BACKENDS

_NO_TORCH = """
import sys
from c3dfeat.cli import cli
for args in {argv!r}:
    try:
        cli.main(args, prog_name="c3dfeat", standalone_mode=False)
    except SystemExit:
        pass
heavy = sorted(m for m in ("torch", "h5py", "sklearn", "matplotlib", "c3dfeat.models") if m in sys.modules)
print("HEAVY=" + ",".join(heavy))
"""


def _commands():
    out = []
    for name, cmd in cli.commands.items():
        if isinstance(cmd, click.Group):
            out += [[name, sub, "--help"] for sub in cmd.commands]
        out.append([name, "--help"])
    return out


def test_help_of_every_command_does_not_import_torch():
    argv = [["--help"], *_commands()]
    code = _NO_TORCH.format(argv=argv)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "HEAVY=", proc.stdout[-2000:]


def _params(path):
    cmd = cli
    for p in path:
        cmd = cmd.commands[p]
    return {p.name: p for p in cmd.params}


@pytest.mark.parametrize("path", [["extract"], ["linear-eval"], ["pca"]])
def test_device_defaults_to_auto_everywhere(path):
    assert _params(path)["device"].default == "auto"


def test_shared_options_have_one_definition():
    """--device, --model (feature files), --layer, --weights-dir: same help in every command."""
    helps = {}
    for path in (["extract"], ["linear-eval"], ["pca"], ["tsne"], ["models"], ["export"]):
        for name, p in _params(path).items():
            if name in ("device", "layer", "weights_dir", "norm", "seed", "dataset", "labels_csv"):
                helps.setdefault(name, set()).add((p.help, str(p.type), p.default))
    assert helps and all(len(v) == 1 for v in helps.values()), helps


def test_tsne_lists_no_split_options():
    names = set(_params(["tsne"]))
    assert not names & {"split", "train_list", "test_list", "folds", "allow_missing", "C", "solver"}
    assert {"dataset", "labels_csv", "seed", "perplexity", "out"} <= names


def test_extract_choices_and_defaults_come_from_the_library():
    from c3dfeat.pipeline import extract

    p = _params(["extract"])
    assert tuple(p["dtype"].type.choices) == COMPUTE_DTYPES
    assert tuple(p["decoder"].type.choices) == BACKENDS
    assert tuple(p["crops"].type.choices) == tuple(str(c) for c in CROP_MODES)
    assert p["crop_deprecated"].hidden
    sig = inspect.signature(extract).parameters
    for name in ("device", "dtype", "batch_size", "workers", "decoder", "tail", "crop_reduce", "engine",
                 "fps", "weights_dir", "ray_address", "weights_mirror"):
        assert p[name].default == sig[name].default, name
    for name in ("random_init", "half", "overwrite", "retry_failed", "allow_tf32", "require_hashes"):
        assert p[name].is_flag and sig[name].default in (False, None), name
    assert sig["crops"].default == CROP_MODES[0]
    from c3dfeat.pipeline.api import ENGINES

    assert tuple(p["engine"].type.choices) == ENGINES
    # every keyword of extract() that a user sets has an option
    internal = {"inputs", "output", "models", "weights", "progress", "command_line", "max_pending", "crop"}
    assert set(sig) - internal - set(p) == set()


def test_weights_options_read_the_environment():
    p = _params(["extract"])
    assert p["require_hashes"].envvar == "C3DFEAT_REQUIRE_HASHES"
    assert p["weights_mirror"].envvar == "C3DFEAT_WEIGHTS_MIRROR"
    res = CliRunner().invoke(cli, ["extract", "--help"])
    assert "C3DFEAT_WEIGHTS_MIRROR" in res.output and "--crops [center|3|10]" in res.output
    assert "--crop " not in res.output  # the deprecated alias is hidden


def test_models_pattern_matching_nothing_is_exit_2():
    res = CliRunner().invoke(cli, ["models", "nothing_like_this*"])
    assert res.exit_code == 2 and "nothing_like_this*" in res.output
    res = CliRunner().invoke(cli, ["models", "--json", "nothing_like_this*"])
    assert res.exit_code == 2


def test_models_json_still_lists(tmp_path):
    res = CliRunner().invoke(cli, ["models", "--json", "r3d_18"])
    assert res.exit_code == 0, res.output
    assert [m["name"] for m in json.loads(res.stdout)] == ["r3d_18"]


def test_extract_passes_options_and_environment_to_the_api(tmp_path, monkeypatch):
    """What the user types (or exports) reaches c3dfeat.extract under the API's names."""
    import c3dfeat.pipeline as pipeline

    seen = {}

    def fake_extract(inputs, output, models, **kw):
        seen.update(kw, inputs=inputs, output=output, models=models)
        raise SystemExit(0)  # stop here: nothing to extract

    monkeypatch.setattr(pipeline, "extract", fake_extract)
    (tmp_path / "v.mp4").write_bytes(b"")
    env = {"C3DFEAT_REQUIRE_HASHES": "1", "C3DFEAT_WEIGHTS_MIRROR": "http://127.0.0.1:9/m"}
    res = CliRunner().invoke(cli, ["extract", str(tmp_path / "v.mp4"), "-o", str(tmp_path / "f.h5"),
                                   "--crop", "10", "--fps", "0", "--retry-failed", "-m", "c3d:fc6-1"], env=env)
    assert res.exit_code == 0, res.output
    assert seen["crops"] == 10 and seen["fps"] == 0 and seen["retry_failed"] is True
    assert seen["require_hashes"] is True and seen["weights_mirror"] == "http://127.0.0.1:9/m"
    assert seen["device"] == "auto" and seen["batch_size"] is None and seen["engine"] == "local"
    assert [(r.name, r.layers) for r in seen["models"]] == [("c3d", ("fc6-1",))]
    assert callable(seen["progress"]) and seen["command_line"].startswith("c3dfeat ")
    res = CliRunner().invoke(cli, ["extract", str(tmp_path / "v.mp4"), "-o", str(tmp_path / "f.h5"),
                                   "--weights-mirror", "http://other/"], env={"C3DFEAT_REQUIRE_HASHES": "0"})
    assert seen["require_hashes"] is False and seen["weights_mirror"] == "http://other/"
