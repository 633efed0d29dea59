"""Checkpoints: ``safetensors`` weights plus a JSON sidecar; never a pickle.

A checkpoint is a folder holding ``model.safetensors`` and ``model.json`` (or the two files side by
side, ``NAME.safetensors`` + ``NAME.json``). Loading reads the sidecar, checks that it names a known
preset and feds2r's 19-class label space, checks every tensor's name and shape against the model
the preset builds, and only then reads the tensors, refusing NaN or infinite values. A file whose
first bytes are a pickle's (``torch.save``) is refused before anything else is read from it:
unpickling can run arbitrary code. The type of a file is judged by its content, not its name.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from feds2r.__version__ import __version__
from feds2r.data.labels import CLASS_NAMES
from feds2r.errors import Feds2rError
from feds2r.io import PickleError, is_safetensors_head, refuse_pickle
from feds2r.models import PRESETS, SegModel, create_model

FORMAT = "feds2r-checkpoint"
FORMAT_VERSION = 1
WEIGHTS, SIDECAR = "model.safetensors", "model.json"


class CheckpointError(Feds2rError):
    """A checkpoint is missing, corrupt, a pickle, or does not fit feds2r's models or labels."""


def _resolve(path: str | Path) -> tuple[Path, Path]:
    path = Path(path)
    if path.is_dir():
        weights, sidecar = path / WEIGHTS, path / SIDECAR
    else:
        weights, sidecar = path, path.with_suffix(".json")
    try:
        refuse_pickle(weights)
    except PickleError as exc:
        raise CheckpointError(str(exc)) from None
    if not weights.is_file():
        hint = " (a folder with model.safetensors and model.json)" if path.is_dir() else ""
        raise CheckpointError(f"no checkpoint weights at {weights}{hint}")
    with open(weights, "rb") as f:  # the type by the content, not the name
        head = f.read(9)
    if not is_safetensors_head(head, weights.stat().st_size):
        raise CheckpointError(
            f"checkpoint weights {weights} are not a safetensors file (no safetensors header); "
            "give the model.safetensors a feds2r command wrote"
        )
    if not sidecar.is_file():
        raise CheckpointError(
            f"checkpoint {weights} has no sidecar {sidecar}: the JSON that names its preset and "
            "classes; without it the weights cannot be checked"
        )
    return weights, sidecar


def read_sidecar(path: str | Path) -> dict[str, Any]:
    """The sidecar of a checkpoint, checked for format, preset and label space."""
    _, sidecar = _resolve(path)
    try:
        meta = json.loads(sidecar.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint sidecar {sidecar} is not valid JSON: {exc}") from None
    except RecursionError:
        raise CheckpointError(
            f"checkpoint sidecar {sidecar} is nested too deeply to be a feds2r sidecar"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{sidecar} is not a feds2r checkpoint sidecar (no format={FORMAT})")
    version = meta.get("format_version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise CheckpointError(
            f"{sidecar}: format_version must be an integer, got {version!r}; the sidecar is "
            "damaged or was not written by feds2r"
        )
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{sidecar} was written by a newer feds2r (checkpoint format "
            f"{meta['format_version']}); upgrade feds2r to load it"
        )
    preset = meta.get("preset")
    if not isinstance(preset, str) or preset not in PRESETS:
        raise CheckpointError(
            f"{sidecar}: unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}"
        )
    if not isinstance(meta.get("class_names"), list) or meta["class_names"] != list(CLASS_NAMES):
        raise CheckpointError(
            f"{sidecar}: the checkpoint's classes {meta.get('class_names')} are not feds2r's 19 "
            "Cityscapes train classes in order; mismatched class sets cannot be combined"
        )
    return meta


def _atomic_dir_write(out_dir: Path, files: dict[str, callable]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, write in files.items():
        fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{name}.", suffix=".tmp")
        os.close(fd)
        try:
            write(tmp)
            os.replace(tmp, out_dir / name)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)


def save_checkpoint(
    model: SegModel, out_dir: str | Path, *, meta: dict[str, Any] | None = None
) -> Path:
    """Write ``model.safetensors`` and ``model.json`` into ``out_dir`` (each atomically)."""
    from feds2r.engine.repro import environment

    out_dir = Path(out_dir)
    sidecar = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "feds2r_version": __version__,
        "preset": model.preset.name,
        "family": model.preset.family,
        "num_classes": model.num_classes,
        "class_names": list(CLASS_NAMES),
        "environment": environment(),  # training passes its own, with its device
        **(meta or {}),
    }
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    _atomic_dir_write(
        out_dir,
        {
            WEIGHTS: lambda p: save_file(state, p, metadata={"format": FORMAT}),
            SIDECAR: lambda p: Path(p).write_text(json.dumps(sidecar, indent=2) + "\n"),
        },
    )
    return out_dir


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[SegModel, dict]:
    """Load a checkpoint after checking it; returns ``(model in eval mode, sidecar)``."""
    weights, _ = _resolve(path)
    meta = read_sidecar(path)
    model = create_model(meta["preset"], num_classes=len(CLASS_NAMES))
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    try:
        with safe_open(str(weights), framework="pt") as f:
            found = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as exc:  # safetensors raises several types for damaged headers
        raise CheckpointError(f"checkpoint {weights} is corrupt or truncated: {exc}") from None
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"checkpoint {weights} does not fit preset {meta['preset']!r}: {len(missing)} missing, "
            f"{len(unexpected)} unexpected and {len(wrong)} wrongly shaped tensors "
            f"(e.g. {(missing + unexpected + wrong)[:3]}); was it written for another preset?"
        )
    try:
        state = load_file(str(weights))
    except Exception as exc:
        raise CheckpointError(f"checkpoint {weights} is corrupt or truncated: {exc}") from None
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(
            f"checkpoint {weights} holds NaN or infinite values in {len(bad)} tensor(s) (e.g. "
            f"{bad[0]}): the run that wrote it diverged. Retrain it (with a lower --lr)"
        )
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), meta
