"""A decode process's clip buffers: a ring of slots in shared memory, lent to the consumer.

    ring = ClipRing(ctx, clip_shape, slots=8, window=4)  # before the fork
    slot = ring.take(hint, before_waiting)                # child: claim a free slot, write data[slot]
    loan = ring.loan(slot)                                # parent: the clip is lent ...
    ring.batch_view([loan, ...])                          # ... consecutive slots as one tensor, or None
    loan()                                                # ... and given back

The memory is mapped before the fork, so both sides use the same pages: no per-clip allocation,
page faults or /dev/shm file. Where Linux allows it, the first `window - 1` slots are mapped a
second time right after the last one (a "mirrored" ring), so that any `window` consecutive slots,
also across the wrap, are one contiguous tensor: the consumer can run a batch of them in place
instead of copying each clip into a batch buffer (pipeline.batching).
"""
from __future__ import annotations

import ctypes
import mmap
import os
import weakref
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

__all__ = ["ClipRing", "SlotLoan"]

_PROT_NONE, _PROT_RW = 0, 0x1 | 0x2
_MAP_SHARED, _MAP_PRIVATE, _MAP_FIXED, _MAP_ANONYMOUS, _MAP_NORESERVE = 0x01, 0x02, 0x10, 0x20, 0x4000
_MAP_FAILED = ctypes.c_void_p(-1).value


class SlotLoan:
    """One lent slot: calling it gives the slot back (once); `ring` and `slot` say which."""

    __slots__ = ("ring", "slot")

    def __init__(self, ring: "ClipRing", slot: int) -> None:
        self.ring = ring
        self.slot = slot

    def __call__(self) -> None:
        self.ring.release(self.slot)


class ClipRing:
    """One child's clip buffers for one model (module docstring): `data[slot]` is written by the
    child after `take`, read by the parent, and freed by the parent's `release(slot)`. `window`:
    how many consecutive slots `batch_view` must be able to return as one tensor (the batch size)."""

    def __init__(self, ctx: Any, clip_shape: Sequence[int], slots: int, window: int = 1) -> None:
        numel = int(np.prod(clip_shape))
        mirrored = min(window, slots) - 1
        memory = _mirrored_memory(slots * numel * 4, mirrored * numel * 4) if mirrored > 0 else None
        if memory is None:
            # Anonymous shared mappings made before the fork. Not /dev/shm files (torch's
            # share_memory_): containers often cap /dev/shm at 64 MiB, and a write past the cap is
            # a SIGBUS, not an error.
            memory, mirrored = mmap.mmap(-1, slots * numel * 4), 0
        self._memory = memory
        # all slots, then the mirrored ones again: views of the same pages
        flat = torch.frombuffer(memory, dtype=torch.float32)[: (slots + mirrored) * numel]
        self._extended = flat.view((slots + mirrored,) + tuple(clip_shape))
        self.data = self._extended[:slots]
        self.mirrored = mirrored
        self._busy_map = mmap.mmap(-1, slots)
        self.busy = np.frombuffer(self._busy_map, dtype=np.uint8)  # 1: written by the child, not yet released
        self.free = ctx.Semaphore(slots)
        self.slots = slots

    def take(self, hint: int, before_waiting: Callable[[], None]) -> int:
        """Child: claim a free buffer (the first from `hint` on); if there is none, call
        `before_waiting` (send what the parent has not seen: it frees buffers) and wait."""
        if not self.free.acquire(block=False):
            before_waiting()
            self.free.acquire()
        for k in range(self.slots):
            slot = (hint + k) % self.slots
            if not self.busy[slot]:
                self.busy[slot] = 1
                return slot
        raise RuntimeError("internal error: a decode ring's semaphore and flags disagree")

    def release(self, slot: int) -> None:
        """Parent: the consumer is done with `data[slot]`. The flag goes first: the semaphore
        is what the child waits on."""
        self.busy[slot] = 0
        self.free.release()

    def loan(self, slot: int) -> SlotLoan:
        """Parent: the release callback of the clip in `slot`."""
        return SlotLoan(self, slot)

    def starved(self) -> bool:
        """Parent: the child has no free buffer left (it waits, or will at its next clip)."""
        return int(self.free.get_value()) == 0

    def batch_view(self, loans: Sequence[Any]) -> Optional[torch.Tensor]:
        """The clips of `loans` as one contiguous (n, *clip_shape) tensor of this ring's memory
        when they are n consecutive slots of it (across the wrap if mirrored), else None."""
        if not loans:
            return None
        first = loans[0]
        if not isinstance(first, SlotLoan) or first.ring is not self:
            return None
        start = first.slot
        for k, loan in enumerate(loans):
            if not isinstance(loan, SlotLoan) or loan.ring is not self or loan.slot != (start + k) % self.slots:
                return None
        if start + len(loans) > self.slots + self.mirrored:
            return None
        return self._extended[start : start + len(loans)]


def _mirrored_memory(size: int, mirror: int) -> Optional[Any]:
    """`size` bytes of shared memory followed, at the next address, by (at least) its first
    `mirror` bytes again, as a buffer object that unmaps itself when collected; None where that
    cannot be made (not Linux, no memfd, `size` not a multiple of the page size)."""
    page = mmap.PAGESIZE
    mirror = -(-mirror // page) * page  # whole pages
    if size % page or not 0 < mirror <= size or not hasattr(os, "memfd_create"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                              ctypes.c_long]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        fd = os.memfd_create("c3dfeat-clip-ring", os.MFD_CLOEXEC)
    except (OSError, AttributeError):
        return None
    total = size + mirror
    try:
        os.ftruncate(fd, size)
        # Reserve the whole range, then map the file over it twice (MAP_FIXED stays inside it).
        base = libc.mmap(None, total, _PROT_NONE, _MAP_PRIVATE | _MAP_ANONYMOUS | _MAP_NORESERVE, -1, 0)
        if base in (None, _MAP_FAILED):
            return None
        for offset, length in ((0, size), (size, mirror)):
            got = libc.mmap(base + offset, length, _PROT_RW, _MAP_SHARED | _MAP_FIXED, fd, 0)
            if got != base + offset:
                libc.munmap(base, total)
                return None
    except OSError:
        return None
    finally:
        os.close(fd)  # the mappings keep the memory
    buffer = (ctypes.c_char * total).from_address(base)
    # torch.frombuffer keeps `buffer` alive while a tensor uses it; unmap only after that, and not
    # at interpreter exit (a daemon thread may still read it then; the OS unmaps at exit anyway)
    weakref.finalize(buffer, libc.munmap, base, total).atexit = False
    return buffer
