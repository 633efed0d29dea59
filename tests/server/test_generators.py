"""Prompts and both image generators (diffusers with a tiny random pipeline built here)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from feds2r.data import open_dataset
from feds2r.errors import Feds2rError
from feds2r.server.generators import BuiltinGenerator, generate_dataset, make_generator
from feds2r.server.prompts import Prompt, builtin_prompts, llm_prompts, prompt_counts


def test_prompt_counts_grow_with_inconsistency():
    scores = {"bus": 0.9, "train": 0.6, "rider": 0.3, "road": 0.05}
    counts = prompt_counts(scores, ["bus", "train", "rider"], total=18)
    assert counts == {"bus": 9, "train": 6, "rider": 3}
    assert sum(prompt_counts(scores, ["bus", "train", "rider"], total=10).values()) == 10
    # fewer images than unstable classes: exactly that many, for the most inconsistent classes
    assert prompt_counts(scores, ["bus", "train", "rider"], total=2) == {"bus": 1, "train": 1}
    assert prompt_counts(scores, [], 10) == {}


def test_builtin_prompts_are_varied_and_structured():
    prompts = builtin_prompts({"motorcycle": 12, "train": 3}, seed=1)
    assert len(prompts) == 15 and len({p.text for p in prompts}) >= 12
    moto = [p for p in prompts if p.classes == ("motorcycle",)]
    assert len(moto) == 12 and all("motorcycle" in p.text for p in moto)
    assert len({(p.weather, p.time) for p in prompts}) >= 4
    assert builtin_prompts({"bus": 2}, seed=1) == builtin_prompts({"bus": 2}, seed=1)


def test_llm_endpoint_unreachable_is_explained():
    with pytest.raises(Feds2rError, match="cannot reach the LLM endpoint"):
        llm_prompts({"bus": 2}, url="http://127.0.0.1:9/v1", model="x", timeout=2)


def test_llm_prompts_from_a_local_fake_endpoint():
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            assert body["model"] == "tiny"
            text = '1. A bus on a foggy highway at night\n2. "A red bus in the rain"\n'
            data = json.dumps({"choices": [{"message": {"content": text}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/v1"
        prompts = llm_prompts({"bus": 2}, url=url, model="tiny")
    finally:
        server.shutdown()
        server.server_close()
    assert [p.text for p in prompts] == [
        "A bus on a foggy highway at night",
        "A red bus in the rain",
    ]
    assert (prompts[0].weather, prompts[0].time, prompts[0].layout) == ("fog", "night", "highway")
    assert prompts[1].weather == "rain" and prompts[1].classes == ("bus",)


def test_builtin_generator_and_generate_dataset(tmp_path):
    prompts = builtin_prompts({"bus": 2, "bicycle": 1}, seed=0)
    summary = generate_dataset(
        prompts, BuiltinGenerator(), tmp_path, size=(64, 128), progress=False
    )
    assert summary["num_images"] == 3 and summary["per_class"] == {"bus": 2, "bicycle": 1}
    ds = open_dataset(summary["spec"])
    assert len(ds) == 3 and ds[0]["image"].shape == (3, 64, 128)
    lines = [json.loads(x) for x in (tmp_path / "prompts.jsonl").read_text().splitlines()]
    assert lines[0]["file"] == "images/00000_bus.png" and lines[0]["classes"] == ["bus"]
    again = BuiltinGenerator().generate(prompts[0], 0, (64, 128))
    assert np.array_equal(
        again, np.asarray(__import__("PIL.Image").Image.open(tmp_path / "images/00000_bus.png"))
    )


def tiny_pipeline(path):
    """A Stable Diffusion pipeline with random weights, built from configs, saved to ``path``."""
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=4,
        norm_num_groups=4,
    )
    vae = diffusers.AutoencoderKL(
        block_out_channels=(8, 16),
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        norm_num_groups=4,
    )
    text = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=16,
            intermediate_size=32,
            num_attention_heads=2,
            num_hidden_layers=2,
            vocab_size=300,
            max_position_embeddings=77,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    vocab_dir = path.parent / "vocab"
    vocab_dir.mkdir()
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in letters:
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    (vocab_dir / "vocab.json").write_text(json.dumps(vocab))
    (vocab_dir / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(
        str(vocab_dir / "vocab.json"), str(vocab_dir / "merges.txt"), model_max_length=77
    )
    scheduler = diffusers.DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False
    )
    pipe = diffusers.StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(path))
    return path


def test_diffusers_generator_with_tiny_local_pipeline(tmp_path):
    model_dir = tiny_pipeline(tmp_path / "tiny-sd")
    gen = make_generator("diffusers", model_dir=model_dir, device="cpu", steps=2)
    prompt = Prompt("a photo of a bus at night", ("bus",), "clear", "night", "urban")
    a = gen.generate(prompt, seed=3, size=(32, 48))
    b = gen.generate(prompt, seed=3, size=(32, 48))
    assert a.shape == (32, 48, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    summary = generate_dataset([prompt], gen, tmp_path / "out", size=(32, 48), progress=False)
    assert len(open_dataset(summary["spec"])) == 1


def test_diffusers_generator_errors(tmp_path):
    with pytest.raises(Feds2rError, match="needs --model-dir"):
        make_generator("diffusers")
    with pytest.raises(Feds2rError, match="not a diffusers pipeline folder"):
        make_generator("diffusers", model_dir=tmp_path)
    with pytest.raises(Feds2rError, match="unknown generator 'dalle'"):
        make_generator("dalle")


# ----------------------------------------------------------------------------- the API key


def _serve(handler_cls):
    import threading
    from http.server import HTTPServer

    server = HTTPServer(("127.0.0.1", 0), handler_cls)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_llm_key_does_not_follow_a_redirect():
    """A 302 to another address is refused; the second server never sees the Bearer key."""
    from http.server import BaseHTTPRequestHandler

    seen: list[dict] = []

    class Elsewhere(BaseHTTPRequestHandler):
        def _answer(self):
            seen.append(dict(self.headers))
            data = json.dumps({"choices": [{"message": {"content": "A bus"}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _answer  # noqa: N815

        def log_message(self, *args):
            pass

    other = _serve(Elsewhere)

    class Redirecting(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            self.send_response(302)
            self.send_header(
                "Location", f"http://127.0.0.1:{other.server_port}/v1/chat/completions"
            )
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    first = _serve(Redirecting)
    try:
        with pytest.raises(Feds2rError, match="redirect \\(302\\).*never sent to another"):
            llm_prompts(
                {"bus": 1},
                url=f"http://127.0.0.1:{first.server_port}/v1",
                model="tiny",
                api_key="sk-secret",
            )
    finally:
        for server in (first, other):
            server.shutdown()
            server.server_close()
    assert not any("sk-secret" in str(h) for h in seen)
    assert seen == []  # the redirect is not followed at all


def test_llm_key_over_plain_http_to_another_host_warns():
    from feds2r.server import prompts

    with pytest.warns(UserWarning, match="plain http to 10.1.2.3"):
        prompts._check_endpoint("http://10.1.2.3:8000/v1", "sk-secret")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prompts._check_endpoint("http://127.0.0.1:8000/v1", "sk-secret")  # loopback
        prompts._check_endpoint("http://localhost:8000/v1", "sk-secret")
        prompts._check_endpoint("https://api.example.org/v1", "sk-secret")  # encrypted
        prompts._check_endpoint("http://10.1.2.3:8000/v1", None)  # no key to leak
    with pytest.raises(Feds2rError, match="not an http:// or https:// address"):
        llm_prompts({"bus": 1}, url="file:///etc/passwd", model="x")


# ----------------------------------------------------------------------------- output policy


def test_generate_dataset_replaces_its_own_output_and_refuses_other_files(tmp_path):
    six = builtin_prompts({"bus": 4, "rider": 2}, seed=0)
    generate_dataset(six, BuiltinGenerator(), tmp_path / "gen", size=(32, 64), progress=False)
    (tmp_path / "gen" / "images" / "stray.png").write_bytes(b"not of this run")
    summary = generate_dataset(
        six, BuiltinGenerator(), tmp_path / "gen", size=(32, 64), progress=False
    )  # the same settings: redone, never mixed with the earlier files
    assert summary["num_images"] == 6
    assert len(list((tmp_path / "gen" / "images").iterdir())) == 6  # the stray file is gone
    before = {p: p.read_bytes() for p in (tmp_path / "gen").rglob("*") if p.is_file()}
    three = builtin_prompts({"bus": 3}, seed=1)  # other settings: refused, nothing touched
    with pytest.raises(Feds2rError, match="other settings"):
        generate_dataset(three, BuiltinGenerator(), tmp_path / "gen", size=(32, 64), progress=False)
    assert {p: p.read_bytes() for p in (tmp_path / "gen").rglob("*") if p.is_file()} == before
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "model.json").write_text("{}")
    with pytest.raises(Feds2rError, match="already holds other files .*model.json"):
        generate_dataset(three, BuiltinGenerator(), ckpt, size=(32, 64), progress=False)
    assert [p.name for p in ckpt.iterdir()] == ["model.json"]


@pytest.mark.parametrize("num", [1, 2, 3, 4, 7])
def test_augment_cli_makes_exactly_num_images(num, tmp_path):
    from feds2r.cli import main

    scores = {c: None for c in ("road", "bus", "train", "rider", "motorcycle")}
    scores.update({"bus": 0.9, "train": 0.6, "rider": 0.35, "motorcycle": 0.3})
    report = tmp_path / "inconsistency.json"
    report.write_text(
        json.dumps({"scores": scores, "unstable_classes": ["bus", "train", "rider", "motorcycle"]})
    )
    out = tmp_path / "gen"
    args = ["server", "augment", "--inconsistency", str(report), "--num", str(num)]
    assert main([*args, "--out", str(out), "--size", "32x64", "--quiet"]) == 0
    assert len(list((out / "images").iterdir())) == num
    assert json.loads((out / "generated.json").read_text())["num_images"] == num
