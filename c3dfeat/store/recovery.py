"""After a killed writer: the superblock flag (lookup3 checksum), torn headers, cutting uncommitted rows, repair.

A killed SWMR writer leaves the superblock's "open for writing" flags set; plain ``h5py.File(p, "r")``
then refuses the file. :func:`recover_file` clears them (what ``h5clear -s --increment`` does),
:func:`mend_torn_headers` rewrites dataset headers a kill tore in half (files written before their
headers were page-aligned), :func:`truncate_to_committed` cuts rows past ``/committed``;
:func:`repair` does all three.
"""
from __future__ import annotations

import os
import struct
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import h5py

from c3dfeat.errors import StoreError
from c3dfeat.store.files import RunLock, open_write
from c3dfeat.store.schema import FORMAT, FORMAT_VERSION, STATE_COMPLETE, STATE_INCOMPLETE, STR, TABLE_CHUNK


def _lookup3(data: bytes, initval: int = 0) -> int:
    """Bob Jenkins' lookup3 hashlittle: the checksum of HDF5 superblock v2/v3 (H5checksum.c)."""
    m = 0xFFFFFFFF

    def rot(x: int, k: int) -> int:
        return ((x << k) | (x >> (32 - k))) & m

    def word(i: int) -> int:
        return int.from_bytes(block[i : i + 4], "little")

    n = len(data)
    a = b = c = (0xDEADBEEF + n + initval) & m
    i = 0
    while n > 12:
        block = data[i : i + 12]
        a, b, c = (a + word(0)) & m, (b + word(4)) & m, (c + word(8)) & m
        # mix(a, b, c)
        a = ((a - c) & m) ^ rot(c, 4)
        c = (c + b) & m
        b = ((b - a) & m) ^ rot(a, 6)
        a = (a + c) & m
        c = ((c - b) & m) ^ rot(b, 8)
        b = (b + a) & m
        a = ((a - c) & m) ^ rot(c, 16)
        c = (c + b) & m
        b = ((b - a) & m) ^ rot(a, 19)
        a = (a + c) & m
        c = ((c - b) & m) ^ rot(b, 4)
        b = (b + a) & m
        n -= 12
        i += 12
    if n == 0:
        return c
    block = data[i:] + bytes(12 - n)
    a, b, c = (a + word(0)) & m, (b + word(4)) & m, (c + word(8)) & m
    # final(a, b, c)
    c = (c ^ b) - rot(b, 14) & m
    a = (a ^ c) - rot(c, 11) & m
    b = (b ^ a) - rot(a, 25) & m
    c = (c ^ b) - rot(b, 16) & m
    a = (a ^ c) - rot(c, 4) & m
    b = (b ^ a) - rot(a, 14) & m
    c = (c ^ b) - rot(b, 24) & m
    return c


_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _superblock(fh: Any, path: Union[str, Path]) -> Optional[bytearray]:
    """The 48-byte version-2/3 superblock (checksum verified), or None for an older superblock."""
    sb = bytearray(fh.read(48))
    if sb[:8] != _SIGNATURE:
        raise StoreError(f"{path} is not an HDF5 file (or has a user block); remove it or use --overwrite")
    if sb[8] not in (2, 3) or sb[9] != 8 or sb[10] != 8:
        return None  # old superblock (no flags there): nothing a SWMR writer can leave behind
    if struct.unpack("<I", sb[44:48])[0] != _lookup3(bytes(sb[:44])):
        raise StoreError(f"{path}: HDF5 superblock checksum mismatch; the file is damaged, use --overwrite")
    return sb


def open_for_write_flag(path: Union[str, Path]) -> bool:
    """True when the superblock says "open for (SWMR) writing": a writer is running or was killed."""
    with open(path, "rb") as fh:
        sb = _superblock(fh, path)
    return sb is not None and sb[11] != 0


def recover_file(path: Union[str, Path]) -> bool:
    """Clear the "open for (SWMR) writing" flags a killed writer left; True if they were set.

    Same effect as ``h5clear -s --increment=0``: the consistency flags byte of the version-3
    superblock is zeroed, the stored end-of-allocation address is raised to the physical file
    size (so new allocations never land on bytes the killed writer already used), and the
    superblock checksum (lookup3) is recomputed. Only safe when no process has the file open.
    """
    with open(path, "r+b") as fh:
        sb = _superblock(fh, path)
        if sb is None or sb[11] == 0:
            return False
        eoa = struct.unpack("<Q", sb[28:36])[0]
        size = os.fstat(fh.fileno()).st_size
        sb[11] = 0
        sb[28:36] = struct.pack("<Q", max(eoa, size))
        sb[44:48] = struct.pack("<I", _lookup3(bytes(sb[:44])))
        fh.seek(0)
        fh.write(sb)
        fh.flush()
        os.fsync(fh.fileno())
    return True


class _NotMendable(Exception):
    pass


def _header_chunk(fd: int, addr: int) -> Tuple[bytearray, int]:
    """Chunk 0 of the version-2 object header at `addr` (checksum last) and where its messages start."""
    head = os.pread(fd, 6, addr)
    if head[:4] != b"OHDR" or head[4] != 2:
        raise _NotMendable("not a version-2 object header")
    flags = head[5]
    size_at = 6 + (16 if flags & 0x20 else 0) + (4 if flags & 0x10 else 0)  # times, attribute phase change
    width = 1 << (flags & 3)
    size0 = int.from_bytes(os.pread(fd, width, addr + size_at), "little")
    oh = bytearray(os.pread(fd, size_at + width + size0 + 4, addr))
    return oh, size_at + width


def _first_dim_at(oh: bytearray, messages_at: int) -> int:
    """Offset of the dataspace message's first dimension (version 2, 8-byte lengths) in `oh`."""
    msg_head = 6 if oh[5] & 0x04 else 4  # type, size, flags [, creation order]
    p = messages_at
    while p + msg_head <= len(oh) - 4:
        kind, size = oh[p], int.from_bytes(oh[p + 1 : p + 3], "little")
        if kind == 0x01:  # dataspace
            if oh[p + msg_head] != 2 or oh[p + msg_head + 1] < 1:
                raise _NotMendable("not a version-2 dataspace")
            return p + msg_head + 4
        p += msg_head + size
    raise _NotMendable("no dataspace message in the header's first chunk")


def _checksum_ok(oh: bytearray) -> bool:
    return struct.unpack("<I", oh[-4:])[0] == _lookup3(bytes(oh[:-4]))


def _dataset_addresses(f: h5py.File) -> Dict[str, int]:
    """Header address of every table and feature dataset, read from the links (opening a torn one fails)."""
    groups = ["videos"]
    for key in f["models"]:
        groups += [f"models/{key}/videos", f"models/{key}/clips"]
        groups += [f"models/{key}/layers/{name}" for name in f[f"models/{key}/layers"]]
    addresses = {}
    for path in groups:
        g = f[path]  # held: the link proxy needs the group open
        for name in g:
            addresses[f"{path}/{name}"] = g.id.links.get_info(name.encode()).u
    return addresses


def _clip_indexed(name: str) -> bool:
    return "/clips/" in name or name.endswith("/clip_features")


def mend_torn_headers(path: Union[str, Path]) -> List[str]:
    """Rewrite the dataset headers a killed writer tore; returns their names (empty: none torn).

    Every commit rewrites each dataset's object header with its new length. When that header
    straddles two pages, a SIGKILL between them leaves the new first part and the old checksum, and
    HDF5 refuses the dataset ("incorrect metadata checksum"). The two versions differ only in the
    first dimension, so setting it to the committed row count and recomputing the checksum gives
    exactly the header of the committed state. Files written since headers are page-aligned
    (``files.WRITE_OPTIONS``) cannot tear this way. Call only after :func:`recover_file`.
    """
    with h5py.File(path, "r") as f:
        if f.attrs.get("format") != FORMAT or int(f.attrs.get("format_version", 1)) != FORMAT_VERSION:
            return []  # not a file this writer appends to
        committed = int(f["committed"][0])
        addresses = _dataset_addresses(f)
    fd = os.open(path, os.O_RDWR)
    try:
        torn = {}
        for name, addr in addresses.items():
            oh, messages_at = _header_chunk(fd, addr)
            if not _checksum_ok(oh):
                torn[name] = (addr, oh, _first_dim_at(oh, messages_at))
        if not torn:
            return []

        def rewrite(name: str, rows: int) -> None:
            addr, oh, dim_at = torn[name]
            oh[dim_at : dim_at + 8] = struct.pack("<Q", rows)
            oh[-4:] = struct.pack("<I", _lookup3(bytes(oh[:-4])))
            os.pwrite(fd, bytes(oh), addr)

        for name in torn:
            if not _clip_indexed(name):
                rewrite(name, committed)
        clip_names = [name for name in torn if _clip_indexed(name)]
        if clip_names:
            with h5py.File(path, "r") as f:  # clip counts come from the video tables, mended above
                clips = {key: clip_count(f, key, committed) for key in f["models"]}
            for name in clip_names:
                rewrite(name, clips[name.split("/")[1]])
        os.fsync(fd)
    except _NotMendable as e:
        raise StoreError(
            f"{path}: an HDF5 header damaged by the kill cannot be mended ({e}); "
            "use --overwrite (or another output) to start over"
        ) from None
    finally:
        os.close(fd)
    return sorted(torn)


@contextmanager
def damage_is_a_store_error(path: Union[str, Path]) -> Iterator[None]:
    """HDF5's checksum and signature errors inside: metadata damaged beyond what repair mends."""
    try:
        yield
    except (KeyError, OSError) as e:
        if "checksum" not in str(e) and "signature" not in str(e):
            raise
        raise StoreError(
            f"{path}: HDF5 metadata is damaged beyond what repair mends ({e}); "
            "use --overwrite (or another output) to start over"
        ) from None


def clip_count(f: h5py.File, key: str, num_videos: int) -> int:
    """Committed clip rows of model `key`: where the last committed video's clips end."""
    if num_videos == 0:
        return 0
    g = f[f"models/{key}/videos"]
    return int(g["clip_offset"][num_videos - 1] + g["num_clips"][num_videos - 1])


def append_rows(ds: h5py.Dataset, values: Any) -> None:
    n = ds.shape[0]
    ds.resize(n + len(values), axis=0)
    ds[n:] = values


def truncate_to_committed(f: h5py.File, rebuild_strings: bool) -> int:
    """Cut every table of an open (r+) file back to the committed rows; returns video rows cut.

    String columns are rebuilt instead of shrunk when `rebuild_strings` (after a killed writer)
    or when they hold extra rows: the rows past the commit may point at global-heap objects the
    killed writer never flushed, and HDF5 frees the old heap object of every vlen element it
    overwrites ("bad heap index" on the next append otherwise).
    """
    n = int(f["committed"][0])
    g = f["videos"]
    cut = 0
    for name in list(g):
        ds = g[name]
        cut = max(cut, ds.shape[0] - n)
        if h5py.check_string_dtype(ds.dtype) is not None and (rebuild_strings or ds.shape[0] != n):
            keep = ds[:n]
            attrs = dict(ds.attrs)
            del g[name]
            ds = g.create_dataset(name, shape=(0,), maxshape=(None,), chunks=(TABLE_CHUNK,), dtype=STR)
            ds.attrs.update(attrs)
            if n:
                append_rows(ds, keep)
        elif ds.shape[0] != n:
            ds.resize(n, axis=0)
    for key in f["models"]:
        gm = f[f"models/{key}"]
        c = clip_count(f, key, n)
        for ds in gm["videos"].values():
            ds.resize(n, axis=0)
        for ds in gm["clips"].values():
            ds.resize(c, axis=0)
        for gl in gm["layers"].values():
            gl["clip_features"].resize(c, axis=0)
            gl["video_mean"].resize(n, axis=0)
    return cut


def repair(path: Union[str, Path]) -> Dict[str, Any]:
    """Make a killed run's file openable by plain ``h5py.File(p, "r")``, without rerunning.

    Clears the superblock's "open for writing" flag, cuts the rows past ``/committed`` and marks
    the file "incomplete" (rerunning the same command still resumes it). A file that needs
    nothing is left untouched. Refused while a writer is running.

    Returns:
        {"path", "repaired": bool, "flag_cleared": bool, "headers_mended": [dataset names],
        "rows_cut": int, "videos": int, "state"}
    """
    path = Path(path)
    if not path.exists():
        raise StoreError(f"feature file {path} does not exist")
    lock = RunLock(path)
    try:
        flag_cleared = recover_file(path)
        with damage_is_a_store_error(path):
            mended = mend_torn_headers(path)
        killed = flag_cleared or bool(mended)  # (a torn header with the flag clear: h5clear was run)
        with open_write(path) as f, damage_is_a_store_error(path):
            if f.attrs.get("format") != FORMAT:
                raise StoreError(f"{path} is not a c3dfeat feature file")
            needs_cut = killed or any(ds.shape[0] != int(f["committed"][0]) for ds in f["videos"].values())
            rows_cut = truncate_to_committed(f, rebuild_strings=killed) if needs_cut else 0
            n = int(f["committed"][0])
            if killed and "state" in f.attrs:
                f.attrs["state"] = STATE_INCOMPLETE
                f.attrs["state_reason"] = (
                    f"repaired after a killed run: {n} committed videos kept, {rows_cut} uncommitted rows cut; "
                    "rerun the same command to add the rest"
                )
            state = str(f.attrs.get("state", STATE_COMPLETE))
    finally:
        lock.release()
    return {"path": str(path), "repaired": bool(killed or rows_cut), "flag_cleared": flag_cleared,
            "headers_mended": mended, "rows_cut": int(rows_cut), "videos": n, "state": state}
