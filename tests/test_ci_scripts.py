"""The CI helper scripts clean up after themselves (a CI run must not leave ~90 MB behind)."""

from __future__ import annotations

import glob
import os
import subprocess
from pathlib import Path

import pytest
import sqlalchemy

ROOT = Path(__file__).parent.parent


@pytest.mark.slow
def test_the_ci_postgres_is_stopped_and_its_data_directory_removed() -> None:
    if not glob.glob("/usr/lib/postgresql/*/bin/initdb") or os.geteuid() != 0:
        pytest.skip("needs Debian's postgresql and root (as in .ci/run)")
    started = subprocess.run(
        ["bash", str(ROOT / ".ci" / "postgres.sh")],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    url, data_dir = started.stdout.split()
    try:
        engine = sqlalchemy.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
        with engine.connect() as connection:
            assert connection.execute(sqlalchemy.text("SELECT 1")).scalar() == 1
        engine.dispose()
        assert Path(data_dir).is_dir()
    finally:
        stopped = subprocess.run(
            ["bash", str(ROOT / ".ci" / "postgres.sh"), "stop", data_dir],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert stopped.returncode == 0, stopped.stderr
    assert not Path(data_dir).exists()
