"""The ``breaker`` plugin's circuits, shared by every replica through one Redis (``share = true``).

What is shared: which endpoints are open, until when, after how many trips; and a *probe lease* per endpoint, so
that when an open time is over one replica of the whole fleet sends the half-open probes, not each replica its
own. What stays in each process: the sliding window and the consecutive failures that decide a trip (a replica
trips on what it saw), and the breaker's transitions, log lines and counters.

In Redis, under ``key_prefix`` (a hash tag on Cluster, ``{aurelis:breaker:}``, so every key lives in one slot and
one script touches them all):

- ``<prefix>circuits``: a hash, one field per open endpoint, ``"<until ms> <trips>"`` on Redis's clock
  (``TIME``), so replicas with different clocks agree; a close deletes the field;
- ``<prefix>probe:<endpoint>``: the probe lease, holding its owner's id, expiring by itself (``PX``) if its
  owner dies; a replica renews it while its probes are out, and releases it with their outcome.

How a replica learns: not by asking Redis on a request's path. A background thread runs one script per
``sync_interval`` (and at once when this replica opened or closed a circuit, or wants the lease): it sends the
replica's own transitions, asks for the leases it wants, and reads every open circuit back. So an endpoint that
opens anywhere is skipped everywhere within ``sync_interval`` plus a round trip or two (polling was chosen over
pub/sub: one connection, the same code on a single node, Sentinel and Cluster, and nothing to resubscribe after
a failover). A request only ever reads this process's memory.

When Redis fails (``redis_timeout``, no retries) the thread leaves it alone for ``redis_cooloff`` seconds
(:class:`~aurelis_plugins._redis_client.Cooloff`) and the breakers are this process's own meanwhile: a replica
probes an endpoint whose open time is over without waiting for a lease. Transitions made meanwhile are sent when
Redis answers again.
"""

from __future__ import annotations

import secrets
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from aurelis_core.plugin import RedisConnection

from ._redis_client import REDIS_ERRORS, Cooloff, make_client, one_slot_prefix

__all__ = ["LEASE_INTERVALS", "Change", "Fleet", "Remote"]

#: The probe lease lasts this many sync intervals (at least a second): long enough to be renewed while a probe is
#: out, short enough that the fleet does not wait long for a replica that died holding it.
LEASE_INTERVALS = 20

#: Transitions kept while Redis does not answer; older ones are dropped (the latest say what matters).
MAX_PENDING = 1000

# KEYS: the circuits hash, then one lease key per transition (released), then one per wanted lease.
# ARGV: owner, lease ms, n transitions, then (endpoint, "open"|"close", open ms, trips) per transition, then the
# endpoints whose lease is wanted (granted only while their open time is over; renewed if already held).
# Returns {now ms, the circuits hash as a flat list, a 0/1 per wanted lease}.
LUA_SYNC = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local owner, lease_ms, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local a = 4
for i = 1, n do
  local name = ARGV[a]
  if ARGV[a + 1] == 'open' then
    local untl, trips = now + tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
    local cur = redis.call('HGET', KEYS[1], name)
    if cur then
      local cu, ct = string.match(cur, '^(%d+) (%d+)$')
      if cu then
        untl, trips = math.max(untl, tonumber(cu)), math.max(trips, tonumber(ct))
      end
    end
    redis.call('HSET', KEYS[1], name, string.format('%.0f %.0f', untl, trips))
  else
    redis.call('HDEL', KEYS[1], name)
  end
  if redis.call('GET', KEYS[1 + i]) == owner then
    redis.call('DEL', KEYS[1 + i])
  end
  a = a + 4
end
local granted = {}
for j = 1, #KEYS - 1 - n do
  local key, cur = KEYS[1 + n + j], redis.call('HGET', KEYS[1], ARGV[a + j - 1])
  granted[j] = 0
  if cur and tonumber(string.match(cur, '^(%d+)')) <= now then
    if redis.call('SET', key, owner, 'NX', 'PX', lease_ms) or redis.call('GET', key) == owner then
      redis.call('PEXPIRE', key, lease_ms)
      granted[j] = 1
    end
  end
end
return {now, redis.call('HGETALL', KEYS[1]), granted}
"""


class Change(NamedTuple):
    """A circuit this replica opened (for ``open_for`` seconds, its ``trips``-th trip) or closed."""

    endpoint: str
    kind: str  # "open" or "close"
    open_for: float = 0.0
    trips: int = 0


class Remote(NamedTuple):
    """An endpoint open somewhere in the fleet: seconds left of its open time (0 or less: over, the fleet waits
    for a probe), and its trips."""

    left: float
    trips: int


class Fleet:
    """This replica's link to the fleet's circuits: the transitions to send, the latest view read back, and the
    thread that exchanges them (see the module docstring)."""

    def __init__(self, connection: RedisConnection, prefix: str, timeout: float, cooloff: float,
                 interval: float) -> None:
        self.connection = connection
        self.prefix = one_slot_prefix(connection, prefix)
        self.timeout = timeout
        #: Seconds between two reads of the fleet's circuits.
        self.interval = interval
        #: Seconds a probe lease lasts unless renewed.
        self.lease = max(1.0, LEASE_INTERVALS * interval)
        self.cooloff = Cooloff(cooloff)
        #: Who holds a lease: this replica's id, random per process and pipeline.
        self.owner = secrets.token_hex(8)
        #: The endpoints open in the fleet at the latest read (the breaker reads it for circuits it makes).
        self.remote: dict[str, Remote] = {}
        self._answered = False
        self._pending: deque[Change] = deque(maxlen=MAX_PENDING)
        self._client: Any = None
        self._script: Any = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._first_round = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def live(self) -> bool:
        """Whether the fleet's view is current: Redis answered, and has not failed since."""
        return self._answered and not self.cooloff.cooling_off

    def publish(self, change: Change) -> None:
        """Queue a circuit this replica opened or closed; the thread sends it at once."""
        self._pending.append(change)
        self._wake.set()

    def wake(self) -> None:
        """Run a round now (a lease is wanted)."""
        self._wake.set()

    # --- the thread --------------------------------------------------------------------------------------------

    def start(self, round_: Callable[[], None]) -> None:
        """Run ``round_`` every ``interval`` seconds (and when woken) in a daemon thread, once started."""
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, args=(round_,), name="aurelis-breaker-fleet",
                                            daemon=True)
            self._thread.start()

    def wait_first_round(self, timeout: float) -> bool:
        """Wait until the first round has ended (answered or failed), at most ``timeout`` seconds."""
        return self._first_round.wait(timeout)

    def _run(self, round_: Callable[[], None]) -> None:
        while not self._stop.is_set():
            if self.cooloff.may_ask():
                round_()
            self._first_round.set()
            self._wake.wait(self.interval)
            self._wake.clear()

    def close(self) -> None:
        """Stop the thread (after its round in progress, at most a timeout or two) and close the client."""
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.interval + 4 * self.timeout)
        client, self._client, self._script = self._client, None, None
        if client is not None:
            client.close()

    # --- the exchange ------------------------------------------------------------------------------------------

    def exchange(self, wanted: Sequence[str]) -> set[str]:
        """Send the queued transitions, ask for the leases of ``wanted``, read the fleet's circuits into
        :attr:`remote`; returns the endpoints whose lease this replica holds now. Raises one of
        :data:`~aurelis_plugins._redis_client.REDIS_ERRORS` if Redis fails (the transitions are kept for the next
        round, and the cool-off starts)."""
        sent = [self._pending.popleft() for _ in range(len(self._pending))]
        prefix = self.prefix
        keys = [prefix + "circuits", *(prefix + "probe:" + t.endpoint for t in sent),
                *(prefix + "probe:" + name for name in wanted)]
        args: list[Any] = [self.owner, int(self.lease * 1000), len(sent)]
        for t in sent:
            args += [t.endpoint, t.kind, int(t.open_for * 1000), t.trips]
        args += wanted
        try:
            if self._script is None:  # inside: building a Cluster client already talks to the cluster
                self._client = make_client(self.connection, False, socket_timeout=self.timeout,
                                           connect_timeout=self.timeout)
                self._script = self._client.register_script(LUA_SYNC)
            now, flat, granted = self._script(keys=keys, args=args)
        except REDIS_ERRORS:
            self._pending.extendleft(reversed(sent))
            self.cooloff.failed()
            raise
        self.cooloff.answered()
        self._answered = True
        remote = {}
        for index in range(0, len(flat), 2):
            until, _, trips = flat[index + 1].partition(b" ")
            remote[flat[index].decode()] = Remote((int(until) - int(now)) / 1000, int(trips))
        self.remote = remote
        return {name for name, ok in zip(wanted, granted, strict=True) if ok}
