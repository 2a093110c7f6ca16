"""Quality measurements for the shipped checkpoints, as reported in data/MODEL_CARD.md and the notebooks."""

from __future__ import annotations

import time

import torch

from . import pretrained as pre
from .classifier import extract_features, predict
from .data import SILHOUETTE_CLASSES, load_silhouettes
from .metrics import class_histogram, frechet_distance
from .samplers import make_sampler, sample
from .schedule import NoiseSchedule


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


@torch.no_grad()
def evaluate_silhouette_unet(*, device="cpu", num_samples: int = 1000, num_steps: int | None = None,
                             sampler: str = "ddim", seed: int = 0) -> dict:
    num_steps = num_steps or 100
    unet = pre.load_pretrained("silhouette_unet", device=device)
    classifier = pre.load_pretrained("silhouette_classifier", device=device)
    sampler_obj = make_sampler(sampler, NoiseSchedule(pre.SILHOUETTE_SCHEDULE))
    start = time.perf_counter()
    samples = sample_in_batches(unet, sampler_obj, num_samples, (1, 28, 28), num_steps=num_steps, seed=seed)
    seconds = time.perf_counter() - start
    test, _ = load_silhouettes("test")
    n = min(num_samples, len(test))
    reference = test[torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))[:n]]  # all classes
    fd = frechet_distance(extract_features(classifier, samples[:n]), extract_features(classifier, reference))
    floor = silhouette_fd_floor(classifier, n, seed=seed)
    counts = class_histogram(predict(classifier, samples), len(SILHOUETTE_CLASSES))
    return {
        "samples": f"{num_samples} with {sampler.upper()}, {num_steps} steps, seed {seed}",
        "sampling time": f"{seconds:.1f} s on {device}",
        "Fréchet distance (gen/test)": round(fd, 3),
        "real-vs-real floor (train/test)": round(floor, 3),
        "ratio to floor": round(fd / floor, 2),
        "class histogram": dict(zip(SILHOUETTE_CLASSES, counts.tolist())),
    }


@torch.no_grad()
def evaluate_silhouette_classifier(*, device="cpu") -> dict:
    classifier = pre.load_pretrained("silhouette_classifier", device=device)
    test, labels = load_silhouettes("test")
    accuracy = (predict(classifier, test).argmax(-1) == labels).float().mean().item()
    return {"test accuracy": f"{accuracy:.2%} on {len(test)} held-out silhouettes"}


def training_scenes() -> torch.Tensor:
    """The 20,000 scenes every scene model trained on (uint8, seed SCENE_TRAIN_SEED), rendered again (~6 s)."""
    from .scenes import make_scenes

    return make_scenes(pre.SCENE_TRAIN_COUNT, seed=pre.SCENE_TRAIN_SEED)[0]


def copies_of_training(images: torch.Tensor, training: torch.Tensor | None = None) -> torch.Tensor:
    """Which uint8 images (N, 3, 64, 64) are pixel for pixel a training scene: a bool per image.

    The scene world is small: 40 seen object–background pairs × 5 positions × 2 sizes × 25 jitters = 10,000 images,
    and the 20,000 training draws hold 8,639 of them. So most "new" scenes of seen pairs are copies of training scenes,
    and a figure on them measures memory, not generalisation; the held-out pairs (and the rest) are truly new.
    """
    seen = {x.numpy().tobytes() for x in (training_scenes() if training is None else training)}
    return torch.tensor([x.numpy().tobytes() in seen for x in images], dtype=torch.bool)


@torch.no_grad()
def evaluate_scene_vae(*, device="cpu", num: int = 1000) -> dict:
    """PSNR of reconstructions (posterior mode, decoded) on new draws of scenes, split into what the VAE trained on
    (pixel-identical copies of training scenes), what it did not (seen pairs at a placement never in training, and
    the held-out pairs), and on the cat photo."""
    from .checkpoint import read_metadata
    from .data import load_photo, to_float
    from .latents import reconstruct
    from .metrics import psnr
    from .scenes import make_scenes

    vae = pre.load_pretrained("scene_vae", device=device)
    seen = make_scenes(num, seed=pre.SCENE_TEST_SEED)[0]
    copies = copies_of_training(seen)
    groups = {"copies of training scenes (memory)": seen[copies],
              "seen pairs, placement never in training (new)": seen[~copies],
              "held-out object-background pairs (new)": make_scenes(num, seed=pre.SCENE_TEST_SEED, split="heldout")[0]}
    report = {}
    for label, images in groups.items():
        scores = psnr(reconstruct(vae, images), to_float(images))
        report[f"PSNR, {label}"] = f"{scores.mean().item():.2f} dB ({len(images)} scenes)"
    cat = load_photo("chelsea", size=64).to(device)
    report["PSNR, chelsea the cat (64×64)"] = f"{psnr(vae.decode(vae.encode(cat).mode()).clamp(-1, 1), cat).item():.2f} dB"
    report["latent scale (1 / std)"] = round(read_metadata(pre.checkpoint_path("scene_vae"))["latent_scale"], 4)
    return report


ATTRIBUTES = ("object", "background", "position", "size")  # the judge's heads, in the order of Scene.labels


@torch.no_grad()
def judge_scenes(judge, images: torch.Tensor, *, batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """What the judge sees in uint8 scenes (N, 3, 64, 64): labels (N, 4) and its confidence in each (N, 4)."""
    from .data import to_float

    judge.eval()
    device = next(judge.parameters()).device
    probs = [torch.cat(parts) for parts in zip(*[
        [lg.softmax(-1).cpu() for lg in judge(to_float(images[i:i + batch_size].to(device)))]
        for i in range(0, len(images), batch_size)])]
    confidence, labels = torch.stack([p.max(-1).values for p in probs], 1), torch.stack([p.argmax(-1) for p in probs], 1)
    return labels, confidence


def prompt_set(split: str) -> list:
    """80 fixed scenes whose captions are the prompts: each object-background pair of the split, at two
    (position, size) combinations that vary from pair to pair. 'heldout': the 8 pairs no model but the judge saw."""
    from .scenes import POSITIONS, SIZES, SPLITS, Scene

    pairs = SPLITS[split]
    per_pair = max(2, 80 // len(pairs))
    return [Scene(obj, bg, POSITIONS[(j + 2 * k) % len(POSITIONS)], SIZES[(j + k) % len(SIZES)])
            for j, (obj, bg) in enumerate(pairs) for k in range(per_pair)][:80]


@torch.no_grad()
def evaluate_scene_vae_decoder(*, device="cpu", num: int = 1000) -> dict:
    """The fine-tuned decoder against the first, on the same new scenes: PSNR, the error in neighbour differences
    (the term the fine-tuning loss adds) and SSIM (which the loss never saw, so it is the fair judge of the gain).
    'train' pairs are mostly copies of training scenes (see copies_of_training); 'heldout' pairs are new."""
    from .data import to_float
    from .latents import reconstruct
    from .metrics import edge_error, psnr, ssim
    from .scenes import make_scenes

    vaes = {name: pre.load_pretrained(name, device=device) for name in ("scene_vae", "scene_vae_decoder")}
    report = {}
    for split in ("train", "heldout"):
        x = to_float(make_scenes(num, seed=pre.SCENE_TEST_SEED, split=split)[0])
        for name, vae in vaes.items():
            recon = reconstruct(vae, x)
            report[f"{name}, {split} pairs"] = (f"PSNR {psnr(recon, x).mean().item():.2f} dB, edge error "
                                                f"{edge_error(recon, x):.4f}, SSIM {ssim(recon, x).mean().item():.4f}")
    return report


@torch.no_grad()
def evaluate_scene_judge(*, device="cpu", num: int = 2000) -> dict:
    """Accuracy of each head on freshly drawn scenes of both splits (a seed the judge never trained on)."""
    from .scenes import make_scenes

    judge = pre.load_pretrained("scene_judge", device=device)
    report = {}
    for split in ("train", "heldout"):
        images, _, labels = make_scenes(num, seed=pre.SCENE_JUDGE_TEST_SEED, split=split)
        correct = judge_scenes(judge, images)[0] == labels
        accs = ", ".join(f"{h} {correct[:, k].float().mean().item():.2%}" for k, h in enumerate(ATTRIBUTES))
        report[f"accuracy, {split} pairs"] = f"{accs}; all four {correct.all(1).float().mean().item():.2%} ({num} scenes)"
    return report


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
def evaluate_scene_latent_unet(*, device="cpu", num_samples: int = 1000, num_steps: int | None = None,
                               sampler: str = "ddim", seed: int = 0) -> dict:
    """Unconditional latent samples, decoded, judged: clean-scene share and Fréchet distance in judge features."""
    num_steps = num_steps or 50
    from .latents import decode_latents, encode_images
    from .metrics import nearest_psnr
    from .scenes import make_scenes

    unet = pre.load_pretrained("scene_latent_unet", device=device)
    vae = pre.load_pretrained("scene_vae", device=device)
    judge = pre.load_pretrained("scene_judge", device=device)
    start = time.perf_counter()
    sampler_obj = make_sampler(sampler, NoiseSchedule(pre.SCENE_SCHEDULE), clip_sample=None)
    latents = sample_in_batches(unet, sampler_obj, num_samples, (4, 8, 8), num_steps=num_steps, seed=seed)
    samples = decode_latents(vae, latents, pre.scene_latent_scale())
    seconds = time.perf_counter() - start
    reference = make_scenes(num_samples, seed=pre.SCENE_TEST_SEED)[0]  # new draws of the training pairs
    training = training_scenes()
    q = scene_quality(judge, samples, reference, training)
    # Copying or generalising? The Fréchet distance cannot tell: a model that replayed its training scenes would score
    # the floor. A decoded sample can come no closer to a training scene than the VAE's own round trip of one does.
    distinct = torch.unique(training, dim=0)
    sample_nn = nearest_psnr(samples, distinct).median().item()
    round_trip_nn = nearest_psnr(decode_latents(vae, encode_images(vae, reference[:200])), distinct).median().item()
    return {"samples": f"{num_samples} with {sampler.upper()}, {num_steps} steps, seed {seed}",
            "sampling + decoding time": f"{seconds:.1f} s on {device}",
            f"clean scenes (judge confidence >= {CONFIDENT} on all four heads)": f"{q['clean']:.1%}",
            "Fréchet distance in judge features (samples/new draws)": round(q["fd"], 2),
            "real-vs-real floor (training/new draws; "
            f"{copies_of_training(reference, training).float().mean().item():.0%} of new draws are training copies)":
                round(q["floor"], 2),
            "ratio to floor": round(q["fd"] / q["floor"], 2),
            "nearest training scene, median PSNR: samples": f"{sample_nn:.1f} dB",
            "nearest training scene, median PSNR: VAE round trips of new draws (a copy's ceiling)":
                f"{round_trip_nn:.1f} dB"}


@torch.no_grad()
def prompt_adherence(pipe, scenes_: list, *, guidance_scale: float, num_steps: int = 25, seed: int = 0,
                     judge=None) -> torch.Tensor:
    """One image per scene's caption, in one batch; (N, 4) bool: did the judge find each asked-for attribute?"""
    judge = judge or pre.load_pretrained("scene_judge", device=pipe.device)
    images = pipe([s.caption for s in scenes_], num_steps=num_steps, guidance_scale=guidance_scale, seed=seed)
    return judge_scenes(judge, images)[0] == torch.tensor([s.labels for s in scenes_])


@torch.no_grad()
def evaluate_scene_text_unet(*, device="cpu", guidance_scale: float | None = None, num_steps: int | None = None) -> dict:
    """Prompt adherence on the fixed prompt sets, seen and held-out object-background pairs, as the judge sees it."""
    num_steps = num_steps or 25
    from .generate import DEFAULT_GUIDANCE, TextToImage

    pipe = TextToImage.from_pretrained(device=device)
    guidance_scale = DEFAULT_GUIDANCE if guidance_scale is None else guidance_scale
    report = {"sampling": f"DDIM, {num_steps} steps, guidance scale {guidance_scale}, one image per prompt"}
    for split, label in (("train", "seen pairs"), ("heldout", "held-out pairs")):
        correct = prompt_adherence(pipe, prompt_set(split), guidance_scale=guidance_scale, num_steps=num_steps)
        per = ", ".join(f"{h} {correct[:, k].float().mean().item():.0%}" for k, h in enumerate(ATTRIBUTES))
        report[f"adherence, {label}"] = (f"{correct.float().mean().item():.1%} of attributes ({per}); "
                                         f"all four {correct.all(1).float().mean().item():.0%} of {len(correct)} prompts")
    return report


@torch.no_grad()
def evaluate_scene_clip(*, device="cpu", num: int = 1000) -> dict:
    """Retrieval: for new scenes, is the most similar of all 480 possible captions the scene's own?"""
    from .latents import encode_scenes
    from .scenes import BACKGROUNDS, OBJECTS, POSITIONS, SIZES, Scene

    clip = pre.load_pretrained("scene_clip", device=device)
    vae = pre.load_pretrained("scene_vae", device=device)
    captions = [Scene(o, b, p, s).caption for o in OBJECTS for b in BACKGROUNDS for p in POSITIONS for s in SIZES]
    ids, mask = clip.config.tokenizer()(captions)
    text = clip.encode_text(ids.to(device), mask.to(device))
    report = {}
    for split in ("train", "heldout"):
        latents, true, _ = encode_scenes(vae, num, seed=pre.SCENE_TEST_SEED, split=split, scale=pre.scene_latent_scale())
        best = (clip.encode_image(latents.to(device)) @ text.T).argmax(1).cpu()
        accuracy = sum(captions[i] == c for i, c in zip(best.tolist(), true)) / num
        report[f"caption retrieval, {split} pairs"] = f"{accuracy:.1%} of {num} new scenes (top-1 of 480 captions)"
    return report


# --- img2img and inpainting on the course's model (lesson 08): what survives of the init image, what the prompt adds

def _share(hits: torch.Tensor) -> tuple[float, float]:
    """A proportion and its standard error √(p(1-p)/n)."""
    p = hits.float().mean().item()
    return p, (p * (1 - p) / len(hits)) ** 0.5


@torch.no_grad()
def img2img_survival(pipe, init, prompt, *, strengths=(0.2, 0.4, 0.6, 0.8, 1.0), num_images: int = 32,
                     num_steps: int = 25, seed: int = 0, judge=None) -> list[dict]:
    """img2img of one rendered scene `init` (a scenes.Scene) under the caption of `prompt` (a Scene that differs in
    an attribute or more), at each strength: PSNR and SSIM of the images to the init image (mean, standard error),
    and per attribute the share the judge reads as the prompt's and as the init's ((share, standard error) each)."""
    from .metrics import psnr, ssim
    from .scenes import render

    judge = judge or pre.load_pretrained("scene_judge", device=pipe.device)
    image = torch.from_numpy(render(init)).permute(2, 0, 1)[None]  # (1, 3, 64, 64) uint8, no jitter
    rows = []
    for strength in strengths:
        out = pipe(prompt.caption, num_images=num_images, init_image=image, strength=strength, num_steps=num_steps,
                   seed=seed)
        x, ref = out.float() / 127.5 - 1, (image.float() / 127.5 - 1).expand(len(out), -1, -1, -1)
        p, s = psnr(x, ref), ssim(x, ref)
        labels = judge_scenes(judge, out)[0]
        rows.append({"strength": strength, "psnr": (p.mean().item(), p.std().item() / len(p) ** 0.5),
                     "ssim": (s.mean().item(), s.std().item() / len(s) ** 0.5),
                     "prompt": {a: _share(labels[:, k] == prompt.labels[k]) for k, a in enumerate(ATTRIBUTES)},
                     "init": {a: _share(labels[:, k] == init.labels[k]) for k, a in enumerate(ATTRIBUTES)}})
    return rows


@torch.no_grad()
def inpainting_check(pipe, init, prompt, mask: torch.Tensor, *, num_images: int = 32, num_steps: int = 25,
                     strength: float = 1.0, seed: int = 0, judge=None) -> dict:
    """Inpaint the rendered scene `init` where `mask` (1, 1, 64, 64) is white, under `prompt`'s caption (Scenes).

    kept: the largest change, in 0…255 pixel steps, outside the repainted latent cells — against the VAE's round trip
    of the init image (the latents the pipeline keeps, decoded: what "unchanged" can mean after a VAE), over all of
    the kept region and over the part at least one latent cell from the repainted cells (the decoder's reach blurs
    the border); and the round trip's own change to the init image there, for scale. judge: per attribute, the
    share of images the judge reads as the prompt's (share, standard error); "init object" the share still showing
    the init's object."""
    import torch.nn.functional as F

    from .checks import check_mask
    from .scenes import render

    judge = judge or pre.load_pretrained("scene_judge", device=pipe.device)
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
            "init object": _share(labels[:, 0] == init.labels[0]), "num_images": num_images}
