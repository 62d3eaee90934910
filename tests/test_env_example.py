"""`.env.example` lists every environment variable the server, CLI and SDKs read, each with
a one-line comment right above it. Found by scanning the sources, so a new variable cannot
be forgotten."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Where variables are read: Python (os.environ / typer envvar), TypeScript, Go.
READS = re.compile(
    r"""(?:environ\.get\(|environ\[|getenv\(|envvar=|env\.get\(|process\.env\[|Getenv\(|LookupEnv\()"""
    r"""\s*["']([A-Z][A-Z0-9_]+)["']"""
)
SOURCES = [
    *ROOT.glob("server/**/*.py"),
    *ROOT.glob("storage/**/*.py"),
    *ROOT.glob("clients/python/modelroute/client/*.py"),
    *ROOT.glob("clients/typescript/src/*.ts"),
    *ROOT.glob("clients/typescript/test/*.ts"),
    *ROOT.glob("clients/go/*.go"),
    ROOT / "tests" / "conftest.py",
]


# Names kept in a constant first, e.g. `ADMIN_TOKENS_ENV: Final = "MODELROUTE_ADMIN_TOKENS"`.
NAMED = re.compile(r"""_ENV(?:: Final)? = ["']([A-Z][A-Z0-9_]+)["']""")


def variables_read() -> set[str]:
    found: set[str] = set()
    for source in SOURCES:
        text = source.read_text()
        found.update(READS.findall(text))
        found.update(NAMED.findall(text))
    return found


def listed() -> dict[str, str]:
    """Variable → the comment line right above it."""
    lines = (ROOT / ".env.example").read_text().splitlines()
    out = {}
    for index, line in enumerate(lines):
        match = re.match(r"([A-Z][A-Z0-9_]*)=", line)
        if match:
            above = lines[index - 1] if index else ""
            assert above.startswith("# "), f"{match.group(1)} has no comment line above it"
            out[match.group(1)] = above
    return out


def test_every_variable_read_is_listed_with_a_comment() -> None:
    read = variables_read()
    assert {"MODELROUTE_API_KEY", "OTEL_EXPORTER_OTLP_ENDPOINT", "MODELROUTE_URL"} <= read
    assert {"MODELROUTE_ADMIN_TOKENS", "MODELROUTE_HTTP_CORS_ORIGINS"} <= read
    missing = sorted(read - set(listed()))
    assert not missing, f"add to .env.example (with a comment): {missing}"


def test_env_pins_are_explained() -> None:
    pins = [name for name in listed() if name.startswith("MODEL_")]
    assert pins, "an example MODEL_<CONTEXT> pin"
    assert "MODEL_<CONTEXT>" in (ROOT / ".env.example").read_text()
