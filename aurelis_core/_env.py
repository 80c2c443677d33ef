"""``${VAR}`` in a config file's strings: credentials and hosts from the environment, never from the file.

Every string value of a TOML config (in tables and lists, at any depth; never a key) has each ``${NAME}``
replaced with the value of the environment variable ``NAME`` when the file is read. ``$${`` writes a literal
``${``. A variable that is not set, an empty ``${}`` or a ``${`` without its ``}`` is an error naming the key
and the variable; every one of a file is reported together.

The expanded values exist only in the loaded config: nothing writes a config back, and the options that hold
credentials (``api_key``, header values) are never shown by a ``repr`` or an error message.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["expand_env"]

#: ``$${`` (an escaped ``${``), or ``${`` and what follows up to the next ``}`` (group 1; absent: unterminated).
_REFERENCE = re.compile(r"\$\$\{|\$\{([^}]*)(\})?")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def expand_env(data: Any, source: str, environ: Mapping[str, str] | None = None) -> tuple[Any, list[str]]:
    """``data`` with every ``${NAME}`` of its strings replaced from ``environ`` (default ``os.environ``), and
    the errors found (``"<source>: endpoints[0].api_key: ..."``)."""
    errors: list[str] = []
    env = os.environ if environ is None else environ
    return _expand(data, source, "", env, errors), errors


def _expand(value: Any, source: str, at: str, env: Mapping[str, str], errors: list[str]) -> Any:
    if isinstance(value, str):
        return _expand_string(value, source, at, env, errors) if "${" in value else value
    if isinstance(value, Mapping):
        return {k: _expand(v, source, f"{at}.{k}" if at else str(k), env, errors) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, source, f"{at}[{i}]", env, errors) for i, v in enumerate(value)]
    return value


def _expand_string(text: str, source: str, at: str, env: Mapping[str, str], errors: list[str]) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$${":
            return "${"
        name = match.group(1)
        where = f"{source}: {at or 'config'}"
        if match.group(2) is None:
            errors.append(f"{where}: '${{' without its closing '}}' (write $${{ for a literal ${{)")
            return match.group(0)
        if not _NAME.fullmatch(name):
            errors.append(f"{where}: ${{{name}}} is not an environment variable reference: expected ${{NAME}} "
                          "with NAME made of letters, digits and _ (write $${ for a literal ${)")
            return match.group(0)
        found = env.get(name)
        if found is None:
            # Only a close name is suggested: the list of every variable is the environment's business.
            close = difflib.get_close_matches(name, list(env), n=1)
            errors.append(f"{where}: the environment variable {name} is not set (referenced as ${{{name}}})"
                          + (f"; did you mean {close[0]}?" if close else ""))
            return match.group(0)
        return found

    return _REFERENCE.sub(replace, text)
