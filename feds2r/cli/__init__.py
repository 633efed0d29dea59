"""The ``feds2r`` command line: each subcommand is a plain typed function.

One module per command group holds the group's functions and, below them, their parsers:
:mod:`~feds2r.cli.data` (``data``, ``models``), :mod:`~feds2r.cli.train` (``client train``,
``pretrain``), :mod:`~feds2r.cli.inference` (``eval``, ``predict``), :mod:`~feds2r.cli.export`,
:mod:`~feds2r.cli.server`, :mod:`~feds2r.cli.federate`, :mod:`~feds2r.cli.demo`. Flags that set
a config field are derived from the config dataclasses (:mod:`feds2r.cli.flags`); the functions
call the library and print.
"""

from __future__ import annotations

import argparse
import sys
import textwrap

from feds2r.cli.data import add_data_commands, add_models_command
from feds2r.cli.demo import add_demo_command
from feds2r.cli.export import add_export_command
from feds2r.cli.federate import add_federate_commands
from feds2r.cli.flags import call, complete
from feds2r.cli.inference import add_inference_commands
from feds2r.cli.output import check_outputs
from feds2r.cli.server import add_server_commands
from feds2r.cli.train import add_client_commands, add_pretrain_command
from feds2r.errors import Feds2rError

GROUPS = ("data", "client", "server", "federate")
"""The commands that only group subcommands (alone, they print their help)."""


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The whole ``feds2r`` parser; with ``argv``, only the invoked subcommand's arguments are
    built (the others' would import model code for nothing)."""
    parser = argparse.ArgumentParser(
        prog="feds2r",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="One-shot federated domain generalization for synthetic-to-real "
        "semantic segmentation (FedS2R) and its baselines.",
        epilog=textwrap.dedent("""\
            examples:
              feds2r data synth --all --out data/world      # build the built-in benchmark
              feds2r data formats                           # dataset formats and layouts
              feds2r data check cityscapes:data/world/cityscapes-like?split=val
              feds2r client train --data gta5:data/world/gta5-like?split=train --out runs/gta5
              feds2r eval --model runs/gta5 --data cityscapes:data/world/cityscapes-like?split=val
            """),
    )
    from feds2r import __version__

    parser.add_argument("--version", action="version", version=f"feds2r {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_data_commands(sub)
    add_demo_command(sub)
    add_pretrain_command(sub)
    add_models_command(sub)
    add_client_commands(sub)
    add_inference_commands(sub)
    add_export_command(sub)
    add_server_commands(sub)
    add_federate_commands(sub)
    complete(parser, argv)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        # a group without a subcommand: show its help
        if args.command in GROUPS:
            parser.parse_args([args.command, "--help"])
        parser.print_help()
        return 2
    from feds2r.signals import Terminated, cancel_on_signals

    try:
        check_outputs(args)
        with cancel_on_signals():  # SIGTERM/SIGHUP cancel as Ctrl-C does (feds2r/signals.py)
            return call(func, args)
    except Feds2rError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a path given that cannot be read or written (feds2r/io.py checks most)
        where = f" {exc.filename}" if exc.filename else ""
        print(f"error: cannot use{where}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except Terminated as exc:
        print(f"cancelled: {exc}", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
