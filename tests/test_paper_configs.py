"""Every shipped paper recipe (configs/paper/*.toml) is read by the command it is for, through
the same code that command uses (its parser, its --config tables, feds2r.cli.flags.call), with
every table and key checked; docs/paper-scale.md's commands parse and name only shipped files;
its backbone conversion turns an ImageNet classification folder into weights the presets load."""

from __future__ import annotations

import functools
import re
import runpy
import sys
from pathlib import Path

import pytest
import torch

from feds2r.cli import build_parser
from feds2r.cli.flags import call
from feds2r.errors import Feds2rError
from tests.test_readme import feds2r_commands

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs" / "paper").glob("*.toml"))
DOC = ROOT / "docs" / "paper-scale.md"

COMMANDS = {
    "client": ["client", "train", "--data", "gta5:data/gta5"],
    "distill": ["server", "distill"],
    "selftrain": ["server", "self-train"],
    "lite": ["server", "lite"],
}
"""Each config's command, by the last word of its name (``swin-t-client.toml``: client)."""


def resolve(config: Path, out: Path) -> dict:
    """The parameters the command would be called with for ``--config config``: read exactly as
    the command reads them, the command's own function not run."""
    argv = [*COMMANDS[config.stem.rsplit("-", 1)[1]], "--config", str(config), "--out", str(out)]
    args = build_parser(argv).parse_args(argv)
    seen: dict = {}

    @functools.wraps(args.func)  # the same parameters, so `call` builds the same arguments
    def capture(**kwargs):
        seen.update(kwargs)
        return 0

    assert call(capture, args) == 0
    return seen


def test_the_recipes_are_shipped() -> None:
    names = {c.name for c in CONFIGS}
    for backbone in ("swin-t", "r50"):
        assert {f"{backbone}-{k}.toml" for k in COMMANDS} <= names
    assert all(c.stem.rsplit("-", 1)[1] in COMMANDS for c in CONFIGS), names


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.name)
def test_every_recipe_is_read_by_its_command(config, tmp_path) -> None:
    params = resolve(config, tmp_path / "out")
    train = params["train"]
    preset = "m2f-swin-t" if config.name.startswith("swin-t") else "m2f-r50"
    assert train.amp and train.crop == (512, 1024) and train.height == 1024
    kind = config.stem.rsplit("-", 1)[1]
    if kind in ("client", "distill"):  # Mask2Former's Cityscapes recipe
        assert (train.steps, train.batch_size, train.lr) == (90000, 16, 1e-4)
        assert (train.weight_decay, train.grad_clip, train.scale) == (0.05, 0.01, (0.5, 2.0))
    else:  # DAFormer's self-training schedule
        assert (train.steps, train.batch_size, train.warmup_steps) == (40000, 2, 1500)
    if kind == "client":
        assert params["client"].preset == preset
        assert params["client"].backbone_weights.endswith("-imagenet.safetensors")
    elif kind == "distill":
        assert params["distill"].student == preset and params["distill"].feature_fusion
        assert len(params["server"].clients) == 4
    else:
        assert params["server"].model and len(params["server"].clients) == 4
    if kind == "lite":
        assert params["lite"].student == "seg-effl0" and params["lite"].pretrained
    if kind == "selftrain":
        assert params["selftrain"].ema == 0.999


def test_an_unknown_key_in_a_recipe_is_refused(tmp_path) -> None:
    # the loaders the commands use check every key: a typo cannot pass silently
    config = tmp_path / "swin-t-client.toml"
    text = (ROOT / "configs" / "paper" / "swin-t-client.toml").read_text()
    config.write_text(text.replace("steps = 90000", "step = 90000"))
    with pytest.raises(Feds2rError, match="unknown key"):
        resolve(config, tmp_path / "out")


def test_the_protocol_commands_parse_and_name_shipped_configs() -> None:
    text = DOC.read_text()
    commands = list(feds2r_commands(text))
    assert len(commands) >= 10
    for lineno, argv in commands:
        try:
            build_parser(argv).parse_args(argv)
        except SystemExit as exc:  # argparse's refusal
            pytest.fail(f"docs/paper-scale.md:{lineno}: `feds2r {' '.join(argv)}` ({exc})")
    named = set(re.findall(r"configs/paper/([\w.-]+\.toml)", text))
    assert named == {c.name for c in CONFIGS}


def test_the_backbone_conversion_gives_weights_the_presets_load(tmp_path, monkeypatch) -> None:
    """The doc's conversion, on random ImageNet-shaped classification models saved as the Hugging
    Face repositories it names are (config.json + model.safetensors)."""
    from transformers import (
        ResNetConfig,
        ResNetForImageClassification,
        SwinConfig,
        SwinForImageClassification,
    )

    from feds2r.models import create_model

    script = re.search(r"```python\n(# convert_backbone\.py.*?)```", DOC.read_text(), re.S)
    assert script, "docs/paper-scale.md has no convert_backbone.py block"
    path = tmp_path / "convert_backbone.py"
    path.write_text(script.group(1))
    torch.manual_seed(0)
    sources = {
        "m2f-swin-t": SwinForImageClassification(
            SwinConfig(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7)
        ),
        "m2f-r50": ResNetForImageClassification(
            ResNetConfig(hidden_sizes=[256, 512, 1024, 2048], depths=[3, 4, 6, 3])
        ),
    }
    for preset, source in sources.items():
        folder, dest = tmp_path / preset, tmp_path / f"{preset}.safetensors"
        source.save_pretrained(folder)
        monkeypatch.setattr(sys, "argv", ["convert_backbone.py", str(folder), str(dest)])
        runpy.run_path(str(path), run_name="__main__")
        model = create_model(preset, backbone_weights=str(dest))
        loaded = model.backbone().state_dict()
        reference = {k.removeprefix("resnet."): v for k, v in source.state_dict().items()}
        same = [k for k, v in loaded.items() if k in reference and torch.equal(v, reference[k])]
        # every tensor of the classification model's body arrives; Swin's four output norms
        # are new (its classifier has one final norm instead)
        new = [k for k in loaded if k not in reference]
        assert len(same) + len(new) == len(loaded)
        assert all(k.startswith("hidden_states_norms.") for k in new), new
        assert len(new) == (8 if preset == "m2f-swin-t" else 0)
