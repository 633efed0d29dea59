"""`feds2r export`: transformers directories and ONNX graphs that run without feds2r.

The round trips run the exported model in a subprocess where feds2r cannot be imported (an
import hook refuses it, as if it were not installed) and compare with `feds2r predict` in this
process. The models are tiny and random, with their last layers scaled up so that they decide:
a random model's class probabilities are nearly uniform, and any rounding would flip its argmax
(a trained model's are not; docs/export.md gives the figure measured on one).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from feds2r.cli import main
from feds2r.data.labels import CLASS_NAMES, colorize
from feds2r.engine.checkpoint import save_checkpoint
from feds2r.models import create_model

HEIGHT = 64  # inference height of the tests

OUTSIDE = r"""
import json, sys


class NoFeds2r:  # feds2r is not installed, as far as this process can tell
    def find_spec(self, name, path=None, target=None):
        if name == "feds2r" or name.startswith("feds2r."):
            raise ModuleNotFoundError(f"No module named {name!r} (refused by the test)")
        return None


sys.meta_path.insert(0, NoFeds2r())
import numpy as np

task = json.loads(sys.argv[1])
result = {}
def run_hf(task):
    import torch
    from PIL import Image
    from transformers import (
        AutoConfig, AutoImageProcessor, AutoModelForSemanticSegmentation,
        AutoModelForUniversalSegmentation, pipeline,
    )

    folder = task["hf"]
    processor = AutoImageProcessor.from_pretrained(folder)
    kind = AutoConfig.from_pretrained(folder).model_type
    auto = AutoModelForUniversalSegmentation if kind == "mask2former" else (
        AutoModelForSemanticSegmentation)
    net = auto.from_pretrained(folder).eval()
    for image_path, out_path in task["images"]:
        image = Image.open(image_path).convert("RGB")
        inputs = processor(images=image, return_tensors="pt")
        with torch.no_grad():
            outputs = net(**inputs)
        seg = processor.post_process_semantic_segmentation(
            outputs, target_sizes=[image.size[::-1]])[0]
        np.save(out_path, seg.numpy().astype(np.uint8))
    segments = pipeline("image-segmentation", model=folder)(
        task["images"][0][0], subtask="semantic")
    return {"pipeline_labels": [s["label"] for s in segments], "id2label": net.config.id2label}


if task.get("hf_all"):
    result["hf_all"] = [run_hf(t) for t in task["hf_all"]]
if task.get("onnx"):
    import onnxruntime as ort

    session = ort.InferenceSession(task["onnx"], providers=["CPUExecutionProvider"])
    for in_path, out_path in task["arrays"]:
        np.save(out_path, session.run(["probs"], {"images": np.load(in_path)})[0])
result["feds2r_imported"] = any(m.split(".")[0] == "feds2r" for m in sys.modules)
print(json.dumps(result))
"""


def run_outside(task: dict, cwd: Path) -> dict:
    """Run :data:`OUTSIDE` on ``task`` in a fresh process that cannot import feds2r."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": ""}
    proc = subprocess.run(
        [sys.executable, "-c", OUTSIDE, json.dumps(task)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["feds2r_imported"] is False
    return result


def decisive_checkpoint(preset: str, out: Path, seed: int = 0) -> Path:
    """A random ``preset`` model whose last layers are scaled so that its predictions are
    confident (regions with sharp borders instead of near-uniform probabilities)."""
    torch.manual_seed(seed)
    model = create_model(preset).eval()
    with torch.no_grad():
        if model.is_mask_classification:
            model.net.class_predictor.weight.mul_(30.0)
            embedder = model.net.model.transformer_module.decoder.mask_predictor.mask_embedder
            embedder.get_parameter("2.0.weight").mul_(30.0)
        else:
            model.net.decode_head.classifier.weight.mul_(30.0)
    save_checkpoint(model, out)
    return out


def write_images(folder: Path, n: int = 2, size: tuple[int, int] = (128, 256)) -> list[Path]:
    """Smooth random RGB images (coarse noise, upsampled): regions and edges like a photo's."""
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(7)
    paths = []
    for i in range(n):
        coarse = torch.rand(1, 3, size[0] // 16, size[1] // 16, generator=gen)
        image = F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)[0]
        array = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        path = folder / f"img{i}.png"
        Image.fromarray(array).save(path)
        paths.append(path)
    return paths


def cli(*args: str) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    """Images at the inference size: the round trip compares the models, not two resamplers
    (PIL's and PyTorch's resize differ by a grey level: test_preprocessor_config_...)."""
    return write_images(tmp_path_factory.mktemp("images") / "folder", size=(HEIGHT, 2 * HEIGHT))


HF_PRESETS = ("segformer-cpu", "m2f-cpu")


@pytest.fixture(scope="module")
def hf_round_trips(images, tmp_path_factory) -> dict[str, dict]:
    """Per preset: `feds2r export --format hf` and `feds2r predict` here, then the exported
    directory run outside feds2r (one subprocess for all presets, to start Python once)."""
    root = tmp_path_factory.mktemp("hf")
    runs, tasks = {}, []
    for preset in HF_PRESETS:
        ckpt = decisive_checkpoint(preset, root / preset / "ckpt")
        out, preds = root / preset / "hf", root / preset / "preds"
        assert cli("export", "--model", ckpt, "--format", "hf", "--out", out,
                   "--height", HEIGHT) == 0  # fmt: skip
        assert cli("predict", "--model", ckpt, "--data", f"folder:{images[0].parent}", "--out",
                   preds, "--height", HEIGHT, "--device", "cpu", "--quiet") == 0  # fmt: skip
        maps = [root / preset / f"{p.stem}.npy" for p in images]
        runs[preset] = {"out": out, "preds": preds, "maps": maps}
        pairs = [[str(p), str(m)] for p, m in zip(images, maps, strict=True)]
        tasks.append({"hf": str(out), "images": pairs})
    results = run_outside({"hf_all": tasks}, root)
    for preset, result in zip(HF_PRESETS, results["hf_all"], strict=True):
        runs[preset]["result"] = result
    return runs


@pytest.mark.parametrize("preset", HF_PRESETS)
def test_hf_round_trip_matches_predict_without_feds2r(preset, images, hf_round_trips):
    run = hf_round_trips[preset]
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= {
        p.name for p in run["out"].iterdir()
    }
    result = run["result"]
    assert result["id2label"] == {str(i): name for i, name in enumerate(CLASS_NAMES)}
    assert result["pipeline_labels"] and set(result["pipeline_labels"]) <= set(CLASS_NAMES)
    for path, map_path in zip(images, run["maps"], strict=True):
        ours = cv2.imread(str(run["preds"] / f"{path.stem}.png"), cv2.IMREAD_UNCHANGED)
        theirs = np.load(map_path)
        assert ours.shape == theirs.shape == (HEIGHT, 2 * HEIGHT)
        assert len(np.unique(ours)) >= 2  # the model decides: more than one class
        agree = float((ours == theirs).mean())
        assert agree >= 0.999, f"{preset} {path.name}: {agree:.5f} of pixels agree"


def _onnx_round_trip(preset: str, tmp_path: Path, sizes: list[tuple[int, int, int]]) -> dict:
    """Export at the first of ``sizes`` (batch, height, width), run each size outside feds2r."""
    ckpt = decisive_checkpoint(preset, tmp_path / "ckpt")
    out = tmp_path / "onnx"
    _, h, w = sizes[0]
    assert cli("export", "--model", ckpt, "--format", "onnx", "--out", out, "--height", h,
               "--width", w) == 0  # fmt: skip
    from feds2r.engine.checkpoint import load_checkpoint

    model, _ = load_checkpoint(ckpt)
    arrays, wanted = [], []
    for i, (b, h, w) in enumerate(sizes):
        x = torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(i))
        np.save(tmp_path / f"in{i}.npy", x.numpy())
        arrays.append([str(tmp_path / f"in{i}.npy"), str(tmp_path / f"out{i}.npy")])
        wanted.append(model.predict(x))
    run_outside({"onnx": str(out / "model.onnx"), "arrays": arrays}, tmp_path)
    for (_, got_path), want in zip(arrays, wanted, strict=True):
        got = torch.from_numpy(np.load(got_path))
        assert got.shape == want.shape
        assert float((got - want).abs().max()) <= 1e-3
    return {"card": (out / "README.md").read_text()}


def test_onnx_per_pixel_round_trip_dynamic_batch_and_size(tmp_path):
    sizes = [(1, 32, 64), (3, 32, 64), (2, 48, 96)]  # (batch, height, width)
    card = _onnx_round_trip("segformer-cpu", tmp_path, sizes)["card"]
    assert "height and width dynamic" in card


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["m2f-cpu", "seg-effl0"])
def test_onnx_round_trip_mask2former_and_lite(preset, tmp_path):
    """Mask2Former (its deformable attention is a grid_sample) and the lite backbone export."""
    sizes = [(1, 64, 128), (2, 64, 128)]
    card = _onnx_round_trip(preset, tmp_path, sizes)["card"]
    if preset == "m2f-cpu":
        assert "fixed at 64x128" in card


def test_hf_export_of_a_feds2r_backbone_is_refused_naming_onnx(tmp_path, capsys):
    ckpt = tmp_path / "lite"
    save_checkpoint(create_model("seg-effl0"), ckpt)
    out = tmp_path / "out"
    assert cli("export", "--model", ckpt, "--format", "hf", "--out", out) == 2
    err = capsys.readouterr().err
    assert "--format onnx" in err and "seg-effl0" in err
    assert not out.exists()  # refused before anything was written


def test_model_card_route_clients_metrics_and_licence(tmp_path):
    clients = []
    for name, fmt in (("gta", "gta5"), ("syn", "synthia")):
        save_checkpoint(
            create_model("segformer-cpu"),
            tmp_path / "clients" / name,
            meta={"role": "client", "data": {"spec": f"{fmt}:/secret/{name}?split=train"}},
        )
        clients.append(str(tmp_path / "clients" / name))
    ckpt = tmp_path / "global"
    meta = {"role": "server", "route": "distill", "clients": clients, "steps": 5}
    save_checkpoint(create_model("segformer-cpu"), ckpt, meta=meta)
    report = {
        "model": str(ckpt),
        "preset": "segformer-cpu",
        "height": 64,
        "sliding": None,
        "datasets": [{"spec": "cityscapes:/secret/cs?split=val", "miou": 12.345, "pixel_acc": 50}],
        "mean_miou": 12.345,
    }
    (tmp_path / "eval.json").write_text(json.dumps(report))
    out = tmp_path / "hf"
    assert cli("export", "--model", ckpt, "--format", "hf", "--out", out, "--eval-json",
               tmp_path / "eval.json", "--license", "apache-2.0") == 0  # fmt: skip
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlicense: apache-2.0\n")
    assert "`distill`" in card and "gta (`gta5`)" in card and "syn (`synthia`)" in card
    assert "| cityscapes, val | 12.35 | 50.00 |" in card
    assert "feds2r export --model" in card and "--license apache-2.0" in card
    assert "/secret" not in card and str(tmp_path / "clients") not in card  # names, not paths
    # an evaluation report of another preset is refused
    report["preset"] = "m2f-cpu"
    (tmp_path / "eval.json").write_text(json.dumps(report))
    assert cli("export", "--model", ckpt, "--format", "hf", "--out", tmp_path / "x",
               "--eval-json", tmp_path / "eval.json") == 2  # fmt: skip


def test_export_replaces_its_own_output_and_refuses_other_folders(tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    save_checkpoint(create_model("segformer-cpu"), ckpt)
    out = tmp_path / "hf"
    assert cli("export", "--model", ckpt, "--format", "onnx", "--out", out) == 0
    assert cli("export", "--model", ckpt, "--format", "onnx", "--out", out) == 0  # replaced
    assert {p.name for p in out.iterdir() if not p.name.startswith(".")} == {
        "README.md",
        "model.onnx",
    }
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert cli("export", "--model", ckpt, "--format", "hf", "--out", out) == 2  # other settings
    assert "other settings (format, width differ)" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert cli("export", "--model", ckpt, "--format", "hf", "--out", other) == 2
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]
    assert cli("export", "--model", ckpt, "--format", "hf", "--out", tmp_path / "w",
               "--width", 64) == 2  # fmt: skip
    assert "--width applies to --format onnx only" in capsys.readouterr().err


def test_preprocessor_config_resizes_and_normalises_as_feds2r(tmp_path):
    """transformers' own image processor, from the written config, gives feds2r's input."""
    from transformers import Mask2FormerImageProcessor, SegformerImageProcessor

    from feds2r.engine.data import resize_images
    from feds2r.export import preprocessor_config

    model = create_model("segformer-cpu")
    mean, std = model.mean.flatten().tolist(), model.std.flatten().tolist()
    path = write_images(tmp_path, n=1, size=(2 * HEIGHT, 4 * HEIGHT))[0]
    image = np.array(Image.open(path).convert("RGB"))
    ours = model.normalize(resize_images(torch.from_numpy(image).permute(2, 0, 1)[None], HEIGHT))
    for family, cls in (("mask2former", Mask2FormerImageProcessor),
                        ("segformer", SegformerImageProcessor)):  # fmt: skip
        config = preprocessor_config(family, HEIGHT, mean, std)
        config.pop("image_processor_type")
        theirs = cls(**config)(images=Image.fromarray(image), return_tensors="pt")
        pixels = theirs["pixel_values"]
        assert pixels.shape == ours.shape == (1, 3, HEIGHT, 2 * HEIGHT)
        # PIL's and PyTorch's antialiased bilinear resize differ by at most a grey level
        assert float((pixels - ours).abs().max()) <= 1.5 / 255 / min(std)


def test_predict_writes_label_ids_and_colour_overlays_for_a_folder_of_photos(tmp_path):
    """What a user tries first: JPEG and PNG photos of different sizes, one in greyscale."""
    folder = tmp_path / "photos"
    write_images(folder, n=1, size=(96, 160))
    rgb = np.asarray(Image.open(folder / "img0.png"))
    Image.fromarray(rgb).resize((200, 120)).save(folder / "wide.jpg", quality=90)
    Image.fromarray(rgb).convert("L").save(folder / "grey.png")
    ckpt = decisive_checkpoint("segformer-cpu", tmp_path / "ckpt")
    out = tmp_path / "preds"
    assert cli("predict", "--model", ckpt, "--data", f"folder:{folder}", "--out", out,
               "--height", 32, "--device", "cpu", "--quiet") == 0  # fmt: skip
    summary = json.loads((out / "predictions.json").read_text())
    assert summary["num_images"] == 3
    for name, (h, w) in {"img0": (96, 160), "wide": (120, 200), "grey": (96, 160)}.items():
        ids = cv2.imread(str(out / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        assert ids.shape == (h, w) and ids.dtype == np.uint8 and ids.max() < len(CLASS_NAMES)
        overlay = cv2.imread(str(out / "overlay" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        assert overlay.shape == (h, w, 3)
        colour = cv2.imread(str(out / "color" / f"{name}.png"))[..., ::-1]  # RGB
        assert np.array_equal(colour, colorize(ids))  # exactly the palette of the label ids


def test_eval_crop_without_sliding_is_refused(tmp_path, capsys):
    """Issue 26: `--crop` alone was ignored (whole images predicted) yet looked applied."""
    ckpt = tmp_path / "ckpt"
    save_checkpoint(create_model("segformer-cpu"), ckpt)
    data = f"cityscapes:{tmp_path / 'nowhere'}?split=val"
    assert cli("eval", "--model", ckpt, "--data", data, "--crop", "64x128") == 2
    err = capsys.readouterr().err
    assert "--crop" in err and "--sliding" in err
    assert cli("predict", "--model", ckpt, "--data", data, "--out", tmp_path / "p",
               "--crop", "64x128") == 2  # fmt: skip
    assert not (tmp_path / "p").exists()
