"""The instruments the notebooks and the model card measure with: the Fréchet floor, the scene judge's verdicts,
which scenes copy a training scene, prompt adherence, a scene sample's quality.

The reports `python -m sdlesson evaluate NAME` prints, one evaluate_NAME function per shipped model, are built on
them in reports.py (still importable from here).
"""

from __future__ import annotations

import torch

from . import recipes
from .batches import batched
from .classifier import extract_features
from .data import load_silhouettes, to_float
from .generate import DEFAULT_STEPS
from .metrics import frechet_distance
from .pretrained import load_pretrained
from .samplers import sample
from .scenes import BACKGROUND_RGB, POSITIONS, SIZES, SPLITS, Scene, make_scenes


def silhouette_fd_floor(classifier, num: int = 1000, *, seed: int = 0) -> float:
    """The real-vs-real Fréchet distance: `num` training images against `num` test images, in classifier features.

    Two finite samples of the same distribution never score 0; this is the best a generator can hope for at this N.
    """
    train, _ = load_silhouettes("train")
    test, _ = load_silhouettes("test")
    g = torch.Generator().manual_seed(seed)
    a = train[torch.randperm(len(train), generator=g)[:num]]
    b = test[torch.randperm(len(test), generator=g)[:num]]
    return frechet_distance(extract_features(classifier, a), extract_features(classifier, b))


def sample_in_batches(model, sampler, num: int, sample_shape: tuple, *, num_steps: int, seed: int,
                      batch_size: int = 250) -> torch.Tensor:
    """`num` samples of `sample_shape`, drawn `batch_size` at a time from one seeded generator, on the CPU."""
    g = torch.Generator().manual_seed(seed)
    return torch.cat([sample(model, sampler, (min(batch_size, num - i), *sample_shape), num_steps=num_steps,
                             generator=g, progress=False).cpu() for i in range(0, num, batch_size)])


def training_scenes() -> torch.Tensor:
    """The 20,000 scenes every scene model trained on (uint8, seed SCENE_TRAIN_SEED), rendered again (~6 s)."""
    return make_scenes(recipes.SCENE_TRAIN_COUNT, seed=recipes.SCENE_TRAIN_SEED)[0]


def copies_of_training(images: torch.Tensor, training: torch.Tensor | None = None) -> torch.Tensor:
    """Which uint8 images (N, 3, 64, 64) are pixel for pixel a training scene: a bool per image.

    The scene world is small: 40 seen object–background pairs × 5 positions × 2 sizes × 25 jitters = 10,000 images,
    and the 20,000 training draws hold 8,639 of them. So most "new" scenes of seen pairs are copies of training scenes,
    and a figure on them measures memory, not generalisation; the held-out pairs (and the rest) are truly new.
    """
    seen = {x.numpy().tobytes() for x in (training_scenes() if training is None else training)}
    return torch.tensor([x.numpy().tobytes() in seen for x in images], dtype=torch.bool)


ATTRIBUTES = ("object", "background", "position", "size")  # the judge's heads, in the order of Scene.labels


def judge_scenes(judge, images: torch.Tensor, *, batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """What the judge sees in uint8 scenes (N, 3, 64, 64): labels (N, 4) and its confidence in each (N, 4)."""
    probs = batched(judge, lambda x: [lg.softmax(-1) for lg in judge(to_float(x))], images, batch_size=batch_size)
    confidence = torch.stack([p.max(-1).values for p in probs], 1)
    return torch.stack([p.argmax(-1) for p in probs], 1), confidence


def background_distance(images: torch.Tensor, palette: dict = BACKGROUND_RGB, *, border: int = 2) -> torch.Tensor:
    """How far each uint8 image's background is from the nearest palette colour: the per-channel median of its
    outer `border` pixels, its Euclidean distance in RGB levels (0 … 441) to the closest of `palette`'s colours.
    A scene's background is one of the palette's; a colour between two of them is an average of modes."""
    ring = torch.ones(images.shape[-2:], dtype=torch.bool)
    ring[border:-border, border:-border] = False
    edge = images.float().flatten(-2)[..., ring.flatten()]  # (N, 3, pixels on the ring)
    colour = edge.median(-1).values  # (N, 3)
    return torch.cdist(colour, torch.tensor(list(palette.values()), dtype=torch.float32)).min(1).values


def prompt_set(split: str) -> list:
    """80 fixed scenes whose captions are the prompts: each object-background pair of the split, at two
    (position, size) combinations that vary from pair to pair. 'heldout': the 8 pairs no model but the judge saw."""
    pairs = SPLITS[split]
    per_pair = max(2, 80 // len(pairs))
    return [Scene(obj, bg, POSITIONS[(j + 2 * k) % len(POSITIONS)], SIZES[(j + k) % len(SIZES)])
            for j, (obj, bg) in enumerate(pairs) for k in range(per_pair)][:80]


CONFIDENT = 0.9  # a sample is a "clean scene" when the judge gives every one of its four answers at least this


@torch.no_grad()
def scene_quality(judge, samples: torch.Tensor, reference: torch.Tensor, floor_reference: torch.Tensor) -> dict:
    """How scene-like uint8 samples are: the share the judge recognises with confidence on all four heads, and the
    Fréchet distance in the judge's features to real scenes, beside the real-vs-real floor at the same N."""
    _, confidence = judge_scenes(judge, samples)
    n = len(samples)
    real = extract_features(judge, reference[:n])
    return {"clean": (confidence.min(1).values >= CONFIDENT).float().mean().item(),
            "fd": frechet_distance(extract_features(judge, samples), real),
            "floor": frechet_distance(extract_features(judge, floor_reference[:n]), real)}


@torch.no_grad()
def prompt_adherence(pipe, scenes_: list, *, guidance_scale: float, num_steps: int | None = None, seed: int = 0,
                     judge=None) -> torch.Tensor:
    """One image per scene's caption, in one batch; (N, 4) bool: did the judge find each asked-for attribute?
    num_steps: the pipeline's default when None."""
    judge = judge or load_pretrained("scene_judge", device=pipe.device)
    images = pipe([s.caption for s in scenes_], num_steps=num_steps, guidance_scale=guidance_scale, seed=seed)
    return judge_scenes(judge, images)[0] == torch.tensor([s.labels for s in scenes_])


# --- samplers raced (lesson 08, bench/samplers.py): the distance of each image to a reference from the same noise

def mean_se(values: torch.Tensor) -> tuple[float, float]:
    """The mean of per-image values and its standard error s / √n (nan for one value)."""
    values = torch.as_tensor(values, dtype=torch.float64)
    return values.mean().item(), (values.std() / len(values) ** 0.5).item() if len(values) > 1 else float("nan")


def rmse_to(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per image, the root-mean-square difference (N,) of images from the reference (same shape, [0, 1] floats)."""
    if images.shape != reference.shape:
        raise ValueError(f"images and reference must have one shape, got {tuple(images.shape)} and "
                         f"{tuple(reference.shape)}")
    return ((images.float() - reference.float()) ** 2).mean(tuple(range(1, images.dim()))).sqrt()


@torch.no_grad()
def timed_run(pipe, sampler, latents: torch.Tensor, cond: dict, uncond: dict, *, num_steps: int, seed: int = 0,
              guidance_scale: float | None = None) -> tuple[torch.Tensor, float, int]:
    """One sampler's images from the given start noise x_T (N, 4, h, w): decoded floats in [0, 1], the seconds it
    took (sampling, the guided UNet as one batch of 2N, and decoding) and the model calls it made."""
    import time

    guidance_scale = pipe.defaults["guidance_scale"] if guidance_scale is None else guidance_scale
    start = time.perf_counter()
    z = sample(pipe.unet, sampler, latents.shape, num_steps=num_steps, latents=latents, cond=cond, uncond=uncond,
               guidance_scale=guidance_scale, generator=torch.Generator().manual_seed(seed), progress=False,
               device=pipe.device)
    images = pipe.decode(z, "float")
    return images, time.perf_counter() - start, len(sampler.timesteps)


# --- img2img and inpainting on the course's model (lesson 08): what survives of the init image, what the prompt adds

def _share(hits: torch.Tensor) -> tuple[float, float]:
    """A proportion and its standard error √(p(1-p)/n)."""
    p = hits.float().mean().item()
    return p, (p * (1 - p) / len(hits)) ** 0.5


@torch.no_grad()
def img2img_survival(pipe, init, prompt, *, strengths=(0.2, 0.4, 0.6, 0.8, 1.0), num_images: int = 32,
                     num_steps: int = DEFAULT_STEPS, seed: int = 0, judge=None) -> list[dict]:
    """img2img of one rendered scene `init` (a scenes.Scene) under the caption of `prompt` (a Scene that differs in
    an attribute or more), at each strength: PSNR and SSIM of the images to the init image (mean, standard error),
    and per attribute the share the judge reads as the prompt's and as the init's ((share, standard error) each);
    "images": the images themselves (uint8), to look at."""
    from .metrics import psnr, ssim
    from .scenes import render

    judge = judge or load_pretrained("scene_judge", device=pipe.device)
    image = torch.from_numpy(render(init)).permute(2, 0, 1)[None]  # (1, 3, 64, 64) uint8, no jitter
    rows = []
    for strength in strengths:
        out = pipe(prompt.caption, num_images=num_images, init_image=image, strength=strength, num_steps=num_steps,
                   seed=seed)
        x, ref = to_float(out), to_float(image).expand(len(out), -1, -1, -1)
        p, s = psnr(x, ref), ssim(x, ref)
        labels = judge_scenes(judge, out)[0]
        rows.append({"strength": strength, "psnr": (p.mean().item(), p.std().item() / len(p) ** 0.5),
                     "ssim": (s.mean().item(), s.std().item() / len(s) ** 0.5),
                     "prompt": {a: _share(labels[:, k] == prompt.labels[k]) for k, a in enumerate(ATTRIBUTES)},
                     "init": {a: _share(labels[:, k] == init.labels[k]) for k, a in enumerate(ATTRIBUTES)},
                     "images": out})
    return rows


@torch.no_grad()
def inpainting_check(pipe, init, prompt, mask: torch.Tensor, *, num_images: int = 32, num_steps: int = DEFAULT_STEPS,
                     strength: float = 1.0, seed: int = 0, judge=None) -> dict:
    """Inpaint the rendered scene `init` where `mask` (1, 1, 64, 64) is white, under `prompt`'s caption (Scenes).

    kept: the largest change, in 0…255 pixel steps, outside the repainted latent cells — against the VAE's round trip
    of the init image (the latents the pipeline keeps, decoded: what "unchanged" can mean after a VAE), over all of
    the kept region and over the part at least one latent cell from the repainted cells (the decoder's reach blurs
    the border); and the round trip's own change to the init image there, for scale. judge: per attribute, the
    share of images the judge reads as the prompt's (share, standard error); "init object" the share still showing
    the init's object; "images" the inpainted images (uint8)."""
    import torch.nn.functional as F

    from .checks import check_mask
    from .scenes import render

    judge = judge or load_pretrained("scene_judge", device=pipe.device)
    image = torch.from_numpy(render(init)).permute(2, 0, 1)[None]  # (1, 3, 64, 64) uint8
    out = pipe(prompt.caption, num_images=num_images, init_image=image, mask=mask, strength=strength,
               num_steps=num_steps, seed=seed)
    # the latents the pipeline keeps: the posterior draw of the same seed (its first use of the generator)
    z0 = pipe.encode_image(image, generator=torch.Generator().manual_seed(seed))
    round_trip = pipe.decode(z0.expand(len(out), -1, -1, -1))  # decoded as a batch of N, as the pipeline decodes
    f = pipe.vae.config.downsample_factor
    cells = F.interpolate(check_mask("mask", mask, size=tuple(image.shape[2:])), size=(image.shape[2] // f,
                          image.shape[3] // f), mode="nearest")  # (1, 1, 8, 8): the repainted latent cells, as the pipe
    kept = F.interpolate(cells, scale_factor=f)[0, 0] == 0  # (64, 64) pixels of kept cells
    far = F.interpolate(F.max_pool2d(cells, 3, stride=1, padding=1), scale_factor=f)[0, 0] == 0  # ≥ 1 cell away
    change = (out.int() - round_trip.int()).abs().amax(1)  # (N, 64, 64), the largest over RGB
    vae_change = (round_trip[0].int() - image[0].int()).abs().amax(0)
    labels = judge_scenes(judge, out)[0]
    return {"kept max change vs round trip": int(change[:, kept].max()),
            "kept max change vs round trip, ≥ 1 cell from the mask": int(change[:, far].max()) if far.any() else None,
            "round trip's own max change to the init, kept / far": (int(vae_change[kept].max()),
                                                                   int(vae_change[far].max()) if far.any() else None),
            "judge": {a: _share(labels[:, k] == prompt.labels[k]) for k, a in enumerate(ATTRIBUTES)},
            "init object": _share(labels[:, 0] == init.labels[0]), "num_images": num_images, "images": out}


def __getattr__(name: str):
    if name.startswith("evaluate_"):  # the reports, importable from here as before they moved
        from . import reports  # here, not at the top: reports imports this module

        return getattr(reports, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
