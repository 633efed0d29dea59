"""Several processes, one run: data-parallel training and sharded evaluation under torchrun.

``torchrun --nproc_per_node N -m feds2r COMMAND ...`` starts N copies of the command. Each learns
its place from the environment torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) and joins
one process group (:func:`init_from_env`): NCCL for CUDA tensors (each process on
``cuda:LOCAL_RANK``), gloo for CPU tensors. Without those variables (or with one process) every
function here is the identity and the run is the single-process one, bit for bit.

How a run is shared (docs/multi-gpu.md):

- **Training.** The global batch stays ``batch_size``. Every process draws the same indices and
  view randomness from the same seeded generator, so the saved run state is the same on all of
  them, and keeps its contiguous share of the batch's positions (:func:`batch_part`): process
  ``r`` of ``W`` takes positions ``[r*B/W, (r+1)*B/W)``. The model is wrapped in
  ``DistributedDataParallel`` (:func:`wrap`), which averages the gradients: for a loss that is a
  mean of per-sample terms, W processes at B/W equal one at B. BatchNorm layers that learn their
  statistics become ``SyncBatchNorm`` on CUDA (statistics over the global batch); on the CPU
  (gloo, used for tests) each process keeps its own.
- **Writing.** Rank 0 alone claims and writes the output folder, the log, the state and the
  progress bar (:func:`is_main`, :func:`on_main`); the others wait for it at collectives. The run
  state rank 0 saves restores every process (each process's own torch generators travel in it:
  :func:`gather_rng_states`).
- **Evaluation.** Images are dealt round-robin (process ``r`` takes images ``r, r+W, ...``:
  :func:`shard`) and the confusion matrices summed (:func:`sum_over_processes`).
- **Failures.** :func:`launch` runs a command as one of torchrun's processes: the process that
  fails says why, once; the others stop without a word of their own (torchrun stops them when
  one exits with an error, and a collective that loses a peer raises at once or after the
  process group's timeout, :data:`TIMEOUT_ENV`).
"""

from __future__ import annotations

import datetime
import io
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from feds2r.errors import Feds2rError

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
"""What torchrun sets in each process it starts (all three, or it is not torchrun)."""
TIMEOUT_ENV = "FEDS2R_DIST_TIMEOUT"
"""Seconds a collective may wait for the other processes before the run stops (default
:data:`DEFAULT_TIMEOUT_S`). It must exceed the longest stretch in which rank 0 works alone (for
instance writing a dataset the others then read)."""
DEFAULT_TIMEOUT_S = 1800.0
INIT_ENV = "FEDS2R_DIST_INIT"
"""Where the processes meet instead of torchrun's TCP store, e.g. ``file:///shared/rendezvous``
(PyTorch's ``init_method``): for processes started without torchrun (the tests) with ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` set by hand. Unset: torchrun's store (``env://``)."""
FAILED_KEY = "feds2r/failed"
"""Key of torchrun's store counting the processes of this run that failed."""
PEER_GRACE_S = 10.0
"""How long a process other than rank 0 that fails waits to learn whether rank 0 failed too (the
same error everywhere: rank 0 alone reports it). Generous: rank 0 may reach the same error
seconds later on a loaded machine; a process failing alone only ends that much later."""


class PeerFailed(RuntimeError):
    """Another process of this torchrun run failed and reported it; this one stops quietly."""


@dataclass(frozen=True)
class Launch:
    """This process's place in a torchrun run."""

    rank: int
    """Its rank among all processes (0: the one that writes)."""
    world_size: int
    """The number of processes."""
    local_rank: int
    """Its rank on this machine: its GPU is ``cuda:local_rank``."""


def launched() -> Launch | None:
    """What torchrun's ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` say, or None unless all three
    are set (a plain process). Raises :class:`Feds2rError` for values that are not a valid rank."""
    values = [os.environ.get(k) for k in ENV_VARS]
    if any(v is None for v in values):
        return None
    try:
        rank, world, local = (int(v) for v in values)
    except ValueError:
        raise Feds2rError(
            f"RANK={values[0]}, WORLD_SIZE={values[1]}, LOCAL_RANK={values[2]} are not integers; "
            "start feds2r with torchrun, or unset them"
        ) from None
    if not (0 <= rank < world and local >= 0):
        raise Feds2rError(
            f"RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local} do not describe a process of a "
            "torchrun run; start feds2r with torchrun, or unset them"
        )
    return Launch(rank, world, local)


def _timeout() -> datetime.timedelta:
    raw = os.environ.get(TIMEOUT_ENV)
    try:
        seconds = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        seconds = -1.0
    if seconds <= 0:
        raise Feds2rError(f"{TIMEOUT_ENV}={raw!r} must be a number of seconds > 0")
    return datetime.timedelta(seconds=seconds)


def init_from_env() -> Launch | None:
    """Join the process group of the torchrun run this process belongs to.

    Returns this process's :class:`Launch`, or None for a plain process or a run of one process
    (then nothing is set up and every function here acts as in a single process). On a machine
    with CUDA the process takes ``cuda:LOCAL_RANK`` and CUDA tensors travel by NCCL, CPU tensors by
    gloo; without CUDA, gloo. Collectives time out after :data:`TIMEOUT_ENV` seconds.
    """
    info = launched()
    if info is None or info.world_size == 1:
        return None
    if dist.is_initialized():
        return info
    timeout = _timeout()
    backend = "gloo"
    if torch.cuda.is_available():
        if info.local_rank >= torch.cuda.device_count():
            raise Feds2rError(
                f"process {info.rank} has LOCAL_RANK {info.local_rank} but this machine shows "
                f"{torch.cuda.device_count()} CUDA device(s); give torchrun --nproc_per_node at "
                "most the number of GPUs"
            )
        torch.cuda.set_device(info.local_rank)
        backend = "cpu:gloo,cuda:nccl"
    method = os.environ.get(INIT_ENV)
    if method:
        dist.init_process_group(
            backend,
            init_method=method,
            rank=info.rank,
            world_size=info.world_size,
            timeout=timeout,
        )
    else:
        dist.init_process_group(backend, timeout=timeout)
    return info


def active() -> bool:
    """Whether this process is one of several of a torchrun run (its process group is set up).

    Raises :class:`Feds2rError` when torchrun started this process with others but nobody set up
    the process group: every process would write the same outputs.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    info = launched()
    if info is not None and info.world_size > 1:
        raise Feds2rError(
            f"this process is one of {info.world_size} started by torchrun, but feds2r's process "
            "group is not set up: start it as `torchrun ... -m feds2r COMMAND` (not the feds2r "
            "script), or call feds2r.engine.distributed.init_from_env() first"
        )
    return False


def rank() -> int:
    """This process's rank (0 without torchrun)."""
    return dist.get_rank() if active() else 0


def world_size() -> int:
    """The number of processes of this run (1 without torchrun)."""
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Whether this process writes the outputs: rank 0, or the only process."""
    return rank() == 0


def barrier() -> None:
    """Wait until every process gets here (nothing without torchrun)."""
    if active():
        dist.barrier()


def fail_everywhere(message: str) -> None:
    """Stop every process for a reason they all see alike: rank 0 raises :class:`Feds2rError`
    with ``message`` (reported once), the others :class:`PeerFailed` (quiet)."""
    if is_main():
        raise Feds2rError(message)
    raise PeerFailed(message)


# ----------------------------------------------------------------------------- rank 0 alone

T = TypeVar("T")


def on_main(fn: Callable[[], T], *, others: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only while the other processes wait; they then return ``others()``.

    If ``fn`` raises on rank 0, the others raise :class:`PeerFailed` (rank 0 reports the error).
    Without torchrun, ``fn()``.
    """
    if not active():
        return fn()
    flag = [True]
    if is_main():
        try:
            result = fn()
        except BaseException:
            flag[0] = False
            dist.broadcast_object_list(flag, src=0)
            raise
        dist.broadcast_object_list(flag, src=0)
        return result
    dist.broadcast_object_list(flag, src=0)
    if not flag[0]:
        raise PeerFailed("rank 0 failed")
    return others()


@dataclass
class Unclaimed:
    """What a process other than rank 0 holds for an output folder rank 0 claimed (the shape of
    :class:`feds2r.io.Output`): nothing to mark, clear or release; rank 0 writes the folder."""

    path: Path
    previous: bool = False
    entries: list[str] = field(default_factory=list)

    @property
    def fresh(self) -> bool:
        return False

    def begin(self) -> None:
        """Nothing: rank 0 marks the folder."""

    def clear(self) -> None:
        """Nothing: rank 0 clears the folder."""

    def finish(self) -> None:
        """Nothing: rank 0 marks the folder complete."""

    def close(self) -> None:
        """Nothing: rank 0 holds the lock."""

    def __enter__(self) -> Unclaimed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def claim_on_main(path: str | Path, claim: Callable[[], T]) -> T | Unclaimed:
    """``claim()`` (e.g. :func:`feds2r.io.prepare_output`) on rank 0; the others wait for it and
    get an :class:`Unclaimed` for ``path``. Without torchrun, ``claim()``."""
    return on_main(claim, others=lambda: Unclaimed(Path(path)))


# ----------------------------------------------------------------------------- training


def local_device(device: torch.device) -> torch.device:
    """The device this process computes on: ``cuda:LOCAL_RANK`` under torchrun for a CUDA
    ``device`` ("cuda" or "auto" asked for); else ``device``."""
    if device.type != "cuda" or not active():
        return device
    mine = torch.cuda.current_device()  # set by init_from_env
    if device.index is not None and device.index != mine:
        raise Feds2rError(
            f"device {device} asked for, but under torchrun each process takes the GPU of its "
            f"LOCAL_RANK (this one cuda:{mine}); give --device cuda or auto (CUDA_VISIBLE_DEVICES "
            "chooses the GPUs)"
        )
    return torch.device("cuda", mine)


def batch_part(batch_size: int) -> slice:
    """This process's positions of a global batch: ``[r*B/W, (r+1)*B/W)`` (all without torchrun).

    Raises :class:`Feds2rError` (once, from rank 0) unless the W processes divide ``batch_size``.
    """
    w = world_size()
    if w == 1:
        return slice(None)
    if batch_size % w:
        fail_everywhere(
            f"batch size {batch_size} is not divisible by the {w} processes torchrun started: "
            f"each takes batch_size / {w} images of every step; give --batch-size a multiple of "
            f"{w} (or another --nproc_per_node)"
        )
    n = batch_size // w
    return slice(rank() * n, (rank() + 1) * n)


def take(batch: dict[str, Any], part: slice, batch_size: int) -> dict[str, Any]:
    """The positions ``part`` of every tensor of ``batch`` whose first dimension is the batch
    (``batch_size``); other values as they are. The batch itself without torchrun."""
    if part == slice(None):
        return batch
    return {
        k: v[part] if torch.is_tensor(v) and v.ndim and v.shape[0] == batch_size else v
        for k, v in batch.items()
    }


class _DataParallel(nn.parallel.DistributedDataParallel):
    """``DistributedDataParallel`` that also answers the wrapped model's attributes: a loss
    function receives it in place of the model and may read, e.g., ``model.num_classes``."""

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


def _sync_batchnorm(model: nn.Module) -> int:
    """Turn every BatchNorm layer of ``model`` that is learning its statistics (in training
    mode) into ``SyncBatchNorm`` holding the same parameters and buffers; frozen ones (in
    evaluation mode while training, e.g. ``freeze_bn_stats``) stay. Returns how many."""
    count = 0
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if (
                isinstance(child, nn.modules.batchnorm._BatchNorm)
                and not isinstance(child, nn.SyncBatchNorm)
                and child.training
            ):
                setattr(parent, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
                count += 1
    return count


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in ``DistributedDataParallel`` (gradients averaged over the processes), or the
    model itself without torchrun. Call after the optimizer is built and the state loaded; pass
    the wrapper to the loss, keep saving the model.

    On CUDA, learning BatchNorm layers become ``SyncBatchNorm`` first (in place: same parameters
    and state-dict keys). ``find_unused_parameters``: some presets hold parameters that a step does
    not use (m2f-cpu's last Swin norm), which plain DDP refuses.
    """
    if not active():
        return model
    if device.type == "cuda":
        _sync_batchnorm(model)
        return _DataParallel(model, device_ids=[device.index], find_unused_parameters=True)
    return _DataParallel(model, find_unused_parameters=True)


def mean_over_processes(values: dict[str, float]) -> dict[str, float]:
    """Each value averaged over the processes (a collective; ``values`` without torchrun): the
    loss of the global batch for losses that are means over the samples."""
    if not active() or not values:
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float64)
    dist.all_reduce(t)
    return dict(zip(values, (t / dist.get_world_size()).tolist(), strict=True))


def gather_rng_states() -> dict[str, Tensor]:
    """The torch (and CUDA) generator states of processes 1..W-1, gathered on rank 0 as
    ``rng.torch.rankR`` / ``rng.cuda.rankR`` tensors for the run state; {} elsewhere or without
    torchrun. A collective: every process calls it when rank 0 saves."""
    if not active():
        return {}
    mine = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        mine["cuda"] = torch.cuda.get_rng_state()
    states: list[Any] | None = [None] * dist.get_world_size() if is_main() else None
    dist.gather_object(mine, states, dst=0)
    if states is None:
        return {}
    return {f"rng.{k}.rank{r}": v for r, s in enumerate(states) if r for k, v in s.items()}


def restore_rng_states(tensors: dict[str, Tensor]) -> None:
    """Set this process's torch (and CUDA) generators from a run state's ``rng.*.rankR``, if it
    holds them (rank 0's are the state's own ``rng.torch``/``rng.cuda``)."""
    if not active() or is_main():
        return
    r = rank()
    if f"rng.torch.rank{r}" in tensors:
        torch.set_rng_state(tensors[f"rng.torch.rank{r}"])
    if f"rng.cuda.rank{r}" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors[f"rng.cuda.rank{r}"])


# ----------------------------------------------------------------------------- evaluation


def shard(n: int) -> range:
    """The items ``r, r+W, r+2W, ...`` of ``n`` that process ``r`` of ``W`` takes (all without
    torchrun)."""
    return range(rank(), n, world_size())


def sum_over_processes(t: Tensor) -> Tensor:
    """``t`` summed over the processes (in place; ``t`` itself without torchrun)."""
    if active():
        dist.all_reduce(t)
    return t


def gather_in_order(items: Sequence[T], n: int) -> list[T]:
    """The items of all processes, each holding its :func:`shard` of ``n``, back in their order
    0..n-1 on every process (``items`` without torchrun)."""
    if not active():
        return list(items)
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, list(items))
    out: list[Any] = [None] * n
    for r, part in enumerate(parts):
        out[r :: len(parts)] = part
    return out


# ----------------------------------------------------------------------------- launching

CANCELLED = (128 + 1, 128 + 15, 130)
"""Exit codes of a command cancelled by SIGHUP, SIGTERM or Ctrl-C (:mod:`feds2r.signals`)."""


def _store() -> dist.Store | None:
    """The process group's key-value store (torchrun's, held by its agent, or the shared file
    of :data:`INIT_ENV`: both outlive any one process), or None."""
    try:
        return dist.distributed_c10d._get_default_store()
    except Exception:  # no process group
        return None


def _count_failure(store: dist.Store | None, rank: int) -> int:
    """Record that process ``rank`` failed; returns how many had failed before it (0: it is the
    first; -1 when the store cannot be reached)."""
    if store is None:
        return -1
    try:
        if rank == 0:
            store.set(f"{FAILED_KEY}/0", "1")
        return int(store.add(FAILED_KEY, 1)) - 1
    except Exception:  # nobody left to tell
        return -1


def _rank0_fails(store: dist.Store | None, within: float) -> bool:
    """Whether rank 0 records a failure within ``within`` seconds."""
    end = time.monotonic() + within
    while store is not None:
        try:
            if store.check([f"{FAILED_KEY}/0"]):
                return True
        except Exception:
            return False
        if time.monotonic() >= end:
            return False
        time.sleep(0.05)
    return False


class _HeldStderr(io.TextIOBase):
    """stderr that holds back what :func:`launch` decides on at the end: everything a process
    other than rank 0 writes, or rank 0's ``cancelled:`` line. The rest goes straight through."""

    def __init__(self, real: TextIO, *, hold_all: bool) -> None:
        self.real, self.hold_all = real, hold_all
        self.held: list[str] = []
        self._in_held_line = False

    def write(self, s: str) -> int:
        if self.hold_all or self._in_held_line or s.startswith("cancelled: "):
            self.held.append(s)
            self._in_held_line = "\n" not in s
            return len(s)
        return self.real.write(s)

    def flush(self) -> None:
        self.real.flush()

    def release(self, emit: bool) -> None:
        """Write what was held (``emit``) or drop it."""
        if emit and self.held:
            self.real.write("".join(self.held))
            self.real.flush()
        self.held = []

    def __getattr__(self, name: str) -> Any:  # fileno, isatty, encoding: the real stream's
        return getattr(self.real, name)


def _lost_contact(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective that lost another process (it died, or timed out)."""
    if isinstance(exc, dist.DistError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(
        m in text for m in ("Connection closed by peer", "Connection reset by peer", "gloo", "NCCL")
    )


def _stopped(exc: BaseException) -> bool:
    """Whether ``exc`` means this process was stopped from outside: torchrun stops a run's
    processes (and their DataLoader workers, one process group each) with SIGTERM."""
    text = str(exc)
    return isinstance(exc, KeyboardInterrupt) or (
        isinstance(exc, RuntimeError)
        and "DataLoader worker" in text
        and any(f"killed by signal: {s}" in text for s in ("Terminated", "Hangup", "Interrupt"))
    )


def launch(main: Callable[[], int]) -> int:
    """Run ``main`` (a command's main function: prints its own errors, returns the exit code) in
    this process; under torchrun as one of its processes.

    Without torchrun (or with one process): ``main()``. Under torchrun the process joins the
    process group first; processes other than rank 0 print nothing to stdout. When the run fails,
    one process reports why: the one whose command failed (a process other than rank 0 stays
    quiet when rank 0 fails too: the same error everywhere), or else the first that lost contact
    with the others in a collective. The processes that torchrun stops, or that lose a process
    that already reported, exit without a message of their own: torchrun's summary, printed
    last, names the process that failed first and how.
    """
    try:
        info = init_from_env()
    except Feds2rError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if info is None:
        return main()
    real_out, real_err = sys.stdout, sys.stderr
    held = _HeldStderr(real_err, hold_all=info.rank != 0)
    sys.stderr = held
    if info.rank != 0:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (closed below)
    try:
        code = main()
    except SystemExit as exc:  # argparse: --help, or a usage error every process meets alike
        code = exc.code if isinstance(exc.code, int) else 1
        held.release(emit=False)
        return code
    except PeerFailed:  # rank 0 failed and reported it
        held.release(emit=False)
        return 1
    except BaseException as exc:
        if _stopped(exc):
            held.release(emit=False)
            return 128 + 15
        store = _store()
        before = _count_failure(store, info.rank)
        if not _lost_contact(exc):  # a bug: its traceback, from every process it hits
            sys.stderr = real_err
            held.release(emit=True)
            raise
        if before <= 0:  # the first to notice says so, once for all
            text = str(exc).strip()
            print(
                f"error: process {info.rank} of {info.world_size} lost contact with the others "
                f"({type(exc).__name__}: {text.splitlines()[0][:200] if text else ''}); "
                "torchrun's summary names the process that stopped first",
                file=real_err,
            )
        held.release(emit=False)
        return 1
    finally:
        if sys.stdout is not real_out:
            sys.stdout.close()
            sys.stdout = real_out
        sys.stderr = real_err
    if code == 0:
        held.release(emit=info.rank == 0)
        dist.destroy_process_group()
        return 0
    if code in CANCELLED:  # torchrun stopped it (another process failed, or it was stopped)
        held.release(emit=False)
        return code
    store = _store()  # the command failed and printed why (held, for rank > 0)
    _count_failure(store, info.rank)
    held.release(emit=info.rank == 0 or not _rank0_fails(store, PEER_GRACE_S))
    return code


__all__ = [
    "DEFAULT_TIMEOUT_S",
    "ENV_VARS",
    "INIT_ENV",
    "TIMEOUT_ENV",
    "Launch",
    "PeerFailed",
    "Unclaimed",
    "active",
    "barrier",
    "batch_part",
    "claim_on_main",
    "fail_everywhere",
    "gather_in_order",
    "gather_rng_states",
    "init_from_env",
    "is_main",
    "launch",
    "launched",
    "local_device",
    "mean_over_processes",
    "on_main",
    "rank",
    "restore_rng_states",
    "shard",
    "sum_over_processes",
    "take",
    "wrap",
    "world_size",
]
