"""The audio path of `vvtrt serve --engine-process`: a ring of fixed-size chunk slots in shared memory.

The engine process writes chunk number `seq` into slot `seq % slots` and passes only `(request id,
index, seq, samples)` over its pipe; the front copies the samples out and then frees every slot up to
it with a `("free", upto)` message on the same pipe, so no message ever carries audio and nothing but the
pipe orders the two processes' accesses: the engine writes a slot only while `seq - freed < slots`, and
learns of a freed slot only from a message the front sent after its copy was taken (a pipe's write and
read order memory on every architecture, which a counter in the shared block would not). The front frees
slots in the order they were written (the engine process sends them in that order), whatever its readers
do with the copies.
"""
from __future__ import annotations

import logging

import numpy as np

from vvtrt.errors import VvtrtError

log = logging.getLogger(__name__)
SLOT_SAMPLES = 3200   # one model frame at 24 kHz


class ChunkRing:
    def __init__(self, shm, slots: int, slot_samples: int, owner: bool):
        self.shm, self.slots, self.slot_samples, self.owner = shm, slots, slot_samples, owner
        self.freed = 0  # the engine process's: chunks before this one were copied out by the front
        self._data = np.ndarray((slots, slot_samples), dtype=np.float32, buffer=shm.buf[:slots * slot_samples * 4])

    @classmethod
    def create(cls, slots: int, slot_samples: int = SLOT_SAMPLES) -> "ChunkRing":
        """A new ring (the front's; `unlink()` removes it)."""
        from multiprocessing import shared_memory

        size = slots * slot_samples * 4
        try:
            shm = shared_memory.SharedMemory(create=True, size=size)
        except OSError as exc:
            raise VvtrtError(f"cannot create {size / 2**20:.0f} MiB of shared memory for the engine process's audio "
                             f"({exc.strerror}): give /dev/shm more room, or serve without --engine-process") from None
        return cls(shm, slots, slot_samples, owner=True)

    @classmethod
    def attach(cls, spec: tuple) -> "ChunkRing":
        """The ring of `spec` (`ring.spec`), in the engine process."""
        from multiprocessing import shared_memory

        name, slots, slot_samples = spec
        return cls(shared_memory.SharedMemory(name=name), slots, slot_samples, owner=False)

    @property
    def spec(self) -> tuple:
        return (self.shm.name, self.slots, self.slot_samples)

    # -- the engine process --------------------------------------------------------------------------
    def has_room(self, seq: int) -> bool:
        return seq - self.freed < self.slots

    def fits(self, audio) -> bool:
        return audio.ndim == 1 and audio.shape[0] <= self.slot_samples

    def write(self, seq: int, audio) -> None:
        self._data[seq % self.slots, :audio.shape[0]] = audio

    def free(self, upto: int) -> None:
        """The front's `("free", upto)`: every slot before chunk number `upto` may be written again."""
        self.freed = max(self.freed, upto)

    # -- the front ----------------------------------------------------------------------------------
    def read(self, seq: int, samples: int) -> np.ndarray:
        return self._data[seq % self.slots, :samples].copy()

    def close(self) -> None:
        self._data = None  # the view goes before the mapping
        try:
            self.shm.close()
            if self.owner:
                self.shm.unlink()
        except (OSError, BufferError) as exc:
            log.debug("shared memory %s: %s", self.shm.name, exc)
