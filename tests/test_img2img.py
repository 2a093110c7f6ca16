"""img2img (SDEdit) and inpainting in the course's one pipeline: parity with diffusers' StableDiffusionImg2ImgPipeline
and StableDiffusionInpaintPipeline (run with an ordinary 4-channel UNet) on tiny random SD weights, and the checks.

Same noise without patching: both pipelines draw from one CPU generator seeded alike, in the same order — the VAE
posterior's sample of the init image first, then the noise ε added to it, then (DDPM) each step's noise.
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
    from diffusers import (DDIMScheduler, DDPMScheduler, StableDiffusionImg2ImgPipeline,
                           StableDiffusionInpaintPipeline)
    from transformers import CLIPTokenizer

    models = reference_models(seed=3)
    root = write_snapshot(tmp_path_factory.mktemp("sd"), models)
    unet, vae, text = models
    scheduler = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                     steps_offset=1, timestep_spacing="leading")
    tokenizer = CLIPTokenizer.from_pretrained(str(root / "tokenizer"), model_max_length=77)
    parts = dict(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, safety_checker=None,
                 feature_extractor=None, requires_safety_checker=False)
    ddim = lambda: DDIMScheduler(**scheduler, set_alpha_to_one=False)  # noqa: E731 - SD's DDIM
    theirs = {
        "img2img": StableDiffusionImg2ImgPipeline(**parts, scheduler=ddim()),
        "img2img ddpm": StableDiffusionImg2ImgPipeline(**parts, scheduler=DDPMScheduler(**scheduler)),
        "inpaint": StableDiffusionInpaintPipeline(**parts, scheduler=ddim()),
    }
    for p in theirs.values():
        p.set_progress_bar_config(disable=True)
    return TextToImage.from_stable_diffusion(root), theirs


def init_images(n=1, seed=0):
    """uint8 (n, 3, 32, 32): smooth colour fields with an edge, something the VAE can hold."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g)
    img = torch.nn.functional.interpolate(low, size=(32, 32), mode="bilinear", align_corners=False)
    img[..., 12:20, 8:24] = 1 - img[..., 12:20, 8:24]
    return (img * 255).round().to(torch.uint8)


def box_mask(top=5, left=7, bottom=21, right=26):
    """White (1) = repaint; edges off the VAE's 2-pixel grid, so the downsampling convention matters."""
    mask = torch.zeros(1, 1, 32, 32, dtype=torch.uint8)
    mask[..., top:bottom, left:right] = 255
    return mask


def as_theirs(images_uint8):
    return images_uint8.float() / 255  # diffusers reads float tensors in [0, 1] and maps them to [-1, 1]


def nchw(ref):
    return torch.from_numpy(ref).permute(0, 3, 1, 2)


@pytest.mark.parametrize("strength, guidance", [(0.6, 7.5), (1.0, 7.5), (0.35, 1.0)])
def test_img2img_equals_diffusers(pipelines, strength, guidance):
    ours, theirs = pipelines
    image = init_images(2)
    mine = ours([PROMPT, "a cat"], negative_prompt=NEGATIVE, init_image=image, strength=strength, num_steps=10,
                guidance_scale=guidance, seed=4, output_type="float")
    ref = theirs["img2img"]([PROMPT, "a cat"], negative_prompt=[NEGATIVE] * 2, image=as_theirs(image),
                            strength=strength, num_inference_steps=10, guidance_scale=guidance, output_type="np",
                            generator=torch.Generator().manual_seed(4)).images
    assert mine.shape == (2, 3, 32, 32)
    assert (mine - nchw(ref)).abs().max() <= TOLERANCE


def test_img2img_ddpm_equals_diffusers(pipelines):
    """DDPM's steps draw noise too: after the posterior sample and ε, from the same generator."""
    ours, theirs = pipelines
    image = init_images(1, seed=1)
    mine = ours(PROMPT, num_images=1, init_image=image, strength=0.5, num_steps=8, seed=7, sampler="ddpm",
                output_type="float")
    ref = theirs["img2img ddpm"](PROMPT, image=as_theirs(image), strength=0.5, num_inference_steps=8, output_type="np",
                                 generator=torch.Generator().manual_seed(7)).images
    assert (mine - nchw(ref)).abs().max() <= TOLERANCE


@pytest.mark.parametrize("name, karras", [("heun", False), ("dpmpp_2m", True), ("euler", False)])
def test_img2img_with_sigma_space_samplers_equals_diffusers(pipelines, name, karras):
    """Starting mid-plan: Heun's list holds each level twice (start = k · order), DPM++ starts first order."""
    import diffusers

    ours, theirs = pipelines
    cls = {"heun": "HeunDiscreteScheduler", "dpmpp_2m": "DPMSolverMultistepScheduler",
           "euler": "EulerDiscreteScheduler"}[name]
    scheduler = getattr(diffusers, cls)(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                        use_karras_sigmas=karras)  # ours: linspace spacing, as diffusers' default
    pipe = diffusers.StableDiffusionImg2ImgPipeline(**(theirs["img2img"].components | {"scheduler": scheduler}))
    pipe.set_progress_bar_config(disable=True)
    image = init_images(1, seed=2)
    mine = ours(PROMPT, num_images=1, init_image=image, strength=0.6, num_steps=10, seed=5,
                sampler=ours.make_sampler(name, karras=karras), output_type="float")
    ref = pipe(PROMPT, image=as_theirs(image), strength=0.6, num_inference_steps=10, output_type="np",
               generator=torch.Generator().manual_seed(5)).images
    assert (mine - nchw(ref)).abs().max() <= TOLERANCE


@pytest.mark.parametrize("strength", [1.0, 0.7])
def test_inpainting_equals_diffusers_with_a_four_channel_unet(pipelines, strength):
    ours, theirs = pipelines
    image, mask = init_images(1, seed=2), box_mask()
    mine = ours([PROMPT, "a cat"], negative_prompt=NEGATIVE, init_image=image, mask=mask, strength=strength,
                num_steps=10, seed=3, output_type="float")
    ref = theirs["inpaint"]([PROMPT, "a cat"], negative_prompt=[NEGATIVE] * 2, image=as_theirs(image),
                            mask_image=mask.float() / 255, strength=strength, num_inference_steps=10, height=32,
                            width=32, output_type="np", generator=torch.Generator().manual_seed(3)).images
    assert (mine - nchw(ref)).abs().max() <= TOLERANCE


def test_inpainting_keeps_the_known_latents_exactly(pipelines, monkeypatch):
    """Outside the mask the final latents are the init image's own (its posterior draw, the generator's first):
    what decodes there is the VAE's round trip of the init image. Inside, the prompt's."""
    ours, _ = pipelines
    image, mask = init_images(1, seed=2), box_mask()
    final = []
    decode = ours.decode
    monkeypatch.setattr(ours, "decode", lambda z, output_type="uint8": final.append(z) or decode(z, output_type))
    ours(PROMPT, num_images=1, init_image=image, mask=mask, num_steps=4, seed=3)
    z0 = ours.encode_image(image, generator=torch.Generator().manual_seed(3))
    keep = torch.nn.functional.interpolate(mask.float(), size=(16, 16), mode="nearest") == 0  # (1, 1, 16, 16)
    keep = keep.expand_as(z0)
    assert torch.equal(final[0][keep], z0[keep])
    assert (final[0][~keep] - z0[~keep]).abs().max() > 0.1


def test_callback_sees_each_step_and_its_clean_estimate(pipelines):
    ours, _ = pipelines
    seen = []
    image = init_images(1)
    out = ours(PROMPT, num_images=1, init_image=image, strength=0.5, num_steps=8, seed=0,
               callback=lambda i, t, x, x0: seen.append((i, t, x.clone(), x0.clone())))
    sampler = ours.make_sampler("ddim")
    sampler.set_timesteps(8)
    assert [(i, t) for i, t, *_ in seen] == list(enumerate(sampler.timesteps[4:].tolist()))  # int(8 · 0.5) = 4 steps
    i, t, x, x0 = seen[-1]
    a = ours.schedule.alphas_cumprod[t]
    assert x0.shape == x.shape == (1, 4, 16, 16)
    eps = (x - a.sqrt() * x0) / (1 - a).sqrt()  # x̂_0 and x_t imply the ε̂ the UNet gave
    assert torch.isfinite(eps).all() and out.shape == (1, 3, 32, 32)


# --- the command line: every new input checked before any model loads ----------------------------------------------

SCENE_PROMPT = "a large dog face in the center on a blue background"


@pytest.fixture
def files(tmp_path):
    from PIL import Image

    from sdlesson.scenes import make_scenes

    scene = make_scenes(1, seed=0)[0][0].permute(1, 2, 0).numpy()  # (64, 64, 3) uint8
    Image.fromarray(scene).resize((256, 256), Image.NEAREST).save(tmp_path / "zoomed.png")  # as `generate` writes
    Image.fromarray(scene).save(tmp_path / "scene.png")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    mask.save(tmp_path / "mask.png")
    Image.new("L", (32, 32), 255).save(tmp_path / "small_mask.png")
    Image.new("RGB", (100, 50)).save(tmp_path / "wide.png")
    (tmp_path / "notes.png").write_text("not an image")
    return tmp_path


CLI_CASES = [  # (arguments after the prompt, with {d} the folder of `files`; message fragment)
    (["--strength", "0.5"], "--strength applies to img2img and inpainting: give --init-image PATH too"),
    (["--mask", "{d}/mask.png"], "--mask applies to img2img and inpainting"),
    (["--init-image", "{d}/scene.png", "--strength", "0"], "--strength must be in (0, 1]"),
    (["--init-image", "{d}/scene.png", "--strength", "1.5"], "--strength must be in (0, 1]"),
    (["--init-image", "{d}/scene.png", "--strength", "nan"], "--strength must be in (0, 1]"),
    (["--init-image", "{d}/scene.png", "--strength", "0.01"], "leaves no step to run"),
    (["--init-image", "{d}/missing.png"], "--init-image: cannot read"),
    (["--init-image", "{d}/notes.png"], "--init-image: cannot read"),
    (["--init-image", "{d}/scene.png", "--mask", "{d}/notes.png"], "--mask: cannot read"),
    (["--init-image", "{d}/scene.png", "--mask", "{d}/small_mask.png"],
     "--mask is 32×32 but --init-image is 64×64: they must be the same size"),
    (["--init-image", "{d}/wide.png"], "--init-image is 100×50, another shape than the 64×64 output"),
    (["--sampler", "lms"], "invalid choice: 'lms'"),
    (["--karras"], "--karras does not apply to --sampler ddim"),
]


@pytest.mark.parametrize("args, fragment", CLI_CASES, ids=[c[1][:40] for c in CLI_CASES])
def test_generate_command_checks_img2img_arguments_before_loading_models(files, args, fragment, capsys, monkeypatch):
    from sdlesson.cli import main

    monkeypatch.setattr(TextToImage, "from_pretrained",
                        lambda *a, **kw: pytest.fail("models loaded despite bad arguments"))
    with pytest.raises(SystemExit) as info:
        main(["generate", SCENE_PROMPT, *(a.format(d=files) for a in args), "--out", str(files / "out.png")])
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert fragment in err and err.count("\n") == 1 and "Traceback" not in err, err


def test_generate_command_inpaints_a_zoomed_png(files, monkeypatch, capsys):
    """A PNG the command wrote at --zoom 4 comes back pixel for pixel (area averaging), and the mask reaches the
    pipeline binarised, white = repaint."""
    from PIL import Image

    from sdlesson.cli import main
    from sdlesson.scenes import make_scenes

    got = {}

    class Recorder:
        def __call__(self, prompt, **kw):
            got.update(kw)
            return torch.zeros(kw["num_images"], 3, 64, 64, dtype=torch.uint8)

    monkeypatch.setattr(TextToImage, "from_pretrained", classmethod(lambda cls, *a, **kw: Recorder()))
    zoomed_mask = Image.open(files / "mask.png").resize((256, 256), Image.NEAREST)
    zoomed_mask.save(files / "zoomed_mask.png")  # the mask must have the init image's size
    main(["generate", SCENE_PROMPT, "--init-image", str(files / "zoomed.png"), "--mask", str(files / "zoomed_mask.png"),
          "--strength", "0.75", "-n", "2", "--sampler", "ddpm", "--out", str(files / "out.png")])
    assert torch.equal(got["init_image"], make_scenes(1, seed=0)[0])  # (1, 3, 64, 64) uint8, the scene itself
    assert got["mask"].shape == (1, 1, 64, 64) and set(got["mask"].unique().tolist()) == {0, 255}
    assert got["mask"][0, 0, 16:48, 16:48].eq(255).all() and got["mask"].eq(255).sum() == 32 * 32
    assert got["strength"] == 0.75 and type(got["sampler"]).__name__ == "DDPMSampler" and "height" not in got
    assert Image.open(files / "out.png").size == (4 * (2 * 64 + 3), 4 * 66)
    assert "wrote" in capsys.readouterr().out
