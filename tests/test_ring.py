"""Decode processes' clip rings (c3dfeat.pipeline.ring) and the batches run in place from them
(pipeline.batching): consecutive slots are one tensor, also across the wrap; a batch of them runs
without a copy, gives bit-equal features, and frees its slots only after the forward pass."""
from __future__ import annotations

import gc
import multiprocessing
import os
import sys

import pytest
import torch

from c3dfeat.pipeline.batching import BatchRunner
from c3dfeat.pipeline.ring import ClipRing, SlotLoan
from tests._extract_tiny import tiny_models  # noqa: F401  (fixture)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork and memfd: Linux")

CTX = multiprocessing.get_context("fork")
PAGED = (3, 4, 32, 32)  # 48 KiB: whole pages
ODD = (3, 4, 24, 24)  # 27 KiB: 4 slots make whole pages


def _fill(ring: ClipRing, slot: int, value: float) -> None:
    ring.data[slot].numpy()[...] = value


def _ring_mappings() -> int:
    with open("/proc/self/maps") as f:
        return sum("c3dfeat-clip-ring" in line for line in f)


def test_consecutive_slots_are_one_tensor_across_the_wrap():
    ring = ClipRing(CTX, PAGED, slots=6, window=3)
    assert ring.mirrored == 2
    for slot in range(6):
        _fill(ring, slot, slot + 0.5)
    view = ring.batch_view([ring.loan(5), ring.loan(0), ring.loan(1)])
    assert view is not None and view.is_contiguous() and view.shape == (3,) + PAGED
    assert [float(v.flatten()[0]) for v in view] == [5.5, 0.5, 1.5]
    _fill(ring, 0, 7.0)  # the mirror is the same memory, not a copy
    assert float(view[1].flatten()[-1]) == 7.0
    inside = ring.batch_view([ring.loan(2), ring.loan(3), ring.loan(4)])
    assert inside is not None and inside.data_ptr() == ring.data[2].data_ptr()


def test_only_consecutive_slots_of_one_ring_make_a_view():
    ring, other = ClipRing(CTX, PAGED, 6, window=3), ClipRing(CTX, PAGED, 6, window=3)
    assert ring.batch_view([ring.loan(1), ring.loan(3)]) is None  # a gap
    assert ring.batch_view([ring.loan(2), ring.loan(1)]) is None  # backwards
    assert ring.batch_view([ring.loan(1), other.loan(2)]) is None  # another ring
    assert ring.batch_view([ring.loan(5), ring.loan(0), ring.loan(1), ring.loan(2)]) is None  # past the mirror
    assert ring.batch_view([]) is None


def test_odd_clip_sizes_mirror_when_the_ring_is_whole_pages():
    assert ClipRing(CTX, ODD, slots=8, window=3).mirrored == 2
    plain = ClipRing(CTX, ODD, slots=6, window=3)  # 162 KiB: not whole pages, so no mirror
    assert plain.mirrored == 0
    assert plain.batch_view([plain.loan(1), plain.loan(2), plain.loan(3)]) is not None
    assert plain.batch_view([plain.loan(5), plain.loan(0)]) is None
    assert ClipRing(CTX, PAGED, slots=6, window=1).mirrored == 0  # batches of one need none


def test_a_forked_child_writes_what_the_parent_reads_through_the_mirror():
    ring = ClipRing(CTX, PAGED, slots=4, window=4)
    pid = os.fork()
    if pid == 0:  # the child: numpy only (torch's thread pool is not fork-safe)
        ring.data[1].numpy()[...] = 9.0
        os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0
    view = ring.batch_view([ring.loan(3), ring.loan(0), ring.loan(1)])
    assert view is not None and bool((view[2] == 9.0).all())


def test_the_memory_lives_while_a_view_does_and_is_unmapped_after():
    gc.collect()
    before = _ring_mappings()
    ring = ClipRing(CTX, PAGED, slots=4, window=2)
    assert _ring_mappings() == before + 2  # the slots and the mirror
    view = ring.batch_view([ring.loan(3), ring.loan(0)])
    assert view is not None
    _fill(ring, 0, 3.0)
    del ring
    gc.collect()
    assert float(view[1].flatten()[0]) == 3.0 and _ring_mappings() == before + 2
    del view
    gc.collect()
    assert _ring_mappings() == before


def _tiny(layers=("input", "conv")):
    from c3dfeat.pipeline.plan import ModelRequest, prepare_model

    return prepare_model(ModelRequest("tiny3d_id", layers), device=torch.device("cpu"), random_init=True)


class _ScribblingLoan(SlotLoan):
    """A loan whose release also overwrites the slot, as the child reusing it would: a release
    before the forward pass would show in the features."""

    __slots__ = ("log",)

    def __init__(self, ring: ClipRing, slot: int, log: list) -> None:
        super().__init__(ring, slot)
        self.log = log

    def __call__(self) -> None:
        self.log.append(self.slot)
        super().__call__()
        self.ring.data[self.slot].fill_(-1.0)


def _lend(ring: ClipRing, slot: int, clip: torch.Tensor, log: list) -> _ScribblingLoan:
    """What a decode process does with a clip: claim `slot`, write the clip into it."""
    assert ring.take(slot, lambda: None) == slot
    ring.data[slot].copy_(clip)
    return _ScribblingLoan(ring, slot, log)


@pytest.mark.usefixtures("tiny_models")
def test_a_batch_of_one_lenders_consecutive_slots_runs_in_place_bit_equal():
    model = _tiny()
    torch.manual_seed(0)
    clips = [torch.rand(model.clip_shape) for _ in range(9)]
    reference = BatchRunner(model, 3, torch.device("cpu"))
    expected = {}
    for k, clip in enumerate(clips):
        if reference.add(k, clip.clone()):
            expected.update(reference.launch().collect())
    assert reference.batches_in_place == 0

    a, b = ClipRing(CTX, model.clip_shape, 8, window=3), ClipRing(CTX, model.clip_shape, 8, window=3)
    runner = BatchRunner(model, 3, torch.device("cpu"))
    log: list = []
    got = {}
    # interleaved lenders; a's slots wrap (6, 7, 0, 1, ...); batches are formed per lender
    order = [(a, 6, 0), (b, 2, 1), (a, 7, 2), (b, 3, 3), (b, 4, 4), (a, 0, 5), (a, 1, 6), (a, 2, 7), (b, 5, 8)]
    for ring, slot, k in order:
        if runner.add(k, ring.data[slot], _lend(ring, slot, clips[k], log)):
            launched = runner.launch()
            got.update(launched.collect())
    assert runner.batches_in_place == 2 and sorted(got) == [0, 1, 2, 3, 4, 5]  # b: slots 2-4; a: 6, 7, 0
    assert runner.keys() == [6, 7, 8] and not runner.full
    got.update(runner.launch().collect())  # no lender has 3: the first 3 pending, copied
    assert runner.batches_in_place == 2 and len(runner) == 0
    for k in range(9):
        for layer in ("input", "conv"):
            assert (got[k][layer] == expected[k][layer]).all(), (k, layer)
    assert sorted(log) == sorted(slot for _, slot, _ in order)  # every slot given back once
    assert (a.busy == 0).all() and (b.busy == 0).all()


@pytest.mark.usefixtures("tiny_models")
def test_a_partial_batch_of_lent_clips_is_copied_and_zero_padded():
    model = _tiny(("input",))
    ring = ClipRing(CTX, model.clip_shape, 8, window=4)
    runner = BatchRunner(model, 4, torch.device("cpu"))
    clips = [torch.rand(model.clip_shape) for _ in range(2)]
    log: list = []
    for k, clip in enumerate(clips):
        assert not runner.add(k, ring.data[k], _lend(ring, k, clip, log))
    got = dict(runner.launch().collect())
    assert runner.batches_in_place == 0 and log == [0, 1]
    for k, clip in enumerate(clips):
        assert (got[k]["input"] == clip.flatten().numpy()).all()
