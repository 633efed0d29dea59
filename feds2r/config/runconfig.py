"""Flower's run config: a nested config as flat scalar values and back (:func:`flatten`,
:func:`unflatten`, :func:`flat_keys`)."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from feds2r.config.dicts import as_dict, from_dict
from feds2r.config.values import describe, format_size, is_config, parse_size
from feds2r.errors import Feds2rError

T = TypeVar("T")

Scalar = bool | int | float | str
"""A value of Flower's run config (``flwr.app.UserConfigValue``): no lists, no None."""


def flatten(obj: Any) -> dict[str, Scalar]:
    """The config dataclass ``obj`` as flat run-config values, the form Flower's run config takes.

    Keys are field names with dashes, nested sections joined with dots (``server.train.steps``,
    ``clients.batch-size``), as Flower flattens the nested tables of ``[tool.flwr.app.config]``.
    Values are scalars: a pair of integers becomes ``"HxW"`` (a crop, a size), other tuples
    comma-separated strings (``"0.75,1.5"``; strings joined with ``;``); None values are left
    out (their field keeps its default). :func:`unflatten` reads it back.
    """
    out: dict[str, Scalar] = {}
    for f in dataclasses.fields(obj):
        key, value = f.name.replace("_", "-"), getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out.update({f"{key}.{k}": v for k, v in flatten(value).items()})
        elif value is not None:
            out[key] = _to_scalar(value, key)
    return out


def _to_scalar(value: Any, key: str) -> Scalar:
    if not isinstance(value, tuple):
        return value
    if len(value) == 2 and all(type(v) is int for v in value):
        return format_size(value)
    if all(isinstance(v, str) for v in value):
        if any(";" in v for v in value):
            raise ValueError(f"{key}: an entry holds ';', which separates the entries: {value!r}")
        return ";".join(value)
    return ",".join(repr(v) for v in value)


def _from_scalar(value: Any, hint: Any) -> Any:
    """A run-config string read back as the tuple ``hint`` asks for (see :func:`flatten`)."""
    if not isinstance(value, str):
        return value
    hints = (
        typing.get_args(hint)
        if typing.get_origin(hint) in (types.UnionType, typing.Union)
        else (hint,)
    )
    for h in hints:
        if typing.get_origin(h) is not tuple:
            continue
        args = typing.get_args(h)
        if args and args[0] is str:
            return tuple(v for v in value.split(";") if v) if value else ()
        if args == (int, int):
            try:
                return parse_size(value)
            except ValueError as exc:
                raise TypeError(str(exc)) from None
        kind = float if float in args else int
        try:
            return tuple(kind(v) for v in value.split(","))
        except ValueError:
            raise TypeError(f"expected {describe(h)} such as '1,2', got {value!r}") from None
    return value


def flat_keys(cls: type) -> dict[str, Any]:
    """Every flat run-config key of the config dataclass ``cls`` (see :func:`flatten`), with the
    type hint of its field."""
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        key = f.name.replace("_", "-")
        if is_config(hints[f.name]):
            out.update({f"{key}.{k}": h for k, h in flat_keys(hints[f.name]).items()})
        else:
            out[key] = hints[f.name]
    return out


def unflatten(
    cls: type[T],
    flat: Mapping[str, Any],
    *,
    aliases: Mapping[str, Iterable[str]] | None = None,
    base: Any = None,
    source: str = "run config",
) -> T:
    """Build the config dataclass ``cls`` from flat run-config values (the inverse of
    :func:`flatten`), every value checked against its field's type.

    ``aliases``: other names a key may have (old flat name -> the keys it sets, e.g.
    ``"batch-size"`` -> ``("clients.batch-size", "server.train.batch-size")``); an alias and a
    key it sets given with different values is an error. ``base``: an instance of ``cls`` whose
    values the absent keys keep (default: the fields' defaults). Unknown keys are an error that
    suggests the closest valid one.
    """
    aliases = dict(aliases or {})
    known = flat_keys(cls)
    values: dict[str, Any] = {}
    given_as: dict[str, str] = {}
    for key, value in flat.items():
        targets = tuple(aliases[key]) if key in aliases else (key,)
        for target in targets:
            if target not in known:
                close = difflib.get_close_matches(target, [*known, *aliases], n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise Feds2rError(
                    f"{source}: unknown key {key!r}{hint}; valid keys are the fields of "
                    f"{cls.__name__} as flat names such as {next(iter(known))!r}"
                    + (f", or {', '.join(repr(a) for a in aliases)}" if aliases else "")
                )
            if target in values and values[target] != value:
                raise Feds2rError(
                    f"{source}: {target} is given twice ({given_as[target]} = "
                    f"{values[target]!r}, {key} = {value!r}); keep one"
                )
            values[target], given_as[target] = value, key
    nested: dict[str, Any] = as_dict(base) if base is not None else {}
    for key, value in values.items():
        try:
            value = _from_scalar(value, known[key])
        except TypeError as exc:
            raise Feds2rError(f"{source}: {key}: {exc}") from None
        parts = [p.replace("-", "_") for p in key.split(".")]
        table = nested
        for part in parts[:-1]:
            table = table.setdefault(part, {})
        table[parts[-1]] = value
    return from_dict(cls, nested, source=source)
