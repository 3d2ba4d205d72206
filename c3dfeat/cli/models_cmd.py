"""`c3dfeat models`: the model zoo as a table (or JSON)."""
from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import click

from c3dfeat.cli import options
from c3dfeat.cli.root import UsageError, cli
from c3dfeat.version import __version__

# Parameter counts, GFLOPs and layer shapes come from building each model on the meta device
# (seconds for the whole zoo); they only change with the code, so they are cached on disk.
CACHE_FILE = "model_facts.json"


def _fmt_resize(resize: Any) -> str:
    return f"{resize[0]}x{resize[1]}" if isinstance(resize, list) else f"short {resize}"


def _present(flag: Optional[bool]) -> str:
    return {True: "[green]yes[/]", False: "no", None: "?"}[flag]


def cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "c3dfeat" / CACHE_FILE


def _stat(path: Optional[str]) -> str:
    try:
        st = os.stat(path) if path else None
    except OSError:
        st = None
    return f"{path}:{st.st_size}:{st.st_mtime_ns}" if st else f"{path}:-"


def _fingerprint(spec: Any) -> str:
    """Changes whenever the spec, its builder's source, the zoo's code, c3dfeat or torch change."""
    from importlib.metadata import version

    import c3dfeat.models as zoo

    builder = spec.builder
    code = sorted(str(p) for p in Path(zoo.__file__).parent.glob("*.py"))
    module = sys.modules.get(getattr(builder, "__module__", ""))
    parts = [__version__, version("torch"), re.sub(r" at 0x[0-9a-f]+", "", repr(spec)),
             f"{builder.__module__}.{builder.__qualname__}", _stat(getattr(module, "__file__", None)),
             *(_stat(p) for p in code)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def model_infos(names: List[str], weights_dir: Optional[Path]) -> List[Dict[str, Any]]:
    """`model_info` of each name, the architecture facts from the cache when it is current;
    whether each checkpoint is present is always looked up afresh."""
    from c3dfeat.models import get_spec, model_info
    from c3dfeat.weights import find_local_file

    path = cache_path()
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    changed = False
    infos = []
    for name in names:
        spec = get_spec(name)
        key = _fingerprint(spec)
        entry = cache.get(name)
        if entry and entry.get("key") == key:
            info = copy.deepcopy(entry["info"])
        else:
            info = model_info(spec)
            cache[name] = {"key": key, "info": copy.deepcopy(info)}
            changed = True
        by_tag = {c.tag: c for c in spec.checkpoints}
        for c in info["checkpoints"]:
            try:
                c["present"] = find_local_file(by_tag[c["tag"]], weights_dir) is not None
            except Exception:  # noqa: BLE001 - a broken weights dir must not break `c3dfeat models`
                c["present"] = None
        infos.append(info)
    if changed:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(cache))
            os.replace(tmp, path)
        except OSError:  # a read-only home: no cache, still correct
            pass
    return infos


@cli.command("models")
@options.as_json
@options.weights_dir
@click.argument("pattern", required=False, default="*")
def models_command(as_json: bool, weights_dir: Optional[Path], pattern: str) -> None:
    """List the models matching PATTERN (glob, default all): checkpoints, clip, layers, cost, weights.

    Exit code 2 when no model matches PATTERN.
    """
    from c3dfeat.models import list_models

    names = list_models(pattern)
    if not names:
        raise UsageError(f"no model matches {pattern!r}; `c3dfeat models` lists them all")
    infos = model_infos(names, weights_dir)
    if as_json:
        click.echo(json.dumps(infos, indent=2))
        return

    from rich.console import Console
    from rich.table import Table

    table = Table(title="c3dfeat models", show_lines=True)
    table.add_column("model", style="bold")
    table.add_column("checkpoints (classes, weights here?)")
    table.add_column("clip")
    table.add_column("layers (dim)")
    table.add_column("params", justify="right")
    table.add_column("GFLOPs/clip", justify="right")
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
        "weights here: yes / no / ? (the weights directory cannot be read)."
    )
