"""The router plugins: each picks the endpoint for every attempt; exactly one may be enabled.

- ``round_robin``: weighted round robin (earliest deadline first), no feedback.
- ``least_connections``: power of two choices on in-flight requests.
- ``weighted_response_time``: weights from decayed latency and success rate, rebuilt every second.
- ``load_based``: power of two choices on in-flight tokens and the upstream's ``x-ratelimit-*`` headroom.
- ``ai_optimized``: Thompson-sampled expected cost inside power of two choices.

:mod:`._base` holds what they share (candidates, in-flight counts, the outcome and latency signals).
"""
