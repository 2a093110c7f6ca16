"""A small CNN classifier: the course's measuring instrument.

It tells which animal a silhouette shows (so we can count what a diffusion model generates), whether a noised image
was a cat or a dog (lesson 01), and its penultimate features give the Fréchet distance between generated and
real images (FID's recipe, with our classifier in place of Inception).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .batches import batched
from .data import to_float


@dataclass
class ClassifierConfig:
    in_channels: int = 1
    num_classes: tuple[int, ...] = (10,)  # one head per attribute; a single head for a single label
    channels: tuple[int, ...] = (32, 64, 128)  # conv stages, each halving the resolution
    feature_dim: int = 64  # the penultimate layer, used for Fréchet distances
    norm_groups: int = 8
    sample_size: int = 28  # the input's side; only needed without global pooling
    global_pool: bool = True  # average over positions (what, not where); False keeps where things are

    def __post_init__(self):
        self.num_classes = (self.num_classes,) if isinstance(self.num_classes, int) else tuple(self.num_classes)
        self.channels = tuple(self.channels)

    def to_dict(self) -> dict:
        return asdict(self)


class Classifier(nn.Module):
    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = cfg = config
        layers, c_in = [], cfg.in_channels
        for c in cfg.channels:
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.GroupNorm(cfg.norm_groups, c), nn.SiLU(),
                       nn.Conv2d(c, c, 3, padding=1), nn.GroupNorm(cfg.norm_groups, c), nn.SiLU(),
                       nn.AvgPool2d(2, ceil_mode=True)]
            c_in = c
        self.body = nn.Sequential(*layers)
        side = cfg.sample_size
        for _ in cfg.channels:
            side = -(-side // 2)  # each stage halves the side, rounding up
        self.to_features = nn.Linear(c_in if cfg.global_pool else c_in * side * side, cfg.feature_dim)
        self.heads = nn.ModuleList(nn.Linear(cfg.feature_dim, n) for n in cfg.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images in [-1, 1] -> (B, feature_dim)."""
        if x.dim() != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"expected images of shape (B, {self.config.in_channels}, H, W), got {tuple(x.shape)}")
        h = self.body(x)  # (B, channels[-1], h, w)
        h = h.mean(dim=(2, 3)) if self.config.global_pool else h.flatten(1)  # (B, channels[-1]) or (B, c·h·w)
        return F.silu(self.to_features(h))

    def forward(self, x: torch.Tensor):
        """Logits (B, num_classes), or a tuple of them, one per head, when there are several heads."""
        f = self.features(x)
        logits = tuple(head(f) for head in self.heads)
        return logits[0] if len(logits) == 1 else logits


def classification_loss(model, batch, generator=None) -> torch.Tensor:
    """Cross-entropy for a Trainer: batch = (images, labels), labels (B,) or (B, heads)."""
    x, y = to_float(batch[0]), batch[1]  # images may be stored as uint8
    logits = model(x)
    if isinstance(logits, torch.Tensor):
        return F.cross_entropy(logits, y)
    return sum(F.cross_entropy(lg, y[:, i]) for i, lg in enumerate(logits)) / len(logits)


def predict(model, x: torch.Tensor, *, batch_size: int = 500) -> torch.Tensor:
    """Class probabilities (N, num_classes) for a single-head classifier, in batches."""
    return batched(model, lambda chunk: model(to_float(chunk)).softmax(-1), x, batch_size=batch_size)


def extract_features(model, x: torch.Tensor, *, batch_size: int = 500) -> torch.Tensor:
    """The features (N, feature_dim) the classifier's head reads: what Fréchet distances compare."""
    return batched(model, lambda chunk: model.features(to_float(chunk)), x, batch_size=batch_size)
