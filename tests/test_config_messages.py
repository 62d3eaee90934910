"""What an operator reads when a config file has a typo: names as the YAML spells them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def validate(file: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelroute.server.cli", "config", "validate", "-f", str(file)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_an_unknown_field_is_named_and_corrected_in_snake_case(tmp_path: Path) -> None:
    file = tmp_path / "change.yaml"
    file.write_text(
        "contexts:\n"
        "  reranker: {model: gpt-4o, user_selectible: true}\n"
        "  summary: {model: gpt-4o, budget: {usd_per_day: 3, on_exceded: DENY}}\n"
    )
    result = validate(file)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert (
        "contexts/reranker: unknown field 'user_selectible'; did you mean 'user_selectable'?"
        in output
    )
    assert "unknown field 'budget.on_exceded'; did you mean 'on_exceeded'?" in output
    assert "user_selectable, budget" in output  # the fields it has, as YAML spells them
    assert "userSelectable" not in output and "onExceeded" not in output


def test_camel_case_spelling_is_still_accepted(tmp_path: Path) -> None:
    bootstrap = (Path(__file__).parent.parent / "config" / "bootstrap.yaml").read_text()
    assert "user_selectable: true" in bootstrap
    file = tmp_path / "camel.yaml"
    file.write_text(bootstrap.replace("user_selectable: true", "userSelectable: true"))
    result = validate(file)
    assert result.returncode == 0, result.stdout + result.stderr
