"""Quota bookkeeping values: metrics and their windows, one replica's counts, states.

The algorithm that uses them is described in quotas.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from enum import Enum
from typing import Final

from ..core.snapshot import ProviderSpec

PUBLISH_INTERVAL: Final = 1.0  # seconds between routine publications
LIVENESS: Final = 5.0  # a replica that has not published for this long is not counted in N
DEFAULT_WARN_RATIO: Final = 0.8

# Metric → (config field, window). Minute metrics reset every UTC minute, day metrics at
# UTC midnight.
REQUESTS_PER_MINUTE: Final = "requests_per_minute"
TOKENS_PER_MINUTE: Final = "tokens_per_minute"
REQUESTS_PER_DAY: Final = "requests_per_day"
TOKENS_PER_DAY: Final = "tokens_per_day"
SPEND_PER_DAY: Final = "usd_per_day"  # subject: context
PROVIDER_LIMITS: Final = (REQUESTS_PER_MINUTE, TOKENS_PER_MINUTE, REQUESTS_PER_DAY, TOKENS_PER_DAY)
REQUEST_LIMITS: Final = (REQUESTS_PER_MINUTE, REQUESTS_PER_DAY)
MINUTE_METRICS: Final = frozenset({REQUESTS_PER_MINUTE, TOKENS_PER_MINUTE})


def minute_window(now: datetime) -> int:
    return int(now.timestamp() // 60)


def day_window(now: datetime) -> int:
    return now.date().toordinal()


def window_end(metric: str, now: datetime) -> datetime:
    if metric in MINUTE_METRICS:
        return datetime.fromtimestamp((minute_window(now) + 1) * 60, UTC)
    tomorrow = date.fromordinal(day_window(now) + 1)
    return datetime(tomorrow.year, tomorrow.month, tomorrow.day, tzinfo=UTC)


def provider_limit(spec: ProviderSpec, metric: str) -> int:
    return int(getattr(spec, metric))


# id(spec) → (spec, metrics, limits): specs are immutable and a config holds a handful,
# so each is computed once; the identity check makes a reused id a miss, not a wrong hit.
_LIMITS: dict[int, tuple[ProviderSpec, tuple[str, ...], tuple[tuple[str, int], ...]]] = {}


def limits_set(spec: ProviderSpec, metrics: tuple[str, ...]) -> tuple[tuple[str, int], ...]:
    """(metric, limit) for the `metrics` this provider limits (non-zero), in order. Every
    decision asks, so this is one dict lookup (hashing the spec's fields would cost more)."""
    key = id(spec) ^ id(metrics)
    hit = _LIMITS.get(key)
    if hit is not None and hit[0] is spec and hit[1] is metrics:
        return hit[2]
    limits = tuple((m, limit) for m in metrics if (limit := provider_limit(spec, m)))
    if len(_LIMITS) >= 1024:
        _LIMITS.clear()
    _LIMITS[key] = (spec, metrics, limits)
    return limits


@dataclass
class Counts:
    """One replica's counts for one pair of windows: metric → subject → amount."""

    minute: int
    day: int
    values: dict[str, dict[str, float]] = field(default_factory=dict)
    heartbeat: float = 0.0  # epoch seconds of the publication (peers only)
    # Request limits: the most this replica may have admitted before it publishes again.
    reserved: dict[str, dict[str, float]] = field(default_factory=dict)

    def _current(self, metric: str, minute: int, day: int) -> bool:
        window = self.minute if metric in MINUTE_METRICS else self.day
        return window == (minute if metric in MINUTE_METRICS else day)

    def get(self, metric: str, subject: str, minute: int, day: int) -> float:
        if not self._current(metric, minute, day):
            return 0.0  # counts from an earlier window no longer apply
        return self.values.get(metric, {}).get(subject, 0.0)

    def get_reserved(self, metric: str, subject: str, minute: int, day: int) -> float:
        if not self._current(metric, minute, day):
            return 0.0
        return max(
            self.reserved.get(metric, {}).get(subject, 0.0),
            self.values.get(metric, {}).get(subject, 0.0),
        )

    def reservation(self, metric: str, subject: str, minute: int, day: int) -> float:
        """The reservation published for the current window (0 for an earlier one)."""
        if not self._current(metric, minute, day):
            return 0.0
        return self.reserved.get(metric, {}).get(subject, 0.0)

    def add(self, metric: str, subject: str, amount: float) -> None:
        by_subject = self.values.setdefault(metric, {})
        by_subject[subject] = by_subject.get(subject, 0.0) + amount

    def roll(self, minute: int, day: int) -> None:
        """Drop counts of windows that ended."""
        if minute != self.minute:
            self.minute = minute
            for metric in MINUTE_METRICS:
                self.values.pop(metric, None)
                self.reserved.pop(metric, None)
        if day != self.day:
            self.day = day
            for table in (self.values, self.reserved):
                for metric in list(table):
                    if metric not in MINUTE_METRICS:
                        table.pop(metric)

    def copy(self) -> Counts:
        return Counts(
            self.minute,
            self.day,
            {m: dict(s) for m, s in self.values.items()},
            self.heartbeat,
            {m: dict(s) for m, s in self.reserved.items()},
        )

    def to_json(self, replica_id: str, now: datetime) -> bytes:
        return json.dumps(
            {
                "replica": replica_id,
                "heartbeat": now.timestamp(),
                "minute": self.minute,
                "day": self.day,
                "counts": self.values,
                "reserved": self.reserved,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Counts:
        data = json.loads(raw)
        values = {
            str(metric): {str(s): float(v) for s, v in by_subject.items()}
            for metric, by_subject in data["counts"].items()
        }
        reserved = {
            str(metric): {str(s): float(v) for s, v in by_subject.items()}
            for metric, by_subject in data.get("reserved", {}).items()
        }
        return cls(
            int(data["minute"]), int(data["day"]), values, float(data["heartbeat"]), reserved
        )


class Admission(Enum):
    ADMITTED = "admitted"
    SYNC_NEEDED = "sync_needed"  # this replica's share is used: publish, then ask again
    EXCEEDED = "exceeded"


@dataclass(frozen=True, slots=True)
class QuotaAlert:
    """A threshold crossing; `dedup_key` is the same on every replica for one condition
    and window, so the alert sink can send it once."""

    kind: str  # quota_warning, quota_exhausted, budget_warning, budget_exceeded
    severity: str  # warning / critical
    subject: str
    message: str
    dedup_key: str


@dataclass(frozen=True, slots=True)
class LimitState:
    subject: str  # provider, or context for budgets
    metric: str
    limit: float
    used: float
    reset_at: datetime

    @property
    def remaining(self) -> float:
        return max(0.0, self.limit - self.used)

    @property
    def exceeded(self) -> bool:
        return self.used >= self.limit
