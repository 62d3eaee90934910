"""Reads for the impact preview: the usage of a window summed per (context, user, tier),
and every stored preference. Synchronous; callers run it in a thread.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sqlalchemy import Engine, Table, select

from .database import database_call
from .tables import LlmUsageLog, UserModelPreference, table_of

_usage: Table = table_of(LlmUsageLog)
_preferences: Table = table_of(UserModelPreference)

# (context, user id or "", tier or "", calls, input tokens, output tokens)
UsageSums = tuple[str, str, str, int, int, int]


@database_call
def window_usage(
    engine: Engine,
    start: datetime,
    end: datetime,
    merge_users: Callable[[str], bool],
    merged_user: str,
) -> list[UsageSums]:
    """Rows with start <= created_at < end summed per (context, user, tier).

    For a context where `merge_users(context)` holds, all calls that carry a user id are summed
    under `merged_user` (calls without one stay apart). Grouped here rather than with SQL GROUP
    BY: hashing streamed rows is faster than SQLite's sort-based grouping of a million rows, and
    needs no extra index.
    """
    query = select(
        _usage.c.context,
        _usage.c.user_id,
        _usage.c.tier,
        _usage.c.input_tokens,
        _usage.c.output_tokens,
    ).where(_usage.c.created_at >= start, _usage.c.created_at < end)
    merged: dict[str, bool] = {}
    sums: dict[tuple[str, str | None, str | None], list[int]] = {}
    with engine.connect() as connection:
        for context, user, tier, tokens_in, tokens_out in connection.execute(query):
            merge = merged.get(context)
            if merge is None:
                merge = merged[context] = merge_users(context)
            key = (context, (merged_user if user else None) if merge else user, tier)
            found = sums.get(key)
            if found is None:
                sums[key] = [1, tokens_in, tokens_out]
            else:
                found[0] += 1
                found[1] += tokens_in
                found[2] += tokens_out
    return [(c, u or "", t or "", n, i, o) for (c, u, t), (n, i, o) in sums.items()]


@database_call
def all_preferences(engine: Engine) -> dict[str, dict[str, str]]:
    """User id → context ("" = every user-selectable context) → preferred model."""
    query = select(_preferences.c.user_id, _preferences.c.context, _preferences.c.model_id)
    out: dict[str, dict[str, str]] = {}
    with engine.connect() as connection:
        for user_id, context, model_id in connection.execute(query):
            out.setdefault(str(user_id), {})[str(context)] = str(model_id)
    return out
