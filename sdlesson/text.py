"""The prompt's way in: a tokenizer, a small transformer text encoder, and the CLIP that trains it.

Stable Diffusion turns a prompt into 77 token embeddings of width 768 with CLIP's text tower, a transformer that
OpenAI trained contrastively: it learned to give a caption and its image nearby vectors. The UNet then reads
those embeddings through cross-attention. We do the same at the course's scale:

    "a small cat face in the top left on a blue background"
      ─ Tokenizer ─> ids (B, 16) and mask (B, 16)          (CLIP: 77 tokens, a BPE vocabulary of 49,408)
      ─ TextEncoder ─> token embeddings (B, 16, 64)        (CLIP ViT-L/14: (B, 77, 768)) ── the UNet's context
      ─ at the end-of-text token, projected ─> one caption vector, compared with an image vector by CLIP's loss

The tokenizer is word-level, with the scenes' small closed vocabulary. A word outside it is an error that lists
the words it knows, rather than a silent <unk> the model was never trained on. A prompt longer than max_length
tokens is truncated to its first max_length - 2 words, as CLIP truncates at 77.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from . import scenes

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"


def scene_vocabulary() -> tuple[str, ...]:
    """Every word of the scene captions ('a large dog face in the center on a gray background'), sorted."""
    words = {"a", "in", "the", "on", "background"}
    for phrase in scenes.OBJECTS + scenes.BACKGROUNDS + scenes.POSITIONS + scenes.SIZES:
        words.update(phrase.split())
    return tuple(sorted(words))


class Tokenizer:
    """Word-level: lowercase, punctuation dropped, one id per word, between <bos> and <eos>, padded to max_length."""

    def __init__(self, words: tuple[str, ...], max_length: int = 16):
        if max_length < 3:
            raise ValueError(f"max_length must be at least 3 (<bos>, a word, <eos>), got {max_length}")
        self.vocab = (PAD, BOS, EOS) + tuple(words)
        self.ids = {w: i for i, w in enumerate(self.vocab)}
        self.max_length = max_length

    def __len__(self) -> int:
        return len(self.vocab)

    def words(self, prompt: str) -> list[str]:
        if not isinstance(prompt, str):
            raise TypeError(f"a prompt must be a string, got {type(prompt).__name__}")
        words = re.sub(r"[^\w\s]", " ", prompt.lower()).split()
        unknown = [w for w in words if w not in self.ids]  # (punctuation is gone, so "<bos>" cannot be typed)
        if unknown:
            known = " ".join(self.vocab[3:])
            raise ValueError(f"unknown word(s) {', '.join(map(repr, dict.fromkeys(unknown)))} in {prompt!r}; "
                             f"the text encoder knows only: {known}")
        keep = self.max_length - 2  # <bos> and <eos> take two places
        if len(words) > keep:  # truncated, like CLIP at 77 tokens — but never silently: the meaning changes
            warnings.warn(f"prompt {prompt!r} has {len(words)} words; the text encoder reads only the first {keep}, "
                          f"so {' '.join(words[keep:])!r} is dropped", stacklevel=3)
        return words[:keep]

    def __call__(self, prompts: str | list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt(s) -> ids (B, max_length) long, mask (B, max_length) bool (True on <bos>, the words and <eos>)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        ids = torch.full((len(prompts), self.max_length), self.ids[PAD], dtype=torch.long)
        for row, prompt in enumerate(prompts):
            tokens = [BOS] + self.words(prompt) + [EOS]
            ids[row, : len(tokens)] = torch.tensor([self.ids[w] for w in tokens])
        return ids, ids != self.ids[PAD]

    def decode(self, ids: torch.Tensor) -> str:
        return " ".join(self.vocab[i] for i in ids.tolist() if self.vocab[i] not in (PAD, BOS, EOS))


@dataclass
class CLIPConfig:
    vocab: tuple[str, ...] = field(default_factory=scene_vocabulary)  # the words; ids 0-2 are <pad> <bos> <eos>
    max_length: int = 16  # tokens, <bos> and <eos> included (CLIP: 77)
    width: int = 64  # token embedding size: the UNet's context_dim (CLIP ViT-L/14: 768)
    layers: int = 3
    heads: int = 4
    image_channels: int = 4  # the image tower reads VAE latents (B, 4, 8, 8), the space the UNet works in
    image_size: int = 8
    image_width: int = 64
    embed_dim: int = 64  # the shared space where captions and images are compared
    vocab_size: int | None = None  # token ids; None: the words + 3 specials (CLIP's BPE: 49,408, vocab left empty)
    activation: str = "gelu"  # the MLP's: "gelu", or "quick_gelu" x·σ(1.702x), OpenAI CLIP's cheaper approximation
    mlp_width: int | None = None  # the MLP's hidden width (transformers: intermediate_size); None: 4 × width, CLIP's

    def __post_init__(self):
        self.vocab = tuple(self.vocab)
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} must be divisible by heads {self.heads}")
        if self.mlp_width is not None and self.mlp_width < 1:
            raise ValueError(f"mlp_width must be a positive int or None (4 × width), got {self.mlp_width}")

    def to_dict(self) -> dict:
        return asdict(self)

    def tokenizer(self) -> Tokenizer:
        return Tokenizer(self.vocab, self.max_length)


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)  # ≈ GELU(x), as OpenAI trained CLIP


ACTIVATIONS = {"gelu": nn.GELU, "quick_gelu": QuickGELU}


class TransformerBlock(nn.Module):
    """Pre-norm: x + causal self-attention(LN(x)), then x + MLP(LN(x)), as in CLIP's text tower and GPT-2."""

    def __init__(self, width: int, heads: int, activation: str = "gelu", mlp_width: int | None = None):
        super().__init__()
        self.heads = heads
        hidden = mlp_width or 4 * width  # CLIP's MLP widens 4×; some small models use another width
        self.ln1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), ACTIVATIONS[activation](), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, L, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        # Causal: token i sees tokens 0 … i, so padding (always after <eos>) never reaches a real token.
        h = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, heads, L, C/heads)
        x = x + self.proj(h.transpose(1, 2).reshape(B, L, C))
        return x + self.mlp(self.ln2(x))


class TextEncoder(nn.Module):
    """Token ids (B, L) -> token embeddings (B, L, width): what the UNet's cross-attention reads."""

    def __init__(self, config: CLIPConfig):
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size or len(config.vocab) + 3, config.width)
        self.position_embedding = nn.Parameter(torch.randn(config.max_length, config.width) * 0.01)
        self.blocks = nn.ModuleList(TransformerBlock(config.width, config.heads, config.activation, config.mlp_width)
                                    for _ in range(config.layers))
        self.ln_final = nn.LayerNorm(config.width)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.dtype != torch.long or ids.dim() != 2 or ids.shape[1] > self.config.max_length:
            raise ValueError(f"expected token ids (B, L <= {self.config.max_length}) of dtype long, "
                             f"got {ids.dtype} {tuple(ids.shape)}")
        x = self.token_embedding(ids) + self.position_embedding[: ids.shape[1]]  # (B, L, width)
        for block in self.blocks:
            x = block(x)
        return self.ln_final(x)


class ImageEncoder(nn.Module):
    """Latents (B, 4, 8, 8) -> one vector (B, embed_dim): CLIP's image tower, here a small convolutional net."""

    def __init__(self, config: CLIPConfig):
        super().__init__()
        w = config.image_width
        self.net = nn.Sequential(
            nn.Conv2d(config.image_channels, w, 3, padding=1), nn.GELU(),
            nn.Conv2d(w, w, 3, padding=1), nn.GELU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.GELU(),  # 8×8 -> 4×4
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.GELU(),
            nn.Flatten(),  # keep where things are: position is part of the caption
            nn.Linear(2 * w * (config.image_size // 2) ** 2, config.embed_dim),
        )

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.net(latents)


class CLIP(nn.Module):
    """A text tower and an image tower trained so that a caption and its image get the most similar vectors."""

    def __init__(self, config: CLIPConfig):
        super().__init__()
        self.config = config
        self.text = TextEncoder(config)
        self.text_projection = nn.Linear(config.width, config.embed_dim, bias=False)
        self.image = ImageEncoder(config)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # learned temperature, CLIP's start

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The caption vector (B, embed_dim), unit length: the <eos> token's embedding (it has seen every word)."""
        states = self.text(ids)  # (B, L, width)
        eos = states[torch.arange(len(ids)), mask.sum(1) - 1]  # (B, width)
        return F.normalize(self.text_projection(eos), dim=-1)

    def encode_image(self, latents: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image(latents), dim=-1)

    def forward(self, latents: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Similarity logits (B images, B captions): scale · cos(image_i, caption_j)."""
        scale = self.logit_scale.clamp(max=math.log(100)).exp()  # CLIP caps the temperature at 100
        return scale * self.encode_image(latents) @ self.encode_text(ids, mask).T


def clip_loss(model: CLIP, batch, generator: torch.Generator | None = None) -> torch.Tensor:
    """Symmetric cross-entropy over the batch's image-caption similarity matrix (CLIP's InfoNCE loss).

    Each image's target is its own caption; where several images in the batch share a caption (scenes repeat
    captions, unlike web photos), the target is spread evenly over all of them.
    """
    latents, ids, mask = batch
    logits = model(latents, ids, mask)  # (B, B)
    same = (ids[:, None, :] == ids[None, :, :]).all(-1).float()  # (B, B): caption i == caption j
    targets = same / same.sum(1, keepdim=True)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


@torch.no_grad()
def encode_prompts(clip: CLIP, prompts: str | list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt(s) -> the UNet's context: token embeddings (B, L, width) and their mask (B, L)."""
    ids, mask = clip.config.tokenizer()(prompts)
    device = next(clip.parameters()).device
    return clip.text(ids.to(device)), mask.to(device)


def unconditional(context: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The empty prompt, as training makes it for classifier-free guidance: only the <bos> token is left.

    With a causal encoder the <bos> embedding is the same for every prompt, so this is one fixed condition.
    """
    mask = torch.zeros_like(mask)
    mask[:, 0] = True
    return context, mask
