"""Latents: images encoded once by the VAE, scaled to unit spread, and cached for the latent noise predictor.

The VAE's latents have a spread of a few units; diffusion's noise has spread 1. Stable Diffusion multiplies its
latents by a scale factor, 0.18215 = 1 / std of its training latents, so that the two match; we measure ours the
same way.
"""

from __future__ import annotations

import torch

from .batches import batched
from .checks import check_number
from .data import from_float, to_float
from .scenes import make_scenes


def encode_images(vae, images: torch.Tensor, *, batch_size: int = 256, sample: bool = False,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Images (N, 3, H, W), uint8 or float in [-1, 1] -> unscaled latents (N, 4, H/8, W/8), on the CPU.

    sample=False takes the posterior's mode (its mean); True draws from it, as Stable Diffusion's training does.
    """
    def encode(x):
        posterior = vae.encode(to_float(x))  # uint8 0 … 255 -> -1 … 1
        return posterior.sample(generator) if sample else posterior.mode()

    return batched(vae, encode, images, batch_size=batch_size)


def latent_scale(vae, images: torch.Tensor) -> float:
    """1 / std of the latents of `images`: multiply latents by it so they have unit spread."""
    return float(1.0 / encode_images(vae, images).float().std())


def encode_scenes(vae, count: int, *, seed: int, split: str = "train", scale: float = 1.0):
    """Render `count` emoji scenes and encode them once: (latents × scale (N, 4, 8, 8), captions, labels (N, 4)).

    The latent noise predictor then trains on this cache: the VAE never runs inside its training loop.
    """
    images, captions, labels = make_scenes(count, seed=seed, split=split)
    return encode_images(vae, images) * scale, captions, labels


def decode_latents(vae, latents: torch.Tensor, scale: float = 1.0, *, batch_size: int = 256) -> torch.Tensor:
    """Latents × scale (N, 4, h, w) -> uint8 images (N, 3, 8h, 8w), like make_scenes' images: divide, then decode."""
    scale = check_number("scale", scale, low=0, low_open=True)
    decoded = batched(vae, lambda z: vae.decode(z / scale).clamp(-1, 1), latents, batch_size=batch_size)
    return from_float(decoded)  # -1 … 1 -> 0 … 255


def reconstruct(vae, images: torch.Tensor, *, batch_size: int = 256) -> torch.Tensor:
    """Images (N, 3, H, W), uint8 or float in [-1, 1] -> the VAE's round trip, float in [-1, 1], on the CPU.

    Encode, take the posterior's mode (no sampling: the same image every time), decode: what a VAE keeps of an image.
    """
    return batched(vae, lambda x: vae.decode(vae.encode(to_float(x)).mode()).clamp(-1, 1), images,
                   batch_size=batch_size)
