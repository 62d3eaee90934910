"""Response models of the admin HTTP API: they mirror admin.proto, so the OpenAPI spec
(/openapi.json, /docs) is precise."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field


class Violation(BaseModel):
    field: str
    description: str


class ErrorBody(BaseModel):
    reason: str = Field(description="Machine-readable reason, e.g. INVALID_ARGUMENT")
    message: str
    violations: list[Violation] = []


class ErrorResponse(BaseModel):
    error: ErrorBody


class UsageRow(BaseModel):
    key: str = Field(description="Context, model, provider or YYYY-MM-DD")
    calls: int
    errors: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    latency_p50_ms: float
    latency_p95_ms: float
    latency_p99_ms: float
    error_rate: float = Field(description="errors / calls")
    cost_per_call_usd: float
    calls_by_outcome: dict[str, int] = Field(
        description="Calls per outcome name (OK, TIMEOUT, ...)"
    )
    latency_mean_ms: float


class UsageSummary(BaseModel):
    group_by: Literal["model", "context", "provider", "day"]
    rows: list[UsageRow]


class VariantConfig(BaseModel):
    variant_id: str
    model: str
    weight: int


class Experiment(BaseModel):
    experiment_id: str
    context: str
    variants: list[VariantConfig]
    start: datetime | None
    end: datetime | None
    enabled: bool
    running: bool = Field(description="Enabled and inside its time window now")


class ExperimentList(BaseModel):
    experiments: list[Experiment]


class VariantResult(BaseModel):
    variant_id: str
    model_id: str
    weight: int
    usage: UsageRow | None = None
    error_rate: float
    mean_quality_score: float
    quality_ci_low: float
    quality_ci_high: float
    thumbs_up_rate: float
    error_rate_effect: float
    error_rate_p_value: float
    latency_p_value: float
    significant: bool = Field(description="Any difference against the control significant at 5%")
    assignments: int = Field(description="Distinct users (USER bucketing) or calls (REQUEST)")
    latency_effect_ms: float
    quality_scores: int
    quality_effect: float
    quality_p_value: float
    thumbs: int
    thumbs_up_effect: float
    thumbs_up_p_value: float
    # Always-valid (sequential) inference: valid however often results are looked at.
    error_rate_sequential_p_value: float = 1.0
    error_rate_effect_cs_low: float = 0.0
    error_rate_effect_cs_high: float = 0.0
    latency_sequential_p_value: float = 1.0
    latency_effect_cs_low: float = 0.0
    latency_effect_cs_high: float = 0.0
    quality_sequential_p_value: float = 1.0
    quality_effect_cs_low: float = 0.0
    quality_effect_cs_high: float = 0.0
    thumbs_up_sequential_p_value: float = 1.0
    thumbs_up_effect_cs_low: float = 0.0
    thumbs_up_effect_cs_high: float = 0.0
    significant_sequential: bool = Field(
        default=False,
        description="Any difference significant at 5% by the always-valid sequential test "
        "(the flag to act on when results are checked repeatedly)",
    )


class ExperimentResults(BaseModel):
    experiment_id: str
    context: str
    variants: list[VariantResult] = Field(description="The first is the control")
    sample_ratio_p_value: float
    sample_ratio_mismatch: bool = Field(description="Assignment does not match the weights")
    bucket_by: str


class RejectedKey(BaseModel):
    key: str
    error: str
    revision: int
    previous_value_in_force: bool


class EnvOverride(BaseModel):
    variable: str
    model_id: str


class QuotaStatus(BaseModel):
    provider: str
    limit: str
    limit_value: int
    remaining: int
    reset_at: datetime | None = None
    is_exceeded: bool


class BudgetStatus(BaseModel):
    context: str
    limit_usd: float
    spent_usd: float
    reset_at: datetime | None = None
    is_exceeded: bool
    on_exceeded: str


class ConfigStatus(BaseModel):
    config_revision: int
    last_reload: datetime | None = None
    rejected_keys: list[RejectedKey]
    env_overrides: list[EnvOverride]
    etcd_connected: bool
    etcd_endpoints: list[str]
    degraded_since: datetime | None = None
    key_counts: dict[str, int]
    rejected_total: int
    quotas: list[QuotaStatus]
    budgets: list[BudgetStatus]
    serving_last_good_file: bool
    live_replicas: int


class Alert(BaseModel):
    alert_id: str
    kind: str
    severity: Literal["unspecified", "info", "warning", "critical"]
    message: str
    subject: str
    created_at: datetime | None = None


class AlertList(BaseModel):
    alerts: list[Alert]


class Cooldown(BaseModel):
    subject: str = Field(description="models/<model id> or providers/<name>")
    until: datetime


class CooldownList(BaseModel):
    cooldowns: list[Cooldown]


class ModelInfo(BaseModel):
    model_id: str
    provider: str
    tiers: list[str]
    input_usd_per_mtok: float
    output_usd_per_mtok: float
    enabled: bool


class ModelList(BaseModel):
    models: list[ModelInfo]


def error_response(
    status: int, reason: str, message: str, violations: list[Violation]
) -> JSONResponse:
    """The JSON error body every admin HTTP failure uses."""
    body = ErrorResponse(error=ErrorBody(reason=reason, message=message, violations=violations))
    return JSONResponse(body.model_dump(), status_code=status)
