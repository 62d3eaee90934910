"""What an accepted usage report sets in motion: token and budget counting (with their
alerts) and, for rate-limit and quota outcomes, a cooldown on every replica (with its
alert).

These run once per stored report, in the usage writer's after-commit step, so they happen
whether or not the caller still waits for its answer, and a retried report (a duplicate)
never repeats them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta

from modelroute.storage.usage_store import UsageRecord
from modelroute.v1 import router_pb2

from ..core.snapshot import Snapshot
from .admission import cooldown_for, count_usage
from .quotas import QuotaTracker

log = logging.getLogger("modelroute.usage")

# (subject "models/<id>" | "providers/<name>", duration, outcome) → started.
CooldownStarter = Callable[[str, timedelta, str], Awaitable[object]]
# Receives, per record, whether it was stored now (False: a duplicate, already acted on).
AfterCommit = Callable[[Sequence[bool]], Awaitable[None]]


class ReportEffects:
    def __init__(
        self,
        *,
        start_cooldown: CooldownStarter | None,
        quotas: QuotaTracker | None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._start_cooldown = start_cooldown
        self._quotas = quotas
        self._clock = clock

    def after_commit(
        self,
        reports: Sequence[router_pb2.UsageReport],
        positions: Sequence[int],
        records: Sequence[UsageRecord],
        snapshot: Snapshot,
    ) -> AfterCommit:
        """The step the usage writer runs once `records` are committed."""

        async def run(inserted: Sequence[bool]) -> None:
            stored = [
                (record, reports[position].provider_wide)
                for position, record, was_inserted in zip(positions, records, inserted, strict=True)
                if was_inserted
            ]
            if self._quotas is not None:
                count_usage(self._quotas, [record for record, _ in stored], self._clock())
            await self._cool_down(stored, snapshot)

        return run

    async def _cool_down(
        self, stored: Sequence[tuple[UsageRecord, bool]], snapshot: Snapshot
    ) -> None:
        """Start the cooldowns newly stored reports ask for, on every replica."""
        if self._start_cooldown is None:
            return
        for record, provider_wide in stored:
            cooldown = cooldown_for(record, provider_wide, snapshot)
            if cooldown is None:
                continue
            subject, duration = cooldown
            try:
                await self._start_cooldown(subject, duration, record.outcome)
            except Exception as exc:  # noqa: BLE001 - the report is stored; say so, go on
                log.warning("could not start cooldown for %s: %s", subject, exc)
