import functools
import math

import pytest
import torch

from sdlesson.train import Trainer, TrainConfig
from sdlesson.unet import count_parameters
from sdlesson.vae import VAE, DiagonalGaussian, VAEConfig, vae_loss


def tiny_vae_config(**overrides) -> VAEConfig:
    """A VAE small enough for a unit test: f = 4 · 2 = 8 with two levels of 8 and 16 channels."""
    kw = dict(block_channels=(8, 16), patch_size=4, norm_groups=4)
    return VAEConfig(**(kw | overrides))


@pytest.fixture
def tiny_vae():
    torch.manual_seed(0)
    return VAE(tiny_vae_config())


@pytest.mark.parametrize("overrides", [{}, dict(patch_size=1, block_channels=(8, 8, 8, 16)),
                                       dict(patch_size=2, block_channels=(8, 8, 16), mid_attention=False)])
@pytest.mark.parametrize("size", [64, 32])
def test_shapes_downsample_by_8_and_back(overrides, size):
    model = VAE(tiny_vae_config(**overrides))
    assert model.config.downsample_factor == 8
    x = torch.rand(2, 3, size, size) * 2 - 1
    posterior = model.encode(x)
    assert posterior.mean.shape == posterior.logvar.shape == (2, 4, size // 8, size // 8)
    assert model.decode(posterior.sample()).shape == x.shape
    recon, post = model(x, torch.Generator().manual_seed(0))
    assert recon.shape == x.shape and post.mean.shape == (2, 4, size // 8, size // 8)


def test_non_square_images_work(tiny_vae):
    assert tiny_vae.encode(torch.zeros(1, 3, 16, 40)).mean.shape == (1, 4, 2, 5)


def test_default_config_is_stable_diffusions_geometry():
    cfg = VAEConfig()
    assert cfg.downsample_factor == 8 and cfg.latent_channels == 4
    assert cfg.to_dict()["block_channels"] == cfg.block_channels
    x = torch.zeros(1, 3, 64, 64)
    latent = VAE(tiny_vae_config()).encode(x).mean
    assert x.numel() / latent.numel() == 48  # SD's compression: 8× per side, 3 channels to 4


def test_kl_matches_torch_distributions():
    torch.manual_seed(0)
    moments = torch.randn(3, 8, 2, 2) * 2
    posterior = DiagonalGaussian(moments)
    q = torch.distributions.Normal(moments[:, :4], torch.exp(0.5 * moments[:, 4:]))
    p = torch.distributions.Normal(torch.zeros(()), torch.ones(()))
    expected = torch.distributions.kl_divergence(q, p).flatten(1).sum(1)  # (B,)
    torch.testing.assert_close(posterior.kl(), expected)


def test_kl_is_zero_for_the_standard_normal():
    posterior = DiagonalGaussian(torch.zeros(2, 8, 3, 3))  # mean 0, log σ² = 0
    torch.testing.assert_close(posterior.kl(), torch.zeros(2))


def test_logvar_is_clamped_like_stable_diffusion():
    moments = torch.cat([torch.zeros(1, 4, 1, 1), torch.tensor([-100.0, 100.0, 0.0, 5.0]).view(1, 4, 1, 1)], 1)
    posterior = DiagonalGaussian(moments)
    assert posterior.logvar.flatten().tolist() == [-30.0, 20.0, 0.0, 5.0]
    torch.testing.assert_close(posterior.var, posterior.std.square())


def test_sample_has_the_posteriors_statistics_and_mode_is_the_mean():
    mean = torch.full((1, 4, 100, 100), 2.0)
    logvar = torch.full_like(mean, math.log(0.25))  # σ = 0.5
    posterior = DiagonalGaussian(torch.cat([mean, logvar], 1))
    z = posterior.sample(torch.Generator().manual_seed(0))
    assert z.mean().item() == pytest.approx(2.0, abs=0.01)
    assert z.std().item() == pytest.approx(0.5, abs=0.01)
    assert torch.equal(posterior.mode(), posterior.mean)
    again = posterior.sample(torch.Generator().manual_seed(0))
    assert torch.equal(z, again)  # a seeded generator gives the same draw


def test_encode_rejects_sides_that_are_not_multiples_of_8(tiny_vae):
    with pytest.raises(ValueError, match=r"height and width must be multiples of 8.*\(60, 64\)"):
        tiny_vae.encode(torch.zeros(1, 3, 60, 64))


@pytest.mark.parametrize("shape", [(3, 64, 64), (1, 1, 64, 64), (1, 4, 64, 64)])
def test_encode_rejects_wrong_rank_or_channels(tiny_vae, shape):
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 3, H, W\)"):
        tiny_vae.encode(torch.zeros(shape))


@pytest.mark.parametrize("shape", [(1, 3, 8, 8), (4, 8, 8)])
def test_decode_rejects_latents_with_the_wrong_channels(tiny_vae, shape):
    with pytest.raises(ValueError, match=r"expected latents of shape \(B, 4, h, w\)"):
        tiny_vae.decode(torch.zeros(shape))


@pytest.mark.parametrize("overrides, message", [
    (dict(norm_groups=3), "divisible by norm_groups"),
    (dict(patch_size=3), "patch_size must be a power of two"),
    (dict(layers_per_block=0), "layers_per_block must be at least 1"),
    (dict(sample_size=60), "multiple of the downsampling factor"),
])
def test_config_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_vae_config(**overrides)


def test_loss_is_reconstruction_plus_weighted_kl(tiny_vae):
    torch.manual_seed(0)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    recon, posterior = tiny_vae(x, torch.Generator().manual_seed(1))
    for kind, err in [("l1", (recon - x).abs()), ("mse", (recon - x).square())]:
        expected = err.mean() + 0.5 * posterior.kl().mean() / (3 * 16 * 16)
        loss = vae_loss(tiny_vae, (x,), torch.Generator().manual_seed(1), kl_weight=0.5, reconstruction=kind)
        torch.testing.assert_close(loss, expected)
    with pytest.raises(ValueError, match="reconstruction must be"):
        vae_loss(tiny_vae, (x,), None, reconstruction="lpips")


def test_loss_accepts_uint8_images(tiny_vae):
    pixels = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    as_float = vae_loss(tiny_vae, (pixels.float() / 127.5 - 1,), torch.Generator().manual_seed(0))
    torch.testing.assert_close(vae_loss(tiny_vae, (pixels,), torch.Generator().manual_seed(0)), as_float)


def test_training_reduces_the_loss_on_one_batch():
    torch.manual_seed(0)
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    x = torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1)  # a little smoothness to learn
    model = VAE(tiny_vae_config())
    assert count_parameters(model) > 0
    trainer = Trainer(model, functools.partial(vae_loss, kl_weight=1e-6), x,
                      TrainConfig(steps=80, batch_size=4, lr=3e-3, warmup_steps=5), device="cpu", progress=False)
    history = trainer.fit()
    assert sum(history[-5:]) / 5 < 0.5 * sum(history[:5]) / 5


def test_decoder_loss_trains_the_decoder_alone(tiny_vae):
    from sdlesson.vae import decoder_loss, image_gradients

    images = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    x = images.float() / 127.5 - 1
    with torch.no_grad():
        expected = (tiny_vae.decode(tiny_vae.encode(x).mode()) - x).square().mean()
    assert torch.allclose(decoder_loss(tiny_vae, (images,)), expected, atol=1e-6)
    # edges: |∇x − ∇x̂| on horizontal and vertical neighbour differences
    dx, dy = image_gradients(x)
    assert dx.shape == (4, 3, 64, 63) and torch.equal(dy[0, 0, 0], x[0, 0, 1] - x[0, 0, 0])
    assert decoder_loss(tiny_vae, (images,), edge_weight=1.0) > decoder_loss(tiny_vae, (images,))
    tiny_vae.encoder.requires_grad_(False)
    encoder = [p.clone() for p in tiny_vae.encoder.parameters()]
    trainer = Trainer(tiny_vae, decoder_loss, images, TrainConfig(steps=3, batch_size=2, warmup_steps=1),
                      device="cpu", progress=False)
    trainer.fit()
    assert all(torch.equal(a, b) for a, b in zip(encoder, tiny_vae.encoder.parameters()))
    fresh = VAE(tiny_vae_config()).decoder.parameters()
    assert not all(torch.equal(a, b) for a, b in zip(fresh, tiny_vae.decoder.parameters()))
