"""Frozen config dataclasses <-> TOML: load with overrides, save the resolved config."""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from feds2r.errors import Feds2rError

T = TypeVar("T")


def _coerce(value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    if origin in (types.UnionType, typing.Union):
        for arg in typing.get_args(hint):
            if typing.get_origin(arg) is tuple and isinstance(value, list):
                return tuple(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def from_dict(cls: type[T], data: dict[str, Any], *, source: str = "config") -> T:
    """Build a config dataclass from a dict; unknown keys are an error naming the valid ones."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise Feds2rError(
            f"{source}: unknown key(s) {', '.join(unknown)} for {cls.__name__}; "
            f"valid keys: {', '.join(sorted(names))}"
        )
    try:
        return cls(**{k: _coerce(v, hints[k]) for k, v in data.items()})
    except (TypeError, ValueError) as exc:
        raise Feds2rError(f"{source}: invalid {cls.__name__}: {exc}") from None


def load_toml(path: str | Path, section: str | None = None) -> dict[str, Any]:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise Feds2rError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise Feds2rError(f"config file {path} is not valid TOML: {exc}") from None
    if section is not None:
        data = data.get(section, data)
    return data


def to_toml(sections: dict[str, Any]) -> str:
    """Write dataclasses and dicts of scalars, strings and lists as TOML tables."""

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

    lines = []
    for name, obj in sections.items():
        data = dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj
        lines.append(f"[{name}]")
        for k, v in data.items():
            if v is not None:
                lines.append(f"{k} = {value(v)}")
        lines.append("")
    return "\n".join(lines)
