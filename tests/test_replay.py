"""Workload replay: the file format, the README's main command end to end, simulation knobs, recording."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import httpx
import pytest

import aurelis_core
from aurelis_core.config import load_config
from aurelis_core.testing import SimulatedServer
from aurelis_core.tools.replay import (
    SimulateOptions,
    WorkloadRequest,
    example_path,
    join_url,
    load_workload,
    replay,
    simulated,
)

AURELIS = Path(sys.executable).with_name("aurelis")


def write(path: Path, *lines: object) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def test_join_url() -> None:
    assert join_url("http://h:1/v1", "/chat/completions") == "http://h:1/v1/chat/completions"
    assert join_url("http://h:1/v1/", "/v1/chat/completions") == "http://h:1/v1/chat/completions"
    assert join_url("https://h/inference", "embeddings") == "https://h/inference/embeddings"
    assert join_url("http://h", "/v1/models?x=1") == "http://h/v1/models?x=1"


def test_workload_errors_name_line_and_choices(tmp_path: Path) -> None:
    ok = {"path": "/chat/completions", "body": {"model": "m"}}
    cases = [
        ("{not json", "w.jsonl:2: not valid JSON"),
        ({"path": "/x", "bdy": {}}, "unknown field(s) bdy; valid: at, body, headers, method, path"),
        ({"body": {}}, "'path'"),
        ({"path": "/x", "headers": {"Authorization": "Bearer sk-1"}}, "must not carry credentials"),
        ({"path": "/x", "at": -1}, "'at' must be"),
    ]
    for bad, message in cases:
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_workload(write(tmp_path / "w.jsonl", ok, bad))
    with pytest.raises(ValueError, match="empty"):
        load_workload(write(tmp_path / "w.jsonl", ""))
    loaded = load_workload(write(tmp_path / "w.jsonl", ok, "", {"path": "/models", "method": "get", "at": 1.5}))
    assert loaded == [WorkloadRequest("/chat/completions", "POST", {"model": "m"}),
                      WorkloadRequest("/models", "GET", None, {}, 1.5)]


def expected_hit_rate(workload: list[WorkloadRequest], streams_cached: bool) -> float:
    """Hits / lookups when requests run one at a time: every repeat of an earlier request is a hit."""
    keys = Counter(
        (r.method, r.path, json.dumps(r.body, sort_keys=True))
        for r in workload
        if streams_cached or not r.body.get("stream")
    )
    lookups = sum(keys.values())
    return (lookups - len(keys)) / lookups


def test_readme_main_command_end_to_end(tmp_path: Path) -> None:
    """`aurelis replay --simulate` on the embedded defaults: exit 0, report printed and written."""
    out = tmp_path / "out"
    proc = subprocess.run(
        [str(AURELIS), "replay", "--simulate", "--concurrency", "1", "--sim-latency", "0.001",
         "--sim-jitter", "0", "--out", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Aurelis performance report" in proc.stdout and "cache hit rate" in proc.stdout
    assert {p.name for p in out.iterdir()} == {"report.json", "report.txt", "report.html"}
    report = json.loads((out / "report.json").read_text())
    workload = load_workload(example_path("workload.jsonl"))
    streams = sum(1 for r in workload if r.body.get("stream"))
    assert report["requests"] == len(workload)
    # Event streams are either passed through uncached (bypass) or cached like any answer; the report says which.
    assert report["cache"]["bypass"] in (0, streams)
    streams_cached = report["cache"]["bypass"] == 0
    assert report["hit_rate"] == pytest.approx(expected_hit_rate(workload, streams_cached))
    assert report["errors"] == 0
    assert report["tokens_saved"] > 0
    assert set(report["models"]) == {"gpt-4.1-mini", "gpt-4.1", "text-embedding-3-small", "claude-haiku-4-5"}
    # The embedded default config: an in-process tier and a SQLite file in the working directory.
    assert (tmp_path / ".aurelis" / "cache.sqlite3").exists()
    assert "<svg" in (out / "report.html").read_text()


def test_failures_and_several_simulated_endpoints(tmp_path: Path) -> None:
    workload = [
        WorkloadRequest("/chat/completions", body={"model": "m", "messages": [{"role": "user", "content": f"q{i}"}]})
        for i in range(60)
    ]
    config = load_config({"plugins": ["normalize", "memory", "round_robin"]})
    options = SimulateOptions(endpoints=3, latency=0.0, jitter=0.0, failure_rate=0.25, seed=1)
    with simulated(config, options) as (sim_config, servers):
        assert [e.name for e in sim_config.endpoints] == ["sim-1", "sim-2", "sim-3"]
        assert all(e.url.startswith("http://127.0.0.1:") for e in sim_config.endpoints)
        report = asyncio.run(replay(workload, sim_config, concurrency=4))
        received = [s.count("/chat/completions") for s in servers]
    assert sum(received) == 60 and all(n > 0 for n in received)
    assert set(report.endpoints) == {"sim-1", "sim-2", "sim-3"}
    assert sum(e["requests"] for e in report.endpoints.values()) == 60
    assert 0 < report.errors < 60 and report.error_rate == pytest.approx(report.errors / 60)
    assert report.hit_rate == 0.0  # every prompt is distinct


def test_timed_replay_keeps_recorded_order(upstream: SimulatedServer) -> None:
    workload = [
        WorkloadRequest("/embeddings", body={"model": "e", "input": f"t{i}"}, at=at)
        # Sent 0.1 s apart (at speed 2): each request arrives long before the next is sent, even on a loaded
        # machine (10 ms apart, a slow connection set-up could overtake the one before).
        for i, at in enumerate([0.4, 0.0, 0.2])
    ]
    config = {"plugins": ["normalize", "memory"], "endpoints": [upstream.base_url]}
    report = asyncio.run(replay(workload, config, timed=True, speed=2.0))
    assert [r.json()["input"] for r in upstream.requests] == ["t1", "t2", "t0"]
    assert report.requests == 3
    with pytest.raises(ValueError, match="needs an 'at' offset"):
        asyncio.run(replay([WorkloadRequest("/embeddings")], config, timed=True))
    with pytest.raises(aurelis_core.ConfigError, match="--simulate"):
        asyncio.run(replay(workload, {"plugins": []}))


def test_record_plugin_writes_a_replayable_workload_without_credentials(
    tmp_path: Path, upstream: SimulatedServer
) -> None:
    path = tmp_path / "rec" / "w.jsonl"
    config = {"plugins": ["normalize", "memory", "record"], "record": {"path": str(path)}}
    secret_headers = {"authorization": "Bearer sk-secret-1", "api-key": "sk-secret-2",
                      "x-goog-api-key": "sk-secret-3", "x-team": "search"}
    bodies = [{"model": "m", "messages": [{"role": "user", "content": "hello"}]},
              {"model": "e", "input": "x"}]
    with aurelis_core.instrument(httpx.Client(base_url=upstream.base_url), config) as client:
        client.post("/chat/completions", json=bodies[0], headers=secret_headers)
        client.post("/chat/completions", json=bodies[0], headers=secret_headers)  # a hit is recorded too
        client.post("/embeddings", json=bodies[1], headers=secret_headers)
        client.get("/models", headers=secret_headers)  # not a recorded path
    text = path.read_text()
    assert "sk-secret" not in text and "authorization" not in text.lower()
    workload = load_workload(path)
    assert [(r.method, r.path, r.body) for r in workload] == [
        ("POST", "/v1/chat/completions", bodies[0]),
        ("POST", "/v1/chat/completions", bodies[0]),
        ("POST", "/v1/embeddings", bodies[1]),
    ]
    assert all(r.headers == {"x-team": "search"} for r in workload)
    assert all(r.at is not None and r.at >= 0 for r in workload)


def test_record_never_writes_a_credential_from_the_query_or_any_credential_header(
    tmp_path: Path, upstream: SimulatedServer
) -> None:
    # Gemini-style ?key= was written into the workload file as it was sent.
    path = tmp_path / "w.jsonl"
    config = {"plugins": ["record"], "record": {"path": str(path)},
              "tenant": {"credential_headers": ["x-gateway-credential"]}}
    body = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}
    headers = {"ocp-apim-subscription-key": "sk-secret-4", "cf-aig-authorization": "sk-secret-5",
               "x-gateway-credential": "sk-secret-6", "openai-organization": "org-1"}
    with aurelis_core.instrument(httpx.Client(base_url=upstream.base_url), config) as client:
        client.post("/chat/completions?key=sk-secret-1&alt=sse&KEY=sk-secret-2", json=body, headers=headers)
    text = path.read_text()
    assert "sk-secret" not in text
    (recorded,) = load_workload(path)
    assert recorded.path == "/v1/chat/completions?alt=sse"
    assert recorded.headers == {"openai-organization": "org-1"}  # what scopes the answer is replayed


def test_aurelis_record_runs_a_program(tmp_path: Path, upstream: SimulatedServer) -> None:
    program = tmp_path / "app.py"
    program.write_text(
        "import sys, httpx, aurelis_core\n"
        "client = aurelis_core.instrument(httpx.Client(base_url=sys.argv[1]))  # config from AURELIS_CONFIG\n"
        "for i in range(3):\n"
        "    client.post('/chat/completions', headers={'authorization': 'Bearer sk-live'},\n"
        "                json={'model': 'm', 'messages': [{'role': 'user', 'content': f'hi {i}'}]})\n"
        "client.close()\n"
    )
    out = tmp_path / "w.jsonl"
    proc = subprocess.run(
        [str(AURELIS), "record", "--out", str(out), "--", sys.executable, str(program), upstream.base_url],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert [r.body["messages"][0]["content"] for r in load_workload(out)] == ["hi 0", "hi 1", "hi 2"]
    assert "sk-live" not in out.read_text()


def test_aurelis_record_records_clients_built_with_an_explicit_config(
    tmp_path: Path, upstream: SimulatedServer
) -> None:
    # The application passes its own config, so it never reads AURELIS_CONFIG: it records all the same.
    program = tmp_path / "app.py"
    program.write_text(
        "import sys, httpx, aurelis_core\n"
        "config = {'plugins': ['normalize', 'memory']}\n"
        "client = aurelis_core.instrument(httpx.Client(base_url=sys.argv[1]), config)\n"
        "for i in range(3):\n"
        "    body = {'model': 'm', 'messages': [{'role': 'user', 'content': f'q{i}'}]}\n"
        "    client.post('/chat/completions', json=body)\n"
        "client.close()\n"
    )
    out = tmp_path / "w.jsonl"
    out.write_text('{"path": "/embeddings", "body": {"model": "e", "input": "earlier"}}\n')  # appended to
    proc = subprocess.run(
        [str(AURELIS), "record", "--out", str(out), "--", sys.executable, str(program), upstream.base_url],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert [r.path for r in load_workload(out)] == ["/embeddings"] + ["/v1/chat/completions"] * 3
    assert proc.stderr.splitlines()[-1] == f"recorded 3 requests to {out}"


def test_aurelis_record_with_a_missing_command_is_an_error_message(tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(AURELIS), "record", "--out", str(tmp_path / "w.jsonl"), "--", "no-such-program-aurelis"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 127
    assert proc.stderr.splitlines()[-1] == "error: command not found: no-such-program-aurelis"
    assert "Traceback" not in proc.stderr
