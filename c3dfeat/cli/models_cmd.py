"""`c3dfeat models`."""
from __future__ import annotations

import json

import click

from c3dfeat.cli import cli
from c3dfeat.models import all_specs


@cli.command("models")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def models_command(as_json: bool) -> None:
    """List the models, their checkpoints, clip settings and feature layers."""
    rows = [
        {
            "name": spec.name,
            "checkpoints": [c.tag for c in spec.weight_checkpoints],
            "clip_len": spec.preprocessing.clip_len,
            "layers": {layer.name: layer.dim for layer in spec.layers},
        }
        for spec in all_specs()
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        for r in rows:
            click.echo(f"{r['name']}: {', '.join(r['checkpoints'])}")
