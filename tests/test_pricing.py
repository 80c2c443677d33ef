"""Usage blocks as providers write them, and the ``[pricing]`` table that turns them into money."""

from __future__ import annotations

import json

import pytest

from aurelis_core import ConfigError
from aurelis_core.config import Config
from aurelis_core.plugin import ModelPrice, Pricing, Usage, usage_counts, usage_tokens


def test_openai_chat_usage_with_cached_prompt_tokens() -> None:
    body = json.dumps({
        "id": "chatcmpl-1", "choices": [{"message": {"content": 'a quoted "prompt_tokens": 999 in the text'}}],
        "usage": {"prompt_tokens": 1200, "completion_tokens": 80, "total_tokens": 1280,
                  "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
                  "completion_tokens_details": {"reasoning_tokens": 0}},
        "system_fingerprint": "fp_1",
    }).encode()
    assert usage_counts(body) == Usage(1200, 80, 1280, cached_input=1024)
    assert usage_tokens(body) == 1280


def test_stream_usage_is_in_the_last_event() -> None:
    events = [{"choices": [{"delta": {"content": "hi"}}], "usage": None}] * 50 + [
        {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21}}
    ]
    stream = b"".join(b"data: " + json.dumps(event).encode() + b"\n\n" for event in events) + b"data: [DONE]\n\n"
    assert usage_counts(stream) == Usage(9, 12, 21)


def test_responses_api_and_anthropic_spellings() -> None:
    responses = b'{"usage": {"input_tokens": 30, "input_tokens_details": {"cached_tokens": 10}, "output_tokens": 5, ' \
                b'"total_tokens": 35}}'
    assert usage_counts(responses) == Usage(30, 5, 35, cached_input=10)
    # Anthropic counts the prompt read from its cache apart from input_tokens, and has no total.
    anthropic = b'{"usage": {"input_tokens": 20, "cache_creation_input_tokens": 50, "cache_read_input_tokens": 100, ' \
                b'"output_tokens": 7}}'
    assert usage_counts(anthropic) == Usage(170, 7, cached_input=100)
    assert usage_counts(anthropic).total == 177  # type: ignore[union-attr]


def test_embeddings_and_answers_without_usage() -> None:
    assert usage_counts(b'{"data": [], "usage": {"prompt_tokens": 8, "total_tokens": 8}}') == Usage(8, 0, 8)
    assert usage_counts(b'{"choices": []}') is None
    assert usage_counts(b"") is None
    # Only the tail is read: a usage block far from the end is not one.
    assert usage_counts(b'{"usage": {"total_tokens": 5}, "pad": "' + b"x" * 2000 + b'"}') is None


def test_exact_names_win_then_the_first_matching_glob() -> None:
    config = Config.from_dict({"pricing": {
        "gpt-4o*": {"input": 2.5, "output": 10.0},
        "gpt-4o-mini*": {"input": 0.15, "output": 0.6},
        "gpt-4o-mini": {"input": 0.1, "output": 0.5, "cached_input": 0.05},
    }})
    pricing = config.pricing
    assert pricing.price("gpt-4o-mini") == ModelPrice(0.1, 0.5, 0.05)
    assert pricing.price("gpt-4o-mini-2024-07-18") == ModelPrice(2.5, 10.0)  # table order: gpt-4o* first
    assert pricing.price("GPT-4O") is None  # case-sensitive
    assert pricing.price(None) is None
    assert pricing.cost("claude", Usage(10, 10)) is None
    assert not Pricing() and pricing


def test_cost_prices_cached_input_apart() -> None:
    price = ModelPrice(input=2.0, output=8.0, cached_input=0.5)
    assert price.cost(Usage(1_000_000, 100_000, cached_input=400_000)) == pytest.approx(1.2 + 0.2 + 0.8)
    assert ModelPrice(2.0, 8.0).cost(Usage(1_000_000, 0, cached_input=400_000)) == pytest.approx(2.0)


@pytest.mark.parametrize(("table", "message"), [
    ({"m": {"input": -1, "output": 1}}, r"\[pricing\] 'm' input: expected a number >= 0, got -1"),
    ({"m": {"input": 1, "outptu": 1}}, r"\[pricing\] 'm': unknown key 'outptu'; did you mean 'output'"),
    ({"m": {"input": 1}}, r"\[pricing\] 'm': missing key 'output'"),
    ({"m": 2.5}, r"\[pricing\] 'm': expected a table like \{input = 2.5, output = 10.0\}"),
    ({"m": {"input": "cheap", "output": 1}}, r"\[pricing\] 'm' input: expected a number, got 'cheap'"),
    ([1], r"pricing: expected a table \(\[pricing\]\) of model prices"),
])
def test_bad_prices_fail_clearly(table: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Config.from_dict({"pricing": table})
