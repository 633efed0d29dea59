"""Reproducibility: fixed threads and deterministic kernels for a run, and a record of what a
rerun needs.

What changes the numbers of a seeded run (measured, docs/training.md): the number of intra-op CPU
threads (PyTorch, MKL and oneDNN split every sum by thread, so another count changes the last
bits, which training amplifies), the kernels chosen for the CPU's instruction set (AVX2, AVX-512,
AMX) and the library versions. Machine load does not: with the thread count fixed, a run is
bit-identical with a CPU burner running beside it (``tests/engine/test_repro.py``).
:func:`deterministic` fixes the first and asks for deterministic kernels; :func:`environment`
records all three in every checkpoint's sidecar.
"""

from __future__ import annotations

import os
import platform
import re
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from typing import Any

import torch

from feds2r.__version__ import __version__

# /proc/cpuinfo flags that decide which MKL / oneDNN / ATen kernels run (and so the last bits)
CPU_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx_vnni",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)
# environment variables that change threads or kernel choice
ENV_VARS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OMP_DYNAMIC",
    "MKL_DYNAMIC",
    "MKL_CBWR",
    "ATEN_CPU_CAPABILITY",
    "ONEDNN_MAX_CPU_ISA",
    "DNNL_MAX_CPU_ISA",
    "CUBLAS_WORKSPACE_CONFIG",
)
PACKAGES = ("torch", "numpy", "transformers", "safetensors", "scipy")


def _cpu() -> dict[str, Any]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:  # not Linux: the flags stay unknown
        pass
    return {
        "model": model,
        "capability": torch.backends.cpu.get_cpu_capability(),
        "flags": [f for f in CPU_FLAGS if f in flags],
        "logical_cpus": os.cpu_count(),
    }


def _versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    info = torch.__config__.parallel_info()
    mkl = re.search(r"Math Kernel Library Version ([\d.]+)", info)
    onednn = re.search(r"MKL-DNN v([\d.]+)", info)
    found["mkl"] = mkl.group(1) if mkl else None
    found["onednn"] = onednn.group(1) if onednn else None
    return found


def environment(device: torch.device | str | None = None) -> dict[str, Any]:
    """What a bit-exact rerun needs: versions, threads, deterministic flags, CPU and GPU.

    A JSON-ready dict, written into every checkpoint sidecar as ``environment``.
    """

    record: dict[str, Any] = {
        "feds2r": __version__,
        "versions": _versions(),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cpu": _cpu(),
        "platform": platform.platform(),
        "env": {k: os.environ[k] for k in ENV_VARS if k in os.environ},
        "cuda": None,
    }
    device = torch.device(device) if device is not None else None
    if torch.cuda.is_available() and (device is None or device.type == "cuda"):
        index = device.index if device is not None and device.index is not None else 0
        record["cuda"] = {
            "version": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "device": torch.cuda.get_device_name(index),
            "capability": list(torch.cuda.get_device_capability(index)),
        }
    return record


@contextmanager
def deterministic(threads: int) -> Iterator[int]:
    """Run a block with ``threads`` intra-op CPU threads (0: keep PyTorch's current count) and
    deterministic kernels; the previous settings are restored after. Yields the thread count.

    ``torch.use_deterministic_algorithms`` is set with ``warn_only``: an operation without a
    deterministic implementation (some CUDA backward kernels) warns instead of stopping the run.
    ``CUBLAS_WORKSPACE_CONFIG`` is set (if unset) for deterministic cuBLAS; it takes effect only if
    CUDA was not used before in this process.
    """
    saved = (
        torch.get_num_threads(),
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    cublas = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    try:
        if threads > 0:
            torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        if cublas is None:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1], warn_only=saved[2])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[3:]
        if cublas is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
