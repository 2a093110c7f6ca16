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
