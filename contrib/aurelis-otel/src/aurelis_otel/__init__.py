"""aurelis-otel: OpenTelemetry spans for Aurelis requests, enabled as ``plugins = [..., "otel"]``."""

from .tracing import OtelConfig, OtelTracing

__all__ = ["OtelConfig", "OtelTracing"]
