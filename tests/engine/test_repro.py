"""Reproducibility: a seeded run is bit-identical whatever the load; the sidecar records what a
rerun needs; the thread and determinism settings are restored after a run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from feds2r.data.world import synth_domain
from feds2r.engine.repro import deterministic, environment

# one tiny training in a fresh process; the parent's thread settings must not leak in
TRAIN = textwrap.dedent("""
    import sys
    from feds2r.client import train_client
    from feds2r.engine.train import TrainConfig

    config = TrainConfig(steps=3, batch_size=2, height=32, crop=(32, 64), warmup_steps=1,
                         device="cpu", threads=2, seed=3)
    train_client(sys.argv[1], "m2f-cpu", sys.argv[2], config, progress=False)
""")
BURN = "import os\nwhile True: os.getpid()"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("gta")
    synth_domain("gta5-like", root, split="train", num=4, size=(64, 128), progress=False)
    return f"gta5:{root}?split=train"


@pytest.mark.slow
def test_same_seed_gives_the_same_weights_with_a_cpu_burner_beside(tiny, tmp_path):
    # threads come from the config, not from the environment (nor from this process)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "OMP_WAIT_POLICY": "PASSIVE",
    }
    for name, burners in (("a", 0), ("b", 2)):  # b: two busy processes beside it
        burn = [subprocess.Popen([sys.executable, "-c", BURN]) for _ in range(burners)]
        try:
            run = subprocess.run(
                [sys.executable, "-c", TRAIN, tiny, str(tmp_path / name)],
                env=env,
                capture_output=True,
                timeout=300,
            )
        finally:
            for proc in burn:
                proc.kill()
                proc.wait()
        assert run.returncode == 0, run.stderr.decode()[-2000:]
    a = load_file(str(tmp_path / "a/model.safetensors"))
    b = load_file(str(tmp_path / "b/model.safetensors"))
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)}/{len(a)} tensors differ, e.g. {differ[:3]}"
    record = json.loads((tmp_path / "a/model.json").read_text())["environment"]
    assert record["threads"] == 2 and record["deterministic_algorithms"] is True
    assert record["versions"]["torch"] == torch.__version__ and record["env"]["OMP_NUM_THREADS"]


def test_the_environment_record_names_versions_threads_and_cpu():
    record = environment("cpu")
    assert {"torch", "numpy", "transformers", "safetensors", "python"} <= set(record["versions"])
    assert record["threads"] == torch.get_num_threads() and record["cuda"] is None
    assert record["cpu"]["capability"] == torch.backends.cpu.get_cpu_capability()
    assert isinstance(record["cpu"]["flags"], list)
    json.dumps(record)  # JSON-ready


def test_deterministic_sets_and_restores_the_settings():
    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
    with deterministic(1) as threads:
        assert threads == 1 == torch.get_num_threads()
        assert torch.are_deterministic_algorithms_enabled()
        assert environment()["deterministic_algorithms"] is True
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == before


def test_every_sidecar_and_a_resumed_run_keep_the_thread_count(tiny, tmp_path):
    from feds2r.client import train_client
    from feds2r.engine.train import TrainConfig

    config = TrainConfig(
        steps=2, batch_size=2, height=32, crop=(32, 64), warmup_steps=1, device="cpu", threads=1
    )
    train_client(tiny, "segformer-cpu", tmp_path, config, progress=False)
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["environment"]["threads"] == 1 and meta["train_config"]["threads"] == 1
    state = json.loads((tmp_path / "state/state.json").read_text())
    assert state["threads"] == 1
    # a rerun with threads=0 (the default) keeps the recorded count and is accepted as a resume
    from dataclasses import replace

    train_client(tiny, "segformer-cpu", tmp_path, replace(config, threads=0), progress=False)
    assert json.loads((tmp_path / "model.json").read_text())["environment"]["threads"] == 1
