"""The engine process's audio ring (`vvtrt.server.chunk_ring`), in real shared memory: a full ring takes no
chunk until the front frees it (a message, never a shared counter), and a slot read back is what was written."""
from __future__ import annotations

import numpy as np


def test_a_full_ring_waits_for_the_fronts_free_and_keeps_every_chunk():
    from vvtrt.server.chunk_ring import ChunkRing

    front = ChunkRing.create(slots=4, slot_samples=8)
    engine = ChunkRing.attach(front.spec)
    try:
        chunks = [np.full(8 if i % 2 else 5, float(i), dtype=np.float32) for i in range(10)]
        written, read = 0, []
        while len(read) < len(chunks):
            while written < len(chunks) and engine.has_room(written):
                assert engine.fits(chunks[written])
                engine.write(written, chunks[written])
                written += 1
            assert written - len(read) <= 4  # never more in the ring than its slots
            upto = written
            read += [front.read(seq, chunks[seq].shape[0]) for seq in range(len(read), upto)]
            engine.free(upto)  # what the ("free", upto) message does in the engine process
        for want, got in zip(chunks, read):
            np.testing.assert_array_equal(got, want)
        assert not engine.fits(np.zeros(9, dtype=np.float32))
        engine.free(3)  # a late, older message never takes room back
        assert engine.freed == 10
    finally:
        engine.close()
        front.close()
