"""``--dry-run``: what a training run will cost, measured on a few of its own steps first.

Before a run of days, :func:`dry_run_client` (``feds2r client train ... --dry-run``):

1. checks the data: every file of the dataset listed and paired (its path and format), and a few
   samples spread over it read and checked (images decode, labels hold valid ids and match their
   image's size); ``feds2r data check`` reads every one;
2. checks ``--out`` without writing to it: new, empty, or a run of this command and config (which
   the real run would resume, or find finished); anything else is refused as the run would be;
3. runs a few steps of the command's own training (:func:`feds2r.client.train_client`: the model
   built from its start, the data loader, the loss, bf16 autocast on CUDA) with the recipe's
   batch, crop and device, in a temporary folder that is removed afterwards;
4. reports the time per step and the part of it spent waiting for data (medians of the steps
   after the first, which warms up), the start-up, the time of one state save, the peak host
   memory (this process, and the largest data-loading worker) and the peak GPU memory, and the
   projected wall time of the recipe's steps on this machine.

Nothing is written into ``--out``. The projection assumes later steps cost what the measured
ones did: a loader that keeps up, the same machine, the same number of processes.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from feds2r.errors import Feds2rError

DRY_RUN_STEPS = 3
"""Steps a bare ``--dry-run`` runs: one to warm up, the others measured."""

SAMPLES_READ = 8
"""Samples of each dataset read in full by the data check (spread over the set)."""


@dataclass(frozen=True)
class DataCheck:
    """What the dry run found in one dataset."""

    spec: str
    """The dataset, as the run names it."""
    num_samples: int
    """Samples listed and paired (every file of the set)."""
    num_read: int
    """Samples read and checked in full."""
    sizes: dict[str, int]
    """Image sizes ("HxW") among those read, with their counts."""


@dataclass(frozen=True)
class Plan:
    """A dry run's measurements and the projection of the whole run (times in seconds)."""

    command: str
    data: list[DataCheck]
    out: str
    """What ``--out`` holds and what the real run would do with it."""
    preset: str
    parameters: int
    device: str
    measured_steps: int
    step_s: float
    """Seconds per step: median of the steps after the first (the only one if just one ran)."""
    data_s: float | None
    """Of those, seconds waiting for the next batch (None: not recorded by this loop)."""
    startup_s: float
    """From the start of the command's training to the end of its first step."""
    save_s: float
    """What ends the measured run: the last state save, the checkpoint and the loss plot (more
    than a state save alone)."""
    peak_host_mib: float
    """Peak resident memory of this process."""
    peak_worker_mib: float | None
    """Peak resident memory of this process's largest finished child process, the data-loading
    workers (None: none ran)."""
    peak_gpu_mib: float | None
    """Peak GPU memory allocated by PyTorch (None: not on CUDA)."""
    steps: int
    """The recipe's steps."""
    batch_size: int
    checkpoint_every: int

    @property
    def saves(self) -> int:
        """State saves of the whole run: one every ``checkpoint_every`` steps, and the last."""
        return (self.steps - 1) // self.checkpoint_every + 1

    @property
    def projected_s(self) -> float:
        """The whole run: start-up (with its first step), the other steps at the measured rate,
        its state saves."""
        return self.startup_s + self.step_s * (self.steps - 1) + self.save_s * self.saves

    def to_dict(self) -> dict[str, Any]:
        """The plan as JSON values, with ``projected_s``."""
        return {**dataclasses.asdict(self), "projected_s": self.projected_s}

    def to_text(self) -> str:
        """The report ``--dry-run`` prints."""
        lines = [
            f"dry run of `feds2r {self.command}`: {self.measured_steps} steps in a temporary "
            "folder; nothing was written to --out"
        ]
        for d in self.data:
            sizes = ", ".join(f"{s} x{n}" for s, n in d.sizes.items())
            lines.append(
                f"data      {d.spec}: {d.num_samples} samples listed and paired; "
                f"{d.num_read} read and checked ({sizes})"
            )
        lines.append(f"out       {self.out}")
        lines.append(f"model     {self.preset}, {self.parameters / 1e6:.1f}M parameters")
        lines.append(f"device    {self.device}")
        share = ""
        if self.data_s is not None:
            share = f"; waiting for data {self.data_s:.3f} s of it ({self._data_share():.0f} %)"
        lines.append(
            f"step      {self.step_s:.3f} s per step of {self.batch_size} images "
            f"({self.batch_size / max(self.step_s, 1e-9):.3g} img/s){share}"
        )
        lines.append(
            f"start-up  {self.startup_s:.1f} s (model, data listing, loader, first step); "
            f"the last save {self.save_s:.1f} s (state, checkpoint and loss plot; the projection "
            f"counts one every {self.checkpoint_every} steps, an upper bound)"
        )
        memory = f"memory    peak host {self.peak_host_mib:,.0f} MiB (this process)"
        if self.peak_worker_mib is not None:
            memory += f", {self.peak_worker_mib:,.0f} MiB (its largest child: a data worker)"
        if self.peak_gpu_mib is not None:
            memory += f"; peak GPU {self.peak_gpu_mib:,.0f} MiB allocated"
        lines.append(memory)
        lines.append(
            f"projected {self.steps} steps: {_duration(self.projected_s)} on this machine "
            f"({_duration(self.step_s * self.steps)} of steps, {self.saves} state saves)"
        )
        return "\n".join(lines)

    def _data_share(self) -> float:
        return 100 * (self.data_s or 0.0) / max(self.step_s, 1e-9)


def _duration(seconds: float) -> str:
    """``4.5 days``, ``3.2 h``, ``12.5 min`` or ``41 s``."""
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.0f} s"


def check_data(
    spec: str, *, labels: bool = True, on_error: str = "raise", samples: int = SAMPLES_READ
) -> DataCheck:
    """List and pair every file of ``spec`` and read ``samples`` of them in full, spread over the
    set (first and last included). A missing folder, an unpaired file or a bad sample raises
    :class:`~feds2r.errors.DataError` naming it, unless ``on_error="skip"`` (then the bad ones
    are left out, as the run would leave them out)."""
    from feds2r.data.dataset import list_dataset
    from feds2r.errors import DataError

    dataset = list_dataset(spec, labels=labels, on_error=on_error)
    if labels and not dataset.with_labels:
        raise Feds2rError(
            f"{dataset.spec} has no labels (format {dataset.spec.format!r} holds images only); "
            "training needs a labelled dataset (see `feds2r data formats`)"
        )
    n = len(dataset)
    if n <= samples:
        picks = list(range(n))
    else:  # spread over the set, the first and the last included
        picks = sorted({round(i * (n - 1) / (samples - 1)) for i in range(samples)})
    sizes: dict[str, int] = {}
    read = 0
    for i in picks:
        try:
            item = dataset.read(i)
        except DataError:
            if on_error == "skip":
                continue
            raise
        h, w = item["image"].shape[:2]
        sizes[f"{h}x{w}"] = sizes.get(f"{h}x{w}", 0) + 1
        read += 1
    return DataCheck(str(dataset.spec), n, read, sizes)


def judge_run_output(out: str | Path, kind: str, config: Any, preset: str | None) -> str:
    """What ``out`` holds for a run of the training command ``kind``, read only: raises as the
    real run would refuse it (another command's output, another config, preset or run)."""
    from feds2r.engine.runs import RUN_TABLES
    from feds2r.engine.train import check_resume
    from feds2r.io import config_tables, judge_output

    out = Path(out)
    tables = RUN_TABLES[kind]
    earlier = judge_output(
        out,
        kind,
        marker=lambda path: config_tables(path) == tables,
        same=lambda path: check_resume(path, config, preset=preset),
    )
    if not out.exists():
        return f"{out}: new; the run would start there"
    if not earlier:
        return f"{out}: empty; the run would start there"
    try:
        state = json.loads((out / "state" / "state.json").read_text())
    except (OSError, ValueError):
        return f"{out}: an earlier `feds2r {kind}` output of this config"
    step = state.get("step")
    if state.get("done"):
        return f"{out}: a finished run of this config (step {step}); the run would find it finished"
    return f"{out}: a run of this config stopped at step {step}; the run would resume it"


def _peak_rss_mib(who: int) -> float:
    """Peak resident memory of ``who`` (``resource.RUSAGE_SELF`` or ``RUSAGE_CHILDREN``: the
    largest child waited for) in MiB; Linux counts ru_maxrss in KiB, macOS in bytes."""
    peak = resource.getrusage(who).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


def dry_run_client(
    out: str | Path,
    client: Any,
    train: Any,
    *,
    steps: int = DRY_RUN_STEPS,
    on_error: str = "raise",
    progress: bool = True,
) -> Plan:
    """Dry run of ``feds2r client train``: ``client`` (a :class:`~feds2r.client.ClientSettings`)
    and ``train`` (its :class:`~feds2r.engine.train.TrainConfig`) as the command would run them,
    for ``steps`` steps in a temporary folder. See the module docstring."""
    import torch

    from feds2r.client import train_client
    from feds2r.engine.device import resolve_device

    if steps < 1:
        raise Feds2rError(f"a dry run needs at least 1 step, got {steps}")
    if not client.data:
        raise Feds2rError("client train: give --data FORMAT:PATH (or data in the [client] table)")
    data = check_data(client.data, on_error=on_error)
    where = judge_run_output(out, "client train", train, client.preset)
    device = resolve_device(train.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    n = min(steps, train.steps)
    short = dataclasses.replace(
        train,
        steps=n,
        warmup_steps=min(train.warmup_steps, n),
        checkpoint_every=n,
        log_every=1,
    )
    ends: list[float] = []
    parameters = [0]

    def on_step(model: Any, step: int) -> None:
        ends.append(time.perf_counter())
        if step == 1:
            parameters[0] = sum(p.numel() for p in model.parameters())

    folder = Path(tempfile.mkdtemp(prefix="feds2r-dry-run-"))
    try:
        begin = time.perf_counter()
        train_client(
            client.data,
            client.preset,
            folder / "run",
            short,
            backbone_weights=client.backbone_weights or None,
            init=client.init or None,
            on_error=on_error,
            progress=progress,
            on_step=on_step,
        )
        finished = time.perf_counter()
        log = [
            json.loads(line)
            for line in (folder / "run" / "train_log.jsonl").read_text().splitlines()
            if line
        ]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    gaps = [b - a for a, b in zip(ends, ends[1:], strict=False)]
    logged = [r["step_s"] for r in log[1:] if "step_s" in r]
    waits = [r["data_s"] for r in log[1:] if "data_s" in r] or [
        r["data_s"] for r in log if "data_s" in r
    ]
    step_s = statistics.median(logged or gaps or [ends[0] - begin])
    workers = _peak_rss_mib(resource.RUSAGE_CHILDREN)
    gpu = None
    if device.type == "cuda":
        gpu = torch.cuda.max_memory_allocated(device) / 2**20
    name = str(device)
    if device.type == "cuda":
        name += f" ({torch.cuda.get_device_name(device)})"
    if train.amp and device.type == "cuda":
        name += ", bf16 autocast"
    return Plan(
        command="client train",
        data=[data],
        out=where,
        preset=client.preset,
        parameters=parameters[0],
        device=name,
        measured_steps=n,
        step_s=step_s,
        data_s=statistics.median(waits) if waits else None,
        startup_s=ends[0] - begin,
        save_s=finished - ends[-1],
        peak_host_mib=_peak_rss_mib(resource.RUSAGE_SELF),
        peak_worker_mib=workers if workers > 0 else None,
        peak_gpu_mib=gpu,
        steps=train.steps,
        batch_size=train.batch_size,
        checkpoint_every=train.checkpoint_every,
    )


__all__ = ["DRY_RUN_STEPS", "DataCheck", "Plan", "check_data", "dry_run_client"]
