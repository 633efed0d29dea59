"""A federation run's output folder: written whole or not at all.

A run writes into a staging folder beside its output (:func:`staged`) and renames it into place
at the end; :func:`moved_paths` and :func:`move_json_paths` rewrite the paths its records name
from the staging folder to the final one. :func:`folder_name` turns a client's (untrusted) name
into one safe path component.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from feds2r.federation.config import FederationError
from feds2r.io import write_atomic


def check_new_output(out: Path) -> None:
    """A run writes only into a new or empty folder, so it never mixes with an older one."""
    if out.exists() and any(out.iterdir()):
        raise FederationError(f"output folder {out} is not empty; choose a new one")


@contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A staging folder beside ``out`` for a run to write into: renamed to ``out`` when the block
    ends, removed when it raises (also on Ctrl-C), so a failed run leaves no half-written output."""
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    if out.exists():
        out.rmdir()
    os.replace(stage, out)


def moved_paths(value: Any, old: str, new: str) -> Any:
    """``value`` (JSON data) with every string's ``old`` path prefix replaced by ``new``."""
    if isinstance(value, str):
        return value.replace(old, new)
    if isinstance(value, dict):
        return {k: moved_paths(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [moved_paths(v, old, new) for v in value]
    return value


def move_json_paths(folder: Path, old: str, new: str) -> None:
    """Rewrite each JSON file under ``folder`` that names ``old`` (sidecars, manifests)."""
    for path in sorted(folder.rglob("*.json")):
        text = path.read_text()
        if old in text:
            data = moved_paths(json.loads(text), old, new)
            write_atomic(path, (json.dumps(data, indent=2) + "\n").encode())


def folder_name(name: str, taken: dict) -> str:
    """A folder name for a client's (untrusted) name: one path component, never ``.``/``..``,
    distinct from the names in ``taken``."""
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).lstrip(".") or "client"
    candidate, k = name, 1
    while candidate in taken:
        k += 1
        candidate = f"{name}-{k}"
    return candidate
