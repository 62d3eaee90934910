"""Parsing and per-value validation of the etcd config values (`modelroute.config.v1`).

Operators write these by hand, so parsing is strict where typos hide (unknown fields,
wrong types) and lenient where the docs promise it (short enum names, snake_case or
lowerCamelCase field names). Every failure is a `ConfigValueError` whose message names
the key and says what to fix.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from dataclasses import dataclass
from typing import Any, Final

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from modelroute.config.v1 import config_pb2

# Ids that appear in keys and values: model ids like `gemini-3-flash-preview`, contexts like
# `rag.answer`. Slashes are excluded from ids so that `kind/id` keys stay unambiguous.
ID_PATTERN: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
MAX_VALUE_BYTES: Final = 64 * 1024

KIND_MESSAGES: Final[dict[str, type[Message]]] = {
    "models": config_pb2.Model,
    "contexts": config_pb2.Context,
    "experiments": config_pb2.Experiment,
    "overrides": config_pb2.Override,
    "providers": config_pb2.Provider,
    "settings": config_pb2.Settings,
    "clients": config_pb2.Client,
    "rollouts": config_pb2.Rollout,
}
# `settings` is a single key; every other kind is a directory of `<kind>/<id>` keys.
SINGLETON_KINDS: Final = frozenset({"settings"})
# Keys under these are written by servers, not operators, and are not config.
RUNTIME_KIND: Final = "runtime"


class ConfigValueError(ValueError):
    """A config key or value is invalid; the message is meant for the operator."""


@dataclass(frozen=True, slots=True)
class ConfigKey:
    """A key relative to the prefix, split into its kind and id (`contexts/rag.answer`)."""

    kind: str
    id: str

    @property
    def path(self) -> str:
        return self.kind if self.kind in SINGLETON_KINDS else f"{self.kind}/{self.id}"


def parse_key(relative_key: str) -> ConfigKey:
    """Split `kind/id` and check both parts. Raises ConfigValueError."""
    if relative_key in SINGLETON_KINDS:
        return ConfigKey(relative_key, "")
    kind, sep, ident = relative_key.partition("/")
    if kind not in KIND_MESSAGES or kind in SINGLETON_KINDS or not sep:
        known = ", ".join(sorted(f"{k}/<id>" for k in KIND_MESSAGES if k not in SINGLETON_KINDS))
        raise ConfigValueError(
            f"unknown key {relative_key!r}: expected `settings` or one of {known}"
        )
    if not ID_PATTERN.match(ident):
        raise ConfigValueError(
            f"invalid id {ident!r} in key {relative_key!r}: use 1-128 characters of "
            "letters, digits and . _ : @ - (starting with a letter or digit)"
        )
    return ConfigKey(kind, ident)


def _normalise_enums(data: Any, descriptor: Any, path: str = "") -> Any:
    """Accept short enum names (`"USER"` for `BUCKET_BY_USER`), as the docs promise, and
    refuse unknown fields naming them as the YAML spells them (snake_case)."""
    if not isinstance(data, dict):
        return data
    fields = {f.name: f for f in descriptor.fields} | {f.json_name: f for f in descriptor.fields}
    out: dict[str, Any] = {}
    for name, value in data.items():
        field = fields.get(name)
        if field is None:
            raise ConfigValueError(_unknown_field(path + str(name), descriptor))
        if field.type == FieldDescriptor.TYPE_ENUM and isinstance(value, str):
            out[name] = _full_enum_name(field, value)
        elif field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type is not None:
            inner = f"{path}{field.name}."
            if isinstance(value, list):
                out[name] = [_normalise_enums(v, field.message_type, inner) for v in value]
            elif field.message_type.GetOptions().map_entry:
                out[name] = value  # map values are checked by json_format
            else:
                out[name] = _normalise_enums(value, field.message_type, inner)
        else:
            out[name] = value
    return out


def _unknown_field(name: str, descriptor: Any) -> str:
    # json_format would list the camelCase JSON names (`userSelectable`), which nobody
    # writes in YAML: suggest and list the proto (snake_case) names instead.
    known = [f.name for f in descriptor.fields]
    leaf = name.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(_snake_case(leaf), known, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown field {name!r}{hint} (fields: {', '.join(known)})"


def _snake_case(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


def _full_enum_name(field: FieldDescriptor, value: str) -> str:
    assert field.enum_type is not None
    names = field.enum_type.values_by_name
    upper = value.strip().upper()
    if upper in names:
        return upper
    # Proto enum values carry their type's prefix (BUCKET_BY_USER); derive it from the
    # UNSPECIFIED value so short names map back without a hand-kept table.
    unspecified = next((n for n in names if n.endswith("_UNSPECIFIED")), "")
    prefix = unspecified[: -len("UNSPECIFIED")]
    if prefix + upper in names:
        return prefix + upper
    allowed = sorted(n[len(prefix) :] for n in names if not n.endswith("_UNSPECIFIED"))
    raise ConfigValueError(f"field {field.name!r}: {value!r} is not one of {', '.join(allowed)}")


def parse_value(key: ConfigKey, raw: bytes | str) -> Message:
    """Parse and validate one value on its own (references are checked by the snapshot)."""
    if len(raw) > MAX_VALUE_BYTES:
        raise ConfigValueError(f"value is {len(raw)} bytes; the limit is {MAX_VALUE_BYTES}")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigValueError(f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigValueError(f"expected a JSON object, got {type(data).__name__}")
    message_type = KIND_MESSAGES[key.kind]
    message = message_type()
    try:
        json_format.ParseDict(_normalise_enums(data, message.DESCRIPTOR), message)
    except json_format.ParseError as exc:
        raise ConfigValueError(_readable_parse_error(str(exc))) from None
    VALIDATORS[key.kind](key, message)
    return message


def _readable_parse_error(text: str) -> str:
    # json_format names the proto type ("...config.v1.Model") which means nothing to an
    # operator editing a key; keep its precise description of the problem.
    return re.sub(r'(Message type )?"?modelroute\.config\.v1\.(\w+)"?', r"\2", text)


def _require_id(field: str, value: str) -> None:
    if not ID_PATTERN.match(value):
        raise ConfigValueError(f"field {field!r}: {value!r} is not a valid id")


def _require_ratio(field: str, value: float) -> None:
    if not (0.0 <= value <= 1.0) or math.isnan(value):
        raise ConfigValueError(f"field {field!r}: {value} must be between 0 and 1")


def _validate_model(key: ConfigKey, m: Message) -> None:
    assert isinstance(m, config_pb2.Model)
    if not m.provider:
        raise ConfigValueError('field \'provider\' is required (e.g. "google", "openai")')
    _require_id("provider", m.provider)
    for price_field in ("input_usd_per_mtok", "output_usd_per_mtok"):
        price = getattr(m, price_field)
        if not math.isfinite(price) or price < 0:
            raise ConfigValueError(f"field {price_field!r}: {price} must be a price >= 0")
    for tier in m.tiers:
        _require_id("tiers", tier)


def _validate_context(key: ConfigKey, m: Message) -> None:
    assert isinstance(m, config_pb2.Context)
    if not m.model:
        raise ConfigValueError("field 'model' is required")
    for model in [m.model, *m.fallbacks]:
        _require_id("model" if model == m.model else "fallbacks", model)
    if m.HasField("budget"):
        if not math.isfinite(m.budget.usd_per_day) or m.budget.usd_per_day < 0:
            raise ConfigValueError("field 'budget.usd_per_day' must be >= 0")
        _require_ratio("budget.warn_ratio", m.budget.warn_ratio)


def _validate_experiment(key: ConfigKey, m: Message) -> None:
    assert isinstance(m, config_pb2.Experiment)
    if not m.context:
        raise ConfigValueError("field 'context' is required")
    if not m.variants:
        raise ConfigValueError("field 'variants' needs at least one variant")
    seen: set[str] = set()
    for variant in m.variants:
        _require_id("variants.id", variant.id)
        if variant.id in seen:
            raise ConfigValueError(f"variant id {variant.id!r} appears twice")
        seen.add(variant.id)
        _require_id("variants.model", variant.model)
        if variant.weight > 100:
            raise ConfigValueError(f"variant {variant.id!r}: weight {variant.weight} is over 100")
    total = sum(v.weight for v in m.variants)
    if total != 100:
        raise ConfigValueError(f"variant weights sum to {total}; they must sum to 100")
    if m.HasField("start") and m.HasField("end") and m.end.ToDatetime() <= m.start.ToDatetime():
        raise ConfigValueError("'end' must be after 'start'")


def _validate_override(key: ConfigKey, m: Message) -> None:
    assert isinstance(m, config_pb2.Override)
    if not m.model:
        raise ConfigValueError("field 'model' is required")
    _require_id("model", m.model)


def _validate_provider(key: ConfigKey, m: Message) -> None:
    assert isinstance(m, config_pb2.Provider)
    _require_ratio("warn_ratio", m.warn_ratio)


def _validate_settings(key: ConfigKey, m: Message) -> None:
    assert isinstance(m, config_pb2.Settings)
    if m.default_model:
        _require_id("default_model", m.default_model)
    for model in m.default_fallbacks:
        _require_id("default_fallbacks", model)
    if m.HasField("rollout_check_seconds") and m.rollout_check_seconds < 1:
        raise ConfigValueError("field 'rollout_check_seconds' must be at least 1 (default 60)")
    if m.HasField("history_days") and m.history_days == 0:
        raise ConfigValueError("field 'history_days' must be at least 1 (absent: 90)")
    if m.alert_webhook_url and not re.match(r"^https?://", m.alert_webhook_url):
        raise ConfigValueError("field 'alert_webhook_url' must be an http(s) URL")


# `clients/<name>.allowed_contexts`: context characters plus the glob characters `* ? [ ] !`.
CONTEXT_GLOB_PATTERN: Final = re.compile(r"^[A-Za-z0-9._:/*?\[\]!-]{1,128}$")
SHA256_HEX_PATTERN: Final = re.compile(r"^[0-9a-fA-F]{64}$")


def _validate_client(key: ConfigKey, m: Message) -> None:
    assert isinstance(m, config_pb2.Client)
    if not SHA256_HEX_PATTERN.match(m.key_sha256):
        # Never echo the value: an operator may have pasted the key itself by mistake.
        raise ConfigValueError(
            "field 'key_sha256' must be the 64-character hex SHA-256 of the API key "
            '(printf %s "$KEY" | sha256sum), not the key itself'
        )
    for pattern in m.allowed_contexts:
        if not CONTEXT_GLOB_PATTERN.match(pattern):
            raise ConfigValueError(
                f"field 'allowed_contexts': {pattern[:140]!r} is not a context name or glob "
                "(letters, digits, . _ : / - and * ? [ ] !)"
            )


# Guardrail metrics where lower is worse (bound: max_decrease); the others are costs
# where higher is worse (bound: max_increase or max_relative_increase).
HIGHER_IS_BETTER_METRICS: Final = frozenset(
    {config_pb2.GUARDRAIL_METRIC_QUALITY, config_pb2.GUARDRAIL_METRIC_THUMBS_UP_RATE}
)


def _validate_rollout(key: ConfigKey, m: Message) -> None:
    assert isinstance(m, config_pb2.Rollout)
    if not m.context:
        raise ConfigValueError("field 'context' is required")
    if not m.candidate:
        raise ConfigValueError("field 'candidate' is required (the model rolled out)")
    _require_id("candidate", m.candidate)
    if not m.steps:
        raise ConfigValueError("field 'steps' needs at least one step, e.g. [{\"percent\": 100}]")
    previous = 0
    for index, step in enumerate(m.steps):
        if not 1 <= step.percent <= 100:
            raise ConfigValueError(f"steps[{index}].percent is {step.percent}; use 1..100")
        if step.percent <= previous:
            raise ConfigValueError(
                f"steps[{index}].percent {step.percent} does not increase "
                f"(the step before is {previous}); percents must strictly increase"
            )
        previous = step.percent
    for index, guardrail in enumerate(m.guardrails):
        _validate_guardrail(index, guardrail)


def _validate_guardrail(index: int, g: config_pb2.Guardrail) -> None:
    where = f"guardrails[{index}]"
    if g.metric == config_pb2.GUARDRAIL_METRIC_UNSPECIFIED:
        raise ConfigValueError(
            f"{where}.metric is required: ERROR_RATE, P95_LATENCY_MS, COST_PER_CALL, "
            "QUALITY or THUMBS_UP_RATE"
        )
    metric = config_pb2.GuardrailMetric.Name(g.metric).removeprefix("GUARDRAIL_METRIC_")
    bounds = [b for b in ("max_increase", "max_relative_increase", "max_decrease") if g.HasField(b)]
    if len(bounds) != 1:
        raise ConfigValueError(
            f"{where} ({metric}) needs exactly one bound: max_increase, "
            f"max_relative_increase or max_decrease (has {len(bounds) or 'none'})"
        )
    bound = bounds[0]
    value = getattr(g, bound)
    if not math.isfinite(value) or value < 0:
        raise ConfigValueError(f"{where}.{bound} is {value}; use a number >= 0")
    wants_decrease = g.metric in HIGHER_IS_BETTER_METRICS
    if wants_decrease != (bound == "max_decrease"):
        allowed = "max_decrease" if wants_decrease else "max_increase or max_relative_increase"
        raise ConfigValueError(f"{where} ({metric}) is bounded by {allowed}, not {bound}")


VALIDATORS: Final = {
    "models": _validate_model,
    "contexts": _validate_context,
    "experiments": _validate_experiment,
    "overrides": _validate_override,
    "providers": _validate_provider,
    "settings": _validate_settings,
    "clients": _validate_client,
    "rollouts": _validate_rollout,
}


def to_json(message: Message) -> str:
    """Canonical JSON for a value (snake_case names, as operators write them)."""
    return json_format.MessageToJson(
        message, preserving_proto_field_name=True, indent=None, sort_keys=True
    )
