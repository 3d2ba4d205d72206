"""Labels and train/test splits: the official UCF101 / HMDB51 lists, a generic CSV, or folders.

Every parser returns a :class:`Listing` (class names, per-split train/test lists of listed paths
with their labels). :func:`resolve` then matches the listed paths to the video ids of a feature
file and returns a :class:`Protocol`: row indices into the feature matrix for every split.

Formats (papers.md §6):

* UCF101 ``ucfTrainTestlist/``: ``classInd.txt`` lines ``1 ApplyEyeMakeup`` (1-based);
  ``trainlist0k.txt`` lines ``ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1`` (path, 1-based
  label); ``testlist0k.txt`` lines with the path only (label from the folder via classInd).
* HMDB51 ``testTrainMulti_7030_splits/``: ``<class>_test_split<k>.txt`` with lines
  ``<video>.avi <id>``; id 1 = train, 2 = test, 0 = unused in that split.
"""
from __future__ import annotations

import csv
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from c3dfeat.errors import EvalError

Entry = Tuple[str, int]  # (listed path, class index)


@dataclass
class ListedSplit:
    name: str
    train: List[Entry]
    test: List[Entry]


@dataclass
class Listing:
    """What the list files say, before matching to a feature file."""

    classes: List[str]
    splits: List[ListedSplit]
    source: str


@dataclass
class Split:
    """One train/test split as row indices into the feature matrix."""

    name: str
    train: np.ndarray
    test: np.ndarray


@dataclass
class Protocol:
    """Labels for the rows of a feature matrix plus the splits to evaluate."""

    classes: List[str]
    y: np.ndarray  # (n_rows,) class index per feature row; -1 = not labelled
    splits: List[Split]
    source: str
    missing: Dict[str, List[str]] = field(default_factory=dict)  # split → listed paths not found


# --------------------------------------------------------------------------------------- parsers
def _lines(path: Path) -> List[str]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise EvalError(f"cannot read split file {path}: {e}") from e
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def _class_of(path: str) -> str:
    parts = PurePosixPath(path.replace("\\", "/")).parts
    return parts[-2] if len(parts) >= 2 else ""


def parse_ucf101(split_dir: str | Path, splits: Optional[Sequence[int]] = None) -> Listing:
    """Parse ``ucfTrainTestlist/`` (classInd.txt, trainlist0k.txt, testlist0k.txt)."""
    d = Path(split_dir)
    ind = d / "classInd.txt"
    if not ind.is_file():
        raise EvalError(f"{ind} not found: --splits must be the ucfTrainTestlist folder "
                        "(classInd.txt, trainlist01.txt, testlist01.txt, ...)")
    classes: List[str] = []
    for ln in _lines(ind):
        parts = ln.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise EvalError(f"{ind}: expected '<index> <class>' lines, got {ln!r}")
        if int(parts[0]) != len(classes) + 1:
            raise EvalError(f"{ind}: class indices must run 1, 2, 3, ... (1-based); got {ln!r}")
        classes.append(parts[1])
    by_name = {c: i for i, c in enumerate(classes)}
    ks = list(splits) if splits else [k for k in (1, 2, 3) if (d / f"trainlist0{k}.txt").is_file()]
    if not ks:
        raise EvalError(f"no trainlist0k.txt in {d}")
    out = []
    for k in ks:
        tr_file, te_file = d / f"trainlist0{k}.txt", d / f"testlist0{k}.txt"
        for f in (tr_file, te_file):
            if not f.is_file():
                raise EvalError(f"{f} not found (UCF101 split {k})")
        train = []
        for ln in _lines(tr_file):
            path, _, lab = ln.rpartition(" ")
            if not path or not lab.isdigit():
                raise EvalError(f"{tr_file}: expected '<path> <1-based label>', got {ln!r}")
            idx = int(lab) - 1  # classInd / trainlist labels are 1-based
            if not 0 <= idx < len(classes):
                raise EvalError(f"{tr_file}: label {lab} outside 1..{len(classes)} in {ln!r}")
            folder = _class_of(path)
            if folder and folder in by_name and by_name[folder] != idx:
                raise EvalError(f"{tr_file}: {path!r} is labelled {lab} ({classes[idx]}) "
                                f"but sits in folder {folder!r}")
            train.append((path, idx))
        test = []
        for ln in _lines(te_file):
            path = ln.split(" ")[0] if re.search(r" \d+$", ln) else ln
            folder = _class_of(path)
            if folder not in by_name:
                raise EvalError(f"{te_file}: cannot label {path!r}: folder {folder!r} is not in "
                                f"classInd.txt")
            test.append((path, by_name[folder]))
        out.append(ListedSplit(f"split{k}", train, test))
    return Listing(classes, out, f"ucf101 {d}")


_HMDB_RE = re.compile(r"^(?P<cls>.+)_test_split(?P<k>\d+)\.txt$")


def parse_hmdb51(split_dir: str | Path, splits: Optional[Sequence[int]] = None) -> Listing:
    """Parse ``testTrainMulti_7030_splits/`` (``<class>_test_split<k>.txt``: 1 train, 2 test, 0 unused)."""
    d = Path(split_dir)
    files: Dict[int, Dict[str, Path]] = defaultdict(dict)  # k -> class -> file
    if d.is_dir():
        for f in sorted(d.iterdir()):
            m = _HMDB_RE.match(f.name)
            if m:
                files[int(m["k"])][m["cls"]] = f
    if not files:
        raise EvalError(f"no <class>_test_split<k>.txt files in {d}: --splits must be the "
                        "testTrainMulti_7030_splits folder")
    classes = sorted(set().union(*[set(v) for v in files.values()]))
    ks = list(splits) if splits else sorted(files)
    out = []
    for k in ks:
        if k not in files:
            raise EvalError(f"no *_test_split{k}.txt files in {d} (found splits {sorted(files)})")
        lacking = sorted(set(classes) - set(files[k]))
        if lacking:
            raise EvalError(f"split {k} has no file for classes {lacking[:5]} in {d}")
        train, test = [], []
        for ci, cls in enumerate(classes):
            f = files[k][cls]
            for ln in _lines(f):
                name, _, tag = ln.rpartition(" ")
                if tag not in ("0", "1", "2") or not name.strip():
                    raise EvalError(f"{f}: expected '<video> <0|1|2>', got {ln!r}")
                entry = (f"{cls}/{name.strip()}", ci)  # the class folder helps matching
                if tag == "1":
                    train.append(entry)
                elif tag == "2":
                    test.append(entry)
        out.append(ListedSplit(f"split{k}", train, test))
    return Listing(classes, out, f"hmdb51 {d}")


def read_labels_csv(path: str | Path) -> Dict[str, str]:
    """``video,label`` rows (a header naming the columns is optional)."""
    p = Path(path)
    try:
        rows = list(csv.reader(p.read_text(encoding="utf-8").splitlines()))
    except OSError as e:
        raise EvalError(f"cannot read labels file {p}: {e}") from e
    rows = [r for r in rows if r and any(c.strip() for c in r)]
    if not rows:
        raise EvalError(f"{p} is empty: expected 'video,label' rows")
    vcol, lcol = 0, 1
    head = [c.strip().lower() for c in rows[0]]
    vnames, lnames = ("video", "video_id", "id", "path", "file"), ("label", "class", "category")
    if any(h in vnames for h in head) and any(h in lnames for h in head):
        vcol = next(i for i, h in enumerate(head) if h in vnames)
        lcol = next(i for i, h in enumerate(head) if h in lnames)
        rows = rows[1:]
    out = {}
    for r in rows:
        if len(r) <= max(vcol, lcol):
            raise EvalError(f"{p}: expected 'video,label' rows, got {r!r}")
        out[r[vcol].strip()] = r[lcol].strip()
    return out


def _read_list(path: str | Path) -> List[str]:
    out = []
    for ln in _lines(Path(path)):
        # accept UCF-style "path label" lines too: drop a trailing integer field
        out.append(ln.rsplit(" ", 1)[0] if re.search(r"\s\d+$", ln) else ln)
    return out


def parse_generic(labels_csv: str | Path, train_list: Optional[str | Path] = None,
                  test_list: Optional[str | Path] = None) -> Tuple[Listing, Dict[str, str]]:
    """Labels from a CSV; one split from train/test lists (else the caller does k-fold CV)."""
    labels = read_labels_csv(labels_csv)
    classes = sorted(set(labels.values()))
    idx = {c: i for i, c in enumerate(classes)}
    splits = []
    if (train_list is None) != (test_list is None):
        raise EvalError("give both --train-list and --test-list, or neither (k-fold CV)")
    if train_list is not None:
        lab_keys = _KeyIndex(list(labels))

        def entries(lst):
            out = []
            for v in _read_list(lst):
                key = lab_keys.match(v)
                if key is None:
                    raise EvalError(f"{v!r} (listed in {lst}) has no label in {labels_csv}")
                out.append((v, idx[labels[key]]))
            return out

        splits.append(ListedSplit("split1", entries(train_list), entries(test_list)))
    return Listing(classes, splits, f"labels {labels_csv}"), labels


# -------------------------------------------------------------------------------- id matching
def _norm_parts(path: str) -> Tuple[str, ...]:
    """'videos/ApplyEyeMakeup/v_X.mp4' → ('videos', 'applyeyemakeup', 'v_x'): no extension, and
    case-folded: UCF101's own lists spell a class 'HandstandPushups' while its clips are named
    'v_HandStandPushups_*', and copies of the dataset differ in case."""
    p = PurePosixPath(path.strip().replace("\\", "/").casefold())
    parts = [x for x in p.parts if x not in (".", "/", "")]
    if parts:
        stem = parts[-1]
        if "." in stem and not stem.startswith("."):
            stem = stem.rsplit(".", 1)[0]
        parts[-1] = stem
    return tuple(parts)


class _KeyIndex:
    """Match listed paths to ids despite extensions, folder prefixes and letter case.

    'ApplyEyeMakeup/v_X.avi', 'v_X.avi' and 'videos/ApplyEyeMakeup/v_X.mp4' name the same
    video: two names match when, without extensions and case, the shorter one's path components
    are the tail of the longer one's. Ambiguity (two ids fit equally) is an error, never a guess.
    """

    def __init__(self, ids: Sequence[str]):
        self.by_base: Dict[str, List[Tuple[Tuple[str, ...], str]]] = defaultdict(list)
        for vid in ids:
            parts = _norm_parts(vid)
            if parts:
                self.by_base[parts[-1]].append((parts, vid))

    def match(self, listed: str) -> Optional[str]:
        lp = _norm_parts(listed)
        if not lp:
            return None
        cands = self.by_base.get(lp[-1], [])
        best, best_len = [], 0
        for parts, vid in cands:
            n = 0  # number of trailing components in common
            while n < min(len(parts), len(lp)) and parts[-1 - n] == lp[-1 - n]:
                n += 1
            if n == min(len(parts), len(lp)):  # one is a tail of the other
                if n > best_len:
                    best, best_len = [vid], n
                elif n == best_len:
                    best.append(vid)
        if len(best) > 1:
            raise EvalError(f"{listed!r} matches several videos in the feature file: "
                            f"{best[:3]}; give the lists with folder names")
        return best[0] if best else None


def resolve(listing: Listing, ids: Sequence[str], allow_missing: bool = False) -> Protocol:
    """Match every listed path to a row of ``ids`` (the feature file's video ids)."""
    index = _KeyIndex(ids)
    row = {vid: i for i, vid in enumerate(ids)}
    y = np.full(len(ids), -1, dtype=np.int64)
    splits, missing = [], {}
    n_listed = n_missing = 0
    for ls in listing.splits:
        parts = {}
        miss = []
        for part, entries in (("train", ls.train), ("test", ls.test)):
            rows = []
            for path, lab in entries:
                n_listed += 1
                vid = index.match(path)
                if vid is None:
                    miss.append(path)
                    continue
                r = row[vid]
                if y[r] not in (-1, lab):
                    raise EvalError(f"{vid!r} gets two labels: {listing.classes[y[r]]!r} and "
                                    f"{listing.classes[lab]!r} ({listing.source})")
                y[r] = lab
                rows.append(r)
            parts[part] = np.asarray(rows, dtype=np.int64)
        overlap = np.intersect1d(parts["train"], parts["test"])
        if len(overlap):
            raise EvalError(f"{ls.name}: {len(overlap)} videos are in both train and test, "
                            f"e.g. {ids[overlap[0]]!r}")
        if miss:
            missing[ls.name] = miss
            n_missing += len(miss)
        splits.append(Split(ls.name, parts["train"], parts["test"]))
    if n_missing and not allow_missing:
        per = ", ".join(f"{k}: {len(v)}" for k, v in missing.items())
        example = next(iter(missing.values()))[:3]
        raise EvalError(
            f"{n_missing} of {n_listed} listed videos are not in the feature file ({per}; "
            f"e.g. {example}); the file has {len(ids)} videos. Extract the missing videos, "
            "or pass --allow-missing to skip them (reported)")
    for s in splits:
        if len(s.train) == 0 or len(s.test) == 0:
            raise EvalError(f"{s.name}: no listed {'training' if len(s.train) == 0 else 'test'} "
                            f"video is in the feature file ({listing.source}); do the video ids "
                            f"match the list files? first id: {ids[0] if len(ids) else None!r}")
    return Protocol(list(listing.classes), y, splits, listing.source, missing)


def kfold_protocol(ids: Sequence[str], labels: Sequence[Optional[str]], folds: int = 5,
                   seed: int = 0, source: str = "") -> Protocol:
    """Stratified k-fold cross-validation over the labelled rows (label None = unlabelled)."""
    from sklearn.model_selection import StratifiedKFold

    rows = np.asarray([i for i, lab in enumerate(labels) if lab is not None], dtype=np.int64)
    classes = sorted({lab for lab in labels if lab is not None})
    if len(classes) < 2:
        raise EvalError(f"need at least 2 classes for evaluation, found {len(classes)} "
                        f"({source}); {_HOW_TO_LABEL}")
    idx = {c: i for i, c in enumerate(classes)}
    y = np.full(len(ids), -1, dtype=np.int64)
    y[rows] = [idx[labels[r]] for r in rows]
    counts = np.bincount(y[rows], minlength=len(classes))
    if counts.min() < folds:
        small = [classes[i] for i in np.flatnonzero(counts < folds)][:5]
        raise EvalError(f"{folds}-fold cross-validation needs at least {folds} videos per class; "
                        f"{small} have fewer ({int(counts.min())} at least). Pass --folds "
                        f"{max(2, int(counts.min()))} or add videos")
    skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    splits = [Split(f"fold{i + 1}", rows[tr], rows[te])
              for i, (tr, te) in enumerate(skf.split(rows, y[rows]))]
    return Protocol(classes, y, splits, f"{source}, stratified {folds}-fold CV (seed {seed})")


_HOW_TO_LABEL = ("give --dataset ucf101|hmdb51 --splits DIR, or --labels CSV "
                 "[--train-list/--test-list], or extract from a videos/<class>/<clip> tree")


def folder_labels(ids: Sequence[str]) -> List[Optional[str]]:
    """Class = the parent folder of each video id (``<class>/<clip>`` under the input root)."""
    out = []
    for vid in ids:
        parts = PurePosixPath(vid.replace("\\", "/")).parts
        out.append(parts[-2] if len(parts) >= 2 else None)
    return out


def build_protocol(ids: Sequence[str], *, dataset: Optional[str] = None,
                   splits_dir: Optional[str | Path] = None, split: Optional[Sequence[int]] = None,
                   labels_csv: Optional[str | Path] = None, train_list: Optional[str | Path] = None,
                   test_list: Optional[str | Path] = None,
                   folds: int = 5, seed: int = 0, allow_missing: bool = False,
                   default_labels: Optional[Sequence[Optional[str]]] = None) -> Protocol:
    """The one entry point: choose the labels/splits source from the arguments given.

    Without --dataset / --labels: ``default_labels`` (e.g. labels stored in the feature file),
    else each id's parent folder, with stratified ``folds``-fold cross-validation.
    """
    if dataset is not None:
        if splits_dir is None:
            raise EvalError(f"--dataset {dataset} needs --splits DIR (the official split lists: "
                            + ("ucfTrainTestlist/" if dataset == "ucf101"
                               else "testTrainMulti_7030_splits/") + ")")
        parsers = {"ucf101": parse_ucf101, "hmdb51": parse_hmdb51}
        if dataset not in parsers:
            raise EvalError(f"unknown dataset {dataset!r}; choose ucf101 or hmdb51, or use --labels")
        return resolve(parsers[dataset](splits_dir, split), ids, allow_missing)
    if splits_dir is not None:
        raise EvalError("--splits needs --dataset ucf101|hmdb51 to know the list format")
    if labels_csv is not None:
        listing, labels = parse_generic(labels_csv, train_list, test_list)
        if listing.splits:
            return resolve(listing, ids, allow_missing)
        keys = _KeyIndex(list(labels))
        per_row = []
        for vid in ids:
            k = keys.match(vid)
            per_row.append(labels[k] if k is not None else None)
        if not any(lab is not None for lab in per_row):
            raise EvalError(f"no video id of the feature file has a label in {labels_csv} "
                            f"(first id: {ids[0] if len(ids) else None!r})")
        return kfold_protocol(ids, per_row, folds, seed, f"labels {labels_csv}")
    if train_list is not None or test_list is not None:
        raise EvalError("--train-list/--test-list need --labels CSV")
    row_labels = list(default_labels) if default_labels is not None else folder_labels(ids)
    if not any(lab is not None for lab in row_labels):
        raise EvalError("no labels: the video ids have no parent folder to take a class from "
                        f"(e.g. {ids[0] if len(ids) else None!r}); " + _HOW_TO_LABEL)
    return kfold_protocol(ids, row_labels, folds, seed, "labels from parent folders")
