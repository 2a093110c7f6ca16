import torch

from sdlesson.latents import encode_images, latent_scale
from sdlesson.vae import VAE, VAEConfig


def tiny_vae():
    torch.manual_seed(0)
    return VAE(VAEConfig(block_channels=(8, 16), norm_groups=4, sample_size=16, patch_size=4))


def test_encode_images_gives_the_posterior_mode_in_batches():
    vae = tiny_vae()
    images = torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8)
    latents = encode_images(vae, images, batch_size=2)
    assert latents.shape == (5, 4, 2, 2)
    with torch.no_grad():
        expected = vae.encode(images.float() / 127.5 - 1).mode()
    torch.testing.assert_close(latents, expected)


def test_latent_scale_makes_the_latents_unit_spread():
    vae = tiny_vae()
    images = torch.rand(32, 3, 16, 16) * 2 - 1
    scale = latent_scale(vae, images)
    assert abs((encode_images(vae, images) * scale).std().item() - 1) < 1e-5
