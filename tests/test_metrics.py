import numpy as np
import pytest
import scipy.linalg
import torch

from sdlesson.metrics import class_histogram, frechet_distance, psnr, ssim


def test_frechet_distance_matches_scipy_sqrtm():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(500, 6, generator=g, dtype=torch.float64) @ torch.randn(6, 6, generator=g, dtype=torch.float64)
    b = torch.randn(400, 6, generator=g, dtype=torch.float64) * 2 + 0.5
    mu_a, mu_b = a.mean(0).numpy(), b.mean(0).numpy()
    s_a, s_b = np.cov(a.numpy(), rowvar=False), np.cov(b.numpy(), rowvar=False)
    expected = ((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * scipy.linalg.sqrtm(s_a @ s_b).real)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)


def test_frechet_distance_of_a_scaled_and_shifted_set_has_its_closed_form():
    """b = c·a + s: Σ_b = c² Σ_a, (Σ_a Σ_b)^½ = c Σ_a, so FD = |(1 - c) μ_a - s|² + (1 - c)² tr Σ_a exactly."""
    x = torch.randn(300, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * torch.tensor(
        [1.0, 2.0, 0.5, 3.0], dtype=torch.float64) + 0.7
    mu, trace = x.mean(0), torch.cov(x.T).trace()
    for c, s in ((1.0, torch.tensor([3.0, 0, 0, 0])), (2.0, torch.zeros(4)), (0.5, torch.tensor([1.0, -2, 0, 1]))):
        s = s.double()
        expected = ((1 - c) * mu - s).square().sum() + (1 - c) ** 2 * trace
        assert frechet_distance(x, c * x + s) == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match="same D"):
        frechet_distance(x, x[:, :3])


def test_psnr_definition():
    x = torch.zeros(2, 3, 4, 4)
    y = x + 0.1  # MSE = 0.01, range 2: 10 log10(4 / 0.01) = 26.02 dB
    torch.testing.assert_close(psnr(x, y), torch.full((2,), 10 * np.log10(400.0), dtype=torch.float32))


def test_class_histogram():
    probs = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1]])
    assert class_histogram(probs).tolist() == [2, 1, 0]


def test_ssim_matches_skimage():
    from skimage.metrics import structural_similarity
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 32, 32, generator=g) * 2 - 1
    y = (x + 0.3 * torch.randn(3, 3, 32, 32, generator=g)).clamp(-1, 1)
    expected = [structural_similarity(x[i].numpy(), y[i].numpy(), data_range=2.0, channel_axis=0,
                                      gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
                for i in range(3)]
    torch.testing.assert_close(ssim(x, y), torch.tensor(expected, dtype=torch.float32), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ssim(x, x), torch.ones(3))
    with pytest.raises(ValueError, match="same shape"):
        ssim(x, y[:, :1])


def test_edge_error_is_the_mean_gradient_difference():
    from sdlesson.metrics import edge_error, image_gradients

    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(2, 3, 8, 8, generator=g), torch.rand(2, 3, 8, 8, generator=g)
    dx = (torch.diff(x, dim=-1) - torch.diff(y, dim=-1)).abs().mean()
    dy = (torch.diff(x, dim=-2) - torch.diff(y, dim=-2)).abs().mean()
    assert edge_error(x, y) == pytest.approx((dx + dy).item(), rel=1e-6)
    assert edge_error(x, x + 0.25) < 1e-6  # a constant shift moves no edge (float rounding aside)
    assert all(torch.equal(a, b) for a, b in zip(image_gradients(x), (torch.diff(x, dim=-1), torch.diff(x, dim=-2))))


def test_nearest_psnr_finds_the_closest_reference_exactly():
    from sdlesson.metrics import nearest_psnr

    g = torch.Generator().manual_seed(0)
    reference = torch.randint(0, 256, (50, 3, 8, 8), generator=g, dtype=torch.uint8)
    near = reference[7].clone()
    near[0, 0, 0] ^= 1  # one value off by 1: a near-copy
    samples = torch.stack([reference[3], near, torch.randint(0, 256, (3, 8, 8), generator=g, dtype=torch.uint8)])
    got = nearest_psnr(samples, reference, batch_size=2, reference_batch_size=16)  # several slices of each
    a, b = samples.double().div(127.5).sub(1).flatten(1), reference.double().div(127.5).sub(1).flatten(1)
    brute = 10 * torch.log10(4 / (a[:, None] - b[None]).square().mean(-1).min(1).values)  # every pair, written out
    assert got[0] > 100  # an exact copy: infinite, or rounding-level
    assert got[1:].tolist() == pytest.approx(brute[1:].tolist(), abs=1e-3)
    with pytest.raises(ValueError, match="image shape"):
        nearest_psnr(samples[:, :1], reference)
