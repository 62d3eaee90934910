"""Which rollup rows and which raw rows answer a time window [since, until) exactly.

Whole UTC days inside the window come from the day rollups, whole hours at either end from
the hour rollups, and the minutes before the first whole hour (after the last) from the
raw rows: at most two hours of raw rows, whatever the window's length or the table's size.
An open end (None) is served from rollups entirely.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from modelroute.storage.rollups import DAY, HOUR


@dataclass(frozen=True)
class Window:
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


def plan(since: datetime | None, until: datetime | None) -> Window:
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
    low_day = _ceil(low_hour, DAY) if low_hour is not None else None
    high_day = _floor(high_hour, DAY) if high_hour is not None else None
    if low_day is not None and high_day is not None and low_day >= high_day:
        window.rollups.append((HOUR, low_hour, high_hour))
        return window
    if low_hour is not None and low_day is not None and low_hour < low_day:
        window.rollups.append((HOUR, low_hour, low_day))
    window.rollups.append((DAY, low_day, high_day))
    if high_day is not None and high_hour is not None and high_day < high_hour:
        window.rollups.append((HOUR, high_day, high_hour))
    return window
