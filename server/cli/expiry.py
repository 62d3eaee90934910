"""Relative override expiry: `--for 1h` on the command line, `expires: +1h` in a file.

The server stores absolute instants only; the CLI turns a relative expiry into one at the
moment it writes. An override whose expiry has already passed never applies, so writing
one is almost always a mistake: `expired_overrides` finds them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

OVERRIDES_DIR = "overrides/"
_PART = re.compile(r"(\d+)([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class ExpiryError(ValueError):
    """A duration or expiry the CLI cannot read; the message says what it expects."""


def parse_duration(text: str) -> timedelta:
    """`90s`, `15m`, `1h`, `1h30m`, `2d`, `1w` → a positive timedelta."""
    compact = text.strip().lower().replace(" ", "")
    if not compact or _PART.sub("", compact) != "":
        raise ExpiryError(
            f"{text!r} is not a duration; use a number with s, m, h, d or w, e.g. 1h or 1h30m"
        )
    total = timedelta()
    for amount, unit in _PART.findall(compact):
        total += timedelta(**{_UNITS[unit]: int(amount)})
    if total <= timedelta():
        raise ExpiryError(f"{text!r}: a duration must be longer than zero")
    return total


def rfc3339(instant: datetime) -> str:
    """The `Z` form proto-JSON uses for Timestamps, to the second."""
    return instant.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def resolve_relative_expiries(values: Mapping[str, bytes], now: datetime) -> dict[str, bytes]:
    """Overrides whose `expires` is `+DURATION` get `now + DURATION`; the rest unchanged."""
    resolved = dict(values)
    for key, raw in values.items():
        value = _override(key, raw)
        expires = value.get("expires") if value else None
        if value is not None and isinstance(expires, str) and expires.strip().startswith("+"):
            try:
                duration = parse_duration(expires.strip()[1:])
            except ExpiryError as exc:
                raise ExpiryError(f"{key}: expires: {exc}") from None
            resolved[key] = json.dumps(value | {"expires": rfc3339(now + duration)}).encode()
    return resolved


def expired_overrides(values: Mapping[str, bytes], now: datetime) -> dict[str, str]:
    """Override keys whose `expires` is at or before `now` → that expiry as written."""
    expired: dict[str, str] = {}
    for key, raw in values.items():
        value = _override(key, raw)
        expires = value.get("expires") if value else None
        if not isinstance(expires, str):
            continue
        try:
            instant = datetime.fromisoformat(expires.strip().replace("Z", "+00:00"))
        except ValueError:
            continue  # not a timestamp: the server's validation reports it
        if (instant if instant.tzinfo else instant.replace(tzinfo=UTC)) <= now:
            expired[key] = expires
    return expired


def _override(key: str, raw: bytes) -> dict[str, object] | None:
    if not key.startswith(OVERRIDES_DIR):
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
