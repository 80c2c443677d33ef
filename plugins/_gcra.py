"""GCRA (the generic cell rate algorithm): the rate limiter behind the ``ratelimit`` plugin, in memory or Redis.

A limit of ``limit`` units per ``period`` seconds is one number per key, the *theoretical arrival time* (TAT):
the time at which the bucket would be full again. Each unit advances it by ``interval = period / limit``; a
request of ``cost`` units may go at ``TAT + cost * interval - tolerance``, where ``tolerance`` is the burst
(``capacity * interval``). That is a token bucket refilling continuously, as providers describe their limits,
in O(1) time and one stored float per key (``redis-cell`` and ``limits`` use the same algorithm).

Here a reservation is *queued*, not refused: :meth:`reserve` takes the slot at the earliest time every limit
allows and returns how long to wait for it, so concurrent callers line up in order instead of polling. A
reservation whose wait would exceed ``max_wait`` takes nothing. A request costing more than the whole burst
waits for a full bucket and then goes, leaving the bucket in debt (it would otherwise never go).

:class:`RedisGCRA` runs the same arithmetic in a Lua script, atomically across processes, with Redis's clock
(``TIME``), so processes with different monotonic clocks share one limit. Corrections learnt after a request
(refunds, the actual token usage, a server's ``x-ratelimit-remaining``) only matter to later reservations, so
they are queued and sent along with the next one: settling never costs a round trip.

A limiter must never hold a request up for longer than its own arithmetic says, so :class:`RedisGCRA`'s clients
have tight timeouts (``timeout``, connect and read, no retries) and a cool-off of their own: after Redis fails,
``RedisGCRA.cooloff.may_ask()`` answers ``False`` for ``cooloff`` seconds (the caller uses its local limits
without a network call), then lets one reservation probe Redis; its answer makes Redis the source of truth again.

Any Redis will do: a single node, a Sentinel-watched master or a Cluster (a
:class:`~aurelis_core.plugin.RedisConnection`). One script call touches every key of a reservation, and Cluster
runs a script only on keys of one hash slot, so on Cluster the prefix is made a hash tag (``{aurelis:ratelimit:}``,
unless it has one already): all the limits live in one slot, on one master, and a reservation stays atomic.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple

from aurelis_core.plugin import RedisConnection

from ._per_loop import PerLoop

__all__ = ["LocalGCRA", "RedisGCRA", "Reservation", "Spec", "duration_seconds"]

#: No floor: ``max(tat, now + NO_FLOOR)`` leaves the TAT as it is.
NO_FLOOR = -1e9


class Spec(NamedTuple):
    """One limit a reservation must satisfy: its key, seconds per unit, burst in seconds, and units taken."""

    key: str
    interval: float
    tolerance: float
    cost: float


class Reservation(NamedTuple):
    """``granted``: the units were taken; ``wait``: seconds until the request may go (if not granted: would)."""

    granted: bool
    wait: float


class LocalGCRA:
    """The limits of one process, in a dict guarded by a lock (each operation is a few float operations).

    ``clock`` (default ``time.monotonic``; an attribute, so it can be swapped after construction) is where the
    TATs' time comes from: a test or a simulation passes a fake clock and moves it instead of sleeping.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._tat: dict[str, float] = {}
        self._lock = threading.Lock()

    def reserve(self, specs: Sequence[Spec], max_wait: float) -> Reservation:
        with self._lock:
            now = self.clock()
            tats = self._tat
            wait = 0.0
            for key, interval, tolerance, cost in specs:
                tat = tats.get(key, now)
                if tat < now:
                    tat = now
                # min(): a cost beyond the burst waits for a full bucket (TAT) rather than forever.
                allow = min(tat + cost * interval - tolerance, tat)
                if allow - now > wait:
                    wait = allow - now
            if wait > max_wait:
                return Reservation(False, wait)
            at = now + wait
            for spec in specs:
                tats[spec.key] = max(tats.get(spec.key, at), at) + spec.cost * spec.interval
            return Reservation(True, wait)

    def correct(self, key: str, delta: float = 0.0, floor: float = NO_FLOOR) -> None:
        """Move ``key``'s TAT by ``delta`` seconds (a refund is negative), then to at least ``now + floor``."""
        with self._lock:
            now = self.clock()
            tat = max(self._tat.get(key, now), now) + delta
            self._tat[key] = max(tat, now + floor)

    def available(self, key: str, interval: float, tolerance: float) -> float:
        """Units that could be taken right now without waiting (never negative)."""
        now = self.clock()
        tat = max(self._tat.get(key, now), now)
        return max(0.0, (tolerance - (tat - now)) / interval)


# KEYS: the n reserved keys, then the keys with queued corrections.
# ARGV: n, max_wait, then (interval, tolerance, cost) per reserved key, then (delta, floor) per corrected key.
# Returns {granted (0/1), wait as a string} (a Lua number would be truncated to an integer by Redis).
LUA_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local n = tonumber(ARGV[1])
local max_wait = tonumber(ARGV[2])
local function store(key, tat)
  redis.call('SET', key, string.format('%.6f', tat), 'PX', math.ceil((tat - now) * 1000) + 1000)
end
local c = 3 + 3 * n
for i = n + 1, #KEYS do
  local tat = math.max(tonumber(redis.call('GET', KEYS[i])) or now, now) + tonumber(ARGV[c])
  store(KEYS[i], math.max(tat, now + tonumber(ARGV[c + 1])))
  c = c + 2
end
local wait = 0
local tats = {}
for i = 1, n do
  local a = 3 + 3 * (i - 1)
  local tat = math.max(tonumber(redis.call('GET', KEYS[i])) or now, now)
  tats[i] = tat
  local allow = math.min(tat + tonumber(ARGV[a + 2]) * tonumber(ARGV[a]) - tonumber(ARGV[a + 1]), tat)
  wait = math.max(wait, allow - now)
end
if wait > max_wait then
  return {0, tostring(wait)}
end
local at = now + wait
for i = 1, n do
  local a = 3 + 3 * (i - 1)
  store(KEYS[i], math.max(tats[i], at) + tonumber(ARGV[a + 2]) * tonumber(ARGV[a]))
end
return {1, tostring(wait)}
"""


class RedisGCRA:
    """The same limits shared by every process using one Redis (keys ``prefix + key``).

    Sync and async clients each get their own redis-py client, made on first use; both run the one script,
    registered once (``EVALSHA``, re-sent by redis-py if the server lost it).
    """

    def __init__(
        self, connection: str | RedisConnection, prefix: str, timeout: float = 0.15, cooloff: float = 2.0
    ) -> None:
        try:
            from ._redis_client import REDIS_ERRORS, Cooloff, one_slot_prefix
        except ImportError:  # pragma: no cover - depends on the installed extras
            raise ImportError("the ratelimit plugin's shared limits need: pip install 'aurelis[redis]'") from None
        if isinstance(connection, str):
            connection = RedisConnection(url=connection)
        #: Where the limits live.
        self.connection = connection
        #: The single node's URL (None for Sentinel and Cluster).
        self.url = connection.url
        self.prefix = one_slot_prefix(connection, prefix)
        #: Seconds to connect, and to wait for each reply (a frozen Redis costs a request this, not its freeze).
        self.timeout = timeout
        #: Whether Redis may be asked now (not for ``cooloff`` seconds after it failed).
        self.cooloff = Cooloff(cooloff)
        #: What a failed call raises.
        self.errors = REDIS_ERRORS
        self._sync: Any = None
        self._sync_client: Any = None
        #: Each live event loop's asyncio client and its script (asyncio connections belong to their loop: a
        #: client made on one loop fails on the next, e.g. ``asyncio.run`` per call).
        self._async_scripts: PerLoop[tuple[Any, Any]] = PerLoop()
        self._pending: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def _args(self, specs: Sequence[Spec], max_wait: float) -> tuple[list[str], list[Any]]:
        with self._lock:
            pending, self._pending = self._pending, {}
        prefix = self.prefix
        keys = [prefix + s.key for s in specs] + [prefix + k for k in pending]
        args: list[Any] = [len(specs), repr(max_wait)]
        for spec in specs:
            args += [repr(spec.interval), repr(spec.tolerance), repr(spec.cost)]
        for delta, floor in pending.values():
            args += [repr(delta), repr(floor)]
        return keys, args

    # The clients come from redis-py's sync and asyncio modules, so they are made here, by hand, per mode; the
    # calls on them are written once, async, in ``_gcra_async``, and generated for sync callers in ``_gcra_sync``
    # (see ``aurelis_core._unasync``).

    def _client(self, is_async: bool) -> Any:
        from ._redis_client import make_client

        return make_client(self.connection, is_async, socket_timeout=self.timeout, connect_timeout=self.timeout)

    def _sync_script(self) -> Any:
        if self._sync is None:
            self._sync_client = self._client(is_async=False)
            self._sync = self._sync_client.register_script(LUA_RESERVE)
        return self._sync

    def _async_script(self) -> Any:
        made = self._async_scripts.get()
        if made is None:
            client = self._client(is_async=True)
            made = (client, client.register_script(LUA_RESERVE))
            self._async_scripts.put(made)
        return made[1]

    def reserve(self, specs: Sequence[Spec], max_wait: float) -> Reservation:
        return _gcra_sync.reserve(self, specs, max_wait)

    def areserve(self, specs: Sequence[Spec], max_wait: float) -> Awaitable[Reservation]:
        return _gcra_async.reserve(self, specs, max_wait)

    def correct(self, key: str, delta: float = 0.0, floor: float = NO_FLOOR) -> None:
        """Queue a correction (see :meth:`LocalGCRA.correct`); it is applied before the next reservation."""
        with self._lock:
            entry = self._pending.setdefault(key, [0.0, NO_FLOOR])
            entry[0] += delta
            entry[1] = max(entry[1], floor)

    # Closing differs by mode on purpose (an asyncio client is closed on its own loop), so it is hand-written.

    def close(self) -> None:
        """Close the sync client; every live loop closes its asyncio client. A later reservation makes new ones."""
        self._close_sync()
        self._async_scripts.close(_aclose_client)

    async def aclose(self) -> None:
        """Close the running loop's asyncio client (the other live loops close theirs), then the sync client."""
        await self._async_scripts.aclose(_aclose_client)
        self._close_sync()

    def _close_sync(self) -> None:
        client, self._sync_client, self._sync = self._sync_client, None, None
        if client is not None:
            client.close()


async def _aclose_client(made: tuple[Any, Any]) -> None:
    await made[0].aclose()


def _reservation(reply: Any) -> Reservation:
    granted, wait = reply
    return Reservation(bool(int(granted)), max(0.0, float(wait)))


def duration_seconds(text: str) -> float | None:
    """Seconds in a Go-style duration as providers send in ``x-ratelimit-reset-*`` (``"20ms"``, ``"1.5s"``,
    ``"6m0s"``, ``"1h2m"``), or a bare number of seconds; ``None`` if it is neither."""
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    total = 0.0
    number = ""
    index = 0
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    while index < len(text):
        char = text[index]
        if char.isdigit() or char == ".":
            number += char
            index += 1
            continue
        unit = "ms" if text.startswith("ms", index) else char
        if unit not in units or not number:
            return None
        try:
            total += float(number) * units[unit]
        except ValueError:
            return None
        number = ""
        index += len(unit)
    return None if number or math.isnan(total) else total


# The calls to Redis, written once (async) and generated (sync): imported last, as they use this module's names
# (``_reservation``) at import time.
from . import _gcra_async, _gcra_sync  # noqa: E402
