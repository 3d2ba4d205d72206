"""A SIGKILL in the middle of a write: page-aligned headers, torn headers mended, real torn pwrites.

Linux stops a pwrite at a page boundary when a fatal signal arrives mid-copy, so a killed writer can
leave one metadata block half new, half old. The CI once met it: a dataset header straddling two
pages, new length before the boundary, old checksum after, "incorrect metadata checksum" on repair.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
from h5py import h5o

from c3dfeat.errors import StoreError
from c3dfeat.store import FeatureFile, merge, open_writer, recover_file, repair
from c3dfeat.store.files import PAGE, WRITE_OPTIONS
from c3dfeat.store.recovery import _lookup3, mend_torn_headers
from tests.test_store import _WRITER, MODELS, PROV, _assert_same_datasets, _run_and_kill, _video

TESTS = Path(__file__).resolve().parent

# Resumes argv[1] and adds argv[2] videos; argv[3] == "unaligned" writes as before page alignment.
_RESUMER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {root!r})
    from c3dfeat.store import files, open_writer
    from tests.test_store import MODELS, PROV, _video
    if sys.argv[3] == "unaligned":
        del files.WRITE_OPTIONS["alignment_threshold"], files.WRITE_OPTIONS["alignment_interval"]
    w = open_writer(sys.argv[1], MODELS, PROV)
    for i in range(w.num_videos, w.num_videos + int(sys.argv[2])):
        w.add_video(*_video(i, 1 + i % 3))
    w.close()
    """
).format(root=str(TESTS.parent))


def _headers(path) -> dict:
    """{dataset name: (header address, header bytes)}"""
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                info = h5o.get_info(obj.id)
                out[name] = (info.addr, info.hdr.space.total)
        f.visititems(visit)
    return out


def _write(path, n, unaligned=False, monkeypatch=None, meta_block_size=None):
    with contextlib.ExitStack() as stack:
        if unaligned:  # as files were written before page alignment
            m = stack.enter_context(monkeypatch.context())
            m.delitem(WRITE_OPTIONS, "alignment_threshold")
            m.delitem(WRITE_OPTIONS, "alignment_interval")
            if meta_block_size:  # where HDF5 packs the object headers (2048 bytes by default)
                m.setitem(WRITE_OPTIONS, "meta_block_size", meta_block_size)
        with open_writer(path, MODELS, PROV) as w:
            for i in range(w.num_videos, n):
                w.add_video(*_video(i, 1 + i % 3))


def _assert_committed_rows_exact(path, n):
    with FeatureFile(path) as ff:
        assert ff.num_videos == n and ff.video_ids == [f"dir/v{i}.mp4" for i in range(n)]
        for i in range(n):
            feats = _video(i, 1 + i % 3)[1]["m"].features
            for layer in ("a", "b"):
                np.testing.assert_array_equal(ff.clips(f"dir/v{i}.mp4", "m", layer), feats[layer])


# ----------------------------------------------------------------------------- prevention
def test_every_header_starts_a_page_in_new_resumed_and_merged_files(tmp_path):
    p = tmp_path / "f.h5"
    _write(p, 3)
    _write(p, 7)  # resumed
    merged = merge([p], tmp_path / "m.h5")
    for path in (p, merged):
        heads = _headers(path)
        assert len(heads) > 20
        for name, (addr, size) in heads.items():
            assert addr % PAGE == 0 and size <= PAGE, (path.name, name, addr, size)


# ----------------------------------------------------------------------------- a torn header, made by hand
@pytest.fixture(scope="module")
def killed_file(tmp_path_factory):
    """A file whose writer was SIGKILLed after 20+ commits (made once, copied per test)."""
    p = tmp_path_factory.mktemp("killed") / "k.h5"
    _run_and_kill(_WRITER.format(tests=str(TESTS)), p)
    return p


def _tear(path, name, cut):
    """Leave `name`'s header as a kill mid-pwrite would: a new length up to byte `cut`, the old bytes after.

    `cut` is where the page boundary fell: "in-dims" (inside the length), "checksum" (all but the
    checksum), "mid-checksum" (half of it).
    """
    with h5py.File(path, "r", swmr=True) as f:
        info = h5o.get_info(f[name].id)
        addr, size, shape = info.addr, info.hdr.space.total, f[name].shape
    with open(path, "r+b") as fh:
        fh.seek(addr)
        old = bytearray(fh.read(size))
        dim_at = old.index(struct.pack(f"<{len(shape)}Q", *shape) + b"\xff" * 8)  # dims, then maxdims[0] = unlimited
        new = bytearray(old)
        new[dim_at : dim_at + 8] = struct.pack("<Q", shape[0] + 0x0101)
        new[-4:] = struct.pack("<I", _lookup3(bytes(new[:-4])))
        at = {"in-dims": dim_at + 1, "checksum": size - 4, "mid-checksum": size - 2}[cut]
        fh.seek(addr)
        fh.write(bytes(new[:at] + old[at:]))


@pytest.mark.parametrize("cut", ["in-dims", "checksum", "mid-checksum"])
@pytest.mark.parametrize("name", ["models/m/layers/b/clip_features", "models/m/layers/a/video_mean",
                                  "models/m/clips/start_frame", "videos/id"])
def test_repair_mends_a_torn_header(killed_file, tmp_path, name, cut):
    p = tmp_path / "k.h5"
    shutil.copy(killed_file, p)
    with FeatureFile(p) as ff:
        n = ff.num_videos
    _tear(p, name, cut)
    assert recover_file(p)  # (a plain open, not a SWMR one: that retries a bad checksum for minutes)
    with h5py.File(p, "r") as f, pytest.raises(KeyError, match="incorrect metadata checksum"):
        f[name]  # what the CI met: the dataset is gone
    report = repair(p)
    assert report["headers_mended"] == [name] and report["videos"] == n
    _assert_committed_rows_exact(p, n)
    assert repair(p)["headers_mended"] == []


@pytest.mark.parametrize("name", ["models/m/layers/b/clip_features", "models/m/layers/a/video_mean"])
def test_a_mended_header_holds_exactly_the_committed_rows(killed_file, tmp_path, name):
    """Before any table is cut: the mended length is the committed count (clips for clip tables)."""
    p = tmp_path / "k.h5"
    shutil.copy(killed_file, p)
    with FeatureFile(p) as ff:
        n = ff.num_videos
    _tear(p, name, "checksum")
    assert recover_file(p)
    assert mend_torn_headers(p) == [name]
    with h5py.File(p, "r") as f:
        expected = sum(1 + i % 3 for i in range(n)) if name.endswith("clip_features") else n  # the writer's clips
        assert f[name].shape[0] == expected


def test_resume_mends_a_torn_header_and_ends_equal_to_an_uninterrupted_run(killed_file, tmp_path):
    p = tmp_path / "k.h5"
    shutil.copy(killed_file, p)
    with FeatureFile(p) as ff:
        n = ff.num_videos
    _tear(p, "models/m/layers/b/clip_features", "checksum")
    assert _run_and_kill(_WRITER.format(tests=str(TESTS)), p) == n  # resumed where the commits ended
    with FeatureFile(p) as ff:
        total = ff.num_videos
    ref = tmp_path / "ref.h5"
    _write(ref, total)
    _assert_same_datasets(p, ref, nrows={"": total})


def test_a_header_repair_cannot_mend_is_a_clear_error(killed_file, tmp_path):
    p = tmp_path / "k.h5"
    shutil.copy(killed_file, p)
    with h5py.File(p, "r", swmr=True) as f:
        addr = h5o.get_info(f["models/m/videos/num_clips"].id).addr
    with open(p, "r+b") as fh:
        fh.seek(addr)
        fh.write(b"JUNK")  # not a torn header: its signature is gone
    with pytest.raises(StoreError, match="cannot be mended .*not a version-2 object header"):
        repair(p)


# ----------------------------------------------------------------------------- real torn pwrites
@pytest.fixture(scope="module")
def tear_shim(tmp_path_factory):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build tests/tear_writes.c")
    so = tmp_path_factory.mktemp("shim") / "tear_writes.so"
    subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(so), str(TESTS / "tear_writes.c"), "-ldl"], check=True)
    return so


def _resume_under_shim(shim, path, n_more, layout, **env):
    run_env = {**os.environ, "LD_PRELOAD": str(shim), **{k: str(v) for k, v in env.items()}}
    proc = subprocess.run([sys.executable, "-c", _RESUMER, str(path), str(n_more), layout], env=run_env,
                          capture_output=True, text=True)
    return proc.returncode


@pytest.mark.parametrize("layout", ["aligned", "unaligned"])
def test_kill_in_the_middle_of_any_write_loses_no_committed_video(tear_shim, tmp_path, monkeypatch, layout):
    """Tear the writes a resumed run makes, one run per write torn, and repair each file.

    Aligned (today's files): no header write crosses a page, and no global-heap collection write
    either, so only data chunks can tear, and those keep the committed rows' bytes. Unaligned (files
    written before): header writes tear too, and repair mends them; a torn collection there can
    lose committed strings, which repair does not mend (docs/hdf5-schema.md, "Torn writes"), so
    those writes are not torn here.
    """
    base = tmp_path / "base.h5"
    # Unaligned, whether a dataset header crosses a page depends on every object allocated before
    # it (the schema's): HDF5's metadata block size moves them until one does, the case under test.
    for meta_block_size in (None, 1024, 512, 1536, 3072) if layout == "unaligned" else (None,):
        _write(base, 5, unaligned=layout == "unaligned", monkeypatch=monkeypatch, meta_block_size=meta_block_size)
        if layout == "aligned" or any(addr // PAGE != (addr + size - 1) // PAGE
                                      for name, (addr, size) in _headers(base).items() if name != "committed"):
            break
        base.unlink()
    heads = {addr for addr, _ in _headers(base).values()}
    logged = tmp_path / "logged.h5"
    shutil.copy(base, logged)
    log = tmp_path / "writes.log"
    assert _resume_under_shim(tear_shim, logged, 30, layout, TEAR_LOG=log) == 0
    writes = [tuple(map(int, line.split())) for line in log.read_text().splitlines()]
    header_writes = [k for k, (off, _) in enumerate(writes, 1) if off in heads]
    data = logged.read_bytes()
    collection_writes = {k for k, (off, _) in enumerate(writes, 1) if data[off : off + 4] == b"GCOL"}
    if layout == "aligned":
        assert header_writes == [] and not collection_writes
    else:
        assert header_writes, "the unaligned layout was expected to have a header across a page boundary"
    # torn: a sample of the header writes, the first write of each size (chunks of each table, global-heap
    # collections), and a spread of the rest
    first_of_size = {size: k for k, (_, size) in reversed(list(enumerate(writes, 1)))}
    spread = range(1, len(writes) + 1, len(writes) // 6)
    picks = sorted({*header_writes[:: max(1, len(header_writes) // 6)], *first_of_size.values(), *spread}
                   - collection_writes)
    mended = 0
    for k in picks:
        p = tmp_path / f"torn{k}.h5"
        shutil.copy(base, p)
        assert _resume_under_shim(tear_shim, p, 30, layout, TEAR_AT=k) == -9
        report = repair(p)
        mended += bool(report["headers_mended"])
        assert report["videos"] >= 5
        _assert_committed_rows_exact(p, report["videos"])
    assert (mended > 0) == (layout == "unaligned")


# Writes argv[2] videos to a new file argv[1] in commits of 100, with one-row feature chunks (so the
# feature matrices get ~9,000 chunks: past where an extensible array's data blocks outgrow a page).
_MANY_CHUNKS = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {root!r})
    from c3dfeat.store import open_writer, schema
    from tests.test_store import MODELS, PROV, _video
    schema.FEATURE_CHUNK_BYTES = 1
    with open_writer(sys.argv[1], MODELS, PROV) as w:
        n = int(sys.argv[2])
        for s in range(0, n, 100):
            w.add_videos([_video(i, 3) for i in range(s, min(n, s + 100))])
    """
).format(root=str(TESTS.parent))


def test_no_metadata_write_crosses_a_page_even_with_thousands_of_chunks(tear_shim, tmp_path):
    """Only data chunks and global-heap collections may cross a page; every index node stays inside one."""
    p, log = tmp_path / "many.h5", tmp_path / "writes.log"
    env = {**os.environ, "LD_PRELOAD": str(tear_shim), "TEAR_LOG": str(log)}
    subprocess.run([sys.executable, "-c", _MANY_CHUNKS, str(p), "3000"], env=env, check=True)
    chunk_starts = set()
    with h5py.File(p, "r") as f:
        assert f["models/m/layers/b/clip_features"].id.get_num_chunks() == 9000
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and obj.chunks:
                chunk_starts.update(obj.id.get_chunk_info(i).byte_offset for i in range(obj.id.get_num_chunks()))
        f.visititems(visit)
    # The tables' 32 KiB data chunks always cross pages: an empty log would mean the shim never loaded.
    crossing = [tuple(map(int, line.split())) for line in log.read_text().splitlines()]
    assert crossing
    with open(p, "rb") as fh:
        def is_metadata(offset):
            fh.seek(offset)
            return offset not in chunk_starts and fh.read(4) != b"GCOL"
        metadata = [(off, size) for off, size in crossing if is_metadata(off)]
    p.unlink()  # ~100 MB: each one-row chunk fills a page
    assert metadata == []


@pytest.mark.parametrize("via", ["repair", "resume"])
def test_damage_repair_cannot_mend_is_a_one_line_store_error(killed_file, tmp_path, via):
    p = tmp_path / "k.h5"
    shutil.copy(killed_file, p)
    data = p.read_bytes()
    # a statistic in /videos/id's chunk index header: the second allocated (the first is /runs',
    # written when the file is created; /videos/id is the first table a commit writes)
    at = data.index(b"EAHD", data.index(b"EAHD") + 1) + 20
    with open(p, "r+b") as fh:
        fh.seek(at)
        fh.write(bytes([data[at] ^ 0xFF]))
    with pytest.raises(StoreError, match="damaged beyond what repair mends .*checksum.*use --overwrite"):
        if via == "repair":
            repair(p)
        else:
            open_writer(p, MODELS, PROV)
