import numpy as np
import torch

from sdlesson.schedule import NoiseSchedule
from sdlesson.viz import image_grid, forward_diffusion_explorer, show_images, to_png


def test_image_grid_places_each_image():
    images = torch.stack([torch.full((1, 2, 2), v) for v in (-1.0, 1.0, -1.0)])
    grid = image_grid(images, nrow=2, pad=1)
    assert grid.shape == (7, 7)
    assert grid[1, 1] == 0 and grid[1, 4] == 255 and grid[4, 1] == 0 and grid[4, 4] == 255  # last cell is padding
    rgb = image_grid(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), nrow=2)
    assert rgb.shape == (6, 11, 3)


def test_show_images_and_png():
    ax = show_images(torch.rand(4, 3, 8, 8) * 2 - 1, nrow=2, title="x")
    assert ax.get_title() == "x"
    png = to_png(torch.zeros(1, 1, 4, 4), scale=2)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_forward_diffusion_explorer_updates_headlessly():
    image = torch.zeros(1, 1, 8, 8)
    schedules = {name: NoiseSchedule(name) for name in ("linear", "cosine")}
    app = forward_diffusion_explorer(image, schedules, seed=0)
    app.controls["t"].value = 0
    clean_png, clean = app.view.value, app.image.copy()
    assert "t = 0" in app.caption
    app.controls["t"].value = 999
    assert app.view.value != clean_png and "t = 999" in app.caption
    assert np.abs(app.image.astype(int) - 128).mean() > np.abs(clean.astype(int) - 128).mean()
    # The shown image is the closed form with the widget's fixed noise.
    noise = torch.randn(image.shape, generator=torch.Generator().manual_seed(0))
    app.controls["schedule"].value = "cosine"
    expected = image_grid(schedules["cosine"].add_noise(image, noise, torch.tensor([999])))
    np.testing.assert_array_equal(app.image, expected)


def test_sampling_explorer_resamples_when_a_control_moves(tiny_unet):
    from sdlesson.samplers import DDIMSampler, sample
    from sdlesson.viz import sampling_explorer

    schedule = NoiseSchedule("linear")
    app = sampling_explorer(tiny_unet, schedule, (2, 1, 8, 8), steps=(1, 3), nrow=2)
    assert app.controls["steps"].value == 1 and "DDIM, 1 steps" in app.caption
    app.controls["steps"].value = 3
    assert "DDIM, 3 steps" in app.caption
    expected = sample(tiny_unet, DDIMSampler(schedule), (2, 1, 8, 8), num_steps=3,
                      generator=torch.Generator().manual_seed(0), progress=False)
    np.testing.assert_array_equal(app.image, image_grid(expected, nrow=2))
    before = app.image.copy()
    app.controls["seed"].value = 1
    assert not np.array_equal(app.image, before)
    app.controls["sampler"].value = "ddpm"
    assert "DDPM, 3 steps" in app.caption


def test_interactive_image_also_renders_as_a_picture():
    app = forward_diffusion_explorer(torch.zeros(1, 1, 4, 4), {"linear": NoiseSchedule("linear")})
    bundle = app._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle and "image/png" in bundle
    assert "t = 250" in bundle["text/plain"]


def test_cost_explorer_reports_the_ratio_for_the_chosen_unet():
    from sdlesson.unet import UNetConfig
    from sdlesson.viz import cost_explorer

    base = UNetConfig(in_channels=4, sample_size=8, block_channels=(16, 32), attention_levels=(False, False),
                      layers_per_block=1, norm_groups=8)
    app = cost_explorer(base)
    assert "ratio" in app.caption and app.image.ndim == 3
    app.controls["width"].value = 32
    no_attention = float(app.caption.split("ratio ")[1].split("×")[0].replace(",", ""))
    assert no_attention > 48  # conv_in/conv_out at 48×, other layers 64×, the middle's attention 64²×
    app.controls["attention"].value = (0,)
    with_attention = float(app.caption.split("ratio ")[1].split("×")[0].replace(",", ""))
    assert with_attention > no_attention


def test_vae_explorer_shows_original_reconstruction_and_error():
    from sdlesson.vae import VAE, VAEConfig
    from sdlesson.viz import vae_explorer

    torch.manual_seed(0)
    vaes = {"a": VAE(VAEConfig(block_channels=(8, 16), norm_groups=4)), "b": VAE(VAEConfig(block_channels=(8, 16), norm_groups=4))}
    images = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    app = vae_explorer(vaes, images)
    assert app.image.shape == (64 + 4, 3 * 64 + 8, 3) and "scene 0, a, latent noise 0.00" in app.caption
    np.testing.assert_array_equal(app.image[2:66, 2:66], images[0].permute(1, 2, 0).numpy())  # the original, first
    before = app.image.copy()
    app.controls["decoder"].value = "b"
    assert not np.array_equal(app.image, before) and "scene 0, b" in app.caption
    app.controls["noise"].value = 0.5
    assert "latent noise 0.50" in app.caption
    app.controls["index"].value = 2
    np.testing.assert_array_equal(app.image[2:66, 2:66], images[2].permute(1, 2, 0).numpy())
