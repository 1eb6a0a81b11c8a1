"""A request's text that is still arriving while it runs (the Realtime WS text mode's `TextInput`), carried
from the front of `serve --engine-process` to its engine process.

Front: `live_text(request)` finds such a text (duck typing: a text with `follow` and `poll`); the request
is pickled with it, which gives the engine process a fresh, open, empty text of the same class, and
`forward_text` sends each piece as its producer pushes it (`("text", request_id, piece)`), then
`("text_end", request_id, error | None)`, all in order after the request's own `submit`. Engine process:
`push` / `close` apply those messages to the request's text, which the engine reads as in one process.
Pieces for a request that already ended are dropped (its text is closed then).
"""
from __future__ import annotations

import threading


def live_text(request):
    """The request's text if it is still arriving (see module doc), else None."""
    text = getattr(request, "text", None)
    return text if hasattr(text, "follow") and hasattr(text, "poll") else None


def forward_text(text, send, rid: str) -> None:
    """Send the pieces of `text` for request `rid` as its producer pushes them, on that thread (`send(msg)`
    -> False once the engine process is gone): no thread waits on a text that is still open."""
    _Relay(text, send, rid).start()


class _Relay:
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


def end_text(text) -> None:
    """Tell the producer of a live text that its request ended (a `TextInput` is closed: later pushes are
    dropped, and its relay ends), as the engine does in one process."""
    if hasattr(text, "close") and hasattr(text, "push"):
        text.close()
