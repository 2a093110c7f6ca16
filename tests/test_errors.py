"""The catalogue of wrong inputs: each row is a mistake a learner can make, the exception it must raise at the public
boundary, and a fragment of the message (which names the argument, what was expected and what came).

Rows are grouped by kind (the first word of each id): shape, dtype, range (non-finite and out-of-range numbers),
empty, condition (conditional models without their condition), truncation, file, device, type.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from sdlesson import pretrained
from sdlesson.checks import check_int
from sdlesson.data import load_photo, load_silhouettes
from sdlesson.latents import decode_latents
from sdlesson.metrics import frechet_distance, psnr
from sdlesson.samplers import DDIMSampler, DDPMSampler, make_sampler, sample
from sdlesson.scenes import make_scenes
from sdlesson.schedule import NoiseSchedule
from sdlesson.text import CLIPConfig
from sdlesson.train import DiffusionLoss, Trainer, TrainConfig, pick_device
from sdlesson.unet import UNet
from sdlesson.vae import VAE, VAEConfig
from sdlesson.viz import image_grid

from conftest import tiny_unet_config

PROMPT = "a small cat face in the top left on a blue background"


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {
        "unet": UNet(tiny_unet_config()),
        "text_unet": UNet(tiny_unet_config(in_channels=4, context_dim=8)),
        "vae": VAE(VAEConfig(block_channels=(32, 32), sample_size=16)).eval(),
        "schedule": NoiseSchedule("linear"),
    }


@pytest.fixture(scope="module")
def pipe():
    from sdlesson.generate import TextToImage

    return TextToImage.from_pretrained()


x1 = lambda b=2: torch.randn(b, 1, 8, 8)  # noqa: E731 - images for the tiny UNet
t_ = lambda *ts: torch.tensor(ts)  # noqa: E731

# (id, function of the fixtures, exception, message fragment)
LIBRARY_CASES = [
    # shapes and batch sizes between arguments
    ("shape: timesteps batch != images batch (UNet)", lambda m: m["unet"](x1(2), t_(1, 2, 3)),
     ValueError, "one timestep per image"),
    ("shape: timesteps batch != images batch (add_noise)", lambda m: m["schedule"].add_noise(x1(2), x1(2), t_(1, 2, 3)),
     ValueError, "t must be one timestep or one per image"),
    ("shape: noise shape != image shape", lambda m: m["schedule"].add_noise(x1(2), x1(3), t_(1, 2)),
     ValueError, "noise must have the shape of x0"),
    ("shape: wrong channels into the UNet", lambda m: m["unet"](torch.randn(1, 3, 8, 8), t_(1)),
     ValueError, "takes 1-channel input"),
    ("shape: context batch != images batch",
     lambda m: m["text_unet"](torch.randn(2, 4, 8, 8), t_(1, 1), context=torch.randn(3, 5, 8)),
     ValueError, "one row per image"),
    ("shape: context_mask shape != context", lambda m: m["text_unet"](
        torch.randn(1, 4, 8, 8), t_(1), context=torch.randn(1, 5, 8), context_mask=torch.ones(1, 4, dtype=torch.bool)),
     ValueError, "context_mask must be a bool tensor of shape (B, L) = (1, 5)"),
    ("shape: context width != context_dim",
     lambda m: m["text_unet"](torch.randn(1, 4, 8, 8), t_(1), context=torch.randn(1, 5, 7)),
     ValueError, "context must be (B, L, 8)"),
    ("shape: latents with 3 channels into the decoder", lambda m: m["vae"].decode(torch.randn(1, 3, 2, 2)),
     ValueError, "expected latents of shape (B, 4, h, w)"),
    ("shape: image side not a multiple of the VAE's factor", lambda m: m["vae"].encode(torch.zeros(1, 3, 12, 12)),
     ValueError, "multiples of 8"),
    ("shape: psnr of two differently sized batches", lambda m: psnr(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 5, 5)),
     ValueError, "same shape"),
    ("shape: Fréchet distance of different feature widths",
     lambda m: frechet_distance(torch.randn(5, 3), torch.randn(5, 4)),
     ValueError, "same D"),
    ("shape: sample() shape with the wrong channels",
     lambda m: sample(m["unet"], DDIMSampler(m["schedule"]), (1, 3, 8, 8),
                      num_steps=2, progress=False),
     ValueError, "takes 1-channel input"),
    # dtypes
    ("dtype: uint8 images into the UNet", lambda m: m["unet"](torch.zeros(2, 1, 8, 8, dtype=torch.uint8), t_(1, 2)),
     TypeError, "floating-point images"),
    ("dtype: int64 images into the VAE encoder", lambda m: m["vae"].encode(torch.zeros(1, 3, 16, 16, dtype=torch.long)),
     TypeError, "floating-point tensor"),
    ("dtype: float timesteps into add_noise", lambda m: m["schedule"].add_noise(x1(1), x1(1), torch.tensor([1.5])),
     TypeError, "timesteps must be integers"),
    # ranges: non-finite and out-of-range numbers, and pixel ranges
    ("range: 0-255 float pixels into the VAE encoder", lambda m: m["vae"].encode(torch.full((1, 3, 16, 16), 200.0)),
     ValueError, "pixels in [-1, 1]"),
    ("range: NaN pixels into the VAE encoder", lambda m: m["vae"].encode(torch.full((1, 3, 16, 16), math.nan)),
     ValueError, "NaN"),
    ("range: timestep outside [0, T)", lambda m: m["schedule"].add_noise(x1(1), x1(1), t_(1000)),
     ValueError, "timesteps must lie in [0, 1000)"),
    ("range: NaN guidance in sample()",
     lambda m: sample(m["unet"], DDIMSampler(m["schedule"]), (1, 1, 8, 8), num_steps=2,
                      guidance_scale=math.nan, progress=False),
     ValueError, "guidance_scale must be a finite number"),
    ("range: negative guidance in sample()", lambda m: sample(m["unet"], DDIMSampler(m["schedule"]), (1, 1, 8, 8),
                                                               num_steps=2, guidance_scale=-1, progress=False),
     ValueError, "guidance_scale must be >= 0"),
    ("range: NaN eta", lambda m: DDIMSampler(m["schedule"], eta=math.nan), ValueError, "eta must be a finite number"),
    ("range: negative eta", lambda m: DDIMSampler(m["schedule"], eta=-0.5), ValueError, "eta must be >= 0"),
    ("range: clip_sample <= 0", lambda m: DDPMSampler(m["schedule"], clip_sample=0.0),
     ValueError, "clip_sample must be > 0"),
    ("range: zero sampling steps", lambda m: DDIMSampler(m["schedule"]).set_timesteps(0),
     ValueError, "num_steps must be an int from 1"),
    ("range: 2.5 sampling steps", lambda m: DDIMSampler(m["schedule"]).set_timesteps(2.5),
     ValueError, "num_steps must be an int"),
    ("range: NaN learning rate", lambda m: TrainConfig(lr=math.nan), ValueError, "lr must be a finite number"),
    ("range: negative learning rate", lambda m: TrainConfig(lr=-1e-3), ValueError, "lr must be > 0"),
    ("range: EMA decay of 1 or more", lambda m: TrainConfig(ema_decay=1.0),
     ValueError, "ema_decay must be >= 0 and < 1"),
    ("range: zero batch size", lambda m: TrainConfig(batch_size=0), ValueError, "batch_size must be at least 1"),
    ("range: p_uncond above 1", lambda m: DiffusionLoss(m["schedule"], p_uncond=1.5), ValueError, "p_uncond must be"),
    ("range: NaN latent scale", lambda m: decode_latents(m["vae"], torch.randn(1, 4, 2, 2), scale=math.nan),
     ValueError, "scale must be a finite number"),
    ("range: zero latent scale", lambda m: decode_latents(m["vae"], torch.randn(1, 4, 2, 2), scale=0.0),
     ValueError, "scale must be > 0"),
    ("range: negative scene count", lambda m: make_scenes(-1, seed=0), ValueError, "must be >= 0"),
    ("range: photo size 0", lambda m: load_photo("chelsea", size=0), ValueError, "size must be a positive int"),
    ("range: nrow 0 in an image grid", lambda m: image_grid(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), nrow=0),
     ValueError, "nrow must be an int >= 1"),
    ("range: an int check names its bounds", lambda m: check_int("num_images", 0, low=1, high=64),
     ValueError, "num_images must be an int from 1 to 64, got 0"),
    # empty inputs
    ("empty: Trainer with no examples",
     lambda m: Trainer(m["unet"], DiffusionLoss(m["schedule"]), torch.zeros(0, 1, 8, 8),
                       TrainConfig(steps=1), device="cpu", progress=False),
     ValueError, "data is empty"),
    ("empty: image grid of no images", lambda m: image_grid(torch.zeros(0, 3, 4, 4, dtype=torch.uint8)),
     ValueError, "non-empty batch"),
    ("empty: Fréchet distance of one sample", lambda m: frechet_distance(torch.randn(1, 4), torch.randn(5, 4)),
     ValueError, "at least 2 samples"),
    # conditional models without their condition
    ("condition: text-conditioned UNet called without context",
     lambda m: m["text_unet"](torch.randn(1, 4, 8, 8), t_(1)),
     ValueError, "text-conditioned (context_dim=8): pass context="),
    ("condition: context given to a UNet without cross-attention",
     lambda m: m["unet"](x1(1), t_(1), context=torch.randn(1, 5, 8)),
     ValueError, "no cross-attention"),
    ("condition: class labels given to a UNet without classes", lambda m: m["unet"](x1(1), t_(1), class_labels=t_(0)),
     ValueError, "no class conditioning"),
    ("condition: guidance without an unconditional branch", lambda m: sample(
        m["text_unet"], DDIMSampler(m["schedule"]), (1, 4, 8, 8), num_steps=1, guidance_scale=3.0, progress=False,
        cond={"context": torch.randn(1, 5, 8)}),
     ValueError, "needs `uncond`"),
    # names, files, devices, types
    ("name: unknown noise schedule", lambda m: NoiseSchedule("quadratic"), ValueError, "unknown schedule 'quadratic'"),
    ("name: unknown sampler", lambda m: make_sampler("lms", m["schedule"]), ValueError, "unknown sampler 'lms'"),
    ("name: unknown shipped checkpoint", lambda m: pretrained.load_pretrained("scene_unet"),
     ValueError, "unknown checkpoint"),
    ("name: unknown photo", lambda m: load_photo("moon"), ValueError, "unknown photo 'moon'"),
    ("name: unknown silhouette split", lambda m: load_silhouettes("val"),
     ValueError, "split must be 'train', 'test' or 'all'"),
    ("name: unknown scene split", lambda m: make_scenes(2, seed=0, split="test"), ValueError, "unknown split 'test'"),
    ("device: a device torch does not know", lambda m: pick_device("tpu"), ValueError, "device must be one of"),
    ("type: eta given as a string", lambda m: DDIMSampler(m["schedule"], eta="0.5"),
     TypeError, "eta must be a number, got '0.5'"),
    ("type: guidance given as a bool",
     lambda m: sample(m["unet"], DDIMSampler(m["schedule"]), (1, 1, 8, 8), num_steps=1,
                      guidance_scale=True, progress=False),
     TypeError, "guidance_scale must be a number"),
    ("type: a sampler built on a schedule name", lambda m: DDIMSampler("linear"),
     TypeError, "schedule must be a NoiseSchedule"),
]


@pytest.mark.parametrize("case", LIBRARY_CASES, ids=[c[0] for c in LIBRARY_CASES])
def test_library_input_is_checked(models, case):
    _, call, exception, fragment = case
    with pytest.raises(exception) as info:
        call(models)
    assert fragment in str(info.value), f"message {str(info.value)!r} lacks {fragment!r}"


PIPELINE_CASES = [
    ("range: NaN guidance gives an error, not black images", dict(guidance_scale=math.nan),
     ValueError, "guidance_scale must be a finite number"),
    ("range: infinite guidance", dict(guidance_scale=math.inf), ValueError, "guidance_scale must be a finite number"),
    ("range: zero images", dict(num_images=0), ValueError, "num_images must be an int >= 1"),
    ("range: zero steps", dict(num_steps=0), ValueError, "num_steps must be an int from 1"),
    ("type: a seed that is not an int", dict(seed="a"), TypeError, "seed must be an int"),
    ("range: a negative seed", dict(seed=-1), ValueError, "seed must be an int >= 0"),
    ("name: unknown sampler", dict(sampler="lms"), ValueError, "unknown sampler 'lms'"),
    ("name: a word the text encoder does not know", dict(prompt="a small cat face on a red background"),
     ValueError, "unknown word(s) 'red'"),
    ("name: an unknown word in the negative prompt", dict(negative_prompt="zebra"),
     ValueError, "unknown word(s) 'zebra'"),
    ("empty: an empty list of prompts", dict(prompt=[]), TypeError, "non-empty list of strings"),
    ("type: a prompt that is not a string", dict(prompt=3), TypeError, "prompt must be a string"),
]


@pytest.mark.parametrize("case", PIPELINE_CASES, ids=[c[0] for c in PIPELINE_CASES])
def test_pipeline_input_is_checked(pipe, case):
    _, kwargs, exception, fragment = case
    kwargs = {"prompt": PROMPT, "num_images": 1, "num_steps": 1} | kwargs
    with pytest.raises(exception) as info:
        pipe(kwargs.pop("prompt"), **kwargs)
    assert fragment in str(info.value), f"message {str(info.value)!r} lacks {fragment!r}"


def test_pipeline_device_is_checked():
    from sdlesson.generate import TextToImage

    with pytest.raises(ValueError, match="device must be one of"):
        TextToImage.from_pretrained(device="tpu")


def test_truncation_of_a_long_prompt_warns():
    """A prompt longer than the text encoder's window loses words: that changes its meaning, so it is said."""
    tokenizer = CLIPConfig().tokenizer()
    long_prompt = " ".join([PROMPT] * 2)
    with pytest.warns(UserWarning, match="reads only the first 14"):
        ids, _ = tokenizer(long_prompt)
    assert ids.shape == (1, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tokenizer(PROMPT)  # a prompt that fits: no warning


def test_uint8_images_are_converted_by_the_vae_encoder(models):
    """uint8 images (0 … 255) are a range the VAE names and converts, not one it misreads."""
    images = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8)
    from sdlesson.data import to_float

    a, b = models["vae"].encode(images).mean, models["vae"].encode(to_float(images)).mean
    torch.testing.assert_close(a, b)


CLI_CASES = [  # (argv, message fragment): each exits with status 2 and one line on stderr, before any model loads
    (["generate", ""], "the prompt is empty"),
    (["generate", PROMPT, "--num-steps", "0"], "--num-steps must be from 1 to 1000"),
    (["generate", PROMPT, "--guidance", "nan"], "--guidance must be a finite number"),
    (["generate", PROMPT, "-n", "0"], "--num-images must be from 1 to 64"),
    (["generate", PROMPT, "--seed", "-3"], "--seed must be >= 0"),
    (["generate", PROMPT, "--out", "x.jpg"], "--out must name a .png file"),
    (["generate", PROMPT, "--out", "/no/such/folder/x.png"], "does not exist"),
    (["generate", PROMPT, "--device", "tpu"], "device must be one of"),
    (["generate", "a red cat"], "unknown word(s) 'red'"),
    (["generate", PROMPT, "--height", "128"], "--height applies only with --model"),
    (["generate", PROMPT, "--model", "/no/such/weights"], "no Stable Diffusion weights at"),
    (["generate", PROMPT, "--sampler", "lms"], "invalid choice: 'lms'"),
    (["generate", PROMPT, "--num-steps", "ten"], "invalid int value: 'ten'"),
    (["train", "sd15"], "unknown model 'sd15'"),
    (["evaluate", "scene_vae", "--sampler", "ddpm"], "does not use --sampler"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
]


@pytest.mark.parametrize("argv, fragment", CLI_CASES, ids=[" ".join(a)[:60] for a, _ in CLI_CASES])
def test_command_line_mistakes_exit_2_with_one_line(argv, fragment, capsys):
    from sdlesson.cli import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert fragment in err and err.count("\n") == 1 and "Traceback" not in err, err
