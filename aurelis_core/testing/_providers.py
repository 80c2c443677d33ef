"""The simulated upstream's other wire formats: OpenAI's Responses API, Anthropic's Messages, Gemini's
``generateContent``, and Azure OpenAI's deployment paths (which the chat handler serves, with Azure's stream).

Each answer follows the rules of the OpenAI chat one (see :mod:`.simulator`): the text is ``echo:`` and the
prompt's last user text, one stream event per word, a fresh serial in every answer's id (``resp_sim_1``,
``msg_sim_1``, Gemini's ``responseId`` ``sim-1``), the same knobs (latency, injected failures, rate limits,
``truncate_stream_after``, ``chunk_delay``). Failures and rate limits speak each provider's dialect: Anthropic's
error bodies and ``anthropic-ratelimit-*`` headers (a ``failure_status`` of 529 is its overload), Gemini's
``{"error": {"code", "message", "status"}}``.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

from ._wire import SSE_HEADERS as _SSE_HEADERS
from ._wire import BadRequest, SimulatedConnectionDrop, estimate_tokens, send_json

__all__ = ["ProviderRoutes", "failure_body", "rate_limit_headers"]

Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]
#: The simulator's ``Behavior`` and ``RecordedRequest`` (typed loosely: naming the simulator's classes here
#: would make this module and the one that mixes it in a circle).
Behavior = Any
RecordedRequest = Any

_ANTHROPIC_ERRORS: Final = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
    413: "request_too_large", 429: "rate_limit_error", 500: "api_error", 529: "overloaded_error",
}
_GEMINI_STATUS: Final = {
    400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED",
}


def dialect_of(path: str) -> str:
    """Which wire format a request path speaks, for error bodies and rate-limit headers."""
    if path.endswith("/v1/messages"):
        return "anthropic"
    if ":generateContent" in path or ":streamGenerateContent" in path:
        return "gemini"
    return "openai"


def failure_body(dialect: str, status: int, message: str, openai_body: bytes) -> bytes:
    """An error body as ``dialect`` spells it (``openai_body`` for OpenAI and Azure)."""
    if dialect == "anthropic":
        kind = _ANTHROPIC_ERRORS.get(status, "api_error")
        return json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()
    if dialect == "gemini":
        status_text = _GEMINI_STATUS.get(status, "UNKNOWN")
        return json.dumps({"error": {"code": status, "message": message, "status": status_text}}).encode()
    return openai_body


def rate_limit_headers(
    dialect: str, rpm: int | None, tpm: int | None, used_requests: int, used_tokens: int, reset_in: float,
    openai_headers: Headers,
) -> Headers:
    """The rate-limit headers of an answer in ``dialect``'s spelling (OpenAI's are given); Gemini sends none."""
    if dialect == "gemini":
        return []
    if dialect != "anthropic":
        return openai_headers
    reset = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=max(reset_in, 0.0)))
    stamp = reset.isoformat(timespec="seconds").replace("+00:00", "Z").encode()
    headers: Headers = []
    if rpm is not None:
        headers += [
            (b"anthropic-ratelimit-requests-limit", str(rpm).encode()),
            (b"anthropic-ratelimit-requests-remaining", str(max(0, rpm - used_requests)).encode()),
            (b"anthropic-ratelimit-requests-reset", stamp),
        ]
    if tpm is not None:
        headers += [
            (b"anthropic-ratelimit-tokens-limit", str(tpm).encode()),
            (b"anthropic-ratelimit-tokens-remaining", str(max(0, tpm - used_tokens)).encode()),
            (b"anthropic-ratelimit-tokens-reset", stamp),
        ]
    return headers


def _words(text: str) -> list[str]:
    return ("echo: " + text).split()


def _text_of(content: Any) -> str:
    """The text of a message's content: a string, or parts (``text``, ``input_text``) with a ``text``."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(part.get("text", "")) for part in content
            if isinstance(part, dict) and part.get("type") in ("text", "input_text")
        )
    return ""


def _sse(event: str | None, data: dict[str, Any], crlf: bool = False) -> bytes:
    head = f"event: {event}\n".encode() if event is not None else b""
    frame = head + b"data: " + json.dumps(data).encode() + b"\n\n"
    return frame.replace(b"\n", b"\r\n") if crlf else frame


def _limit(words: list[str], limit: Any) -> tuple[list[str], bool]:
    """The words within an output budget, and whether they were cut to it."""
    if isinstance(limit, int) and not isinstance(limit, bool) and 0 < limit < len(words):
        return words[:limit], True
    return words, False


class ProviderRoutes:
    """The handlers of the non-chat wire formats, mixed into :class:`~.simulator.SimulatedUpstream` (which has
    the state and the helpers they use)."""

    behavior: Behavior
    _serial: int
    _lock: Any

    # provided by SimulatedUpstream
    def _parse_json(self, record: RecordedRequest) -> dict[str, Any]:
        raise NotImplementedError

    async def _admit(self, tokens: int, extra: Headers, send: Send, dialect: str = "openai") -> bool:
        raise NotImplementedError

    async def _delay(self, completion_tokens: int) -> None:
        raise NotImplementedError

    def _next_serial(self) -> int:
        with self._lock:
            self._serial += 1
            return self._serial

    async def _send_frames(self, frames: list[tuple[bytes, int]], extra: Headers, send: Send) -> None:
        """An event stream of ``frames`` (bytes, tokens in it), cut after ``truncate_stream_after`` frames."""
        behavior = self.behavior
        await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS + extra})
        truncate = behavior.truncate_stream_after
        for n, (data, tokens) in enumerate(frames):
            if truncate is not None and n >= truncate:
                raise SimulatedConnectionDrop(f"stream truncated after {n} frames")
            pause = behavior.chunk_delay + behavior.latency_per_token * tokens
            if pause > 0 and n > 0:
                await asyncio.sleep(pause)
            await send({"type": "http.response.body", "body": data, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _json(self, body: dict[str, Any], extra: Headers, send: Send) -> None:
        await send_json(send, 200, body, extra)

    # --- OpenAI's Responses API ---------------------------------------------------------------------------------

    async def _responses(self, record: RecordedRequest, extra: Headers, send: Send) -> None:
        payload = self._parse_json(record)
        given = payload.get("input")
        if isinstance(given, str):
            prompt = [given]
        elif isinstance(given, list) and given:
            prompt = [_text_of(item.get("content")) for item in given if isinstance(item, dict)]
        else:
            raise BadRequest(400, "'input' must be a string or a non-empty array", "invalid_input")
        instructions = payload.get("instructions")
        prompt_tokens = sum(estimate_tokens(text) + 1 for text in prompt)
        prompt_tokens += estimate_tokens(instructions) if isinstance(instructions, str) else 0
        words, cut = _limit(_words(prompt[-1]), payload.get("max_output_tokens"))
        if not await self._admit(prompt_tokens + len(words), extra, send):
            return
        serial = self._next_serial()
        response_id, message_id = f"resp_sim_{serial}", f"msg_sim_{serial}"
        text = " ".join(words)
        usage = {
            "input_tokens": prompt_tokens, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": len(words), "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt_tokens + len(words),
        }

        def response(status: str, output: list[Any], with_usage: bool) -> dict[str, Any]:
            return {
                "id": response_id, "object": "response", "created_at": int(time.time()), "status": status,
                "background": False, "error": None,
                "incomplete_details": {"reason": "max_output_tokens"} if cut and status != "in_progress" else None,
                "instructions": instructions, "max_output_tokens": payload.get("max_output_tokens"),
                "model": str(payload.get("model", "sim-chat")), "output": output, "parallel_tool_calls": True,
                "previous_response_id": payload.get("previous_response_id"), "store": payload.get("store", True),
                "temperature": payload.get("temperature", 1.0), "text": {"format": {"type": "text"}},
                "tool_choice": "auto", "tools": [], "top_p": payload.get("top_p", 1.0), "truncation": "disabled",
                "usage": usage if with_usage else None, "user": None, "metadata": {},
            }

        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        message = {"id": message_id, "type": "message", "status": "completed", "role": "assistant", "content": [part]}
        final_status = "incomplete" if cut else "completed"
        if payload.get("stream") is not True:
            await self._delay(len(words))
            await self._json(response(final_status, [message], True), extra, send)
            return
        frames: list[tuple[bytes, int]] = []
        sequence = 0

        def event(kind: str, tokens: int = 0, **fields: Any) -> None:
            nonlocal sequence
            frames.append((_sse(kind, {"type": kind, "sequence_number": sequence, **fields}), tokens))
            sequence += 1

        event("response.created", response=response("in_progress", [], False))
        event("response.in_progress", response=response("in_progress", [], False))
        event("response.output_item.added", output_index=0,
              item={**message, "status": "in_progress", "content": []})
        event("response.content_part.added", item_id=message_id, output_index=0, content_index=0,
              part={**part, "text": ""})
        for index, word in enumerate(words):
            event("response.output_text.delta", 1, item_id=message_id, output_index=0, content_index=0,
                  delta=word if index == 0 else " " + word, logprobs=[])
        event("response.output_text.done", item_id=message_id, output_index=0, content_index=0, text=text,
              logprobs=[])
        event("response.content_part.done", item_id=message_id, output_index=0, content_index=0, part=part)
        event("response.output_item.done", output_index=0, item=message)
        event("response.incomplete" if cut else "response.completed",
              response=response(final_status, [message], True))
        await self._send_frames(frames, extra, send)

    # --- Anthropic's Messages API ---------------------------------------------------------------------------------

    async def _anthropic(self, record: RecordedRequest, extra: Headers, send: Send) -> None:
        payload = self._parse_json(record)
        messages = payload.get("messages")
        if not isinstance(messages, list) or not messages or not isinstance(payload.get("max_tokens"), int):
            raise BadRequest(400, "'messages' (non-empty) and 'max_tokens' are required", "invalid_request")
        prompt_tokens = sum(estimate_tokens(_text_of(m.get("content"))) + 1 for m in messages if isinstance(m, dict))
        system = payload.get("system")
        prompt_tokens += estimate_tokens(_text_of(system)) if system else 0
        last = next((m for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"), {})
        words, cut = _limit(_words(_text_of(last.get("content"))), payload["max_tokens"])
        if not await self._admit(prompt_tokens + len(words), extra, send, "anthropic"):
            return
        serial = self._next_serial()
        stop = "max_tokens" if cut else "end_turn"
        text = " ".join(words)
        model = str(payload.get("model", "sim-claude"))
        usage = {"input_tokens": prompt_tokens, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                 "output_tokens": len(words), "service_tier": "standard"}
        message: dict[str, Any] = {
            "id": f"msg_sim_{serial}", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": text}], "stop_reason": stop, "stop_sequence": None, "usage": usage,
        }
        if payload.get("stream") is not True:
            await self._delay(len(words))
            await self._json(message, extra, send)
            return
        start = {**message, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}
        frames = [
            (_sse("message_start", {"type": "message_start", "message": start}), 0),
            (_sse("content_block_start", {"type": "content_block_start", "index": 0,
                                          "content_block": {"type": "text", "text": ""}}), 0),
            (_sse("ping", {"type": "ping"}), 0),
        ]
        for index, word in enumerate(words):
            delta = {"type": "text_delta", "text": word if index == 0 else " " + word}
            frames.append((_sse("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}),
                           1))
        frames += [
            (_sse("content_block_stop", {"type": "content_block_stop", "index": 0}), 0),
            (_sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                                    "usage": {"output_tokens": len(words)}}), 0),
            (_sse("message_stop", {"type": "message_stop"}), 0),
        ]
        await self._send_frames(frames, extra, send)

    # --- Gemini's generateContent -----------------------------------------------------------------------------

    async def _gemini(self, record: RecordedRequest, extra: Headers, send: Send) -> None:
        payload = self._parse_json(record)
        contents = payload.get("contents")
        if not isinstance(contents, list) or not contents:
            raise BadRequest(400, "'contents' must be a non-empty array", "invalid_argument")

        def text(content: Any) -> str:
            parts = content.get("parts") if isinstance(content, dict) else None
            if not isinstance(parts, list):
                return ""
            return " ".join(str(p.get("text", "")) for p in parts if isinstance(p, dict))

        prompt_tokens = sum(estimate_tokens(text(c)) for c in contents)
        last = next((c for c in reversed(contents) if isinstance(c, dict) and c.get("role", "user") == "user"), {})
        config = payload.get("generationConfig") or {}
        words, cut = _limit(_words(text(last)), config.get("maxOutputTokens") if isinstance(config, dict) else None)
        if not await self._admit(prompt_tokens + len(words), extra, send, "gemini"):
            return
        serial = self._next_serial()
        model = record.path.rsplit("/models/", 1)[-1].split(":", 1)[0]
        finish = "MAX_TOKENS" if cut else "STOP"

        def chunk(piece: str, finished: bool, output: int) -> dict[str, Any]:
            candidate: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": piece}]}, "index": 0}
            if finished:
                candidate["finishReason"] = finish
            return {
                "candidates": [candidate],
                "usageMetadata": {"promptTokenCount": prompt_tokens, "candidatesTokenCount": output,
                                  "totalTokenCount": prompt_tokens + output},
                "modelVersion": model, "responseId": f"sim-{serial}",
            }

        if record.path.endswith(":generateContent"):
            await self._delay(len(words))
            await self._json(chunk(" ".join(words), True, len(words)), extra, send)
            return
        frames = [
            # Gemini frames its events with CRLF.
            (_sse(None, chunk(word if i == 0 else " " + word, i == len(words) - 1, i + 1), crlf=True), 1)
            for i, word in enumerate(words)
        ]
        await self._send_frames(frames, extra, send)
