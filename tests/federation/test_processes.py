"""The process supervisor of `federate local`: every started process and its children stop."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import pytest

from feds2r.federation.processes import Supervisor, descendants, free_port, is_zombie

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists() and not is_zombie(pid)


def test_stop_ends_the_processes_and_their_children(tmp_path):
    (tmp_path / "logs").mkdir()
    sup = Supervisor(tmp_path, env={"PATH": "/usr/bin:/bin"})
    # a child that starts a grandchild in a session of its own, as Flower's helpers do
    script = "import subprocess, time; subprocess.Popen(['sleep', '60'], start_new_session=True)"
    proc = sup.start("parent", [sys.executable, "-c", f"{script}; print('up', flush=True); "
                                "time.sleep(60)"])  # fmt: skip
    log = tmp_path / "logs" / "parent.log"
    deadline = time.monotonic() + 20
    while log.read_text() != "up\n" and time.monotonic() < deadline:  # the grandchild started
        time.sleep(0.05)
    family = [proc.pid, *descendants(proc.pid)]
    try:
        assert len(family) == 2 and all(alive(p) for p in family)
    finally:
        sup.stop()
    assert not any(alive(p) for p in family)


def test_free_port_can_be_bound():
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", port))
