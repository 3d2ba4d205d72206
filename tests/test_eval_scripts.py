"""scripts/reproduce_*.sh run plain c3dfeat commands: every one must parse with the real CLI."""
import re
import shlex
from pathlib import Path

import click
import pytest

from c3dfeat.cli import cli

SCRIPTS = sorted((Path(__file__).parent.parent / "scripts").glob("reproduce_*.sh"))


def c3dfeat_commands(script: Path):
    text = script.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        line = line.strip()
        if line.startswith('"$C3DFEAT"'):
            line = line.split(">")[0]  # drop output redirection
            line = line.replace('"$C3DFEAT"', "").replace('"$DEVICE"', "cpu")
            yield shlex.split(line)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_reproduce_script_commands_parse(script, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for d in ("UCF-101", "ucfTrainTestlist", "hmdb51", "testTrainMulti_7030_splits"):
        (tmp_path / d).mkdir()
    commands = list(c3dfeat_commands(script))
    names = [c[0] for c in commands]
    assert {"weights", "extract", "linear-eval"} <= set(names), names
    for args in commands:
        # walk down nested groups (weights download); click validates every option and argument
        group, rest = cli, list(args)
        ctx = cli.make_context("c3dfeat", list(args))
        while isinstance(group, click.Group):
            name, cmd, rest = group.resolve_command(ctx, rest)
            assert cmd is not None, args
            ctx = cmd.make_context(name, list(rest), parent=ctx)
            group = cmd
    # the evaluation steps use the official split lists, with JSON output for the comparison
    text = script.read_text()
    assert re.search(r"linear-eval \S+ --dataset (ucf101|hmdb51) --splits \S+ --json", text)
