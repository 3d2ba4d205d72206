"""`c3dfeat env`: what this machine offers c3dfeat (c3dfeat.envinfo), for bug reports and first runs."""
from __future__ import annotations

import json
from typing import Any, List

import click

from c3dfeat.cli import options
from c3dfeat.cli.root import cli


@cli.command("env")
@options.as_json
def env_command(as_json: bool) -> None:
    """Versions, GPUs (or why torch cannot use them), cores, decoders, resize and weights folders."""
    from c3dfeat.envinfo import environment_report

    report = environment_report()
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
        return
    for line in _lines(report):
        click.echo(line)


def _lines(r: Any) -> List[str]:
    gpus = ", ".join(f"{g['device']} {g['name']} ({g['memory_gib']} GiB)" for g in r["gpus"])
    decoders = "; ".join(
        f"{name} (" + (v["error"] if "error" in v else ", ".join(f"{k} {x}" for k, x in v.items())) + ")"
        for name, v in r["decoders"].items())
    allocator = {"glibc": "glibc, tuned: no page churn", "system": "the C library's defaults (C3DFEAT_MALLOC=system)",
                 "unsupported": "not glibc: left as it is"}.get(r["allocator"], r["allocator"])
    w = r["weights"]
    return [
        f"c3dfeat {r['c3dfeat']}, Python {r['python']}, {r['platform']}",
        f"torch {r['torch']} (CUDA build: {r['torch_cuda'] or 'no, CPU only'}"
        + (f", cuDNN {r['cudnn']}" if r["cudnn"] else "") + f"), numpy {r['numpy']}",
        f"GPUs: {gpus or 'none usable'}" + (f" ({r['gpu_problem']})" if r["gpu_problem"] else ""),
        f"CPU cores: {r['cores']['usable']} usable of {r['cores']['machine']}; allocator: {allocator}",
        f"decoders: {decoders}",
        f"GPU decoding: {r['gpu_decoding']}",
        f"Caffe models' resize: {r['caffe_resize']}",
        f"weights: searched {', '.join(w['searched'])}; downloads to {w['downloads_to']}; "
        f"mirror {w['mirror'] or 'none'}; require hashes {w['require_hashes']}",
        f"ray: {r['ray'] or 'not installed (pip install c3dfeat[ray] for --engine ray)'}",
    ]
