"""Shared output of the CLI: errors, JSON, tables and number formats."""

from __future__ import annotations

import json
from typing import Any

import typer
from google.protobuf import json_format
from google.protobuf.message import Message


def failure(message: str, code: int = 1) -> typer.Exit:
    """Print `message` in red on stderr; the caller raises the returned exit (`code`)."""
    typer.secho(message, fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def warn(message: str) -> None:
    """Print a warning on stderr (the command goes on)."""
    typer.secho(f"warning: {message}", fg=typer.colors.YELLOW, err=True)


def message_dict(message: Message) -> dict[str, Any]:
    """A protobuf message as a dict with the field names of the .proto (snake_case)."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def to_json(message: Message) -> str:
    return json.dumps(message_dict(message), indent=2)


def print_diff(diff: list[str]) -> None:
    """A config diff (`--- key (label)` headers, +/- lines) in colour."""
    for line in diff:
        color = {"+": typer.colors.GREEN, "-": typer.colors.RED}.get(line[:1])
        typer.secho(line, fg=typer.colors.CYAN if line.startswith("---") else color)


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Left-aligned columns separated by two spaces, headers first."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def when(stamp: Any) -> str:
    """A protobuf Timestamp as `YYYY-MM-DD HH:MM:SSZ`; `-` when unset."""
    return stamp.ToDatetime().strftime("%Y-%m-%d %H:%M:%SZ") if stamp.seconds else "-"


def ms(value: float) -> str:
    return f"{value:.0f}"


def usd(value: float) -> str:
    return f"{value:.4f}" if value < 1 else f"{value:.2f}"


def p_value(value: float) -> str:
    return f"{value:.2g}" if value < 0.001 else f"{value:.3f}"
