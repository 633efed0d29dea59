"""The FedS2R server as a short sequence of stage functions, and the pipeline that runs them.

Each stage takes typed inputs and its own frozen config section, returns a typed result and
writes its outputs (with what it was run with) into its own place:

1. :func:`find_unstable` (config :class:`~feds2r.server.inconsistency.UnstableRule`): the clients'
   per-class inconsistency on the server's unlabelled images -> an
   :class:`~feds2r.server.inconsistency.Inconsistency`; ``inconsistency.json`` and its chart.
2. :func:`generate_images` (:class:`GenerationConfig`): prompts for the unstable classes and one
   image each -> a :class:`GeneratedImages` (an unlabelled dataset spec); ``generated/``.
3. :func:`~feds2r.server.distill.run_distill` (:class:`~feds2r.server.distill.DistillConfig` and
   the training recipe): the teachers distilled into the global model -> a checkpoint.
4. optional, by ``ServerConfig.route``: :func:`~feds2r.server.selftrain.self_train`
   (:class:`~feds2r.server.selftrain.SelfTrainConfig`): the distilled model self-trained on the
   server's images -> a checkpoint; :func:`~feds2r.server.lite.distill_lite`
   (:class:`~feds2r.server.lite.LiteConfig`): a lightweight model through the large one -> a
   checkpoint.
5. :func:`evaluate_checkpoint`: optional mIoU of a checkpoint on labelled sets.

:func:`run_server_pipeline` is those stages in order over one :class:`ServerConfig`. The CLI's
``feds2r server`` commands, the demo, the Flower ServerApp and the scripts call these functions;
none of them re-implements a stage.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from feds2r.config import check_types, write_run_config
from feds2r.data import open_dataset
from feds2r.engine.checkpoint import load_checkpoint
from feds2r.engine.evaluate import evaluate
from feds2r.engine.train import TrainConfig
from feds2r.errors import Feds2rError
from feds2r.io import write_atomic
from feds2r.server.distill import DistillConfig, run_distill
from feds2r.server.generators import generate_dataset, generated_spec, make_generator
from feds2r.server.inconsistency import (
    Inconsistency,
    UnstableRule,
    load_inconsistency,
    measure_inconsistency,
    plot_inconsistency,
)
from feds2r.server.inputs import StageInputs
from feds2r.server.lite import LiteConfig, distill_lite
from feds2r.server.prompts import builtin_prompts, llm_prompts, prompt_counts
from feds2r.server.selftrain import SelfTrainConfig, self_train

PROMPTS = ("builtin", "llm")
GENERATORS = ("builtin", "diffusers")
ROUTES = ("distill", "distill+selftrain", "distill+lite", "distill+selftrain+lite")
"""The server's routes to its global model (``ServerConfig.route``)."""


@dataclass(frozen=True)
class GenerationConfig:
    """How the server generates images of the unstable classes (stage 2)."""

    images: int = 0
    """Images in total, shared among the unstable classes in proportion to their inconsistency;
    0 (the default) skips the stage. Off by default, chosen on dev: with the default ImageNet
    start, distilling without generated images scored above 50, 150 and 300 of them beside the
    400 real server images (five seeds' mean; 4 of 5 seeds above 150), and with the public start
    150 of them cost dev mIoU in every seed (docs/results.md). The demo's FedS2R rows generate
    150 (the method as published; ``feds2r-no-aug`` is the ablation)."""
    prompts: str = "builtin"
    """Where the prompts come from: "builtin" (varied templates, offline) or "llm" (an
    OpenAI-compatible chat endpoint: ``llm_url``, ``llm_model``)."""
    llm_url: str = ""
    """With prompts "llm": the endpoint's base URL, e.g. http://127.0.0.1:8000/v1."""
    llm_model: str = ""
    """With prompts "llm": the model name for the chat endpoint."""
    llm_key_env: str = ""
    """With prompts "llm": the environment variable holding an API key (none if empty)."""
    generator: str = "builtin"
    """"builtin" (the built-in world's ``generated`` style, offline on a CPU) or "diffusers"
    (a local text-to-image pipeline folder, ``model_dir``)."""
    model_dir: str = ""
    """With generator "diffusers": the folder ``pipeline.save_pretrained()`` wrote."""
    device: str = "auto"
    """With generator "diffusers": where it runs ("auto": the GPU when there is one)."""
    steps: int = 25
    """With generator "diffusers": diffusion steps."""
    guidance: float = 5.0
    """With generator "diffusers": classifier-free guidance scale."""
    size: tuple[int, int] | None = None
    """(H, W) of the generated images; None: the size of the server's first image."""
    seed: int = 0
    """Seed of the prompts and of each image (image k gets seed + k)."""

    def __post_init__(self) -> None:
        check_types(self)
        if self.images < 0:
            raise ValueError("images must be >= 0")
        if self.prompts not in PROMPTS:
            raise ValueError(f"prompts must be one of {', '.join(PROMPTS)}, not {self.prompts!r}")
        if self.generator not in GENERATORS:
            raise ValueError(
                f"generator must be one of {', '.join(GENERATORS)}, not {self.generator!r}"
            )
        if self.size is not None and min(self.size) < 1:
            raise ValueError(f"size must be positive, got {self.size}")


@dataclass(frozen=True)
class ServerConfig:
    """Everything the server does with the client models it received, one section per stage."""

    rule: UnstableRule = field(default_factory=UnstableRule)
    """Stage 1: which classes count as unstable."""
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    """Stage 2: the generated images."""
    distill: DistillConfig = field(default_factory=DistillConfig)
    """Stage 3: how the clients are distilled."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Stage 3's training recipe (steps, batch, image height, seed ...); its height is also the
    height at which stage 1 runs the clients, and the later stages train with it too."""
    route: str = "distill"
    """The stages that make the global model: "distill" (FedS2R), "distill+selftrain" (then
    self-training on the server's images, ``selftrain``), "distill+lite" (then a lightweight
    model through the distilled one as a large student, ``lite``) or "distill+selftrain+lite"."""
    selftrain: SelfTrainConfig = field(default_factory=SelfTrainConfig)
    """Stage 4 of the routes with "selftrain"."""
    lite: LiteConfig = field(default_factory=LiteConfig)
    """The last stage of the routes with "lite"."""

    def __post_init__(self) -> None:
        if self.route not in ROUTES:
            raise ValueError(f"route must be one of {', '.join(ROUTES)}, not {self.route!r}")


@dataclass(frozen=True)
class GeneratedImages:
    """What stage 2 wrote: an unlabelled dataset of generated images."""

    spec: str
    """The dataset spec to load them with (``folder:OUT/images``)."""
    num_images: int
    per_class: dict[str, int]
    """Images per unstable class (the first class of each prompt)."""
    generator: str
    size: tuple[int, int]
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "generator": self.generator,
            "num_images": self.num_images,
            "size": list(self.size),
            "seed": self.seed,
            "spec": self.spec,
            "per_class": dict(self.per_class),
        }


def load_clients(clients: Mapping[str, str | Path], device="cpu") -> dict:
    """Client checkpoints (name -> folder) loaded as frozen models, in the given order."""

    return {
        name: load_checkpoint(path)[0].to(device).eval().requires_grad_(False)
        for name, path in clients.items()
    }


def find_unstable(
    teachers: Mapping[str, Any],
    server_data,
    rule: UnstableRule,
    *,
    out: str | Path | None = None,
    height: int = 128,
    device="cpu",
    on_error: str = "raise",
    progress: bool = True,
) -> Inconsistency:
    """Stage 1: the per-class inconsistency of ``teachers`` (name -> model) on the server's
    images ``server_data`` (a dataset spec or an opened dataset; labels are never read).

    With ``out``, writes ``OUT/inconsistency.json`` (:func:`inconsistency_report`) and
    ``OUT/inconsistency.png``.
    """

    if len(teachers) < 2:
        raise Feds2rError("measuring inconsistency needs at least two client models")
    data = (
        open_dataset(server_data, labels=False, on_error=on_error)
        if isinstance(server_data, str)
        else server_data
    )
    inc = measure_inconsistency(
        list(teachers.values()),
        data,
        rule=rule,
        height=height,
        device=device,
        progress=progress,
        names=list(teachers),
    )
    if out is not None:
        out = Path(out)
        report = inconsistency_report(inc, str(data.spec), rule)
        write_atomic(out / "inconsistency.json", (json.dumps(report, indent=2) + "\n").encode())
        plot_inconsistency(inc, out / "inconsistency.png")
    return inc


def inconsistency_report(inc: Inconsistency, data: str, rule: UnstableRule) -> dict[str, Any]:
    """The JSON report of stage 1: the scores and selection, the images and the rule used."""
    return {**inc.to_dict(), "data": data, "rule": dataclasses.asdict(rule)}


def generate_images(
    scores: Mapping[str, float | None],
    unstable: list[str],
    out: str | Path,
    config: GenerationConfig,
    *,
    size: tuple[int, int] | None = None,
    progress: bool = True,
) -> GeneratedImages:
    """Stage 2: ``config.images`` prompts shared among the ``unstable`` classes in proportion to
    their inconsistency ``scores``, one generated image each, into ``out`` (a new, empty or
    earlier generation folder, replaced). ``size``: the images' (H, W) when ``config.size`` is
    None. Writes ``OUT/images/``, ``OUT/prompts.jsonl``, ``OUT/generated.json`` and
    ``OUT/config.toml``."""

    size = config.size or size
    if size is None:
        raise Feds2rError("generate_images: give the images' size (config.size or size=)")
    counts = prompt_counts(dict(scores), list(unstable), config.images)
    if config.prompts == "llm":
        if not (config.llm_url and config.llm_model):
            raise Feds2rError("--prompts llm needs --llm-url and --llm-model")
        key = os.environ.get(config.llm_key_env) if config.llm_key_env else None
        prompts = llm_prompts(counts, url=config.llm_url, model=config.llm_model, api_key=key)
    else:
        prompts = builtin_prompts(counts, seed=config.seed)
    options = {}
    if config.generator == "diffusers":
        options = {
            "model_dir": config.model_dir,
            "device": config.device,
            "steps": config.steps,
            "guidance": config.guidance,
        }
    generator = make_generator(config.generator, **options)
    summary = generate_dataset(
        prompts, generator, out, size=tuple(size), seed=config.seed, progress=progress
    )
    write_run_config(out, {"generation": config})
    return GeneratedImages(
        spec=summary["spec"],
        num_images=summary["num_images"],
        per_class=summary["per_class"],
        generator=summary["generator"],
        size=tuple(summary["size"]),
        seed=summary["seed"],
    )


def evaluate_checkpoint(
    path: str | Path, sets: Mapping[str, str], *, height: int, progress: bool = False
) -> dict[str, float]:
    """mIoU (%) of the checkpoint ``path`` on each labelled dataset spec of ``sets``."""

    model, _ = load_checkpoint(path)
    return {
        name: evaluate(model, open_dataset(spec), height=height, progress=progress)["miou"]
        for name, spec in sets.items()
    }


def run_server_pipeline(
    clients: Mapping[str, str | Path],
    server_data: str,
    out: str | Path,
    config: ServerConfig,
    *,
    evaluate_on: Mapping[str, str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Turn the client checkpoints ``clients`` (name -> folder) into the global model
    ``out/global`` by the stages of ``config.route``.

    ``server_data``: the server's unlabelled images (a dataset spec; labels are never read).
    ``evaluate_on``: optional name -> labelled dataset spec on which the global model is scored.
    Runs the stages in order: ``out/inconsistency.json`` (+ chart), ``out/generated/``, then
    the route's training stages, the last one into ``out/global/`` and the others into
    ``out/distilled/`` and ``out/selftrained/``; returns a summary (the caller's to write).
    With a single client there is no disagreement to measure: stages 1 and 2 are skipped and
    the one teacher is distilled.
    """

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = list(clients)
    server = open_dataset(server_data, labels=False)
    timing: dict[str, float] = {}
    start = time.perf_counter()
    inc: Inconsistency | None = None
    if len(names) >= 2:
        inc = find_unstable(
            load_clients(clients), server, config.rule, out=out, height=config.train.height,
            progress=progress,
        )  # fmt: skip
    timing["inconsistency"] = round(time.perf_counter() - start, 2)

    generated = None
    if config.generation.images > 0 and inc is not None and inc.unstable:
        start = time.perf_counter()
        generated = generate_images(
            inc.scores,
            inc.unstable,
            out / "generated",
            config.generation,
            size=tuple(server[0]["image"].shape[-2:]),
            progress=progress,
        )
        timing["augmentation"] = round(time.perf_counter() - start, 2)

    stages = config.route.split("+")
    places = {"distill": "distilled", "selftrain": "selftrained", "lite": "global"}
    places[stages[-1]] = "global"  # the last stage's model is the global model
    paths: dict[str, str] = {}
    client_paths = [clients[n] for n in names]
    spec = generated.spec if generated else None
    start = time.perf_counter()
    run_distill(
        client_paths,
        server_data,
        out / places["distill"],
        config.distill,
        config.train,
        generated=spec,
        inconsistency=None if inc is None else inc.to_dict(),
        progress=progress,
    )
    paths["distill"] = str(out / places["distill"])
    timing["distill"] = round(time.perf_counter() - start, 2)
    large = out / places["distill"]
    if "selftrain" in stages:
        start = time.perf_counter()
        self_train(
            large, client_paths, server_data, out / places["selftrain"], config.selftrain,
            config.distill, config.train, generated=spec, progress=progress,
        )  # fmt: skip
        large = out / places["selftrain"]
        paths["selftrain"] = str(large)
        timing["selftrain"] = round(time.perf_counter() - start, 2)
    if "lite" in stages:
        start = time.perf_counter()
        distill_lite(
            large, client_paths, server_data, out / places["lite"], config.lite,
            config.distill, config.train, generated=spec, progress=progress,
        )  # fmt: skip
        paths["lite"] = str(out / places["lite"])
        timing["lite"] = round(time.perf_counter() - start, 2)

    scores: dict[str, float] = {}
    if evaluate_on:
        start = time.perf_counter()
        scores = evaluate_checkpoint(out / "global", evaluate_on, height=config.train.height)
        timing["evaluation"] = round(time.perf_counter() - start, 2)
    return {
        "clients": names,
        "global_model": str(out / "global"),
        "route": config.route,
        "stages": paths,
        "unstable_classes": [] if inc is None else inc.unstable,
        "inconsistency": {} if inc is None else inc.scores,
        "generated": generated.to_dict() if generated else None,
        "miou": scores,
        "mean_miou": float(np.mean(list(scores.values()))) if scores else None,
        "timing_s": timing,
    }


__all__ = [
    "ROUTES",
    "GeneratedImages",
    "StageInputs",
    "GenerationConfig",
    "ServerConfig",
    "evaluate_checkpoint",
    "find_unstable",
    "generate_images",
    "generated_spec",
    "inconsistency_report",
    "load_clients",
    "load_inconsistency",
    "run_server_pipeline",
]
