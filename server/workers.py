"""`modelroute serve --workers N`: N worker processes sharing the gRPC port (SO_REUSEPORT).

Python serves one core per process, so a machine's cores are used by running several
complete replicas on one port; the kernel spreads new connections over them. Each worker is
a full replica (its own etcd watch, quota reservations, cooldowns, usage writer): nothing new
is shared between them, and everything that keeps replicas consistent keeps workers
consistent. This parent process only prepares what must exist once and supervises:

- the embedded etcd (when no `--etcd-endpoints`), the database schema, and the decision-token
  key file (so every worker signs with the same key from its first call);
- one admin HTTP listener (dashboard, admin API, /metrics), run by worker 0;
- a worker that exits unexpectedly (crash, `kill -9`) is started again; what it had
  acknowledged is already committed (ReportUsage answers after its rows are committed);
- SIGTERM / SIGINT: every worker drains (in-flight calls finish, the usage queue is
  written), then the parent exits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import time
from multiprocessing.process import BaseProcess
from typing import Final

from modelroute.storage.embedded_etcd import EmbeddedEtcd
from modelroute.storage.instance_file import remove_instance

from .app import ServeOptions

log = logging.getLogger("modelroute.workers")
RESTART_BACKOFF_MAX: Final = 5.0  # seconds; a worker that keeps dying is restarted slower
HEALTHY_AFTER: Final = 10.0  # seconds alive before a worker's restart backoff resets


def worker_count(text: str) -> int:
    """`auto` (one per core this process may run on) or a positive number."""
    if text.strip().lower() == "auto":
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # not Linux
            return max(1, os.cpu_count() or 1)
    count = int(text)
    if count < 1:
        raise ValueError("--workers must be at least 1 (or auto)")
    return count


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def run_worker(options: ServeOptions, log_level: str) -> None:
    """A worker's entry point (a fresh interpreter: multiprocessing's spawn)."""
    from functools import partial

    from .process import publish_instance, run_event_loop, serve_until_signalled

    logging.basicConfig(
        level=log_level.upper(),
        format=f"%(asctime)s %(levelname)s [worker {options.worker_name}] %(name)s: %(message)s",
    )
    # Worker 0 (the one with the admin listener) describes the whole server for the CLI, in
    # the parent's name: the file outlives a worker restart and goes when the parent stops.
    publish = (
        partial(publish_instance, pid=options.parent_pid) if options.worker_name == "0" else None
    )
    run_event_loop(serve_until_signalled(options, on_serving=publish), options.event_loop)


@dataclasses.dataclass
class _Worker:
    index: int
    process: BaseProcess
    started: float
    failures: int = 0


class Supervisor:
    def __init__(self, options: ServeOptions, workers: int, log_level: str = "INFO") -> None:
        self.options = options
        self.count = workers
        self.log_level = log_level
        self._context = multiprocessing.get_context("spawn")
        self._workers: dict[int, _Worker] = {}
        self._stopping = False
        self.restarts = 0

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; returns the exit code."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        embedded = self._prepare()
        try:
            for index in range(self.count):
                self._start(index)
            log.info(
                "started %d workers for gRPC port %s:%d (pids %s)",
                self.count,
                self.options.host,
                self.options.port,
                ", ".join(str(w.process.pid) for w in self._workers.values()),
            )
            self._supervise()
        finally:
            self._stop_all()
            remove_instance(self.options.data_dir, os.getpid())
            if embedded is not None:
                embedded.stop()
        return 0

    def _prepare(self) -> EmbeddedEtcd | None:
        """What must exist once, before any worker starts."""
        from modelroute.storage.database import default_sqlite_url, upgrade

        from .runtime.decision_keys import load_local_key, save_local_key

        options = self.options
        options.data_dir.mkdir(parents=True, exist_ok=True)
        if options.port == 0:
            options.port = _free_port(options.host)  # every worker must bind the same one
        embedded = None
        if not options.etcd_endpoints:
            embedded = EmbeddedEtcd(options.data_dir / "etcd")
            embedded.start()
            options.etcd_endpoints = embedded.endpoint
            if options.seed is None:
                options.seed = True  # what one embedded-etcd server does
        upgrade(options.database_url or default_sqlite_url(options.data_dir))
        key_file = options.data_dir / "decision-key"
        if load_local_key(key_file) is None:
            from .core.decision_token import new_key

            save_local_key(key_file, new_key())
        return embedded

    def _start(self, index: int, failures: int = 0) -> None:
        worker_options = dataclasses.replace(
            self.options,
            worker_name=str(index),
            parent_pid=os.getpid(),
            reuse_port=True,
            # One admin HTTP listener for the whole server: worker 0's.
            admin_port=self.options.admin_port if index == 0 else None,
        )
        process = self._context.Process(
            target=run_worker,
            args=(worker_options, self.log_level),
            name=f"modelroute-worker-{index}",
        )
        process.start()
        self._workers[index] = _Worker(index, process, time.monotonic(), failures)

    def _supervise(self) -> None:
        while not self._stopping:
            sentinels = {w.process.sentinel: w for w in self._workers.values()}
            ready = multiprocessing.connection.wait(list(sentinels), timeout=0.5)
            for sentinel in ready:
                worker = sentinels[sentinel]  # type: ignore[index]
                if self._stopping:
                    break
                self._restart(worker)

    def _restart(self, worker: _Worker) -> None:
        worker.process.join(5)  # the sentinel can fire just before the exit is reapable
        alive = time.monotonic() - worker.started
        failures = 0 if alive >= HEALTHY_AFTER else worker.failures + 1
        delay = min(RESTART_BACKOFF_MAX, 0.1 * 2**failures) if failures else 0.0
        log.error(
            "worker %d (pid %s) exited with %s after %.1f s; restarting it%s",
            worker.index,
            worker.process.pid,
            worker.process.exitcode,
            alive,
            f" in {delay:.1f} s" if delay else "",
        )
        if delay:
            deadline = time.monotonic() + delay
            while not self._stopping and time.monotonic() < deadline:
                time.sleep(0.05)
            if self._stopping:
                return
        self.restarts += 1
        self._start(worker.index, failures)

    def _on_signal(self, signum: int, frame: object) -> None:
        log.info("signal %d: draining every worker", signum)
        self._stopping = True

    def _stop_all(self) -> None:
        workers = list(self._workers.values())
        for worker in workers:
            if worker.process.is_alive() and worker.process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.options.shutdown_grace_seconds + 20
        for worker in workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                log.error("worker %d did not stop in time; killing it", worker.index)
                worker.process.kill()
                worker.process.join(5)
        log.info("all workers stopped")
