"""``semantic``: a cache tier that answers a request with the stored answer to a paraphrase of it.

What is fuzzy, and what is exact
--------------------------------
Only the *text* of the ``user`` and ``assistant`` messages of a ``/chat/completions`` request is compared by
meaning. Everything else is hashed into an exact **scope**, and entries match only within their own scope:

- the tenant and the answer-scoping headers, as the pipeline defines them for every plugin
  (``pipeline.tenant``: a credential fingerprint or namespace; organization, project, API version...), so two
  API keys never share an answer;
- the upstream origin, path and query (credential parameters taken out), the model and every other body
  field (temperature, tools, response_format...);
- the system and developer prompts, tool results and non-text content, verbatim;
- the conversation's layout: how many messages, in which roles, which carry fuzzy text;
- the numbers written in the fuzzy text, in order: "population of Tokyo in 2010" and "... in 2020" are worded
  alike (an embedding scores them 0.90 apart) but never the same question.

Within a scope, a request matches a stored one when *each* of its fuzzy turns has a cosine similarity of at
least ``threshold`` with the stored turn (the weakest turn decides) and no guard of
:mod:`aurelis_semantic.guards` vetoes any turn pair: embeddings score a question and its opposite alike
("miles to kilometers" / "kilometers to miles", "ascending" / "descending", "charging" / "not charging"), so
negation, contrast, order, name and population checks on the words veto those. Near-misses -- the same
question about a different thing -- are the failure mode of semantic caches: the threshold is a named trade-off
(``preset``: strict, balanced, recall) that ``bench/evaluate.py`` measures, and no threshold makes them
impossible. A guard that vetoes the best match makes a miss: the next best is further from the question still.

A fuzzy answer stays fuzzy
--------------------------
A hit is handed over as a copy marked with its similarity (``CacheEntry.similarity``): the response says
``x-aurelis-cache-tier: semantic`` and ``x-aurelis-similarity: 0.931``, and the pipeline never writes such an
entry into any tier, so a near-miss served once is not the exact answer to the new question in the memory,
SQLite or Redis tier ever after. A request that says ``no-store`` is never stored here either, promoted or not.

Put this tier after the exact tiers (``plugins = ["normalize", "memory", "semantic"]``): an exact hit is
cheaper and exact.
"""

from __future__ import annotations

import hashlib
import importlib
import threading
import time
from collections.abc import Awaitable, Sequence
from typing import Any

import anyio.to_thread
import attrs
import cachetools
import msgspec
import numpy as np

from aurelis_core.plugin import (
    CacheEntry,
    Invalid,
    Pipeline,
    RequestContext,
    hookimpl,
    in_range,
    one_of,
    positive,
    positive_int,
)

from .batching import EmbeddingBatcher
from .embedders import BACKENDS, Embedder, Vectors, load_embedder
from .guards import Analysis, analyse, conflict, numbers
from .index import SemanticIndex

__all__ = ["DEFAULT_THRESHOLD", "PRESETS", "SemanticCache", "SemanticConfig"]

#: Named thresholds for all-MiniLM-L6-v2 with the guards on, read off the STS Benchmark's dev split and checked on its
#: held-out test split with bench/evaluate.py --sts-benchmark (figures in the README):
#: ``strict`` keeps false hits lowest, ``recall`` answers the most paraphrases, ``balanced`` is the default.
PRESETS = {"strict": 0.95, "balanced": 0.92, "recall": 0.88}
DEFAULT_THRESHOLD = PRESETS["balanced"]
#: Bumped whenever the scope's composition changes.
SCOPE_VERSION = "aurelis-semantic-4"
#: The scope material's encoding: sorted keys, and the body's numbers as they were parsed (``ctx.json`` holds
#: exact ``Decimal``s, which the standard library's json cannot write), so 0.5 and 0.50000000000000001 differ.
_MATERIAL = msgspec.json.Encoder(order="sorted", decimal_format="number")
FUZZY_ROLES = frozenset({"user", "assistant"})


def _backend(instance: Any, attribute: Any, value: Any) -> None:
    """A built-in backend's name, or ``"package.module:Factory"`` naming a callable that can be imported now
    (the plugin imports it when it is built: an import error is a config error, not a failure later)."""
    expected = f"one of {', '.join(BACKENDS)} or 'package.module:Factory'"
    if not isinstance(value, str):
        raise Invalid(attribute.name, expected, value)
    if value in BACKENDS:
        return
    module_name, sep, name = value.partition(":")
    if not sep or not module_name or not name:
        raise Invalid(attribute.name, expected, value)
    try:
        factory = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as exc:
        raise Invalid(attribute.name, expected, value, hint=f": cannot import it ({exc})") from None
    if not callable(factory):
        raise Invalid(attribute.name, expected, value, hint=": it is not callable")


@attrs.frozen
class SemanticConfig:
    #: A named trade-off between hits and false hits (:data:`PRESETS`): sets ``threshold`` unless it is given.
    preset: str = attrs.field(default="balanced", validator=one_of(PRESETS, "a preset"))
    #: Lowest cosine similarity (per fuzzy turn) that counts as the same question; ``None``: the preset's.
    threshold: float | None = attrs.field(default=None, validator=in_range(0, 1, lo_open=True))
    #: The embedding backend: ``"minilm"``, ``"hashing"`` or ``"package.module:Factory"``.
    backend: str = attrs.field(default="minilm", validator=_backend)
    #: Seconds an entry is served (a request's own ``ttl`` control overrides it); ``None``: until evicted.
    ttl: float | None = attrs.field(default=3600.0, validator=positive)
    #: Entries held in all scopes together; the least recently used goes first.
    max_entries: int = attrs.field(default=10_000, validator=positive_int)
    #: Bytes the entries may hold in all (vectors, answers, analyses: see ``index.entry_bytes``); the least
    #: recently used go first. ``None``: only ``max_entries`` bounds the index.
    max_bytes: int | None = attrs.field(default=128 * 1024 * 1024, validator=positive_int)
    #: Threads the embedding library may use (torch's intra-op pool, process-wide): one keeps an embedding
    #: from contending with the application and the other requests on a small machine.
    threads: int = attrs.field(default=1, validator=positive_int)
    #: Veto matches whose words say the opposite (negation, antonym, reversed order, another name). English
    #: word lists: for other languages they rarely fire, and ``false`` leaves only the threshold.
    guards: bool = True

    @property
    def similarity(self) -> float:
        """The threshold in force: ``threshold`` if given, else the preset's."""
        return PRESETS[self.preset] if self.threshold is None else self.threshold


class SemanticCache:
    """The ``semantic`` plugin. See the module docstring for what may match what."""

    name = "semantic"
    Config = SemanticConfig

    def __init__(self, config: SemanticConfig, pipeline: Pipeline) -> None:
        self.config = config
        self.pipeline = pipeline
        self.embedder: Embedder = load_embedder(config.backend, config.threads)
        self.index = SemanticIndex(config.max_entries, config.max_bytes)
        self.batcher = EmbeddingBatcher(self.embedder.embed)
        # A conversation resends its earlier turns with every request: remember their vectors rather than
        # embed them again (a dict hit costs ~100 ns, a MiniLM pass ~10 ms).
        self._vectors: cachetools.LRUCache[str, Vectors] = cachetools.LRUCache(maxsize=4096)
        self._vectors_lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.index)

    # --- hooks ----------------------------------------------------------------------------------------------

    @hookimpl
    def aurelis_start(self, pipeline: Pipeline) -> Awaitable[None] | None:
        # Loading a model takes seconds: do it before the first request, and off the event loop.
        if pipeline.is_async:
            return anyio.to_thread.run_sync(self.embedder.load)
        self.embedder.load()
        return None

    @hookimpl
    def aurelis_cache_get(self, ctx: RequestContext) -> CacheEntry | Awaitable[CacheEntry | None] | None:
        split = self.split(ctx)
        if split is None:
            return None
        scope, texts = split
        ctx.state["semantic"] = {"scope": scope, "texts": texts}
        if not self.index.has_scope(scope):
            return None  # nothing to compare with: skip the embedding until (and unless) the answer is stored
        if ctx.is_async:
            return anyio.to_thread.run_sync(self._lookup, ctx)
        return self._lookup(ctx)

    @hookimpl
    def aurelis_cache_set(self, ctx: RequestContext, entry: CacheEntry, promote: bool) -> Awaitable[None] | None:
        # The pipeline stores no fresh answer under no-store, but it promotes a lower tier's hit regardless.
        if ctx.controls.no_store:
            return None
        state = ctx.state.get("semantic")
        if state is None:
            split = self.split(ctx)
            if split is None:
                return None
            state = ctx.state["semantic"] = {"scope": split[0], "texts": split[1]}
        if "vectors" in state:
            self.index.add(state["scope"], state["vectors"], entry, state.get("analyses"))
            return None
        if ctx.is_async:
            return anyio.to_thread.run_sync(self._store, state, entry)
        self._store(state, entry)
        return None

    # --- the work -------------------------------------------------------------------------------------------

    def split(self, ctx: RequestContext) -> tuple[str, list[str]] | None:
        """``(scope, fuzzy texts)`` of a chat request, or ``None`` if this tier does not apply to it."""
        body = ctx.json
        request = ctx.original
        url = request.url
        if not isinstance(body, dict) or not url.path.rstrip("/").endswith("/chat/completions"):
            return None
        messages = body.get("messages")
        if not isinstance(messages, list):
            return None
        texts: list[str] = []
        layout: list[Any] = []
        for message in messages:
            if isinstance(message, dict) and message.get("role") in FUZZY_ROLES and isinstance(
                message.get("content"), str
            ):
                text = message["content"]
                texts.append(text)
                # Tagged, so a fuzzy turn can never look like an exact message with the same fields.
                rest = {k: v for k, v in message.items() if k != "content"}
                layout.append(["fuzzy", rest, numbers(text)])
            else:
                layout.append(["exact", message])
        if not texts:
            return None
        tenant = self.pipeline.tenant
        identity = tenant.identify(request, ctx.controls.namespace)
        query, _ = tenant.split_query(url.query.decode("ascii"))  # no credential ever enters the material
        material = _MATERIAL.encode(
            [SCOPE_VERSION, request.method, url.scheme, url.netloc.decode("ascii"), url.path, query,
             identity.tenant, identity.scope, {**body, "messages": layout}]
        )
        return hashlib.blake2b(material, digest_size=20).hexdigest(), texts

    def embed(self, texts: Sequence[str]) -> Vectors:
        """One unit vector per text, from the backend or from the vectors of recently seen texts."""
        with self._vectors_lock:
            known = [self._vectors.get(t) for t in texts]
        missing = [t for t, v in zip(texts, known, strict=True) if v is None]
        fresh: dict[str, Vectors] = {}
        if missing:
            fresh = dict(zip(missing, self.batcher(missing), strict=True))
            with self._vectors_lock:
                self._vectors.update(fresh)
        return np.stack([v if v is not None else fresh[t] for t, v in zip(texts, known, strict=True)])

    def _lookup(self, ctx: RequestContext) -> CacheEntry | None:
        state = ctx.state["semantic"]
        state["vectors"] = vectors = self.embed(state["texts"])
        accept = None
        if self.config.guards:
            state["analyses"] = query = [analyse(t) for t in state["texts"]]
            # Why candidates were turned down, for observers (``ctx.state["semantic"]["vetoed"]``).
            vetoed: list[str] = state.setdefault("vetoed", [])

            def accept(stored: list[Analysis]) -> bool:
                for old, new in zip(stored, query, strict=True):
                    reason = conflict(old, new)
                    if reason is not None:
                        vetoed.append(reason)
                        return False
                return True

        found = self.index.search(
            state["scope"], vectors, self.config.similarity, time.time(), self.config.ttl, accept
        )
        if found is None:
            return None
        entry, state["score"] = found
        # A copy marked fuzzy: the response reports the similarity, and no tier will store it (the entry
        # itself may be the one an exact tier holds for the request that stored it).
        return CacheEntry(
            entry.status_code, entry.headers, entry.body if entry.chunks is None else b"", chunks=entry.chunks,
            created=entry.created, ttl=entry.ttl, hits=entry.hits, similarity=round(state["score"], 3),
        )

    def _store(self, state: dict[str, Any], entry: CacheEntry) -> None:
        state["vectors"] = vectors = self.embed(state["texts"])
        if self.config.guards:
            state["analyses"] = [analyse(t) for t in state["texts"]]
        self.index.add(state["scope"], vectors, entry, state.get("analyses"))

    def clear(self) -> None:
        self.index.clear()
