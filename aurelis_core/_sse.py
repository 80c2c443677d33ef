"""Server-sent event streams: telling a complete one from a cut-off one, and replaying a stored one.

A chat completion streamed as SSE is only worth storing when it is *whole*: the upstream may drop the
connection half-way, or send a clean end-of-body after a partial answer (a proxy timing out, a provider
crashing between frames). A cut-off answer replayed from cache would look like a short but valid reply, so
:func:`stream_complete` requires a positive sign of the end, the way OpenAI-compatible APIs mark it: a final
``data: [DONE]`` event, or (for providers that omit ``[DONE]``) a last chunk whose choices carry a
``finish_reason``.

:func:`chunk_stream` replays a stored stream with its original chunk boundaries, so a caller that renders
tokens as they arrive sees the same sequence of pieces as on the first call, only faster.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

__all__ = ["ChunkStream", "chunk_stream", "is_event_stream", "stream_complete"]


def is_event_stream(headers: Any) -> bool:
    """True when ``headers`` (an httpx ``Headers``) say the body is an event stream we can inspect: content
    type ``text/event-stream`` and no content coding (a compressed stream's frames cannot be checked)."""
    content_type = headers.get("content-type", "")
    coding = headers.get("content-encoding", "identity").strip().lower()
    return content_type.lower().startswith("text/event-stream") and coding in ("", "identity")


def stream_complete(body: bytes) -> bool:
    """True when the event stream ``body`` reached its end marker (see the module docstring).

    Events are scanned from the end, so the usual case (``[DONE]`` last) costs one split and one compare; the
    whole body is only walked for a stream that never finished.
    """
    events = body.replace(b"\r\n", b"\n").rstrip(b"\n").split(b"\n\n")
    for event in reversed(events):
        data = b"\n".join(
            line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:")
        )
        if not data:
            continue  # a comment or an event without data (keep-alive): look further back
        if data.strip() == b"[DONE]":
            return True
        try:
            payload = json.loads(data)
        except ValueError:
            return False
        choices = payload.get("choices") if isinstance(payload, dict) else None
        if not choices:
            continue  # the trailing usage chunk (``"choices": []``) follows the finishing one
        return any(isinstance(c, dict) and c.get("finish_reason") for c in choices)
    return False


class ChunkStream:
    """A response body made of stored chunks, handed out one by one, sync or async."""

    __slots__ = ("_chunks",)

    def __init__(self, chunks: tuple[bytes, ...]) -> None:
        self._chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._chunks)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            yield chunk

    def close(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


_stream_classes: dict[Any, type] = {}


def chunk_stream(http: Any, chunks: tuple[bytes, ...]) -> ChunkStream:
    """A :class:`ChunkStream` that is also the flavour's Sync/AsyncByteStream, as httpx's clients assert."""
    cls = _stream_classes.get(http)
    if cls is None:
        cls = _stream_classes[http] = type(
            "ChunkStream", (ChunkStream, http.SyncByteStream, http.AsyncByteStream), {"__slots__": ()}
        )
    return cls(chunks)  # type: ignore[no-any-return]
