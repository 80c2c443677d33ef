"""The aurelis command: plugins, config check, report, record usage errors (replay: tests/test_replay.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aurelis_core.stats import Sample
from aurelis_core.tools.cli import main
from aurelis_core.tools.report import build_report


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_plugins_lists_origin_and_hooks(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "plugins")
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
                      None if i % 2 else "ep", 200, None, 1, 7 if i % 2 else None) for i in range(10)]
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
    assert page.read_text().count("<svg") == 3
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
