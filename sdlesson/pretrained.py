"""The course's own trained models: their recipes (configs) and where their checkpoints live.

Each recipe is used both by the command that trains the shipped checkpoint (`python -m sdlesson train ...`) and by
the notebooks, so a notebook that trains briefly builds exactly the model it then loads.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from .checkpoint import load_model, read_metadata
from .classifier import ClassifierConfig
from .text import CLIPConfig
from .train import TrainConfig
from .unet import UNetConfig
from .vae import VAEConfig

# Checkpoints: sdlesson/data/ in an installed wheel (pyproject maps the repository's data/ there), data/ beside the
# package in a source checkout or an editable install.
_PACKAGE_DIR = Path(__file__).resolve().parent
DATA_DIR = _PACKAGE_DIR / "data" if (_PACKAGE_DIR / "data").is_dir() else _PACKAGE_DIR.parent / "data"

# Silhouettes (lesson 02): 1×28×28, the UNet's three levels at 28, 14 and 7 pixels, attention only at 7×7.
# Narrow at full resolution (16 channels): 0.2 GFLOP a forward pass, so a CPU samples hundreds in seconds.
SILHOUETTE_SCHEDULE = "linear"
SILHOUETTE_UNET = UNetConfig(in_channels=1, sample_size=28, block_channels=(16, 32, 64),
                             attention_levels=(False, False, True), attention_head_dim=32, norm_groups=8)
SILHOUETTE_TRAIN = TrainConfig(steps=12000, batch_size=64, lr=7e-4, warmup_steps=200, ema_decay=0.999)
SILHOUETTE_CLASSIFIER = ClassifierConfig(in_channels=1, num_classes=10, channels=(16, 32, 64), feature_dim=64)
SILHOUETTE_CLASSIFIER_TRAIN = TrainConfig(steps=1000, batch_size=128, lr=2e-3, warmup_steps=100, ema_decay=0.99)

# Emoji scenes (lesson 04): the KL autoencoder, 3×64×64 -> 4×8×8. Trained on 20,000 scenes of seed 0, judged on
# scenes of seed 1; squared error (it gave a better PSNR than L1 for the same time) + 1e-6 · KL, as SD's weight.
SCENE_VAE = VAEConfig()
SCENE_VAE_KL_WEIGHT = 1e-6
SCENE_VAE_TRAIN = TrainConfig(steps=16000, batch_size=16, lr=3e-3, warmup_steps=50, lr_schedule="cosine",
                              ema_decay=0.999, checkpoint_every=1000)
# The decoder alone, fine-tuned from the shipped VAE (lesson 04): same encoder, same latents, sharper pictures.
SCENE_DECODER_TRAIN = TrainConfig(steps=2000, batch_size=16, lr=5e-4, warmup_steps=50, lr_schedule="cosine",
                                  ema_decay=0.999, checkpoint_every=500)
SCENE_DECODER_EDGE_WEIGHT = 0.1  # sharper edges (lesson 04 measures both PSNR and edge error)
SCENE_TRAIN_SEED, SCENE_TEST_SEED, SCENE_TRAIN_COUNT = 0, 1, 20000

# The scene judge: which object, background, position and size a 64×64 scene shows (one head each). It keeps
# where things are (no global pooling), and learns from both splits: a judge must know the held-out pairs too.
SCENE_JUDGE = ClassifierConfig(in_channels=3, num_classes=(8, 6, 5, 2), channels=(16, 32, 64, 64), feature_dim=64,
                               sample_size=64, global_pool=False)
SCENE_JUDGE_TRAIN = TrainConfig(steps=2000, batch_size=64, lr=2e-3, warmup_steps=100, ema_decay=0.99)
SCENE_JUDGE_SEED, SCENE_JUDGE_TEST_SEED = 2, 3

# Emoji scenes (lessons 03, 05, 06): the noise predictor on 4×8×8 VAE latents. Lesson 03 runs the same UNet on
# 3×64×64 pixels to measure what the latent space saves.
SCENE_LATENT_UNET = UNetConfig(in_channels=4, sample_size=8, block_channels=(64, 128, 128),
                               attention_levels=(False, True, True), attention_head_dim=32, norm_groups=32)
SCENE_SCHEDULE = "scaled_linear"  # Stable Diffusion's: β from 0.00085 to 0.012
# Trained on the cached latents (mode of the posterior, × latent scale) of the 20,000 training scenes.
SCENE_LATENT_TRAIN = TrainConfig(steps=3000, batch_size=64, lr=1e-3, warmup_steps=200, lr_schedule="cosine",
                                 ema_decay=0.998)

# Text (lesson 06): a small CLIP trained contrastively on (latent, caption) pairs of the training scenes; its text
# tower then stays frozen and gives the UNet 16 token embeddings of width 64 (SD: CLIP's 77 × 768).
SCENE_CLIP = CLIPConfig()
SCENE_CLIP_TRAIN = TrainConfig(steps=1000, batch_size=256, lr=1e-3, warmup_steps=50, lr_schedule="cosine", ema_decay=0.99)
# The latent noise predictor with cross-attention to those embeddings wherever it has self-attention (4×4, 2×2 and
# the middle); captions dropped for 10% of examples so the same model also predicts unconditionally (guidance).
SCENE_TEXT_UNET = dataclasses.replace(SCENE_LATENT_UNET, context_dim=SCENE_CLIP.width)
SCENE_TEXT_TRAIN = dataclasses.replace(SCENE_LATENT_TRAIN, steps=4000)
SCENE_TEXT_P_UNCOND = 0.1

RECIPES = ("silhouette_classifier", "silhouette_unet", "scene_vae", "scene_judge", "scene_latent_unet", "scene_clip",
           "scene_text_unet", "scene_vae_decoder")  # what `python -m sdlesson train` can make
CHECKPOINTS = ("silhouette_unet", "silhouette_classifier", "scene_vae", "scene_judge", "scene_latent_unet", "scene_clip",
           "scene_text_unet", "scene_vae_decoder")  # shipped as data/NAME.safetensors

HALF_PRECISION = ("scene_latent_unet", "scene_text_unet")  # shipped as fp16 (half the size), loaded into fp32


def checkpoint_path(name: str) -> Path:
    if name not in CHECKPOINTS:
        raise ValueError(f"unknown checkpoint {name!r}: expected one of {', '.join(CHECKPOINTS)}")
    path = DATA_DIR / f"{name}.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: it ships with the course (see data/MODEL_CARD.md for the "
                                "command that trains it)")
    return path


def load_pretrained(name: str, *, device="cpu"):
    """A shipped model, in eval mode, by its name in CHECKPOINTS."""
    return load_model(checkpoint_path(name), device=device)


def scene_latent_scale() -> float:
    """The shipped VAE's latent scale factor: 1 / std of its training latents, measured when it was trained."""
    return float(read_metadata(checkpoint_path("scene_vae"))["latent_scale"])
