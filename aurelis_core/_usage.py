"""Token usage: what an answer spent, read from its usage block in any of the built-in dialects' spellings.

A bottom floor: :mod:`._models` (attempts and cache entries) and :mod:`._dialects` (which reads usage per wire
format) both build on it.
"""

from __future__ import annotations

__all__ = ["USAGE_TAIL", "Usage", "usage_counts", "usage_tokens"]

#: Bytes at the end of a body searched for the usage block: providers put ``usage`` last (a stream: in its last
#: event, before ``[DONE]``), and a bounded search keeps the cost per answer constant whatever its size.
USAGE_TAIL = 1024
#: The token counts of a usage block, in the spellings of the OpenAI chat/completions and Responses APIs and of
#: Anthropic's Messages API, and which count each is (input, output, total, cached input, Anthropic's cache
#: read and cache write). A key is matched with its quotes, so ``"prompt_tokens_details"`` is not
#: ``"prompt_tokens"`` and a key quoted inside message text (``\"prompt_tokens\"``) is neither.
_USAGE_KEYS = (
    (b'"prompt_tokens"', 0), (b'"input_tokens"', 0), (b'"completion_tokens"', 1), (b'"output_tokens"', 1),
    (b'"total_tokens"', 2), (b'"cached_tokens"', 3), (b'"cache_read_input_tokens"', 4),
    (b'"cache_creation_input_tokens"', 5),
)
#: Gemini's ``usageMetadata``: prompt, candidates (output), total, cached prompt, thoughts (output too).
_GEMINI_KEYS = (
    (b'"promptTokenCount"', 0), (b'"candidatesTokenCount"', 1), (b'"totalTokenCount"', 2),
    (b'"cachedContentTokenCount"', 3), (b'"thoughtsTokenCount"', 4),
)


class Usage:
    """The tokens one answer spent, from its ``usage`` block: ``input`` (the prompt, cached part included),
    ``output`` (the completion), ``cached_input`` (the part of the prompt the provider served from its own
    prompt cache, 0 when not reported) and ``total`` (``total_tokens`` as reported, else input + output)."""

    __slots__ = ("cached_input", "input", "output", "total")

    def __init__(self, input: int, output: int, total: int | None = None, cached_input: int = 0) -> None:
        self.input = input
        self.output = output
        self.total = input + output if total is None else total
        self.cached_input = cached_input

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Usage):
            return NotImplemented
        return (self.input, self.output, self.total, self.cached_input) == (
            other.input, other.output, other.total, other.cached_input)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Usage(input={self.input}, output={self.output}, total={self.total}, cached_input={self.cached_input})"


def usage_counts(tail: bytes, head: bytes | None = None) -> Usage | None:
    """The :class:`Usage` of the last usage block in the last bytes of a JSON answer or an event stream
    (pass its last :data:`USAGE_TAIL` bytes or more), or ``None`` when no usage block is there (a stream asked
    without ``stream_options.include_usage``, an embedding without one, a content-encoded body).

    Reads the spellings of the built-in dialects: OpenAI's ``usage`` (chat and completions: ``prompt_tokens``,
    ``completion_tokens``; Responses: ``input_tokens``, ``output_tokens``), Anthropic's ``usage`` and Gemini's
    ``usageMetadata``. A usage block comes last in an answer; in a stream, in its last event with one.
    Anthropic's stream spreads it: the last ``message_delta`` has the output tokens, ``message_start`` (in
    ``head``, the answer's first bytes) the input tokens, read from there when the tail lacks them.
    """
    # From the last "usage" key on: the block itself, not the usage: null of a stream's earlier events, and a
    # few hundred bytes to scan rather than the whole tail.
    window = max(0, len(tail) - USAGE_TAIL)
    at = tail.rfind(b'"usage"', window)
    if at < 0:
        gemini = tail.rfind(b'"usageMetadata"', window)
        return None if gemini < 0 else _gemini_usage(tail, gemini)
    counts = _counts(tail, at, _USAGE_KEYS)
    if counts[0] is None and head:
        # An Anthropic stream: the input side is in message_start's usage, in the head.
        first = head.find(b'"usage"')
        if first >= 0:
            start = _counts(head, first, _USAGE_KEYS)
            counts[0], counts[4], counts[5] = start[0], start[4], start[5]
    input, output, total, cached, cache_read, cache_write = counts
    if input is None and output is None and total is None:
        return None
    if input is None and output is None:  # an embedding's usage: its total is its prompt
        input = total
    # Anthropic counts the prompt it read from (or wrote to) its cache apart from input_tokens; OpenAI's
    # cached_tokens are part of its prompt_tokens.
    if cache_write is not None:
        input = (input or 0) + cache_write
    if cache_read is not None:
        input, cached = (input or 0) + cache_read, cache_read
    return Usage(input or 0, output or 0, total, cached or 0)


def _counts(text: bytes, at: int, keys: tuple[tuple[bytes, int], ...]) -> list[int | None]:
    """The value of each of ``keys`` found after ``at`` (the first found of each kind), by kind."""
    counts: list[int | None] = [None, None, None, None, None, None]
    for key, kind in keys:
        # A C-speed find and a slice per key, not a JSON parse of a block that may be cut off.
        found = text.find(key, at)
        if found >= 0 and counts[kind] is None:
            start = found + len(key)
            value = text[start : start + 34].split(b",", 1)[0].split(b"}", 1)[0].strip(b" \t\r\n:")
            if value.isdigit():
                counts[kind] = int(value)
    return counts


def _gemini_usage(tail: bytes, at: int) -> Usage | None:
    prompt, candidates, total, cached, thoughts, _ = _counts(tail, at, _GEMINI_KEYS)
    if prompt is None and candidates is None and total is None:
        return None
    output = (candidates or 0) + (thoughts or 0)  # thinking tokens are billed as output
    return Usage(prompt or 0, output, total, cached or 0)


def usage_tokens(body: bytes) -> int | None:
    """``usage.total_tokens`` of a stored JSON answer (else its input + output tokens), or ``None`` (no usage
    block, or a content-encoded body)."""
    usage = usage_counts(body)
    return None if usage is None else usage.total
