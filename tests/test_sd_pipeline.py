"""The course's text-to-image pipeline runs Stable Diffusion v1 and gives diffusers' StableDiffusionPipeline's image.

Same tiny random weights (a snapshot written by diffusers and transformers), same prompt and negative prompt, same
starting latents, DDIM configured as SD's (leading spacing, offset 1, ᾱ_0 at the last step): same image.
"""

from __future__ import annotations

import pytest
import torch

from sd_snapshot import reference_models, write_snapshot
from sdlesson.generate import TextToImage

TOLERANCE = 1e-4  # max abs difference of the images in [0, 1], fp32
PROMPT, NEGATIVE = "a photograph of an astronaut riding a horse", "blurry, low quality"


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    from diffusers import DDIMScheduler, DDPMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    models = reference_models(seed=3)
    root = write_snapshot(tmp_path_factory.mktemp("sd"), models)
    unet, vae, text = models
    scheduler = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                     steps_offset=1, timestep_spacing="leading")
    tokenizer = CLIPTokenizer.from_pretrained(str(root / "tokenizer"), model_max_length=77)
    make = lambda sched: StableDiffusionPipeline(  # noqa: E731
        vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=sched, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    theirs = {"ddim": make(DDIMScheduler(**scheduler, set_alpha_to_one=False)),
              "ddpm": make(DDPMScheduler(**scheduler))}
    for p in theirs.values():
        p.set_progress_bar_config(disable=True)
    return TextToImage.from_stable_diffusion(root), theirs


def starting_latents(seed=0):
    return torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("guidance", [7.5, 1.0])
def test_ddim_image_equals_diffusers(pipelines, guidance):
    ours, theirs = pipelines
    latents = starting_latents()
    mine = ours([PROMPT, "a cat"], negative_prompt=NEGATIVE, num_steps=6, guidance_scale=guidance, latents=latents,
                output_type="float")
    ref = theirs["ddim"]([PROMPT, "a cat"], negative_prompt=[NEGATIVE] * 2, num_inference_steps=6,
                         guidance_scale=guidance, latents=latents, output_type="np", height=32, width=32).images
    ref = torch.from_numpy(ref).permute(0, 3, 1, 2)
    assert mine.shape == ref.shape == (2, 3, 32, 32)
    assert (mine - ref).abs().max() <= TOLERANCE


def test_ddpm_image_equals_diffusers(pipelines):
    """DDPM draws fresh noise each step: both pipelines draw it from generators seeded alike."""
    ours, theirs = pipelines
    latents = starting_latents(1)
    mine = ours([PROMPT], num_steps=4, latents=latents[:1], seed=5, sampler="ddpm", output_type="float")
    ref = theirs["ddpm"]([PROMPT], num_inference_steps=4, latents=latents[:1], output_type="np", height=32, width=32,
                         generator=torch.Generator().manual_seed(5)).images
    assert (mine - torch.from_numpy(ref).permute(0, 3, 1, 2)).abs().max() <= TOLERANCE


def test_sd_defaults_are_sds(pipelines):
    ours, _ = pipelines
    assert ours.defaults == {"num_steps": 50, "guidance_scale": 7.5}
    assert ours.latent_scale == 0.18215 and ours.schedule.name == "scaled_linear"
    assert ours.image_size == 32  # the tiny snapshot: 16×16 latents × f = 2
    with pytest.raises(ValueError, match="multiples of 2"):
        ours(PROMPT, num_images=1, num_steps=1, height=33)


def test_generate_command_with_sd_weights(tmp_path, capsys):
    from PIL import Image

    from sdlesson.cli import main

    folder = write_snapshot(tmp_path / "sd", reference_models())
    out = tmp_path / "sd.png"
    main(["generate", "a photo of a cat", "--model", str(folder), "-n", "1", "--num-steps", "2", "--height", "64",
          "--width", "128", "--out", str(out)])
    assert Image.open(out).size == (128, 64)
    assert "1 image(s) of 64×128" in capsys.readouterr().out
