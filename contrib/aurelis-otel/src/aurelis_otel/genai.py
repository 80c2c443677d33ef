"""What the OpenTelemetry GenAI semantic conventions say about a request: its operation, provider, request
settings, and what its answer reports (id, model, finish reasons, token usage).

The attribute names are those of the GenAI conventions (``gen_ai.*``, now kept in the
``open-telemetry/semantic-conventions-genai`` repository; ``gen_ai.provider.name`` replaced ``gen_ai.system``).
Only settings and counts are read, never a prompt, a message or an answer's text: the conventions put content
in opt-in attributes, which this plugin never sets.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from aurelis_core.plugin import Usage

__all__ = ["operation", "provider", "request_attributes", "response_attributes", "usage_attributes"]

#: The end of a request's path -> ``gen_ai.operation.name`` (and ``openai.api.type`` where OpenAI defines one).
#: Checked in order: ``/chat/completions`` before ``/completions``.
OPERATIONS: tuple[tuple[str, str, str | None], ...] = (
    ("/chat/completions", "chat", "chat_completions"),
    ("/responses", "chat", "responses"),
    ("/completions", "text_completion", None),
    ("/embeddings", "embeddings", None),
    ("/messages", "chat", None),  # Anthropic
    (":generateContent", "generate_content", None),  # Gemini
    (":streamGenerateContent", "generate_content", None),
)

#: Host (or the end of one, after a dot) -> ``gen_ai.provider.name``, the conventions' well-known values.
PROVIDERS: tuple[tuple[str, str], ...] = (
    ("api.openai.com", "openai"),
    ("openai.azure.com", "azure.ai.openai"),
    ("services.ai.azure.com", "azure.ai.inference"),
    ("models.inference.ai.azure.com", "azure.ai.inference"),
    ("api.anthropic.com", "anthropic"),
    ("generativelanguage.googleapis.com", "gcp.gemini"),
    ("aiplatform.googleapis.com", "gcp.vertex_ai"),
    ("amazonaws.com", "aws.bedrock"),
    ("api.mistral.ai", "mistral_ai"),
    ("api.groq.com", "groq"),
    ("api.deepseek.com", "deepseek"),
    ("api.x.ai", "x_ai"),
    ("api.perplexity.ai", "perplexity"),
    ("api.cohere.com", "cohere"),
    ("api.cohere.ai", "cohere"),
)
#: The provider of a host none of the above: the API Aurelis speaks is OpenAI's (vLLM, Ollama, LiteLLM and
#: gateways serve it), and the conventions' provider name says which telemetry flavour to expect.
DEFAULT_PROVIDER = "openai"

#: Request body key -> attribute, for the numeric settings recorded as they are.
_SETTINGS = {
    "temperature": "gen_ai.request.temperature",
    "top_p": "gen_ai.request.top_p",
    "top_k": "gen_ai.request.top_k",
    "frequency_penalty": "gen_ai.request.frequency_penalty",
    "presence_penalty": "gen_ai.request.presence_penalty",
    "seed": "gen_ai.request.seed",
}
#: The keys different APIs give the answer's length limit in.
_MAX_TOKENS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


def operation(path: str) -> tuple[str, str | None] | None:
    """``(gen_ai.operation.name, openai.api.type or None)`` of a request to ``path``, ``None`` if not a GenAI
    operation Aurelis knows."""
    for ending, name, api_type in OPERATIONS:
        if path.endswith(ending):
            return name, api_type
    return None


def provider(host: str | None) -> str:
    """``gen_ai.provider.name`` for an upstream at ``host``."""
    if host:
        for known, name in PROVIDERS:
            if host == known or host.endswith("." + known):
                return name
    return DEFAULT_PROVIDER


def request_attributes(body: Any) -> dict[str, Any]:
    """The request settings of a parsed JSON request ``body``, as ``gen_ai.request.*`` attributes."""
    if not isinstance(body, Mapping):
        return {}
    attributes: dict[str, Any] = {}
    for key, name in _SETTINGS.items():
        value = _number(body.get(key))
        if value is not None:
            attributes[name] = value
    max_tokens = _first(*(body.get(key) for key in _MAX_TOKENS))
    if max_tokens is not None:
        attributes["gen_ai.request.max_tokens"] = max_tokens
    stop = body.get("stop") or body.get("stop_sequences")
    stops = [stop] if isinstance(stop, str) else stop
    if isinstance(stops, list) and stops and all(isinstance(s, str) for s in stops):
        attributes["gen_ai.request.stop_sequences"] = stops
    choices = _whole(body.get("n"))
    if choices is not None and choices != 1:
        attributes["gen_ai.request.choice.count"] = choices
    if body.get("stream") is True:
        attributes["gen_ai.request.stream"] = True
    response_format = body.get("response_format")
    kind = response_format.get("type") if isinstance(response_format, Mapping) else None
    if kind in ("json_object", "json_schema"):
        attributes["gen_ai.output.type"] = "json"
    elif kind == "text":
        attributes["gen_ai.output.type"] = "text"
    encoding = body.get("encoding_format")
    if isinstance(encoding, str):
        attributes["gen_ai.request.encoding_formats"] = [encoding]
    dimensions = _whole(body.get("dimensions"))
    if dimensions is not None:
        attributes["gen_ai.embeddings.dimension.count"] = dimensions
    return attributes


def response_attributes(body: bytes) -> dict[str, Any]:
    """``gen_ai.response.*`` (id, model, finish reasons) and ``gen_ai.usage.*`` of an answer's raw (not
    content-encoded) JSON ``body``; empty when it is not a JSON object."""
    document = _loads(body)
    if not isinstance(document, Mapping):
        return {}
    attributes: dict[str, Any] = {}
    for key, name in (("id", "gen_ai.response.id"), ("model", "gen_ai.response.model")):
        value = document.get(key)
        if isinstance(value, str):
            attributes[name] = value
    finish: dict[int, str] = {}
    for position, choice in enumerate(document.get("choices") or ()):
        if isinstance(choice, Mapping) and isinstance(choice.get("finish_reason"), str):
            index = _whole(choice.get("index"))
            finish[index if index is not None else position] = choice["finish_reason"]
    stop_reason = document.get("stop_reason")  # Anthropic: one generation
    if isinstance(stop_reason, str):
        finish[0] = stop_reason
    if finish:
        attributes["gen_ai.response.finish_reasons"] = [finish[i] for i in sorted(finish)]
    if isinstance(document.get("usage"), Mapping):
        attributes.update(_usage(document["usage"]))
    return attributes


def usage_attributes(usage: Usage, operation_name: str | None = None) -> dict[str, int]:
    """``gen_ai.usage.input_tokens``, ``output_tokens`` (not for ``embeddings``, which output none) and
    ``cache_read.input_tokens`` (when the provider reported any) of the tokens an answer spent, as the request's
    dialect read them (``Attempt.usage``: OpenAI's, the Responses API's, Anthropic's, Gemini's, a stream's too)."""
    attributes = {"gen_ai.usage.input_tokens": usage.input}
    if operation_name != "embeddings":
        attributes["gen_ai.usage.output_tokens"] = usage.output
    if usage.cached_input:
        attributes["gen_ai.usage.cache_read.input_tokens"] = usage.cached_input
    return attributes


def _usage(usage: Mapping[str, Any]) -> dict[str, int]:
    """``gen_ai.usage.*`` from a ``usage`` block in OpenAI's (chat: prompt/completion, Responses: input/output)
    or Anthropic's shape. Input tokens include cached ones, as the conventions ask (Anthropic counts them apart)."""
    attributes: dict[str, int] = {}
    given = _whole(usage.get("prompt_tokens", usage.get("input_tokens")))
    # Anthropic's cache counts are apart from its input_tokens; OpenAI's cached_tokens are part of theirs.
    cache_write = _whole(usage.get("cache_creation_input_tokens"))
    if given is not None:
        apart = (_whole(usage.get("cache_read_input_tokens")), cache_write)
        attributes["gen_ai.usage.input_tokens"] = given + sum(n for n in apart if n is not None)
    output = _whole(usage.get("completion_tokens", usage.get("output_tokens")))
    if output is not None:
        attributes["gen_ai.usage.output_tokens"] = output
    cache_read = _first(usage.get("cache_read_input_tokens"),
                        _nested(usage, "prompt_tokens_details", "cached_tokens"),
                        _nested(usage, "input_tokens_details", "cached_tokens"))
    if cache_read is not None:
        attributes["gen_ai.usage.cache_read.input_tokens"] = cache_read
    if cache_write is not None:
        attributes["gen_ai.usage.cache_write.input_tokens"] = cache_write
    reasoning = _first(_nested(usage, "completion_tokens_details", "reasoning_tokens"),
                       _nested(usage, "output_tokens_details", "reasoning_tokens"))
    if reasoning is not None:
        attributes["gen_ai.usage.reasoning.output_tokens"] = reasoning
    return attributes


def _loads(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def _nested(mapping: Mapping[str, Any], outer: str, inner: str) -> Any:
    value = mapping.get(outer)
    return value.get(inner) if isinstance(value, Mapping) else None


def _first(*values: Any) -> int | None:
    """The first of ``values`` that is a whole number."""
    return next((whole for whole in map(_whole, values) if whole is not None), None)


def _whole(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _number(value: Any) -> int | float | None:
    """``value`` as an attribute value if it is a number: a ``Decimal`` (how the ``normalize`` plugin parses
    JSON numbers with a fraction, so none is rounded in the cache key) as a ``float``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    return float(value) if isinstance(value, Decimal) and value.is_finite() else None
