"""Frozen config dataclasses <-> TOML: load with overrides, save the resolved config."""

from __future__ import annotations

import dataclasses
import numbers
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


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if origin is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
        return f"a list of {len(args)} {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
    if origin is typing.Literal:
        return " or ".join(repr(a) for a in typing.get_args(hint))
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    return names.get(hint, "None" if hint is type(None) else getattr(hint, "__name__", str(hint)))


def _checked(value: Any, hint: Any) -> Any:
    """``value`` normalised to ``hint`` (whole number -> float, list -> tuple) or TypeError."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        for arg in typing.get_args(hint):
            try:
                return _checked(value, arg)
            except TypeError:
                continue
        raise TypeError
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, list | tuple):
            raise TypeError
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_checked(v, args[0]) for v in value)
        if len(value) != len(args):
            raise TypeError
        return tuple(_checked(v, a) for v, a in zip(value, args, strict=True))
    if origin is typing.Literal:
        if value not in typing.get_args(hint):
            raise TypeError
        return value
    if hint is type(None):
        if value is not None:
            raise TypeError
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise TypeError
        return value
    if hint is int:  # bool is a subclass of int, but `steps = true` is no step count
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError
        return value if type(value) is int else int(value)  # numpy integers too
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError
        return value if type(value) is float else float(value)
    if hint is str:
        if not isinstance(value, str):
            raise TypeError
        return value
    return value  # other types are not checked here


def check_types(obj: Any) -> None:
    """Check every field of the config dataclass ``obj`` against its type hint, in place.

    Called first in ``__post_init__``: ``steps = 2.5`` or ``steps = true`` is a TypeError naming
    the field (``bool`` is not accepted as ``int``); whole numbers become floats where a float is
    expected and lists become tuples, so a TOML file and Python code give the same object.
    """
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        try:
            normal = _checked(value, hints[f.name])
        except TypeError:
            raise TypeError(f"{f.name} must be {_describe(hints[f.name])}, got {value!r}") from None
        if normal is not value:
            object.__setattr__(obj, f.name, normal)


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
    :func:`from_dict` builds the dataclasses.
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
        fields = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(table) - fields)
        if bad:
            raise Feds2rError(
                f"config file {path}: unknown key(s) {', '.join(bad)} in [{name}]; "
                f"valid keys: {', '.join(sorted(fields))}"
            )
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


def parse_size(text: str) -> tuple[int, int]:
    """``"HxW"`` such as ``"256x512"`` -> ``(256, 512)``; both sides must be positive integers.

    Raises ValueError, naming the text, for anything else (``"256"``, ``"256x"``, ``"0x512"``).
    """
    try:
        h, w = (int(v) for v in str(text).lower().split("x"))
    except ValueError:
        raise ValueError(f"expected HxW such as 256x512, got {text!r}") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"expected HxW with positive sides such as 256x512, got {text!r}")
    return h, w


def format_size(size: tuple[int, int]) -> str:
    """``(H, W)`` -> ``"HxW"``, the form :func:`parse_size` reads."""
    return f"{size[0]}x{size[1]}"


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
