"""Frozen config dataclasses <-> TOML and Flower's run config.

Load TOML tables with overrides (:func:`load_tables`, :func:`from_dict`, nested configs too),
save the resolved config (:func:`to_toml`, :func:`write_run_config`), map a nested config to flat
run-config keys and back (:func:`flatten`, :func:`unflatten`), and read each field's docstring
(:func:`field_docs`) for the command line's help and the field table of ``docs/config.md``
(:func:`field_table`).
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import numbers
import re
import textwrap
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
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
    if _is_config(hint):
        if not isinstance(value, hint):
            raise TypeError
        return value
    return value  # other types are not checked here


def _is_config(hint: Any) -> bool:
    """Whether the type hint ``hint`` is a config dataclass (a nested section)."""
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


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
    """Build a config dataclass from a dict; unknown keys are an error naming the valid ones.

    A field that is itself a config dataclass (a section, such as ``FederationConfig.clients``)
    is built from a nested dict the same way, so a TOML file's nested tables load back.
    """
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise Feds2rError(
            f"{source}: unknown key(s) {', '.join(unknown)} for {cls.__name__}; "
            f"valid keys: {', '.join(sorted(names))}"
        )
    defaults = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for k, v in data.items():
        if _is_config(hints[k]) and isinstance(v, dict):
            # a partial section keeps the rest of the field's own default, not its class's
            default = _field_default(defaults[k])
            if dataclasses.is_dataclass(default):
                v = _merged(_nested_dict(default), v)
            values[k] = from_dict(hints[k], v, source=f"{source} [{k}]")
        else:
            values[k] = _coerce(v, hints[k])
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise Feds2rError(f"{source}: invalid {cls.__name__}: {exc}") from None


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _merged(base: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` written over it, nested dicts merged key by key."""
    out = dict(base)
    for k, v in changes.items():
        out[k] = _merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


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


CONFIG_NAME = "config.toml"
"""The file in which every run records the resolved config it ran with."""


def write_run_config(out: str | Path, sections: dict[str, Any]) -> Path:
    """Write ``OUT/config.toml``: the resolved config of the run or stage writing into ``out``.

    ``sections``: table name -> config dataclass or dict (:func:`to_toml`). Every stage and
    command records its config through this one function; call it once the run is known to
    start (after a resume check), so that a refused resume leaves the old file alone. Returns
    the file's path.
    """
    from feds2r.io import write_atomic

    path = Path(out) / CONFIG_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, to_toml(sections).encode())
    return path


# ----------------------------------------------------------------------------- flat run config

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
    hints = typing.get_type_hints(type(obj))
    out: dict[str, Scalar] = {}
    for f in dataclasses.fields(obj):
        key, value = f.name.replace("_", "-"), getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out.update({f"{key}.{k}": v for k, v in flatten(value).items()})
        elif value is not None:
            out[key] = _to_scalar(value, hints[f.name], key)
    return out


def _to_scalar(value: Any, hint: Any, key: str) -> Scalar:
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
            raise TypeError(f"expected {_describe(h)} such as '1,2', got {value!r}") from None
    return value


def flat_keys(cls: type) -> dict[str, Any]:
    """Every flat run-config key of the config dataclass ``cls`` (see :func:`flatten`), with the
    type hint of its field."""
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        key = f.name.replace("_", "-")
        if _is_config(hints[f.name]):
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
    nested: dict[str, Any] = _nested_dict(base) if base is not None else {}
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


def _nested_dict(obj: Any) -> dict[str, Any]:
    """``obj``'s fields as a dict, nested sections as nested dicts (tuples stay tuples)."""
    return {
        f.name: _nested_dict(v) if dataclasses.is_dataclass(v := getattr(obj, f.name)) else v
        for f in dataclasses.fields(obj)
    }


# ----------------------------------------------------------------------------- field docs


def field_docs(cls: type) -> dict[str, str]:
    """The docstring of each field of the dataclass ``cls``: the string literal written under the
    field in the class body (read from the source with :mod:`ast`), cleaned of indentation.
    Fields without one are absent; inherited fields are included."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):  # no source (a built or frozen class)
            continue
        body = ast.parse(source).body[0].body
        for node, after in zip(body, body[1:], strict=False):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


# ----------------------------------------------------------------------------- field table


def field_table(classes: Iterable[type]) -> str:
    """A Markdown reference of the config dataclasses ``classes``: per class, its docstring and
    a table of its fields (type, default, the field's docstring), as ``docs/config.md`` holds."""
    parts = []
    for cls in classes:
        hints = typing.get_type_hints(cls)
        docs = field_docs(cls)
        intro = _markdown(inspect.cleandoc(cls.__doc__ or "").split("\n\n")[0])
        parts += [f"### {cls.__name__}", "", f"`{cls.__module__}.{cls.__name__}`: {intro}", ""]
        parts += ["| field | type | default | meaning |", "|---|---|---|---|"]
        for f in dataclasses.fields(cls):
            meaning = _markdown(docs.get(f.name, ""))
            row = (f"`{f.name}`", _type_name(hints[f.name]), _default_text(f), meaning)
            parts.append("| " + " | ".join(row) + " |")
        parts.append("")
    return "\n".join(parts)


def _markdown(doc: str) -> str:
    """A docstring as one Markdown table cell: one line, roles and RST literals as code."""
    text = " ".join(doc.split())
    text = re.sub(r":\w+:`~?([\w.]+)`", lambda m: f"`{m.group(1).split('.')[-1]}`", text)
    return text.replace("``", "`").replace("|", "\\|")


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        return " \\| ".join(_type_name(a) for a in typing.get_args(hint))
    if origin is tuple:
        args = typing.get_args(hint)
        inner = ", ".join("..." if a is Ellipsis else _type_name(a) for a in args)
        return f"tuple[{inner}]"
    if hint is type(None):
        return "None"
    if _is_config(hint):
        return f"[{hint.__name__}](#{hint.__name__.lower()})"
    return getattr(hint, "__name__", str(hint))


def _default_text(f: dataclasses.Field) -> str:
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
        return "required"
    return f"`{_value_text(_field_default(f))}`"


def _value_text(value: Any) -> str:
    """A default as Python writes it; a nested config as its class with the fields it changes."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        try:
            plain = type(value)()
        except TypeError:  # required fields: show them all
            plain = None
        changed = [
            f"{f.name}={_value_text(getattr(value, f.name))}"
            for f in dataclasses.fields(value)
            if plain is None or getattr(value, f.name) != getattr(plain, f.name)
        ]
        return f"{type(value).__name__}({', '.join(changed)})"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


REFERENCE_BEGIN = "<!-- the field table: generated by `python -m feds2r.config docs/config.md` -->"
REFERENCE_END = "<!-- end of the generated field table -->"


def reference_classes() -> list[type]:
    """Every config dataclass of feds2r, in the order ``docs/config.md`` lists them."""
    from feds2r.client import ClientSettings
    from feds2r.demo import Profile, WorldSizes
    from feds2r.engine.train import TrainConfig
    from feds2r.federation.protocol import FederationConfig
    from feds2r.federation.round_client import RoundsConfig
    from feds2r.pretrain import PretrainConfig
    from feds2r.server.distill import DistillConfig, DistillInputs
    from feds2r.server.inconsistency import UnstableRule
    from feds2r.server.lite import LiteConfig
    from feds2r.server.pipeline import GenerationConfig, ServerConfig, StageInputs
    from feds2r.server.selftrain import SelfTrainConfig

    return [
        TrainConfig,
        ClientSettings,
        ServerConfig,
        UnstableRule,
        GenerationConfig,
        DistillConfig,
        DistillInputs,
        SelfTrainConfig,
        LiteConfig,
        StageInputs,
        FederationConfig,
        RoundsConfig,
        PretrainConfig,
        Profile,
        WorldSizes,
    ]


def with_reference(text: str) -> str:
    """``text`` (``docs/config.md``) with its generated block replaced by the current table."""
    head, sep, rest = text.partition(REFERENCE_BEGIN)
    _, sep2, tail = rest.partition(REFERENCE_END)
    if not (sep and sep2):
        raise ValueError("no generated field table: its begin and end markers are missing")
    table = field_table(reference_classes())
    return f"{head}{REFERENCE_BEGIN}\n\n{table}\n{REFERENCE_END}{tail}"


if __name__ == "__main__":  # python -m feds2r.config docs/config.md: regenerate the table
    import sys

    target = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/config.md")
    target.write_text(with_reference(target.read_text()))
    print(f"wrote the field table of {len(reference_classes())} config classes to {target}")
