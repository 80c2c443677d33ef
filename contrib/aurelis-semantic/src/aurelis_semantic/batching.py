"""Batching: the texts of requests that arrive while an embedding runs are embedded together, in one call.

A model embeds a batch of texts for little more than the price of one (the weights are read once, the matrix
products are wider), so under concurrent load a batch beats a queue of single calls, and on a small machine it
keeps the number of busy threads at one. There is no batching thread and no timer: the first caller embeds
what is pending, callers arriving meanwhile wait, and when it is done one of them embeds everything that
arrived in the meantime. A lone request never waits for company.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future

import numpy as np
import numpy.typing as npt

__all__ = ["EmbeddingBatcher"]

Vectors = npt.NDArray[np.float32]


class EmbeddingBatcher:
    """Calls ``embed`` for the texts of concurrent callers together, one call at a time. Thread-safe."""

    def __init__(self, embed: Callable[[Sequence[str]], Vectors]) -> None:
        self._embed = embed
        self._cond = threading.Condition()
        self._pending: list[tuple[Sequence[str], Future[Vectors]]] = []
        self._running = False
        #: How many calls to ``embed`` were made, and for how many callers in all.
        self.calls = 0
        self.callers = 0

    def __call__(self, texts: Sequence[str]) -> Vectors:
        """One unit vector per text of ``texts``, embedded alone or with those of concurrent callers."""
        future: Future[Vectors] = Future()
        with self._cond:
            self._pending.append((texts, future))
            while self._running and not future.done():
                self._cond.wait()
            if future.done():
                return future.result()
            # Not taken by the batch that just ended: this caller embeds everything pending, its own included.
            self._running = True
            batch, self._pending = self._pending, []
        try:
            self._run(batch)
        finally:
            with self._cond:
                self._running = False
                self._cond.notify_all()
        return future.result()

    def _run(self, batch: list[tuple[Sequence[str], Future[Vectors]]]) -> None:
        unique = list(dict.fromkeys(text for texts, _ in batch for text in texts))
        try:
            vectors = self._embed(unique)
        except BaseException as exc:  # every waiting caller gets the backend's error, as if it had called it
            for _, future in batch:
                future.set_exception(exc)
            return
        self.calls += 1
        self.callers += len(batch)
        row = {text: i for i, text in enumerate(unique)}
        for texts, future in batch:
            future.set_result(vectors[[row[text] for text in texts]])
