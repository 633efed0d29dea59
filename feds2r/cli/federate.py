"""``feds2r federate local | certs | app``: the one-shot federation on Flower."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

from feds2r.cli.flags import add_quiet, command, flag_help, show_default, size_type
from feds2r.errors import Feds2rError

if TYPE_CHECKING:
    from feds2r.federation.protocol import FederationConfig

FEDERATION_FLAGS = {
    "preset": "model preset",
    "client-steps": "client training steps",
    "distill-steps": "distillation steps",
    "batch-size": "batch size",
    "height": "training image height",
    "lr": "learning rate",
    "warmup-steps": "warm-up steps",
    "seed": "seed of the initial model and of training",
    "generated-images": "images generated for unstable classes",
    "min-clients": "fewest valid client models to go on with",
    "connect-timeout": "seconds to wait for SuperNodes",
    "client-timeout": "seconds to wait for replies",
    "crop": "training crop HxW",
    "method": "the federation: feds2r (one exchange) or a multi-round baseline, fedavg, "
    "fedprox or fedseg",
    "rounds": "rounds of a multi-round method (each client trains client-steps / rounds "
    "steps per round)",
    "proximal-mu": "FedProx's proximal weight",
    "clients-per-round": "clients trained each round of a multi-round method, drawn from the "
    "seed (0: all)",
    "round-loss": "the clients' supervised term in a multi-round method: ce or backce "
    "(FedSeg's; per-pixel presets); empty: the model's own",
    "route": "the server's stages: distill, distill+selftrain, distill+lite or "
    "distill+selftrain+lite",
    "lite-preset": "preset of the lightweight global model (routes with lite)",
}
"""The settings flags of ``federate local`` and ``federate app``: flat run-config names
(:data:`~feds2r.federation.protocol.RUN_CONFIG_ALIASES` and FederationConfig's own fields), each
with its help; the type and the default come from :class:`FederationConfig`."""

FLAG_DEST = "run_config."
"""Prefix of the ``dest`` of a settings flag: the rest is its run-config name."""


def client_arg(text: str) -> tuple[str, str]:
    """``[NAME=]SPEC`` -> (name, spec); the name defaults to the spec's format."""
    name, sep, spec = text.partition("=")
    if sep and ":" not in name:
        return name, spec
    return text.split(":", 1)[0], text


def federation_config(args: argparse.Namespace, num_clients: int) -> FederationConfig:
    """The :class:`FederationConfig` of the flags: the run config they name, read as the
    ServerApp reads it (:meth:`FederationConfig.from_run_config`)."""
    from feds2r.federation.protocol import FederationConfig
    from feds2r.models import PRESETS

    for name in ("preset", "lite-preset"):  # named by the flag given, before any config is built
        value = getattr(args, FLAG_DEST + name, None)
        if value is not None and value not in PRESETS:
            raise Feds2rError(
                f"--{name} {value!r} is not a model preset; valid: {', '.join(PRESETS)}"
            )
    values = {
        "out": str(Path(args.out).resolve()),
        "server-data": args.server_data,
        "num-clients": num_clients,
        "evaluate": ";".join(args.evaluate or []),
        "pretrained": args.pretrained,
    }
    for key, value in vars(args).items():
        if key.startswith(FLAG_DEST) and value is not None:
            values[key.removeprefix(FLAG_DEST)] = value
    return FederationConfig.from_run_config(values)


def federate_local(
    clients: list[tuple[str, str]],
    config: FederationConfig,
    tls: bool,
    auth: bool,
    client_app: str | None,
    timeout: float,
    progress: bool,
) -> int:
    """A SuperLink and one SuperNode per client on this machine, one federation run, stopped."""
    try:
        from feds2r.federation.local import CLIENT_APP
        from feds2r.federation.local import federate_local as run_local
    except ImportError as exc:
        raise Feds2rError(
            f"Flower is not installed ({exc}); install it with: pip install 'feds2r[flower]'"
        ) from None
    from feds2r.validate import check_client_data, check_federation

    names = [n for n, _ in clients]
    if len(set(names)) != len(names):
        raise Feds2rError(f"client names must differ, got {names}; name them NAME=SPEC")
    check_federation(config)  # before any process starts: settings, then every client's data
    check_client_data(clients)
    results = run_local(
        clients,
        config,
        tls=tls,
        auth=auth,
        client_app=client_app or CLIENT_APP,
        run_timeout=timeout,
        log=print if progress else (lambda _text: None),
    )
    if "communication" in results:  # a multi-round flow
        comm = results["communication"]
        for name, entry in comm["clients"].items():
            print(
                f"client {name}: {entry['rounds']} of {comm['rounds']} rounds, "
                f"{(entry['download_bytes'] + entry['upload_bytes']) / 1e6:.1f} MB"
            )
        for past in results["history"]:
            for name, why in past["dropped"].items():
                print(f"round {past['round']}: client {name} dropped out ({why})")
        print(f"communicated {comm['total']['megabytes']:.1f} MB in {comm['rounds']} rounds")
    else:
        for name, entry in results["clients"].items():
            status = entry["status"] + (f" ({entry['reason']})" if entry.get("reason") else "")
            print(f"client {name}: {status}")
    if results.get("miou"):
        for name, value in results["miou"].items():
            print(f"global model mIoU on {name}: {value:.2f}")
    print(f"global model: {results['global_model']}; results: {Path(config.out) / 'results.json'}")
    return 0


def federate_certs(out: str, host: list[str] | None, node_keys: int, force: bool) -> int:
    """A local CA, a SuperLink certificate for ``host`` and ``node_keys`` SuperNode key pairs."""
    from feds2r.federation.tls import existing_credentials, write_credentials
    from feds2r.io import judge_output

    # the one output rule: a new or empty folder, or one holding a set (--force governs it)
    judge_output(out, "federate certs", marker=lambda p: bool(existing_credentials(p)))
    hosts = tuple(host or ("localhost", "127.0.0.1"))
    paths, pairs = write_credentials(out, hosts, node_keys, force=force)
    print(f"CA certificate: {paths['ca_cert']} (give it to every SuperNode and to flwr)")
    print(f"SuperLink certificate and key: {paths['cert']}, {paths['key']}")
    for private, public in pairs:
        print(f"SuperNode key: {private} (register {public} with `flwr supernode register`)")
    return 0


def federate_app(app: str, config: FederationConfig, force: bool) -> int:
    """Write ``APP/pyproject.toml``: a Flower app running feds2r with ``config``."""
    from feds2r.federation.local import app_pyproject
    from feds2r.io import judge_output, write_atomic
    from feds2r.validate import check_federation

    check_federation(config)  # what `federate local` refuses, the app refuses before it exists
    # the one output rule: a new or empty folder, or an app folder (--force governs it)
    judge_output(app, "federate app", marker="pyproject.toml", flag="--app")
    dest = Path(app) / "pyproject.toml"
    if dest.exists() and not force:
        raise Feds2rError(f"{dest} exists; use --force to replace it")
    write_atomic(dest, app_pyproject(config).encode())
    print(f"wrote the Flower app {app}; run it with: flwr run {app} CONNECTION --stream")
    return 0


# ----------------------------------------------------------------------------- parsers


def _add_settings_flags(p: argparse.ArgumentParser) -> None:
    from feds2r.config import flat_keys, flatten
    from feds2r.federation.protocol import RUN_CONFIG_ALIASES, FederationConfig

    p.add_argument(
        "--server-data", required=True, help="the server's unlabelled real images (a spec)"
    )
    p.add_argument(
        "--evaluate",
        action="append",
        metavar="NAME=SPEC",
        help="a labelled test set for the global model (repeatable)",
    )
    hints = flat_keys(FederationConfig)
    defaults = flatten(FederationConfig(out="/", server_data=""))
    for name, text in FEDERATION_FLAGS.items():
        key = RUN_CONFIG_ALIASES.get(name, (name,))[0]
        hint = hints[key]
        kind = size_type if hint == tuple[int, int] else {int: int, float: float}.get(hint)
        default = show_default(defaults[key])
        kwargs = {"type": kind} if kind else {}
        kwargs["metavar"] = name.replace("-", "_").upper()  # as argparse names it
        p.add_argument(f"--{name}", dest=FLAG_DEST + name, help=flag_help(text, default), **kwargs)
    p.add_argument(
        "--no-pretrained",
        dest="pretrained",
        action="store_false",
        help="start the common initial model from random weights instead of the shipped "
        "public backbone",
    )


def add_federate_commands(sub: argparse._SubParsersAction) -> None:
    fed = sub.add_parser(
        "federate",
        help="run the one-shot federation on Flower",
        description="Run the one-shot federation on Flower (docs/federation.md).",
    )
    fed_sub = fed.add_subparsers(dest="federate_command", metavar="COMMAND")

    command(
        fed_sub,
        "local",
        federate_local,
        flags=_local_flags,
        help="SuperLink + one SuperNode per client on 127.0.0.1, run, check, stop",
        description="Start a Flower SuperLink and one SuperNode per client on 127.0.0.1 "
        "(separate processes), run the feds2r app (one exchange, then inconsistency, "
        "augmentation and distillation on the server), wait for the run's final status, stop "
        "every process it started, and exit non-zero with the reason if the run failed. OUT "
        "(new or empty) receives results.json, the global model (global/), the client models "
        "(clients/) and the logs; a failed run leaves it untouched. Ctrl-C, SIGTERM and SIGHUP "
        "stop every process and write nothing (exit 128 + signal). Each SuperNode trains with "
        "max(1, cores // clients) threads unless OMP_NUM_THREADS is set.",
        epilog=textwrap.dedent("""\
            examples:
              feds2r federate local \\
                  --client gta5=gta5:data/world/gta5-like?split=train \\
                  --client synthia=synthia:data/world/synthia-like?split=train \\
                  --client synscapes=synscapes:data/world/synscapes-like?split=train \\
                  --server-data cityscapes:data/world/cityscapes-like?split=train \\
                  --evaluate cs=cityscapes:data/world/cityscapes-like?split=val \\
                  --out runs/federation
              feds2r federate local --tls --auth ...   # TLS and SuperNode authentication
              feds2r federate local --method fedavg --rounds 5 ...   # a multi-round baseline
            """),
    )
    p = command(
        fed_sub,
        "certs",
        federate_certs,
        help="a local CA, a SuperLink certificate and SuperNode keys for trying TLS and auth",
        description="Write ca.crt/ca.key, server.crt/server.key (for the given hosts) and N "
        "SuperNode key pairs (node-K, node-K.pub) into OUT. For trying a deployment; use your "
        "organisation's CA in production. An OUT that already holds any of these files is "
        "refused unless --force, which replaces the whole set.",
        epilog=textwrap.dedent("""\
            examples:
              feds2r federate certs --out certs --node-keys 3
              feds2r federate certs --out certs --host superlink.example.org --host 10.0.0.5
            """),
    )
    p.add_argument("--out", required=True)
    p.add_argument(
        "--host",
        action="append",
        default=None,
        help="host name or IP the SuperLink is reached at (default localhost, 127.0.0.1)",
    )
    p.add_argument("--node-keys", type=int, default=0, help="SuperNode key pairs to write")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace certificates and keys already in OUT: the whole set, old node keys included",
    )

    command(
        fed_sub,
        "app",
        federate_app,
        flags=_app_flags,
        help="write a Flower app folder (pyproject.toml) for `flwr run` on a deployment",
        description="Write APP/pyproject.toml: a Flower app that runs the installed feds2r "
        "with these settings baked into its run config. Submit it with `flwr run APP "
        "CONNECTION` to a SuperLink (docs/federation.md).",
        epilog=textwrap.dedent("""\
            examples:
              feds2r federate app --app fedapp --num-clients 3 \\
                  --server-data cityscapes:/srv/cityscapes?split=train --out /srv/federation
            """),
    )


def _local_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--client",
        dest="clients",
        type=client_arg,
        action="append",
        required=True,
        metavar="[NAME=]SPEC",
        help="one client's private labelled dataset (repeat per client)",
    )
    _add_settings_flags(p)
    p.add_argument("--out", required=True, help="output folder (new or empty)")
    p.add_argument("--tls", action="store_true", help="TLS with a throw-away local CA")
    p.add_argument("--auth", action="store_true", help="SuperNode authentication (node keys)")
    p.add_argument("--timeout", type=float, default=7200.0, help="seconds for the whole run")
    p.add_argument(
        "--client-app",
        help="ClientApp object reference (default feds2r.federation.client_app:app)",
    )
    add_quiet(p, None)
    p.set_defaults(builders={"config": lambda args: federation_config(args, len(args.clients))})


def _app_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--app", required=True, help="folder to write the app into")
    _add_settings_flags(p)
    p.add_argument("--out", required=True, help="output folder on the SuperLink's machine")
    p.add_argument(
        "--num-clients", type=int, default=0, help="clients to wait for (0: min-clients)"
    )
    p.add_argument("--force", action="store_true", help="replace an existing pyproject.toml")
    p.set_defaults(builders={"config": lambda args: federation_config(args, args.num_clients)})
