"""What an accepted usage report sets in motion: a cooldown for rate-limit and quota
outcomes (with its alert) and the token and budget counting (with their alerts).

These run once per stored report, in the usage writer's after-commit step, so they happen
whether or not the caller still waits for its answer, and a retried report (a duplicate)
never repeats them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Final

from modelroute.server.core.snapshot import Snapshot
from modelroute.server.runtime.quotas import QuotaTracker
from modelroute.storage.usage_store import UsageRecord
from modelroute.v1 import router_pb2

log = logging.getLogger("modelroute.usage")

COOLDOWN_OUTCOMES: Final = frozenset({"RATE_LIMITED", "QUOTA_EXCEEDED"})
DEFAULT_COOLDOWN: Final = timedelta(seconds=60)
# (subject "models/<id>" | "providers/<name>", duration, outcome) → started.
CooldownStarter = Callable[[str, timedelta, str], Awaitable[object]]
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
        """The step the usage writer runs once `records` are committed; it receives, per
        record, whether it was stored now (False: a duplicate, already acted on)."""

        async def run(inserted: Sequence[bool]) -> None:
            stored = [
                (reports[position], record)
                for position, record, was_inserted in zip(positions, records, inserted, strict=True)
                if was_inserted
            ]
            self._count(record for _, record in stored)
            await self._cool_down(stored, snapshot)

        return run

    def _count(self, records: Iterable[UsageRecord]) -> None:
        if self._quotas is None:
            return
        now = self._clock()
        for record in records:
            self._quotas.record_usage(
                record.provider,
                record.context,
                record.input_tokens + record.output_tokens,
                record.estimated_cost,
                now,
            )

    async def _cool_down(
        self,
        stored: Sequence[tuple[router_pb2.UsageReport, UsageRecord]],
        snapshot: Snapshot,
    ) -> None:
        """Provider said quota exceeded / rate limited: move traffic off the model (or the
        whole provider) on every replica, for retry_after or the provider's cooldown."""
        if self._start_cooldown is None:
            return
        for report, record in stored:
            if record.outcome not in COOLDOWN_OUTCOMES:
                continue
            provider = snapshot.providers.get(record.provider)
            if record.retry_after_ms:
                duration = timedelta(milliseconds=record.retry_after_ms)
            elif provider is not None and provider.cooldown_seconds:
                duration = timedelta(seconds=provider.cooldown_seconds)
            else:
                duration = DEFAULT_COOLDOWN
            subject = (
                f"providers/{record.provider}"
                if report.provider_wide
                else f"models/{record.model_id}"
            )
            try:
                await self._start_cooldown(subject, duration, record.outcome)
            except Exception as exc:  # noqa: BLE001 - the report is stored; say so, go on
                log.warning("could not start cooldown for %s: %s", subject, exc)
