"""Alerts: recorded in the `alerts` table, logged, counted, and POSTed to the webhook.

`raise_alert` never blocks and never fails the caller (it is called from the resolve
path and the config watch); a worker task stores and delivers. De-duplication has two
layers: this replica remembers recent keys, and the table's primary key (derived from the
key) lets exactly one replica win each condition and window, so the webhook gets one POST
per condition however many replicas see it. Delivery is retried with exponential backoff
(connection errors, 5xx, 429); a receiver that stays down loses the POST, not the row.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Final

import httpx
from modelroute.storage.alert_store import AlertRecord, AlertStore, alert_id_for
from opentelemetry import metrics

log = logging.getLogger("modelroute.alerts")
_alerts_counter = metrics.get_meter("modelroute").create_counter(
    "modelroute.alerts", description="Alerts raised (after de-duplication), by kind"
)

SEVERITIES: Final = ("info", "warning", "critical")
QUEUE_LIMIT: Final = 10_000
REMEMBERED_KEYS: Final = 4096
WEBHOOK_ATTEMPTS: Final = 6
WEBHOOK_FIRST_DELAY: Final = 0.25  # seconds; doubles per attempt
WEBHOOK_TIMEOUT: Final = 5.0


class AlertSink:
    def __init__(
        self,
        store: AlertStore | None,
        webhook_url: Callable[[], str],
        *,
        replica_id: str = "",
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._webhook_url = webhook_url
        self._replica_id = replica_id
        self._clock = clock
        self._queue: asyncio.Queue[AlertRecord] = asyncio.Queue(QUEUE_LIMIT)
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._deliveries: set[asyncio.Task[None]] = set()
        self._http: httpx.AsyncClient | None = None
        self.delivered = 0  # successful webhook POSTs (status and tests)

    def raise_alert(
        self, kind: str, severity: str, subject: str, message: str, dedup_key: str
    ) -> None:
        """Queue an alert unless this replica already raised `dedup_key` recently."""
        if dedup_key in self._seen:
            return
        self._seen[dedup_key] = None
        if len(self._seen) > REMEMBERED_KEYS:
            self._seen.popitem(last=False)
        record = AlertRecord(
            alert_id_for(dedup_key), kind, severity, subject, message, dedup_key, self._clock()
        )
        try:
            self._queue.put_nowait(record)
        except asyncio.QueueFull:
            log.error("alert queue full; dropped %s: %s", kind, message)

    async def run(self) -> None:
        self._http = httpx.AsyncClient(timeout=WEBHOOK_TIMEOUT)
        try:
            while True:
                record = await self._queue.get()
                await self._handle(record)
        finally:
            await self._http.aclose()

    async def _handle(self, record: AlertRecord) -> None:
        if self._store is not None:
            try:
                if not await asyncio.to_thread(self._store.insert_once, record):
                    return  # another replica (or an earlier run) has it: it sends the POST
            except Exception as exc:  # noqa: BLE001 - database down: still tell someone
                log.warning("alert not stored (%s); delivering anyway", type(exc).__name__)
        log_level = logging.ERROR if record.severity == "critical" else logging.WARNING
        log.log(log_level, "ALERT %s [%s] %s", record.kind, record.subject, record.message)
        _alerts_counter.add(1, {"kind": record.kind, "severity": record.severity})
        url = self._webhook_url()
        if url:
            task = asyncio.create_task(self._deliver(url, record))
            self._deliveries.add(task)
            task.add_done_callback(self._deliveries.discard)

    async def _deliver(self, url: str, record: AlertRecord) -> None:
        assert self._http is not None
        body = {
            "alert_id": record.alert_id,
            "kind": record.kind,
            "severity": record.severity,
            "subject": record.subject,
            "message": record.message,
            "created_at": record.created_at.isoformat(),
            "replica": self._replica_id,
        }
        delay = WEBHOOK_FIRST_DELAY
        for attempt in range(1, WEBHOOK_ATTEMPTS + 1):
            started = time.monotonic()
            try:
                reply = await self._http.post(url, json=body)
                if reply.status_code < 400:
                    self.delivered += 1
                    return
                if reply.status_code < 500 and reply.status_code != 429:
                    log.warning("alert webhook refused %s: HTTP %d", record.kind, reply.status_code)
                    return  # the receiver will not accept it however often we try
                problem = f"HTTP {reply.status_code}"
            except httpx.HTTPError as exc:
                problem = type(exc).__name__
            if attempt == WEBHOOK_ATTEMPTS:
                log.error("alert webhook failed %d times (%s); giving up", attempt, problem)
                return
            await asyncio.sleep(max(0.0, delay - (time.monotonic() - started)))
            delay *= 2

    def recent(self, limit: int, since: datetime | None) -> list[AlertRecord]:
        return self._store.recent(limit, since) if self._store is not None else []

    async def drain(self, timeout: float = 2.0) -> None:
        """On shutdown: give queued alerts and in-flight POSTs a moment."""
        deadline = time.monotonic() + timeout
        while not self._queue.empty() and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        if self._deliveries:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait(
                    set(self._deliveries), timeout=max(0.0, deadline - time.monotonic())
                )
