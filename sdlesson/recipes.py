"""One recipe per shipped model: its config, its training settings and seed, its data, its loss, what it needs.

This is the one place each of the course's models is made. `python -m sdlesson train NAME`, the notebooks (which
may write the key lines out first), the model card's commands and scripts/check_gpu_branches.py all read it:

    recipe = recipes.get("silhouette_unet")
    trainer = Trainer(recipe.build_model(), recipe.loss, recipe.data(), recipe.train)

Reproducible: the model's initial weights come from the recipe's seed (build_model), and the Trainer draws every
step's batch, noise and dropout from a generator seeded by (seed, step); so the same command gives the same
tensors. Adding a model is adding one entry to RECIPES.

Two environment variables shrink every recipe, for checking code paths rather than training (both unset normally):
SDLESSON_RECIPE_STEPS=4 cuts each recipe to 4 steps (warm-up 1), SDLESSON_RECIPE_SCENES=300 renders only 300
training scenes. SDLESSON_TRAIN_FROM_SCRATCH=1/0 is the notebooks' switch (see train_from_scratch).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass
from typing import Callable

import torch

from .checkpoint import load_weights, read_metadata
from .classifier import Classifier, ClassifierConfig, classification_loss
from .data import load_silhouettes
from . import compositional
from .latents import encode_images, encode_scenes, latent_scale
from .pretrained import checkpoint_path, hardware, latent_scale_of, load_pretrained, scene_latent_scale
from .scenes import make_scenes
from .schedule import DiffusionLoss, NoiseSchedule
from .text import CLIP, CLIPConfig, clip_loss, encode_prompts
from .text_unet import TextUNet, TextUNetConfig
from .train import TrainConfig
from .unet import UNet, UNetConfig
from .vae import VAE, VAEConfig, decoder_loss, vae_loss

# --- the configs, with the reason for each choice ---------------------------------------------------------------

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
# Its control, scene_vae_decoder_mse: the same steps with edge weight 0, so lesson 04 can tell what the edge term did
# from what more decoder training did.
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
SCENE_CLIP_TRAIN = TrainConfig(steps=1000, batch_size=256, lr=1e-3, warmup_steps=50, lr_schedule="cosine",
                               ema_decay=0.99)
# The latent noise predictor with cross-attention to those embeddings wherever it has self-attention (4×4, 2×2 and
# the middle); captions dropped for 10% of examples so the same model also predicts unconditionally (guidance).
SCENE_TEXT_UNET = dataclasses.replace(SCENE_LATENT_UNET, context_dim=SCENE_CLIP.width)
SCENE_TEXT_TRAIN = dataclasses.replace(SCENE_LATENT_TRAIN, steps=4000)
SCENE_TEXT_P_UNCOND = 0.1

# Compositional scenes (lesson 06): 1–4 recoloured objects on a 2×2 grid, captions that leave things out. The emoji
# scenes' VAE cannot draw them (15 dB), so the same autoencoder recipe is trained on this world: same config, loss
# and schedule, its own data. (One VAE for both worlds would mean retraining lessons 04–05's models as well.)
COMP_VAE = VAEConfig()
COMP_VAE_TRAIN = dataclasses.replace(SCENE_VAE_TRAIN, steps=6000)
COMP_TRAIN_SEED, COMP_TEST_SEED, COMP_TRAIN_COUNT = 0, 1, 50000
# Its CLIP: the 41 words of the world, captions up to 16 words (+ <bos> and <eos>), the image tower on its latents.
COMP_CLIP = CLIPConfig(vocab=compositional.vocabulary(), max_length=20)
COMP_CLIP_TRAIN = dataclasses.replace(SCENE_CLIP_TRAIN, steps=2000)
# The noise predictor: the emoji scenes' text UNet with cross-attention at every level, 8×8 included, so a word can
# find its object's 4×4 patch of latent. Captions dropped for 10% of examples (guidance). Longer training than the
# emoji scenes (6,000 steps, not 4,000): this world holds far more compositions.
COMP_TEXT_UNET = dataclasses.replace(SCENE_LATENT_UNET, attention_levels=(True, True, True),
                                     context_dim=COMP_CLIP.width)
COMP_TEXT_TRAIN = dataclasses.replace(SCENE_LATENT_TRAIN, steps=6000, ema_decay=0.999, checkpoint_every=500)
COMP_TEXT_P_UNCOND = 0.1
# Two further trainings of comp_text_unet, each with its text encoder trained too (started from comp_clip's text
# tower), by the denoising loss alone: comp_clip picks a caption over its relation-swapped twin no better than
# chance (lesson 06), so its caption vector hardly says which object is left. A lower peak learning rate than
# from scratch, as both parts start trained. comp_text_unet_joint reads the alt-text captions; its twin
# comp_text_unet_recaptioned (the same steps and seed) reads them and, for the same scenes, a recaptioner's
# descriptive captions (compositional.recaption_at: every colour, a relation wherever one can be said) — DALL·E 3's
# "better captions" — so the two differ only in their captions.
COMP_JOINT_UNET = TextUNetConfig(unet=COMP_TEXT_UNET, text=COMP_CLIP)
COMP_JOINT_TRAIN = dataclasses.replace(COMP_TEXT_TRAIN, steps=2500, lr=5e-4, warmup_steps=100, checkpoint_every=250)
# A third twin, for position, which neither twin moved: the recaptioned data plus, for each scene with two single
# objects (23% of them), three more captions that each state a relation between two of them
# (compositional.relation_captions_at), so that 38% of the captions it reads state a relation, not 16%. The same
# start, steps, seed and learning rate as its twins: only the captions differ.
COMP_RELATION_REPEATS = 3


# --- the recipe ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Recipe:
    name: str  # the checkpoint it makes: data/NAME.safetensors
    model_class: type  # UNet, VAE, Classifier or CLIP
    config: object  # the model's config
    train: TrainConfig  # steps, batch, learning rate, ...; train.seed seeds the weights, data order and noise
    data: Callable[[], object]  # () -> the training data: a tensor or a tuple of tensors with one row per example
    loss: Callable  # loss(model, batch, generator) -> scalar, as the Trainer calls it
    needs: tuple[str, ...] = ()  # shipped checkpoints its data or starting weights come from
    start_from: str | dict | None = None  # a shipped checkpoint whose weights it starts from, instead of random
    # ones; or {part: checkpoint} for a model made of parts (the part, or the checkpoint's part of the same name)
    frozen: tuple[str, ...] = ()  # submodules kept as they are (no gradients)
    dtype: torch.dtype | None = None  # the shipped file's dtype for floating-point weights (None: as trained)
    metadata: Callable | None = None  # (EMA model, data) -> extra entries for the shipped file's metadata

    @property
    def seed(self) -> int:
        return self.train.seed

    def build_model(self) -> torch.nn.Module:
        """The model before training: initial weights drawn from the recipe's seed (the global RNG is left as it
        was)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            model = self.model_class(self.config)
        if isinstance(self.start_from, str):
            load_weights(model, checkpoint_path(self.start_from), weights="ema")
        for part, name in (self.start_from if isinstance(self.start_from, dict) else {}).items():
            source, target = load_pretrained(name), getattr(model, part)
            if type(source) is not type(target):  # e.g. a CLIP checkpoint for a text encoder: its `text` part
                source = getattr(source, part)
            target.load_state_dict(source.state_dict())
        for part in self.frozen:
            getattr(model, part).requires_grad_(False)
        return model.train()


def scene_train_count() -> int:
    """How many training scenes the scene recipes render: SCENE_TRAIN_COUNT, or SDLESSON_RECIPE_SCENES if set."""
    return _env_int("SDLESSON_RECIPE_SCENES") or SCENE_TRAIN_COUNT


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "")
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"environment variable {name} must be a positive whole number, got {value!r}")
    return int(value)


# --- how each recipe's data is made -------------------------------------------------------------------------------

def _silhouette_images():
    return load_silhouettes("train")[0]  # (8716, 1, 28, 28) in [-1, 1]


def _silhouettes_with_labels():
    return load_silhouettes("train")  # images, labels (8716,)


def _scene_images():
    return make_scenes(scene_train_count(), seed=SCENE_TRAIN_SEED)[0]  # uint8 (20000, 3, 64, 64), 246 MB


def _judge_data():
    n = scene_train_count()
    seen = make_scenes(n * 4 // 5, seed=SCENE_JUDGE_SEED, split="train")
    heldout = make_scenes(n // 5, seed=SCENE_JUDGE_SEED, split="heldout")
    return torch.cat([seen[0], heldout[0]]), torch.cat([seen[2], heldout[2]])  # uint8 images, (N, 4) labels


@functools.lru_cache(maxsize=1)
def _scene_latents(count: int):
    """The training scenes' latents (× the shipped VAE's scale) and captions, encoded once per process."""
    latents, captions, _ = encode_scenes(load_pretrained("scene_vae"), count, seed=SCENE_TRAIN_SEED,
                                         scale=scene_latent_scale())
    return latents, captions


def _latent_data():
    return _scene_latents(scene_train_count())[0]  # (N, 4, 8, 8)


def _clip_data():
    latents, captions = _scene_latents(scene_train_count())
    ids, mask = SCENE_CLIP.tokenizer()(captions)
    return latents, ids, mask


def _text_unet_data():  # the frozen text encoder's token embeddings, computed once per caption
    latents, captions = _scene_latents(scene_train_count())
    context, mask = encode_prompts(load_pretrained("scene_clip"), captions)
    return latents, context, mask


def comp_train_count() -> int:
    """How many compositional training scenes: COMP_TRAIN_COUNT, or SDLESSON_RECIPE_SCENES if set."""
    return _env_int("SDLESSON_RECIPE_SCENES") or COMP_TRAIN_COUNT


def _comp_images():
    return compositional.make_scenes(comp_train_count(), seed=COMP_TRAIN_SEED)[0]  # uint8 (50000, 3, 64, 64)


@functools.lru_cache(maxsize=1)
def _comp_latents(count: int):
    """The compositional training scenes' latents (× comp_vae's scale) and captions, encoded once per process."""
    images, captions, _ = compositional.make_scenes(count, seed=COMP_TRAIN_SEED)
    return encode_images(load_pretrained("comp_vae"), images) * latent_scale_of("comp_vae"), captions


def _comp_clip_data():
    latents, captions = _comp_latents(comp_train_count())
    ids, mask = COMP_CLIP.tokenizer()(captions)
    return latents, ids, mask


def _comp_text_unet_data():
    latents, captions = _comp_latents(comp_train_count())
    context, mask = encode_prompts(load_pretrained("comp_clip"), captions)
    return latents, context, mask


def _comp_ids_data():  # the captions as token ids: the text encoder is part of the model being trained
    latents, captions = _comp_latents(comp_train_count())
    ids, mask = COMP_CLIP.tokenizer()(captions)
    return latents, ids, mask


def _comp_recaptioned_data():  # every scene twice: with its alt text, and with a recaptioner's description
    latents, captions = _comp_latents(comp_train_count())
    dense = [compositional.recaption_at(i, seed=COMP_TRAIN_SEED) for i in range(len(captions))]
    ids, mask = COMP_CLIP.tokenizer()(captions + dense)
    return torch.cat([latents, latents]), ids, mask


def _comp_relations_data():  # the recaptioned data, and three relation captions of each scene that allows one
    latents, ids, mask = _comp_recaptioned_data()
    scenes = range(len(_comp_latents(comp_train_count())[1]))
    extra = [(i, caption) for i in scenes
             for caption in compositional.relation_captions_at(i, seed=COMP_TRAIN_SEED, count=COMP_RELATION_REPEATS)]
    extra_ids, extra_mask = COMP_CLIP.tokenizer()([caption for _, caption in extra])
    rows = torch.tensor([i for i, _ in extra])
    return torch.cat([latents, latents[rows]]), torch.cat([ids, extra_ids]), torch.cat([mask, extra_mask])


def _vae_metadata(vae, images) -> dict:
    """The latent scale factor, 1 / std of the training latents (SD's 0.18215 rule), stored with the VAE."""
    return {"latent_scale": latent_scale(vae, images[:2000])}


# --- every shipped model --------------------------------------------------------------------------------------------

_SCENE_LOSS = DiffusionLoss(NoiseSchedule(SCENE_SCHEDULE))

RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("silhouette_classifier", Classifier, SILHOUETTE_CLASSIFIER, SILHOUETTE_CLASSIFIER_TRAIN,
           _silhouettes_with_labels, classification_loss),
    Recipe("silhouette_unet", UNet, SILHOUETTE_UNET, SILHOUETTE_TRAIN, _silhouette_images,
           DiffusionLoss(NoiseSchedule(SILHOUETTE_SCHEDULE))),
    Recipe("scene_vae", VAE, SCENE_VAE, SCENE_VAE_TRAIN, _scene_images,
           functools.partial(vae_loss, kl_weight=SCENE_VAE_KL_WEIGHT), metadata=_vae_metadata),
    Recipe("scene_judge", Classifier, SCENE_JUDGE, SCENE_JUDGE_TRAIN, _judge_data, classification_loss),
    Recipe("scene_latent_unet", UNet, SCENE_LATENT_UNET, SCENE_LATENT_TRAIN, _latent_data, _SCENE_LOSS,
           needs=("scene_vae",), dtype=torch.float16),
    Recipe("scene_clip", CLIP, SCENE_CLIP, SCENE_CLIP_TRAIN, _clip_data, clip_loss, needs=("scene_vae",)),
    Recipe("scene_text_unet", UNet, SCENE_TEXT_UNET, SCENE_TEXT_TRAIN, _text_unet_data,
           DiffusionLoss(NoiseSchedule(SCENE_SCHEDULE), p_uncond=SCENE_TEXT_P_UNCOND),
           needs=("scene_vae", "scene_clip"), dtype=torch.float16),
    *(Recipe(name, VAE, SCENE_VAE, SCENE_DECODER_TRAIN, _scene_images,
             functools.partial(decoder_loss, edge_weight=edge_weight), needs=("scene_vae",),
             start_from="scene_vae", frozen=("encoder",))  # the same encoder, so the UNets' latents keep their meaning
      for name, edge_weight in (("scene_vae_decoder", SCENE_DECODER_EDGE_WEIGHT), ("scene_vae_decoder_mse", 0.0))),
    Recipe("comp_vae", VAE, COMP_VAE, COMP_VAE_TRAIN, _comp_images,
           functools.partial(vae_loss, kl_weight=SCENE_VAE_KL_WEIGHT), metadata=_vae_metadata),
    Recipe("comp_clip", CLIP, COMP_CLIP, COMP_CLIP_TRAIN, _comp_clip_data, clip_loss, needs=("comp_vae",)),
    Recipe("comp_text_unet", UNet, COMP_TEXT_UNET, COMP_TEXT_TRAIN, _comp_text_unet_data,
           DiffusionLoss(NoiseSchedule(SCENE_SCHEDULE), p_uncond=COMP_TEXT_P_UNCOND),
           needs=("comp_vae", "comp_clip"), dtype=torch.float16),
    *(Recipe(name, TextUNet, COMP_JOINT_UNET, COMP_JOINT_TRAIN, data,
             DiffusionLoss(NoiseSchedule(SCENE_SCHEDULE), p_uncond=COMP_TEXT_P_UNCOND),
             needs=("comp_vae", "comp_clip", "comp_text_unet"), dtype=torch.float16,
             start_from={"unet": "comp_text_unet", "text": "comp_clip"})
      for name, data in (("comp_text_unet_joint", _comp_ids_data),
                         ("comp_text_unet_recaptioned", _comp_recaptioned_data),
                         ("comp_text_unet_relations", _comp_relations_data))),
)}


def get(name: str) -> Recipe:
    """The recipe for a shipped model, shrunk to SDLESSON_RECIPE_STEPS steps if that is set. ValueError if unknown."""
    if name not in RECIPES:
        raise ValueError(f"unknown model {name!r}: expected one of {', '.join(RECIPES)}")
    recipe = RECIPES[name]
    steps = _env_int("SDLESSON_RECIPE_STEPS")
    if steps is not None:
        recipe = dataclasses.replace(recipe, train=dataclasses.replace(
            recipe.train, steps=steps, warmup_steps=min(recipe.train.warmup_steps, 1)))
    return recipe


def train_from_scratch(device: torch.device) -> bool:
    """The notebooks' switch: SDLESSON_TRAIN_FROM_SCRATCH=1 or 0 if set, else on when the device is a GPU (CUDA)."""
    value = os.environ.get("SDLESSON_TRAIN_FROM_SCRATCH", "")
    if value not in ("", "0", "1"):
        raise ValueError(f"SDLESSON_TRAIN_FROM_SCRATCH must be 1 or 0, got {value!r}")
    return value == "1" if value else torch.device(device).type == "cuda"


def shipped_training_time(*names: str) -> str:
    """How long the shipped checkpoints' own training runs took, from their files: e.g. '97 min on AMD EPYC,
    1 thread'."""
    cards = [read_metadata(checkpoint_path(get(n).name)) for n in names]
    return f"{sum(c['seconds'] for c in cards) / 60:.0f} min on {' / '.join(sorted({hardware(c) for c in cards}))}"
