"""Textual inversion (Gal et al. 2022): a new word is a new row of the text encoder's token-embedding table.

Nothing else changes: the tokenizer learns one more whole token, the embedding table grows by one row (or n rows for
a multi-vector embedding, written "<tok>", "<tok>_1", …, "<tok>_{n-1}" and typed as "<tok>"), and the prompt
"a photo of <cat-toy>" reaches the UNet through the same frozen transformer as any other.

    tokens = load_textual_inversion(sd, "learned_embeds.safetensors")        # diffusers: {token: (d,) or (n, d)}
    tokens = load_textual_inversion(sd, "cat-toy.pt")                        # A1111: string_to_param["*"], its name
    tokens = load_textual_inversion(sd, "cat-toy.safetensors", token="<cat-toy>")   # A1111 safetensors: emb_params

Files are read with safetensors, or torch.load(weights_only=True) for .pt / .bin: no code runs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn


def read_embedding(path_or_state, *, token: str | None = None) -> tuple[str, torch.Tensor]:
    """A textual-inversion file -> (its token, vectors (n, d)). `token` overrides the file's name for it."""
    from .stable_diffusion import read_state

    where = "the embedding" if isinstance(path_or_state, dict) else Path(path_or_state).name
    state = path_or_state if isinstance(path_or_state, dict) else read_state(Path(path_or_state))
    if "clip_l" in state or "clip_g" in state:
        raise ValueError(f"{where} is an SDXL embedding (clip_l / clip_g vectors), not for Stable Diffusion v1.5")
    if "string_to_param" in state:  # A1111's .pt: {"string_to_param": {"*": (n, d)}, "name": ..., "step": ...}
        name, vectors = state.get("name"), state["string_to_param"]["*"]
    elif "emb_params" in state:  # A1111's .safetensors: the vectors alone; A1111 calls the word after the file
        name = None if isinstance(path_or_state, dict) else Path(path_or_state).stem
        vectors = state["emb_params"]
    elif len(state) == 1:  # diffusers' learned_embeds: {token: (d,) or (n, d)}
        name, vectors = next(iter(state.items()))
    else:
        raise ValueError(f"{where}: expected diffusers' {{token: tensor}}, A1111's string_to_param or emb_params; "
                         f"found keys {list(state)[:5]}")
    token = token or name
    if not isinstance(token, str) or not token:
        raise ValueError(f"{where} does not name its token: pass token='<my-word>'")
    if not isinstance(vectors, torch.Tensor) or vectors.dim() not in (1, 2):
        raise ValueError(f"{where}: the embedding must be a (d,) or (n, d) tensor, got {type(vectors).__name__} "
                         f"{tuple(getattr(vectors, 'shape', ()))}")
    return token, vectors.detach().float().reshape(-1, vectors.shape[-1])


def add_token_rows(text_encoder: nn.Module, vectors: torch.Tensor) -> None:
    """Grow the token-embedding table by the rows `vectors` (n, d): old ids keep their rows, new ids come after."""
    old = text_encoder.token_embedding
    table = nn.Embedding(old.num_embeddings + len(vectors), old.embedding_dim, device=old.weight.device,
                         dtype=old.weight.dtype)
    with torch.no_grad():
        table.weight[: old.num_embeddings] = old.weight
        table.weight[old.num_embeddings:] = vectors.to(table.weight)
    table.weight.requires_grad_(old.weight.requires_grad)
    text_encoder.token_embedding = table
    # a new config (never the shared SD_TEXT_ENCODER constant edited in place) that says how many ids there are
    text_encoder.config = dataclasses.replace(text_encoder.config, vocab_size=table.num_embeddings)


def load_textual_inversion(sd, path_or_state, *, token: str | None = None) -> list[str]:
    """An embedding onto SD's tokenizer and text encoder, as diffusers' load_textual_inversion does.

    sd: a StableDiffusion, or a TextToImage on SD weights (its text side is used). Returns the tokens added:
    [token] or [token, token_1, …] for an (n, d) embedding; prompts use `token` alone."""
    side = sd if hasattr(sd, "text_encoder") else getattr(sd, "text", None)
    course = getattr(side, "clip", None) is not None  # the course's text side (its small CLIP), not SD's
    if course or not hasattr(side, "text_encoder") or not hasattr(side.tokenizer, "add_tokens"):
        raise TypeError(f"load_textual_inversion expects Stable Diffusion's text side (a StableDiffusion, or a "
                        f"TextToImage made by from_stable_diffusion), got {type(sd).__name__}; for the course's "
                        "model, finetune.add_word adds a word")
    tokenizer, text = side.tokenizer, side.text_encoder
    token, vectors = read_embedding(path_or_state, token=token)
    width = text.token_embedding.embedding_dim
    if vectors.shape[1] != width:
        hint = " (1024: an embedding for Stable Diffusion 2.x)" if vectors.shape[1] == 1024 else ""
        raise ValueError(f"embedding for {token!r} is {vectors.shape[1]} wide{hint}; this text encoder's tokens are "
                         f"{width} wide")
    tokens = [token] + [f"{token}_{i}" for i in range(1, len(vectors))]
    taken = [t for t in tokens if t in tokenizer.encoder]
    if taken:
        raise ValueError(f"token(s) {taken} are already in the tokenizer's vocabulary: choose another, e.g. "
                         f"token='<{token.strip('<>')}-2>'")
    if len(tokenizer.encoder) != text.token_embedding.num_embeddings:
        raise ValueError(f"the tokenizer has {len(tokenizer.encoder)} tokens but the text encoder "
                         f"{text.token_embedding.num_embeddings} rows: they must grow together")
    tokenizer.add_tokens(tokens)
    add_token_rows(text, vectors)
    return tokens


def save_embedding(path, token: str, vectors: torch.Tensor) -> Path:
    """diffusers' learned_embeds.safetensors layout: {token: (n, d)} (or (d,) for one vector is read too)."""
    from safetensors.torch import save_file

    path = Path(path)
    save_file({token: vectors.detach().float().contiguous().cpu()}, str(path))
    return path
