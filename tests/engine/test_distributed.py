"""Several processes, one run (feds2r.engine.distributed): equivalence, sharded evaluation,
failures, resume.

The multi-process tests start two CPU processes (gloo, one thread each) the way torchrun would,
with ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set, meeting through a shared file
(``FEDS2R_DIST_INIT``) so that nothing listens beyond the loopback interface (torchrun's own
store listens on every interface). docs/multi-gpu.md shows the same with torchrun.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from feds2r.__main__ import follower_argv
from feds2r.data import open_dataset
from feds2r.data.world import synth_domain
from feds2r.engine import distributed
from feds2r.engine.evaluate import evaluate
from feds2r.engine.train import TrainConfig
from feds2r.errors import Feds2rError
from feds2r.models import create_model
from feds2r.pretrain import PretrainConfig, pretrain

STEPS, BATCH = 10, 4


def pretrain_config(batch: int = BATCH) -> PretrainConfig:
    """A tiny pretraining of m2f-cpu's backbone: its loss is a mean over the samples, so two
    processes at batch B/2 must give one process's losses at batch B."""
    train = TrainConfig(
        steps=STEPS,
        batch_size=batch,
        height=32,
        crop=(32, 64),
        scale=(1.0, 1.0),
        warmup_steps=2,
        log_every=1,
        checkpoint_every=5,
        device="cpu",
    )
    return PretrainConfig(preset="m2f-cpu", images=8, size=(32, 64), train=train)


# the program each process runs: pretrain, then evaluate a fixed model (sharded); argv: OUT WORLD
# EVAL_SPEC FAIL_AT (process 1's loss raises at its FAIL_AT-th step; 0: never)
WORKER = """
import sys

import numpy as np
import torch

import feds2r.pretrain as pretraining
from feds2r.data import open_dataset
from feds2r.engine import distributed
from feds2r.engine.evaluate import evaluate
from feds2r.errors import Feds2rError
from feds2r.models import create_model
from tests.engine.test_distributed import pretrain_config

out, world, spec, fail_at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
tag_loss, calls = pretraining.tag_loss, []


def failing(model, batch):
    calls.append(1)
    if distributed.rank() == 1 and len(calls) == fail_at:
        raise FloatingPointError("injected on process 1")
    return tag_loss(model, batch)


def main() -> int:
    pretraining.tag_loss = failing
    try:
        pretraining.pretrain(pretrain_config(), out, world=world, progress=False)
        torch.manual_seed(0)
        model = create_model("m2f-cpu").eval()
        result = evaluate(model, open_dataset(spec), height=32, batch_size=2, progress=False,
                          per_image=True)
        if distributed.is_main():
            np.savez(out + "/eval.npz", per_image=result["per_image_confusion"],
                     miou=result["miou"])
        return 0
    except Feds2rError as exc:  # as the command line reports it
        print(f"error: {exc}", file=sys.stderr)
        return 2


sys.exit(distributed.launch(main))
"""


def run_two(args: list[str], tmp: Path, name: str, *, timeout: float = 300) -> list[dict]:
    """Start ``python ARGS`` as processes 0 and 1 of a run of two; wait for both (killing them
    past ``timeout`` seconds). Returns per process its exit code, stdout, stderr and seconds."""
    rendezvous = tmp / f"{name}.rendezvous"
    env = {
        **os.environ,
        "WORLD_SIZE": "2",
        "FEDS2R_DIST_INIT": f"file://{rendezvous}",
        "FEDS2R_DIST_TIMEOUT": "120",
        "GLOO_SOCKET_IFNAME": "lo",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    procs, logs = [], []
    start = time.monotonic()
    for rank in range(2):
        out, err = tmp / f"{name}.{rank}.out", tmp / f"{name}.{rank}.err"
        logs.append((out, err))
        with open(out, "w") as o, open(err, "w") as e:
            procs.append(
                subprocess.Popen(
                    [sys.executable, *args],
                    stdout=o,
                    stderr=e,
                    env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                )
            )
    results = []
    for proc, (out, err) in zip(procs, logs, strict=True):
        try:
            proc.wait(timeout=max(timeout - (time.monotonic() - start), 1))
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise AssertionError(f"{name}: the processes did not end within {timeout} s") from None
        results.append(
            {
                "rc": proc.returncode,
                "stdout": out.read_text(),
                "stderr": err.read_text(),
                "seconds": time.monotonic() - start,
            }
        )
    return results


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------- one process


def test_without_torchrun_every_helper_is_the_identity(monkeypatch):
    for name in distributed.ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    model = torch.nn.Linear(2, 2)
    batch = {"image": torch.zeros(3, 1), "label": torch.ones(3)}
    assert distributed.launched() is None and distributed.init_from_env() is None
    assert not distributed.active() and distributed.is_main()
    assert (distributed.rank(), distributed.world_size()) == (0, 1)
    assert distributed.wrap(model, torch.device("cpu")) is model
    assert distributed.take(batch, distributed.batch_part(3), 3) is batch
    losses = {"loss": 1.5}
    assert distributed.mean_over_processes(losses) is losses
    assert distributed.local_device(torch.device("cpu")) == torch.device("cpu")
    assert list(distributed.shard(5)) == [0, 1, 2, 3, 4]
    assert distributed.gather_rng_states() == {}
    assert distributed.launch(lambda: 7) == 7
    claimed = distributed.claim_on_main("somewhere", lambda: "claimed")
    assert claimed == "claimed"


def test_torchrun_variables_are_read_and_checked(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert distributed.launched() is None  # LOCAL_RANK missing: not torchrun
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.launched() == distributed.Launch(rank=1, world_size=2, local_rank=1)
    with pytest.raises(Feds2rError, match="-m feds2r"):
        distributed.active()  # torchrun's process, but nobody joined the process group
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(Feds2rError, match="do not describe a process"):
        distributed.launched()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(Feds2rError, match="not integers"):
        distributed.launched()


@pytest.mark.parametrize("rank", [0, 1, 2])
def test_each_process_takes_its_positions_and_its_images(monkeypatch, rank):
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    monkeypatch.setattr(distributed, "rank", lambda: rank)
    part = distributed.batch_part(6)
    assert part == slice(2 * rank, 2 * rank + 2)
    batch = {"image": torch.arange(6), "weights": torch.ones(4), "name": "x"}
    taken = distributed.take(batch, part, 6)
    assert taken["image"].tolist() == [2 * rank, 2 * rank + 1]
    assert taken["weights"].shape == (4,) and taken["name"] == "x"  # not the batch's: kept
    assert list(distributed.shard(7)) == list(range(rank, 7, 3))


def test_a_batch_the_processes_cannot_share_is_one_message_from_rank_0(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "rank", lambda: 0)
    with pytest.raises(Feds2rError, match="batch size 3 is not divisible by the 2 processes"):
        distributed.batch_part(3)
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    with pytest.raises(distributed.PeerFailed):  # quiet: rank 0 reports it
        distributed.batch_part(3)


def test_the_other_processes_run_the_command_quietly_and_write_no_json():
    argv = ["eval", "--model", "m", "--data", "d", "--json", "report.json"]
    assert follower_argv(argv) == [*argv, "--quiet", "--json", "-"]
    train = ["client", "train", "--data", "d", "--out", "o"]
    assert follower_argv(train) == [*train, "--quiet"]
    assert follower_argv(["client", "train", "--steps", "x"]) == 2  # rank 0 reports it
    assert follower_argv(["--help"]) == 0


# ----------------------------------------------------------------------------- two processes


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("distributed")
    size = pretrain_config().size
    synth_domain("public", root / "public", split="train", num=8, size=size, progress=False)
    synth_domain("cityscapes-like", root / "cs", split="val", num=5, size=(32, 64), progress=False)
    worker = root / "worker.py"
    worker.write_text(WORKER)
    return {
        "root": root,
        "world": root / "public",
        "spec": f"cityscapes:{root / 'cs'}?split=val",
        "worker": worker,
    }


@pytest.fixture(scope="module")
def two(inputs) -> dict:
    """An uninterrupted run of two processes at batch 2 each (the global batch 4)."""
    root, out = inputs["root"], inputs["root"] / "two"
    args = [str(inputs["worker"]), str(out), str(inputs["world"]), inputs["spec"], "0"]
    return {"out": out, "procs": run_two(args, root, "two")}


@pytest.mark.slow
def test_two_processes_at_half_the_batch_give_one_process_losses(inputs, two, tmp_path):
    assert [p["rc"] for p in two["procs"]] == [0, 0], [p["stderr"][-2000:] for p in two["procs"]]
    one = tmp_path / "one"
    pretrain(pretrain_config(), one, world=inputs["world"], progress=False)
    single, double = read_log(one), read_log(two["out"])
    assert [r["step"] for r in double] == list(range(1, STEPS + 1))  # one line a step: rank 0's
    for a, b in zip(single, double, strict=True):
        for key in ("loss", "loss_tags", "loss_shares", "lr"):
            assert b[key] == pytest.approx(a[key], rel=1e-4), (a["step"], key)
    # the weights stay together too (10 AdamW steps)
    w1, w2 = (
        load_file(str(one / "backbone.safetensors")),
        load_file(str(two["out"] / "backbone.safetensors")),
    )
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) < 1e-4
    assert json.loads((two["out"] / "pretrain.json").read_text())["world_size"] == 2
    assert json.loads((one / "pretrain.json").read_text())["world_size"] == 1
    assert sorted(p.name for p in two["out"].iterdir()) == sorted(
        [".feds2r_output.json", "backbone.safetensors", "config.toml", "eval.npz",
         "loss_curve.png", "pretrain.json", "state", "train_log.jsonl"]
    )  # fmt: skip


@pytest.mark.slow
def test_evaluation_sharded_over_two_processes_equals_one_process(inputs, two):
    assert [p["rc"] for p in two["procs"]] == [0, 0]
    torch.manual_seed(0)
    model = create_model("m2f-cpu").eval()
    data = open_dataset(inputs["spec"])
    alone = evaluate(model, data, height=32, batch_size=2, progress=False, per_image=True)
    shared = np.load(two["out"] / "eval.npz")
    # 5 images: process 0 took 0, 2, 4 and process 1 took 1, 3; back in their order
    assert np.array_equal(shared["per_image"], alone["per_image_confusion"])
    assert float(shared["miou"]) == alone["miou"]


@pytest.mark.slow
def test_a_failing_process_stops_both_with_one_message_and_the_run_resumes(inputs, two):
    root, out = inputs["root"], inputs["root"] / "failed"
    base = [str(inputs["worker"]), str(out), str(inputs["world"]), inputs["spec"]]
    procs = run_two([*base, "7"], root, "failed", timeout=240)
    assert procs[1]["rc"] == 2 and procs[0]["rc"] != 0
    errors = [line for p in procs for line in p["stderr"].splitlines() if line.startswith("error:")]
    assert len(errors) == 1, [p["stderr"][-2000:] for p in procs]
    assert "diverged at step 7" in errors[0] and "injected on process 1" in errors[0]
    assert "Traceback" not in procs[0]["stderr"] + procs[1]["stderr"]
    assert json.loads((out / "state" / "state.json").read_text())["step"] == 5
    assert not (out / "backbone.safetensors").exists()
    # the same command again resumes from step 5: the uninterrupted run's weights, bit for bit
    resumed = run_two([*base, "0"], root, "resumed")
    assert [p["rc"] for p in resumed] == [0, 0], [p["stderr"][-2000:] for p in resumed]
    assert [r["step"] for r in read_log(out)] == list(range(1, STEPS + 1))
    a = load_file(str(out / "backbone.safetensors"))
    b = load_file(str(two["out"] / "backbone.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_python_m_feds2r_client_train_and_eval_as_two_processes(tmp_path):
    from feds2r.cli import main

    data = tmp_path / "gta"
    synth_domain("gta5-like", data, split="train", num=4, size=(32, 64), progress=False)
    out = tmp_path / "run"
    recipe = tmp_path / "recipe.toml"
    recipe.write_text("[train]\nlog_every = 1\nwarmup_steps = 1\n")
    spec = f"gta5:{data}?split=train"
    args = ["-m", "feds2r", "client", "train", "--data", spec, "--preset", "m2f-cpu",
            "--steps", "2", "--batch-size", "2", "--height", "32", "--crop", "32x64",
            "--device", "cpu", "--config", str(recipe), "--out", str(out)]  # fmt: skip
    procs = run_two(args, tmp_path, "train")
    assert [p["rc"] for p in procs] == [0, 0], [p["stderr"][-2000:] for p in procs]
    assert procs[0]["stdout"].startswith("trained m2f-cpu") and procs[1]["stdout"] == ""
    assert procs[1]["stderr"] == ""  # no progress bar, nothing else
    assert json.loads((out / "model.json").read_text())["world_size"] == 2
    assert [r["step"] for r in read_log(out)] == [1, 2]
    report = tmp_path / "report.json"
    args = ["-m", "feds2r", "eval", "--model", str(out), "--data", spec, "--height", "32",
            "--json", str(report)]  # fmt: skip
    procs = run_two(args, tmp_path, "eval")
    assert [p["rc"] for p in procs] == [0, 0], [p["stderr"][-2000:] for p in procs]
    assert procs[1]["stdout"] == "" and not list(tmp_path.glob(".report.json.*"))
    alone = tmp_path / "alone.json"
    assert main(["eval", "--model", str(out), "--data", spec, "--height", "32", "--json",
                 str(alone)]) == 0  # fmt: skip
    assert json.loads(report.read_text())["datasets"] == json.loads(alone.read_text())["datasets"]


@pytest.mark.slow
def test_a_batch_two_processes_cannot_share_is_one_message(tmp_path):
    data = tmp_path / "gta"
    synth_domain("gta5-like", data, split="train", num=2, size=(32, 64), progress=False)
    args = ["-m", "feds2r", "client", "train", "--data", f"gta5:{data}?split=train",
            "--steps", "2", "--warmup-steps", "1", "--batch-size", "3", "--height", "32",
            "--crop", "32x64", "--device", "cpu", "--out", str(tmp_path / "run")]  # fmt: skip
    procs = run_two(args, tmp_path, "odd")
    assert procs[0]["rc"] == 2 and procs[1]["rc"] != 0
    assert procs[1]["stderr"] == "", procs[1]["stderr"][-2000:]  # rank 0 says it for both
    assert procs[0]["stderr"].count("error:") == 1
    assert "batch size 3 is not divisible by the 2 processes" in procs[0]["stderr"]
    assert not (tmp_path / "run").exists()  # refused before anything was written
