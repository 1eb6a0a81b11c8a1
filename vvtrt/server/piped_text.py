"""A request's text that is still arriving while it runs (the Realtime WS text mode's `TextInput`, or any
iterable of text pieces), carried from the front of `serve --engine-process` to its engine process.

Front: `live_text(request)` finds such a text (duck typing: an iterable or async iterable that is not a
string, list or tuple); the request travels with a `PipedText` in its place, and `forward_text` sends each
piece as it comes (`("text", request_id, piece)`), then `("text_end", request_id, error | None)`, all in
order after the request's own `submit`. Engine process: the `PipedText` the request unpickles to is the
engine's text; `push` / `close` apply those messages to it, and the engine reads it as a blocking iterator
of pieces. Pieces for a request that already ended are dropped (its text is closed then).
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import threading


class PipedText:
    """A blocking iterator of text pieces that `push` / `close` feed from another thread. Pickles to a fresh,
    empty one (what the engine process gets in the request)."""

    def __init__(self):
        self._pieces: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._error: str | None = None

    def __reduce__(self):
        return (PipedText, ())

    def push(self, piece: str) -> bool:
        """Queue `piece`; False (dropped) once the text was closed."""
        with self._cond:
            if self._closed:
                return False
            self._pieces.append(piece)
            self._cond.notify_all()
        return True

    def close(self, error: str | None = None) -> None:
        """The end of the text (`error`: the producer failed; the request ends with an input error)."""
        with self._cond:
            if not self._closed:
                self._closed, self._error = True, error
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def __iter__(self):
        return self

    def __next__(self) -> str:
        with self._cond:
            while not self._pieces and not self._closed:
                self._cond.wait()
            if self._pieces:
                return self._pieces.popleft()
            if self._error is not None:
                raise ValueError(self._error)
            raise StopIteration


def live_text(request):
    """The request's text if it is still arriving (see module doc), else None."""
    text = getattr(request, "text", None)
    if text is None or isinstance(text, (str, bytes, list, tuple, PipedText)):
        return None
    return text if hasattr(text, "__iter__") or hasattr(text, "__aiter__") else None


def with_piped_text(request):
    """`request` with a `PipedText` in place of its live text (what is sent to the engine process)."""
    return dataclasses.replace(request, text=PipedText())


def forward_text(text, send, rid: str, loop) -> None:
    """Send the pieces of `text` for request `rid` as they arrive (`send(msg)` -> False once the engine
    process is gone): a `TextInput` (`follow` / `poll`) as its producer pushes them, on that thread; an
    async iterable from a task on `loop`; any other from a thread."""
    if hasattr(text, "follow") and hasattr(text, "poll"):
        _Relay(text, send, rid).start()
    elif hasattr(text, "__aiter__"):
        loop.create_task(_forward_async(text, send, rid))
    else:
        threading.Thread(target=_forward, args=(text, send, rid), name="vvtrt-text", daemon=True).start()


class _Relay:
    """Sends a followed text's pieces as they are pushed (no thread waits on a text that is still open)."""

    def __init__(self, text, send, rid: str):
        self.text, self.send, self.rid = text, send, rid
        self.lock = threading.Lock()  # pieces leave in the order they were queued
        self.done = False

    def start(self) -> None:
        self.text.follow(self.relay)
        self.relay()  # what was pushed before

    def relay(self) -> None:
        with self.lock:
            while not self.done:
                try:
                    piece = self.text.poll()
                except StopIteration:
                    self._end(None)
                except Exception as exc:  # noqa: BLE001 - the producer's failure ends its request
                    self._end(f"{type(exc).__name__}: {exc}")
                else:
                    if piece is None:
                        return
                    self.done = not self.send(("text", self.rid, piece))

    def _end(self, error: str | None) -> None:
        self.done = True
        self.send(("text_end", self.rid, error))


def _forward(text, send, rid: str) -> None:
    error = None
    try:
        for piece in text:
            if not send(("text", rid, piece)):
                return
    except Exception as exc:  # noqa: BLE001 - the producer's failure ends its request, as in one process
        error = f"{type(exc).__name__}: {exc}"
    send(("text_end", rid, error))


async def _forward_async(text, send, rid: str) -> None:
    error = None
    try:
        async for piece in text:
            if not send(("text", rid, piece)):
                return
    except Exception as exc:  # noqa: BLE001
        error = f"{type(exc).__name__}: {exc}"
    send(("text_end", rid, error))


def end_text(text) -> None:
    """Tell the producer of a live text that its request ended (a `TextInput` is closed: later pushes are
    dropped, and its forwarder ends), as the engine does in one process."""
    if hasattr(text, "close") and hasattr(text, "push"):
        text.close()
