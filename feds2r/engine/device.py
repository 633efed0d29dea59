"""The one place a device name ("auto", "cpu", "cuda", "cuda:N") becomes a ``torch.device``."""

from __future__ import annotations

import re

import torch

from feds2r.errors import Feds2rError


def check_device_name(name: str) -> None:
    """Raise ValueError unless ``name`` is "auto", "cpu", "cuda" or "cuda:N"."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", name):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")


def resolve_device(name: str) -> torch.device:
    """The torch device for "auto" (CUDA if available), "cpu", "cuda" or "cuda:N".

    Raises :class:`Feds2rError` for any other name, or for a CUDA device that is not there.
    """
    try:
        check_device_name(name)
    except ValueError as exc:
        raise Feds2rError(str(exc)) from None
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise Feds2rError(f"device {name!r} asked for, but no CUDA device is available")
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise Feds2rError(
                f"device {name!r} asked for, but only {torch.cuda.device_count()} CUDA "
                "device(s) are visible (cuda:0 ...)"
            )
    return torch.device(name)
