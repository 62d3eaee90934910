"""Aggregations over `llm_usage_logs` and `llm_feedback`, in SQL on SQLite and PostgreSQL.

Percentiles are nearest-rank (the smallest latency whose rank r satisfies r >= q * n),
computed with window functions both dialects have, so no rows leave the database.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from modelroute.storage.tables import LlmFeedback, LlmUsageLog
from sqlalchemy import Float, Table, and_, case, cast, distinct, func, select, true
from sqlalchemy.engine import Engine
from sqlalchemy.sql.elements import ColumnElement

_usage: Table = LlmUsageLog.__table__  # type: ignore[attr-defined]
_feedback: Table = LlmFeedback.__table__  # type: ignore[attr-defined]
GROUPS: Final = ("model", "context", "provider", "day")
PERCENTILES: Final = (50, 95, 99)


@dataclass
class UsageGroup:
    key: str
    calls: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    latency_mean_ms: float = 0.0
    latency_var_ms2: float = 0.0  # population variance
    percentiles: dict[int, float] = field(default_factory=dict)
    by_outcome: dict[str, int] = field(default_factory=dict)
    units: int = 0  # distinct users (experiments bucketed by user) or calls


@dataclass
class FeedbackGroup:
    key: str
    scores: int = 0
    score_mean: float = 0.0
    score_var: float = 0.0  # population variance
    thumbs: int = 0
    thumbs_up: int = 0


def _day(engine: Engine, column: Any) -> ColumnElement[str]:
    if engine.dialect.name == "postgresql":
        return func.to_char(func.timezone("UTC", column), "YYYY-MM-DD")
    return func.substr(column, 1, 10)  # SQLite keeps UTC as 'YYYY-MM-DD HH:MM:SS...'


class AnalysisStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _key(self, group_by: str) -> ColumnElement[Any]:
        columns = {"model": _usage.c.model_id, "context": _usage.c.context}
        columns["provider"] = _usage.c.provider
        if group_by == "day":
            return _day(self.engine, _usage.c.created_at)
        if group_by == "variant":
            return _usage.c.variant_id
        return columns[group_by]

    def usage(
        self,
        group_by: str,
        since: datetime | None,
        until: datetime | None,
        *,
        experiment_id: str | None = None,
        distinct_users: bool = False,
    ) -> list[UsageGroup]:
        """One group per key: totals, outcome counts and latency percentiles."""
        key = self._key(group_by).label("key")
        conditions = []
        if since is not None:
            conditions.append(_usage.c.created_at >= since)
        if until is not None:
            conditions.append(_usage.c.created_at < until)
        if experiment_id is not None:
            conditions.append(_usage.c.experiment_id == experiment_id)
            conditions.append(_usage.c.variant_id.is_not(None))
        where = and_(true(), *conditions)
        latency = cast(_usage.c.latency_ms, Float)
        totals = (
            select(
                key,
                func.count(),
                func.sum(case((_usage.c.outcome != "OK", 1), else_=0)),
                func.sum(_usage.c.input_tokens),
                func.sum(_usage.c.output_tokens),
                func.sum(_usage.c.estimated_cost),
                func.avg(latency),
                func.avg(latency * latency),
                func.count(distinct(_usage.c.user_id)) if distinct_users else func.count(),
            )
            .where(where)
            .group_by(key)
        )
        outcomes = (
            select(key, _usage.c.outcome, func.count()).where(where).group_by(key, _usage.c.outcome)
        )
        ranked = (
            select(
                key,
                _usage.c.latency_ms.label("latency"),
                func.row_number()
                .over(partition_by=self._key(group_by), order_by=_usage.c.latency_ms)
                .label("rank"),
                func.count().over(partition_by=self._key(group_by)).label("n"),
            )
            .where(where)
            .subquery()
        )
        percentiles = select(
            ranked.c.key,
            *(
                func.min(case((ranked.c["rank"] * 100 >= ranked.c.n * q, ranked.c.latency)))
                for q in PERCENTILES
            ),
        ).group_by(ranked.c.key)
        groups: dict[str, UsageGroup] = {}
        with self.engine.connect() as connection:
            for row in connection.execute(totals):
                mean, mean_sq = float(row[6] or 0.0), float(row[7] or 0.0)
                groups[str(row[0])] = UsageGroup(
                    key=str(row[0]),
                    calls=int(row[1]),
                    errors=int(row[2] or 0),
                    input_tokens=int(row[3] or 0),
                    output_tokens=int(row[4] or 0),
                    cost_usd=float(row[5] or 0.0),
                    latency_mean_ms=mean,
                    latency_var_ms2=max(0.0, mean_sq - mean * mean),
                    units=int(row[8] or 0),
                )
            by_outcome: dict[str, dict[str, int]] = defaultdict(dict)
            for group_key, outcome, count in connection.execute(outcomes):
                by_outcome[str(group_key)][str(outcome)] = int(count)
            for row in connection.execute(percentiles):
                group = groups.get(str(row[0]))
                if group is not None:
                    group.percentiles = {
                        q: float(value or 0.0)
                        for q, value in zip(PERCENTILES, row[1:], strict=True)
                    }
        for group_key, counts in by_outcome.items():
            if group_key in groups:
                groups[group_key].by_outcome = counts
        return sorted(groups.values(), key=lambda g: g.key)

    def feedback_by_variant(
        self, experiment_id: str, since: datetime | None, until: datetime | None
    ) -> dict[str, FeedbackGroup]:
        conditions = [_feedback.c.experiment_id == experiment_id]
        if since is not None:
            conditions.append(_feedback.c.created_at >= since)
        if until is not None:
            conditions.append(_feedback.c.created_at < until)
        score = cast(_feedback.c.quality_score, Float)
        query = (
            select(
                _feedback.c.variant_id,
                func.count(_feedback.c.quality_score),
                func.avg(score),
                func.avg(score * score),
                func.count(_feedback.c.thumbs),
                func.sum(case((_feedback.c.thumbs == "UP", 1), else_=0)),
            )
            .where(and_(*conditions))
            .group_by(_feedback.c.variant_id)
        )
        found: dict[str, FeedbackGroup] = {}
        with self.engine.connect() as connection:
            for variant, scores, mean, mean_sq, thumbs, up in connection.execute(query):
                mean_f, mean_sq_f = float(mean or 0.0), float(mean_sq or 0.0)
                found[str(variant)] = FeedbackGroup(
                    key=str(variant),
                    scores=int(scores or 0),
                    score_mean=mean_f,
                    score_var=max(0.0, mean_sq_f - mean_f * mean_f),
                    thumbs=int(thumbs or 0),
                    thumbs_up=int(up or 0),
                )
        return found
