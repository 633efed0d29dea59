"""Config dataclasses from plain dicts and back: :func:`from_dict` (nested sections too),
:func:`as_dict`, :func:`merged`, :func:`field_default` and :func:`check_keys`."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from feds2r.config.values import coerce, is_config
from feds2r.errors import Feds2rError

T = TypeVar("T")


def from_dict(cls: type[T], data: dict[str, Any], *, source: str = "config") -> T:
    """Build a config dataclass from a dict; unknown keys are an error naming the valid ones.

    A field that is itself a config dataclass (a section, such as ``FederationConfig.clients``)
    is built from a nested dict the same way, so a TOML file's nested tables load back.
    """
    check_keys(cls, data, source=source, where=f"for {cls.__name__}")
    hints = typing.get_type_hints(cls)
    defaults = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for k, v in data.items():
        if is_config(hints[k]) and isinstance(v, dict):
            # a partial section keeps the rest of the field's own default, not its class's
            default = field_default(defaults[k])
            if dataclasses.is_dataclass(default):
                v = merged(as_dict(default), v)
            values[k] = from_dict(hints[k], v, source=f"{source} [{k}]")
        else:
            values[k] = coerce(v, hints[k])
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise Feds2rError(f"{source}: invalid {cls.__name__}: {exc}") from None


def check_keys(cls: type, keys: Iterable[str], *, source: str, where: str) -> None:
    """A :class:`~feds2r.errors.Feds2rError` naming the ``keys`` that are no field of the config
    dataclass ``cls`` and the valid ones: "SOURCE: unknown key(s) K WHERE; valid keys: ..."."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(keys) - names)
    if unknown:
        raise Feds2rError(
            f"{source}: unknown key(s) {', '.join(unknown)} {where}; "
            f"valid keys: {', '.join(sorted(names))}"
        )


def field_default(f: dataclasses.Field) -> Any:
    """The default value of the dataclass field ``f`` (its factory called), or None."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def merged(base: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` written over it, nested dicts merged key by key."""
    out = dict(base)
    for k, v in changes.items():
        out[k] = merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def as_dict(obj: Any) -> dict[str, Any]:
    """``obj``'s fields as a dict, nested sections as nested dicts, the values themselves
    (not copied, unlike :func:`dataclasses.asdict`); :func:`from_dict` reads it back."""
    return {
        f.name: as_dict(v) if dataclasses.is_dataclass(v := getattr(obj, f.name)) else v
        for f in dataclasses.fields(obj)
    }
