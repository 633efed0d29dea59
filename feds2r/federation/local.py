"""``feds2r federate local``: a whole Flower deployment on this machine, for trying it and for CI.

Starts one SuperLink and one SuperNode per client on 127.0.0.1 (each a separate process, as on
separate machines), optionally with TLS and SuperNode authentication, submits the feds2r app
with ``flwr run``, waits for the run's final status (``flwr list``, not ``flwr run``'s exit
code), stops every process it started by its id, and raises :class:`FederationError` with the
reason when the run did not complete.

Signals: every process starts in its own session, with the kernel told to kill it when the
launcher dies uncleanly (``PR_SET_PDEATHSIG``, Linux; :mod:`feds2r.federation.processes`), and
the launcher turns SIGTERM and SIGHUP into the same cancellation as Ctrl-C
(:mod:`feds2r.signals`). However the launcher ends
(Ctrl-C, ``kill``, an error or a normal exit), it stops every process it started and their
children, and removes the staging folder of a run that did not complete: a cancelled run
writes nothing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from feds2r.__version__ import __version__
from feds2r.config import flatten, to_toml
from feds2r.data.dataset import parse_spec
from feds2r.federation.config import (
    FederationConfig,
    FederationError,
    check_client_name,
    check_server_inputs,
)
from feds2r.federation.outputs import check_new_output
from feds2r.federation.processes import Supervisor, free_port
from feds2r.federation.tls import make_certificates, make_node_keys
from feds2r.io import write_atomic
from feds2r.signals import cancel_on_signals, signals_deferred

CLIENT_APP = "feds2r.federation.client_app:app"
SERVER_APP = "feds2r.federation.server_app:app"


def app_pyproject(
    config: FederationConfig, client_app: str = CLIENT_APP, server_app: str = SERVER_APP
) -> str:
    """The ``pyproject.toml`` of a Flower app that runs the installed feds2r with ``config``."""
    values = run_config_values(config)
    return (
        "[project]\n"
        'name = "feds2r-federation"\n'
        f'version = "{__version__}"\n'
        'description = "One-shot FedS2R federation (feds2r)"\n'
        'license = "Apache-2.0"\n'
        "dependencies = []\n\n"
        "[tool.flwr.app]\n"
        'publisher = "feds2r"\n\n'
        "[tool.flwr.app.components]\n"
        f'serverapp = "{server_app}"\n'
        f'clientapp = "{client_app}"\n\n' + to_toml({"tool.flwr.app.config": values})
    )


def run_config_values(config: FederationConfig) -> dict[str, Any]:
    """``config`` as Flower run-config values: :func:`~feds2r.config.flatten`'s dotted, dashed
    keys (``min-clients``, ``clients.steps``, ``server.train.crop = "128x256"``)."""
    return flatten(config)


def absolute_spec(spec: str) -> str:
    """``spec`` with its path made absolute (relative to the current folder)."""
    parsed = parse_spec(spec)
    return str(dataclasses.replace(parsed, path=parsed.path.resolve()))


def _wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise FederationError(f"{what} exited with code {proc.returncode} while starting")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise FederationError(f"{what} did not open 127.0.0.1:{port} within {timeout:g} s")


def _bin(name: str) -> str:
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if not found:
        raise FederationError(f"{name} not found: install feds2r with Flower (pip install flwr)")
    return found


@dataclass
class LocalDeployment(Supervisor):
    """The SuperLink and SuperNodes of a local deployment (:class:`~feds2r.federation.processes.
    Supervisor`), and the ``flwr`` command line that talks to them over ``connection``."""

    connection: str = "feds2r-local"

    def flwr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        return subprocess.run(
            [_bin("flwr"), *args],
            env=self.env,
            cwd=self.home,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def client_threads(num_clients: int, env: dict[str, str] | None = None) -> dict[str, str]:
    """Thread settings for each of ``num_clients`` SuperNodes training at once on this machine.

    Every local SuperNode trains at the same time; with PyTorch's default (one thread per core
    each) they thrash. Each gets a fair share, ``max(1, cores // num_clients)`` threads, through
    ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS``, which its ClientApp process inherits and PyTorch
    reads at start. An ``OMP_NUM_THREADS`` already set in ``env`` is kept.
    """
    env = os.environ if env is None else env
    if env.get("OMP_NUM_THREADS"):
        return {}
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    threads = str(max(1, cores // max(1, num_clients)))
    return {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}


def federate_local(
    clients: list[tuple[str, str]],
    config: FederationConfig,
    *,
    tls: bool = False,
    auth: bool = False,
    client_app: str = CLIENT_APP,
    run_timeout: float = 7200.0,
    keep_logs: bool = True,
    log=print,
) -> dict[str, Any]:
    """Run the federation over loopback: ``clients`` is a list of (name, dataset spec).

    Returns ``results.json``'s content. The deployment's logs are copied to ``OUT/logs`` (or,
    when the run fails, kept in the temporary folder the error message names). SIGTERM and
    SIGHUP raise :class:`feds2r.signals.Terminated` (a ``KeyboardInterrupt``), as Ctrl-C does;
    either way every process is stopped and nothing is written to ``OUT``.
    """
    with cancel_on_signals():
        return _federate_local(
            clients,
            config,
            tls=tls,
            auth=auth,
            client_app=client_app,
            run_timeout=run_timeout,
            keep_logs=keep_logs,
            log=log,
        )


def _federate_local(
    clients: list[tuple[str, str]],
    config: FederationConfig,
    *,
    tls: bool,
    auth: bool,
    client_app: str,
    run_timeout: float,
    keep_logs: bool,
    log,
) -> dict[str, Any]:
    if not clients:
        raise FederationError("give at least one --client SPEC")
    # the SuperLink and SuperNodes run in a temporary folder: every path must be absolute
    clients = [(name, absolute_spec(spec)) for name, spec in clients]
    config = dataclasses.replace(
        config,
        server_data=absolute_spec(config.server_data),
        evaluate=";".join(
            f"{name}={absolute_spec(spec)}" for name, spec in config.evaluation_sets().items()
        ),
    )
    for name, _ in clients:
        check_client_name(name)
    out = Path(config.out)
    # before any process starts; the ServerApp checks again
    check_new_output(out)
    check_server_inputs(config)
    staging = f".{out.name}.partial-*"  # the ServerApp's (outputs.staged)
    old_stages = set(out.parent.glob(staging))
    home = Path(tempfile.mkdtemp(prefix="feds2r-federation-"))
    (home / "logs").mkdir()
    env = {
        **os.environ,
        "FLWR_HOME": str(home / "flwr-home"),
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "PYTHONUNBUFFERED": "1",
        # the SuperLink and SuperNodes start flower-superexec and the apps from PATH
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }
    deploy = LocalDeployment(home, env)
    node_threads = client_threads(len(clients), env)  # the ServerApp keeps every core
    ok = cancelled = False
    server_log = ""
    try:
        port = free_port()
        security: list[str] = ["--insecure"]
        node_security: list[str] = ["--insecure"]
        connection = {"address": f"127.0.0.1:{port}", "insecure": True}
        if tls:
            certs = make_certificates(home / "certs")
            security = [
                "--ssl-certfile",
                str(certs["cert"]),
                "--ssl-keyfile",
                str(certs["key"]),
                "--ssl-ca-certfile",
                str(certs["ca_cert"]),
            ]
            node_security = ["--root-certificates", str(certs["ca_cert"])]
            connection = {
                "address": f"127.0.0.1:{port}",
                "root-certificates": str(certs["ca_cert"]),
            }
        _write_connection(home, deploy.connection, connection)
        link_args = [
            _bin("flower-superlink"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--disable-runtime-dependency-installation",
            *security,
        ]
        if auth:
            link_args.append("--enable-supernode-auth")
        log(f"starting SuperLink on 127.0.0.1:{port}" + (" (TLS)" if tls else ""))
        _wait_port(port, deploy.start("superlink", link_args), "SuperLink")
        keys = []
        if auth:
            keys = make_node_keys(home / "keys", len(clients))
            for (name, _), (_, public) in zip(clients, keys, strict=True):
                done = deploy.flwr("supernode", "register", str(public), deploy.connection)
                if done.returncode != 0:
                    raise FederationError(f"registering {name}'s public key failed: {_tail(done)}")
        if node_threads:
            log(f"each SuperNode trains with {node_threads['OMP_NUM_THREADS']} threads")
        for k, (name, spec) in enumerate(clients):
            node_args = [
                _bin("flower-supernode"),
                "--superlink",
                f"127.0.0.1:{port}",
                "--host",
                "127.0.0.1",
                "--port",
                str(free_port()),
                "--node-config",
                f"data={json.dumps(spec)} name={json.dumps(name)}",
                *node_security,
            ]
            if auth:
                node_args += ["--auth-supernode-private-key", str(keys[k][0])]
            log(f"starting SuperNode {name} ({spec})")
            deploy.start(f"supernode-{k}-{name}", node_args, env={**env, **node_threads})
        app = home / "app"
        write_atomic(
            app / "pyproject.toml",
            app_pyproject(config, client_app=client_app).encode(),
        )
        done = deploy.flwr("run", str(app), deploy.connection, "--format", "json")
        run_id = _run_id(done)
        log(f"run {run_id} submitted; waiting for it to finish")
        status = _wait_run(deploy, run_id, run_timeout, out / "results.json")
        if status != "finished:completed":
            reason = _failure_reason(deploy, run_id)
            raise FederationError(
                f"the federation run ended with status {status!r}: {reason} (logs: {home / 'logs'})"
            )
        server_log = _server_logs(deploy, run_id)
        results_path = out / "results.json"
        if not results_path.is_file():
            raise FederationError(f"the run completed but wrote no {results_path}")
        ok = True
        return json.loads(results_path.read_text())
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM, SIGHUP: nothing of the run is kept
        cancelled = True
        raise
    finally:
        with signals_deferred():  # a second Ctrl-C or SIGTERM does not cut the stop short
            deploy.stop()
            if not ok:  # a ServerApp stopped midway may leave its staging folder
                for stage in set(out.parent.glob(staging)) - old_stages:
                    shutil.rmtree(stage, ignore_errors=True)
            if ok and keep_logs:
                shutil.copytree(home / "logs", out / "logs", dirs_exist_ok=True)
                if server_log:
                    write_atomic(out / "logs" / "serverapp.log", server_log.encode())
            if ok or cancelled:  # a failed run keeps its logs there (the error names them)
                shutil.rmtree(home, ignore_errors=True)


def _write_connection(home: Path, name: str, connection: dict[str, Any]) -> None:
    text = to_toml({"superlink": {"default": name}, f"superlink.{name}": connection})
    write_atomic(home / "flwr-home" / "config.toml", text.encode())


def _tail(done: subprocess.CompletedProcess, n: int = 600) -> str:
    return (done.stdout + done.stderr).strip()[-n:]


def _run_id(done: subprocess.CompletedProcess) -> int:
    try:
        data = json.loads(done.stdout)
    except json.JSONDecodeError:
        data = {}
    if done.returncode != 0 or not data.get("success", True) or "run-id" not in data:
        raise FederationError(f"flwr run could not submit the run: {_tail(done)}")
    return int(data["run-id"])


def _wait_run(
    deploy: LocalDeployment, run_id: int, timeout: float, results: Path | None = None
) -> str:
    """Wait for the run's final status. Each ``flwr list`` is a new Python process that costs
    about a core-second, so the polls back off from 2 s to 15 s (polling every 2 s took most of
    a core from the training it waited for); ``results`` appearing (the ServerApp writes it as
    its last act) brings the next poll forward."""
    deadline = time.monotonic() + timeout
    status = "unknown"
    interval = 2.0
    while time.monotonic() < deadline:
        link = deploy.procs["superlink"]
        if link.poll() is not None:
            raise FederationError(f"the SuperLink exited (code {link.returncode})")
        done = deploy.flwr("list", deploy.connection, "--run-id", str(run_id), "--format", "json")
        try:
            runs = json.loads(done.stdout).get("runs", [])
            status = str(runs[0]["status"]) if runs else status
        except (json.JSONDecodeError, KeyError, IndexError):
            pass
        if status.startswith("finished"):
            return status
        waited, written = 0.0, results is not None and results.exists()
        while waited < (2.0 if written else interval) and time.monotonic() < deadline:
            time.sleep(0.5)
            waited += 0.5
            if not written and results is not None and results.exists():
                break
        interval = min(interval * 1.5, 15.0)
    stop = deploy.flwr("stop", str(run_id), deploy.connection)
    raise FederationError(
        f"run {run_id} did not finish within {timeout:g} s (stopped: {stop.returncode == 0})"
    )


def _server_logs(deploy: LocalDeployment, run_id: int) -> str:
    done = deploy.flwr("log", str(run_id), deploy.connection, "--show", timeout=60)
    return done.stdout


def _failure_reason(deploy: LocalDeployment, run_id: int) -> str:
    """The last feds2r / Flower error line of the run's ServerApp log."""
    logs = _server_logs(deploy, run_id)
    write_atomic(deploy.home / "logs" / "serverapp.log", logs.encode())
    for line in reversed(logs.splitlines()):
        found = re.match(r"^(?:[\w.]+\.)?(\w*(?:Error|Exception)): (.+)$", line.strip())
        if found:
            kind, text = found.groups()
            return text if kind in ("FederationError", "Feds2rError", "DataError") else line.strip()
    lines = [line for line in logs.splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no ServerApp log"
