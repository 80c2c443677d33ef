"""Pin the public surface: adding or removing a public name is a deliberate, reviewed change."""

from __future__ import annotations

import aurelis_core


def test_public_names() -> None:
    assert sorted(aurelis_core.__all__) == sorted(
        [
            "Attempt",
            "CacheEntry",
            "CacheInfo",
            "Config",
            "ConfigError",
            "DialectNotServed",
            "Endpoint",
            "ModelNotServed",
            "Pipeline",
            "RequestContext",
            "RequestControlError",
            "RequestControls",
            "Stats",
            "__version__",
            "cache_info",
            "gather",
            "hookimpl",
            "instrument",
            "load_config",
            "pipeline_of",
        ]
    )


def test_every_public_name_exists_and_is_documented() -> None:
    for name in aurelis_core.__all__:
        obj = getattr(aurelis_core, name)
        if callable(obj) and name != "hookimpl":
            assert obj.__doc__, f"{name} has no docstring"


def test_import_is_light() -> None:
    """``import aurelis_core`` must not import optional backends, the plugins, or standard modules that only
    some paths need (asyncio and anyio for async callers, entry points for building a pipeline, TOML and
    pathlib for config files, a thread pool for sync ``gather``): together ~50 ms of import time."""
    import subprocess
    import sys

    # Compared with what the interpreter had before (an editable install's finder imports pathlib at start-up).
    code = (
        "import sys; before = set(sys.modules); import aurelis_core; "
        "heavy = [m for m in ('redis', 'aiosqlite', 'aiohttp', 'prometheus_client', 'lz4', 'brotli', "
        "'aurelis_plugins', 'openai', 'uvicorn', 'asyncio', 'anyio', 'importlib.metadata', 'tomllib', "
        "'pathlib', 'concurrent.futures', 'email.utils') if m in sys.modules and m not in before]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
