"""The course's own trained models: their recipes (configs) and where their checkpoints live.

Each recipe is used both by the command that trains the shipped checkpoint (`python -m sdlesson train ...`) and by
the notebooks, so a notebook that trains briefly builds exactly the model it then loads.
"""

from __future__ import annotations

from pathlib import Path

from .checkpoint import load_model
from .classifier import ClassifierConfig
from .train import TrainConfig
from .unet import UNetConfig
from .vae import VAEConfig

DATA_DIR = Path(__file__).resolve().parent.parent / "data"

# Silhouettes (lesson 02): 1×28×28, the UNet's three levels at 28, 14 and 7 pixels, attention only at 7×7.
# Narrow at full resolution (16 channels): 0.2 GFLOP a forward pass, so a CPU samples hundreds in seconds.
SILHOUETTE_SCHEDULE = "linear"
SILHOUETTE_UNET = UNetConfig(in_channels=1, sample_size=28, block_channels=(16, 32, 64),
                             attention_levels=(False, False, True), attention_head_dim=32, norm_groups=8)
SILHOUETTE_TRAIN = TrainConfig(steps=8000, batch_size=64, lr=7e-4, warmup_steps=200, ema_decay=0.999)
SILHOUETTE_CLASSIFIER = ClassifierConfig(in_channels=1, num_classes=10, channels=(16, 32, 64), feature_dim=64)
SILHOUETTE_CLASSIFIER_TRAIN = TrainConfig(steps=1000, batch_size=128, lr=2e-3, warmup_steps=100, ema_decay=0.99)

# Emoji scenes (lesson 04): the KL autoencoder, 3×64×64 -> 4×8×8. Trained on 20,000 scenes of seed 0, judged on
# scenes of seed 1; squared error (it gave a better PSNR than L1 for the same time) + 1e-6 · KL, as SD's weight.
SCENE_VAE = VAEConfig()
SCENE_VAE_KL_WEIGHT = 1e-6
SCENE_VAE_TRAIN = TrainConfig(steps=16000, batch_size=16, lr=3e-3, warmup_steps=50, lr_schedule="cosine",
                              ema_decay=0.999, checkpoint_every=1000)
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

RECIPES = ("silhouette_classifier", "silhouette_unet", "scene_vae", "scene_judge")  # what `python -m sdlesson train` can make
CHECKPOINTS = ("silhouette_unet", "silhouette_classifier", "scene_vae", "scene_judge")  # shipped as data/NAME.safetensors


def checkpoint_path(name: str) -> Path:
    if name not in CHECKPOINTS:
        raise ValueError(f"unknown checkpoint {name!r}: expected one of {', '.join(CHECKPOINTS)}")
    path = DATA_DIR / f"{name}.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: it ships with the course (see data/MODEL_CARD.md for the "
                                "command that trains it)")
    return path


def load_pretrained(name: str, *, device="cpu"):
    """A shipped model, in eval mode: 'silhouette_unet', 'silhouette_classifier'."""
    return load_model(checkpoint_path(name), device=device)
