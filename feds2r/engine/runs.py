"""Claiming the output folder of a training run (client training, pretraining, the server's
distillation, self-training and lightweight stages) under feds2r's one output rule.

:func:`claim_run` is :func:`feds2r.io.prepare_output` with a training run's own comparison: the
folder must be new, empty, or a run of the same command whose config, preset and inputs are this
run's (:func:`~feds2r.engine.train.check_resume`), so that it is resumed or found finished.
Anything else is refused before a byte of the folder changes. A run that fails before its first
checkpoint leaves a new or empty folder as it found it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from feds2r.engine import distributed
from feds2r.engine.train import TrainConfig, check_resume
from feds2r.errors import Feds2rError
from feds2r.io import Output, config_tables, prepare_output

RUN_TABLES: dict[str, frozenset[str]] = {
    "client train": frozenset({"client", "train"}),
    "pretrain": frozenset({"pretrain", "train"}),
    "server distill": frozenset({"server", "distill", "train"}),
    "server self-train": frozenset({"selftrain", "server", "distill", "train"}),
    "server lite": frozenset({"lite", "server", "distill", "train"}),
}
"""The tables of each training command's ``config.toml``: how a run written before output
folders carried a state file is recognised."""


def has_run_state(folder: str | Path) -> bool:
    """Whether ``folder`` holds a resumable training state (``state/state.json``)."""
    return (Path(folder) / "state" / "state.json").is_file()


def _check_preset(out: Path, preset: str | None, preset_flag: str | None, source: str) -> None:
    """Refuse a run of another preset, naming the flag this command sets it with."""
    try:
        info = json.loads((out / "state" / "state.json").read_text())
    except (OSError, ValueError):
        return  # no state, or a damaged one that check_resume reports
    held = info.get("preset") if isinstance(info, dict) else None
    if preset is None or held in (None, preset):
        return
    what = "finished" if info.get("done") else "stopped"
    how = f"resume it with {preset_flag} {held}" if preset_flag else f"resume it with {source}"
    raise Feds2rError(
        f"{out} holds a {what} run of preset {held!r}, not {preset!r}; {how}, or use another "
        "output folder"
    )


def claim_run(
    out: str | Path,
    kind: str,
    config: TrainConfig,
    *,
    preset: str | None,
    identity: dict[str, Any] | None,
    preset_flag: str | None = "--preset",
    source: str = "the same inputs",
    flag: str = "--out",
    alternatives: tuple[TrainConfig, ...] = (),
) -> Output | distributed.Unclaimed:
    """Claim ``out`` for a training run of the command ``kind`` (``"client train"``, ...).

    Refused, with ``out`` untouched: a file, a read-only place, a folder locked by a live run,
    a folder holding anything but a run of ``kind``, or a run of ``kind`` with another config,
    preset (named with ``preset_flag``, or ``source`` for a command whose preset comes from an
    input) or ``identity``; a run of ``config`` or of one of ``alternatives`` (the configs the
    command may train with once its inputs are resolved) is this one. Returns the claimed
    :class:`~feds2r.io.Output`; the caller writes the run and calls ``finish()``, or ``close()``
    on failure. Under torchrun rank 0 claims and
    the other processes get a :class:`~feds2r.engine.distributed.Unclaimed` once it has.
    """
    tables = RUN_TABLES[kind]

    def same(path: Path) -> None:
        _check_preset(path, preset, preset_flag, source)
        for other in alternatives:
            try:
                check_resume(path, other, preset=preset, identity=identity)
                return
            except Feds2rError:
                pass  # the error that counts is the main config's
        check_resume(path, config, preset=preset, identity=identity)

    return distributed.claim_on_main(
        out,
        lambda: prepare_output(
            out,
            kind,
            marker=lambda path: config_tables(path) == tables,
            flag=flag,
            same=same,
            keep=has_run_state,
        ),
    )


__all__ = ["RUN_TABLES", "claim_run", "has_run_state"]
