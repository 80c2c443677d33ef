"""The aurelis command: plugins, config check, report, record usage errors (replay: tests/test_replay.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aurelis_core.plugin import Usage
from aurelis_core.report import build_report
from aurelis_core.stats import Sample
from aurelis_core.testing import SimulatedServer
from aurelis_core.tools.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_plugins_says_what_each_does_and_lists_only_what_can_be_enabled(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AURELIS_DISABLE_PLUGINS", "redis")
    code, out, _ = run(capsys, "plugins")
    assert code == 0 and out.splitlines()[0].split() == ["name", "origin", "what", "it", "does"]
    rows = {line.split()[0]: line.split(None, 2) for line in out.splitlines()[1:]}
    assert rows["normalize"][1:] == ["builtin", "the cache key, over the whole wire request, scoped to a tenant"]
    assert rows["gzip"][2] == "Content-Encoding: gzip request bodies"  # from the class, the module is shared
    assert rows["redis"][2].endswith("(disabled by AURELIS_DISABLE_PLUGINS)")
    assert "lz4" not in rows  # a codec at rest: enabling it is an error
    assert all(row[2] and "``" not in row[2] for row in rows.values())


def test_plugins_lists_origin_and_hooks(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "plugins", "--hooks")
    assert code == 0
    rows = {line.split()[0]: line.split(None, 2) for line in out.splitlines()[1:]}
    assert rows["normalize"][1] == "builtin" and rows["normalize"][2] == "normalize"
    assert rows["memory"][1] == "builtin" and rows["memory"][2] == "cache_get, cache_set"
    assert rows["record"][2] == "close, observe, start"


def test_config_check_good_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "aurelis.toml"
    good.write_text('plugins = ["normalize", "memory"]\n[memory]\npolicy = "lfu"\n')
    code, out, _ = run(capsys, "config", "check", str(good))
    assert code == 0 and "ok (2 plugins: normalize, memory; 0 endpoints)" in out


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('plugins = ["memory"]\n[memory]\npolicyy = "lru"\n',
         "unknown key 'policyy'; did you mean 'policy'? valid: max_bytes, max_entry_bytes, policy, ttl"),
        ('plugins = ["normalise"]\n', "unknown plugin 'normalise'; did you mean 'normalize'? valid: "),
        ('plugins = ["memory"]\n[memory]\npolicy = "fifo"\n', "[memory] policy: expected one of 'lru', 'lfu'"),
        ("plugins = [\n", "not valid TOML"),
    ],
)
def test_config_check_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str) -> None:
    bad = tmp_path / "aurelis.toml"
    bad.write_text(text)
    code, out, err = run(capsys, "config", "check", str(bad))
    assert code == 1 and out == ""
    assert message in err


def test_config_check_missing_file(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "config", "check", "/nonexistent/aurelis.toml")
    assert code == 1 and "config file not found" in err


def test_report_renders_and_rescores(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    samples = [Sample(100 + i / 10, 0.2, "hit" if i % 2 else "miss", "memory" if i % 2 else None, "m",
                      None if i % 2 else "ep", 200, None, 1, Usage(7, 0) if i % 2 else None) for i in range(10)]
    saved = tmp_path / "report.json"
    saved.write_text(json.dumps(build_report(samples, duration=1.0).to_dict()))
    code, out, _ = run(capsys, "report", str(saved))
    assert code == 0 and "cache hit rate  50.0%" in out and "tokens saved    35" in out
    # 10 req/s against a 10 req/s target and a 50% hit rate against 50%: every target met.
    code, out, _ = run(capsys, "report", str(saved), "--format", "json", "--target-rps", "10",
                       "--target-hit-rate", "0.5")
    assert code == 0 and json.loads(out)["score"] == pytest.approx(100.0)
    page = tmp_path / "r.html"
    assert run(capsys, "report", str(saved), "--format", "html", "--out", str(page))[0] == 0
    assert 'id="spectrum"' in page.read_text() and 'id="hit-rate-over-time"' in page.read_text()
    saved.write_text("{}")
    code, _, err = run(capsys, "report", str(saved))
    assert code == 1 and "not an Aurelis report" in err


def test_replay_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "replay")
    assert code == 2 and "--simulate" in err
    workload = tmp_path / "w.jsonl"
    workload.write_text('{"path": "/chat/completions", "body": {"model": "m"}}\n')
    config = tmp_path / "aurelis.toml"
    config.write_text('plugins = ["normalize"]\n')
    code, _, err = run(capsys, "replay", str(workload), "--config", str(config))
    assert code == 1 and "no [[endpoints]]" in err
    code, _, err = run(capsys, "replay", str(tmp_path / "missing.jsonl"))
    assert code == 1 and "missing.jsonl" in err


def test_record_needs_a_command(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "record", "--out", "w.jsonl")
    assert code == 2 and "give the command to run" in err


def test_unknown_command_names_the_valid_ones(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["repaly"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'repaly'" in capsys.readouterr().err


def test_config_check_warns_about_what_a_valid_config_does_not_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "aurelis.toml"
    config.write_text(f'plugins = ["memory", "sqlite"]\n[sqlite]\npath = "{tmp_path / "c.sqlite3"}"\n')
    monkeypatch.setenv("AURELIS_DISABLE_PLUGINS", "sqlite")
    code, out, err = run(capsys, "config", "check", str(config))
    assert code == 0 and "2 warnings" in out
    assert "cache tiers (memory) are enabled but no plugin makes a cache key: every request bypasses them" in err
    assert "plugin 'sqlite' is disabled by AURELIS_DISABLE_PLUGINS" in err
    config.write_text('plugins = ["normalize", "memory"]\n')
    monkeypatch.delenv("AURELIS_DISABLE_PLUGINS")
    code, out, err = run(capsys, "config", "check", str(config))
    assert code == 0 and err == ""


def test_config_check_on_a_directory_is_an_error_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "config", "check", str(tmp_path))
    assert code == 1 and out == "" and err == f"error: cannot read config file {tmp_path}: Is a directory\n"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"path": "/chat/completions"}\n{"path": "/embeddings"}\n', "not an Aurelis report (aurelis report reads "
         "the report.json that aurelis replay writes): it is not JSON"),
        ("[1, 2]", "not an Aurelis report"),
        ('{"format": "aurelis-report-1", "requests": "x"}', "a damaged report"),
    ],
)
def test_report_on_a_file_that_is_not_a_report_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    path = tmp_path / "w.jsonl"
    path.write_text(content)
    code, out, err = run(capsys, "report", str(path))
    assert code == 1 and out == "" and f"error: {path}: {message}" in err
    assert "Traceback" not in err


def test_cache_commands_find_the_config_as_replay_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # No --config, no AURELIS_CONFIG: the shipped aurelis.toml, whose SQLite file is .aurelis/cache.sqlite3 in
    # the working directory (what `aurelis replay --simulate` fills), not an empty config.
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AURELIS_CONFIG", raising=False)
    code, out, err = run(capsys, "cache", "stats")
    assert code == 0, err
    assert out.startswith("sqlite: entries=0")
    assert (tmp_path / ".aurelis" / "cache.sqlite3").exists()
    config = tmp_path / "memory.toml"
    config.write_text('plugins = ["normalize", "memory"]\n')
    monkeypatch.setenv("AURELIS_CONFIG", str(config))
    code, _, err = run(capsys, "cache", "stats")
    assert code == 1 and err == f"error: {config}: no persistent cache tier (redis, sqlite) is enabled\n"


def test_replay_against_real_endpoints_says_where_and_warns_without_a_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    upstream: SimulatedServer,
) -> None:
    workload = tmp_path / "w.jsonl"
    workload.write_text('{"path": "/embeddings", "body": {"model": "e", "input": "x"}}\n')
    config = tmp_path / "aurelis.toml"
    config.write_text(f'plugins = ["normalize"]\n[[endpoints]]\nurl = "{upstream.base_url}"\n')
    monkeypatch.delenv("AURELIS_TEST_KEY", raising=False)
    argv = ["replay", str(workload), "--config", str(config), "--out", str(tmp_path / "out"),
            "--api-key-env", "AURELIS_TEST_KEY"]
    code, _, err = run(capsys, *argv)
    host = upstream.url.removeprefix("http://")
    assert code == 0 and f"replaying 1 requests to {host}\n" in err
    assert "warning: $AURELIS_TEST_KEY is not set and not every endpoint has an api_key" in err
    monkeypatch.setenv("AURELIS_TEST_KEY", "sk-test")
    code, _, err = run(capsys, *argv, "--base-url", "https://api.example/v1")
    assert code == 0 and "warning" not in err
    assert f"replaying 1 requests to {host} (addressed to api.example)" in err
    assert upstream.requests[-1].header("authorization") == "Bearer sk-test"
