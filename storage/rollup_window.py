"""Which rollup rows and which raw rows answer a time window [since, until) exactly.

Whole weeks inside the window come from the week rollups, whole days and hours at either
end from the day and hour rollups, and the minutes before the first whole hour (after the
last) from the raw rows. An open end (None) is served from rollups entirely.

An end may also be served by subtraction, whichever reads fewer rows: "the last 24 hours"
from 00:42 to 00:42 the next day take the first day's bucket minus its first hour, not 23
hour buckets; a window starting at 10:50 takes the hour 10:00-11:00 minus the raw rows of
10:00-10:50 only if that is cheaper than the raw rows of 10:50-11:00. Counts and histograms
subtract exactly (integers), float sums to rounding. So each end reads at most half of a
coarser bucket in finer rows: at most 30 minutes of raw rows, 12 hour buckets, 3 day
buckets. The plan is the cheapest cover by an estimate in which one rollup bucket of any
period costs 1 and ten minutes of raw rows cost 1 (at the densities measured in
bench/analysis.py an hour's keys x latency buckets are about as many rows as ten minutes
of raw rows, and cheaper to read).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final

from .rollups import HOUR, PERIODS

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO: Final = 1_000_000
#: Raw rows spanning this long cost about as much to read as one rollup bucket.
RAW_SPAN_PER_BUCKET: Final = 600 * _MICRO


@dataclass(frozen=True)
class Window:
    """Which rollup buckets and which raw-row ranges together cover a time window: the
    sum of `rollups` and `raw`, less the sum of `minus_rollups` and `minus_raw`.
    """

    # (period_seconds, start, end): bucket_start in [start, end); None = unbounded.
    rollups: list[tuple[int, int | None, int | None]] = field(default_factory=list)
    raw: list[tuple[datetime, datetime]] = field(default_factory=list)
    # Pieces to subtract: each lies inside a coarser bucket that `rollups` adds.
    minus_rollups: list[tuple[int, int, int]] = field(default_factory=list)
    minus_raw: list[tuple[datetime, datetime]] = field(default_factory=list)


# (level index, sign, start, end) in microseconds; level 0 is the raw rows.
_Piece = tuple[int, int, int | None, int | None]


def _micros(moment: datetime) -> int:
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return (moment - _EPOCH) // timedelta(microseconds=1)


def _moment(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


def _floor(value: int, period: int) -> int:
    return value - value % period


def _ceil(value: int, period: int) -> int:
    return -_floor(-value, period)


def _cost(levels: tuple[int, ...], index: int, start: int | None, end: int | None) -> float:
    if start is None or end is None:
        return 1.0  # an open range at the coarsest level: its few buckets
    return (end - start) / (RAW_SPAN_PER_BUCKET if index == 0 else levels[index])


def _cover(
    levels: tuple[int, ...], index: int, low: int | None, high: int | None
) -> tuple[float, list[_Piece]]:
    """The cheapest signed pieces at levels[index:] whose sum is [low, high) (bounds are
    multiples of levels[index]; None = open).
    """
    if low is not None and high is not None and low >= high:
        return 0.0, []
    if index == len(levels) - 1:
        return _cost(levels, index, low, high), [(index, 1, low, high)]
    best: tuple[float, list[_Piece]] | None = None
    if low is not None and high is not None:  # all of it at this level
        best = (_cost(levels, index, low, high), [(index, 1, low, high)])
    coarser = levels[index + 1]
    # Each end: round inward and add the rest at this level, or round outward and
    # subtract the overhang at this level (adding first: fewer subtractions on a tie).
    lows: list[tuple[int | None, list[_Piece]]] = [(None, [])]
    if low is not None:
        inward, outward = _ceil(low, coarser), _floor(low, coarser)
        lows = [(inward, [(index, 1, low, inward)] if low < inward else [])]
        if outward < low:
            lows.append((outward, [(index, -1, outward, low)]))
    highs: list[tuple[int | None, list[_Piece]]] = [(None, [])]
    if high is not None:
        inward, outward = _floor(high, coarser), _ceil(high, coarser)
        highs = [(inward, [(index, 1, inward, high)] if inward < high else [])]
        if high < outward:
            highs.append((outward, [(index, -1, high, outward)]))
    for low_c, low_pieces in lows:
        for high_c, high_pieces in highs:
            subtracts = any(sign < 0 for _, sign, _, _ in (*low_pieces, *high_pieces))
            if low_c is not None and high_c is not None:
                # A subtracted overhang must lie in a coarser bucket the middle adds.
                if low_c > high_c or (subtracts and low_c == high_c):
                    continue
            cost, middle = _cover(levels, index + 1, low_c, high_c)
            pieces = [*low_pieces, *high_pieces]
            cost += sum(_cost(levels, i, start, end) for i, _, start, end in pieces)
            if best is None or cost < best[0]:
                best = (cost, [*pieces, *middle])
    assert best is not None  # an open end always has the coarser option
    return best


def plan(since: datetime | None, until: datetime | None, coarsest: int = PERIODS[-1]) -> Window:
    """Rollup ranges and raw ranges that together cover [since, until) exactly once, using
    periods up to `coarsest` (a day for results grouped by day).
    """
    low = _micros(since) if since is not None else None
    high = _micros(until) if until is not None else None
    if low is not None and high is not None and low >= high:
        return Window()
    levels = (1, *(p * _MICRO for p in PERIODS if p <= coarsest))
    assert levels[1] == HOUR * _MICRO  # raw rows end where the hour rollups start
    window = Window()
    pieces = _cover(levels, 0, low, high)[1]
    for index, sign, start, end in sorted(pieces, key=lambda p: (p[0], p[2] or 0)):
        if index == 0:
            assert start is not None and end is not None
            (window.raw if sign > 0 else window.minus_raw).append((_moment(start), _moment(end)))
            continue
        period = levels[index] // _MICRO
        start_s = start // _MICRO if start is not None else None
        end_s = end // _MICRO if end is not None else None
        if sign > 0:
            window.rollups.append((period, start_s, end_s))
        else:
            assert start_s is not None and end_s is not None
            window.minus_rollups.append((period, start_s, end_s))
    return window
