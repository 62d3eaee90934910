"""Decision ids: signed with HMAC-SHA256 from prepared key states, exactly as before."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from modelroute.server.core.decision_token import (
    PREFIX,
    SIGNATURE_BYTES,
    DecisionTokens,
    HmacSha256,
    UnknownTokenError,
    new_key,
)

FIELDS = {
    "context": "rag.answer",
    "model_id": "gemini-3-pro-preview",
    "reason": 4,
    "experiment_id": "rag-answer-q3",
    "variant_id": "b",
    "config_revision": 12,
    "issued_at_ms": 1_764_547_200_000,
}


@given(key=st.binary(max_size=200), message=st.binary(max_size=300))
def test_prepared_hmac_equals_the_standard_library(key: bytes, message: bytes) -> None:
    """Keys shorter, as long as and longer than SHA-256's block (hashed first)."""
    assert HmacSha256(key).digest(message) == hmac.digest(key, message, hashlib.sha256)


def test_ids_signed_the_old_way_still_decode_and_others_do_not() -> None:
    """A replica running the previous release signed with hmac.digest: its ids must stay
    valid here (and ours there), and an id signed with another key must not."""
    key = new_key()
    tokens = DecisionTokens(key)
    issued = tokens.encode(**FIELDS)  # type: ignore[arg-type]
    body = issued[len(PREFIX) :].partition(".")[0]
    old_signature = hmac.digest(key, body.encode(), hashlib.sha256)[:SIGNATURE_BYTES]
    old_style = f"{PREFIX}{body}.{base64.urlsafe_b64encode(old_signature).rstrip(b'=').decode()}"
    assert old_style == issued
    decoded = tokens.decode(old_style)
    assert (decoded.context, decoded.model_id, decoded.variant_id) == (
        "rag.answer",
        "gemini-3-pro-preview",
        "b",
    )
    assert json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))[1:-1] == [
        "rag.answer",
        "gemini-3-pro-preview",
        4,
        "rag-answer-q3",
        "b",
        12,
    ]
    with pytest.raises(UnknownTokenError):
        DecisionTokens(new_key()).decode(issued)


def test_ids_signed_with_a_previous_key_stay_valid_after_adopting_a_new_one() -> None:
    tokens = DecisionTokens(new_key())
    before = tokens.encode(**FIELDS)  # type: ignore[arg-type]
    assert tokens.adopt(new_key())
    after = tokens.encode(**FIELDS)  # type: ignore[arg-type]
    assert tokens.decode(before).model_id == tokens.decode(after).model_id
    assert before.rpartition(".")[2] != after.rpartition(".")[2]  # signed with the new key
    assert len({tokens.encode(**FIELDS) for _ in range(1000)}) == 1000  # type: ignore[arg-type]
