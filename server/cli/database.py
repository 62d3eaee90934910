"""`modelroute db`: the database schema."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .discovery import DATA_DIR_ENV, data_dir_named

app = typer.Typer(help="Database schema.", no_args_is_help=True)


@app.command("upgrade")
def db_upgrade(
    database_url: Annotated[
        str | None,
        typer.Option(envvar="MODELROUTE_DATABASE_URL", help="Default: SQLite in --data-dir."),
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(envvar=DATA_DIR_ENV, help="Default: .modelroute")
    ] = None,
) -> None:
    """Apply database migrations up to the latest schema."""
    from modelroute.storage.database import default_sqlite_url, upgrade

    url = database_url or default_sqlite_url(data_dir_named(data_dir))
    upgrade(url)
    typer.echo(f"database at {url.split('@')[-1]} is up to date")
