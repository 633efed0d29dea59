"""The one training loop, shared by client training and server distillation.

The loss is passed in: ``loss_fn(model, batch) -> dict`` of named loss tensors with ``"loss"`` the
one to minimise. AdamW, linear warm-up then polynomial decay, gradient clipping, bf16 autocast on
CUDA. Every ``checkpoint_every`` steps the whole run state (model, optimizer, step, every random
generator) is written atomically to ``OUT/state/``; starting the same run again continues exactly
where it stopped (see docs/training.md for the one case seen otherwise).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm import tqdm

from feds2r.config import check_types
from feds2r.engine import distributed
from feds2r.engine.checkpoint import save_checkpoint
from feds2r.engine.data import ResizedCache, make_batch
from feds2r.engine.device import check_device_name, resolve_device
from feds2r.engine.loader import LOADERS, StreamingData, open_batches, worker_death
from feds2r.engine.repro import deterministic, environment
from feds2r.errors import Feds2rError
from feds2r.models import SegModel


@dataclass(frozen=True)
class TrainConfig:
    """A training recipe. The defaults are the CPU recipe for the built-in world."""

    steps: int = 1000
    """Optimizer steps."""
    batch_size: int = 8
    """Images per step."""
    height: int = 128
    """Images (and labels) are resized to this height, aspect kept, before augmentation."""
    crop: tuple[int, int] = (128, 256)
    """Training crop (H, W); smaller views are padded (labels with 255)."""
    scale: tuple[float, float] = (0.75, 1.5)
    """Random rescaling range before the crop."""
    lr: float = 6e-4
    """Peak AdamW learning rate (after warm-up; poly decay to 0 at the last step)."""
    backbone_lr_mult: float = 0.1
    """Backbone learning rate = lr x this. 0.1 because every model starts from a pretrained
    backbone by default (Mask2Former's and DAFormer's recipes use 0.1 for ImageNet backbones):
    the clients keep the shared features they start from. Use 1.0 with random weights."""
    weight_decay: float = 0.01
    """AdamW weight decay (on every parameter)."""
    warmup_steps: int = 100
    """Linear warm-up steps from 0 to ``lr``."""
    poly_power: float = 0.9
    """Exponent of the poly decay of the learning rate after warm-up."""
    grad_clip: float = 1.0
    """Max global gradient norm (0 = off)."""
    flip: bool = True
    """Random horizontal flips."""
    jitter: float = 0.25
    """Strength of brightness, contrast and saturation jitter."""
    blur_prob: float = 0.2
    """Probability of a Gaussian blur of a view."""
    amp: bool = True
    """bf16 autocast on CUDA (ignored on CPU)."""
    seed: int = 0
    """Seed of the initial weights drawn here, the data order and the augmentation."""
    checkpoint_every: int = 250
    """Steps between two resumable states in ``OUT/state``."""
    log_every: int = 10
    """Steps between two lines of ``OUT/train_log.jsonl``."""
    device: str = "auto"
    """"auto" (CUDA if available), "cpu" or "cuda[:N]"."""
    threads: int = 0
    """Intra-op CPU threads (0: PyTorch's default here, its core count or OMP_NUM_THREADS; a
    resumed run keeps the count it started with). Sums are split by thread, so the count changes
    the last bits of a run: give the value recorded in model.json (environment.threads) to rerun
    one bit for bit."""
    loader: str = "stream"
    """How ``client train`` and the server stages (distill, self-train, lite) hold their
    samples: "stream" (each read from disk, resized and augmented per step in ``workers``
    processes: memory does not grow with the data) or "memory" (all decoded and resized once
    before the first step: for small sets). The same batches, bit for bit with ``threads`` = 1
    (docs/training.md). Pretraining holds its samples in memory."""
    workers: int = -1
    """DataLoader worker processes of the "stream" loader (-1: min(4, CPU cores); 0: in the main
    process). Any count gives the same batches."""

    def __post_init__(self) -> None:
        check_types(self)
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be >= 1")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.warmup_steps <= self.steps:
            raise ValueError(
                f"warmup_steps ({self.warmup_steps}) must be between 0 and steps ({self.steps}); "
                "set warmup_steps (--warmup-steps) too"
            )
        if self.height < 16:
            raise ValueError(f"height must be >= 16 pixels, got {self.height}")
        if min(self.crop) < 16:
            raise ValueError(f"crop sides must be >= 16 pixels, got {self.crop[0]}x{self.crop[1]}")
        if not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError("scale must be (low, high) with 0 < low <= high")
        if self.checkpoint_every < 1 or self.log_every < 1:
            raise ValueError("checkpoint_every and log_every must be >= 1")
        check_device_name(self.device)
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0 (0: PyTorch's default), got {self.threads}")
        if self.loader not in LOADERS:
            raise ValueError(f"loader must be one of {', '.join(LOADERS)}, got {self.loader!r}")
        if self.workers < -1:
            raise ValueError(f"workers must be >= 0 (or -1: min(4, cores)), got {self.workers}")

    # fields that may change between a run and its resumption
    RESUMABLE_CHANGES = ("checkpoint_every", "log_every", "device", "threads", "loader", "workers")


LossFn = Callable[[SegModel, dict[str, Tensor]], dict[str, Tensor]]


def lr_factor(step: int, config: TrainConfig) -> float:
    """Linear warm-up to 1, then polynomial decay to 0 at ``config.steps``."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    span = max(config.steps - config.warmup_steps, 1)
    return (1 - (step - config.warmup_steps) / span) ** config.poly_power


def build_optimizer(model: SegModel, config: TrainConfig) -> torch.optim.AdamW:
    backbone = {id(p) for p in model.backbone().parameters()}
    groups = [
        {
            "params": [p for p in model.parameters() if id(p) in backbone and p.requires_grad],
            "lr": config.lr * config.backbone_lr_mult,
        },
        {
            "params": [p for p in model.parameters() if id(p) not in backbone and p.requires_grad],
            "lr": config.lr,
        },
    ]
    for g in groups:
        g["initial_lr"] = g["lr"]
    # PyTorch's fused kernel: one pass over all parameters instead of ~8 small operations per
    # tensor (13.6 -> 2.1 ms a step for m2f-cpu on 2 cores); the same update within rounding.
    device = next(model.parameters()).device.type
    return torch.optim.AdamW(
        groups, weight_decay=config.weight_decay, fused=device in ("cpu", "cuda")
    )


# ----------------------------------------------------------------------------- run state


def _save_state(
    out: Path,
    model: SegModel,
    opt: torch.optim.Optimizer,
    step: int,
    g: torch.Generator,
    config: TrainConfig,
    done: bool,
    run: dict[str, Any],
) -> None:
    """Write model, optimizer and generators to OUT/state atomically (temp folder + rename).

    ``run`` (the preset and identity that :func:`check_resume` compares) goes into state.json.
    Under torchrun every process calls it (its generators are gathered) and rank 0 writes.
    """
    rngs = distributed.gather_rng_states()  # the other processes' generators: a collective
    if not distributed.is_main():
        return
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    sd = opt.state_dict()
    scalars = {}
    for pid, st in sd["state"].items():
        for key, value in st.items():
            if torch.is_tensor(value):
                tensors[f"opt.{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{key}"] = value
    tensors["rng.data"] = g.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    tensors.update(rngs)
    info = {
        "step": step,
        "done": done,
        "config": dataclasses.asdict(config),
        "param_groups": sd["param_groups"],
        "opt_scalars": scalars,
        **run,
    }
    tmp = out / "state.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(tensors, str(tmp / "state.safetensors"))
    (tmp / "state.json").write_text(json.dumps(info))
    old = out / "state.old"
    shutil.rmtree(old, ignore_errors=True)
    if (out / "state").exists():
        os.replace(out / "state", old)
    os.replace(tmp, out / "state")
    shutil.rmtree(old, ignore_errors=True)


def _load_state(
    out: Path, model: SegModel, opt: torch.optim.Optimizer, g: torch.Generator, config: TrainConfig
) -> tuple[int, bool]:
    info = json.loads((out / "state" / "state.json").read_text())
    tensors = load_file(str(out / "state" / "state.safetensors"))
    try:
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    except RuntimeError:  # a state written before the preset was recorded in state.json
        raise Feds2rError(
            f"the run state in {out} does not fit this model (another preset?); resume it with "
            "the preset it was started with, or use another output folder"
        ) from None
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    for key, value in info["opt_scalars"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": info["param_groups"]})
    g.set_state(tensors["rng.data"])
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    distributed.restore_rng_states(tensors)  # under torchrun: this process's own generators
    return int(info["step"]), bool(info["done"])


def check_resume(
    out: str | Path,
    config: TrainConfig,
    *,
    preset: str | None = None,
    identity: dict[str, Any] | None = None,
) -> bool:
    """Whether ``out`` holds a run to continue; raise if that run is not this one.

    Refused (a :class:`Feds2rError`, nothing touched): a different config (other than
    ``RESUMABLE_CHANGES``), another model ``preset``, or another ``identity`` (what the run learns
    from, e.g. the client's data spec and fingerprint): continuing, or re-saving a finished run,
    would label the old weights with the new inputs. Only reads ``out``.
    """
    path = Path(out) / "state" / "state.json"
    if not path.is_file():
        return False
    try:
        info = json.loads(path.read_text())
        saved = info["config"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        raise Feds2rError(
            f"{path} is damaged, so the run in {out} cannot be resumed; use another output folder"
        ) from None
    defaults = dataclasses.asdict(TrainConfig())
    now = dataclasses.asdict(config)
    changed = [
        k
        for k in now
        if k not in TrainConfig.RESUMABLE_CHANGES
        and json.dumps(saved.get(k, defaults[k])) != json.dumps(now[k])
    ]
    if changed:
        raise Feds2rError(
            f"{out} holds a run started with a different config ({', '.join(changed)} differ); "
            "resume it with the same config, or use another output folder"
        )
    what = "finished" if info.get("done") else "stopped"
    if preset is not None and info.get("preset") not in (None, preset):
        raise Feds2rError(
            f"{out} holds a {what} run of preset {info['preset']!r}, not {preset!r}; resume it "
            f"with --preset {info['preset']}, or use another output folder"
        )
    saved_id = info.get("identity")
    if identity is not None and isinstance(saved_id, dict):
        differ = [k for k in identity if json.dumps(saved_id.get(k)) != json.dumps(identity[k])]
        if differ:
            was = "; ".join(f"{k} {saved_id.get(k)!r}, now {identity[k]!r}" for k in differ)
            raise Feds2rError(
                f"{out} holds a {what} run trained on other inputs ({was}); its weights and "
                "model.json are left as they are. Give the same inputs to resume it, or use "
                "another output folder"
            )
    return True


def _trim_log(path: Path, step: int) -> None:
    """Drop log lines past ``step`` (written by a run that died after its last checkpoint)."""
    if path.is_file():
        keep = []
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # the line a killed run was writing
                continue
            if record["step"] <= step:
                keep.append(line)
        path.write_text("".join(ln + "\n" for ln in keep))


# ----------------------------------------------------------------------------- the loop


def _saved_threads(out: Path) -> int:
    """The thread count a stopped run in ``out`` used (0 if none is recorded)."""
    try:
        return int(json.loads((out / "state" / "state.json").read_text()).get("threads") or 0)
    except (OSError, ValueError, TypeError, AttributeError):
        return 0  # no state, or a damaged one that check_resume reports


def train(
    model: SegModel,
    loss_fn: LossFn,
    data: ResizedCache | StreamingData,
    config: TrainConfig,
    out: str | Path,
    **options: Any,
) -> dict[str, Any]:
    """Train ``model`` on ``data`` with ``loss_fn``; write the checkpoint, log and plot to ``out``.

    ``data``: samples held in memory (a :class:`~feds2r.engine.data.ResizedCache`) or streamed
    from disk (:class:`~feds2r.engine.loader.StreamingData`, in ``config.workers`` processes).

    The run uses ``config.threads`` CPU threads (or those of the run it resumes) and
    deterministic kernels (:func:`feds2r.engine.repro.deterministic`), restored afterwards; the
    sidecar records the environment. ``options`` are those of :func:`_train_loop`.
    """
    out = Path(out)
    with deterministic(config.threads or _saved_threads(out)) as threads:
        return _train_loop(model, loss_fn, data, config, out, threads=threads, **options)


def _train_loop(
    model: SegModel,
    loss_fn: LossFn,
    data: ResizedCache | StreamingData,
    config: TrainConfig,
    out: str | Path,
    *,
    threads: int = 0,
    meta: dict[str, Any] | None = None,
    identity: dict[str, Any] | None = None,
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
    batch_fn: Callable[..., dict[str, Tensor]] = make_batch,
    save_fn: Callable[[Any, Path, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train ``model`` on ``data`` with ``loss_fn``; write the checkpoint, log and plot to ``out``.

    Resumes from ``out/state`` if a run with the same config, preset and ``identity`` (JSON values
    naming what the run learns from, see :func:`check_resume`) stopped there. ``on_step(step)`` is
    called after each step (tests use it to stop a run). ``batch_fn(data, indices, generator,
    **augmentation)`` makes a batch from data in memory (default: images and labels; streamed
    data makes images and labels); ``save_fn(model, out, meta)`` writes the result (default: a
    feds2r checkpoint). Returns a summary.

    ``train_log.jsonl`` records per line the mean seconds per step over the steps since the last
    line (``step_s``) and the part of it spent waiting for data (``data_s``).
    """
    if isinstance(data, StreamingData) and batch_fn is not make_batch:
        raise ValueError("streamed data makes images and labels only; give a ResizedCache")
    out = Path(out)
    preset = getattr(getattr(model, "preset", None), "name", None)
    resuming = check_resume(out, config, preset=preset, identity=identity)
    run = {"preset": preset, "identity": identity, "threads": threads}
    out.mkdir(parents=True, exist_ok=True)
    device = distributed.local_device(resolve_device(config.device))  # cuda:LOCAL_RANK
    meta = {**(meta or {}), "environment": environment(device)}
    model.to(device).train()
    opt = build_optimizer(model, config)
    g = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    step, done = 0, False
    log_path = out / "train_log.jsonl"
    if resuming:
        step, done = _load_state(out, model, opt, g, config)
        if distributed.is_main():  # under torchrun rank 0 alone writes
            _trim_log(log_path, step)
    elif log_path.exists() and distributed.is_main():
        log_path.unlink()
    net = distributed.wrap(model, device)  # DDP under torchrun: the loss gets it, saving the model
    part = distributed.batch_part(config.batch_size)  # this process's positions of each batch
    aug = {
        "crop": config.crop,
        "scale": config.scale,
        "flip": config.flip,
        "jitter": config.jitter,
        "blur_prob": config.blur_prob,
    }
    use_amp = config.amp and device.type == "cuda"
    pin = device.type == "cuda"  # pinned host memory: a faster, asynchronous copy to the GPU
    batches = open_batches(
        data,
        g,
        start=step,
        stop=config.steps,
        batch_size=config.batch_size,
        height=config.height,
        aug=aug,
        workers=config.workers,
        pin=pin,
        batch_fn=batch_fn,
        part=part,  # streamed: only this process's positions are read and made
    )
    quiet = not progress or done or not distributed.is_main()  # rank 0 alone shows progress
    bar = tqdm(total=config.steps, initial=step, desc="training", unit="step", disable=quiet)
    start, seen, last = time.perf_counter(), 0, {}
    since, waited, steps_since = start, 0.0, 0  # since the last log line
    try:
        while step < config.steps and not done:
            asked = time.perf_counter()
            # streamed batches hold this process's positions already; take() leaves them
            made = distributed.take(batches.next(), part, config.batch_size)
            batch = {k: v.to(device, non_blocking=pin) for k, v in made.items()}
            waited += time.perf_counter() - asked
            for group in opt.param_groups:
                group["lr"] = group["initial_lr"] * lr_factor(step, config)
            try:
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
                    parts = loss_fn(net, batch)
                loss = parts["loss"]
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss is {float(loss.detach())}")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip > 0:
                    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                    if not torch.isfinite(norm):
                        raise FloatingPointError(f"gradient norm is {float(norm)}")
            except FloatingPointError as exc:  # also raised by losses that see non-finite outputs
                raise Feds2rError(
                    f"training diverged at step {step + 1} ({exc}); lower --lr (now "
                    f"{config.lr:g}) and start a new run (another --out)"
                ) from None
            except torch.OutOfMemoryError:
                raise Feds2rError(
                    f"out of {device.type} memory at step {step} with batch {config.batch_size} "
                    f"and crop {config.crop[0]}x{config.crop[1]}; lower --batch-size or --crop "
                    "and start a new run (another --out)"
                ) from None
            opt.step()
            step += 1
            seen += config.batch_size
            steps_since += 1
            last = {k: float(v.detach()) for k, v in parts.items()}
            if step % config.log_every == 0 or step == config.steps:
                last = distributed.mean_over_processes(last)  # the global batch's loss
                now = time.perf_counter()
                speed = seen / max(now - start, 1e-9)
                step_s, data_s = (now - since) / steps_since, waited / steps_since
                record = {
                    "step": step,
                    "lr": opt.param_groups[-1]["lr"],
                    **last,
                    "img_per_s": speed,
                    "step_s": step_s,
                    "data_s": data_s,
                }
                if distributed.is_main():
                    with open(log_path, "a") as f:
                        f.write(json.dumps(record) + "\n")
                bar.set_postfix(
                    {k.removeprefix("loss_"): f"{v:.3f}" for k, v in last.items()}
                    | {"img/s": f"{speed:.1f}", "data": f"{data_s:.2f}/{step_s:.2f}s"}
                )
                since, waited, steps_since = now, 0.0, 0
            bar.update(1)
            if step % config.checkpoint_every == 0 and step < config.steps:
                _save_state(
                    out, model, opt, step, batches.generator(step), config, done=False, run=run
                )
            if on_step is not None:
                on_step(step)
    except RuntimeError as exc:  # a DataLoader worker that died is reported as a RuntimeError
        died = worker_death(exc, config.workers, config.batch_size)
        if died is None:
            raise
        raise died from None
    finally:
        batches.close()
    bar.close()
    seconds = time.perf_counter() - start
    if not done:
        _save_state(out, model, opt, step, batches.generator(step), config, done=True, run=run)
    model.eval()
    final_meta = {**(meta or {}), "steps": step, "train_config": dataclasses.asdict(config)}
    final_meta["world_size"] = distributed.world_size()  # processes that trained it (torchrun)
    if distributed.is_main():
        if save_fn is None:
            save_checkpoint(model, out, meta=final_meta)
        else:
            save_fn(model, out, final_meta)
        plot_losses(log_path, out / "loss_curve.png")
    distributed.barrier()  # the others return once rank 0 has written
    return {"steps": step, "seconds": round(seconds, 2), "final": last, "out": str(out)}


def plot_losses(log_path: Path, dest: Path) -> None:
    """Plot every loss part of a ``train_log.jsonl`` against the step."""
    if not log_path.is_file():
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(ln) for ln in log_path.read_text().splitlines() if ln]
    if not rows:
        return
    keys = [k for k in rows[0] if k.startswith("loss")]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key in keys:
        ax.plot([r["step"] for r in rows], [r[key] for r in rows], label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    save_figure(fig, dest)


def save_figure(fig, dest: Path) -> None:
    """Save a matplotlib figure as a PNG atomically (temporary file, then rename) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    tmp = dest.with_name(f".{dest.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, dest)
