"""`c3dfeat extract`: a thin wrapper over c3dfeat.extract, with its progress display and summary."""
from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import click

from c3dfeat.cli import options
from c3dfeat.cli.progress import make_display
from c3dfeat.cli.root import cli, shown_warnings
from c3dfeat.errors import ExtractInterrupted

# Exit codes of `extract` (documented in its help).
EXIT_SOME_FAILED = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's convention

EXTRACT_EPILOG = """\b
Examples:
  c3dfeat extract videos/ -o feats.h5
  c3dfeat extract videos/ -o feats.h5 --model c3d:fc6,fc7 --model r2plus1d_34.ig65m_32f
  c3dfeat extract list.txt -o feats.h5 --model c3d --layers fc6,fc7 --crops 10 --half
  c3dfeat extract videos/ -o part2.h5 --shard 2/8 && c3dfeat merge part*.h5 -o all.h5
  c3dfeat extract videos/ -o feats.h5 --json -q > summary.json

\b
Models and layers: --model NAME[:LAYER,LAYER] (repeatable); --layers [MODEL:]LAYER,LAYER
(without MODEL: the only model). Defaults: C3D fc6, others pool5 (`c3dfeat models`).
Rerunning the same command resumes (only missing videos are extracted); other settings
are refused unless --overwrite.

\b
Progress: a live line on a terminal; otherwise one line every 30 s (logs, cluster
jobs); none with --quiet. --json prints a summary for scripts at the end.

\b
Exit codes: 0 every video extracted; 3 some videos failed, in this run or in an
earlier run of the same command (listed at the end and in the file, `c3dfeat info`;
--retry-failed tries them again); 1 an error stopped the run (committed videos stay);
2 bad usage (also: no video in the inputs, the folder of -o missing); 130 interrupted
(Ctrl-C): the videos committed so far are saved, run the same command to resume.
"""


def _parse_models(models: Tuple[str, ...], layers: Tuple[str, ...]) -> List[Tuple[str, Optional[List[str]]]]:
    """`--model c3d:fc6,fc7 --model r2plus1d_18 --layers r2plus1d_18:pool5` → [(name, layers)]."""
    order: List[str] = []
    chosen: Dict[str, Optional[List[str]]] = {}
    for m in models or ("c3d",):
        name, _, ls = m.partition(":")
        name = name.strip()
        if not name:
            raise click.BadParameter(f"empty model name in {m!r}", param_hint="--model")
        if name in chosen:
            raise click.BadParameter(f"model {name!r} given twice", param_hint="--model")
        order.append(name)
        chosen[name] = [s for s in ls.split(",") if s] or None
    for spec in layers:
        if ":" in spec:
            name, _, ls = spec.partition(":")
            if name not in chosen:
                raise click.BadParameter(
                    f"{spec!r} names model {name!r}, which is not in --model ({', '.join(order)})",
                    param_hint="--layers",
                )
        else:
            if len(order) != 1:
                raise click.BadParameter(
                    "with several models, say which: --layers MODEL:LAYER,LAYER", param_hint="--layers"
                )
            name, ls = order[0], spec
        chosen[name] = (chosen[name] or []) + [s for s in ls.split(",") if s]
    return [(n, chosen[n]) for n in order]


@cli.command("extract", epilog=EXTRACT_EPILOG)
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("-o", "--output", required=True, type=options.OutputFile(),
              help="HDF5 file to write (or resume); its folder must exist.")
@click.option("-m", "--model", "models", multiple=True, metavar="NAME[:LAYERS]",
              help="Model (repeatable), optionally with its layers. Default: c3d.")
@click.option("--layers", "layers", multiple=True, metavar="[MODEL:]L1,L2", help="Layers to store (repeatable).")
@options.device
@options.dtype
@click.option("--allow-tf32", is_flag=True, help="Let CUDA fp32 use TF32 (faster, not exact).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Clips per forward pass (default: per device and model; 3 on a CPU).")
@options.workers
@options.worker_kind
@options.decoder
@options.decode_device
@click.option("--clip-len", type=click.IntRange(min=1), default=None,
              help="Frames per clip (default: the model's).")
@click.option("--stride", type=click.IntRange(min=1), default=None,
              help="Frames between clip starts (default: the model's).")
@click.option("--frame-step", type=click.IntRange(min=1), default=None,
              help="Step between a clip's frames (default: the model's).")
@click.option("--num-clips", type=click.IntRange(min=1), default=None,
              help="N uniformly spaced clips per video instead of a stride.")
@options.fps
@options.tail
@options.crops
@options.crop_reduce
@click.option("--weights", "weights", multiple=True, metavar="[MODEL=]PATH",
              help="Local checkpoint file instead of the default.")
@options.downloads
@click.option("--random-init", is_flag=True,
              help="No pretrained weights (tests, benchmarks): features are MEANINGLESS.")
@click.option("--half", is_flag=True, help="Store float16 features.")
@click.option("--overwrite", is_flag=True, help="Start over instead of resuming.")
@click.option("--retry-failed", is_flag=True, help="Resume and extract again the videos recorded as failed.")
@click.option("--shard", default=None, metavar="K/N", help="Process shard K of N (by a hash of the video id).")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this process; ray: Ray Data, one machine or a cluster (docs/scale.md).")
@click.option("--ray-address", metavar="ADDRESS", default=None,
              help="With --engine ray: the cluster to join (default: a local Ray runtime).")
@options.quiet
@options.as_json
def extract_command(inputs: Tuple[Path, ...], output: Path, models: Tuple[str, ...], layers: Tuple[str, ...],
                    weights: Tuple[str, ...], crops: Optional[str], crop_deprecated: Optional[str],
                    quiet: bool, as_json: bool, **kw: Any) -> None:
    """Extract features of videos (files, folders, list files) into one HDF5 file."""
    pairs = _parse_models(models, layers)
    paths: Dict[str, str] = {}
    for w in weights:
        name, eq, p = w.partition("=")
        if not eq:
            if len(pairs) != 1:
                raise click.BadParameter("with several models use --weights MODEL=PATH", param_hint="--weights")
            name, p = pairs[0][0], w
        if name not in dict(pairs):
            raise click.BadParameter(f"{name!r} is not one of the --model names", param_hint="--weights")
        paths[name] = p
    crop_mode = options.crop_mode(crops, crop_deprecated)
    err = _console(stderr=True)
    display = make_display(err, quiet, what=f"{', '.join(n for n, _ in pairs)} -> {output}")
    try:
        from c3dfeat.pipeline import ModelRequest, extract  # torch: seconds, so inside the try

        reqs = [ModelRequest(n, tuple(ls) if ls else None, paths.get(n)) for n, ls in pairs]
        kwargs = dict(kw, crops=crop_mode, progress=display,
                      command_line=" ".join(shlex.quote(a) for a in ["c3dfeat"] + sys.argv[1:]))
        report = extract(list(inputs), output, reqs, **kwargs)
    except ExtractInterrupted as e:
        display.close()
        saved = e.saved
        if as_json and e.report is not None:
            click.echo(json.dumps(dict(report_dict(e.report), interrupted=True, saved=saved), indent=2))
        click.echo(f"interrupted: {saved} video{'s' if saved != 1 else ''} saved in {output}; "
                   "run the same command to resume", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except KeyboardInterrupt:  # before the output file was opened (loading models, listing inputs)
        display.close()
        click.echo(f"interrupted; the videos committed so far stay in {output}; run the same "
                   "command to resume", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except BaseException:
        display.close()
        raise
    display.close()
    if as_json:
        click.echo(json.dumps(report_dict(report), indent=2))
        _notes(report, err)
    else:
        _summary(report, err)
    if report.any_failed:
        sys.exit(EXIT_SOME_FAILED)


def report_dict(report: Any) -> Dict[str, Any]:
    """The `--json` summary of a run."""
    return {
        "output": str(report.output),
        "videos": report.total,
        "skipped": report.skipped,
        "ok": report.ok,
        "failed": [{"id": vid, "reason": reason} for vid, reason in report.failed],
        "failed_before": [{"id": vid, "reason": reason} for vid, reason in report.failed_before],
        "clips": report.clips,
        "seconds": round(report.seconds, 3),
        "clips_per_second": round(report.clips_per_second, 3),
        "device": report.device,
        "dtype": report.dtype,
        "batch_size": report.batch_size,
        "engine": report.engine,
        "interrupted": False,
        "random_init": list(report.random_init),
        "warnings": list(report.warnings),
    }


def _console(stderr: bool) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def _summary(report: Any, err: Any) -> None:
    from rich.table import Table

    out = _console(stderr=False)
    t = Table(title=f"c3dfeat extract → {report.output}", show_header=False)
    t.add_row("videos in this run", str(report.total))
    t.add_row("already in the file (resumed)", str(report.skipped))
    t.add_row("extracted", str(report.ok))
    t.add_row("failed", f"[red]{len(report.failed)}[/red]" if report.failed else "0")
    t.add_row("clips", str(report.clips))
    t.add_row("time", f"{report.seconds:.1f} s ({report.clips_per_second:.2f} clips/s on {report.device})")
    out.print(t)
    _notes(report, err)


def _notes(report: Any, err: Any) -> None:
    """Warnings (but those printed when they happened), random init and failures, on stderr."""
    from rich.markup import escape

    shown = shown_warnings()
    for w in report.warnings:
        if w not in shown:
            err.print("[yellow]warning:[/yellow] " + escape(w))
    if report.random_init:
        err.print(f"[bold red]RANDOM INIT: {', '.join(report.random_init)} ran without pretrained weights; "
                  "these features are meaningless except for testing.[/bold red]")
    if report.failed:
        err.print(f"[red]{len(report.failed)} video(s) failed:[/red]")
        for vid, reason in report.failed:
            err.print(f"  {vid}: {reason}", markup=False)
    if report.failed_before:
        err.print(f"[red]{len(report.failed_before)} video(s) had failed in an earlier run of this command "
                  "(kept as failed; --retry-failed extracts them again):[/red]")
        for vid, reason in report.failed_before:
            err.print(f"  {vid}: {reason}", markup=False)
