"""Decision ids: self-contained tokens linking usage reports and feedback to a decision.

The token carries what analysis needs (context, model, reason, experiment, variant,
config revision, issue time), so no database write happens per decision — resolution
stays I/O-free — and any replica can decode a token issued by another.
Format: `d1.` + base64url(compact JSON). Opaque to clients.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from dataclasses import dataclass
from typing import Final

PREFIX: Final = "d1."
MAX_TOKEN_CHARS: Final = 1024


@dataclass(frozen=True, slots=True)
class DecisionToken:
    nonce: str
    context: str
    model_id: str
    reason: int
    experiment_id: str
    variant_id: str
    config_revision: int
    issued_at_ms: int


def encode(
    *,
    context: str,
    model_id: str,
    reason: int,
    experiment_id: str,
    variant_id: str,
    config_revision: int,
    issued_at_ms: int,
) -> str:
    payload = [
        secrets.token_hex(6),
        context,
        model_id,
        reason,
        experiment_id,
        variant_id,
        config_revision,
        issued_at_ms,
    ]
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode(token: str) -> DecisionToken:
    """Raises ValueError with a readable reason for anything not issued by modelroute."""
    if not token.startswith(PREFIX) or len(token) > MAX_TOKEN_CHARS:
        raise ValueError("not a modelroute decision id (expected the value ResolveModel returned)")
    body = token[len(PREFIX) :]
    try:
        payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        nonce, context, model, reason, experiment, variant, revision, issued = payload
        fields = DecisionToken(
            str(nonce),
            str(context),
            str(model),
            int(reason),
            str(experiment),
            str(variant),
            int(revision),
            int(issued),
        )
    except (ValueError, TypeError, binascii.Error) as exc:
        raise ValueError(f"malformed decision id: {exc}") from None
    return fields
