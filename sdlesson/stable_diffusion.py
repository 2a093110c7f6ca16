"""Stable Diffusion v1.5's own networks, as configurations of the course's modules.

The tiny models the course trains and Stable Diffusion differ in configuration, not in kind:

    |                    | the course's scene UNet (lessons 05-06) | Stable Diffusion v1.5's UNet                    |
    |--------------------|-----------------------------------------|-------------------------------------------------|
    | input              | 4×8×8 latents                           | 4×64×64 latents                                 |
    | block_channels     | 64, 128, 128                            | 320, 640, 1280, 1280                            |
    | layers_per_block   | 2                                       | 2                                               |
    | attention at       | 4×4, 2×2 and the middle                 | 64, 32, 16 and the middle (none at 8×8)         |
    | attention block    | GroupNorm, self-attn, cross-attn        | spatial transformer: + LayerNorms, GEGLU MLP    |
    | heads              | one per 32 channels                     | 8 at every level                                |
    | text context       | 16 tokens × 64 (the course's CLIP)      | 77 tokens × 768 (CLIP ViT-L/14's text tower)    |
    | parameters         | 7.4 M                                   | 859.5 M                                         |

    VAE: course (64, 128) channels, 4×4 patches folded in, 2.6 M | SD (128, 256, 512, 512), f = 8, 83.7 M
    text encoder: course 3 layers × 64, 30 words | SD 12 layers × 768, 49,408 BPE tokens, 123.1 M

`configs_side_by_side()` gives the two side by side, field by field, from the live dataclasses.

    sd = build_stable_diffusion()                       # SD v1.5 on the meta device: no memory, no time
    sd = load_stable_diffusion("path/to/snapshot")     # a diffusers folder (unet/, vae/, text_encoder/, tokenizer/)
    sd = load_stable_diffusion("v1-5-pruned-emaonly.safetensors")   # or the original single file

Weights: Hugging Face `stable-diffusion-v1-5/stable-diffusion-v1-5` (CreativeML OpenRAIL-M). Nothing here downloads.
The weight files' two layouts and their key names are read by sd_weights.py; its names stay importable from here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from . import recipes
from .clip_tokenizer import CLIPTokenizer
from .sd_weights import (  # noqa: F401 - the weight formats' names, importable from here as before the split
    IGNORED, TEXT_RULES, UNET_RULES, Weights, check_state, diffusers_to_course, folder_part, fuse_qkv, identify,
    ldm_unet_to_diffusers, ldm_vae_to_diffusers, read_state, read_weights, rename, split_single_file,
    text_config_from_transformers, unet_config_from_diffusers, vae_config_from_diffusers, vae_rules,
)
from .text import CLIPConfig, TextEncoder
from .unet import UNet, UNetConfig
from .vae import VAE, VAEConfig

# SD v1.5's noise predictor: the course's UNet with SD's widths, 8 heads, spatial transformers and 768-wide text.
SD_UNET = UNetConfig(in_channels=4, sample_size=64, block_channels=(320, 640, 1280, 1280), layers_per_block=2,
                     attention_levels=(True, True, True, False), attention_heads=8, attention_block="transformer",
                     norm_groups=32, context_dim=768)
# SD's KL autoencoder: no patch folding, four levels (f = 2³ = 8), GroupNorm ε 1e-6, SD's padding and 1×1 convs.
SD_VAE = VAEConfig(block_channels=(128, 256, 512, 512), layers_per_block=2, patch_size=1, sample_size=512,
                   norm_eps=1e-6, downsample_padding="asymmetric", quant_conv=True)
# CLIP ViT-L/14's text tower: the course's TextEncoder at 12 layers × 768, BPE ids, quick-GELU.
SD_TEXT_ENCODER = CLIPConfig(vocab=(), vocab_size=49408, max_length=77, width=768, layers=12, heads=12,
                             activation="quick_gelu", mlp_width=3072)
SD_LATENT_SCALE = 0.18215  # 1 / std of SD's latents, as released
SD_SCHEDULE = "scaled_linear"  # β from 0.00085 to 0.012 (linear in √β), T = 1000


@dataclass
class StableDiffusion:
    """The four parts, plain attributes: what a pipeline needs to turn a prompt into an image."""

    tokenizer: CLIPTokenizer  # prompts -> ids (B, 77) and mask (B, 77)
    text_encoder: TextEncoder  # ids (B, 77) -> last hidden states (B, 77, 768): the UNet's context
    unet: UNet  # (latents (B, 4, h, w), t (B,), context=) -> predicted noise
    vae: VAE  # encode: images in [-1, 1] -> Gaussian over latents; decode: latents -> images
    latent_scale: float = SD_LATENT_SCALE


def configs_side_by_side() -> list[tuple[str, str, str]]:
    """(field, course value, SD value) rows for the UNet, VAE and text encoder configs: the course's are lesson 06's
    text-to-image models (the compositional world's)."""
    rows = []
    for part, ours, sd in (("unet", recipes.COMP_TEXT_UNET, SD_UNET), ("vae", recipes.COMP_VAE, SD_VAE),
                           ("text", recipes.COMP_CLIP, SD_TEXT_ENCODER)):
        for field in dataclasses.fields(sd):
            if field.name == "mlp_width":  # both CLIP's 4 × width (256 and 3072): the width rows already say it
                continue
            a, b = getattr(ours, field.name), getattr(sd, field.name)
            if field.name == "vocab":
                a, b = f"{len(a)} words", "BPE"
            rows.append((f"{part}.{field.name}", _shown(part, field.name, a, ours), _shown(part, field.name, b, sd)))
    return rows


def _shown(part: str, field: str, value, config) -> str:
    """A config value as the table shows it: fields a config does not use say so, instead of a default."""
    if part == "unet" and field in ("attention_head_dim", "attention_heads"):
        widths = [c for c, on in zip(config.block_channels, config.attention_levels) if on]
        if config.attention_heads:  # a fixed number of heads: head size follows the width
            sizes = "/".join(str(c // config.attention_heads) for c in dict.fromkeys(widths))
            return f"unused ({config.attention_heads} heads)" if field == "attention_head_dim" else \
                f"{value} (head size {sizes})"
        if field == "attention_heads":
            heads = "/".join(str(c // config.attention_head_dim) for c in dict.fromkeys(widths))
            return f"channels / {config.attention_head_dim} ({heads} heads)"
    image_tower = ("image_channels", "image_size", "image_width", "embed_dim")
    if part == "text" and field in image_tower and config is SD_TEXT_ENCODER:
        return "— (no image tower)"
    return str(value)


def build_stable_diffusion(*, device="meta", dtype=torch.float32, unet: UNetConfig = SD_UNET, vae: VAEConfig = SD_VAE,
                           text_encoder: CLIPConfig = SD_TEXT_ENCODER, tokenizer: CLIPTokenizer | None = None,
                           latent_scale: float = SD_LATENT_SCALE) -> StableDiffusion:
    """SD's networks, randomly initialised — on the meta device by default: shapes only, no memory, no time."""
    with torch.device(device):
        parts = UNet(unet), VAE(vae), TextEncoder(text_encoder)
    parts = [p.to(dtype).eval() for p in parts]
    return StableDiffusion(tokenizer or CLIPTokenizer.bundled(), parts[2], parts[0], parts[1], latent_scale)


def load_stable_diffusion(path, *, device="cpu", dtype: torch.dtype | None = None,
                          configs: dict | None = None) -> StableDiffusion:
    """SD v1.x from a diffusers folder or the original single file; nothing is downloaded.

    Built on the meta device and assigned the file's tensors (no random-initialised copy), then cast to `dtype`
    (default: fp32; fp16 or bf16 on a GPU halves the memory) and moved to `device`. Every key and shape is checked
    before any is used: a file that does not fit loads nothing. `configs` ({"unet": UNetConfig, "vae": VAEConfig,
    "text": CLIPConfig}) overrides SD v1.5's configurations for a single file (tests use tiny ones).
    """
    half = dtype in (torch.float16, torch.bfloat16)  # read a snapshot's fp16 files when it has them: half the bytes
    sd_configs = {"unet": SD_UNET, "vae": SD_VAE, "text": SD_TEXT_ENCODER} | (configs or {})
    w = read_weights(path, half=half, configs=sd_configs)
    sd = build_stable_diffusion(device="meta", unet=w.configs["unet"], vae=w.configs["vae"],
                                text_encoder=w.configs["text"], tokenizer=w.tokenizer,
                                latent_scale=SD_LATENT_SCALE if w.latent_scale is None else w.latent_scale)
    parts = (("unet", sd.unet), ("vae", sd.vae), ("text", sd.text_encoder))
    for part, model in parts:  # all three checked before any tensor is assigned: nothing is half-loaded
        check_state(model, w.states[part], f"{Path(path).name}: {part}")
    dtype = dtype or torch.float32
    for part, model in parts:
        model.load_state_dict(w.states[part], assign=True)  # the meta tensors are replaced by the file's
        model.to(device=device, dtype=dtype).eval()
    return sd
