"""`modelroute`: run the service and operate it (typer).

One module per command group; each registers here. Commands that talk to the server take
the connection options of `connection.py` and find the server by the rule of
`discovery.py`. A new group is one module with a `typer.Typer` and one line below.
"""

from __future__ import annotations

import warnings
from typing import TextIO

import typer

from . import (
    analysis,
    config,
    cooldowns,
    database,
    history,
    overrides,
    rollouts,
    routing,
    serve,
    status,
)
from .discovery import DEPRECATED_SERVER_ENV
from .output import warn

app = typer.Typer(
    help="modelroute: decide which LLM model every request uses.", no_args_is_help=True
)
app.command()(serve.serve)
app.command()(routing.resolve)
app.command()(status.quotas)
app.command()(status.alerts)
app.command()(analysis.usage)
history.register(config.app)
app.add_typer(config.app, name="config")
app.add_typer(overrides.app, name="override")
app.add_typer(analysis.experiments_app, name="experiments")
app.add_typer(cooldowns.app, name="cooldown")
app.add_typer(rollouts.rollout_app, name="rollout")
app.add_typer(database.app, name="db")


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    warn(str(message))


def main() -> None:
    """The `modelroute` console script."""
    # Shown to the person at the terminal, one line each (Python hides DeprecationWarnings
    # by default, and prints source lines meant for developers).
    warnings.filterwarnings(
        "default", message=f"{DEPRECATED_SERVER_ENV} is deprecated", category=DeprecationWarning
    )
    warnings.showwarning = _show_warning
    app()
