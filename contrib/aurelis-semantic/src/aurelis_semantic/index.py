"""The vector index: one matrix of embeddings per scope, a global entry and byte bound, TTL.

Entries only ever match within their scope (tenant, model, parameters, system prompt: see
:mod:`aurelis_semantic.plugin`), so a scope's matrix is all that a lookup scans. A conversation of ``t`` fuzzy
turns is stored as ``t`` vectors, and every entry of a scope has the same ``t`` (the turn layout is part of
the scope). A query's score against an entry is the *lowest* cosine similarity over its turns: every turn must
be a paraphrase of the stored one, not just the conversation on average. Each entry also carries its turns'
word analyses (:mod:`aurelis_semantic.guards`), so a caller can veto the best candidate: a vetoed best match
is a miss, never a reason to serve the next best (that one is further from the question still).

Memory: an entry costs its vectors (``4 * dim`` bytes a turn: 1,536 for all-MiniLM-L6-v2), its answer (the
body and headers, often shared with an exact tier that holds the same object) and about
:data:`ENTRY_OVERHEAD` bytes of Python objects (the word analyses, the bookkeeping). :func:`entry_bytes` adds
these up; ``max_bytes`` bounds their sum, evicting the least recently used entries first.
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

__all__ = ["ENTRY_OVERHEAD", "SemanticIndex", "entry_bytes"]

Vectors = npt.NDArray[np.float32]

#: Python objects per entry besides its vectors and answer: the word analyses (tuples, frozensets, strings),
#: the index's records and the matrix's spare rows. tracemalloc measured 3.8 KB for a 15-word question with
#: all-MiniLM-L6-v2's 1,536-byte vector counted apart; rounded up, as longer questions cost more.
ENTRY_OVERHEAD = 4096


def entry_bytes(vectors: Vectors, entry: CacheEntry) -> int:
    """What an entry of the index holds in memory, counted as :data:`ENTRY_OVERHEAD` plus its parts."""
    return ENTRY_OVERHEAD + vectors.nbytes + entry.length + sum(len(k) + len(v) for k, v in entry.headers)


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
    """Entries grouped by scope, at most ``max_entries`` and ``max_bytes`` (:func:`entry_bytes`) in all, least
    recently used evicted first."""

    def __init__(self, max_entries: int, max_bytes: int | None = None) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        #: What the entries held add up to (:func:`entry_bytes`).
        self.bytes = 0
        self._scopes: dict[str, _Scope] = {}
        # entry id -> (scope, entry, the caller's data for its veto, its bytes), least recently used first.
        self._entries: OrderedDict[int, tuple[str, CacheEntry, Any, int]] = OrderedDict()
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
        """The best live entry of ``scope`` scoring at least ``threshold`` against ``query``, and its score; or
        ``None`` if there is none or ``accept`` (given the data stored with it) vetoes it."""
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
                    _, entry, data, _ = self._entries[entry_id]
                    if entry.expired(now, default_ttl):
                        expired.append(entry_id)
                        continue
                    if accept is not None and not accept(data):
                        return None
                    self._entries.move_to_end(entry_id)
                    return entry, float(scores[row])
                return None
            finally:
                for entry_id in expired:  # after the loop: removing swaps rows that ``rows`` points at
                    self._remove(entry_id)

    def add(self, scope: str, vectors: Vectors, entry: CacheEntry, data: Any = None) -> None:
        size = entry_bytes(vectors, entry)
        if self.max_bytes is not None and size > self.max_bytes:
            return  # it could only be held by emptying the index, and still not fit
        with self._lock:
            while len(self._entries) >= self.max_entries or (
                self.max_bytes is not None and self.bytes + size > self.max_bytes
            ):
                self._remove(next(iter(self._entries)))
            found = self._scopes.get(scope)
            if found is None:
                found = self._scopes[scope] = _Scope(*vectors.shape)
            entry_id = next(self._ids)
            found.append(entry_id, vectors)
            self._entries[entry_id] = (scope, entry, data, size)
            self.bytes += size

    def clear(self) -> None:
        with self._lock:
            self._scopes.clear()
            self._entries.clear()
            self.bytes = 0

    def _remove(self, entry_id: int) -> None:
        scope, _, _, size = self._entries.pop(entry_id)
        self.bytes -= size
        found = self._scopes[scope]
        found.remove(entry_id)
        if found.size == 0:
            del self._scopes[scope]
