"""Architecture and weight locations of the embedded Fashion-MNIST DDPM."""

from __future__ import annotations

from pathlib import Path

from diffusers import DDPMScheduler, UNet2DModel

HERE = Path(__file__).resolve().parent
WEIGHTS_DIR = HERE / "weights"
PIPELINE_DIR = WEIGHTS_DIR / "ddpm"          # DDPMPipeline.save_pretrained folder (EMA weights)
CLASSIFIER_DIR = WEIGHTS_DIR / "classifier"  # FashionClassifier.save_pretrained folder
CHECKPOINT = HERE / "checkpoints" / "ddpm_train.pt"

# Three resolution levels (28, 14, 7), attention at 7x7: six skip branches to cache at.
UNET_CONFIG = dict(
    sample_size=28,
    in_channels=1,
    out_channels=1,
    block_out_channels=(32, 64, 128),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    norm_num_groups=8,
    attention_head_dim=32,
)


def make_unet() -> UNet2DModel:
    return UNet2DModel(**UNET_CONFIG)


def make_scheduler() -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True)
