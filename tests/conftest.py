"""Shared fixtures: small randomly initialised diffusers models, built offline.

Run with ``OMP_WAIT_POLICY=PASSIVE`` and ``-p no:cacheprovider``; every test pins torch to
one thread through the autouse ``set_threads`` fixture so the suite stays fast on 2 cores.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests may reach a hub

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def set_threads():
    """One torch thread (another process may be training in the background)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def embedded_unet():
    """The embedded Fashion-MNIST architecture (problems.fashion_mnist.model) with random weights."""
    from problems.fashion_mnist.model import make_unet

    torch.manual_seed(0)
    return make_unet().eval()


@pytest.fixture
def scheduler_config():
    """The embedded problem's training scheduler config (DDPM, 1000 steps, linear betas, clipped)."""
    from problems.fashion_mnist.model import make_scheduler

    return make_scheduler().config


def _make_cond_unet(seed: int = 0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    ).eval()


@pytest.fixture
def cond_unet():
    """A tiny random UNet2DConditionModel (cross-attention in the first down / last up block)."""
    return _make_cond_unet()


@pytest.fixture
def count_calls():
    """``count_calls({name: module})`` -> dict of forward-call counts, kept live by torch forward hooks.

    Counts are module-level: a flexnas hook that serves a module's cached output
    skips the module's forward, so torch hooks registered on *leaf* modules inside it never fire.
    """
    handles = []

    def install(modules: dict[str, torch.nn.Module]) -> dict[str, int]:
        counts = {name: 0 for name in modules}
        for name, mod in modules.items():
            def hook(_m, _i, _o, name=name):
                counts[name] += 1
            handles.append(mod.register_forward_hook(hook))
        return counts

    yield install
    for h in handles:
        h.remove()


# ---------------------------------------------------------------------------- offline CLIP tokenizer
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte-level alphabet (same table as transformers' CLIP tokenizer)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def write_tiny_clip_tokenizer(folder: Path) -> Path:
    """vocab.json + merges.txt of a tiny byte-level BPE (alphabet and a few merges) in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    alphabet = list(_bytes_to_unicode().values())
    merges = [("a", "b"), ("ab", "c</w>"), ("x", "y"), ("xy", "z</w>"), ("c", "a"), ("ca", "t</w>")]
    tokens = alphabet + [c + "</w>" for c in alphabet] + [a + b for a, b in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    return folder


@pytest.fixture(scope="session")
def tiny_sd_folder(tmp_path_factory):
    """A tiny StableDiffusionPipeline built offline from random weights, saved with save_pretrained."""
    pytest.importorskip("transformers")
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tok_dir = write_tiny_clip_tokenizer(tmp_path_factory.mktemp("tokenizer"))
        tokenizer = CLIPTokenizer.from_pretrained(tok_dir, model_max_length=77)
        assert tokenizer.convert_ids_to_tokens(tokenizer("abc xyz").input_ids) == [
            "<|startoftext|>", "abc</w>", "xyz</w>", "<|endoftext|>"], "tokenizer files were not read"
        torch.manual_seed(0)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=77, projection_dim=32,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id)).eval()
        torch.manual_seed(0)
        vae = AutoencoderKL(block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                            up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8,
                            sample_size=16).eval()
        scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                  clip_sample=False, set_alpha_to_one=False, steps_offset=1)
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                       unet=_make_cond_unet(), scheduler=scheduler, safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
        folder = tmp_path_factory.mktemp("tiny-sd")
        pipe.save_pretrained(folder)
    finally:
        torch.set_num_threads(old)
    return folder


@pytest.fixture
def tiny_sd(tiny_sd_folder):
    """The tiny Stable Diffusion pipeline, reloaded with StableDiffusionPipeline.from_pretrained."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def assert_grid_of(path: Path, images: torch.Tensor) -> None:
    """``path`` is a PNG of ``images`` laid out as torchvision's grid (2-pixel white padding), to one grey level."""
    import numpy as np
    from PIL import Image
    from torchvision.utils import make_grid

    grid = make_grid(images, nrow=round(len(images) ** 0.5), padding=2, pad_value=1.0)
    expected = grid.mul(255).add(0.5).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    got = np.asarray(Image.open(path).convert("RGB"))
    assert got.shape == expected.shape and np.abs(got.astype(int) - expected.astype(int)).max() <= 1



@pytest.fixture
def offline(tmp_path, monkeypatch):
    """A fresh flexnas cache per test and no hub access (real-model tests load only tiny saved pipelines)."""
    monkeypatch.setenv("FLEXNAS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """``flexnas ARGV`` on one thread: (exit status, stdout, stderr)."""
    from flexnas.cli import main

    rc = main(["--threads", "1", *argv])
    out, err = capsys.readouterr()
    return rc, out, err
