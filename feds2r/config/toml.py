"""Config files: read TOML (:func:`load_toml`, :func:`load_tables`, every table and key checked)
and write the resolved config of a run (:func:`to_toml`, :func:`write_run_config`)."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

from feds2r.config.dicts import check_keys
from feds2r.engine.distributed import is_main
from feds2r.errors import Feds2rError
from feds2r.io import write_atomic

CONFIG_NAME = "config.toml"
"""The file in which every run records the resolved config it ran with."""


def load_toml(path: str | Path) -> dict[str, Any]:
    """Parse a TOML file; a missing, unreadable, binary or invalid file is one clear error."""
    path = Path(path)
    if path.is_dir():
        raise Feds2rError(f"config file {path} is a directory; give a TOML file")
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise Feds2rError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise Feds2rError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise Feds2rError(f"config file {path} is not a text (UTF-8 TOML) file") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise Feds2rError(f"config file {path} is not valid TOML: {exc}") from None


def load_tables(
    path: str | Path,
    tables: dict[str, type],
    *,
    top_level: dict[str, str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Read a config file made of the tables ``tables`` (name -> config dataclass).

    Every table and key is checked: a table not in ``tables`` or a key that is not a field of its
    dataclass is an error naming the valid ones. ``top_level`` names keys allowed outside any
    table and the table each belongs to (``{"preset": "client"}``). Returns one dict of raw
    values per table (absent tables give ``{}``), for flags to override before
    :func:`~feds2r.config.from_dict` builds the dataclasses.
    """
    data = load_toml(path)
    top_level = top_level or {}
    valid = [f"[{name}]" for name in tables] + sorted(top_level)
    unknown = sorted(k for k in data if k not in tables and k not in top_level)
    if unknown:
        raise Feds2rError(
            f"config file {path}: unknown key(s) or table(s) {', '.join(unknown)}; "
            f"valid here: {', '.join(valid)}"
        )
    out: dict[str, dict[str, Any]] = {}
    for name, cls in tables.items():
        table = data.get(name, {})
        if not isinstance(table, dict):
            raise Feds2rError(f"config file {path}: {name} must be a table ([{name}])")
        check_keys(cls, table, source=f"config file {path}", where=f"in [{name}]")
        out[name] = dict(table)
    for key, name in top_level.items():
        if key in data:
            if key in out[name] and out[name][key] != data[key]:
                raise Feds2rError(
                    f"config file {path}: {key} is given twice ({data[key]!r} at the top level, "
                    f"{out[name][key]!r} in [{name}]); keep one"
                )
            out[name][key] = data[key]
    return out


def to_toml(sections: dict[str, Any]) -> str:
    """Write dataclasses and dicts of scalars, strings and lists as TOML tables.

    A value that is itself a dataclass or a dict (a nested section) becomes a sub-table
    (``[federation.clients]``) after its table's own keys; None values are left out.
    """

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str | Path):
            return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list | tuple):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(f"cannot write {type(v).__name__} to TOML")

    def section(obj: Any) -> dict[str, Any]:
        if dataclasses.is_dataclass(obj):
            return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
        return obj

    def is_table(v: Any) -> bool:
        return isinstance(v, dict) or (dataclasses.is_dataclass(v) and not isinstance(v, type))

    lines: list[str] = []

    def table(name: str, obj: Any) -> None:
        data = section(obj)
        lines.append(f"[{name}]")
        for k, v in data.items():
            if v is not None and not is_table(v):
                lines.append(f"{k} = {value(v)}")
        lines.append("")
        for k, v in data.items():
            if is_table(v):
                table(f"{name}.{k}", v)

    for name, obj in sections.items():
        table(name, obj)
    return "\n".join(lines)


def write_run_config(out: str | Path, sections: dict[str, Any]) -> Path:
    """Write ``OUT/config.toml``: the resolved config of the run or stage writing into ``out``.

    ``sections``: table name -> config dataclass or dict (:func:`to_toml`). Every stage and
    command records its config through this one function; call it once the run is known to
    start (after a resume check), so that a refused resume leaves the old file alone. Returns
    the file's path. Under torchrun only rank 0 writes it (it claimed ``out``).
    """
    path = Path(out) / CONFIG_NAME
    if not is_main():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, to_toml(sections).encode())
    return path
