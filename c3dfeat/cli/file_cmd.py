"""`c3dfeat info`, `merge`, `repair`, `export`: feature files, over c3dfeat.store."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import click

from c3dfeat.cli import options
from c3dfeat.cli.root import cli

_feature_file = click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


@cli.command("merge")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=options.OutputFile(), help="The merged file.")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
def merge_command(files: Tuple[Path, ...], output: Path, overwrite: bool) -> None:
    """Join shard files (same settings) into one, ordered like a single run."""
    from c3dfeat.store import STATE_COMPLETE, FeatureFile, merge

    merge(list(files), output, overwrite=overwrite)
    with FeatureFile(output) as ff:
        click.echo(f"merged {len(files)} files → {output}: {ff.num_videos} videos, {len(ff.failed)} failed")
        if ff.state != STATE_COMPLETE:
            click.echo(f"{output} is {ff.state}: {ff.state_reason}")


def _flat(record: Dict[str, Any], prefix: str = "") -> List[Tuple[str, Any]]:
    """("decoder_versions.av", "18.1.0") pairs of a nested record, sorted."""
    pairs: List[Tuple[str, Any]] = []
    for k, v in sorted(record.items()):
        pairs += _flat(v, f"{prefix}{k}.") if isinstance(v, dict) else [(f"{prefix}{k}", v)]
    return pairs


def _one_line(record: Dict[str, Any]) -> str:
    """A nested run record on one line: "batch_size 4, decoder_versions.av 18.1.0, device cpu"."""
    return ", ".join(f"{k} {v}" for k, v in _flat(record))


@cli.command("info")
@_feature_file
@options.as_json
@click.option("--failures", "max_failures", type=int, default=20, show_default=True, help="Failed videos to list.")
def info_command(file: Path, as_json: bool, max_failures: int) -> None:
    """State, provenance, counts, layers and failures of a feature file."""
    from c3dfeat.store import STATE_COMPLETE, STATE_INCOMPLETE, file_summary

    s = file_summary(file)
    if as_json:
        click.echo(json.dumps(s, indent=2, sort_keys=True, default=str))
        return
    out, err = _console(), _console(stderr=True)
    if s["random_init"]:
        msg = f"[bold red]{s['warning']}[/bold red]"
        out.print(msg)
        err.print(msg)
    out.print(f"[bold]{file}[/bold]  (c3dfeat {s['c3dfeat_version']}, {s.get('storage_dtype')}, "
              f"format {s.get('format_version')})")
    state = s.get("state", STATE_COMPLETE)
    colour = {STATE_COMPLETE: "green", STATE_INCOMPLETE: "yellow"}.get(state, "red")
    out.print(f"state: [{colour}]{state}[/{colour}]: {s.get('state_reason', '')}")
    out.print(f"videos: {s['videos']} ({s['ok']} ok, {s['failed']} failed)")
    out.print(f"created: {s['created_utc']}  command: {s['command_line']}", markup=False)
    if s["run"]:
        out.print("run: " + _one_line(s["run"]), markup=False)
    if len(s["runs"]) > 1:  # resumed or merged: which run wrote how many videos
        out.print(f"written by {len(s['runs'])} runs (FeatureFile.run_of gives a video's):")
        for k, r in enumerate(s["runs"]):
            out.print(f"  run {k}: {r['videos']} videos, started {r['started_utc']}"
                      + (f", shard {r['shard']}" if r["shard"] else "") + ": " + _one_line(r["run"]), markup=False)
    if s["shard"]:
        out.print(f"shard: {s['shard']}")
    for key, m in s["models"].items():
        ck = "RANDOM INIT" if m.get("random_init") else f"{m.get('checkpoint')} sha256={m.get('weights_sha256')}"
        out.print(f"model [bold]{key}[/bold]: {ck}; {m['clips']} clips")
        out.print(f"  sampling: {json.dumps(m.get('sampling', {}), sort_keys=True)}", markup=False)
        out.print(f"  crops: {m.get('crops')} ({m.get('crop_reduce')}); mean cube: "
                  f"{m.get('mean_cube_sha256') or 'not used'}", markup=False)
        for layer in m["layers"]:
            n = layer.get("num_crops", layer.get("crops", 0))
            crops = f" x {n} crops" if n else ""
            out.print(f"  layer {layer['name']}: dim {layer['dim']}{crops} (per clip {tuple(layer['shape'])})",
                      markup=False)
    if s["failures"]:
        out.print(f"[red]failed videos ({s['failed']}):[/red]")
        for vid, reason in s["failures"][:max_failures]:
            out.print(f"  {vid}: {reason}", markup=False)
        if s["failed"] > max_failures:
            out.print(f"  ... {s['failed'] - max_failures} more (--failures N)")


@cli.command("repair")
@_feature_file
@options.as_json
def repair_command(file: Path, as_json: bool) -> None:
    """Make a killed run's file readable by plain h5py, without rerunning.

    Committed videos are kept, uncommitted rows are cut; rerunning the same extract command
    afterwards still resumes the file. A file that needs nothing is left untouched.
    """
    from c3dfeat.store import repair

    r = repair(file)
    if as_json:
        click.echo(json.dumps(r, indent=2, default=str))
    elif r["repaired"]:
        mended = f", {len(r['headers_mended'])} torn dataset headers mended" if r["headers_mended"] else ""
        click.echo(f"repaired {file}: {r['videos']} committed videos kept, {r['rows_cut']} uncommitted "
                   f"rows cut{mended}; state {r['state']}")
    else:
        click.echo(f"{file} needed no repair ({r['videos']} videos, state {r['state']})")


@cli.command("export", epilog="""\b
Examples:
  c3dfeat export feats.h5 -o feats.npy            # matrix + feats.ids.txt
  c3dfeat export feats.h5 -o feats.csv --model r2plus1d_18 --layer final_avg
  c3dfeat export feats.h5 -o feats.npz --clips    # also clip features and their timestamps
""")
@_feature_file
@click.option("-o", "--output", required=True, type=options.OutputFile(),
              help="Target: .npy (+ .ids.txt), .npz or .csv, by its suffix.")
@options.model_in_file
@options.layer_in_file
@click.option("--clips", is_flag=True, help="Also the clip features with their start times and frames.")
def export_command(file: Path, output: Path, model: Optional[str], layer: Optional[str], clips: bool) -> None:
    """Write the video features (one row per extracted video, with the ids) as .npy/.npz/.csv."""
    from c3dfeat.evaluate.features import resolve_stored_layer
    from c3dfeat.store import export

    if layer is not None:
        layer = resolve_stored_layer(file, model, layer)
    written = export(file, output, model=model, layer=layer, clips=clips)
    click.echo(f"wrote {written}")
