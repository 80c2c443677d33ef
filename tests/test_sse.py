"""Telling a complete event stream from a cut-off one, and replaying a stored one chunk for chunk."""

from __future__ import annotations

import httpx
import httpx2
import pytest

from aurelis_core._sse import chunk_stream, is_event_stream, stream_complete

TOKEN = b'data: {"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}\n\n'
FINISH = b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
DONE = b"data: [DONE]\n\n"


@pytest.mark.parametrize(("headers", "inspectable"), [
    ({"content-type": "text/event-stream"}, True),
    ({"content-type": "Text/Event-Stream; charset=utf-8"}, True),
    ({"content-type": "text/event-stream", "content-encoding": " Identity "}, True),
    ({"content-type": "text/event-stream", "content-encoding": ""}, True),
    ({"content-type": "text/event-stream", "content-encoding": "gzip"}, False),  # frames cannot be checked
    ({"content-type": "application/json"}, False),
    ({"content-type": "application/json", "content-encoding": "identity"}, False),
    ({}, False),
])
def test_which_streams_can_be_inspected(headers: dict[str, str], inspectable: bool) -> None:
    assert is_event_stream(httpx.Headers(headers)) is inspectable


@pytest.mark.parametrize("body", [
    TOKEN + FINISH + DONE,
    (TOKEN + FINISH + DONE).replace(b"\n", b"\r\n"),
    TOKEN + b"data:[DONE]\n\n",  # no space after the colon
    TOKEN + b"data:   [DONE]  \n\n",
    TOKEN + FINISH,  # no [DONE]: the finishing chunk says it
    TOKEN + FINISH + b'data: {"choices":[],"usage":{"total_tokens":3}}\n\n',  # the usage chunk follows it
    TOKEN + FINISH + b": keep-alive\n\n" + b"event: ping\n\n",  # events without data are skipped
    TOKEN + b'data: {"choices":\ndata: [{"finish_reason":"length"}]}\n\n',  # data split over two lines
    TOKEN + b'data: {"choices":[{"finish_reason":null},{"finish_reason":"stop"}]}\n\n',  # any choice finishing
    DONE,
])
def test_complete_streams(body: bytes) -> None:
    assert stream_complete(body) is True


@pytest.mark.parametrize("body", [
    b"",
    TOKEN,
    TOKEN + TOKEN,
    TOKEN + b"data: {not json\n\n",
    TOKEN + b'data: {"choices":[{"finish_reason":"stop"}]}\n\n' + b"data: {cut",  # the last event is cut off
    TOKEN + b'data: {"choices":[],"usage":{}}\n\n',  # only the usage chunk: the finishing one never came
    TOKEN + b'data: {"choices":["stop"]}\n\n',
    b'data: ["finish_reason"]\n\n',  # not an object
    TOKEN + b"data: [DONE]x\n\n",
    b": just a comment\n\n",
])
def test_cut_off_streams(body: bytes) -> None:
    assert stream_complete(body) is False


@pytest.mark.anyio
@pytest.mark.parametrize("http", [httpx, httpx2])
async def test_a_stored_stream_is_replayed_with_its_chunk_boundaries(http: object) -> None:
    chunks = (TOKEN, FINISH, DONE)
    stream = chunk_stream(http, chunks)
    assert isinstance(stream, (http.SyncByteStream, http.AsyncByteStream))  # type: ignore[attr-defined]
    assert list(stream) == list(chunks)
    assert [c async for c in stream] == list(chunks)
    stream.close()
    await stream.aclose()
    assert list(stream) == list(chunks)  # closing a stored stream loses nothing
    assert type(chunk_stream(http, ())) is type(stream)  # one class per flavour, made once
