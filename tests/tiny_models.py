"""Tiny randomly initialised diffusers pipelines of the real models' layouts, saved with save_pretrained.

- DDPM (the ``google/ddpm-cifar10-32`` layout): ``DDPMPipeline`` = ``UNet2DModel`` (3x16x16) + ``DDPMScheduler``;
- LDM (the ``CompVis/ldm-celebahq-256`` layout): ``LDMPipeline`` = ``UNet2DModel`` on 3x8x8 latents +
  ``VQModel`` (16x16 images, scaling factor 0.5 so the decode's scaling is exercised) + ``DDIMScheduler``;
- DiT: a ``DiTPipeline`` whose denoiser is a transformer (unsupported by flexnas);
- CLIP: a tiny ``CLIPModel`` with tokenizer and image-processor config (for the CLIP score);
- SDXL: ``StableDiffusionXLPipeline`` (two text encoders, added time/text conditioning) on the tiny SD parts;
- ControlNet: a ``ControlNetModel`` made from a tiny U-Net, with non-zero residual convolutions.

The Stable Diffusion layout is ``tests/conftest.py``'s ``tiny_sd_folder``. Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from flexnas.metrics.features import ModuleFeatureExtractor, register_extractor

EXTRACTOR = "flexnas-test-pool"


class PoolFeatures(ModuleFeatureExtractor):
    """Test-only extractor: 2x2 average-pooled RGB (12 features), no weights (Inception's are not here)."""

    def load(self, weights_path):
        return torch.nn.Identity()

    def embed(self, x_uint8):
        return (F.adaptive_avg_pool2d(x_uint8.float() / 255, 2).flatten(1),)


register_extractor(EXTRACTOR, PoolFeatures)


def _unet2d(sample_size: int, channels: int = 3):
    from diffusers import UNet2DModel

    return UNet2DModel(sample_size=sample_size, in_channels=channels, out_channels=channels,
                       block_out_channels=(16, 32), layers_per_block=1,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8,
                       attention_head_dim=8).eval()


def save_tiny_ddpm(folder: Path) -> Path:
    from diffusers import DDPMPipeline, DDPMScheduler

    torch.manual_seed(0)
    pipe = DDPMPipeline(unet=_unet2d(16), scheduler=DDPMScheduler(num_train_timesteps=1000, clip_sample=True))
    pipe.save_pretrained(folder)
    return Path(folder)


def save_tiny_ldm(folder: Path) -> Path:
    from diffusers import DDIMScheduler, LDMPipeline, VQModel

    torch.manual_seed(0)
    vqvae = VQModel(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                    up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32), layers_per_block=1,
                    latent_channels=3, num_vq_embeddings=256, vq_embed_dim=3, norm_num_groups=8, sample_size=16,
                    scaling_factor=0.5).eval()
    scheduler = DDIMScheduler(beta_start=0.0015, beta_end=0.0195, beta_schedule="scaled_linear", clip_sample=False)
    pipe = LDMPipeline(vqvae=vqvae, unet=_unet2d(8), scheduler=scheduler)
    pipe.save_pretrained(folder)
    return Path(folder)


def save_tiny_dit(folder: Path) -> Path:
    from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                        num_layers=1, sample_size=4, patch_size=2, num_embeds_ada_norm=10)
    vae = AutoencoderKL(block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8,
                        sample_size=8)
    DiTPipeline(transformer=transformer, vae=vae, scheduler=DDIMScheduler()).save_pretrained(folder)
    return Path(folder)


def save_tiny_clip(folder: Path, tokenizer_dir: Path) -> Path:
    """A tiny CLIPModel + its tokenizer (the byte-level one of conftest) + a CLIPImageProcessor config."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(tokenizer_dir, model_max_length=77)
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                         num_attention_heads=4, max_position_embeddings=77, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4,
                           image_size=16, patch_size=4),
        projection_dim=16)
    CLIPModel(config).eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}).save_pretrained(folder)
    return Path(folder)


def save_tiny_sdxl(folder: Path, tiny_sd) -> Path:
    """A tiny SDXL pipeline sharing the tiny Stable Diffusion pipeline's VAE, tokenizer and scheduler."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tok = tiny_sd.tokenizer
    cfg = CLIPTextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, projection_dim=32,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(4)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=8 * 6 + 32, cross_attention_dim=64,
        norm_num_groups=8).eval()
    pipe = StableDiffusionXLPipeline(vae=tiny_sd.vae, text_encoder=CLIPTextModel(cfg).eval(),
                                     text_encoder_2=CLIPTextModelWithProjection(cfg).eval(), tokenizer=tok,
                                     tokenizer_2=tok, unet=unet, scheduler=tiny_sd.scheduler)
    pipe.save_pretrained(folder)
    return folder


def tiny_controlnet(unet):
    """A ControlNet made from ``unet`` (``ControlNetModel.from_unet``) whose residuals matter: from_unet
    zero-initialises the residual convolutions, which would make any plan's ControlNet handling invisible."""
    from diffusers import ControlNetModel

    torch.manual_seed(2)
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32)).eval()
    for p in net.parameters():
        if p.dim() == 4 and p.abs().sum() == 0:
            torch.nn.init.normal_(p, std=0.1)
    return net
