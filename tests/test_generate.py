"""Text to image: the pipeline's guidance and prompts with tiny models, and the command line's checks."""

import numpy as np
import pytest
import torch

from conftest import tiny_unet_config
from sdlesson.cli import main
from sdlesson.generate import TextToImage
from sdlesson.samplers import DDIMSampler, sample
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
])
def test_generate_command_rejects_bad_arguments_before_loading_models(args, error, capsys, monkeypatch):
    monkeypatch.setattr(TextToImage, "from_pretrained", lambda **kw: pytest.fail("models loaded despite bad arguments"))
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", *args])
    assert exit_info.value.code == 2
    import re

    assert re.search(error, capsys.readouterr().err)


def test_generate_command_writes_a_png(tiny_pipe, tmp_path, monkeypatch, capsys):
    from PIL import Image

    monkeypatch.setattr(TextToImage, "from_pretrained", classmethod(lambda cls, **kw: tiny_pipe))
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
