"""`feds2r federate local`: a real SuperLink and SuperNodes on 127.0.0.1, over Flower."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from feds2r.federation.processes import descendants, is_zombie
from tests.federation.conftest import TINY_FLAGS, tiny_config

pytest.importorskip("flwr")

HERE = Path(__file__).parent


def federate(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "feds2r.cli", "federate", "local", *args],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, **(env or {})},
    )


def client_flags(world: dict, names=("gta5", "synthia", "synscapes")) -> list[str]:
    flags = []
    for name in names:
        flags += ["--client", f"{name}={world['clients'][name]}"]
    return flags


def assert_no_flower_processes_left() -> None:
    assert descendants(os.getpid()) == [], "processes started by the run are still alive"


def test_three_clients_over_loopback_match_the_in_process_federation(tiny_world, tmp_path):
    from feds2r.engine.checkpoint import load_checkpoint
    from feds2r.federation.protocol import in_process_send, run_federation

    out = tmp_path / "flower"
    done = federate(
        [
            *client_flags(tiny_world),
            "--server-data",
            tiny_world["server"],
            "--evaluate",
            f"cs={tiny_world['test']}",
            "--out",
            str(out),
            *TINY_FLAGS,
        ]  # fmt: skip
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert_no_flower_processes_left()
    results = json.loads((out / "results.json").read_text())
    assert results["accepted"] == ["gta5", "synscapes", "synthia"]
    assert all(e["status"] == "ok" and e["node_id"] for e in results["clients"].values())
    model, meta = load_checkpoint(out / "global")
    assert meta["preset"] == "m2f-cpu"
    assert (out / "logs" / "superlink.log").is_file()
    assert "global model mIoU on cs" in done.stdout
    # the same federation in one process: the same global model quality
    local = run_federation(
        in_process_send(tiny_world["clients"]),
        tiny_config(tmp_path / "in-process", tiny_world),
        progress=False,
        log=lambda _t: None,
    )
    assert abs(local["miou"]["cs"] - results["miou"]["cs"]) <= 1.0
    assert local["unstable_classes"] == results["unstable_classes"]


def test_tls_and_supernode_authentication(tiny_world, tmp_path):
    out = tmp_path / "secure"
    done = federate(
        [
            *client_flags(tiny_world),
            "--server-data",
            tiny_world["server"],
            "--out",
            str(out),
            "--tls",
            "--auth",
            *TINY_FLAGS,
        ]  # fmt: skip
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "(TLS)" in done.stdout
    assert_no_flower_processes_left()
    log = (out / "logs" / "superlink.log").read_text()
    assert "insecure" not in log.lower() or "HTTPS" in log
    assert json.loads((out / "results.json").read_text())["accepted"] == [
        "gta5", "synscapes", "synthia"
    ]  # fmt: skip


def test_a_crashing_client_and_a_wrong_model_are_named_and_the_run_goes_on(tiny_world, tmp_path):
    out = tmp_path / "faulty"
    flags = [
        "--client", f"gta5={tiny_world['clients']['gta5']}",
        "--client", f"crash={tiny_world['clients']['synthia']}",
        "--client", f"wrong={tiny_world['clients']['synscapes']}",
        "--client-app", "faulty_app:app", "--min-clients", "1",
        "--server-data", tiny_world["server"], "--out", str(out), *TINY_FLAGS,
    ]  # fmt: skip
    done = federate(flags, env={"PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])})
    assert done.returncode == 0, done.stdout + done.stderr
    assert_no_flower_processes_left()
    results = json.loads((out / "results.json").read_text())
    assert results["accepted"] == ["gta5"]
    failed = {n: e for n, e in results["clients"].items() if e["status"] == "failed"}
    assert len(failed) == 2
    reasons = " | ".join(e["reason"] for e in failed.values())
    assert "client failed" in reasons and "simulated client crash" in reasons
    assert "rejected: the reply's model does not fit the m2f-cpu preset" in reasons
    assert "rejected" in done.stdout and "client failed" in done.stdout


def test_too_few_clients_fail_the_run_with_the_reason_and_write_nothing(tiny_world, tmp_path):
    """A client whose data is gone by the time it trains (faulty_app's "broken": the launcher's
    check before any process starts saw it) fails at its SuperNode."""
    out = tmp_path / "too-few"
    flags = [
        "--client", f"gta5={tiny_world['clients']['gta5']}",
        "--client", f"broken={tiny_world['clients']['synthia']}",
        "--client-app", "faulty_app:app", "--min-clients", "2",
        "--server-data", tiny_world["server"], "--out", str(out), *TINY_FLAGS,
    ]  # fmt: skip
    done = federate(flags, env={"PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])})
    assert done.returncode == 2
    assert "only 1 of 2 clients sent a valid model, fewer than min-clients=2" in done.stderr
    # keyed by its name; the server learnt a category, not the client's path
    assert "broken: client failed: data error on the client; see the client's log" in done.stderr
    assert "/nonexistent" not in done.stderr  # (stdout: the launcher names the SuperNodes' data)
    logs = Path(re.search(r"\(logs: (.+)\)", done.stderr).group(1))
    for server_side in ("superlink.log", "serverapp.log"):
        assert "/nonexistent" not in (logs / server_side).read_text()
    assert "/nonexistent/gta5" in (logs / "supernode-1-broken.log").read_text()  # its own log
    shutil.rmtree(logs.parent)  # the failed run's temporary folder, kept for its logs
    assert not out.exists()
    assert not any(p.name.startswith(".too-few") for p in tmp_path.iterdir())
    assert_no_flower_processes_left()


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _environ(pid: int) -> dict[str, str]:
    text = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    return dict(item.split("=", 1) for item in text.split("\0") if "=" in item)


def test_sigterm_stops_every_process_and_the_cancelled_run_writes_nothing(tiny_world, tmp_path):
    """SIGTERM (kill, timeout, CI) cancels as Ctrl-C does: no process outlives the launcher."""
    out = tmp_path / "cancelled"
    flags = [
        *client_flags(tiny_world, ("gta5", "synthia")), "--min-clients", "1",
        "--server-data", tiny_world["server"], "--out", str(out), *TINY_FLAGS,
        "--client-steps", "100000",  # still training when the signal comes
    ]  # fmt: skip
    log = tmp_path / "launcher.log"
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    with open(log, "wb") as sink:
        launcher = subprocess.Popen(
            [sys.executable, "-m", "feds2r.cli", "federate", "local", *flags],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
        )
    started: list[int] = []
    try:
        deadline = time.monotonic() + 240
        # wait until both SuperNodes run their ClientApp (training has begun)
        while sum("clientapp" in _cmdline(p) for p in descendants(launcher.pid)) < 2:
            assert launcher.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the ClientApps did not start\n" + log.read_text()
            time.sleep(0.5)
        started = descendants(launcher.pid)
        link = next(p for p in started if "flower-superlink" in _cmdline(p))
        # the two SuperNodes train at once, each on its share of the cores
        share = str(max(1, len(os.sched_getaffinity(0)) // 2))
        for pid in (p for p in started if "clientapp" in _cmdline(p)):
            assert _environ(pid).get("OMP_NUM_THREADS") == share
        home = Path(_environ(link)["FLWR_HOME"]).parent
        assert home.is_dir()
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(timeout=30) == 128 + signal.SIGTERM, log.read_text()
        time.sleep(1.0)
        alive = [p for p in started if Path(f"/proc/{p}").exists() and not is_zombie(p)]
        assert alive == [], [_cmdline(p) for p in alive]
        assert "cancelled: received SIGTERM" in log.read_text()
        time.sleep(2.0)  # nothing left to finish the run later
        assert not out.exists()
        assert not any(p.name.startswith(".cancelled") for p in tmp_path.iterdir())
        assert not home.exists()  # nor the temporary deployment folder
    finally:
        if launcher.poll() is None:
            launcher.kill()
        for pid in started:  # a failing run must not leave its processes behind either
            if "flower-" in _cmdline(pid) or "flwr-" in _cmdline(pid):  # still ours, not reused
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def test_five_fedavg_rounds_over_loopback_name_a_client_that_drops_out(tiny_world, tmp_path):
    out = tmp_path / "rounds"
    flags = [
        "--client", f"gta5={tiny_world['clients']['gta5']}",
        "--client", f"synthia={tiny_world['clients']['synthia']}",
        "--client", f"drop3={tiny_world['clients']['synscapes']}",
        "--client-app", "faulty_app:app", "--min-clients", "2",
        "--method", "fedavg", "--rounds", "5",
        "--server-data", tiny_world["server"], "--out", str(out), *TINY_FLAGS,
        "--client-steps", "5",
    ]  # fmt: skip
    done = federate(flags, env={"PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])})
    assert done.returncode == 0, done.stdout + done.stderr
    assert_no_flower_processes_left()
    results = json.loads((out / "results.json").read_text())
    comm = results["communication"]
    assert results["method"] == "fedavg" and comm["rounds"] == 5
    assert comm["clients"]["gta5"]["rounds"] == 5 and comm["clients"]["drop3"]["rounds"] == 2
    assert comm["clients"]["gta5"]["train_steps"] == 5  # 5 steps over 5 rounds
    dropped = {h["round"]: h["dropped"] for h in results["history"]}
    assert dropped[1] == dropped[2] == {} and set(dropped[3]) == {"drop3"}
    assert "round 3: client drop3 dropped out" in done.stdout
    assert (out / "global" / "model.safetensors").is_file()
