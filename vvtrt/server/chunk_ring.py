"""The audio path of `vvtrt serve --engine-process`: a ring of fixed-size chunk slots in shared memory.

The engine process writes chunk number `seq` into slot `seq % slots` and passes only `(request id,
index, seq, samples)` over its pipe; the front copies the samples out and then frees every slot up to
it by advancing `tail` (one int64 at the head of the block), so no message ever carries audio. The
engine writes a slot only while `seq - tail < slots`; the front frees slots in the order they were
written (the engine process sends them in that order), whatever its readers do with the copies.
"""
from __future__ import annotations

import logging

import numpy as np

from vvtrt.errors import VvtrtError

log = logging.getLogger(__name__)
SLOT_SAMPLES = 3200   # one model frame at 24 kHz
HEADER_BYTES = 64


class ChunkRing:
    def __init__(self, shm, slots: int, slot_samples: int, owner: bool):
        self.shm, self.slots, self.slot_samples, self.owner = shm, slots, slot_samples, owner
        self._tail = np.ndarray((1,), dtype=np.int64, buffer=shm.buf[:8])
        self._data = np.ndarray((slots, slot_samples), dtype=np.float32, buffer=shm.buf[HEADER_BYTES:])

    @classmethod
    def create(cls, slots: int, slot_samples: int = SLOT_SAMPLES) -> "ChunkRing":
        """A new ring (the front's; `unlink()` removes it)."""
        from multiprocessing import shared_memory

        size = HEADER_BYTES + slots * slot_samples * 4
        try:
            shm = shared_memory.SharedMemory(create=True, size=size)
        except OSError as exc:
            raise VvtrtError(f"cannot create {size / 2**20:.0f} MiB of shared memory for the engine process's audio "
                             f"({exc.strerror}): give /dev/shm more room, or serve without --engine-process") from None
        ring = cls(shm, slots, slot_samples, owner=True)
        ring.reset()
        return ring

    @classmethod
    def attach(cls, spec: tuple) -> "ChunkRing":
        """The ring of `spec` (`ring.spec`), in the engine process."""
        from multiprocessing import shared_memory

        name, slots, slot_samples = spec
        return cls(shared_memory.SharedMemory(name=name), slots, slot_samples, owner=False)

    @property
    def spec(self) -> tuple:
        return (self.shm.name, self.slots, self.slot_samples)

    def reset(self) -> None:
        """Every slot free (before an engine process starts writing from seq 0)."""
        self._tail[0] = 0

    # -- the engine process --------------------------------------------------------------------------
    def has_room(self, seq: int) -> bool:
        return seq - int(self._tail[0]) < self.slots

    def fits(self, audio) -> bool:
        return audio.ndim == 1 and audio.shape[0] <= self.slot_samples

    def write(self, seq: int, audio) -> None:
        self._data[seq % self.slots, :audio.shape[0]] = audio

    # -- the front ----------------------------------------------------------------------------------
    def read(self, seq: int, samples: int) -> np.ndarray:
        return self._data[seq % self.slots, :samples].copy()

    def release(self, upto: int) -> None:
        """Free every slot before chunk number `upto`."""
        self._tail[0] = upto

    def close(self) -> None:
        self._tail = self._data = None  # the views go before the mapping
        try:
            self.shm.close()
            if self.owner:
                self.shm.unlink()
        except (OSError, BufferError) as exc:
            log.debug("shared memory %s: %s", self.shm.name, exc)
