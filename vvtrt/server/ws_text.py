"""The WebSocket text mode: text arrives in several messages (e.g. from an LLM) and speech starts before
it is complete.

Connect to /v1/audio/stream without `text` (query `voice`, `cfg`, `seed`, `frames`, `max_frames` apply to
every segment). The server sends `backend_ready` with the end marker. Then send text messages:
  - plain text, appended to the buffer;
  - `{"type": "text", "text": "..."}`, the same;
  - `{"type": "flush"}`: speak what is buffered now;
  - `{"type": "end"}` or the plain text `<|end|>`: speak the rest, then the server closes (1000);
  - `{"type": "stop"}`: cancel at once.
Every complete sentence (ended by . ! ? ; or a newline, then white space) is spoken as soon as it is
buffered, as one engine request; segments play in order, audio as binary int16 messages as in one-shot
mode, with `segment_started` / `segment_complete` events. A segment without a `Speaker N:` prefix
continues the last speaker. The engine contract takes a whole script per request, so each segment is a
separate request (same voice and seed).

Text may be split anywhere, as an LLM's tokens arrive: a `Speaker N:` label is never a sentence end, a
label alone (e.g. the message "Speaker 1: ") is held until its turn's text arrives, and a label after a
sentence end starts a new turn. At most `--ws-max-pending` sentences wait to be spoken; one more is a
generation_error and close 4400 (send more once `segment_complete` events arrive).
"""
from __future__ import annotations

import asyncio
import json
import re

from fastapi import WebSocket
from starlette.websockets import WebSocketDisconnect

from vvtrt.errors import InputError
from vvtrt.server.input_rules import check_unicode
from vvtrt.server.truncation import truncation
from vvtrt.server.voices import split_voice_names
from vvtrt.server.ws import close, completion, pump_audio, query_options, refuse, send_log

END_MARKER = "<|end|>"
_BOUNDARY = re.compile(r"[.!?;\n][\"')\]]*\s")
_SPEAKER = re.compile(r"^\s*Speaker\s+(\d+)\s*:", re.MULTILINE)
_LABELS_ONLY = re.compile(r"^(\s*Speaker\s+\d+\s*:)+\s*$")
_LABEL_SPACE = re.compile(r"^(\s*Speaker\s+\d+\s*:)\s+", re.MULTILINE)


class TextSession:
    def __init__(self, ws: WebSocket, opts: dict):
        self.ws, self.opts = ws, opts
        self.service = ws.app.state.service
        self.buffer = ""
        self.segments: asyncio.Queue = asyncio.Queue()
        self.current = None
        self.order: list[str] = []      # speakers in order of first appearance (for per-speaker voices)
        self.last_speaker: str | None = None
        self.ended = False
        self.totals = {"segments": 0, "frames": 0}

    # -- receiving -------------------------------------------------------------------------------------
    async def listen(self) -> str:
        """Read client messages until it disconnects ('disconnect') or sends stop ('stop')."""
        try:
            while True:
                msg = await self.ws.receive()
                if msg["type"] == "websocket.disconnect":
                    return "disconnect"
                if self.ended:
                    continue
                if msg.get("bytes") is not None:
                    raise InputError("binary messages are not accepted: send text or JSON messages")
                if self._handle(msg.get("text") or "") == "stop":
                    return "stop"
        except (WebSocketDisconnect, RuntimeError):
            return "disconnect"

    def _handle(self, text: str) -> str | None:
        kind, payload = _parse(text)
        if kind == "stop":
            return "stop"
        if kind == "text":
            self.buffer += payload
            if len(self.buffer) > self.service.config.max_input_chars:
                self._cut(len(self.buffer))
            else:
                pos = 0  # each sentence its own segment; a label alone is no sentence
                while (m := _BOUNDARY.search(self.buffer, pos)) is not None:
                    pos = 0 if self._cut(m.end()) else m.end()
        elif kind in ("flush", "end"):
            self._cut(len(self.buffer), final=True)
        if kind == "end":
            self.ended = True
            self.segments.put_nowait(None)
        return None

    def _cut(self, n: int, final: bool = False) -> bool:
        """Queue the first `n` characters as a segment; False (nothing taken) for a label alone."""
        seg, rest = _LABEL_SPACE.sub(r"\1 ", self.buffer[:n].strip()), self.buffer[n:]
        if _LABELS_ONLY.match(seg):  # a label without its text yet: hold it (or, at the end, note it)
            if not final:
                return False
            self._with_speaker(seg)
            seg = ""
        self.buffer = rest
        if not seg:
            return True
        limit = self.service.config.ws_max_pending
        if self.segments.qsize() >= limit:
            raise InputError(f"{limit} sentences are already waiting to be spoken, the limit of one connection: "
                             "send more once segment_complete events arrive")
        self.segments.put_nowait(self._with_speaker(seg))
        return True

    def _with_speaker(self, seg: str) -> str:
        found = _SPEAKER.findall(seg)
        if not _SPEAKER.match(seg) and self.last_speaker is not None:
            seg = f"Speaker {self.last_speaker}: {seg}"
            found = [self.last_speaker] + found
        for spk in found:
            if spk not in self.order:
                self.order.append(spk)
        if found:
            self.last_speaker = found[-1]
        return seg

    # -- speaking --------------------------------------------------------------------------------------
    async def speak_all(self) -> None:
        while (seg := await self.segments.get()) is not None:
            opts = {**self.opts, "voice": self._voices_for(seg)}
            self.current = await self.service.open(self.service.build_request(seg, **opts))
            n = self.totals["segments"]
            await send_log(self.ws, "segment_started", segment=n, text_length=len(seg),
                           request_id=self.current.request_id)
            frames = await pump_audio(self.ws, self.current, progress=False)
            cut = truncation(self.current, self.service)
            if cut is not None:
                raise cut
            await send_log(self.ws, "segment_complete", segment=n, **completion(self.current, frames))
            self.totals["segments"] += 1
            self.totals["frames"] += frames
            self.current = None

    def _voices_for(self, seg: str):
        names = split_voice_names(self.opts.get("voice"))
        if len(names) <= 1:
            return names or None
        speakers = list(dict.fromkeys(_SPEAKER.findall(seg))) or ["1"]
        try:
            return [names[self.order.index(s)] for s in speakers]
        except (ValueError, IndexError):
            raise InputError(f"{len(names)} voices were given for speakers {', '.join(self.order)}: give one "
                             "voice, or one per speaker in order of first appearance") from None

    def cancel_current(self) -> None:
        if self.current is not None:
            self.current.handle.cancel()


def _parse(text: str) -> tuple[str, str]:
    if text.strip() == END_MARKER:
        return "end", ""
    if text.lstrip().startswith("{"):
        try:
            obj = json.loads(text)
        except ValueError:
            return "text", text
        kind = obj.get("type") if isinstance(obj, dict) else None
        if kind == "text" and isinstance(obj.get("text"), str):
            return "text", check_unicode(obj["text"], "text")
        if kind in ("flush", "end", "stop"):
            return kind, ""
        raise InputError(f"unknown message {text[:60]!r}: send text, or JSON of type text, flush, end or stop")
    return "text", text


async def text_mode(ws: WebSocket, session_cls=None) -> None:
    """Run a text session (`TextSession`, or `session_cls` with its listen / speak_all / cancel_current)."""
    try:
        session = (session_cls or TextSession)(ws, query_options(ws))
    except InputError as exc:
        return await refuse(ws, exc)
    await send_log(ws, "backend_ready", mode="text", end_marker=END_MARKER)
    speaker = asyncio.create_task(session.speak_all())
    listener = asyncio.create_task(session.listen())
    done, _ = await asyncio.wait({speaker, listener}, return_when=asyncio.FIRST_COMPLETED)
    if speaker not in done:
        session.cancel_current()
        speaker.cancel()
    listener.cancel()
    results = await asyncio.gather(speaker, listener, return_exceptions=True)
    failure = next((r for r in results if isinstance(r, Exception) and not isinstance(r, asyncio.CancelledError)),
                   None)
    if failure is not None:
        session.cancel_current()
        return await refuse(ws, failure)
    reason = "end" if speaker in done else (results[1] if isinstance(results[1], str) else "stop")
    if reason != "disconnect":
        await send_log(ws, "backend_stream_complete", stop_reason=reason, **session.totals)
    await close(ws)
