"""Validators for option classes: the ranges and formats an annotation cannot say.

Types need no validator: :func:`aurelis_core.config.config_from_table` checks every value of a config table
against its field's annotation (``int`` takes no ``True``, ``tuple[str, ...]`` no bare string...). What a
type cannot say is written with these attrs validators, which plugins import from the plugin API,
:mod:`aurelis_core.plugin` (this module stays importable as it is)::

    import attrs
    from aurelis_core.plugin import in_range, positive, redis_url

    @attrs.frozen
    class MyConfig:
        ttl: float | None = attrs.field(default=300.0, validator=positive)
        level: int = attrs.field(default=6, validator=in_range(1, 9))
        url: str | None = attrs.field(default=None, validator=redis_url)

Each lets ``None`` through when the field is optional (annotated ``... | None``), so an optional option needs
no ``optional()`` wrapper and a required one can never be switched off by writing nothing. Each checks the
type it needs itself too, so an option class built directly in Python (``MyConfig(ttl="5")``) fails as
clearly as a config table. A failing validator raises :class:`Invalid`, which the config loader turns into
``"<source>: [table] key: expected ..., got ..."``; fields declared with ``repr=False`` (credentials) never
have their value written into a message.

Some things can only be checked against the outside world (is that Redis up? can that file be written?). They
are never build-time failures: a field names a *probe* in its metadata (``metadata={PROBE: probe_redis}``), a
callable ``(instance, attribute, value) -> str | None`` that ``aurelis config check`` runs and reports as a
warning.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = [
    "ALLOW_NON_FINITE",
    "PROBE",
    "Invalid",
    "as_tuple",
    "at_least",
    "choices_hint",
    "describe",
    "each",
    "env_name",
    "existing_file",
    "file_path",
    "fraction",
    "header_name",
    "header_table",
    "host_port",
    "http_url",
    "in_range",
    "label",
    "non_empty",
    "non_negative",
    "non_negative_int",
    "one_of",
    "path_ending",
    "positive",
    "positive_int",
    "printable",
    "probe_bind",
    "probe_redis",
    "probe_tcp",
    "probe_writable_file",
    "redis_url",
    "url_path",
    "writable_file_probe",
]

#: Field metadata key naming a probe ``(instance, attribute, value) -> warning or None`` that ``aurelis config
#: check`` runs: for what only the outside world can tell (a server is reachable, a file can be written).
PROBE = "aurelis.probe"
#: Field metadata key: ``{ALLOW_NON_FINITE: True}`` lets a ``float`` option take ``nan`` and ``inf``, which the
#: type check refuses otherwise (a ``nan`` ttl compares false with everything: an entry that never expires).
ALLOW_NON_FINITE = "aurelis.allow_non_finite"

Validator = Callable[[Any, Any, Any], None]


def choices_hint(given: str, valid: Iterable[str]) -> str:
    """``"; did you mean 'lru'? valid: a, b"`` -- the tail of an error about a name that is not known."""
    valid = sorted(valid)
    close = difflib.get_close_matches(given, valid, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{hint} valid: {', '.join(valid) if valid else '(none)'}"


def _kind(value: Any) -> str:
    if value is None:
        return "None"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, (list, tuple)):
        return "a list"
    return f"a {type(value).__name__}"


def describe(value: Any, secret: bool = False, shown: str | None = None) -> str:
    """What an error says was given: ``"'300' (a string)"``, or only ``"a string"`` for a secret.

    ``shown`` replaces the value's repr (a URL with its password masked).
    """
    kind = _kind(value)
    if secret:
        return kind
    if value is None:
        return "None"
    text = shown if shown is not None else repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} ({kind})"


class Invalid(ValueError):
    """A value is not what its option expects: ``expected`` completes the sentence "expected ...".

    Raised by the validators here (and by any validator that wants the loader's standard message). ``name`` is
    the option's name, with an item's index or key when one item of a list or table is wrong (``paths[1]``);
    ``field`` is the option's name alone. ``secret`` hides the value (fields with ``repr=False``), ``shown``
    replaces its repr, ``hint`` is appended after it.
    """

    def __init__(
        self, name: str, expected: str, value: Any, *, secret: bool = False, shown: str | None = None,
        hint: str = "",
    ) -> None:
        self.name = name
        self.field = re.split(r"[\[.]", name, maxsplit=1)[0]
        self.expected = expected
        self.value = value
        self.detail = f"expected {expected}, got {describe(value, secret, shown)}{hint}"
        super().__init__(f"{name!r}: {self.detail}")


def _optional(attribute: Any) -> bool:
    return "None" in str(attribute.type)


def _secret(attribute: Any) -> bool:
    return getattr(attribute, "repr", True) is False


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bound(value: float) -> str:
    return repr(int(value)) if float(value).is_integer() else repr(value)


class in_range:
    """A number within ``lo`` and ``hi`` (either may be ``None``: unbounded); ``lo_open``/``hi_open`` exclude the
    bound itself; ``integer`` asks for an int. Non-finite numbers (``nan``, ``inf``) are never in range.

    The bounds are attributes, so tools (and tests) can read an option's range.
    """

    __slots__ = ("expected", "hi", "hi_open", "integer", "lo", "lo_open")

    def __init__(
        self, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, hi_open: bool = False,
        integer: bool = False,
    ) -> None:
        self.lo, self.hi, self.lo_open, self.hi_open, self.integer = lo, hi, lo_open, hi_open, integer
        what = "an integer" if integer else "a number"
        if lo is not None and hi is not None:
            if integer and not lo_open and not hi_open:
                self.expected = f"{what} in {_bound(lo)}..{_bound(hi)}"
            else:
                self.expected = (
                    f"{what} in {'(' if lo_open else '['}{_bound(lo)}, {_bound(hi)}{')' if hi_open else ']'}"
                )
        elif lo is not None:
            self.expected = f"{what} {'>' if lo_open else '>='} {_bound(lo)}"
        elif hi is not None:
            self.expected = f"{what} {'<' if hi_open else '<='} {_bound(hi)}"
        else:
            self.expected = what

    def ok(self, value: Any) -> bool:
        if not (_integer(value) if self.integer else _number(value)):
            return False
        if isinstance(value, float) and not math.isfinite(value):
            return False
        lo, hi = self.lo, self.hi
        if lo is not None and (value <= lo if self.lo_open else value < lo):
            return False
        return not (hi is not None and (value >= hi if self.hi_open else value > hi))

    def __call__(self, instance: Any, attribute: Any, value: Any) -> None:
        if value is None and _optional(attribute):
            return
        if not self.ok(value):
            raise Invalid(attribute.name, self.expected, value, secret=_secret(attribute))

    def __repr__(self) -> str:
        return f"<in_range {self.expected}>"


def at_least(lo: float) -> in_range:
    """A number >= ``lo``."""
    return in_range(lo)


#: A number > 0.
positive = in_range(0, lo_open=True)
#: A number >= 0.
non_negative = in_range(0)
#: An integer >= 1.
positive_int = in_range(1, integer=True)
#: An integer >= 0.
non_negative_int = in_range(0, integer=True)
#: A number strictly between 0 and 1 (a share, a smoothing factor).
fraction = in_range(0, 1, lo_open=True, hi_open=True)


class _Format:
    """A validator from a predicate ``check(value) -> problem or None`` and what it expects."""

    __slots__ = ("check", "expected", "hint")

    def __init__(self, expected: str, check: Callable[[Any], str | None], hint: Callable[[Any], str] | None = None):
        self.expected = expected
        self.check = check
        self.hint = hint

    def __call__(self, instance: Any, attribute: Any, value: Any) -> None:
        if value is None and _optional(attribute):
            return
        problem = self.check(value)
        if problem is not None:
            hint = self.hint(value) if self.hint is not None else (f": {problem}" if problem else "")
            raise Invalid(attribute.name, self.expected, value, secret=_secret(attribute),
                          shown=_masked(value) if isinstance(value, str) else None, hint=hint)

    def __repr__(self) -> str:
        return f"<validator {self.expected}>"


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _label(value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return ""
    return "" if _CONTROL.search(value) else None


#: A non-empty string without control characters (a namespace, a key, a name).
label = _Format("a non-empty string without control characters", _label)


def _printable(value: Any) -> str | None:
    return "" if not isinstance(value, str) or _CONTROL.search(value) else None


#: A string without control characters, possibly empty (a name that defaults to something else when empty).
printable = _Format("a string without control characters", _printable)


def _env_name(value: Any) -> str | None:
    return None if isinstance(value, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value) else ""


#: The name of an environment variable (letters, digits and ``_``, not starting with a digit).
env_name = _Format("an environment variable name such as 'AZURE_KEY'", _env_name)


def _url_path(value: Any) -> str | None:
    if not isinstance(value, str) or not value.startswith("/") or not value.strip("/"):
        return ""
    return "" if _CONTROL.search(value) or " " in value else None


#: A URL path (or path suffix) such as ``/chat/completions``: starts with ``/``, more than slashes.
url_path = _Format("a URL path starting with '/' (e.g. '/chat/completions')", _url_path)


def _path_ending(value: Any) -> str | None:
    if isinstance(value, str) and value.startswith(":") and value[1:].strip() and value[1:].isprintable():
        return None if " " not in value and "/" not in value else ""
    return _url_path(value)


#: The end of a URL path: ``/chat/completions``, or a Gemini method such as ``:generateContent``.
path_ending = _Format("a path ending such as '/chat/completions' or ':generateContent'", _path_ending)


def _masked(text: str) -> str:
    """``text`` with the password of a URL's ``user:password@`` replaced by ``***``."""
    return repr(re.sub(r"(//[^/@:]*:)[^/@]*@", r"\1***@", text))


def _http_url(value: Any) -> str | None:
    if not isinstance(value, str) or _CONTROL.search(value) or " " in value:
        return ""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in 0..65535
    except ValueError as exc:
        return str(exc)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return ""
    if parts.query or parts.fragment or value.endswith(("?", "#")):
        return "a base URL has no query or fragment (the request's own are kept)"
    return None


#: An absolute ``http://`` or ``https://`` base URL with a host, without query or fragment.
http_url = _Format("an absolute http(s) URL (https://host[:port][/base/path]) without query or fragment", _http_url)


def _redis_url(value: Any) -> str | None:
    if not isinstance(value, str):
        return ""
    try:
        from redis.connection import ConnectionPool, parse_url
    except ImportError:  # pragma: no cover - depends on the installed extras
        return "checking it needs redis-py: pip install 'aurelis[redis]'"
    try:
        options = parse_url(value)  # type: ignore[no-untyped-call]
    except ValueError as exc:
        return str(exc)
    from urllib.parse import urlsplit

    parts = urlsplit(value)
    if parts.scheme == "unix":
        if not options.get("path"):
            return "a unix:// URL needs the socket's path (unix:///run/redis.sock)"
    else:
        if not parts.hostname:
            return "no host"
        # redis-py ignores a path that is not a database number: a typo would silently use database 0.
        db = parts.path.strip("/")
        if db and not db.isdigit():
            return f"the path must be a database number, got {parts.path!r}"
    # The connection class takes the URL's query options as keyword arguments: building one (it does not
    # connect) finds an unknown option now rather than at the first request.
    try:
        pool = ConnectionPool.from_url(value)
        pool.connection_class(**pool.connection_kwargs)
    except (TypeError, ValueError) as exc:
        return str(exc)
    return None


#: A URL redis-py accepts (``redis://[[user]:password@]host[:port][/db]``, ``rediss://...``, ``unix:///path``),
#: parsed by redis-py itself without connecting; options in its query must be ones redis-py knows.
redis_url = _Format("a Redis URL (redis://[:password@]host[:port][/db], rediss://..., unix:///path.sock)", _redis_url)


def _host_port(value: Any) -> str | None:
    if not isinstance(value, str):
        return ""
    host, sep, port = value.rpartition(":")
    if not sep or not host or _CONTROL.search(host) or " " in host:
        return ""
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        return ""
    return None


#: ``"host:port"`` with a port in 1..65535.
host_port = _Format("'host:port' with a port in 1..65535", _host_port)


def _file_path(value: Any) -> str | None:
    if not isinstance(value, str) or not value or "\x00" in value:
        return ""
    if value.endswith(("/", os.sep)) or os.path.isdir(value):
        return ""
    return None


#: The path of a file (it need not exist yet); not empty, not an existing directory.
file_path = _Format("the path of a file, not a directory", _file_path, hint=lambda value: "")


def _existing_file(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if not isinstance(value, str) or not os.path.isfile(value):
        return ""
    return None


#: TLS verification: ``true``, ``false``, or the path of an existing CA bundle file.
existing_file = _Format("true, false or the path of an existing CA bundle file", _existing_file)


def one_of(choices: Iterable[str], what: str) -> _Format:
    """A string among ``choices``; the error says ``expected <what>`` and lists them (with a close match)."""
    valid = tuple(choices)

    def check(value: Any) -> str | None:
        return None if isinstance(value, str) and value in valid else ""

    return _Format(what, check, hint=lambda value: choices_hint(value if isinstance(value, str) else "", valid))


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _header_name(value: Any) -> str | None:
    return None if isinstance(value, str) and _TOKEN.fullmatch(value) else ""


#: An HTTP header name (an RFC 9110 token: letters, digits and ``!#$%&'*+-.^_`|~``).
header_name = _Format("a header name made of letters, digits and !#$%&'*+-.^_`|~", _header_name)


class _HeaderTable:
    """A table of HTTP headers: names are RFC 9110 tokens, values hold no control characters (a CR or LF in
    a value would let a config inject another header)."""

    expected = "a table of HTTP headers (name = value, without control characters)"

    def __call__(self, instance: Any, attribute: Any, value: Any) -> None:
        if value is None and _optional(attribute):
            return
        if not isinstance(value, Mapping):
            raise Invalid(attribute.name, self.expected, value)
        for name, text in value.items():
            if not isinstance(name, str) or not _TOKEN.fullmatch(name):
                raise Invalid(attribute.name, "header names made of letters, digits and !#$%&'*+-.^_`|~", name)
            if not isinstance(text, str) or re.search(r"[\x00-\x08\x0a-\x1f\x7f]", text):
                # The value is not shown: a header (api-key, x-goog-api-key) may hold a credential.
                raise Invalid(f"{attribute.name}[{name!r}]", "a header value without control characters", text,
                              secret=True)


#: A table of HTTP headers (``Mapping[str, str]`` fields such as an endpoint's ``headers``).
header_table = _HeaderTable()


class _Item:
    """The attribute an item validator sees: the option's name with the item's index or key."""

    __slots__ = ("name", "repr", "type")

    def __init__(self, name: str, secret: bool) -> None:
        self.name = name
        self.repr = not secret
        self.type = ""  # an item is never optional


def as_tuple(value: Any) -> Any:
    """The converter of list options: a list, tuple or set becomes a tuple; anything else is kept as it is, for
    :class:`each` (or the annotation's check) to refuse with the option's name.

    Not ``tuple`` itself: ``tuple("user")`` is ``('u', 's', 'e', 'r')``, a list of valid one-letter items, so an
    option class built in code with a string where a list belongs would be accepted and mean something else.
    """
    return tuple(value) if isinstance(value, (list, tuple, set, frozenset)) else value


class each:
    """Apply ``validator`` to every item of a list, or every value of a table; errors name the item
    (``statuses[2]``, ``prices['gpt-4o']``). Anything else (a string where a list belongs) is refused."""

    __slots__ = ("validator",)

    def __init__(self, validator: Validator) -> None:
        self.validator = validator

    def __call__(self, instance: Any, attribute: Any, value: Any) -> None:
        if value is None and _optional(attribute):
            return
        secret = _secret(attribute)
        if isinstance(value, Mapping):
            for key, item in value.items():
                self.validator(instance, _Item(f"{attribute.name}[{key!r}]", secret), item)
        elif isinstance(value, (list, tuple, set, frozenset)):
            for index, item in enumerate(value):
                self.validator(instance, _Item(f"{attribute.name}[{index}]", secret), item)
        else:
            hint = f" (a list of one: [{value!r}])" if isinstance(value, str) else ""
            raise Invalid(attribute.name, "a list", value, secret=secret, hint=hint)

    def __repr__(self) -> str:
        return f"<each {self.validator!r}>"


def _non_empty(instance: Any, attribute: Any, value: Any) -> None:
    """A non-empty list or table."""
    if value is None and _optional(attribute):
        return
    if not value:
        raise Invalid(attribute.name, f"a non-empty {'table' if isinstance(value, Mapping) else 'list'}", value)


#: A non-empty list or table.
non_empty: Validator = _non_empty


# --- probes (``aurelis config check`` only) --------------------------------------------------------------------


def probe_redis(url: str, timeout: float = 1.0) -> str | None:
    """``None`` if a Redis answers ``PING`` at ``url`` within ``timeout`` seconds, else what went wrong."""
    try:
        import redis
    except ImportError:  # pragma: no cover - depends on the installed extras
        return "cannot check: redis-py is not installed (pip install 'aurelis[redis]')"
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        client.ping()
    except Exception as exc:
        return f"no Redis answers at {_masked(url)}: {type(exc).__name__}: {exc}"
    finally:
        client.close()
    return None


def probe_tcp(address: str, timeout: float = 1.0) -> str | None:
    """``None`` if a TCP connection to ``"host:port"`` opens within ``timeout`` seconds, else why not."""
    import socket

    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return None
    except OSError as exc:
        return f"cannot connect to {address}: {exc}"


def probe_writable_file(path: str) -> str | None:
    """``None`` if the file at ``path`` can be created (or, when it exists, written), else why not."""
    if os.path.exists(path):
        return None if os.access(path, os.R_OK | os.W_OK) else f"{path} exists but cannot be read and written"
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):  # made on first use: the nearest existing ancestor must allow it
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return f"{parent} is not a directory, so {path} cannot be created"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{path} cannot be created: {parent} is not writable"
    return None


def writable_file_probe(instance: Any, attribute: Any, value: str) -> str | None:
    """A probe for ``metadata={PROBE: writable_file_probe}`` of a file path option: can the file be created
    or written? (:func:`probe_writable_file` on the option's value.)"""
    return probe_writable_file(value)


def probe_bind(host: str, port: int) -> str | None:
    """``None`` if a TCP server could listen on ``host:port`` now, else why not (port 0 always can)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        return f"cannot resolve {host!r}: {exc}"
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        # As the HTTP servers that will listen there do: a port in TIME_WAIT is free to them.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            return f"cannot listen on {host}:{port}: {exc}"
    return None
