"""RouterOptions: the tuning knobs of both routers."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True, slots=True)
class RouterOptions:
    """Tuning knobs; the defaults suit a web service making LLM calls."""

    default_model: str | None = None  # used when modelroute was never reachable
    default_fallbacks: tuple[str, ...] = ()
    cache_size: int = 1024  # decisions cached for their cache_ttl (0: never cache)
    last_known_size: int = 1024  # fail-safe answers kept without expiry
    resolve_timeout: float = 1.0  # an LLM call must not wait long for the control plane
    report_batch_size: int = 100
    report_interval: float = 1.0  # seconds a report may wait for its batch
    report_timeout: float = 5.0
    max_pending_reports: int = 100_000
    close_timeout: float = 10.0  # close() returns within this, delivered or not
    watch: bool = True  # WatchConfig invalidation (off: TTL only)
