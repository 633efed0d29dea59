"""Config values against their type hints: the checks every config runs in ``__post_init__``,
and the ``HxW`` text of a size.

:func:`check_types` normalises a config's fields in place (whole number -> float where a float is
expected, list -> tuple) and raises a TypeError naming the field otherwise, so that a TOML file
and Python code give the same object.
"""

from __future__ import annotations

import dataclasses
import numbers
import types
import typing
from typing import Any


def is_config(hint: Any) -> bool:
    """Whether the type hint ``hint`` is a config dataclass (a nested section)."""
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def coerce(value: Any, hint: Any) -> Any:
    """``value`` as read from TOML, made to fit ``hint`` where TOML cannot say it: a list where a
    tuple is expected becomes a tuple, an integer where a float is expected a float."""
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


def describe(hint: Any) -> str:
    """``hint`` in words, for error messages: ``int | None`` -> "an integer or None"."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        return " or ".join(describe(a) for a in typing.get_args(hint))
    if origin is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
        return f"a list of {len(args)} {describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
    if origin is typing.Literal:
        return " or ".join(repr(a) for a in typing.get_args(hint))
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    return names.get(hint, "None" if hint is type(None) else getattr(hint, "__name__", str(hint)))


def checked(value: Any, hint: Any) -> Any:
    """``value`` normalised to ``hint`` (whole number -> float, list -> tuple) or TypeError."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        for arg in typing.get_args(hint):
            try:
                return checked(value, arg)
            except TypeError:
                continue
        raise TypeError
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, list | tuple):
            raise TypeError
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(checked(v, args[0]) for v in value)
        if len(value) != len(args):
            raise TypeError
        return tuple(checked(v, a) for v, a in zip(value, args, strict=True))
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
    if is_config(hint):
        if not isinstance(value, hint):
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
            normal = checked(value, hints[f.name])
        except TypeError:
            raise TypeError(f"{f.name} must be {describe(hints[f.name])}, got {value!r}") from None
        if normal is not value:
            object.__setattr__(obj, f.name, normal)


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
