"""Measuring generated images: Fréchet distance, PSNR, class histograms."""

from __future__ import annotations

import torch


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N, D): FID's formula.

        d² = |μ_a - μ_b|² + tr(Σ_a + Σ_b - 2 (Σ_a Σ_b)^½)

    tr((Σ_a Σ_b)^½) is computed as Σ sqrt(eigenvalues of Σ_a^½ Σ_b Σ_a^½), a symmetric matrix, so it stays real.
    """
    if features_a.dim() != 2 or features_b.dim() != 2 or features_a.shape[1] != features_b.shape[1]:
        raise ValueError(f"expected two (N, D) feature sets with the same D, got {tuple(features_a.shape)} "
                         f"and {tuple(features_b.shape)}")
    if min(len(features_a), len(features_b)) < 2:
        raise ValueError(f"each feature set needs at least 2 samples to have a covariance, got {len(features_a)} "
                         f"and {len(features_b)}")
    a, b = features_a.double(), features_b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    evals, evecs = torch.linalg.eigh(cov_a)
    sqrt_a = evecs @ torch.diag(evals.clamp(min=0).sqrt()) @ evecs.T  # Σ_a^½
    middle = torch.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a).clamp(min=0)
    d2 = (mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * middle.sqrt().sum()
    return float(d2)


def psnr(x: torch.Tensor, y: torch.Tensor, *, data_range: float = 2.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per image, in dB, for images in [-1, 1] (data_range 2): 10 log10(range² / MSE)."""
    if x.shape != y.shape or x.dim() < 2:
        raise ValueError(f"psnr compares two batches of the same shape (B, ...), got {tuple(x.shape)} and {tuple(y.shape)}")
    mse = (x.float() - y.float()).square().flatten(1).mean(1)
    return 10 * torch.log10(data_range**2 / mse)


def class_histogram(probs: torch.Tensor, num_classes: int | None = None) -> torch.Tensor:
    """How many images fall in each class, by the most probable class: (N, K) probabilities -> (K,) counts."""
    return torch.bincount(probs.argmax(-1), minlength=num_classes or probs.shape[-1])
