"""A pytest plugin that runs another project's test suite with every httpx/httpx2 client instrumented.

Loaded with ``-p aurelis_instrument_all`` (this folder on ``PYTHONPATH``) into a peer project's own suite
(httpx's, the openai SDK's) by ``tests/test_peer_suites.py``. It does two things:

- when ``AURELIS_PEER_CONFIG`` is set (a JSON config, ``{}`` for no plugins), ``Client.__init__`` and
  ``AsyncClient.__init__`` of httpx and httpx2 are patched to end with ``aurelis_core.instrument(self,
  config)``, so every client the suite builds, its own subclasses included, runs through a pipeline;
- when ``AURELIS_PEER_REPORT`` names a file, the outcome of every test (``passed``, ``failed``, ``error``,
  ``skipped``, ``xfailed``, ``xpassed``) and the seconds its phases took are written there as JSON
  (``{nodeid: [outcome, seconds]}``) at the end of the session, so a plain run and an instrumented run of the
  same suite can be compared test by test, and the cost of each module seen.

Without ``AURELIS_PEER_CONFIG`` nothing is patched: that is the plain run.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
from typing import Any

import pytest

_outcomes: dict[str, str] = {}
_seconds: dict[str, float] = {}


def _instrument_all(config: Any) -> None:
    import aurelis_core

    for module_name in ("httpx", "httpx2"):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        for cls in (module.Client, module.AsyncClient):
            original = cls.__init__
            if getattr(original, "_aurelis_patched", False):
                continue

            @functools.wraps(original)
            def __init__(self: Any, *args: Any, __original: Any = original, __cls: Any = cls, **kwargs: Any) -> None:
                __original(self, *args, **kwargs)
                # Only the outermost base's __init__ instruments: a subclass calling super().__init__() reaches
                # here once, and instrument() is idempotent anyway.
                aurelis_core.instrument(self, config)

            __init__._aurelis_patched = True  # type: ignore[attr-defined]
            cls.__init__ = __init__


def pytest_configure(config: pytest.Config) -> None:
    raw = os.environ.get("AURELIS_PEER_CONFIG")
    if raw is not None:
        _instrument_all(json.loads(raw))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    nodeid = report.nodeid
    _seconds[nodeid] = _seconds.get(nodeid, 0.0) + report.duration
    if report.when == "call":
        if hasattr(report, "wasxfail"):
            outcome = "xfailed" if report.skipped else "xpassed"
        else:
            outcome = report.outcome
        _outcomes[nodeid] = outcome
    elif report.when == "setup":
        if report.failed:
            _outcomes[nodeid] = "error"
        elif report.skipped:
            _outcomes[nodeid] = "xfailed" if hasattr(report, "wasxfail") else "skipped"
    elif report.failed:  # teardown
        _outcomes[nodeid] = "error"


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.failed:
        _outcomes[report.nodeid] = "error"


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = os.environ.get("AURELIS_PEER_REPORT")
    if path and not hasattr(session.config, "workerinput"):  # under xdist, the controller writes it
        with open(path, "w", encoding="utf-8") as out:
            report = {nodeid: [outcome, round(_seconds.get(nodeid, 0.0), 4)] for nodeid, outcome in _outcomes.items()}
            json.dump(report, out, indent=0, sort_keys=True)
