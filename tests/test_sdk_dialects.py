"""Each provider's own SDK, instrumented, against the simulated upstream speaking its wire format, sync and async:
the OpenAI Responses API, Anthropic's Messages, Gemini's generateContent (google-genai) and Azure OpenAI.

For each: a miss then a hit (``x-aurelis-cache``, the same answer id), a complete stream stored and replayed, a
stream cut off not stored, the tokens spent and saved read through the request's dialect; and a provider's
overload (Anthropic's 529) retried after its ``retry-after-ms``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anthropic
import httpx2
import openai
import pytest
from google import genai
from google.genai import types

from aurelis_core import Pipeline
from aurelis_core.plugin import RequestContext, Usage, hookimpl
from aurelis_core.testing import SimulatedServer, estimate_tokens

CONFIG = {"plugins": ["normalize", "memory"]}
USER = "tell me about dialects"
#: What the simulator answers USER with, and the tokens it counts: each message's words plus one.
ANSWER = "echo: " + USER
PROMPT_TOKENS, OUTPUT_TOKENS = estimate_tokens(USER) + 1, estimate_tokens(ANSWER)


class Usages:
    """Records what each request spent upstream and what a hit saved, as the pipeline reads them."""

    name = "usages"

    def __init__(self) -> None:
        self.spent: list[Usage | None] = []
        self.saved: list[Usage | None] = []
        self.dialects: list[str] = []

    @hookimpl
    def aurelis_observe(self, ctx: RequestContext) -> None:
        self.dialects.append(ctx.dialect.name)
        self.spent.extend(attempt.usage for attempt in ctx.attempts)
        if ctx.entry is not None:
            self.saved.append(ctx.entry.usage_in(ctx.dialect))


def root(upstream: SimulatedServer) -> str:
    return upstream.base_url.rsplit("/v1", 1)[0]


def setup(is_async: bool, config: dict[str, Any] | None = None) -> tuple[Any, Usages]:
    usages = Usages()
    pipeline = Pipeline(config or CONFIG, plugins=[usages])
    return pipeline.instrument(httpx2.AsyncClient() if is_async else httpx2.Client()), usages


async def maybe(value: Any) -> Any:
    return await value if hasattr(value, "__await__") else value


async def collect(stream: Any) -> list[Any]:
    if hasattr(stream, "__aiter__"):
        return [item async for item in stream]
    return list(stream)


def assert_counted(usages: Usages, dialect: str, prompt: int = PROMPT_TOKENS) -> None:
    """The first request spent the simulator's count; the hit saved the same."""
    assert set(usages.dialects) == {dialect}
    assert usages.spent[0] == Usage(prompt, OUTPUT_TOKENS)
    assert usages.saved and usages.saved[0] == Usage(prompt, OUTPUT_TOKENS)


ASYNC = pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])


# --- OpenAI's Responses API --------------------------------------------------------------------------------------


@pytest.mark.anyio
@ASYNC
async def test_openai_responses(upstream: SimulatedServer, is_async: bool) -> None:
    http, usages = setup(is_async)
    kind = openai.AsyncOpenAI if is_async else openai.OpenAI
    llm = kind(base_url=upstream.base_url, api_key="sk", http_client=http)
    first = await maybe(llm.responses.with_raw_response.create(model="sim-chat", input=USER))
    second = await maybe(llm.responses.with_raw_response.create(model="sim-chat", input=USER))
    assert [first.headers["x-aurelis-cache"], second.headers["x-aurelis-cache"]] == ["miss", "hit"]
    one, two = await maybe(first.parse()), await maybe(second.parse())
    assert one.id == two.id and one.output_text == ANSWER
    assert_counted(usages, "openai", prompt=PROMPT_TOKENS)

    async def stream() -> list[Any]:
        return await collect(await maybe(llm.responses.create(model="sim-chat", input=USER, stream=True)))

    events, again = await stream(), await stream()
    assert events[-1].type == "response.completed" and events[-1].response.output_text == ANSWER
    assert [e.model_dump() for e in again] == [e.model_dump() for e in events]  # replayed
    assert upstream.count("/responses") == 2
    # A background job is not cached: each call reaches the upstream.
    for _ in range(2):
        await maybe(llm.responses.create(model="sim-chat", input=USER, background=True))
    assert upstream.count("/responses") == 4
    await maybe(llm.close())


@pytest.mark.anyio
@ASYNC
async def test_a_cut_responses_stream_is_not_stored(upstream: SimulatedServer, is_async: bool) -> None:
    upstream.behavior.truncate_stream_after = 4
    http, _ = setup(is_async)
    kind = openai.AsyncOpenAI if is_async else openai.OpenAI
    llm = kind(base_url=upstream.base_url, api_key="sk", http_client=http, max_retries=0)
    for _ in range(2):
        with pytest.raises(openai.APIConnectionError):
            await collect(await maybe(llm.responses.create(model="sim-chat", input=USER, stream=True)))
    assert upstream.count("/responses") == 2
    await maybe(llm.close())


# --- Anthropic's Messages API --------------------------------------------------------------------------------------


def anthropic_client(upstream: SimulatedServer, http: Any, is_async: bool, **options: Any) -> Any:
    kind = anthropic.AsyncAnthropic if is_async else anthropic.Anthropic
    return kind(base_url=root(upstream), api_key="ak", http_client=http, **options)


MESSAGES: Any = [{"role": "user", "content": USER}]


@pytest.mark.anyio
@ASYNC
async def test_anthropic_messages(upstream: SimulatedServer, is_async: bool) -> None:
    http, usages = setup(is_async)
    claude = anthropic_client(upstream, http, is_async)
    create = claude.messages.with_raw_response.create
    first = await maybe(create(model="sim-claude", max_tokens=64, messages=MESSAGES))
    second = await maybe(create(model="sim-claude", max_tokens=64, messages=MESSAGES))
    assert [first.headers["x-aurelis-cache"], second.headers["x-aurelis-cache"]] == ["miss", "hit"]
    one, two = await maybe(first.parse()), await maybe(second.parse())
    assert one.id == two.id and one.content[0].text == ANSWER
    assert_counted(usages, "anthropic")

    async def stream() -> Any:
        if is_async:
            async with claude.messages.stream(model="sim-claude", max_tokens=64, messages=MESSAGES) as events:
                return await events.get_final_message()
        with claude.messages.stream(model="sim-claude", max_tokens=64, messages=MESSAGES) as events:
            return events.get_final_message()

    streamed, replayed = await stream(), await stream()
    assert streamed.stop_reason == "end_turn" and streamed.content[0].text == ANSWER
    assert replayed.model_dump() == streamed.model_dump()
    assert upstream.count("/v1/messages") == 2
    # The stream's usage is spread over message_start (input) and message_delta (output).
    assert usages.spent[-1] == Usage(PROMPT_TOKENS, OUTPUT_TOKENS) and usages.saved[-1] == usages.spent[-1]
    await maybe(claude.close())


@pytest.mark.anyio
@ASYNC
async def test_a_cut_anthropic_stream_is_not_stored(upstream: SimulatedServer, is_async: bool) -> None:
    upstream.behavior.truncate_stream_after = 4
    http, _ = setup(is_async)
    claude = anthropic_client(upstream, http, is_async, max_retries=0)
    for _ in range(2):
        with pytest.raises((anthropic.APIConnectionError, httpx2.TransportError)):
            await collect(await maybe(claude.messages.create(
                model="sim-claude", max_tokens=64, messages=MESSAGES, stream=True)))
    assert upstream.count("/v1/messages") == 2
    await maybe(claude.close())


@pytest.mark.anyio
@ASYNC
async def test_an_anthropic_overload_is_retried_after_its_retry_after(
    upstream: SimulatedServer, is_async: bool
) -> None:
    upstream.behavior.update(fail_next=1, failure_status=529, failure_retry_after=0.05)
    config = {"plugins": ["normalize", "memory", "retry"], "retry": {"base": 10.0, "cap": 10.0}}
    http, _ = setup(is_async, config)
    claude = anthropic_client(upstream, http, is_async, max_retries=0)  # the wrapper retries, not the SDK
    message = await maybe(claude.messages.create(model="sim-claude", max_tokens=64, messages=MESSAGES))
    assert message.content[0].text == ANSWER
    first, second = upstream.requests
    assert upstream.count("/v1/messages") == 2
    # It waited the 50 ms the overload asked for, not the 10 s backoff.
    assert 0.04 <= second.time - first.time < 2.0
    await maybe(claude.close())


# --- Gemini (google-genai) -------------------------------------------------------------------------------------


def gemini_client(upstream: SimulatedServer, http: Any, is_async: bool) -> genai.Client:
    client_option = {"httpx_async_client": http} if is_async else {"httpx_client": http}
    return genai.Client(api_key="gk", http_options=types.HttpOptions(base_url=root(upstream), **client_option))


@pytest.mark.anyio
@ASYNC
async def test_gemini_generate_content(upstream: SimulatedServer, is_async: bool) -> None:
    http, usages = setup(is_async)
    gemini = gemini_client(upstream, http, is_async)
    models: Any = gemini.aio.models if is_async else gemini.models
    first = await maybe(models.generate_content(model="sim-gemini", contents=USER))
    second = await maybe(models.generate_content(model="sim-gemini", contents=USER))
    assert first.text == ANSWER and first.response_id == second.response_id
    assert upstream.count(":generateContent") == 1
    assert usages.spent[0] == Usage(PROMPT_TOKENS - 1, OUTPUT_TOKENS)  # Gemini's count has no per-message token
    assert usages.saved == [usages.spent[0]] and set(usages.dialects) == {"gemini"}

    async def stream() -> list[Any]:
        return await collect(await maybe(models.generate_content_stream(model="sim-gemini", contents=USER)))

    chunks, again = await stream(), await stream()
    assert "".join(c.text for c in chunks) == ANSWER and chunks[-1].candidates[0].finish_reason == "STOP"
    # The same chunks (each carries its HTTP response's headers, which say "hit" the second time).
    assert [c.model_dump(exclude={"sdk_http_response"}) for c in again] == [
        c.model_dump(exclude={"sdk_http_response"}) for c in chunks]
    assert again[0].sdk_http_response.headers["x-aurelis-cache"] == "hit"
    assert upstream.count(":streamGenerateContent") == 1
    assert usages.saved[-1] == Usage(PROMPT_TOKENS - 1, OUTPUT_TOKENS)
    # The API key rides in x-goog-api-key: in the tenant's fingerprint, not in the recorded key's parts.
    assert upstream.requests[0].header("x-goog-api-key") == "gk"
    await maybe(http.aclose() if is_async else http.close())


@pytest.mark.anyio
@ASYNC
async def test_a_cut_gemini_stream_is_not_stored(upstream: SimulatedServer, is_async: bool) -> None:
    upstream.behavior.truncate_stream_after = 3
    http, _ = setup(is_async)
    gemini = gemini_client(upstream, http, is_async)
    models: Any = gemini.aio.models if is_async else gemini.models
    for _ in range(2):
        with pytest.raises(httpx2.TransportError):
            await collect(await maybe(models.generate_content_stream(model="sim-gemini", contents=USER)))
    assert upstream.count(":streamGenerateContent") == 2
    await maybe(http.aclose() if is_async else http.close())


# --- Azure OpenAI ----------------------------------------------------------------------------------------------


@pytest.mark.anyio
@ASYNC
async def test_azure_openai(upstream: SimulatedServer, is_async: bool) -> None:
    http, usages = setup(is_async)
    kind: Callable[..., Any] = openai.AsyncAzureOpenAI if is_async else openai.AzureOpenAI
    azure = kind(azure_endpoint=root(upstream), api_key="azk", api_version="2024-10-21", http_client=http)
    create = azure.chat.completions.with_raw_response.create
    first = await maybe(create(model="prod-4o", messages=MESSAGES))
    second = await maybe(create(model="prod-4o", messages=MESSAGES))
    assert [first.headers["x-aurelis-cache"], second.headers["x-aurelis-cache"]] == ["miss", "hit"]
    one, two = await maybe(first.parse()), await maybe(second.parse())
    assert one.id == two.id and one.model == "prod-4o"
    assert upstream.requests[0].header("api-key") == "azk"
    assert_counted(usages, "azure_openai")

    async def stream() -> list[Any]:
        return await collect(await maybe(azure.chat.completions.create(
            model="prod-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": True})))

    chunks, again = await stream(), await stream()
    assert chunks[0].choices == [] and chunks[0].model_extra["prompt_filter_results"]  # Azure's first chunk
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ANSWER
    assert [c.model_dump() for c in again] == [c.model_dump() for c in chunks]
    assert upstream.count("/chat/completions") == 2
    assert usages.saved[-1] == Usage(PROMPT_TOKENS, OUTPUT_TOKENS)
    await maybe(azure.close())
