"""Text to image: the pipeline's guidance and prompts with tiny models, and the command line's checks."""

import numpy as np
import pytest
import torch

from conftest import tiny_unet_config
from sdlesson.cli import main
from sdlesson.generate import TextToImage
from sdlesson.samplers import DDIMSampler, sample
from sdlesson.schedule import NoiseSchedule
from sdlesson.text import CLIP, CLIPConfig, encode_prompts
from sdlesson.unet import UNet
from sdlesson.vae import VAE, VAEConfig

PROMPT = "a small cat face in the top left on a blue background"


@pytest.fixture
def tiny_pipe():
    torch.manual_seed(0)
    clip = CLIP(CLIPConfig(width=16, layers=1, heads=2, image_width=8, embed_dim=8))
    unet = UNet(tiny_unet_config(in_channels=4, context_dim=16))
    vae = VAE(VAEConfig(block_channels=(8, 16), norm_groups=4, patch_size=4))
    return TextToImage(clip, unet, vae, latent_scale=0.5)


def test_images_are_uint8_scenes_and_reproducible(tiny_pipe):
    images = tiny_pipe(PROMPT, num_images=2, num_steps=3, seed=1)
    assert images.dtype == torch.uint8 and images.shape == (2, 3, 64, 64)
    assert torch.equal(images, tiny_pipe(PROMPT, num_images=2, num_steps=3, seed=1))
    assert not torch.equal(images, tiny_pipe(PROMPT, num_images=2, num_steps=3, seed=2))


def test_guidance_combines_the_conditional_and_unconditional_predictions(tiny_pipe):
    context, mask = encode_prompts(tiny_pipe.clip, [PROMPT] * 2)
    empty = mask.clone()
    empty[:, 1:] = False  # the empty prompt: <bos> alone, as training drops captions
    sampler = DDIMSampler(tiny_pipe.schedule, clip_sample=None)
    s = 2.5

    class Guided(torch.nn.Module):  # ε̂ = ε̂_∅ + s (ε̂_c − ε̂_∅), written out
        def __init__(self):
            super().__init__()
            self.unet = tiny_pipe.unet

        def forward(self, x, t):
            cond = self.unet(x, t, context=context, context_mask=mask)
            uncond = self.unet(x, t, context=context, context_mask=empty)
            return uncond + s * (cond - uncond)

    z = sample(Guided(), sampler, (2, 4, 8, 8), num_steps=4, generator=torch.Generator().manual_seed(0), progress=False)
    expected = tiny_pipe.decode(z)
    got = tiny_pipe(PROMPT, num_images=2, num_steps=4, guidance_scale=s, seed=0)
    assert (got.int() - expected.int()).abs().max() <= 1


def test_empty_and_negative_prompts(tiny_pipe):
    context, mask = tiny_pipe.encode(["", "", PROMPT])
    assert mask[:, 0].all() and not mask[:2, 1:].any() and mask[2, 1:14].all()
    plain = tiny_pipe(PROMPT, num_images=1, num_steps=3, guidance_scale=3.0)
    negative = tiny_pipe(PROMPT, negative_prompt="a large dog face in the center on a gray background", num_images=1,
                         num_steps=3, guidance_scale=3.0)
    assert not torch.equal(plain, negative)
    # at guidance 1 the unconditional (or negative) prediction cancels out
    assert torch.equal(tiny_pipe(PROMPT, num_images=1, num_steps=3, guidance_scale=1.0),
                       tiny_pipe(PROMPT, negative_prompt="a star", num_images=1, num_steps=3, guidance_scale=1.0))


def test_intermediate_images_are_decoded(tiny_pipe):
    images, kept = tiny_pipe(PROMPT, num_images=1, num_steps=4, keep_every=2)
    assert len(kept) == 3 and all(k.shape == (1, 3, 64, 64) and k.dtype == torch.uint8 for k in kept)
    assert torch.equal(kept[-1], images)


@pytest.mark.parametrize("kwargs, error", [
    (dict(num_images=0), "num_images must be an int >= 1"),
    (dict(guidance_scale=-1.0), "guidance_scale must be >= 0"),
    (dict(num_steps=0), "num_steps must be an int from 1"),
    (dict(sampler="lms"), "unknown sampler 'lms'"),
])
def test_bad_arguments_are_clear_errors(tiny_pipe, kwargs, error):
    with pytest.raises(ValueError, match=error):
        tiny_pipe(PROMPT, **kwargs)


def test_unknown_words_and_non_strings(tiny_pipe):
    with pytest.raises(ValueError, match="unknown word.*'bird'"):
        tiny_pipe("a bird")
    with pytest.raises(TypeError, match="prompt must be a string"):
        tiny_pipe(None)
    with pytest.raises(TypeError, match="non-empty list of strings"):
        tiny_pipe([])


@pytest.mark.parametrize("args, error", [
    ([], "the following arguments are required: prompt"),
    (["  "], "the prompt is empty"),
    ([PROMPT, "--num-steps", "0"], "--num-steps must be from 1 to 1000"),
    ([PROMPT, "--guidance", "-2"], "--guidance must be a finite number >= 0"),
    ([PROMPT, "-n", "0"], "--num-images must be from 1 to 64"),
    ([PROMPT, "--out", "/no/such/folder/x.png"], "folder '/no/such/folder' does not exist"),
    ([PROMPT, "--out", "x.jpg"], "must name a .png file"),
    (["a purple bird"], "unknown word.*'bird'"),
    ([PROMPT, "--negative", "a red car"], "unknown word.*'red'"),
    ([PROMPT, "--num-steps", "ten"], "invalid int value: 'ten'"),
    ([PROMPT, "--world", "compositional"], "unknown word.*'small', 'cat'"),  # the emoji scenes' words: not this world's
    (["a red car", "--world", "compositional", "--negative", "a pink car"], "unknown word.*'pink'"),
    (["a red car", "--world", "emoji"], "invalid choice: 'emoji'"),
])
def test_generate_command_rejects_bad_arguments_before_loading_models(args, error, capsys, monkeypatch):
    monkeypatch.setattr(TextToImage, "from_pretrained",
                        lambda *a, **kw: pytest.fail("models loaded despite bad arguments"))
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", *args])
    assert exit_info.value.code == 2
    import re

    assert re.search(error, capsys.readouterr().err)


def test_generate_command_writes_a_png(tiny_pipe, tmp_path, monkeypatch, capsys):
    from PIL import Image

    monkeypatch.setattr(TextToImage, "from_pretrained", classmethod(lambda cls, *a, **kw: tiny_pipe))
    out = tmp_path / "scene.png"
    main(["generate", PROMPT, "-n", "3", "--num-steps", "2", "--zoom", "2", "--out", str(out)])
    image = Image.open(out)
    assert image.size == (2 * (3 * 64 + 4), 2 * (64 + 2))  # 3 images in a row, 1 px padding, zoomed 2×
    assert "wrote" in capsys.readouterr().out


def test_text_to_image_explorer_follows_the_prompt(tiny_pipe):
    from sdlesson.viz import text_to_image_explorer

    app = text_to_image_explorer(tiny_pipe, prompt=PROMPT, num_images=2)
    first = app.image.copy()
    assert "2 images, 25 DDIM steps" in app.caption
    app.controls["steps"].value = 2
    app.controls["prompt"].value = "a large dog face in the center on a gray background"
    assert not np.array_equal(app.image, first)
    shown = app.image.copy()
    app.controls["prompt"].value = "a purple bird"
    assert "unknown word" in app.caption and np.array_equal(app.image, shown)  # the last picture stays


def test_a_list_of_prompts_gives_one_image_each(tiny_pipe):
    prompts = [PROMPT, "a large dog face in the center on a gray background", ""]
    images = tiny_pipe(prompts, num_steps=2, guidance_scale=2.0, seed=0)
    assert images.shape == (3, 3, 64, 64)
    alone = tiny_pipe(PROMPT, num_images=3, num_steps=2, guidance_scale=2.0, seed=0)
    assert torch.equal(images[0], alone[0])  # same seed, same first latent, same prompt


# --- img2img and inpainting with the course's family (tiny random models; SD's parity is in test_img2img.py) -------

def scenes_uint8(n=1):
    from sdlesson.scenes import make_scenes

    return make_scenes(n, seed=0)[0]  # (n, 3, 64, 64) uint8


def test_img2img_runs_the_last_steps_from_the_noised_init_image(tiny_pipe):
    """strength 0.5 of 6 steps: the last 3 run, starting from √ᾱ z0 + √(1-ᾱ) ε at the first of them."""
    image = scenes_uint8()
    seen = []
    tiny_pipe(PROMPT, num_images=1, init_image=image, strength=0.5, num_steps=6, seed=2,
              callback=lambda i, t, x, x0: seen.append((i, t, x.clone())))
    sampler = tiny_pipe.make_sampler("ddim")
    sampler.set_timesteps(6)
    assert [(i, t) for i, t, _ in seen] == list(enumerate(sampler.timesteps[3:].tolist()))
    g = torch.Generator().manual_seed(2)
    z0 = tiny_pipe.encode_image(image, generator=g)  # the generator's first draw: the posterior's sample
    noise = torch.randn(z0.shape, generator=g)  # its second: ε
    a = tiny_pipe.schedule.alphas_cumprod[seen[0][1]]
    torch.testing.assert_close(seen[0][2], a.sqrt() * z0 + (1 - a).sqrt() * noise)


def test_img2img_strength_one_and_text_to_image_share_the_loop(tiny_pipe):
    """Without an init image the chain starts from ε, and a float init image in [-1, 1] equals its uint8 self."""
    image = scenes_uint8(2)
    a = tiny_pipe(PROMPT, num_images=2, init_image=image, strength=0.7, num_steps=4, seed=1, output_type="float")
    b = tiny_pipe(PROMPT, num_images=2, init_image=image.float() / 127.5 - 1, strength=0.7, num_steps=4, seed=1,
                  output_type="float")
    assert (a - b).abs().max() < 1e-5
    latents = torch.randn(1, 4, 8, 8)
    seen = []
    tiny_pipe(PROMPT, num_images=1, num_steps=3, latents=latents, callback=lambda i, t, x, x0: seen.append(x.clone()))
    assert torch.equal(seen[0], latents)


def test_inpainting_keeps_the_init_latents_outside_the_mask(tiny_pipe, monkeypatch):
    image = scenes_uint8()
    mask = torch.zeros(1, 1, 64, 64, dtype=torch.bool)
    mask[..., 8:40, 16:48] = True  # white = repaint: latent cells 1…4 × 2…5
    final = []
    decode = tiny_pipe.decode
    monkeypatch.setattr(tiny_pipe, "decode", lambda z, output_type="uint8": final.append(z) or decode(z, output_type))
    tiny_pipe(PROMPT, num_images=2, init_image=image, mask=mask, num_steps=3, seed=0)
    z0 = tiny_pipe.encode_image(image, generator=torch.Generator().manual_seed(0)).expand(2, -1, -1, -1)
    keep = torch.ones(2, 4, 8, 8, dtype=torch.bool)
    keep[..., 1:5, 2:6] = False
    assert torch.equal(final[0][keep], z0[keep]) and not torch.allclose(final[0][~keep], z0[~keep])


IMG2IMG_CASES = [  # (keyword arguments, exception, message fragment)
    (dict(strength=0.5), ValueError, "strength applies to img2img and inpainting: pass init_image="),
    (dict(mask=torch.ones(1, 1, 64, 64)), ValueError, "mask applies to img2img and inpainting"),
    (dict(init_image=torch.zeros(3, 64, 64, dtype=torch.uint8)), ValueError, "add the batch dimension"),
    (dict(init_image=torch.zeros(1, 64, 64, 3, dtype=torch.uint8)), ValueError, "images of shape (B, 3, H, W)"),
    (dict(init_image=torch.full((1, 3, 64, 64), 200.0)), ValueError, "pixels in [-1, 1]"),
    (dict(init_image=torch.zeros(1, 3, 64, 64, dtype=torch.int32)), TypeError, "floating-point tensor"),
    (dict(init_image=torch.zeros(3, 3, 64, 64)), ValueError, "1 image or one per output image (2)"),
    (dict(init_image=torch.zeros(1, 3, 60, 60)), ValueError, "multiples of 8"),
    (dict(init_image=torch.zeros(1, 3, 64, 64), height=128), ValueError, "height = 128 differs from the init image's"),
    (dict(init_image=torch.zeros(1, 3, 64, 64), strength=0.0), ValueError, "strength must be > 0 and <= 1, got 0"),
    (dict(init_image=torch.zeros(1, 3, 64, 64), strength=1.5), ValueError, "strength must be > 0 and <= 1"),
    (dict(init_image=torch.zeros(1, 3, 64, 64), strength=float("nan")), ValueError, "strength must be a finite"),
    (dict(init_image=torch.zeros(1, 3, 64, 64), strength=0.1, num_steps=5), ValueError, "leaves no step to run"),
    (dict(init_image=torch.zeros(1, 3, 64, 64), mask=torch.ones(1, 1, 32, 32)), ValueError,
     "mask must have the shape (B, 1, 64, 64)"),
    (dict(init_image=torch.zeros(1, 3, 64, 64), mask=torch.full((1, 1, 64, 64), 255.0)), ValueError,
     "mask must hold values in [0, 1] (1 = repaint), got values from 255"),
    (dict(init_image=torch.zeros(1, 3, 64, 64), mask=torch.ones(3, 1, 64, 64)), ValueError, "1 mask or one per"),
    (dict(latents=torch.randn(2, 4, 4, 4)), ValueError, "latents must have the shape (2, 4, 8, 8)"),
    (dict(sampler=3), TypeError, "sampler must be a name or a Sampler, got 3"),
    (dict(sampler=DDIMSampler(NoiseSchedule("linear"))), ValueError,
     "the sampler's schedule is 'linear' but this model was trained with 'scaled_linear'"),
    (dict(callback="print"), TypeError, "callback must be a function"),
]


@pytest.mark.parametrize("kwargs, exception, fragment", IMG2IMG_CASES, ids=[c[2][:40] for c in IMG2IMG_CASES])
def test_img2img_inputs_are_checked(tiny_pipe, kwargs, exception, fragment):
    with pytest.raises(exception) as info:
        tiny_pipe(PROMPT, **(dict(num_images=2, num_steps=2) | kwargs))
    assert fragment in str(info.value), str(info.value)


def test_a_sampler_object_is_used_as_given(tiny_pipe):
    ddpm = tiny_pipe.make_sampler("ddpm")
    a = tiny_pipe(PROMPT, num_images=1, num_steps=3, sampler=ddpm, seed=4)
    assert torch.equal(a, tiny_pipe(PROMPT, num_images=1, num_steps=3, sampler="ddpm", seed=4))
    assert not torch.equal(a, tiny_pipe(PROMPT, num_images=1, num_steps=3, sampler="ddim", seed=4))


def test_lesson_measurements_of_img2img_and_inpainting(tiny_pipe):
    """evaluate's two measurements run on any scene pipeline; a mask that repaints nothing keeps the VAE's round trip
    of the init image exactly (the final blend puts the init latents back)."""
    from sdlesson.evaluate import ATTRIBUTES, img2img_survival, inpainting_check
    from sdlesson.scenes import Scene

    init, prompt = Scene("cat face", "blue", "center", "large"), Scene("dog face", "blue", "center", "large")
    rows = img2img_survival(tiny_pipe, init, prompt, strengths=(0.5, 1.0), num_images=2, num_steps=4)
    assert [r["strength"] for r in rows] == [0.5, 1.0]
    assert all(0 <= r[k][a][0] <= 1 for r in rows for k in ("prompt", "init") for a in ATTRIBUTES)
    nothing = torch.zeros(1, 1, 64, 64, dtype=torch.uint8)
    report = inpainting_check(tiny_pipe, init, prompt, nothing, num_images=2, num_steps=3, strength=0.5)
    assert report["kept max change vs round trip"] == 0
    box = nothing.clone()
    box[..., 16:48, 16:48] = 255
    report = inpainting_check(tiny_pipe, init, prompt, box, num_images=2, num_steps=3)
    assert report["kept max change vs round trip"] > 0  # the decoder's GroupNorm and attention see the whole latent


def test_masks_are_binarised_as_diffusers_does():
    """White = repaint: m / 255 ≥ 0.5 for uint8 (128 and up), m ≥ 0.5 for floats, True for bools."""
    from sdlesson.checks import check_mask

    u = torch.tensor([0, 127, 128, 255], dtype=torch.uint8).reshape(1, 1, 2, 2)
    assert check_mask("mask", u, size=(2, 2)).flatten().tolist() == [0, 0, 1, 1]
    x = torch.tensor([0.0, 0.49, 0.5, 1.0]).reshape(1, 1, 2, 2)
    assert check_mask("mask", x, size=(2, 2)).flatten().tolist() == [0, 0, 1, 1]
    assert check_mask("mask", x > 0.4, size=(2, 2)).flatten().tolist() == [0, 1, 1, 1]
