"""The shared tiers serve only entries they can authenticate: a value planted by someone with write access to
Redis or to the SQLite file, a value moved to another key, a truncated one, or one an older version wrote, is a
miss, never the answer. Real Redis (the suite's fixture), real SQLite files, a real loopback upstream."""

from __future__ import annotations

import logging
import sqlite3
import struct
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from aurelis_core import Pipeline
from aurelis_core.testing import SimulatedServer

#: A namespace makes the cache key the same whatever the secret: two deployments (a victim and someone with
#: write access to the store, running their own pipeline with their own secret) compute the same key.
NAMESPACE = "team-a"


def chat(n: int | str = 0) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": f"auth question {n}"}]}


def tier_config(tier: str, where: str, secret: str, **options: Any) -> dict[str, Any]:
    table = {"url": where} if tier == "redis" else {"path": where}
    return {
        "plugins": ["normalize", tier],
        "tenant": {"secret": secret, "namespace": NAMESPACE},
        tier: {**table, **options},
    }


def ask(cfg: dict[str, Any], upstream: SimulatedServer, bodies: list[dict[str, Any]]) -> tuple[list[str], Any]:
    """Send ``bodies`` through a fresh pipeline (writes flushed after each); (cache statuses, answer bodies),
    and the pipeline's stats."""
    pipeline = Pipeline(cfg)
    tier = pipeline.plugin(pipeline.tiers[-1])
    out = []
    with httpx.Client() as client:
        pipeline.instrument(client)
        for body in bodies:
            response = client.post(upstream.base_url + "/chat/completions", json=body)
            assert response.status_code == 200
            out.append((response.headers["x-aurelis-cache"], response.json()["id"]))
            tier.flush()
    pipeline.close()
    return out, pipeline.stats


@pytest.fixture(params=["redis", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """(tier name, where it stores: a Redis URL, flushed, or a SQLite path)."""
    if request.param == "redis":
        return "redis", request.getfixturevalue("redis_flush")
    return "sqlite", str(tmp_path / "cache.sqlite3")


def test_an_entry_written_under_another_secret_is_never_served(
    upstream: SimulatedServer, store: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    tier, where = store
    # Someone who can write to the store, but does not hold the deployment's secret, plants an answer.
    planted, _ = ask(tier_config(tier, where, "not-the-secret"), upstream, [chat()])
    assert planted[0][0] == "miss"
    with caplog.at_level(logging.WARNING, logger="aurelis"):
        served, stats = ask(tier_config(tier, where, "the-secret"), upstream, [chat(), chat()])
    assert served[0] == ("miss", served[0][1]) and served[0][1] != planted[0][1]  # not the planted answer
    assert served[1] == ("hit", served[0][1])  # its own answer, stored over the planted one
    assert stats.tier_errors[f"{tier}.unauthenticated"] == 1
    assert sum("does not verify" in r.getMessage() or "do not verify" in r.getMessage() for r in caplog.records) == 1
    assert upstream.count("/chat/completions") == 2


def stored_values(tier: str, where: str) -> dict[str, bytes]:
    """Every stored value by its cache key, read straight from the store."""
    if tier == "redis":
        client = redis.Redis.from_url(where)
        return {
            k.decode()[len("aurelis:"):]: client.get(k)  # type: ignore[misc]
            for k in client.keys("aurelis:*") if k != b"aurelis:meta:hits"
        }
    with sqlite3.connect(where) as conn:
        return dict(conn.execute("SELECT key, value FROM aurelis_entries").fetchall())


def overwrite(tier: str, where: str, key: str, value: bytes) -> None:
    if tier == "redis":
        redis.Redis.from_url(where).set("aurelis:" + key, value)
    else:
        with sqlite3.connect(where) as conn:
            conn.execute("UPDATE aurelis_entries SET value = ? WHERE key = ?", (value, key))


def test_a_value_moved_to_another_key_or_truncated_is_a_miss(
    upstream: SimulatedServer, store: tuple[str, str]
) -> None:
    tier, where = store
    cfg = tier_config(tier, where, "the-secret", codec="none")
    first, _ = ask(cfg, upstream, [chat(1), chat(2)])
    values = stored_values(tier, where)
    assert len(values) == 2
    key_1, key_2 = sorted(values, key=lambda k: values[k].find(first[0][1].encode()) < 0)  # key_1 holds answer 1
    overwrite(tier, where, key_2, values[key_1])  # answer 1 under question 2's key
    moved, stats = ask(cfg, upstream, [chat(2)])
    assert moved[0][0] == "miss" and moved[0][1] != first[0][1]
    assert stats.tier_errors[f"{tier}.unauthenticated"] == 1
    overwrite(tier, where, key_1, values[key_1][:-20])  # cut short: still a readable body, but not whole
    cut, stats = ask(cfg, upstream, [chat(1)])
    assert cut[0][0] == "miss"
    assert stats.tier_errors[f"{tier}.unauthenticated"] == 1


def test_a_value_of_the_previous_format_is_a_miss_never_misread(
    upstream: SimulatedServer, store: tuple[str, str]
) -> None:
    tier, where = store
    cfg = tier_config(tier, where, "the-secret", codec="none")
    ask(cfg, upstream, [chat()])
    (key,) = stored_values(tier, where)
    # What format 1 wrote: version 1, codec 0, then the entry, with no tag: a well-formed answer.
    body = b'{"id":"chatcmpl-old","object":"chat.completion","choices":[]}'
    old = bytes((1, 0)) + struct.pack("<HddHI", 200, time.time(), float("nan"), 0, 0) + body
    overwrite(tier, where, key, old)
    again, _ = ask(cfg, upstream, [chat()])
    assert again[0][0] == "miss" and again[0][1] != "chatcmpl-old"
