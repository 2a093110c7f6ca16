"""A text-conditioned UNet that owns its text encoder, so the denoising loss trains both (lesson 06).

Stable Diffusion v1 freezes CLIP's text tower: the UNet reads token embeddings that were shaped only by CLIP's
contrastive loss, which can match a caption to its image while ignoring word order ("a car left of a star" and
"a star left of a car" get nearly the same vector). Lesson 06 measures that blind spot in the course's small CLIP,
then trains the same text tower further by the UNet's own loss (diffusers' `--train_text_encoder`; SD 3's MM-DiT
goes further and gives the text tokens trainable layers of their own inside the denoiser):

    ids (B, L) ─ TextEncoder ─ token embeddings (B, L, width) ─ UNet's cross-attention ─ ε̂
               └─────────── one optimizer, one loss: ‖ε − ε̂‖² ───────────┘
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .text import CLIPConfig, TextEncoder
from .unet import UNet, UNetConfig


@dataclass
class TextUNetConfig:
    unet: UNetConfig  # the noise predictor; its context_dim is the text encoder's width
    text: CLIPConfig  # the text tower's part of a CLIP config (vocabulary, length, width, layers); the image tower's
    # fields are kept only so the tower can start from a trained CLIP's text half

    def __post_init__(self):
        if isinstance(self.unet, dict):  # as read back from a checkpoint's JSON
            self.unet = UNetConfig(**self.unet)
        if isinstance(self.text, dict):
            self.text = CLIPConfig(**self.text)
        if self.unet.context_dim != self.text.width:
            raise ValueError(f"the UNet's context_dim ({self.unet.context_dim}) must equal the text encoder's width "
                             f"({self.text.width})")

    def to_dict(self) -> dict:
        return {"unet": self.unet.to_dict(), "text": self.text.to_dict()}


class TextUNet(nn.Module):
    """Token ids in, noise out: `text` turns the prompt into token embeddings, `unet` denoises with them."""

    def __init__(self, config: TextUNetConfig):
        super().__init__()
        self.config = config
        self.text = TextEncoder(config.text)
        self.unet = UNet(config.unet)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        """context: token ids (B, L), as the tokenizer gives them; context_mask: (B, L), True where a token is read
        (the empty prompt is <bos> alone, text.unconditional)."""
        if context is None:
            raise ValueError("TextUNet needs the prompt's token ids as context (B, L)")
        return self.unet(x, t, context=self.text(context), context_mask=context_mask)
