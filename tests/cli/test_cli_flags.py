"""The flags helper: flags from config dataclasses, the file-then-flags merge, typed commands."""

from __future__ import annotations

import argparse
import re

import pytest

from feds2r.cli import build_parser, main
from feds2r.cli.flags import (
    add_config_flags,
    add_switch,
    call,
    config_from_flags,
    summary,
)
from feds2r.engine.train import TrainConfig


def test_flags_take_type_default_and_help_from_the_field():
    p = argparse.ArgumentParser()
    add_config_flags(
        p, "train", TrainConfig, ("steps", "crop", "batch_size"), help={"crop": "crop"}
    )
    text = p.format_help()
    assert "--steps STEPS" in text and "optimizer steps (default 1000)" in text
    assert "crop (default 128x256)" in text and "images per step (default 8)" in text
    args = p.parse_args(["--steps", "5", "--crop", "64x128"])
    given = {k: v for k, v in vars(args).items() if k.startswith("train.")}
    assert given == {"train.steps": 5, "train.crop": (64, 128), "train.batch_size": None}
    assert args.configs == {"train": TrainConfig}  # the command's `train` parameter


def test_the_file_then_flags_then_switches():
    from feds2r.server.distill import DistillConfig

    p = argparse.ArgumentParser()
    add_config_flags(p, "distill", DistillConfig, ("kd", "temperature"))
    add_switch(p, "--fusion", "distill", "feature_fusion", True)
    args = p.parse_args(["--temperature", "3", "--fusion"])
    base = {"kd": "pixel", "temperature": 1.0, "feature_fusion": False}
    config = config_from_flags(DistillConfig, args, "distill", base=base)
    assert config == DistillConfig(kd="pixel", temperature=3.0, feature_fusion=True)


def test_a_command_is_a_typed_function_called_by_parameter_name():
    seen = {}

    def run(out: str, train: TrainConfig, progress: bool) -> int:
        seen.update(out=out, train=train, progress=progress)
        return 0

    p = argparse.ArgumentParser()
    p.add_argument("--out")
    p.add_argument("--quiet", dest="progress", action="store_false")
    add_config_flags(p, "train", TrainConfig, ("steps", "warmup_steps"))  # registers `train`
    assert call(run, p.parse_args(["--out", "o", "--steps", "3", "--warmup-steps", "1"])) == 0
    assert seen == {"out": "o", "train": TrainConfig(steps=3, warmup_steps=1), "progress": True}


def test_docstring_summaries():
    assert summary("Optimizer steps.") == "optimizer steps"
    assert summary("With x: e.g. ``a.b``. More.") == "with x: e.g. a.b"
    assert summary("HTTP endpoint, e.g. http://x/v1.") == "HTTP endpoint, e.g. http://x/v1"


def _defaults_in_help(argv: list[str], capsys) -> dict[str, str]:
    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    option = r"(--[a-z-]+) [A-Z_]+ (?:(?! --[a-z]).)*?default ([^;)]+)\)"
    return dict(re.findall(option, text))


def test_help_states_the_defaults_the_commands_run_with(capsys):
    """No default is written twice: the help reads it from the config the command builds."""
    from feds2r.pretrain import PretrainConfig

    pre = PretrainConfig().train
    shown = _defaults_in_help(["pretrain"], capsys)
    assert shown["--lr"] == f"{pre.lr:g}" and shown["--steps"] == str(pre.steps)
    shown = _defaults_in_help(["federate", "app"], capsys)
    assert shown["--client-steps"] == "300" and shown["--warmup-steps"] == "50"
    assert shown["--crop"] == "128x256" and shown["--generated-images"] == "0"
    shown = _defaults_in_help(["server", "augment"], capsys)
    assert shown["--num"] == "200" and shown["--size"] == "256x512"


def test_build_parser_builds_every_command_and_only_the_invoked_one_on_demand():
    full = build_parser()
    lazy = build_parser(["data", "formats"])

    def leaf(parser, path):
        for name in path:
            action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
            parser = action.choices[name]
        return {o for a in parser._actions for o in a.option_strings}

    assert "--steps" in leaf(full, ["client", "train"])
    assert "--steps" not in leaf(lazy, ["client", "train"])  # not invoked: not built
    assert "--json" in leaf(lazy, ["data", "formats"])
