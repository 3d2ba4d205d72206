"""`c3dfeat weights ...`: list, download, import, verify and convert checkpoint files."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import click

from c3dfeat.cli import options
from c3dfeat.cli.root import cli


@cli.group("weights")
def weights_group() -> None:
    """Find, download, import, verify and convert pretrained weights.

    \b
    Search order: --weights-dir, $C3DFEAT_WEIGHTS, <checkout>/weights, ~/.cache/c3dfeat/weights.
    A checkpoint with a published SHA-256 (or hash prefix) is checked against it; one without is
    trusted on first use: its digest is recorded in FILE.sha256 and every later load is checked
    against that (--require-hashes refuses such files).
    """


@weights_group.command("list")
@options.weights_dir
@click.option("--no-hash", is_flag=True, help="Do not hash present files (faster; no verified column).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--markdown", is_flag=True, help="The registry as a Markdown table (for weights/README.md).")
@click.argument("pattern", default="*")
def list_command(weights_dir: Optional[Path], no_hash: bool, as_json: bool, markdown: bool, pattern: str) -> None:
    """List every known checkpoint: file, format, published hash, present?, verified?

    \b
    Examples:
      c3dfeat weights list
      c3dfeat weights list 'r2plus1d_34*' --json
    """
    from c3dfeat.weights.hashing import hash_knowledge
    from c3dfeat.zoo import all_checkpoints, statuses

    if markdown:
        click.echo("| checkpoint | file | format | classes | published hash | URL(s) |")
        click.echo("|---|---|---|---|---|---|")
        for name, ckpt in all_checkpoints(pattern):
            urls = "<br>".join(ckpt.urls) or "-"
            click.echo(
                f"| `{name}` | `{ckpt.file_name}` | {ckpt.format} | {ckpt.num_classes or '-'} | "
                f"{hash_knowledge(ckpt)} | {urls} |"
            )
        return
    found = statuses(pattern, weights_dir, hash_files=not no_hash)
    rows: List[Dict[str, Any]] = [
        {
            "name": st.name,
            "file": st.checkpoint.file_name,
            "format": st.checkpoint.format,
            "classes": st.checkpoint.num_classes,
            "published_hash": hash_knowledge(st.checkpoint),
            "path": str(st.path) if st.path else None,
            "status": st.status,
            "sha256": st.digest,
            "urls": list(st.checkpoint.urls),
        }
        for st in found
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    header = ("checkpoint", "file", "format", "published hash", "present", "verified")
    lines = [header]
    for st in found:
        verified = "" if st.status in ("absent", "present") else st.status.split(":")[0]
        lines.append((st.name, st.checkpoint.file_name, st.checkpoint.format, hash_knowledge(st.checkpoint),
                      "yes" if st.path else "no", verified))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:  # plain aligned text: no truncation, pasteable into weights/README.md
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip())


@weights_group.command("download")
@click.argument("names", nargs=-1, required=True)
@options.downloads
def download_command(
    names: Tuple[str, ...], weights_dir: Optional[Path], require_hashes: bool, weights_mirror: Optional[str]
) -> None:
    """Download checkpoints (NAME = model.tag, or model for its default) and check them.

    A model's mean file (C3D) comes with its weights.

    \b
    Examples:
      c3dfeat weights download c3d
      c3dfeat weights download r2plus1d_18.kinetics400 --require-hashes
      c3dfeat weights download c3d --weights-mirror https://mirror.example.org/c3dfeat
    """
    from c3dfeat.zoo import download

    for name in names:
        for full, v in download(name, weights_dir, require_hashes or None, weights_mirror):
            click.echo(f"{full}: {v.path} ({v.status}, sha256 {v.digest})")


@weights_group.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--model", "name", required=True, help="The checkpoint this file is, as model.tag.")
@options.weights_dir
@options.require_hashes
def import_command(file: Path, name: str, weights_dir: Optional[Path], require_hashes: bool) -> None:
    """Copy a checkpoint fetched by other means into the weights directory, checked.

    Its format must match; so must the published hash, if any. Otherwise the file is trusted and
    its SHA-256 recorded beside the copy (refused with --require-hashes).

    \b
    Examples:
      c3dfeat weights import ~/Downloads/r2plus1d_18-91a641e6.pth --model r2plus1d_18.kinetics400
      c3dfeat weights import conv3d_deepnetA_sport1m_iter_1900000 --model c3d.sports1m
    """
    from c3dfeat.zoo import import_file

    v = import_file(file, name, weights_dir, require_hashes or None)
    click.echo(f"{name}: {v.path} ({v.status}, sha256 {v.digest})")


@weights_group.command("verify")
@click.argument("pattern", default="*")
@options.weights_dir
def verify_command(pattern: str, weights_dir: Optional[Path]) -> None:
    """Hash every present checkpoint and check it; exit code 1 if any does not match.

    \b
    Examples:
      c3dfeat weights verify
      c3dfeat weights verify 'c3d.*' --weights-dir /data/weights
    """
    from c3dfeat.zoo import statuses

    present = [st for st in statuses(pattern, weights_dir) if st.path is not None]
    bad = [st for st in present if st.status.startswith("MISMATCH")]
    click.echo("\n".join(f"{st.name}: {st.status} {st.path}" for st in present))
    click.echo(f"{len(present)} present, {len(bad)} mismatched", err=True)
    if bad:
        raise click.exceptions.Exit(1)


@weights_group.command("convert")
@click.argument("src", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--model", "name", required=True, help="Target model (model or model.tag; the tag fixes the classes).")
@click.option("-o", "--output", "dst", required=True, type=options.OutputFile(),
              help="The .pth file to write (its folder must exist).")
def convert_command(src: Path, name: str, dst: Path) -> None:
    """Convert a Caffe / Caffe2 / PyTorch checkpoint to a state_dict .pth (a mean file to .npy).

    The format is detected from the file contents.

    \b
    Examples:
      c3dfeat weights convert irCSN_152_ig65m_from_scratch_f125286141.pkl --model ir_csn_152 -o ircsn.pth
      c3dfeat weights convert sport1m_train16_128_mean.binaryproto --model c3d -o c3d_mean.npy
    """
    from c3dfeat.zoo import convert_file

    fmt, digest = convert_file(src, name, dst)
    click.echo(f"{src} ({fmt}) -> {dst} (sha256 {digest})")
