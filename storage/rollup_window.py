"""Which rollup rows and which raw rows answer a time window [since, until) exactly.

Whole weeks inside the window come from the week rollups, whole days and hours at either
end from the day and hour rollups, and the minutes before the first whole hour (after the
last) from the raw rows: at most two hours of raw rows, whatever the window's length.
An open end (None) is served from rollups entirely.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from modelroute.storage.rollups import HOUR, PERIODS


@dataclass(frozen=True)
class Window:
    """Which rollup buckets and which raw-row ranges together cover a time window."""

    # (period_seconds, start, end): bucket_start in [start, end); None = unbounded.
    rollups: list[tuple[int, int | None, int | None]] = field(default_factory=list)
    raw: list[tuple[datetime, datetime]] = field(default_factory=list)


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _floor(seconds: int, period: int) -> int:
    return seconds - seconds % period


def _ceil(seconds: int, period: int) -> int:
    return -_floor(-seconds, period)


def _seconds_up(moment: datetime) -> int:
    whole = int(moment.timestamp() // 1)
    return whole + (1 if moment.microsecond else 0)


def _moment(seconds: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)


def _split(window: Window, levels: tuple[int, ...], low: int | None, high: int | None) -> None:
    """Cover [low, high) (multiples of levels[0], None = open) with the coarsest rows that
    fit: the middle from coarser levels, the ends from this one.
    """
    level, coarser = levels[0], levels[1:]
    if not coarser:
        window.rollups.append((level, low, high))
        return
    low_c = _ceil(low, coarser[0]) if low is not None else None
    high_c = _floor(high, coarser[0]) if high is not None else None
    if low_c is not None and high_c is not None and low_c >= high_c:
        window.rollups.append((level, low, high))
        return
    if low is not None and low_c is not None and low < low_c:
        window.rollups.append((level, low, low_c))
    _split(window, coarser, low_c, high_c)
    if high is not None and high_c is not None and high_c < high:
        window.rollups.append((level, high_c, high))


def plan(since: datetime | None, until: datetime | None, coarsest: int = PERIODS[-1]) -> Window:
    """Rollup ranges and raw ranges that together cover [since, until) exactly once, using
    periods up to `coarsest` (a day for results grouped by day).
    """
    since = _utc(since) if since is not None else None
    until = _utc(until) if until is not None else None
    if since is not None and until is not None and since >= until:
        return Window()
    # Whole hours [low_hour, high_hour) inside the window.
    low_hour = _ceil(_seconds_up(since), HOUR) if since is not None else None
    high_hour = _floor(int(until.timestamp() // 1), HOUR) if until is not None else None
    window = Window()
    if low_hour is not None and high_hour is not None and low_hour >= high_hour:
        assert since is not None and until is not None
        window.raw.append((since, until))
        return window
    if since is not None and low_hour is not None and since < _moment(low_hour):
        window.raw.append((since, _moment(low_hour)))
    if until is not None and high_hour is not None and _moment(high_hour) < until:
        window.raw.append((_moment(high_hour), until))
    _split(window, tuple(p for p in PERIODS if p <= coarsest), low_hour, high_hour)
    return window
