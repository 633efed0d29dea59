"""Command-line flags derived from the config dataclasses, and the call of a command's function.

A command is a plain typed function (``client_train(out, client: ClientSettings, train:
TrainConfig, *, on_error, progress)``). Its parser names every parameter by its ``dest``; a
parameter typed with a config dataclass is built by :func:`config_from_flags` from, in order,
the dataclass's defaults (or the command's ``base``), the ``--config`` file's table of that name,
and the flags given. :func:`add_config_flags` adds one flag per field: its type, choices and
"(default X)" come from the field, its help from the field's docstring
(:func:`feds2r.config.field_docs`) unless the command words it itself.

Why our own helper and not tyro, jsonargparse, simple-parsing, cyclopts or typer: docs/cli.md.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from feds2r.config import (
    as_dict,
    field_docs,
    format_size,
    from_dict,
    load_tables,
    merged,
    parse_size,
)
from feds2r.errors import Feds2rError

SWITCH = "!"
"""Suffix of the ``dest`` of a switch (:func:`add_switch`): applied after the value flags."""


# ----------------------------------------------------------------------------- argparse types


def size_type(text: str) -> tuple[int, int]:
    """An argparse type: ``HxW`` (see :func:`feds2r.config.parse_size`), both sides even, >= 32."""
    try:
        h, w = parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if h < 32 or w < 32 or h % 2 or w % 2:
        raise argparse.ArgumentTypeError(f"size {text!r}: both sides must be even and >= 32")
    return h, w


def count_type(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = "integer"  # how argparse names the type in its messages
    return parse


# ----------------------------------------------------------------------------- help text


def summary(doc: str) -> str:
    """The first sentence of a field's docstring as flag help: lower-case start, no final
    full stop, RST markup (````x````) removed."""
    text = " ".join(doc.replace("``", "").split())
    match = re.search(r"(?<!e\.g)(?<!i\.e)\.(\s|$)", text)
    text = text[: match.start()] if match else text
    if len(text) > 1 and text[0].isupper() and not text[1].isupper():
        text = text[0].lower() + text[1:]
    return text


def show_default(value: Any) -> str:
    """A default as help text writes it: ``128x256`` for a size, ``0.0006`` for a float."""
    if isinstance(value, tuple) and len(value) == 2 and all(type(v) is int for v in value):
        return format_size(value)
    if isinstance(value, tuple):
        return ",".join(show_default(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def flag_help(text: str | None, default: Any) -> str | None:
    """``text`` followed by ``(default X)``, unless the default is empty or already named."""
    if default in (None, "", ()) or isinstance(default, bool):
        return text
    if text and "default" in text:
        return text
    shown = f"default {show_default(default)}"
    if not text:
        return shown
    if text.endswith(")"):  # "model preset (see `feds2r models`; default m2f-cpu)"
        return f"{text[:-1]}; {shown})"
    return f"{text} ({shown})"


# ----------------------------------------------------------------------------- config flags


def add_config_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    section: str,
    cls: type,
    only: Iterable[str],
    *,
    defaults: Any = None,
    rename: Mapping[str, str] | None = None,
    help: Mapping[str, str | None] | None = None,
    types: Mapping[str, Callable[[str], Any]] | None = None,
    choices: Mapping[str, Iterable[str]] | None = None,
    extra: Mapping[str, Mapping[str, Any]] | None = None,
) -> None:
    """Add a flag for each field of the config dataclass ``cls`` named in ``only``.

    ``--field-name`` (or ``--RENAME``) stores into ``SECTION.field`` with default None (not
    given), for :func:`config_from_flags` to build the ``section`` parameter of the command.
    The flag's type follows the field (int, float, str; ``HxW`` for a pair of integers;
    ``types`` overrides), its help is ``help[field]`` or the docstring's first sentence, then
    "(default X)" from ``defaults`` (an instance of ``cls``; default: ``cls()``). A help of
    None leaves the flag without help text. ``extra``: more ``add_argument`` keywords per field
    (``nargs``, ``metavar``).
    """
    rename, help, types = dict(rename or {}), dict(help or {}), dict(types or {})
    choices, extra = dict(choices or {}), dict(extra or {})
    if "." not in section:
        register_config(parser, section, cls)
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    base = defaults if defaults is not None else cls()
    for name in only:
        hint = hints[name]
        text = help[name] if name in help else (summary(docs[name]) if name in docs else None)
        if name not in help and name not in docs:
            text = name.replace("_", " ")
        flag = rename.get(name, name).replace("_", "-")
        kwargs: dict[str, Any] = {"dest": f"{section}.{name}", "default": None}
        kwargs["type"] = types.get(name) or _flag_type(hint)
        if name in choices:
            kwargs["choices"] = tuple(choices[name])
        else:
            kwargs["metavar"] = flag.replace("-", "_").upper()  # as argparse names it
        kwargs.update(extra.get(name, {}))
        if kwargs["type"] is None:
            del kwargs["type"]
        default = getattr(base, name)
        shown = flag_help(text, default) if text is not None else None
        if shown is not None:
            kwargs["help"] = shown
        parser.add_argument("--" + flag, **kwargs)


def _flag_type(hint: Any) -> Callable[[str], Any] | None:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in args if a is not type(None))
        args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple and args == (int, int):
        return size_type
    if typing.get_origin(hint) is tuple:
        return None  # nargs lists: the caller says how
    return {int: int, float: float}.get(hint)


def add_switch(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    flag: str,
    section: str,
    field: str,
    value: Any,
    help: str | None = None,
) -> None:
    """A flag without a value that sets ``SECTION.field`` to ``value`` (``--no-align``: False),
    over the same field's value flag and the config file."""
    dest = f"{section}.{field}{SWITCH}"
    parser.add_argument(flag, dest=dest, action="store_const", const=value, default=None, help=help)


def config_from_flags(
    cls: type,
    args: argparse.Namespace,
    section: str,
    *,
    base: Mapping[str, Any] | None = None,
    source: str = "arguments",
) -> Any:
    """The ``section`` config of a command: ``base`` (raw values, e.g. the config file's table
    of that name), then the flags given (``SECTION.field`` dests, nested sections as
    ``SECTION.sub.field``), then the switches, built and checked by
    :func:`feds2r.config.from_dict`."""
    data: dict[str, Any] = copy.deepcopy(dict(base or {}))
    given = {k: v for k, v in vars(args).items() if k.startswith(section + ".") and v is not None}
    for key in sorted(given, key=lambda k: k.endswith(SWITCH)):  # switches last
        path = key.removesuffix(SWITCH)[len(section) + 1 :].split(".")
        table = data
        for part in path[:-1]:
            table = table.setdefault(part, {})
        table[path[-1]] = given[key]
    return from_dict(cls, data, source=source)


# ----------------------------------------------------------------------------- config file


def register_config(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, name: str, cls: type
) -> None:
    """Say that the command's parameter ``name`` is the config dataclass ``cls`` (:func:`call`
    builds it from the flags and the config file)."""
    configs = parser.get_default("configs") or {}
    parser.set_defaults(configs={**configs, name: cls})


def add_config_file(
    parser: argparse.ArgumentParser,
    tables: Mapping[str, type],
    *,
    top_level: Mapping[str, str] | None = None,
    help: str,
) -> None:
    """``--config FILE``: a TOML file whose ``tables`` (name -> config dataclass) are the base
    of the parameters of those names (:func:`call`)."""
    parser.add_argument("--config", help=help)
    parser.set_defaults(config_tables=dict(tables), config_top_level=dict(top_level or {}))
    for name, cls in tables.items():
        register_config(parser, name, cls)


def config_tables(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The raw tables of the command's ``--config`` file (:func:`add_config_file`), or {}."""
    tables = getattr(args, "config_tables", None)
    if not tables or not getattr(args, "config", None):
        return {}
    return load_tables(args.config, tables, top_level=args.config_top_level)


# ----------------------------------------------------------------------------- commands


def call(func: Callable[..., int], args: argparse.Namespace) -> int:
    """Run the command function ``func`` with its parameters taken from ``args`` by name.

    A parameter registered as a config (:func:`register_config`, :func:`add_config_flags`) is
    built by :func:`config_from_flags` over the command's ``base`` for it (:func:`command`) and
    the ``--config`` file's table of its name; one with a builder (``builders`` in the
    parser's defaults: name -> function of ``args``) is what its builder returns; the others
    are ``args``' values of their names.
    """
    configs = getattr(args, "configs", None) or {}
    builders = getattr(args, "builders", None) or {}
    bases = getattr(args, "config_bases", None) or {}
    tables = config_tables(args)
    source = str(getattr(args, "config", None) or "arguments")
    kwargs = {}
    for name in inspect.signature(func).parameters:
        if name in builders:
            kwargs[name] = builders[name](args)
        elif name in configs:
            base = merged(as_dict(bases[name]) if name in bases else {}, tables.get(name, {}))
            kwargs[name] = config_from_flags(configs[name], args, name, base=base, source=source)
        else:
            kwargs[name] = getattr(args, name)
    return func(**kwargs)


def command(
    sub: argparse._SubParsersAction,
    name: str,
    func: Callable[..., int],
    *,
    help: str,
    description: str,
    epilog: str | None = None,
    flags: Callable[[argparse.ArgumentParser], None] | None = None,
    bases: Callable[[], Mapping[str, Any]] | None = None,
) -> argparse.ArgumentParser:
    """A subcommand that runs ``func`` (through :func:`call`).

    ``flags(parser)`` adds its arguments; it runs only when the command is the one invoked
    (:func:`complete`), so that ``feds2r --help`` or ``feds2r data check`` never import the
    models. ``bases()``: config instances the command's config parameters start from instead
    of their dataclass defaults (e.g. ``server augment``'s 200 images).
    """
    parser = sub.add_parser(
        name,
        help=help,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(func=func)
    pending = []
    if flags is not None:
        pending.append(flags)
    if bases is not None:
        pending.append(lambda p: p.set_defaults(config_bases=dict(bases())))
    parser.set_defaults(_pending=pending)
    return parser


def complete(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> None:
    """Add the deferred arguments (:func:`command`) of the subcommand ``argv`` names, or of
    every subcommand when ``argv`` is None."""
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    pending = parser.get_default("_pending")
    if pending:
        for add in pending:
            add(parser)
        parser.set_defaults(_pending=[])
    for action in subparsers:
        for name, child in action.choices.items():
            if argv is None:
                complete(child)
            elif argv and argv[0] == name:
                complete(child, argv[1:])


def add_quiet(parser: argparse.ArgumentParser, help: str | None = "no progress bars") -> None:
    """``--quiet``: the command's ``progress`` parameter False."""
    parser.add_argument("--quiet", dest="progress", action="store_false", help=help)


def add_skip_bad(parser: argparse.ArgumentParser, help: str) -> None:
    """``--skip-bad``: the command's ``on_error`` parameter "skip" (default "raise")."""
    parser.add_argument(
        "--skip-bad",
        dest="on_error",
        action="store_const",
        const="skip",
        default="raise",
        help=help,
    )


def require(value: Any, message: str) -> Any:
    """``value``, or a :class:`~feds2r.errors.Feds2rError` with ``message`` if it is empty."""
    if not value:
        raise Feds2rError(message)
    return value
