"""Logging conventions shared by the core and the plugins.

Every component logs under its own child of the ``aurelis`` logger (``aurelis.pipeline``, ``aurelis.cache.redis``,
``aurelis.retry``...), so an application can turn one component up or down. The ``aurelis`` logger has a
``NullHandler`` (set in ``aurelis_core/__init__``): a library prints nothing unless the application configures
logging. Messages never start with ``aurelis:``; the logger's name already says where they come from.

Faults the operator expects and can act on (a Redis that refuses connections, a timeout, a locked file) are
logged as **one line** naming the component, where it failed and the error; their traceback, which only says
where in the client library the socket failed, goes in a separate DEBUG record. An unexpected exception (a bug:
``TypeError``, ``KeyError``...) keeps its traceback at the record's own level, because that is what a bug report
needs.
"""

from __future__ import annotations

import logging
import sqlite3

__all__ = ["ROOT", "component_logger", "describe_error", "expected_fault", "log_fault"]

#: The logger every Aurelis component logs under.
ROOT = "aurelis"

# Exception classes (by name, anywhere in the class's MRO) that mean "the outside world failed" in the client
# libraries Aurelis talks through, without importing them: redis-py's ConnectionError and TimeoutError (which
# are not OSErrors), httpx/httpx2's transport errors, aiohttp's ClientConnectionError.
_EXPECTED_NAMES = frozenset({
    "ConnectionError", "TimeoutError", "BusyLoadingError", "TransportError", "ClientConnectionError",
    "ReadOnlyError", "MasterNotFoundError", "SlaveNotFoundError", "ClusterDownError",
})


def component_logger(component: str) -> logging.Logger:
    """The logger of one component: ``component_logger("cache.redis")`` is ``aurelis.cache.redis``."""
    return logging.getLogger(f"{ROOT}.{component}" if component else ROOT)


def expected_fault(error: BaseException) -> bool:
    """Whether ``error`` is the outside world failing (a network, a server, a disk), not a bug in Aurelis or a
    plugin: those are logged as one line, without their traceback."""
    if isinstance(error, (OSError, sqlite3.OperationalError)):  # TimeoutError and ConnectionError are OSErrors
        return True
    return any(cls.__name__ in _EXPECTED_NAMES for cls in type(error).__mro__)


def describe_error(error: BaseException) -> str:
    """``"ConnectionError: Error 111 connecting to 127.0.0.1:1. Connection refused."``: the class and the
    message on one line (an exception with an empty message, like a bare ``TimeoutError()``, is its class)."""
    text = " ".join(str(error).split())
    name = type(error).__name__
    return f"{name}: {text}" if text else name


def log_fault(
    logger: logging.Logger, level: int, message: str, *args: object, error: BaseException
) -> None:
    """Log ``message % args`` followed by ``": "`` and the error, at ``level``.

    An expected fault (:func:`expected_fault`) is one line; its traceback follows as a DEBUG record, so it is
    there when someone turns the component up, and 40 lines of a client library's internals are not in every
    production log when Redis restarts. Anything else is logged with its traceback.
    """
    if not logger.isEnabledFor(level):
        return
    line = (message % args if args else message) + ": " + describe_error(error)
    if expected_fault(error):
        # stacklevel=2: the record names the caller's file and line, not this helper's.
        logger.log(level, "%s", line, stacklevel=2)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("traceback of: %s", line, exc_info=error, stacklevel=2)
    else:
        logger.log(level, "%s", line, exc_info=error, stacklevel=2)
