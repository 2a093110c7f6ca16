"""Measuring generated images: Fréchet distance, PSNR, SSIM, edge error, nearest-neighbour PSNR, class histograms."""

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
        raise ValueError(f"psnr compares two batches of the same shape (B, ...), got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    mse = (x.float() - y.float()).square().flatten(1).mean(1)
    return 10 * torch.log10(data_range**2 / mse)


def image_gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Differences between neighbouring pixels, across (B, C, H, W-1) and down (B, C, H-1, W): where the edges are."""
    return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]


def edge_error(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean |∇x − ∇y| over both directions, summed: how far apart two batches' edges are (0 = the same outlines).
    The term the decoder fine-tuning loss adds (vae.decoder_loss), so it cannot judge that fine-tuning: SSIM does."""
    return sum((a - b).abs().mean().item() for a, b in zip(image_gradients(x.float()), image_gradients(y.float())))


def nearest_psnr(samples: torch.Tensor, reference: torch.Tensor, *, batch_size: int = 256,
                 reference_batch_size: int = 2048) -> torch.Tensor:
    """For each uint8 image in `samples` (n, C, H, W), the PSNR to the closest image in `reference` (N, C, H, W), in dB.

    A copy of a reference image scores ∞ (or above 100 dB), a near-copy 40 dB or more; a new image that merely looks
    real, far less. Squared distances as |a|² + |b|² − 2a·b (one matrix product) in float64: float32 would round a
    near-copy's tiny distance to 0 or below.
    """
    if samples.shape[1:] != reference.shape[1:]:
        raise ValueError(f"samples {tuple(samples.shape)} and reference {tuple(reference.shape)} differ in image shape")
    out = []
    for i in range(0, len(samples), batch_size):
        a = samples[i:i + batch_size].double().div(127.5).sub(1).flatten(1)
        nearest = torch.full((len(a),), torch.inf, dtype=torch.float64)
        for j in range(0, len(reference), reference_batch_size):  # in slices: ~200 MB at most, whatever its size
            b = reference[j:j + reference_batch_size].double().div(127.5).sub(1).flatten(1)
            squared = (a.square().sum(1, keepdim=True) + b.square().sum(1) - 2 * a @ b.T).clamp(min=0)  # |a − b|²
            nearest = torch.minimum(nearest, squared.min(1).values)
        out.append(10 * torch.log10(4 / (nearest / a.shape[1])).float())  # 10 log10(2² / MSE), range 2
    return torch.cat(out)


def ssim(x: torch.Tensor, y: torch.Tensor, *, data_range: float = 2.0, sigma: float = 1.5) -> torch.Tensor:
    """Structural similarity per image (Wang et al. 2004), for (N, C, H, W) images in [-1, 1] (data_range 2).

        SSIM = (2 μ_x μ_y + c1)(2 σ_xy + c2) / ((μ_x² + μ_y² + c1)(σ_x² + σ_y² + c2)),  c1 = (0.01 L)², c2 = (0.03 L)²

    Local means, variances and covariance use an 11x11 Gaussian window (σ 1.5, radius 5) over 'valid' positions
    only, averaged over positions and channels: skimage's structural_similarity(gaussian_weights=True,
    use_sample_covariance=False). Unlike PSNR it scores local structure (edges, contrast), not squared error.
    """
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"expected two (N, C, H, W) image batches of the same shape, got {tuple(x.shape)} "
                         f"and {tuple(y.shape)}")
    radius = int(3.5 * sigma + 0.5)  # skimage's truncate=3.5: radius 5 for σ 1.5, an 11x11 window
    if min(x.shape[-2:]) < 2 * radius + 1:
        raise ValueError(f"expected images at least {2 * radius + 1} pixels on a side for sigma={sigma}, "
                         f"got {tuple(x.shape[-2:])}")
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (offsets / sigma) ** 2)
    g = g / g.sum()  # (2r+1,) normalised 1-D Gaussian
    channels = x.shape[1]
    rows, cols = g.view(1, 1, -1, 1).expand(channels, 1, -1, -1), g.view(1, 1, 1, -1).expand(channels, 1, -1, -1)

    def local_mean(t: torch.Tensor) -> torch.Tensor:  # the 2-D Gaussian is separable: a column pass, then a row pass
        t = torch.nn.functional.conv2d(t, rows, groups=channels)  # (N, C, H-2r, W)
        return torch.nn.functional.conv2d(t, cols, groups=channels)  # (N, C, H-2r, W-2r)

    a, b = x.double(), y.double()
    mu_a, mu_b = local_mean(a), local_mean(b)
    var_a = local_mean(a * a) - mu_a**2  # σ_x²
    var_b = local_mean(b * b) - mu_b**2  # σ_y²
    cov = local_mean(a * b) - mu_a * mu_b  # σ_xy
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    ssim_map = (2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return ssim_map.flatten(1).mean(1).float()  # (N,)


def class_histogram(probs: torch.Tensor, num_classes: int | None = None) -> torch.Tensor:
    """How many images fall in each class, by the most probable class: (N, K) probabilities -> (K,) counts."""
    return torch.bincount(probs.argmax(-1), minlength=num_classes or probs.shape[-1])
