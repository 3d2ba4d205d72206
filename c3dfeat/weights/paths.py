"""Where checkpoint files live: the search order and the download directory.

Search order (first hit wins), documented in weights/README.md:
1. an explicit directory (`weights_dir=` / `--weights-dir`);
2. `$C3DFEAT_WEIGHTS` (one directory, or several separated by os.pathsep);
3. the checkout's `weights/` folder, when c3dfeat runs from a source checkout;
4. the user cache, `$XDG_CACHE_HOME/c3dfeat/weights` (default `~/.cache/c3dfeat/weights`).
Downloads and imports go to the first of 1, 2 and 4 (never into the checkout, so that a
`git status` stays clean and files are shared between checkouts).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Union

from c3dfeat.specs import Checkpoint

PathLike = Union[str, Path]

ENV_WEIGHTS = "C3DFEAT_WEIGHTS"


def cache_dir() -> Path:
    """The per-user weights cache (XDG base directory spec)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "c3dfeat" / "weights"


def checkout_dir() -> Optional[Path]:
    """`<checkout>/weights` when the package is imported from a source checkout, else None."""
    root = Path(__file__).resolve().parents[2]
    if (root / "setup.cfg").is_file() and (root / "c3dfeat").is_dir() and (root / "weights").is_dir():
        return root / "weights"
    return None


def env_dirs() -> List[Path]:
    value = os.environ.get(ENV_WEIGHTS, "")
    return [Path(p).expanduser() for p in value.split(os.pathsep) if p]


def search_dirs(weights_dir: Optional[PathLike] = None) -> List[Path]:
    """The directories searched for a checkpoint file, in order, without duplicates."""
    dirs: List[Path] = []
    if weights_dir is not None:
        dirs.append(Path(weights_dir).expanduser())
    dirs.extend(env_dirs())
    checkout = checkout_dir()
    if checkout is not None:
        dirs.append(checkout)
    dirs.append(cache_dir())
    seen, out = set(), []
    for d in dirs:
        key = os.path.abspath(d)
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


def download_dir(weights_dir: Optional[PathLike] = None) -> Path:
    """Where downloads and imports are written: explicit dir, else $C3DFEAT_WEIGHTS (first), else cache."""
    if weights_dir is not None:
        return Path(weights_dir).expanduser()
    env = env_dirs()
    return env[0] if env else cache_dir()


def find_local_file(checkpoint: Checkpoint, weights_dir: Optional[PathLike] = None) -> Optional[Path]:
    """The first existing `checkpoint.file_name` in :func:`search_dirs`, or None."""
    for d in search_dirs(weights_dir):
        p = d / checkpoint.file_name
        if p.is_file():
            return p
    return None
