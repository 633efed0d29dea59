"""What every command does with its outputs: ``--json`` reports, and refusing a bad ``--out``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def write_json(data: dict, dest: str) -> None:
    """``data`` as indented JSON to the file ``dest`` (atomically), or to stdout for ``-``."""
    text = json.dumps(data, indent=2)
    if dest == "-":
        print(text)
        return
    from feds2r.io import write_atomic

    write_atomic(Path(dest), (text + "\n").encode())


def check_outputs(args: argparse.Namespace) -> None:
    """Refuse a bad ``--out``/``--app`` folder or ``--json`` file before any work, for every
    command (a file where a folder is needed, a folder where a file is, a read-only place)."""
    from feds2r.io import check_output_dir, check_output_file

    if getattr(args, "federate_command", None) == "app":
        folders = {"--app": args.app}  # its --out is a path on the SuperLink's machine
    else:
        folders = {"--out": getattr(args, "out", None)}
    for flag, folder in folders.items():
        if isinstance(folder, str | Path):
            check_output_dir(folder, flag)
    dest = getattr(args, "json_path", None)
    if isinstance(dest, str) and dest != "-":
        check_output_file(dest, "--json")
