"""`c3dfeat models`: the model zoo as a table (or JSON)."""
from __future__ import annotations

import json
from typing import Optional

import click

from c3dfeat.cli import cli


def _fmt_resize(resize) -> str:
    return f"{resize[0]}x{resize[1]}" if isinstance(resize, list) else f"short {resize}"


def _present(flag: Optional[bool]) -> str:
    return {True: "[green]yes[/]", False: "no", None: "?"}[flag]


@cli.command("models")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (one object per model).")
@click.option("--weights-dir", type=click.Path(file_okay=False), default=None,
              help="Also look for weights here (before the default locations).")
@click.argument("pattern", required=False, default="*")
def models_command(as_json: bool, weights_dir: Optional[str], pattern: str) -> None:
    """List the models matching PATTERN (glob, default all): checkpoints, clip, layers, cost, weights."""
    from c3dfeat.models import list_models
    from c3dfeat.models._info import model_info

    infos = [model_info(name, weights_dir=weights_dir) for name in list_models(pattern)]
    if as_json:
        click.echo(json.dumps(infos, indent=2))
        return

    from rich.console import Console
    from rich.table import Table

    table = Table(title="c3dfeat models", show_lines=True)
    for col, kw in [
        ("model", {"style": "bold"}),
        ("checkpoints (classes, weights here?)", {}),
        ("clip", {}),
        ("layers (dim)", {}),
        ("params", {"justify": "right"}),
        ("GFLOPs/clip", {"justify": "right"}),
    ]:
        table.add_column(col, **kw)
    for info in infos:
        ckpts = "\n".join(
            f"{'*' if c['default'] else ' '}{c['tag']} ({c['classes']}, {_present(c['present'])})"
            for c in info["checkpoints"]
            if c["format"] != "caffe_mean"
        )
        means = [c for c in info["checkpoints"] if c["format"] == "caffe_mean"]
        if means:
            ckpts += "\n" + "\n".join(f" {c['tag']} (mean, {_present(c['present'])})" for c in means)
        clip = info["clip"]
        t, h, w = info["input_size"]
        clip_txt = (
            f"{t}x{h}x{w}, step {clip['frame_step']}, stride {clip['stride']}"
            + (f" @{clip['fps']:g}fps" if clip["fps"] else "")
            + f"\n{_fmt_resize(clip['resize'])} -> {clip['crop_size']}, {clip['channel_order']}"
        )
        layers = "\n".join(
            f"{'*' if layer['default'] else ' '}{layer['name']} "
            + ("x".join(map(str, layer["shape"])) if len(layer["shape"]) > 1 else str(layer["dim"]))
            for layer in info["layers"]
        )
        table.add_row(
            info["name"], ckpts, clip_txt, layers, f"{info['params'] / 1e6:.1f}M", f"{info['gflops']:.1f}"
        )
    console = Console()
    if not console.is_terminal:  # piped (README, scripts): do not squeeze into 80 columns
        console = Console(width=max(console.width, 150))
    console.print(table)
    console.print(
        "* = default checkpoint / layer; use `model.tag` to pick another. GFLOPs = 2 x multiply-adds "
        "(papers quote multiply-adds, half these) for one clip at the size shown. "
        "local weights: yes / no / ? (weights package unavailable)."
    )
