"""The pytest plugin every pytest run loads (entry point ``pytest11``) needs nothing optional.

Installing ``aurelis`` with no extras plus pytest must leave every pytest run in that environment working:
``aurelis_core.testing`` imports its helpers only when one is used, and the fixtures that need uvicorn say
which extra to install. Each check runs in a fresh interpreter in which ``import uvicorn`` fails, as it does
where the ``simulate`` extra is not installed (``.ci/run`` also proves it on a real bare install).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

#: Makes ``import uvicorn`` fail as it does where uvicorn is not installed (ModuleNotFoundError).
NO_UVICORN = "import sys; sys.modules['uvicorn'] = None\n"


def run(code: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", NO_UVICORN + textwrap.dedent(code)],
        capture_output=True, text=True, timeout=120, cwd=cwd,
    )


def test_the_plugin_and_the_package_import_nothing_optional() -> None:
    result = run(
        """
        import aurelis_core.testing.pytest_plugin
        assert sys.modules["uvicorn"] is None  # nobody tried to put the real one there
        import aurelis_core.testing as testing
        assert "aurelis_core.testing.server" not in sys.modules
        assert "aurelis_core.testing.simulator" not in sys.modules
        from aurelis_core.testing import Behavior, SimulatedUpstream  # the simulator needs only attrs
        assert Behavior().latency == 0 and SimulatedUpstream is testing.SimulatedUpstream
        assert "serve" in dir(testing)
        from aurelis_core.testing import serve
        try:
            with serve(SimulatedUpstream()):
                pass
        except ImportError as exc:
            print(exc)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "pip install 'aurelis[simulate]'" in result.stdout


def test_a_pytest_run_without_uvicorn_collects_and_the_fixture_names_the_extra(tmp_path: Path) -> None:
    (tmp_path / "test_user.py").write_text(
        textwrap.dedent(
            """
            def test_unrelated():
                assert 1 + 1 == 2

            def test_uses_the_upstream(aurelis_upstream):
                pass
            """
        )
    )
    result = run(
        f"""
        import pytest
        sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "{tmp_path}"]))
        """,
        cwd=tmp_path,
    )
    out = result.stdout + result.stderr
    assert "1 passed, 1 error" in out, out
    assert "need uvicorn: pip install 'aurelis[simulate]'" in out
