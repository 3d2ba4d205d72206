"""Which videos to process: files, directories and list files → `VideoInput(id, path, label)`.

Rules (also in docs/sampling.md, "Inputs"):

* **Arguments.** A directory is searched recursively for files with a video extension
  (`VIDEO_EXTENSIONS`, case-insensitive; hidden files and folders are skipped). A file whose
  extension is a list extension (`.txt .csv .tsv .lst .list`) is a *list file*. Any other file
  is a video, whatever its extension (it fails at decoding if it is not one). A missing
  argument is an error; a missing path *inside* a list file is kept, so that extraction records
  it as failed and goes on.
* **List files.** One video per line; blank lines and lines starting with `#` are skipped.
  Relative paths are relative to the list file's folder. An optional label follows the path:
  1. if the line contains a tab: path = everything before the last tab, label = after it;
  2. else if the whole line is an existing file, or ends in a video extension: it is all path
     (spaces allowed), no label;
  3. else the line is split at its last run of whitespace or commas: path, label
     (UCF101's `trainlist01.txt` "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1" and CSV
     "a.mp4,3" both work). A path that ends in something that looks like a label needs a tab.
  A first line whose path is one of `path, video, file, filename` (any case) is a header.
  Quotes around the path (`"my, video.mp4",3`) are removed.
* **Ids.** A video's id is its path relative to the *input root*, with `/` separators: the
  common folder of all directory arguments, list-file folders, and the videos' own folders.
  So `videos/a/x.mp4` and `videos/b/x.mp4` get ids `a/x.mp4`, `b/x.mp4` and never collide.
  `root=` overrides it.
* **Duplicates.** The same file reached twice (same resolved path) is kept once (the first
  occurrence); listing it twice with different labels is an error.
* **Order.** Inputs come out sorted by id, so runs (and shards) are deterministic.
* **Nothing found.** Inputs that hold no video at all (an empty folder, a folder of other
  files, an empty list file) raise `NoVideosError`, naming the inputs and the extensions.
* **Shards.** `shard(items, k, n)` keeps the items whose id hashes (SHA-1) to k-1 mod n, for
  k = 1..n: stable when videos are added or removed, about 1/n of them each.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, List, Optional, Sequence, Tuple, TypeVar, Union, cast

from c3dfeat.errors import ConfigError, InputError, NoVideosError

__all__ = [
    "VIDEO_EXTENSIONS",
    "LIST_EXTENSIONS",
    "VideoInput",
    "resolve_inputs",
    "read_list_file",
    "shard",
    "parse_shard",
]

VIDEO_EXTENSIONS = frozenset(
    ".mp4 .m4v .mov .avi .mkv .webm .mpg .mpeg .mpe .m2v .wmv .flv .3gp .3g2 .ts .mts .m2ts "
    ".ogv .ogg .vob .mxf .asf .divx .dv .y4m .gif".split()
)
LIST_EXTENSIONS = frozenset(".txt .csv .tsv .lst .list".split())
_HEADER_NAMES = {"path", "video", "file", "filename", "video_path"}

PathLike = Union[str, os.PathLike]
T = TypeVar("T")


@dataclass(frozen=True)
class VideoInput:
    """One video to process. `id` is unique within a run and stable across runs."""

    id: str
    path: Path
    label: Optional[str] = None


def _is_video_name(name: str) -> bool:
    return Path(name).suffix.lower() in VIDEO_EXTENSIONS


def _walk(directory: Path) -> List[Path]:
    out = []
    seen = set()  # real paths of visited folders: symlink cycles end here
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if not f.startswith(".") and _is_video_name(f):
                out.append(Path(dirpath) / f)
    return out


_SPLIT = re.compile(r"^(.*?)[\s,]+([^\s,]+)$")


def _parse_line(line: str, base: Path) -> Tuple[str, Optional[str]]:
    if "\t" in line:
        path, label = line.rsplit("\t", 1)
        return path.strip(), (label.strip() or None)
    if _is_video_name(line) or (base / line).is_file():
        return line, None
    m = _SPLIT.match(line)
    if m is None:
        return line, None
    return m.group(1).strip(), m.group(2)


def read_list_file(path: PathLike) -> List[Tuple[Path, Optional[str]]]:
    """(absolute path, label or None) per line of a list file (rules in the module docstring)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"list file {path} is not UTF-8 text ({e}); save it as UTF-8") from e
    except OSError as e:
        raise InputError(f"cannot read list file {path}: {e.strerror or e}") from e
    base = path.parent
    out: List[Tuple[Path, Optional[str]]] = []
    first = True
    for raw in text.splitlines():
        line = raw.strip("\r\n")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        line = line.strip(" ")  # keep tabs: they separate the label
        p, label = _parse_line(line, base)
        if first and label is not None and p.strip().lower() in _HEADER_NAMES:
            first = False
            continue
        first = False
        if len(p) >= 2 and p[0] == p[-1] and p[0] in "\"'":  # CSV-style quoting: "a, b.mp4",3
            p = p[1:-1]
        if not p:
            raise InputError(f"{path}: empty path in line {raw!r}")
        full = Path(os.path.expanduser(p))
        if not full.is_absolute():
            full = base / full
        out.append((Path(os.path.abspath(full)), label))
    return out


def resolve_inputs(sources: Iterable[PathLike], root: Optional[PathLike] = None) -> List[VideoInput]:
    """The videos named by `sources` (files, directories, list files), deduplicated, sorted by id.

    Raises InputError for a missing input or a bad list file, NoVideosError when there is no video."""
    found: List[Tuple[Path, Optional[str]]] = []
    roots: List[str] = []
    sources_seen: List[PathLike] = []
    for src in sources:
        sources_seen.append(src)
        p = Path(os.path.abspath(os.path.expanduser(str(src))))
        if p.is_dir():
            roots.append(str(p))
            found.extend((v, None) for v in _walk(p))
        elif p.is_file():
            if p.suffix.lower() in LIST_EXTENSIONS:
                roots.append(str(p.parent))
                found.extend(read_list_file(p))
            else:
                found.append((p, None))
        else:
            raise InputError(f"input {src} does not exist; give video files, folders or a list file")
    if not sources_seen:
        raise InputError("no inputs given; give video files, folders or a list file")

    # Deduplicate by resolved path (symlinks, "a/../b"), keeping the first spelling.
    seen: dict = {}
    unique: List[Tuple[Path, Optional[str]]] = []
    for p, label in found:
        key = os.path.realpath(p)
        if key in seen:
            prev = seen[key]
            if label is not None and prev[1] is not None and label != prev[1]:
                raise InputError(f"{p} is listed twice with different labels ({prev[1]!r} and {label!r})")
            continue
        seen[key] = (p, label)
        unique.append((p, label))

    if root is not None:
        base = os.path.abspath(os.path.expanduser(str(root)))
    elif unique or roots:
        base = os.path.commonpath(roots + [str(p.parent) for p, _ in unique])
    else:
        base = os.getcwd()
    out = []
    for p, label in unique:
        rel = os.path.relpath(p, base)
        if rel.startswith(".."):
            raise InputError(f"{p} is not inside the input root {base}; choose another --root")
        out.append(VideoInput(Path(rel).as_posix(), p, label))
    out.sort(key=lambda v: v.id)
    if not out:
        names = ", ".join(str(s) for s in sources_seen)
        raise NoVideosError(
            f"no video found in {names}: folders are searched (recursively) for "
            f"{' '.join(sorted(VIDEO_EXTENSIONS))}; list files ({' '.join(sorted(LIST_EXTENSIONS))}) "
            "name videos one per line"
        )
    # Distinct files under one root always get distinct ids; this guards case-folding file systems.
    ids = [v.id for v in out]
    if len(set(ids)) != len(ids):  # pragma: no cover - defensive
        raise InputError("two inputs map to the same id; give a different --root")
    return out


def parse_shard(text: str) -> Tuple[int, int]:
    """"K/N" → (K, N) with 1 <= K <= N."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m:
        raise ConfigError(f"--shard must look like K/N (e.g. 1/4), got {text!r}")
    k, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 1 <= k <= n:
        raise ConfigError(f"--shard {text}: K must be between 1 and N (shards are numbered 1..N)")
    return k, n


def _shard_of(video_id: str, n: int) -> int:
    digest = hashlib.sha1(video_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % n


def shard(items: Sequence[T], k: int, n: int) -> List[T]:
    """The items of shard k of n (1-based): those whose id (`.id`, or the item itself if it is a
    string) hashes to k-1 modulo n. The n shards partition `items`; membership depends only on
    the id, so adding videos never moves others between shards."""
    if n < 1 or not 1 <= k <= n:
        raise ConfigError(f"shard {k}/{n}: K must be between 1 and N")
    out = []
    for it in items:
        vid = it if isinstance(it, str) else cast(Any, it).id
        if _shard_of(vid, n) == k - 1:
            out.append(it)
    return out
