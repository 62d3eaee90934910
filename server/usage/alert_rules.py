"""The alerts the server raises about itself: wording, severity and de-duplication keys.

Each rule names its condition and window in the key, so every replica that sees the same
condition raises the same key and the sink sends it once (see alerts.py).
"""

from __future__ import annotations

from datetime import datetime

from ..core.snapshot import Rejection
from .alerts import AlertSink

COOLDOWN_ALERT_WINDOW_SECONDS = 600


def cooldown_started(sink: AlertSink, subject: str, until: datetime, reason: str) -> None:
    """A model or provider went into cooldown after a provider's refusal."""
    # One alert per subject per 10 minutes: a flapping provider must not page in a loop.
    window = int(until.timestamp() // COOLDOWN_ALERT_WINDOW_SECONDS)
    sink.raise_alert(
        "cooldown_started",
        "warning",
        subject,
        f"{subject} in cooldown until {until:%H:%M:%S} UTC after a {reason} report",
        f"cooldown_started|{subject}|{window}",
    )


def config_rejected(sink: AlertSink, rejection: Rejection) -> None:
    """A config value in etcd failed validation (once per key and revision)."""
    kept = "previous value stays in force" if rejection.previous_in_force else "key ignored"
    sink.raise_alert(
        "config_rejected",
        "warning",
        rejection.key,
        f"config value {rejection.key} rejected at revision {rejection.revision}: "
        f"{rejection.error} ({kept})",
        f"config_rejected|{rejection.key}|{rejection.revision}",
    )


def etcd_unreachable(sink: AlertSink, replica_id: str, endpoints: str, since: datetime) -> None:
    """This replica has not reached etcd since `since` (once per outage)."""
    sink.raise_alert(
        "etcd_unreachable",
        "critical",
        replica_id,
        f"replica {replica_id} cannot reach etcd ({endpoints}) since "
        f"{since:%H:%M:%S} UTC; serving the last good config",
        f"etcd_unreachable|{replica_id}|{since.isoformat()}",
    )
