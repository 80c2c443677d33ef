"""Server-sent event streams: telling a complete one from a cut-off one, and replaying a stored one.

A chat completion streamed as SSE is only worth storing when it is *whole*: the upstream may drop the
connection half-way, or send a clean end-of-body after a partial answer (a proxy timing out, a provider
crashing between frames). A cut-off answer replayed from cache would look like a short but valid reply, so
:func:`stream_complete` requires a positive sign of the end, the way OpenAI-compatible APIs mark it: a final
``data: [DONE]`` event, or (for providers that omit ``[DONE]``) a last chunk whose choices carry a
``finish_reason``; the Responses API's stream, a ``response.completed`` event. Other wire formats say it their
own way: each :class:`~aurelis_core._dialects.Dialect` knows how.

:func:`chunk_stream` replays a stored stream with its original chunk boundaries, so a caller that renders
tokens as they arrive sees the same sequence of pieces as on the first call, only faster.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from ._dialects import OPENAI

__all__ = ["ChunkStream", "chunk_stream", "is_event_stream", "stream_complete"]


def is_event_stream(headers: Any) -> bool:
    """True when ``headers`` (an httpx ``Headers``) say the body is an event stream we can inspect: content
    type ``text/event-stream`` and no content coding (a compressed stream's frames cannot be checked)."""
    content_type = headers.get("content-type", "")
    coding = headers.get("content-encoding", "identity").strip().lower()
    return content_type.lower().startswith("text/event-stream") and coding in ("", "identity")


def stream_complete(body: bytes) -> bool:
    """True when the event stream ``body`` reached its end marker as OpenAI's API marks it (see the module
    docstring); other wire formats mark it otherwise: ask the request's dialect
    (:meth:`aurelis_core.plugin.Dialect.stream_complete`)."""
    return OPENAI.stream_complete(body)


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
