"""``aurelis config check``: every error of a config file at once, with where it is; then warnings about what only
the outside world can tell (a Redis that does not answer, a file that cannot be created, a port in use)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from aurelis_core.tools.cli import main


def check(capsys: pytest.CaptureFixture[str], path: Path, text: str) -> tuple[int, str, list[str]]:
    path.write_text(text)
    code = main(["config", "check", str(path)])
    out, err = capsys.readouterr()
    return code, out, err.splitlines()


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on (bound then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port something listens on for the test."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_every_error_is_printed_with_where_it_is(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "aurelis.toml"
    code, out, err = check(capsys, path, """
plugins = ["normalize", "memory", "nope"]

[[endpoints]]
url = 5

[[endpoints]]
url = "https://a.example"
headers = ["a"]

[memory]
ttl = "300"
max_bytes = -1

[redis]
prefix = 5
warm = true

[sqlite.warm]
top = 0
""")
    assert code == 1 and out == ""
    assert err[4].startswith(f"error: {path}: plugins: unknown plugin 'nope'") and "valid: " in err[4]
    assert err[:4] + err[5:] == [
        f"error: {path}: endpoints[0] url: expected a string, got 5 (an integer)",
        f"error: {path}: endpoints[1] headers: expected a table of strings, got ['a'] (a list)",
        f"error: {path}: [memory] ttl: expected a number, got '300' (a string)",
        f"error: {path}: [memory] max_bytes: expected an integer >= 1, got -1 (an integer)",
        f"error: {path}: [redis] prefix: expected a string, got 5 (an integer)",
        f"error: {path}: [redis] warm: expected a table, got True (a boolean)",
        f"error: {path}: [sqlite] warm.top: expected an integer >= 1, got 0 (an integer)",
        f"{path}: 8 errors",
    ]


def test_a_good_file_reports_no_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], redis_url: str
) -> None:
    code, out, err = check(capsys, tmp_path / "aurelis.toml", f"""
plugins = ["normalize", "memory", "redis", "sqlite", "ratelimit", "record"]
[tenant]
secret = "a-deployment-secret"
[redis]
url = "{redis_url}"
[ratelimit]
redis_url = "{redis_url}"
[sqlite]
path = "{tmp_path}/cache/l3.sqlite3"
[record]
path = "{tmp_path}/workload.jsonl"
""")
    assert (code, err) == (0, [])
    assert out.endswith("ok (6 plugins: normalize, memory, redis, sqlite, ratelimit, record; 0 endpoints)\n")


def test_what_only_the_outside_world_can_tell_is_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], closed_port: int, busy_port: int
) -> None:
    (tmp_path / "a-file").write_text("")
    path = tmp_path / "aurelis.toml"
    code, out, err = check(capsys, path, f"""
plugins = ["normalize", "memory", "redis", "sqlite", "ratelimit", "prometheus", "record"]
[redis]
url = "redis://:hunter2@127.0.0.1:{closed_port}/0"
[ratelimit]
redis_url = "redis://127.0.0.1:{closed_port}/1"
[sqlite]
path = "{tmp_path}/a-file/l3.sqlite3"
[prometheus]
port = {busy_port}
[record]
path = "{tmp_path}/workload.jsonl"
""")
    assert code == 0
    assert len(err) == 5, err
    assert err[0].startswith(f"warning: {path}: [redis] url: no Redis answers at "
                             f"'redis://:***@127.0.0.1:{closed_port}/0': ConnectionError")
    assert "hunter2" not in "\n".join(err)
    assert err[1] == (f"warning: {path}: [sqlite] path: {tmp_path}/a-file is not a directory, so "
                      f"{tmp_path}/a-file/l3.sqlite3 cannot be created")
    assert err[2].startswith(f"warning: {path}: [ratelimit] redis_url: no Redis answers at "
                             f"'redis://127.0.0.1:{closed_port}/1'")
    assert err[3].startswith(f"warning: {path}: [prometheus] port: cannot listen on 127.0.0.1:{busy_port}: ")
    assert err[4].startswith(f"warning: {path}: [tenant] secret: not set (nor AURELIS_CACHE_SECRET) while "
                             "redis and sqlite share entries")
    assert out.endswith("; 0 endpoints; 5 warnings)\n")


def test_sentinels_and_cluster_nodes_are_probed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], closed_port: int, redis_url: str
) -> None:
    live = redis_url.split("//")[1].split("/")[0]
    path = tmp_path / "aurelis.toml"
    code, _, err = check(capsys, path, f"""
plugins = ["normalize", "redis"]
[tenant]
secret = "s"
[redis]
sentinels = ["{live}", "127.0.0.1:{closed_port}"]
""")
    assert code == 0
    assert err == [f"warning: {path}: [redis] sentinels: cannot connect to 127.0.0.1:{closed_port}: "
                   + err[0].split(f"127.0.0.1:{closed_port}: ", 1)[1]]


def test_a_plugin_that_is_not_enabled_is_checked_but_not_probed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], closed_port: int
) -> None:
    path = tmp_path / "aurelis.toml"
    code, _, err = check(capsys, path, f'[redis]\nurl = "redis://127.0.0.1:{closed_port}/0"\n')
    assert (code, err) == (0, [])
    code, _, err = check(capsys, path, '[redis]\nurl = "127.0.0.1:6379"\n')
    assert code == 1 and err[0].startswith(f"error: {path}: [redis] url: expected a Redis URL")


def test_the_shared_redis_connection_is_probed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], closed_port: int
) -> None:
    path = tmp_path / "aurelis.toml"
    code, _, err = check(capsys, path, f"""
plugins = ["ratelimit"]
[redis_connection]
cluster_nodes = ["127.0.0.1:{closed_port}"]
[ratelimit]
rpm = 10
""")
    assert code == 0
    assert len(err) == 1, err
    assert err[0].startswith(f"warning: {path}: [redis_connection] cluster_nodes: ")
    assert f"127.0.0.1:{closed_port}" in err[0]


def test_the_redis_tier_probes_the_default_only_when_nothing_names_a_redis(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], redis_url: str
) -> None:
    path = tmp_path / "aurelis.toml"
    live = redis_url.split("?")[0]
    code, _, err = check(capsys, path, f"""
plugins = ["normalize", "redis"]
[tenant]
secret = "s"
[redis_connection]
url = "{live}"
""")
    # The tier uses the shared connection, which answers: nothing about 127.0.0.1:6379.
    assert code == 0 and err == [], err
