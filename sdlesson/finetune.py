"""Teach the course's text-to-image model a new word from a handful of pictures: textual inversion or LoRA.

The new concept is an OpenMoji glyph the scene world never drew (a turtle), placed in scenes like the others and
captioned with a word the tokenizer has never seen: "a small turtle in the top left on a blue background".

    textual inversion (Gal et al. 2022): the word gets one new row of the token-embedding table; only that row
        trains, text encoder and UNet frozen. 64 numbers.
    LoRA (Hu et al. 2021): the word's row is added but frozen (a copy of a related word's), and rank-r adapters
        on the UNet's attention projections (optionally the text encoder's) train. Tens of thousands of numbers.

Both minimise the training loss the UNet was trained with, ‖ε - ε_θ(x_t, t, text)‖², on the few pictures only.

    model = TextToImage.from_pretrained()
    images, captions = concept_scenes(12, seed=0)
    latents = encode_concept(images)
    history = finetune(model, latents, captions, method="textual_inversion", steps=300, seed=0)
    model("a large turtle in the center on a pink background")
    save_word(model.clip, "turtle", "turtle.safetensors")     # textual inversion: the row alone, 0.3 KB
    lora.save_lora(model.unet, "turtle-lora.safetensors")     # LoRA: the adapters alone, about 350 KB at rank 4
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np
import torch

from . import lora as L
from . import scenes
from .schedule import NoiseSchedule
from .textual_inversion import add_token_rows
from .train import DiffusionLoss

NEW_WORD, NEW_CODEPOINT = "turtle", 0x1F422  # 🐢: outside scenes.OBJECTS, and not a word of the captions
INIT_WORD = "fish"  # the new row starts as a related word's (textual inversion's "coarse descriptor")


@functools.lru_cache(maxsize=None)
def _sprite(codepoint: int, size: str) -> tuple[np.ndarray, np.ndarray]:
    """Any OpenMoji glyph fitted into a scene size's box, as scenes._sprite fits the world's objects."""
    from PIL import Image, ImageDraw

    canvas = Image.new("RGBA", (scenes._CANVAS, scenes._CANVAS), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((16, 16), chr(codepoint), font=scenes._font(), embedded_color=True)
    bbox = canvas.getchannel("A").getbbox()
    if bbox is None:
        raise ValueError(f"the OpenMoji font draws nothing for U+{codepoint:X}")
    glyph = canvas.crop(bbox)
    scale = scenes.SIZE_PX[size] / max(glyph.size)
    rgba = np.asarray(glyph.resize([max(1, round(s * scale)) for s in glyph.size], Image.LANCZOS), dtype=np.float32)
    alpha = rgba[..., 3:] / 255.0
    return rgba[..., :3] * alpha, alpha  # premultiplied, as the scenes composite it


def concept_scenes(n: int, *, seed: int = 0, word: str = NEW_WORD,
                   codepoint: int = NEW_CODEPOINT) -> tuple[torch.Tensor, list[str]]:
    """n scenes of the new glyph (random background, position, size, jitter): uint8 (n, 3, 64, 64) and captions."""
    rng = np.random.default_rng([seed, codepoint])
    images, captions = [], []
    for _ in range(n):
        bg, pos, size = (str(rng.choice(a)) for a in (scenes.BACKGROUNDS, scenes.POSITIONS, scenes.SIZES))
        rgb, alpha = _sprite(codepoint, size)
        h, w = alpha.shape[:2]
        x, y = scenes._top_left(pos, w, h)
        dx, dy = rng.integers(-scenes.JITTER, scenes.JITTER + 1, size=2)
        image = np.empty((scenes.IMAGE_SIZE, scenes.IMAGE_SIZE, 3), np.float32)
        image[:] = scenes.BACKGROUND_RGB[bg]
        patch = image[y + dy: y + dy + h, x + dx: x + dx + w]
        patch *= 1 - alpha  # out = background · (1 - α) + rgb·α
        patch += rgb
        images.append(np.clip(np.rint(image), 0, 255).astype(np.uint8))
        captions.append(f"a {size} {word} in the {pos} on a {bg} background")
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), captions


def encode_concept(images: torch.Tensor) -> torch.Tensor:
    """Images -> scaled latents with the shipped scene VAE's encoder, as the text UNet was trained on them."""
    from . import pretrained as pre
    from .latents import encode_images

    return encode_images(pre.load_pretrained("scene_vae"), images) * pre.scene_latent_scale()


def add_word(clip, word: str, *, init: str = INIT_WORD) -> int:
    """A new word at the end of the course CLIP's vocabulary; its embedding row starts as `init`'s. Returns its id."""
    if not isinstance(word, str) or not word.isalpha() or word != word.lower():
        raise ValueError(f"the new word must be one lower-case word of letters, got {word!r}")
    config = clip.config
    if word in config.vocab:
        raise ValueError(f"{word!r} is already a word of the vocabulary")
    if init not in config.vocab:
        raise ValueError(f"init word {init!r} is not in the vocabulary: {' '.join(config.vocab)}")
    tokenizer = config.tokenizer()
    row = clip.text.token_embedding.weight[tokenizer.ids[init]].detach().clone()
    add_token_rows(clip.text, row[None])
    clip.config = clip.text.config = dataclasses.replace(config, vocab=config.vocab + (word,))  # id = the new row
    return clip.config.tokenizer().ids[word]


def save_word(clip, word: str, path) -> Path:
    """A learned word as diffusers' learned_embeds.safetensors: {word: its embedding row (1, width)}."""
    from .textual_inversion import save_embedding

    if word not in clip.config.vocab:
        raise ValueError(f"{word!r} is not a word of this model's vocabulary")
    return save_embedding(path, word, clip.text.token_embedding.weight[clip.config.tokenizer().ids[word]][None])


def load_word(clip, path) -> str:
    """A word saved by save_word onto the course's CLIP: added to the vocabulary with its learned row."""
    from .textual_inversion import read_embedding

    word, vectors = read_embedding(path)
    if vectors.shape != (1, clip.config.width):
        raise ValueError(f"{path}: expected one vector of width {clip.config.width}, got {tuple(vectors.shape)}")
    new_id = add_word(clip, word, init=clip.config.vocab[0])
    with torch.no_grad():
        clip.text.token_embedding.weight[new_id] = vectors[0]
    return word


def finetune(model, latents: torch.Tensor, captions: list[str], *, method: str = "textual_inversion",
             steps: int = 300, lr: float | None = None, rank: int = 4, text_lora: bool = False, batch_size: int = 8,
             word: str = NEW_WORD, init: str = INIT_WORD, seed: int = 0) -> dict:
    """Fine-tune a TextToImage on the course's scene models (from_pretrained) in place; returns the history.

    method "textual_inversion": only the new word's embedding row trains (lr default 5e-3).
    method "lora": rank-`rank` adapters on the UNet's attention (and the text encoder's with text_lora) train
    (lr default 1e-3); the word's row stays a copy of `init`'s. Reproducible: every draw comes from `seed`.
    History: {"loss": per-step losses, "trained": parameter names, "parameters": how many numbers train}."""
    if method not in ("textual_inversion", "lora"):
        raise ValueError(f"method must be 'textual_inversion' or 'lora', got {method!r}")
    if len(latents) != len(captions) or not captions:
        raise ValueError(f"{len(latents)} latents and {len(captions)} captions: one caption per picture, at least one")
    clip, unet = model.clip, model.unet
    if word not in clip.config.vocab:
        add_word(clip, word, init=init)
    new_id = clip.config.tokenizer().ids[word]
    clip.requires_grad_(False), unet.requires_grad_(False)
    table = clip.text.token_embedding.weight
    if method == "textual_inversion":
        table.requires_grad_(True)
        params, trained = [table], [f"text.token_embedding.weight[{new_id}]"]
        count, lr = table.shape[1], lr or 5e-3
    else:
        L.inject_lora(unet, targets=L.COURSE_ATTENTION, rank=rank, seed=seed)
        trained = [f"unet.{n}" for n in L.lora_layers(unet)]
        if text_lora:
            L.inject_lora(clip.text, targets=L.COURSE_TEXT, rank=rank, seed=seed + 1)
            trained += [f"text.{n}" for n in L.lora_layers(clip.text)]
        params = L.lora_parameters(unet) + L.lora_parameters(clip.text)
        count, lr = sum(p.numel() for p in params), lr or 1e-3
    frozen_rows, others = table.detach().clone(), torch.arange(len(table), device=table.device) != new_id
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    ids, mask = clip.config.tokenizer()(captions)
    loss_fn = DiffusionLoss(NoiseSchedule(model.schedule.name))
    generator = torch.Generator().manual_seed(seed)
    unet.train(), clip.text.train()
    losses = []
    for _ in range(steps):
        pick = torch.randint(0, len(latents), (min(batch_size, len(latents)),), generator=generator)
        context = clip.text(ids[pick].to(model.device))  # through the encoder: the new row's gradient flows back
        loss = loss_fn(unet, (latents[pick].to(model.device), context, mask[pick].to(model.device)), generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if method == "textual_inversion":  # every row but the new word's stays what it was, exactly
            with torch.no_grad():
                table[others] = frozen_rows[others]
        losses.append(loss.item())
    unet.eval(), clip.text.eval()
    table.requires_grad_(False)
    return {"loss": losses, "trained": trained, "parameters": count, "word_id": new_id}


@torch.no_grad()
def concept_loss(model, latents: torch.Tensor, captions: list[str], *, draws: int = 4, seed: int = 0) -> float:
    """The mean training loss on fixed draws of t and ε: the same number before and after, to compare them."""
    ids, mask = model.clip.config.tokenizer()(captions)
    context = model.clip.text(ids.to(model.device))
    loss_fn, generator = DiffusionLoss(NoiseSchedule(model.schedule.name)), torch.Generator().manual_seed(seed)
    return sum(float(loss_fn(model.unet, (latents, context, mask), generator)) for _ in range(draws)) / draws


# --- the files the command line writes and generate --lora / --embedding reads ------------------------------------

def _adapted(model):
    """The UNet and the text encoder under one name space ('unet.…', 'text.…'), so one LoRA file holds both."""
    return torch.nn.ModuleDict({"unet": model.unet, "text": model.clip.text})


def save_lora_word(model, path, *, word: str = NEW_WORD, init: str = INIT_WORD, config: dict | None = None) -> Path:
    """A LoRA fine-tune of the course's model: its adapters, and the word (whose row is `init`'s) in the metadata."""
    return L.save_lora(_adapted(model), path, config={"word": word, "init": init} | (config or {}))


def lora_word(path) -> str | None:
    """The word a LoRA file from save_lora_word teaches (read from its metadata alone, no tensors loaded)."""
    return L.read_lora_config(path).get("word")


def load_lora_word(model, path, *, scale: float = 1.0, merge: bool = False) -> str:
    """A file from save_lora_word onto the course's TextToImage: the word added as it was trained, the adapters
    loaded at `scale` (merged into W when merge=True). Returns the word."""
    config = L.read_lora_config(path)
    word = config.get("word")
    if word is None:
        raise ValueError(f"{path}: a LoRA file without a word; save it with finetune.save_lora_word")
    if word not in model.clip.config.vocab:
        add_word(model.clip, word, init=config.get("init", INIT_WORD))
    L.load_lora(_adapted(model), path, scale=scale, merge=merge)
    return word


# --- measuring the new word: is it the new object, does it compose, what did the model forget -----------------------

IDENTITY_SEED, IDENTITY_TEST_SEED = 9100, 9200  # renders for the identity templates, and fresh ones to validate them
IDENTITY_CLASSES = scenes.OBJECTS + (NEW_WORD,)


def round_trip(images: torch.Tensor) -> torch.Tensor:
    """uint8 scenes through the shipped VAE (encoder, fine-tuned decoder): what a sample can look like at best."""
    from . import pretrained as pre
    from .latents import reconstruct

    x = reconstruct(pre.load_pretrained("scene_vae_decoder"), images)
    return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def _renders(n_per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """VAE round trips of n renders of each old object (any background, position, size) and of the new glyph."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for k, obj in enumerate(scenes.OBJECTS):
        chosen = [scenes.Scene(obj, str(rng.choice(scenes.BACKGROUNDS)), str(rng.choice(scenes.POSITIONS)),
                               str(rng.choice(scenes.SIZES))) for _ in range(n_per_class)]
        rendered = np.stack([scenes.render(s, jitter_rng=rng) for s in chosen])
        images.append(torch.from_numpy(rendered).permute(0, 3, 1, 2))
        labels += [k] * n_per_class
    images.append(concept_scenes(n_per_class, seed=seed)[0])
    labels += [len(scenes.OBJECTS)] * n_per_class
    return round_trip(torch.cat(images)), torch.tensor(labels)


class IdentityProbe(torch.nn.Module):
    """Which object a scene shows, the world's eight or the new one: a linear layer (64 × 9 numbers) on the frozen
    scene judge's features, fitted to VAE round trips of renders. The judge itself never saw the new object."""

    def __init__(self, judge, mean: torch.Tensor, std: torch.Tensor, linear: torch.nn.Linear):
        super().__init__()
        self.judge, self.linear = judge, linear
        self.register_buffer("mean", mean), self.register_buffer("std", std)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 scenes (N, 3, 64, 64) -> index into IDENTITY_CLASSES (N,)."""
        from .classifier import extract_features

        return self.linear((extract_features(self.judge, images) - self.mean) / self.std).argmax(1)


def identity_probe(judge, *, n_per_class: int = 40, seed: int = IDENTITY_SEED, l2: float = 1e-3) -> IdentityProbe:
    """Fit the probe: multinomial logistic regression (cross-entropy + l2·|W|², L-BFGS) on standardised features."""
    from .classifier import extract_features

    images, labels = _renders(n_per_class, seed)
    features = extract_features(judge, images)
    mean, std = features.mean(0), features.std(0) + 1e-6
    x, linear = (features - mean) / std, torch.nn.Linear(features.shape[1], len(IDENTITY_CLASSES))
    torch.nn.init.zeros_(linear.weight), torch.nn.init.zeros_(linear.bias)
    optimizer = torch.optim.LBFGS(linear.parameters(), max_iter=200)

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(linear(x), labels) + l2 * linear.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return IdentityProbe(judge, mean, std, linear.requires_grad_(False))


def shows_new_object(probe: IdentityProbe, images: torch.Tensor) -> torch.Tensor:
    """(N,) bool: does the probe see the new object?"""
    return probe(images) == len(IDENTITY_CLASSES) - 1


def identity_accuracy(probe: IdentityProbe, *, n_per_class: int = 40, seed: int = IDENTITY_TEST_SEED) -> dict:
    """The identity measure on fresh real renders (VAE round trips, a seed the probe was not fitted on): how often
    it finds the new object where it is (recall), calls an old object the new one (false alarms), and 9-way accuracy."""
    images, labels = _renders(n_per_class, seed)
    found, new = probe(images), len(IDENTITY_CLASSES) - 1
    return {"new object found": (found[labels == new] == new).float().mean().item(),
            "old objects called new": (found[labels != new] == new).float().mean().item(),
            "9-way accuracy": (found == labels).float().mean().item(), "renders": len(images)}


def share(hits: torch.Tensor) -> tuple[float, float]:
    """A rate and its standard error √(p(1-p)/n)."""
    p = hits.float().mean().item()
    return p, (p * (1 - p) / len(hits)) ** 0.5


def concept_prompts(*, word: str = NEW_WORD, seen: list[str] | None = None) -> tuple[list[str], torch.Tensor]:
    """Every (size, position, background) for the word (60 prompts) and whether each is absent from `seen`
    (the training captions): composition is the new word in places the few pictures never showed it."""
    prompts = [f"a {size} {word} in the {pos} on a {bg} background"
               for bg in scenes.BACKGROUNDS for pos in scenes.POSITIONS for size in scenes.SIZES]
    return prompts, torch.tensor([p not in set(seen or []) for p in prompts])


@torch.no_grad()
def concept_report(pipe, probe: IdentityProbe, prompts: list[str], *, seed: int = 0,
                   guidance_scale: float = 3.0, num_steps: int = 25) -> dict:
    """One sample per prompt: (N,) bool tensors: identity (the new object's template is nearest), and the judge's
    background / position / size matching the prompt (its heads read those of any object)."""
    from .evaluate import judge_scenes

    images = pipe(prompts, seed=seed, guidance_scale=guidance_scale, num_steps=num_steps)
    labels = judge_scenes(probe.judge, images)[0]
    asked = torch.tensor([[scenes.BACKGROUNDS.index(p.split(" on a ")[1].split()[0]),
                           scenes.POSITIONS.index(p.split(" in the ")[1].split(" on a ")[0]),
                           scenes.SIZES.index(p.split()[1])] for p in prompts])
    report = {"identity": shows_new_object(probe, images)}
    report |= {a: labels[:, k + 1] == asked[:, k] for k, a in enumerate(("background", "position", "size"))}
    return report | {"images": images}


def forgetting(before: torch.Tensor, after: torch.Tensor) -> dict:
    """Per-attribute adherence on the old vocabulary, before and after, from prompt_adherence's (N, 4) bools of the
    same prompts and seeds; the change's standard error from the paired differences."""
    from .evaluate import ATTRIBUTES

    out = {}
    for k, name in enumerate(ATTRIBUTES + ("all four",)):
        b, a = (before[:, k], after[:, k]) if k < 4 else (before.all(1), after.all(1))
        d = a.float() - b.float()
        out[name] = {"before": share(b), "after": share(a),
                     "change": (d.mean().item(), d.std().item() / len(d) ** 0.5 if len(d) > 1 else 0.0)}
    return out
