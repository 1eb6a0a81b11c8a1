"""The front's end of one engine process (`vvtrt.server.engine_child`): spawn it, wait until its engine
runs, send it messages, and read its messages on one thread.

The reader thread copies each chunk out of the shared-memory ring, frees the ring's slots, and hands a
whole message's events to the event loop with one `call_soon_threadsafe` per loop (not one per chunk).
"""
from __future__ import annotations

import logging
import pickle
import threading
import time
from concurrent.futures import Future

from vvtrt.errors import VvtrtError
from vvtrt.server.engine_child import dumps

log = logging.getLogger(__name__)
START_TIMEOUT_S = 1800.0


class EngineLink:
    """One engine process. `on_events(batch)`: a message's events, `(request_id, event)` pairs in the
    `EventHandle` form, on the reader thread; `on_status(stats)`; `on_lost(link)` once if the process died
    (not after a requested stop)."""

    def __init__(self, config, ring, on_events, on_status, on_lost):
        self.config, self.ring = config, ring
        self.on_events, self.on_status, self.on_lost = on_events, on_status, on_lost
        self.proc = None
        self.conn = None
        self.info: dict = {}
        self.alive = False
        self.stopped = threading.Event()     # the engine process said it stopped (or is gone)
        self._send_lock = threading.Lock()
        self._replies: dict[int, Future] = {}
        self._tokens = iter(range(1, 1 << 62))
        self._stopping = False
        self._aborted = False

    def start(self) -> None:
        """Spawn the engine process and wait until its engine takes requests; raises its start-up error."""
        import multiprocessing

        from vvtrt.server.engine_child import child_main

        ctx = multiprocessing.get_context("spawn")
        self.conn, child_conn = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=child_main, args=(self.config, child_conn, self.ring.spec),
                                name="vvtrt-engine", daemon=False)
        self.proc.start()
        child_conn.close()  # the process's own copy is its only one: its death closes the pipe
        msg = self._first_message()
        if msg[0] != "ready":
            self.proc.join(30)
            self.kill()
            self.conn.close()
            self.stopped.set()
            raise VvtrtError(msg[1])
        self.info, self.alive = msg[1], True
        threading.Thread(target=self._read_forever, name="vvtrt-engine-reader", daemon=True).start()

    def _first_message(self):
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.conn.poll(1.0):
            if self._aborted:
                self.kill()
                return ("failed", "the engine process was stopped during start-up")
            if not self.proc.is_alive():
                return ("failed", f"the engine process exited during start-up ({describe_exit(self.proc.exitcode)})")
            if time.monotonic() > deadline:
                self.kill()
                return ("failed", f"the engine process did not start within {START_TIMEOUT_S:g} s")
        try:
            return pickle.loads(self.conn.recv_bytes())
        except (EOFError, OSError):
            self.proc.join(30)
            return ("failed", f"the engine process exited during start-up ({describe_exit(self.proc.exitcode)})")

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def send(self, msg) -> bool:
        """Send `msg`; False if the engine process is gone."""
        data = dumps(msg)
        try:
            with self._send_lock:
                self.conn.send_bytes(data)
            return True
        except (OSError, ValueError) as exc:  # a closed pipe: the reader thread reports the loss
            log.debug("engine process send: %s", exc)
            return False

    def call(self, kind: str, *args, timeout: float = START_TIMEOUT_S):
        """Ask the engine process for a value (`("reply", token, ok, value)`); its typed error if it failed."""
        from vvtrt.server.event_handle import error_of
        from vvtrt.serving.api import EngineNotReady

        token = next(self._tokens)
        fut: Future = Future()
        self._replies[token] = fut
        try:
            if not self.alive or not self.send((kind, token, *args)):
                raise EngineNotReady("the engine process is not running: retry")
            ok, value = fut.result(timeout)
        finally:
            self._replies.pop(token, None)
        if not ok:
            raise error_of(*value)
        return value

    # -- the reader thread ----------------------------------------------------------------------------
    def _read_forever(self) -> None:
        try:
            while True:
                msg = pickle.loads(self.conn.recv_bytes())
                if msg[0] == "events":
                    self.on_events(self._events(msg[1]))
                elif msg[0] == "status":
                    self.on_status(msg[1])
                elif msg[0] == "reply":
                    fut = self._replies.get(msg[1])
                    if fut is not None:
                        fut.set_result((msg[2], msg[3]))
                elif msg[0] == "stopped":
                    self.stopped.set()
        except (EOFError, OSError) as exc:
            log.debug("engine process pipe: %s", exc)
        except Exception as exc:  # a message this reader cannot use: the process is treated as lost
            (log.debug if self._stopping else log.error)("engine process reader: %s: %s", type(exc).__name__, exc)
        self._gone()

    def _events(self, events) -> list:
        """The engine's events as `(request_id, EventHandle event)`; chunks copied out of the ring, and
        their slots freed."""
        out, last = [], None
        for ev in events:
            kind, rid = ev[0], ev[1]
            if kind == "chunk":
                seq, payload = ev[3], ev[4]
                audio = payload if seq < 0 else self.ring.read(seq, payload)
                last = seq if seq >= 0 else last
                out.append((rid, ("chunk", ev[2], audio)))
            else:
                out.append((rid, (kind, *ev[2:])))
        if last is not None:
            self.send(("free", last + 1))  # copied out: the engine process may write those slots again
        return out

    def _gone(self) -> None:
        from vvtrt.serving.api import EngineNotReady

        was_alive, self.alive = self.alive, False
        for fut in list(self._replies.values()):
            if not fut.done():
                fut.set_exception(EngineNotReady("the engine process ended: retry"))
        self.stopped.set()
        if was_alive and not self._stopping:
            self.on_lost(self)

    # -- ending ---------------------------------------------------------------------------------------
    def stop(self, grace_s: float) -> None:
        """Stop the engine (as `Engine.stop(grace_s)`), wait until its process said so, and end it."""
        self._stopping = True
        if self.alive and self.send(("stop", grace_s)):
            self.stopped.wait(grace_s + 30.0)
        self.close()

    def close(self) -> None:
        """End the process (it ends itself once stopped, or when its pipe closes; killed if it does not),
        reap it, and close the pipe."""
        if self.proc is not None:
            self.proc.join(10.0)
            if self.proc.is_alive():
                log.warning("the engine process (pid %d) did not end: killing it", self.proc.pid)
                self.kill()
        if self.conn is not None:
            self.stopped.wait(5.0)  # the reader has seen the end of the pipe
            self.conn.close()

    def abort(self) -> None:
        """End a process that is starting (`start` raises): the server shuts down meanwhile."""
        self._aborted = True
        self.kill()

    def kill(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            self.proc.kill()
            self.proc.join(10.0)


def describe_exit(code) -> str:
    import signal

    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
