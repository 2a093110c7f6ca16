import numpy as np
import torch

from sdlesson.schedule import NoiseSchedule
from sdlesson.viz import image_grid, forward_diffusion_explorer, show_images, to_png


def test_image_grid_places_each_image():
    images = torch.stack([torch.full((1, 2, 2), v) for v in (-1.0, 1.0, -1.0)])
    grid = image_grid(images, nrow=2, pad=1)
    assert grid.shape == (7, 7)
    assert grid[1, 1] == 0 and grid[1, 4] == 255 and grid[4, 1] == 0 and grid[4, 4] == 128  # last cell is padding
    assert grid[0, 0] == grid[3, 1] == 128  # a grey frame, visible on white images and on black ones
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
    clean_png, clean = app.png, app.image.copy()
    assert "t = 0" in app.caption
    app.controls["t"].value = 999
    assert app.png != clean_png and "t = 999" in app.caption
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


def test_interactive_image_shows_its_picture_as_a_plain_output_updated_in_place():
    # The picture must outlive the widget models (a saved notebook opened again), so it is an image/png output
    # that each change replaces through its display handle, shown at its own size (capped at max_width).
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output

    InteractiveShell.instance()
    app = forward_diffusion_explorer(torch.zeros(1, 1, 66, 66), {"linear": NoiseSchedule("linear")})
    with capture_output() as shown:
        app._ipython_display_()
        app.controls["t"].value = 999
    widget, picture, caption, new_picture, new_caption = shown.outputs
    assert "application/vnd.jupyter.widget-view+json" in widget.data and "image/png" not in widget.data
    assert picture.metadata["image/png"]["width"] == app.image.shape[1] * 4 == 272 and not picture.update
    assert "t = 250" in caption.data["text/plain"]
    assert new_picture.update and new_picture.transient == picture.transient
    assert new_picture.data["image/png"] != picture.data["image/png"]
    assert new_caption.update and new_caption.transient == caption.transient
    assert "t = 999" in new_caption.data["text/plain"]


def test_text_to_image_explorer_passes_its_controls_and_options_to_the_pipeline():
    """07's prompt box: a negative prompt box, the pipeline's own defaults, and fixed options (SD's size) per call."""
    from sdlesson.viz import text_to_image_explorer

    calls = []

    class Pipe:
        defaults = {"num_steps": 50, "guidance_scale": 7.5}

        def __call__(self, prompt, **kw):
            calls.append(dict(prompt=prompt, **kw))
            if prompt == "bad":
                raise ValueError("unknown word 'bad'")
            return torch.full((kw["num_images"], 3, 8, 8), len(calls) % 256, dtype=torch.uint8)

    app = text_to_image_explorer(Pipe(), prompt="a lighthouse", negative_prompt="blurry", num_images=1,
                                 max_guidance=15, scale=1, height=8, width=8)
    assert calls[-1] == dict(prompt="a lighthouse", num_images=1, num_steps=50, guidance_scale=7.5, seed=0,
                             negative_prompt="blurry", height=8, width=8)
    assert "50 DDIM steps, guidance 7.5" in app.caption and app.image.shape == (8, 8, 3)
    app.controls["negative"].value = ""  # an empty box: no negative prompt, the empty one
    assert calls[-1]["negative_prompt"] is None
    first = app.png
    app.controls["seed"].value = 3
    assert calls[-1]["seed"] == 3 and app.png != first
    app.controls["prompt"].value = "bad"  # the error is shown, the last picture kept
    assert app.caption.startswith("⚠ unknown word") and app.png == to_png(app.image, scale=1)
    plain = text_to_image_explorer(Pipe(), num_images=2)  # no negative box, no options: the course's call
    assert "negative" not in plain.controls and set(calls[-1]) == {"prompt", "num_images", "num_steps",
                                                                    "guidance_scale", "seed"}


def test_img2img_explorer_redraws_with_the_strength_and_the_prompt():
    from conftest import tiny_unet_config
    from sdlesson.generate import TextToImage
    from sdlesson.text import CLIP, CLIPConfig
    from sdlesson.unet import UNet
    from sdlesson.vae import VAE, VAEConfig
    from sdlesson.viz import img2img_explorer

    torch.manual_seed(0)
    pipe = TextToImage(CLIP(CLIPConfig(width=16, layers=1, heads=2, image_width=8, embed_dim=8)),
                       UNet(tiny_unet_config(in_channels=4, context_dim=16)),
                       VAE(VAEConfig(block_channels=(8, 16), norm_groups=4, patch_size=4)), latent_scale=0.5)
    init = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8)
    prompts = ["a small cat face in the top left on a blue background",
               "a large star in the center on a pink background"]
    app = img2img_explorer(pipe, init, prompts, strengths=(0.25, 1.0), num_images=2, num_steps=4)
    assert app.controls["strength"].value == 1.0 and "strength 1:" in app.caption and "4 steps back" in app.caption
    np.testing.assert_array_equal(app.image[2:66, 2:66], init[0].permute(1, 2, 0).numpy())  # the init, first
    expected = pipe(prompts[0], num_images=2, init_image=init, strength=1.0, num_steps=4, seed=0)
    np.testing.assert_array_equal(app.image[2:66, 68:132], expected[0].permute(1, 2, 0).numpy())
    before = app.png
    app.controls["strength"].value = 0.25
    assert app.png != before and "strength 0.25:" in app.caption and "1 steps back" in app.caption
    weak = app.image.copy()
    app.controls["prompt"].value = prompts[1]
    assert prompts[1] in app.caption and not np.array_equal(app.image, weak)
