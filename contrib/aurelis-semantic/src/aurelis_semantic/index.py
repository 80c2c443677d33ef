"""The vector index: one matrix of embeddings per scope, a global entry bound, TTL.

Entries only ever match within their scope (tenant, model, parameters, system prompt: see
:mod:`aurelis_semantic.plugin`), so a scope's matrix is all that a lookup scans. A conversation of ``t`` fuzzy
turns is stored as ``t`` vectors, and every entry of a scope has the same ``t`` (the turn layout is part of
the scope). A query's score against an entry is the *lowest* cosine similarity over its turns: every turn must
be a paraphrase of the stored one, not just the conversation on average. Each entry also carries its turns'
word analyses (:mod:`aurelis_semantic.guards`), so a caller can veto a candidate and get the next best one.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from aurelis_core.plugin import CacheEntry

__all__ = ["SemanticIndex"]

Vectors = npt.NDArray[np.float32]


class _Scope:
    """A growable ``(capacity, turns, dim)`` matrix: appends are amortised O(1), removals swap in the last row."""

    __slots__ = ("ids", "row_of", "size", "vectors")

    def __init__(self, turns: int, dim: int) -> None:
        self.vectors: Vectors = np.empty((8, turns, dim), dtype=np.float32)
        self.ids: list[int] = []
        self.row_of: dict[int, int] = {}
        self.size = 0

    def append(self, entry_id: int, vectors: Vectors) -> None:
        if self.size == len(self.vectors):
            # Doubling keeps a scope of n entries at n log n copied rows in total, where re-stacking the
            # matrix on every insert would copy n^2.
            grown = np.empty((2 * self.size, *self.vectors.shape[1:]), dtype=np.float32)
            grown[: self.size] = self.vectors[: self.size]
            self.vectors = grown
        self.vectors[self.size] = vectors
        self.ids.append(entry_id)
        self.row_of[entry_id] = self.size
        self.size += 1

    def remove(self, entry_id: int) -> None:
        row = self.row_of.pop(entry_id)
        last = self.size - 1
        moved = self.ids.pop()
        if row != last:
            self.vectors[row] = self.vectors[last]
            self.ids[row] = moved
            self.row_of[moved] = row
        self.size = last

    def scores(self, query: Vectors) -> npt.NDArray[np.float32]:
        # (n, t, d) x (t, d) -> (n, t): one cosine per stored turn; the weakest turn decides.
        per_turn: npt.NDArray[np.float32] = np.einsum("ntd,td->nt", self.vectors[: self.size], query)
        weakest: npt.NDArray[np.float32] = per_turn.min(axis=1)  # numpy types a reduction over an axis as Any
        return weakest


class SemanticIndex:
    """Entries grouped by scope, at most ``max_entries`` in all, least recently used evicted first."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._scopes: dict[str, _Scope] = {}
        # entry id -> (scope, entry, the caller's data for its veto), in least-recently-used-first order.
        self._entries: OrderedDict[int, tuple[str, CacheEntry, Any]] = OrderedDict()
        self._ids = itertools.count()
        # Sync clients may share a pipeline across threads, and async lookups run on worker threads.
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def has_scope(self, scope: str) -> bool:
        return scope in self._scopes

    def search(
        self, scope: str, query: Vectors, threshold: float, now: float, default_ttl: float | None,
        accept: Callable[[Any], bool] | None = None,
    ) -> tuple[CacheEntry, float] | None:
        """The best entry of ``scope`` scoring at least ``threshold`` against ``query`` that ``accept`` (given
        the data stored with it) does not veto, and its score."""
        with self._lock:
            found = self._scopes.get(scope)
            if found is None:
                return None
            scores = found.scores(query)
            # Usually one candidate clears the threshold; sorting only those keeps a full scope cheap.
            rows = np.flatnonzero(scores >= threshold)
            expired = []
            try:
                for row in rows[np.argsort(-scores[rows], kind="stable")]:
                    entry_id = found.ids[int(row)]
                    _, entry, data = self._entries[entry_id]
                    if entry.expired(now, default_ttl):
                        expired.append(entry_id)
                        continue
                    if accept is not None and not accept(data):
                        continue
                    self._entries.move_to_end(entry_id)
                    return entry, float(scores[row])
                return None
            finally:
                for entry_id in expired:  # after the loop: removing swaps rows that ``rows`` points at
                    self._remove(entry_id)

    def add(self, scope: str, vectors: Vectors, entry: CacheEntry, data: Any = None) -> None:
        with self._lock:
            while len(self._entries) >= self.max_entries:
                self._remove(next(iter(self._entries)))
            found = self._scopes.get(scope)
            if found is None:
                found = self._scopes[scope] = _Scope(*vectors.shape)
            entry_id = next(self._ids)
            found.append(entry_id, vectors)
            self._entries[entry_id] = (scope, entry, data)

    def clear(self) -> None:
        with self._lock:
            self._scopes.clear()
            self._entries.clear()

    def _remove(self, entry_id: int) -> None:
        scope, _, _ = self._entries.pop(entry_id)
        found = self._scopes[scope]
        found.remove(entry_id)
        if found.size == 0:
            del self._scopes[scope]
