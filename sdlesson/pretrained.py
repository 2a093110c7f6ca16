"""The course's own trained models: where their checkpoints live, and loading them.

How each one is made (config, training settings, data, loss) is its recipe in recipes.py, which builds on this
module; the configurations the notebooks read from here (pretrained.SCENE_VAE, ...) are looked up there.
"""

from __future__ import annotations

from pathlib import Path

from .checkpoint import load_model, read_metadata

# Checkpoints: sdlesson/data/ in an installed wheel (pyproject maps the repository's data/ there), data/ beside the
# package in a source checkout or an editable install.
_PACKAGE_DIR = Path(__file__).resolve().parent
DATA_DIR = _PACKAGE_DIR / "data" if (_PACKAGE_DIR / "data").is_dir() else _PACKAGE_DIR.parent / "data"

# The configurations the notebooks read as pretrained.NAME: they live in recipes.py, which imports this module (it
# builds on checkpoint_path and load_pretrained), so they are looked up when first used, not imported here (PEP 562).
_FROM_RECIPES = (
    "SCENE_CLIP", "SCENE_DECODER_EDGE_WEIGHT", "SCENE_LATENT_UNET", "SCENE_SCHEDULE", "SCENE_TEST_SEED",
    "SCENE_TEXT_P_UNCOND", "SCENE_TEXT_UNET", "SCENE_TRAIN_SEED", "SCENE_VAE", "SCENE_VAE_KL_WEIGHT",
    "SILHOUETTE_CLASSIFIER", "SILHOUETTE_SCHEDULE", "SILHOUETTE_UNET",
)


def __getattr__(name: str):
    if name in _FROM_RECIPES:
        from . import recipes  # here, not at the top: recipes imports this module

        return getattr(recipes, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_FROM_RECIPES))


# data/NAME.safetensors, made by recipes.RECIPES
CHECKPOINTS = ("silhouette_unet", "silhouette_classifier", "scene_vae", "scene_judge", "scene_latent_unet",
               "scene_clip", "scene_text_unet", "scene_vae_decoder", "scene_vae_decoder_mse",
               "comp_vae", "comp_clip", "comp_text_unet", "comp_text_unet_joint",
               "comp_text_unet_recaptioned", "comp_text_unet_relations")


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


def hardware(card: dict) -> str:
    """Where a checkpoint was trained, from its metadata (files written before cost.device_name said "1 thread"
    read "1 threads")."""
    return card["hardware"].replace(" 1 threads", " 1 thread")


def provenance(name: str) -> str:
    """How a shipped checkpoint was made, from its own metadata: steps, time, hardware and the command to remake it."""
    card = read_metadata(checkpoint_path(name))
    return (f"the shipped {name}: {card['steps']:,} steps, {card['seconds'] / 60:.0f} min on {hardware(card)}\n"
            f"  made by: {card['command']}")


def latent_scale_of(vae_name: str) -> float:
    """A shipped VAE's latent scale factor: 1 / std of its training latents, measured when it was trained (a
    fine-tuned decoder shares its encoder's, so its file's scale is read from the VAE it started from)."""
    return float(read_metadata(checkpoint_path("scene_vae" if vae_name.startswith("scene_vae_decoder") else vae_name))
                 ["latent_scale"])


def scene_latent_scale() -> float:
    """The emoji scenes' VAE's latent scale factor (scene_vae's; the fine-tuned decoder shares its encoder)."""
    return latent_scale_of("scene_vae")
