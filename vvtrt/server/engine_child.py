"""The engine process of `vvtrt serve --engine-process`: the ordinary serving engine (the builder the work
dir's kind registers, with the server's config), started in a process of its own, driven by the front over
one pipe.

Front -> engine (pickled tuples):
    ("submit", request_id, request)      ("cancel", request_id)      ("ack", {request_id: chunks read})
    ("free", chunk number)               (the ring's slots before it were copied out)
    ("status",)                          ("encode", token, wav)      ("stop", grace_s)
    ("text", request_id, piece)          ("text_end", request_id, error | None)
                                         (a text still arriving: `vvtrt.server.piped_text`)
Engine -> front:
    ("ready", info) or ("failed", message)       once, after the engine started (or did not); `info`
                                         holds what the endpoints read of the engine (`facts`)
    ("events", [event, ...])             each `(kind, request_id, ...)`: ("refused", rid, error_type, message),
                                         ("started", rid, prompt_tokens), ("chunk", rid, index, seq, samples),
                                         ("chunk", rid, index, -1, audio) (a chunk larger than a ring slot),
                                         ("end", rid, stop_reason, error_type | None, message),
                                         ("finished", rid) (the engine ended it while the front's reader
                                         is behind: it no longer counts as in flight; its end follows)
    ("status", stats)   ("reply", token, ok, value)   ("stopped",)

Chunks travel through the shared-memory ring (`vvtrt.server.chunk_ring`). Flow control is the engine's
own: a request runs at most `BACKPRESSURE_CHUNKS` ahead of what the front's reader took (the front acks
what its readers read), so a slow reader leaves its chunks in the engine's buffer, and the engine holds
the request (or cancels it after the stall timeout) exactly as in one process. One pump thread moves the
chunks of every request, woken by the engine once per step; the main thread reads the front's messages.
A closed pipe (the front went away) cancels everything and ends the process.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import signal
import threading
import time
from dataclasses import dataclass

from vvtrt.errors import InputError, VvtrtError
from vvtrt.server.event_handle import BACKPRESSURE_CHUNKS, request_on_device, start_error_line

log = logging.getLogger(__name__)
IDLE_S = 0.5          # the pump's longest sleep
FULL_POLL_S = 0.005   # while the ring is full, how often the pump looks again
DRAIN_EXTRA_S = 5.0   # after the engine stopped, how long buffered chunks get to reach the front
ORPHAN_STOP_S = 30.0  # once the front went away, how long the engine gets to stop before the process ends


def dumps(msg) -> bytes:
    return pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)


class _Waker:
    """Stands in for an event loop in a `StreamHandle`'s waiters: a push or an end sets the pump's event."""

    def __init__(self, event: threading.Event):
        self.event = event

    def call_soon_threadsafe(self, *_):
        self.event.set()


@dataclass
class _Forward:
    handle: object
    sent: int = 0
    acked: int = 0
    started: bool = False
    finished: bool = False          # ("finished", rid) was sent
    text: object = None  # the request's text while it still arrives (`push` / `close`)


class EngineChild:
    def __init__(self, engine, conn, ring, device):
        self.engine, self.conn, self.ring, self.device = engine, conn, ring, device
        self.lock = threading.Lock()
        self.send_lock = threading.Lock()
        self.wake = threading.Event()
        self.waiter = (_Waker(self.wake), None)
        self.forwards: dict[str, _Forward] = {}
        self.events: list = []       # refusals, queued for the pump to send
        self.outbox: list = []       # other messages, likewise
        self.head = 0                # the next chunk number in the ring
        self.stopped = False

    def send(self, msg) -> None:
        data = dumps(msg)
        with self.send_lock:
            self.conn.send_bytes(data)

    def _post(self, msg=None, event=None) -> None:
        with self.lock:
            if msg is not None:
                self.outbox.append(msg)
            if event is not None:
                self.events.append(event)
        self.wake.set()

    # -- the front's messages (main thread) ---------------------------------------------------------
    def serve(self) -> None:
        threading.Thread(target=self._pump_forever, name="vvtrt-engine-pump", daemon=True).start()
        while True:
            try:
                msg = pickle.loads(self.conn.recv_bytes())
            except (EOFError, OSError):  # the front went away
                break
            try:
                getattr(self, "_on_" + msg[0])(*msg[1:])
            except Exception:  # one message's failure must not end the process
                log.exception("engine process: the front's %r message failed", msg[0])
        log.warning("the server process went away: the engine process cancels its requests and ends")
        stopping = threading.Thread(target=self.engine.stop, args=(0.0,), name="vvtrt-stop", daemon=True)
        stopping.start()
        stopping.join(ORPHAN_STOP_S)  # an engine stuck in a device call must not keep an orphan alive

    def _on_submit(self, rid: str, request) -> None:
        text = getattr(request, "text", None)
        text = text if hasattr(text, "push") and hasattr(text, "close") else None  # its pieces follow
        try:
            handle = self.engine.submit(request_on_device(request, self.device))
        except Exception as exc:  # the front raises it at admission: 429, 400, 503...
            if text is not None:
                text.close()
            self._post(event=("refused", rid, type(exc).__name__, str(exc)))
            return
        with self.lock:
            self.forwards[rid] = _Forward(handle, text=text)
        self.wake.set()

    def _on_cancel(self, rid: str) -> None:
        with self.lock:
            fwd = self.forwards.pop(rid, None)  # the front reads nothing more of it
        if fwd is not None:
            fwd.handle.cancel()
            if fwd.text is not None:
                fwd.text.close()

    def _on_text(self, rid: str, piece: str) -> None:
        fwd = self.forwards.get(rid)
        if fwd is not None and fwd.text is not None:  # else: the request ended meanwhile
            fwd.text.push(piece)

    def _on_text_end(self, rid: str, error: str | None) -> None:
        fwd = self.forwards.get(rid)
        if fwd is not None and fwd.text is not None:
            fwd.text.close(InputError(error) if error else None)

    def _on_ack(self, acks: dict) -> None:
        with self.lock:
            for rid, n in acks.items():
                fwd = self.forwards.get(rid)
                if fwd is not None:
                    fwd.acked += n
        self.wake.set()

    def _on_free(self, upto: int) -> None:
        self.ring.free(upto)
        self.wake.set()

    def _on_status(self) -> None:
        stats = dataclasses.asdict(self.engine.stats())
        self._post(("status", {**stats, "pid": os.getpid()}))

    def _on_encode(self, token: int, wav) -> None:
        threading.Thread(target=self._encode, args=(token, wav), name="vvtrt-encode", daemon=True).start()

    def _encode(self, token: int, wav) -> None:
        try:
            emb = self.engine.encode_voice(wav)
            reply = ("reply", token, True, dataclasses.replace(emb, embeds=emb.embeds.detach().cpu()))
        except Exception as exc:
            reply = ("reply", token, False, (type(exc).__name__, str(exc)))
        self._post(reply)

    def _on_stop(self, grace_s: float) -> None:
        threading.Thread(target=self._stop, args=(grace_s,), name="vvtrt-stop", daemon=True).start()

    def _stop(self, grace_s: float) -> None:
        """Stop the engine as in one process, let the buffered chunks reach the front, then say so."""
        self.engine.stop(grace_s)
        deadline = time.monotonic() + DRAIN_EXTRA_S
        while self.forwards and time.monotonic() < deadline:
            time.sleep(0.02)
        self.stopped = True
        self.wake.set()

    # -- the pump thread ----------------------------------------------------------------------------
    def _pump_forever(self) -> None:
        try:
            while not self._pump_once():
                pass
        except (OSError, EOFError) as exc:  # the front went away: the main thread ends the process
            log.debug("pump: %s", exc)
            return
        except Exception:  # no chunk would move any more: end the process, so the front starts a new one
            log.exception("engine process: the pump failed")
            logging.shutdown()
            os._exit(1)
        logging.shutdown()
        os._exit(0)  # stopped and said so: the front reads the end of the pipe

    def _pump_once(self) -> bool:
        """One pass over every request; True once the process has stopped and said so."""
        with self.lock:
            forwards = list(self.forwards.items())
            events, self.events = self.events, []
            outbox, self.outbox = self.outbox, []
        busy = False
        for rid, fwd in forwards:
            busy |= self._pump(rid, fwd, events)
        for msg in outbox + ([("events", events)] if events else []):
            self.send(msg)
        if self.stopped:
            self.send(("stopped",))
            return True
        self.wake.wait(FULL_POLL_S if busy else IDLE_S)
        self.wake.clear()
        return False

    def _pump(self, rid: str, fwd: _Forward, events: list) -> bool:
        """Move the request's chunks the front may have; True if it must be looked at again soon (the ring
        is full)."""
        h = fwd.handle
        if not fwd.started:
            if not (h.is_started or h.done()):
                h.watch(self.waiter)  # before looking again: a start in between wakes the pump
                if not (h.is_started or h.done()):
                    return False  # queued
            fwd.started = h.is_started  # else it ended in the queue: its end follows
            if fwd.started:
                events.append(("started", rid, h.summary().prompt_tokens))
        if fwd.sent - fwd.acked >= BACKPRESSURE_CHUNKS:  # the front's reader is behind (e.g. a stuck socket)
            h.watch(self.waiter)  # the engine may end it meanwhile (a stall): the front counts it out then
            if h.done() and not fwd.finished:
                fwd.finished = True
                events.append(("finished", rid))
            return False
        while fwd.sent - fwd.acked < BACKPRESSURE_CHUNKS:
            if not self.ring.has_room(self.head):
                return True
            try:
                chunk = h.next_or_wait(self.waiter)
            except StopIteration:
                return self._ended(rid, events, h.summary().stop_reason, None)
            except VvtrtError as exc:  # SlowReader, Cancelled, a failed step: by name
                return self._ended(rid, events, h.summary().stop_reason, exc)
            if chunk is None:
                return False
            fwd.sent += 1
            if self.ring.fits(chunk.audio):
                self.ring.write(self.head, chunk.audio)
                events.append(("chunk", rid, chunk.index, self.head, chunk.audio.shape[0]))
                self.head += 1
            else:
                events.append(("chunk", rid, chunk.index, -1, chunk.audio))
        return False

    def _ended(self, rid: str, events: list, reason: str, exc: VvtrtError | None) -> bool:
        events.append(("end", rid, reason, type(exc).__name__ if exc else None, str(exc) if exc else ""))
        with self.lock:
            fwd = self.forwards.pop(rid, None)
        if fwd is not None and fwd.text is not None:
            fwd.text.close()
        return False


def child_main(config, conn, ring_spec) -> None:
    """The engine process's entry point (`multiprocessing`'s spawn context)."""
    from vvtrt.model import kinds
    from vvtrt.server.chunk_ring import ChunkRing
    from vvtrt.workdir import Workdir

    # Ctrl-C in a terminal, or a SIGTERM to the whole process group (timeout, systemd) reaches this process too:
    # the front stops it over the pipe once its streams drained (and a closed pipe ends it)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s engine-process %(name)s: %(message)s")
    for name in ("vvtrt.server", "vvtrt.serving"):
        logging.getLogger(name).setLevel(logging.INFO)
    ring = ChunkRing.attach(ring_spec)
    try:
        kind = kinds.get(Workdir.open(config.workdir).kind)
        engine = kind.load("build_engine")(config)  # as `serve.build_engine` (which imports this module's users)
        engine.start()
        facts = kind.load("service_class").engine_facts(engine)
    except Exception as exc:  # the front reports it as the server's start-up error
        conn.send_bytes(dumps(("failed", start_error_line(exc))))
        return
    child = EngineChild(engine, conn, ring, config.device)
    child.send(("ready", {"pid": os.getpid(), "startup": getattr(engine, "startup", None), "facts": facts}))
    log.info("engine process ready (pid %d)", os.getpid())
    child.serve()
    logging.shutdown()
    os._exit(0)  # without the interpreter's teardown (the engine's threads and device state)
