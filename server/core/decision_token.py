"""Decision ids: self-contained, signed tokens linking usage reports and feedback to a decision.

The token carries what analysis needs (context, model, reason, experiment, variant,
config revision, issue time), so no database write happens per decision — resolution
stays I/O-free — and any replica can decode a token issued by another. It is signed with
an HMAC key shared by the replicas (`runtime/decision-key` in etcd), so a well-formed id
that no replica issued is *unknown* (NOT_FOUND), and feedback cannot be forged into an
experiment's results.
Format: `d1.` + base64url(compact JSON) + `.` + base64url(HMAC-SHA256[:16]). Opaque to clients.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from random import getrandbits
from typing import Final

PREFIX: Final = "d1."
MAX_TOKEN_CHARS: Final = 1024
SIGNATURE_BYTES: Final = 16


class MalformedTokenError(ValueError):
    """Not something ResolveModel returns (INVALID_ARGUMENT)."""


class UnknownTokenError(ValueError):
    """Well-formed, but not issued by this deployment (NOT_FOUND)."""


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


def new_key() -> bytes:
    return secrets.token_bytes(32)


_URLSAFE: Final = bytes.maketrans(b"+/", b"-_")


def _b64(raw: bytes) -> str:
    """base64url without padding (what `base64.urlsafe_b64encode` gives, in one C call)."""
    return binascii.b2a_base64(raw, newline=False).translate(_URLSAFE).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class HmacSha256:
    """HMAC-SHA256 (RFC 2104) with the key's inner and outer hash states computed once.

    Equal to `hmac.digest(key, message, "sha256")`; per message it copies two prepared
    states instead of setting the key up again (OpenSSL 3 also looks the algorithm up on
    every one-shot call): the signature was a fifth of ResolveModel's Python time."""

    def __init__(self, key: bytes) -> None:
        if len(key) > _SHA256_BLOCK:
            key = hashlib.sha256(key).digest()
        key = key.ljust(_SHA256_BLOCK, b"\0")
        self._inner = hashlib.sha256(key.translate(_IPAD))
        self._outer = hashlib.sha256(key.translate(_OPAD))

    def digest(self, message: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


_SHA256_BLOCK: Final = 64
_IPAD: Final = bytes(b ^ 0x36 for b in range(256))
_OPAD: Final = bytes(b ^ 0x5C for b in range(256))


def _sign(signer: HmacSha256, body: str) -> str:
    return _b64(signer.digest(body.encode())[:SIGNATURE_BYTES])


@functools.lru_cache(maxsize=1024)
def _payload_middle(
    context: str,
    model_id: str,
    reason: int,
    experiment_id: str,
    variant_id: str,
    config_revision: int,
) -> str:
    fields = [context, model_id, int(reason), experiment_id, variant_id, int(config_revision)]
    return json.dumps(fields, separators=(",", ":"))[1:-1]


class DecisionTokens:
    """Issues and checks decision ids with one deployment-wide key. A replica starts with
    its local copy (or a fresh key) and adopts etcd's key when the watch delivers it; ids
    signed with a key it used before stay valid here (a few are remembered)."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._signer = HmacSha256(key)
        self._accepted = [(key, self._signer)]

    @property
    def key(self) -> bytes:
        return self._key

    def adopt(self, key: bytes) -> bool:
        """Sign with `key` from now on; False if it already was the key."""
        if hmac.compare_digest(key, self._key):
            return False
        self._key = key
        self._signer = HmacSha256(key)
        kept = [(k, signer) for k, signer in self._accepted if k != key]
        self._accepted = [(key, self._signer), *kept][:4]
        return True

    def encode(
        self,
        *,
        context: str,
        model_id: str,
        reason: int,
        experiment_id: str,
        variant_id: str,
        config_revision: int,
        issued_at_ms: int,
    ) -> str:
        # The same JSON list as json.dumps([nonce, context, ..., issued_at_ms]) would give;
        # the middle is the same for every decision of one (context, model, ...) and cached.
        middle = _payload_middle(
            context, model_id, reason, experiment_id, variant_id, config_revision
        )
        # The nonce only makes ids unique (the HMAC is what makes them unforgeable), so a
        # fast non-cryptographic draw does: no system call per decision.
        payload = f'["{getrandbits(48):012x}",{middle},{int(issued_at_ms)}]'
        body = _b64(payload.encode())
        return f"{PREFIX}{body}.{_sign(self._signer, body)}"

    def decode(self, token: str) -> DecisionToken:
        """Raises MalformedTokenError or UnknownTokenError with a readable reason."""
        if not token.startswith(PREFIX) or len(token) > MAX_TOKEN_CHARS:
            raise MalformedTokenError(
                "not a modelroute decision id (expected the value ResolveModel returned)"
            )
        body, _, signature = token[len(PREFIX) :].partition(".")
        try:
            payload = json.loads(_unb64(body))
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
            raise MalformedTokenError(f"malformed decision id: {exc}") from None
        if not signature:
            raise MalformedTokenError("malformed decision id: no signature")
        if not any(hmac.compare_digest(signature, _sign(s, body)) for _, s in self._accepted):
            raise UnknownTokenError("unknown decision id: not issued by this deployment")
        return fields
