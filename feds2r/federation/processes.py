"""A supervisor of local processes, independent of what they run: start each in its own session
with its output in a log file, and stop every one of them and everything they started.

Every process starts in its own session, and on Linux the kernel is told to kill it when the
supervising process dies without its cleanup (``PR_SET_PDEATHSIG``). :meth:`Supervisor.stop`
ends each process by its id, its process group and every descendant found under ``/proc``
(SIGTERM, then SIGKILL), since some programs start helpers in sessions of their own.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from feds2r.signals import signals_deferred


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Supervisor:
    """The processes started in ``home`` (logs in ``home/logs``); :meth:`stop` ends each one by
    its process id."""

    home: Path
    env: dict[str, str]
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start(
        self, name: str, args: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen:
        """Start ``args`` in its own session; Linux kills it if this process dies uncleanly."""
        log = open(self.home / "logs" / f"{name}.log", "wb")  # noqa: SIM115 (closed in stop)
        with signals_deferred():  # a cancellation never finds a started process unrecorded
            proc = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env or self.env,
                cwd=self.home,
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )
            proc.log = log  # type: ignore[attr-defined]
            self.procs[name] = proc
        return proc

    def stop(self) -> None:
        """End every started process and everything they started (SIGTERM, then SIGKILL)."""
        pids = []
        for proc in self.procs.values():
            pids += descendants(proc.pid)
        for proc in reversed(list(self.procs.values())):
            if proc.poll() is None:
                _signal_group(proc.pid, signal.SIGTERM)
        for pid in pids:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait()
            proc.log.close()  # type: ignore[attr-defined]
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if Path(f"/proc/{p}").exists() and not is_zombie(p)]
            time.sleep(0.1)
        for pid in pids:
            _signal(pid, signal.SIGKILL)


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to SIGKILL the child when the supervisor dies without its
    cleanup, as by ``kill -9`` (``prctl(PR_SET_PDEATHSIG)``); None elsewhere. SIGKILL, not
    SIGTERM: a Flower SuperLink with a run under way does not exit on SIGTERM within seconds.
    libc is looked up before the fork."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig = ctypes.c_int(1)
    sigkill = ctypes.c_ulong(int(signal.SIGKILL))
    zero = ctypes.c_ulong(0)

    def preexec() -> None:
        prctl(pr_set_pdeathsig, sigkill, zero, zero, zero)

    return preexec


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def is_zombie(pid: int) -> bool:
    """Whether ``pid`` has exited and waits to be reaped (or is gone: Linux /proc)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def descendants(pid: int) -> list[int]:
    """Process ids below ``pid`` (Linux /proc; empty elsewhere). Some programs start helpers in
    their own sessions, which a process-group signal would miss."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found
