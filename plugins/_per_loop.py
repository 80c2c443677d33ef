"""One object per live event loop: asyncio clients, sessions and connections belong to the loop that made them.

An application may run several loops at once (a thread each) or one after another (``asyncio.run`` per call).
Each loop keeps its own object here, so a switch of loop neither fails (a client used on another loop raises
"attached to a different loop") nor replaces another loop's object, left open. The objects of loops that have
closed are dropped when a new one is made: their sockets went with their loop. At close, the running loop's
object is awaited; the other live loops are handed theirs to close on their own threads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

__all__ = ["PerLoop", "running_loop"]

T = TypeVar("T")

#: What closes one object: a coroutine, run on the object's own loop.
Close = Callable[[T], Coroutine[Any, Any, Any]]


def running_loop() -> asyncio.AbstractEventLoop | None:
    """This thread's running event loop, or ``None`` (sync code)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class PerLoop(Generic[T]):
    """The objects of each event loop, by loop. ``get`` and ``put`` are for code running on a loop."""

    __slots__ = ("_made",)

    def __init__(self) -> None:
        self._made: dict[asyncio.AbstractEventLoop, T] = {}

    def get(self) -> T | None:
        """The running loop's object, or ``None``."""
        return self._made.get(asyncio.get_running_loop())

    def put(self, value: T) -> list[T]:
        """Make ``value`` the running loop's object; return the objects of closed loops, now dropped."""
        made = self._made
        dropped = [made.pop(loop) for loop in [loop for loop in made if loop.is_closed()]]
        made[asyncio.get_running_loop()] = value
        return dropped

    def discard(self, value: T) -> None:
        """Forget the running loop's object if it is ``value`` (one that failed to open: the next use retries)."""
        loop = asyncio.get_running_loop()
        if self._made.get(loop) is value:
            del self._made[loop]

    def values(self) -> list[T]:
        """Every loop's object."""
        return list(self._made.values())

    def take(self) -> dict[asyncio.AbstractEventLoop, T]:
        """Every loop's object, by loop; none is kept."""
        made, self._made = self._made, {}
        return made

    def close(self, close: Close[T]) -> None:
        """From sync code: every live loop closes its object on its own thread (without waiting for it)."""
        _close_on_their_loops(self.take(), close)

    async def aclose(self, close: Close[T]) -> None:
        """The running loop's object closed and awaited; the other live loops close theirs on their threads."""
        made = self.take()
        mine = made.pop(asyncio.get_running_loop(), None)
        _close_on_their_loops(made, close)
        if mine is not None:
            await close(mine)


def _close_on_their_loops(made: dict[asyncio.AbstractEventLoop, T], close: Close[T]) -> None:
    for loop, value in made.items():
        if loop.is_running():  # a closed loop's object went with it
            asyncio.run_coroutine_threadsafe(close(value), loop)
