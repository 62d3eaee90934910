"""`modelroute serve` as a user runs it (`make run`): real processes with the embedded
etcd in a data dir."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from modelroute.v1 import router_pb2, router_pb2_grpc

from tests.helpers import ServerProcess

pytestmark = pytest.mark.slow
# A second instance must answer at once; before the fix it waited ~60 s for its etcd.
SECOND_INSTANCE_BOUND_SECONDS = 30
SERVE = [sys.executable, "-m", "modelroute.server.cli", "serve"]


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie nobody reaped has ended


def resolves(port: int) -> str:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = router_pb2_grpc.ModelRouterServiceStub(channel)
        reply = stub.ResolveModel(router_pb2.ResolveModelRequest(context="rag.answer"), timeout=5)
        return reply.model_id


def test_a_second_serve_in_the_same_data_dir_refuses_at_once_and_touches_nothing(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    first = ServerProcess(["--data-dir", str(data_dir)])
    try:
        endpoint_file = data_dir / "etcd.endpoint"
        endpoint = endpoint_file.read_text()
        second = subprocess.Popen(
            [*SERVE, "--port", "0", "--admin-port", "0", "--data-dir", str(data_dir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            process_group=0,  # on a hang, kill it with whatever it started
        )
        try:
            output, _ = second.communicate(timeout=SECOND_INSTANCE_BOUND_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(second.pid, signal.SIGKILL)
            output, _ = second.communicate()
            pytest.fail(f"the second instance did not give up at once:\n{output}")
        assert second.returncode != 0, output
        assert (
            f"modelroute is already running here (pid {first.process.pid}, "
            f"gRPC 127.0.0.1:{first.port}); use --data-dir for a second instance"
        ) in output
        assert "Traceback" not in output
        # The running instance keeps its etcd endpoint file and keeps serving.
        assert endpoint_file.read_text() == endpoint
        assert resolves(first.port) == "gemini-3-flash-preview"
    finally:
        assert first.stop() == 0


@pytest.mark.parametrize("event_loop", ["uvloop", "asyncio"])
def test_ctrl_c_stops_the_server_before_its_embedded_etcd(tmp_path: Path, event_loop: str) -> None:
    server = ServerProcess(
        ["--data-dir", str(tmp_path / "data"), "--event-loop", event_loop], own_group=True
    )
    assert resolves(server.port) == "gemini-3-flash-preview"
    os.killpg(server.process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    assert server.wait() == 0, "".join(server.output)
    output = "".join(server.output)
    assert "modelroute stopped" in output
    assert "etcd unreachable" not in output.lower(), output
    assert "Traceback" not in output, output


def test_a_crashed_servers_embedded_etcd_is_replaced_on_the_next_start(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    crashed = ServerProcess(["--data-dir", str(data_dir)])
    etcd_pid = int((data_dir / "etcd.pid").read_text())
    crashed.process.kill()  # no shutdown: its etcd (a session of its own) lives on
    crashed.process.wait()
    assert running(etcd_pid)

    restarted = ServerProcess(["--data-dir", str(data_dir)])
    try:
        assert resolves(restarted.port) == "gemini-3-flash-preview"
        assert int((data_dir / "etcd.pid").read_text()) != etcd_pid
        assert not running(etcd_pid)  # the orphan was stopped, not left beside ours
    finally:
        assert restarted.stop() == 0


def test_an_unknown_event_loop_is_refused_before_anything_starts(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    result = subprocess.run(
        [*SERVE, "--port", "0", "--data-dir", str(data_dir), "--event-loop", "trio"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "--event-loop must be one of uvloop, asyncio" in result.stdout + result.stderr
    assert not data_dir.exists()  # no embedded etcd was started
