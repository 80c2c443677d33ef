"""Fleet-wide single-flight for the ``redis`` tier: one replica calls the upstream for a prompt new to the fleet.

Local coalescing (``aurelis_core._coalesce``) makes identical requests in one process share one upstream call;
replicas behind a load balancer still each make their own. With ``[redis] fleet_flight = {enabled = true}`` the
tier's lookup of a coalescable request runs one script instead of a ``GET``:

- the entry is there: a hit, as before;
- else the script takes the key's **lease** (``SET NX PX`` with a random token): this replica **leads**, the
  request goes upstream (and other local requests for the key join its local flight). A thread renews the
  lease every third of ``lease`` seconds while the call runs. When the answer is stored, the write-behind batch
  that writes the entry also drops the lease (if the token still matches);
- else another replica leads: the request **follows**. It subscribes to the lease's channel (the leader's
  release publishes there) and looks again (the same script) when told, or after 2 ms, 4 ms, ... up to ``poll``
  seconds apart, until the entry is there (a hit from this tier), the lease is gone (the leader died: the lease
  expired unrenewed, and the first follower to look takes it over), the leader gave up, or ``wait`` seconds
  passed (then it goes upstream on its own; a request is never failed by waiting). On Cluster followers only
  look (a classic channel's messages go to every node).

A leader that ends without storing (an error status or exception, an answer too large or not cacheable, the
caller gone) marks the lease *given up* for a second, so its followers go upstream at once instead of electing
a new leader one after another: errors are never shared across processes.

The lease key is ``{<entry key>}:lease``: its hash tag is the entry's whole key, so on Cluster it lives in the
entry's slot and one script reads both. (A ``prefix`` with a hash tag of its own keeps it: the lease key is then
the entry key plus ``:lease``.) Every Redis failure is the tier's: counted against its breaker, and the request
goes upstream as it would without this option.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import attrs

from aurelis_core.plugin import component_logger, log_fault, positive

__all__ = [
    "FIRST_PAUSE",
    "FOLLOW",
    "FOUND",
    "GAVE_UP",
    "GAVE_UP_MS",
    "LEAD",
    "LUA_LOOK",
    "LUA_RELEASE",
    "LUA_RENEW",
    "FleetFlightConfig",
    "Leases",
    "LoopListener",
    "ThreadListener",
    "lease_key",
]

logger = component_logger("cache.redis")

#: Seconds a follower waits before its second look; each pause doubles, up to ``poll``.
FIRST_PAUSE = 0.002
#: Milliseconds a given-up lease stays marked, so followers that look within it go upstream at once.
GAVE_UP_MS = 1000
#: What a look answers (the first element of the script's reply).
FOLLOW, FOUND, LEAD, GAVE_UP = 0, 1, 2, 3

#: KEYS: entry, lease; ARGV: token, lease milliseconds. {FOUND, value} | {LEAD} | {GAVE_UP} | {FOLLOW}.
LUA_LOOK = """
local value = redis.call('GET', KEYS[1])
if value then return {1, value} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {2} end
if redis.call('GET', KEYS[2]) == '!' then return {3} end
return {0}
"""

#: KEYS: lease; ARGV: token, milliseconds to keep the given-up mark (0: the answer was stored, drop the lease).
#: Followers are told on the channel named like the lease key.
LUA_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '0' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], '!', 'PX', ARGV[2])
end
redis.call('PUBLISH', KEYS[1], ARGV[2])
return 1
"""

#: KEYS: lease; ARGV: token, lease milliseconds.
LUA_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
"""


@attrs.frozen
class FleetFlightConfig:
    """``fleet_flight = {enabled = true, wait = 30.0, lease = 5.0, poll = 0.05}``: see the module docstring."""

    #: Opt in: replicas sharing this Redis make one upstream call for a prompt new to all of them.
    enabled: bool = False
    #: Seconds a follower waits for the leader's answer before it calls the upstream itself.
    wait: float = attrs.field(default=30.0, validator=positive)
    #: Seconds a lease lives unrenewed: how long followers wait for a leader that died before one takes over.
    lease: float = attrs.field(default=5.0, validator=positive)
    #: Longest pause (seconds) between a follower's looks at Redis; the first is 2 ms, then each doubles.
    poll: float = attrs.field(default=0.05, validator=positive)

    @property
    def lease_ms(self) -> int:
        return max(1, int(self.lease * 1000))


def lease_key(entry_key: str) -> str:
    """The lease's key, in the entry's Cluster hash slot (see the module docstring)."""
    return entry_key + ":lease" if "{" in entry_key else "{" + entry_key + "}:lease"


class Leases:
    """The leases this process holds (lease key -> token), renewed by a daemon thread while there are any.

    ``renew(held)`` is the tier's renewal call (its sync client, one pipeline); a failure is logged once and
    left to the lease's expiry: followers then take over, which costs an upstream call, never a request.
    """

    def __init__(self, config: FleetFlightConfig, renew: Callable[[dict[str, str]], None]) -> None:
        self.config = config
        self._renew = renew
        self._held: dict[str, str] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._renew_failed_logged = False

    @staticmethod
    def new_token() -> str:
        return secrets.token_hex(8)

    def holds(self, key: str) -> bool:
        return key in self._held

    def took(self, key: str, token: str) -> None:
        with self._lock:
            self._held[key] = token
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name="aurelis-fleet-flight", daemon=True)
                self._thread.start()

    def drop(self, key: str) -> None:
        with self._lock:
            self._held.pop(key, None)

    def close(self) -> None:
        """Stop renewing (the process is closing its pipeline: its leases expire on their own)."""
        self._stop.set()
        with self._lock:
            self._held.clear()

    def _run(self) -> None:
        interval = self.config.lease / 3
        while not self._stop.wait(interval):
            with self._lock:
                held = dict(self._held)
                if not held:
                    self._thread = None
                    return
            try:
                self._renew(held)
            except Exception as exc:
                if not self._renew_failed_logged:
                    self._renew_failed_logged = True
                    log_fault(logger, logging.WARNING,
                              "fleet_flight could not renew its leases; followers may take over", error=exc)


# --- being told: pub/sub ---------------------------------------------------------------------------------------
# A follower that waits subscribes to its lease's channel (one pub/sub connection per client, shared by every key
# waited for), so the leader's release wakes it at once instead of at its next look. Looks go on all the same,
# ``poll`` apart at most: a dead leader publishes nothing (its lease expires), and a message published before the
# subscription was active is missed. The listener's reader runs while someone waits. Made per mode by hand, like
# the clients; the look loop that uses them is written once (``_redis_async.look``).

#: Seconds the reader waits for a message at a time (it stops when nobody waits).
READ_TIMEOUT = 0.05

#: A waiter's event: ``asyncio.Event`` or ``threading.Event``.
E = TypeVar("E")


class _Listener(Generic[E]):
    """What both listeners keep: their client's pub/sub connection, and who waits on which channel."""

    def __init__(self, client: Any) -> None:
        self._pubsub = client.pubsub()
        self._waiting: dict[str, set[E]] = {}

    def _forget(self, channel: str, event: E) -> bool:
        """Drop ``event``; true when nobody waits on ``channel`` any more (it is to be unsubscribed)."""
        waiting = self._waiting.get(channel)
        if waiting is None:
            return False
        waiting.discard(event)
        if waiting:
            return False
        del self._waiting[channel]
        return True


class LoopListener(_Listener[asyncio.Event]):
    """The pub/sub listener of one asyncio client: its reader is a task on the client's loop."""

    def __init__(self, client: Any) -> None:
        super().__init__(client)
        self._reader: asyncio.Task[None] | None = None

    async def watch(self, channel: str) -> asyncio.Event:
        """Subscribe to ``channel`` (if nobody here is already); the event set when a message comes."""
        event = asyncio.Event()
        waiting = self._waiting.setdefault(channel, set())
        waiting.add(event)
        if len(waiting) == 1:
            try:
                await self._pubsub.subscribe(channel)
            except BaseException:
                self._forget(channel, event)
                raise
        if self._reader is None or self._reader.done():
            self._reader = asyncio.ensure_future(self._read())
        return event

    async def unwatch(self, channel: str, event: asyncio.Event) -> None:
        if self._forget(channel, event):
            await self._pubsub.unsubscribe(channel)

    @staticmethod
    async def pause(event: asyncio.Event, seconds: float) -> bool:
        """Wait ``seconds``, or less if a message comes; whether one came."""
        try:
            await asyncio.wait_for(event.wait(), seconds)
        except TimeoutError:
            told = False
        else:
            told = True
        event.clear()
        return told

    async def _read(self) -> None:
        try:
            while self._waiting:
                message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=READ_TIMEOUT)
                if message is not None:
                    for event in self._waiting.get(message["channel"].decode(), ()):
                        event.set()
        except Exception as exc:  # the followers' looks carry on, and find out what is wrong
            log_fault(logger, logging.DEBUG, "fleet_flight stopped listening", error=exc)


class ThreadListener(_Listener[threading.Event]):
    """The pub/sub listener of the sync client: its reader is a daemon thread."""

    def __init__(self, client: Any) -> None:
        super().__init__(client)
        # Held to subscribe and unsubscribe (one command at a time on the connection) and to start the reader.
        self._lock = threading.Lock()
        self._reader: threading.Thread | None = None

    def watch(self, channel: str) -> threading.Event:
        event = threading.Event()
        with self._lock:
            waiting = self._waiting.setdefault(channel, set())
            waiting.add(event)
            if len(waiting) == 1:
                try:
                    self._pubsub.subscribe(channel)
                except BaseException:
                    self._forget(channel, event)
                    raise
            if self._reader is None:
                self._reader = threading.Thread(target=self._read, name="aurelis-fleet-flight-listener", daemon=True)
                self._reader.start()
        return event

    def unwatch(self, channel: str, event: threading.Event) -> None:
        with self._lock:
            if self._forget(channel, event):
                self._pubsub.unsubscribe(channel)

    @staticmethod
    def pause(event: threading.Event, seconds: float) -> bool:
        told = event.wait(seconds)
        event.clear()
        return told

    def _read(self) -> None:
        try:
            while True:
                with self._lock:
                    if not self._waiting:
                        self._reader = None
                        return
                message = self._pubsub.get_message(ignore_subscribe_messages=True, timeout=READ_TIMEOUT)
                if message is not None:
                    for event in list(self._waiting.get(message["channel"].decode(), ())):
                        event.set()
        except Exception as exc:
            with self._lock:
                self._reader = None
            log_fault(logger, logging.DEBUG, "fleet_flight stopped listening", error=exc)
