"""aurelis-semantic: a semantic cache tier for Aurelis, enabled as ``plugins = [..., "semantic"]``."""

from .embedders import BACKENDS, Embedder, HashingEmbedder, MiniLMEmbedder, load_embedder
from .index import SemanticIndex
from .plugin import DEFAULT_THRESHOLD, PRESETS, SemanticCache, SemanticConfig

__all__ = [
    "BACKENDS",
    "DEFAULT_THRESHOLD",
    "PRESETS",
    "Embedder",
    "HashingEmbedder",
    "MiniLMEmbedder",
    "SemanticCache",
    "SemanticConfig",
    "SemanticIndex",
    "load_embedder",
]
