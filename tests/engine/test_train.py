"""The training loop: learning, schedule, and exact resumption after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from feds2r.client import supervised_step, train_client
from feds2r.data import open_dataset
from feds2r.data.world import synth_domain
from feds2r.engine.data import ResizedCache
from feds2r.engine.train import TrainConfig, lr_factor, train
from feds2r.models import create_model
from tests.conftest import TINY_RECIPE


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("gta")
    synth_domain("gta5-like", root, split="train", num=6, size=(64, 128), progress=False)
    return f"gta5:{root}?split=train"


def cfg(**kw) -> TrainConfig:
    base = dict(
        steps=8,
        batch_size=2,
        height=32,
        crop=(32, 64),
        warmup_steps=2,
        checkpoint_every=3,
        log_every=1,
        lr=1e-3,
        device="cpu",
    )
    return TrainConfig(**{**base, **kw})


def test_lr_schedule_warms_up_then_decays():
    c = TrainConfig(steps=100, warmup_steps=10)
    assert lr_factor(0, c) == pytest.approx(0.1) and lr_factor(9, c) == pytest.approx(1.0)
    assert lr_factor(10, c) == pytest.approx(1.0) and lr_factor(55, c) < 1.0
    assert lr_factor(99, c) < 0.05


def test_config_validation():
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match="scale"):
        TrainConfig(scale=(2.0, 1.0))


def test_loss_goes_down(tiny, tmp_path):
    data = ResizedCache(open_dataset(tiny), 32, progress=False)
    torch.manual_seed(0)
    model = create_model("segformer-cpu")
    out = train(
        model,
        supervised_step,
        data,
        cfg(steps=60, jitter=0.0, blur_prob=0.0, scale=(1.0, 1.0), lr=3e-3),
        tmp_path,
        progress=False,
    )
    import json

    log = [json.loads(x) for x in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    first = np.mean([r["loss"] for r in log[:5]])
    last = np.mean([r["loss"] for r in log[-5:]])
    assert last < 0.7 * first, (first, last)
    assert out["steps"] == 60 and (tmp_path / "loss_curve.png").is_file()
    assert (tmp_path / "model.safetensors").is_file()


class Killed(Exception):
    pass


@pytest.mark.parametrize("preset", ["segformer-cpu", "m2f-cpu"])
def test_resume_after_crash_equals_unbroken_run(tiny, tmp_path, preset):
    data = ResizedCache(open_dataset(tiny), 32, progress=False)
    torch.manual_seed(0)  # same initial weights for every run
    train(create_model(preset), supervised_step, data, cfg(), tmp_path / "a", progress=False)

    def crash(step: int) -> None:
        if step == 5:  # after the step-3 checkpoint, before the next
            raise Killed

    torch.manual_seed(0)
    with pytest.raises(Killed):
        train(
            create_model(preset),
            supervised_step,
            data,
            cfg(),
            tmp_path / "b",
            progress=False,
            on_step=crash,
        )
    assert not (tmp_path / "b/model.safetensors").exists()
    # a fresh process starts from fresh objects and another global RNG state; the saved state
    # must override both
    torch.manual_seed(12345)
    train(create_model(preset), supervised_step, data, cfg(), tmp_path / "b", progress=False)
    a = load_file(str(tmp_path / "a/model.safetensors"))
    b = load_file(str(tmp_path / "b/model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    log_a = (tmp_path / "a/train_log.jsonl").read_text()
    log_b = (tmp_path / "b/train_log.jsonl").read_text()
    steps_b = [int(line.split(",")[0].split(":")[1]) for line in log_b.splitlines()]
    assert steps_b == list(range(1, 9)) and len(log_a.splitlines()) == 8


def test_resume_refuses_a_different_config(tiny, tmp_path):
    data = ResizedCache(open_dataset(tiny), 32, progress=False)
    train(
        create_model("segformer-cpu"), supervised_step, data, cfg(steps=4), tmp_path, progress=False
    )
    from feds2r.errors import Feds2rError

    with pytest.raises(Feds2rError, match="different config .*lr"):
        train(
            create_model("segformer-cpu"),
            supervised_step,
            data,
            cfg(steps=4, lr=0.5),
            tmp_path,
            progress=False,
        )


@pytest.mark.slow
def test_cli_run_killed_with_sigkill_resumes_to_the_same_model(tiny, tmp_path):
    args = [
        sys.executable,
        "-m",
        "feds2r.cli",
        "client",
        "train",
        "--data",
        tiny,
        "--preset",
        "segformer-cpu",
        "--steps",
        "40",
        *TINY_RECIPE,
        "--no-pretrained",
        "--quiet",
    ]
    toml = tmp_path / "r.toml"
    toml.write_text("[train]\ncheckpoint_every = 5\nwarmup_steps = 4\n")
    args += ["--config", str(toml)]
    # One thread: the test is about the saved state, not about the order of multi-threaded sums.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    run = dict(check=True, capture_output=True, env=env)
    subprocess.run(args + ["--out", str(tmp_path / "a")], **run)
    proc = subprocess.Popen(
        args + ["--out", str(tmp_path / "b")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    state = tmp_path / "b/state/state.json"
    deadline = time.time() + 120
    while time.time() < deadline and not (state.exists() and '"step": 10' in state.read_text()):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "b/model.safetensors").exists(), "killed too late to test resume"
    killed_at = json.loads(state.read_text())["step"]
    subprocess.run(args + ["--out", str(tmp_path / "b")], **run)
    a = load_file(str(tmp_path / "a/model.safetensors"))
    b = load_file(str(Path(tmp_path / "b/model.safetensors")))
    differ = {k: float((a[k].float() - b[k].float()).abs().max()) for k in a}
    differ = {k: d for k, d in differ.items() if d > 1e-6}
    assert not differ, f"resumed from step {killed_at}; {len(differ)}/{len(a)} differ: {differ}"


def test_train_client_writes_everything(tiny, tmp_path):
    summary = train_client(tiny, "segformer-cpu", tmp_path, cfg(steps=3), progress=False)
    assert summary["steps"] == 3
    files = set(os.listdir(tmp_path))
    assert {
        "model.safetensors",
        "model.json",
        "config.toml",
        "train_log.jsonl",
        "loss_curve.png",
        "state",
    } <= files
    import json

    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["role"] == "client" and meta["data"]["num_images"] == 6
    assert len(meta["data"]["fingerprint"]) == 16 and meta["train_config"]["steps"] == 3
    import tomllib

    resolved = tomllib.loads((tmp_path / "config.toml").read_text())
    assert resolved["train"]["steps"] == 3 and resolved["client"]["preset"] == "segformer-cpu"


def test_trim_log_drops_lines_past_the_state_and_a_line_cut_short(tmp_path):
    from feds2r.engine.train import _trim_log

    log = tmp_path / "train_log.jsonl"
    lines = [json.dumps({"step": s, "loss": 1.0}) for s in (5, 10, 15)]
    log.write_text("\n".join(lines) + '\n{"step": 20, "lo')
    _trim_log(log, 10)
    assert [json.loads(ln)["step"] for ln in log.read_text().splitlines()] == [5, 10]


def _snapshot(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}


def test_resume_with_other_data_is_refused_and_touches_nothing(tiny, tmp_path):
    from feds2r.errors import Feds2rError

    other = tmp_path / "other"
    synth_domain("synthia-like", other, split="train", num=4, size=(64, 128), progress=False)
    out = tmp_path / "run"
    train_client(tiny, "segformer-cpu", out, cfg(steps=2), progress=False)
    before = _snapshot(out)
    with pytest.raises(Feds2rError, match="holds a finished run trained on other inputs .*data"):
        train_client(f"synthia:{other}?split=train", "segformer-cpu", out, cfg(steps=2))
    assert _snapshot(out) == before  # model.json, weights, config.toml, log: all untouched


def test_resume_with_another_fingerprint_is_refused(tmp_path):
    from feds2r.errors import Feds2rError

    root = tmp_path / "gta"
    synth_domain("gta5-like", root, split="train", num=4, size=(64, 128), progress=False)
    out = tmp_path / "run"
    train_client(f"gta5:{root}?split=train", "segformer-cpu", out, cfg(steps=2), progress=False)
    before = _snapshot(out)
    synth_domain(
        "gta5-like", root, split="train", num=6, size=(64, 128), progress=False, force=True
    )
    with pytest.raises(Feds2rError, match="fingerprint"):  # same spec, other files behind it
        train_client(f"gta5:{root}?split=train", "segformer-cpu", out, cfg(steps=2))
    assert _snapshot(out) == before


def test_resume_with_another_preset_is_a_clear_message(tiny, tmp_path, capsys):
    from feds2r.cli import main

    out = tmp_path / "run"
    flags = ["--steps", "2", "--warmup-steps", "1", *TINY_RECIPE, "--no-pretrained"]
    flags += ["--out", str(out), "--quiet"]
    assert main(["client", "train", "--data", tiny, "--preset", "segformer-cpu", *flags]) == 0
    before = _snapshot(out)
    code = main(["client", "train", "--data", tiny, "--preset", "m2f-cpu", *flags])
    err = capsys.readouterr().err
    assert code == 2 and "run of preset 'segformer-cpu', not 'm2f-cpu'" in err, err
    assert "--preset segformer-cpu" in err and "Traceback" not in err
    assert _snapshot(out) == before


@pytest.mark.parametrize("preset", ["segformer-cpu", "m2f-cpu"])
def test_a_diverging_run_names_the_step_and_the_fix(tiny, tmp_path, preset):
    """lr 1e6: NaN outputs end in one message (not the Hungarian matcher's ValueError)."""
    from feds2r.errors import Feds2rError

    data = ResizedCache(open_dataset(tiny), 32, progress=False)
    with pytest.raises(Feds2rError, match=r"training diverged at step \d \(.*lower --lr \(now 1e"):
        train(create_model(preset), supervised_step, data, cfg(lr=1e6), tmp_path, progress=False)


def test_non_finite_matching_costs_raise_floating_point_error():
    from feds2r.losses.mask_classification import hungarian_match

    logits = torch.full((4, 20), float("nan"))
    masks = torch.zeros(4, 8, 8)
    with pytest.raises(FloatingPointError, match="matching cost is not finite"):
        hungarian_match(logits, masks, torch.tensor([0, 1]), torch.ones(2, 8, 8), num_points=16)


def test_the_fused_optimizer_makes_the_plain_adamw_update():
    from feds2r.engine.train import build_optimizer

    torch.manual_seed(0)
    model, plain = create_model("m2f-cpu"), create_model("m2f-cpu")
    plain.load_state_dict(model.state_dict())
    start = [p.detach().clone() for p in model.parameters()]
    config = TrainConfig(weight_decay=0.05)
    fused = build_optimizer(model, config)
    assert fused.defaults["fused"] is True
    # the same groups (backbone at its lower learning rate) over the copy, unfused
    position = {id(p): i for i, p in enumerate(model.parameters())}
    copies = list(plain.parameters())
    groups = [
        {"params": [copies[position[id(p)]] for p in g["params"]], "lr": g["lr"]}
        for g in fused.param_groups
    ]
    ref = torch.optim.AdamW(groups, weight_decay=config.weight_decay, foreach=False)
    for step in range(3):
        for m in (model, plain):
            for i, p in enumerate(m.parameters()):
                p.grad = torch.full_like(p, 0.1 * (step + 1)) + 0.01 * start[i]
        fused.step()
        ref.step()
    for (name, a), b in zip(model.named_parameters(), copies, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=name)
    assert all(not torch.equal(a, s) for a, s in zip(model.parameters(), start, strict=True))
