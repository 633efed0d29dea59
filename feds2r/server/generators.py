"""Image generators behind one small interface: ``generate(prompt, seed, size) -> RGB uint8``.

``builtin`` renders the prompt's scene (its class, weather, time and place) with the built-in
world in the ``generated`` style: offline, on a CPU, fast. It stands in for a diffusion model: its
images are neither a client's style nor a test domain's. ``diffusers`` runs any local
text-to-image pipeline folder (SDXL, SD 2.x, SD-Turbo, ...) with ``local_files_only=True``, on the
GPU when there is one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

import numpy as np
from tqdm import tqdm

from feds2r.data.world import SceneSpec, render_scene
from feds2r.errors import Feds2rError
from feds2r.io import prepare_output, write_atomic
from feds2r.server.prompts import Prompt


class ImageGenerator(Protocol):
    name: str

    def generate(self, prompt: Prompt, seed: int, size: tuple[int, int]) -> np.ndarray:
        """An RGB image (H, W, 3) uint8 of ``size`` for ``prompt``."""
        ...


class BuiltinGenerator:
    """The built-in world, ``generated`` style."""

    name = "builtin"

    def generate(self, prompt: Prompt, seed: int, size: tuple[int, int]) -> np.ndarray:
        spec = SceneSpec(
            classes=prompt.classes, weather=prompt.weather, time=prompt.time, layout=prompt.layout
        )
        image, _ = render_scene(spec, "generated", size=size, seed=seed)
        return image


class DiffusersGenerator:
    """A local ``diffusers`` text-to-image pipeline folder (``save_pretrained`` layout)."""

    name = "diffusers"

    def __init__(
        self, model_dir: str | Path, *, device: str = "auto", steps: int = 25, guidance: float = 5.0
    ) -> None:
        try:
            import torch
            from diffusers import AutoPipelineForText2Image
        except ImportError:
            raise Feds2rError(
                "the diffusers generator needs the diffusers package: pip install 'feds2r[gen]' "
                "(or use --generator builtin)"
            ) from None
        model_dir = Path(model_dir)
        if not (model_dir / "model_index.json").is_file():
            raise Feds2rError(
                f"{model_dir} is not a diffusers pipeline folder (no model_index.json); give the "
                "folder that pipeline.save_pretrained() wrote"
            )
        from feds2r.engine.device import resolve_device

        self.device = resolve_device(device)
        dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        try:
            self.pipe = AutoPipelineForText2Image.from_pretrained(
                str(model_dir), local_files_only=True, dtype=dtype
            ).to(self.device)
        except (OSError, ValueError) as exc:
            raise Feds2rError(f"cannot load the diffusers pipeline in {model_dir}: {exc}") from None
        self.pipe.set_progress_bar_config(disable=True)
        self.steps, self.guidance = steps, guidance

    def generate(self, prompt: Prompt, seed: int, size: tuple[int, int]) -> np.ndarray:
        import torch

        g = torch.Generator(device="cpu").manual_seed(seed)
        h, w = (max(8, s // 8 * 8) for s in size)
        image = self.pipe(
            prompt.text,
            num_inference_steps=self.steps,
            guidance_scale=self.guidance,
            generator=g,
            height=h,
            width=w,
        ).images[0]
        arr = np.asarray(image.convert("RGB"))
        if arr.shape[:2] != tuple(size):
            import cv2

            arr = cv2.resize(arr, (size[1], size[0]), interpolation=cv2.INTER_AREA)
        return arr


def make_generator(name: str, **kwargs) -> ImageGenerator:
    if name == "builtin":
        return BuiltinGenerator()
    if name == "diffusers":
        if not kwargs.get("model_dir"):
            raise Feds2rError("--generator diffusers needs --model-dir (a local pipeline folder)")
        return DiffusersGenerator(**kwargs)
    raise Feds2rError(f"unknown generator {name!r}; valid generators: builtin, diffusers")


def generate_dataset(
    prompts: list[Prompt],
    generator: ImageGenerator,
    out: str | Path,
    *,
    size: tuple[int, int] = (256, 512),
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Generate one image per prompt into ``OUT/images/`` (an unlabelled ``folder:`` dataset).

    Writes ``OUT/prompts.jsonl`` (one line per image: file, seed and the prompt) and
    ``OUT/generated.json`` (summary, written last). ``OUT`` must be new, empty or an earlier
    ``server augment`` output of the same settings (generator, count, classes, size, seed),
    which is replaced (see :func:`feds2r.io.prepare_output`); each file is written atomically,
    and a run that stops midway leaves ``OUT`` marked incomplete.
    """
    out = Path(out)
    inputs = {
        "generator": generator.name,
        "num_images": len(prompts),
        "size": list(size),
        "seed": seed,
        "classes": [p.classes[0] if p.classes else "" for p in prompts],
    }
    hint = "Give another --out (or the same --num, --size, --seed and report to redo it)"
    with prepare_output(
        out, "server augment", marker="generated.json", inputs=inputs, hint=hint
    ) as dest:
        if dest.previous:
            dest.clear()  # the same settings: redone, never mixed with the earlier images
        summary = _generate(prompts, generator, out, size=size, seed=seed, progress=progress)
        dest.finish()
    return summary


def _generate(
    prompts: list[Prompt],
    generator: ImageGenerator,
    out: Path,
    *,
    size: tuple[int, int],
    seed: int,
    progress: bool,
) -> dict:
    import cv2

    lines = []
    for k, prompt in enumerate(
        tqdm(prompts, desc=f"generating ({generator.name})", unit="img", disable=not progress)
    ):
        cls = prompt.classes[0].replace(" ", "-") if prompt.classes else "scene"
        name = f"{k:05d}_{cls}.png"
        image = generator.generate(prompt, seed + k, size)
        ok, buf = cv2.imencode(".png", image[..., ::-1])
        write_atomic(out / "images" / name, buf.tobytes())
        lines.append(json.dumps({"file": f"images/{name}", "seed": seed + k, **prompt.to_dict()}))
    write_atomic(out / "prompts.jsonl", ("\n".join(lines) + "\n").encode())
    summary = {
        "generator": generator.name,
        "num_images": len(prompts),
        "size": list(size),
        "seed": seed,
        "spec": f"folder:{out / 'images'}",
        "per_class": {
            c: sum(1 for p in prompts if p.classes[:1] == (c,))
            for c in dict.fromkeys(p.classes[0] for p in prompts if p.classes)
        },
    }
    write_atomic(out / "generated.json", (json.dumps(summary, indent=2) + "\n").encode())
    return summary


def generated_spec(path: str) -> str:
    """A dataset spec for generated images: a spec (``FORMAT:PATH``) as given, the folder
    :func:`generate_dataset` (``feds2r server augment``) wrote (its ``images/``), or a plain
    folder of images."""
    if ":" in path:
        return path
    folder = Path(path)
    return f"folder:{folder / 'images' if (folder / 'images').is_dir() else folder}"
