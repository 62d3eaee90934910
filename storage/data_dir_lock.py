"""One `modelroute serve` per data dir: an exclusive lock on `<data_dir>/modelroute.lock`.

The embedded etcd, its endpoint file and the last-good config in a data dir belong to one
running instance. A second instance must say so at once instead of starting a second etcd
on the same files (and, on its way out, removing the first one's endpoint file).

The lock is an `fcntl.flock` on an open file: the kernel releases it when the process ends,
however it ends, so a crashed instance never leaves a stale lock behind. The file holds the
holder's pid and addresses, for the message; it is never deleted (deleting a lock file
lets two processes lock two different files of the same name).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path
from typing import IO

LOCK_NAME = "modelroute.lock"


class AlreadyRunningError(RuntimeError):
    """Another live process holds the data dir."""

    def __init__(self, data_dir: Path, pid: int | None, grpc_address: str | None) -> None:
        self.data_dir = data_dir
        self.pid = pid
        self.grpc_address = grpc_address
        who = ", ".join(
            part
            for part in (
                f"pid {pid}" if pid else "",
                f"gRPC {grpc_address}" if grpc_address else "still starting",
            )
            if part
        )
        super().__init__(
            f"modelroute is already running here ({who}); use --data-dir for a second instance"
        )


class DataDirLock:
    """One server per data dir: an exclusive lock on `<data-dir>/modelroute.lock`."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.path = data_dir / LOCK_NAME
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        """Take the lock or raise AlreadyRunningError naming the holder (never waits)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # "a+": open without truncating, so a refused instance leaves the holder's details.
        handle = self.path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(self.path)
            handle.close()
            pid, grpc_address = holder.get("pid"), holder.get("grpc")
            raise AlreadyRunningError(
                self.data_dir,
                pid if isinstance(pid, int) else None,
                grpc_address if isinstance(grpc_address, str) else None,
            ) from None
        self._file = handle
        self._write({"pid": os.getpid()})

    def describe(self, grpc_address: str, admin_address: str | None = None) -> None:
        """Record where this instance serves, once its ports are bound."""
        details: dict[str, object] = {"pid": os.getpid(), "grpc": grpc_address}
        if admin_address:
            details["admin"] = admin_address
        self._write(details)

    def release(self) -> None:
        """Give the lock up (the file stays, naming nobody)."""
        if self._file is None:
            return
        with contextlib.suppress(OSError):
            self._file.truncate(0)
        self._file.close()  # closing releases the lock
        self._file = None

    def _write(self, details: dict[str, object]) -> None:
        assert self._file is not None
        self._file.seek(0)
        self._file.truncate(0)
        self._file.write(json.dumps(details) + "\n")
        self._file.flush()


def _read_holder(path: Path) -> dict[str, object]:
    try:
        details = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return details if isinstance(details, dict) else {}
