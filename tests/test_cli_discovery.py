"""How the CLI finds the server and its etcd: flag, env, then the running server of the
named data dir; a clear error otherwise, never a guessed address (issue 16, bug 3)."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest
from google.protobuf import duration_pb2
from modelroute.client import AsyncModelRouter
from modelroute.server.cli.discovery import (
    DiscoveryError,
    find_etcd,
    find_server,
)
from modelroute.server.process import publish_instance
from modelroute.storage.instance_file import InstanceInfo, read_instance, write_instance
from modelroute.v1 import router_pb2, types_pb2

from tests.helpers import Running, run_cli


async def start_cooldown(server: Running) -> None:
    """A rate-limit report: the model cools down on every replica (an etcd lease)."""
    report = router_pb2.UsageReport(
        report_id="cd1",
        context="rag.answer",
        model_id="gemini-3-flash-preview",
        outcome=types_pb2.OUTCOME_QUOTA_EXCEEDED,
        retry_after=duration_pb2.Duration(seconds=300),
    )
    await server.router.ReportUsage(router_pb2.ReportUsageRequest(reports=[report]))


async def test_cooldown_list_from_another_directory_reads_the_named_data_dirs_etcd(
    server: Running, tmp_path: Path
) -> None:
    # The server runs on its own etcd prefix; it publishes itself in its data dir.
    publish_instance(server.server)
    data_dir = server.server.options.data_dir
    await start_cooldown(server)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    listed = await run_cli(
        "cooldown", "list", etcd="", prefix="", cwd=elsewhere,
        env={"MODELROUTE_DATA_DIR": str(data_dir)},
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["models/gemini-3-flash-preview"]["reason"] == "QUOTA_EXCEEDED"

    # With --data-dir too, and the admin RPCs find the same server.
    status = await run_cli(
        "config", "status", "--data-dir", str(data_dir), etcd="", prefix="", cwd=elsewhere
    )
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["etcd_connected"] is True


async def test_without_a_named_server_commands_say_so_instead_of_guessing(
    server: Running, tmp_path: Path
) -> None:
    await start_cooldown(server)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for command in (("cooldown", "list"), ("config", "get"), ("resolve", "rag.answer")):
        result = await run_cli(*command, etcd="", prefix="", cwd=elsewhere)
        assert result.returncode == 2, (command, result.stdout)
        assert result.stdout == ""  # no `{}` from somebody else's etcd
        assert "no modelroute server found" in result.stderr
        assert str(elsewhere / ".modelroute") in result.stderr
        assert "--data-dir" in result.stderr


async def test_a_stopped_servers_file_is_not_trusted(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    gone = InstanceInfo(
        pid=2**22 + 12345,  # above Linux's default pid_max: no such process
        grpc_address="127.0.0.1:1",
        tls=False,
        etcd_endpoints="127.0.0.1:2",
        etcd_prefix="/modelroute/",
    )
    write_instance(data_dir, gone)
    result = await run_cli("cooldown", "list", "--data-dir", str(data_dir), etcd="", prefix="")
    assert result.returncode == 2
    assert "is not running" in result.stderr and str(gone.pid) in result.stderr


def test_discovery_order_flag_then_env_then_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    write_instance(
        data_dir,
        InstanceInfo(
            pid=os.getpid(),
            grpc_address="127.0.0.1:7001",
            tls=True,
            etcd_endpoints="127.0.0.1:7002",
            etcd_prefix="/custom/",
        ),
    )
    env = {"MODELROUTE_DATA_DIR": str(data_dir)}
    assert find_server("h:1", None, env).address == "h:1"
    assert find_server(None, None, env | {"MODELROUTE_TARGET": "h:2"}).address == "h:2"
    found = find_server(None, None, env)
    assert (found.address, found.tls) == ("127.0.0.1:7001", True)
    assert find_server(None, data_dir, {}).address == "127.0.0.1:7001"
    etcd = find_etcd(None, None, data_dir, {})
    assert (etcd.endpoints, etcd.prefix) == ("127.0.0.1:7002", "/custom/")
    assert find_etcd("e:1", "/p/", data_dir, {}).endpoints == "e:1"
    assert find_etcd(None, None, None, {"MODELROUTE_ETCD_ENDPOINTS": "e:2"}).endpoints == "e:2"
    with pytest.raises(DiscoveryError, match="no modelroute server found"):
        find_server(None, tmp_path / "empty", {})


def test_the_old_server_variable_still_works_with_a_deprecation_warning() -> None:
    with pytest.warns(DeprecationWarning, match="MODELROUTE_SERVER is deprecated"):
        assert find_server(None, None, {"MODELROUTE_SERVER": "h:3"}).address == "h:3"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new name: no warning
        assert find_server(None, None, {"MODELROUTE_TARGET": "h:4"}).address == "h:4"


async def test_cli_warns_about_the_old_variable_and_uses_it(server: Running) -> None:
    result = await run_cli(
        "resolve", "rag.answer", etcd="", prefix="", env={"MODELROUTE_SERVER": server.address}
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["model_id"] == "gemini-3-flash-preview"
    assert "MODELROUTE_SERVER is deprecated; set MODELROUTE_TARGET" in result.stderr


def test_python_sdk_reads_the_same_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODELROUTE_TARGET", raising=False)
    monkeypatch.setenv("MODELROUTE_SERVER", "old-name:1")
    with pytest.warns(DeprecationWarning, match="MODELROUTE_SERVER is deprecated"):
        assert AsyncModelRouter().target == "old-name:1"
    monkeypatch.setenv("MODELROUTE_TARGET", "new-name:2")
    assert AsyncModelRouter().target == "new-name:2"


async def test_server_process_publishes_itself_and_removes_the_file_on_exit(
    tmp_path: Path,
) -> None:
    from tests.helpers import ServerProcess

    data_dir = tmp_path / "data"
    process = ServerProcess(["--data-dir", str(data_dir)])
    try:
        info = read_instance(data_dir)
        assert info is not None and info.pid == process.process.pid
        assert info.grpc_address == f"127.0.0.1:{process.port}"
        result = await run_cli(
            "resolve", "rag.answer", "--data-dir", str(data_dir), etcd="", prefix="", cwd=tmp_path
        )
        assert result.returncode == 0, result.stderr
    finally:
        assert process.stop() == 0
    assert read_instance(data_dir) is None
