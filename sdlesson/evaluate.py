"""Quality measurements for the shipped checkpoints, as reported in data/MODEL_CARD.md and the notebooks."""

from __future__ import annotations

import time

import torch

from . import pretrained as pre
from .classifier import extract_features, predict
from .data import SILHOUETTE_CLASSES, load_silhouettes
from .metrics import class_histogram, frechet_distance
from .samplers import DDIMSampler, DDPMSampler, sample
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


@torch.no_grad()
def evaluate_silhouette_unet(*, device="cpu", num_samples: int = 1000, num_steps: int = 100,
                             sampler: str = "ddim", seed: int = 0) -> dict:
    unet = pre.load_pretrained("silhouette_unet", device=device)
    classifier = pre.load_pretrained("silhouette_classifier", device=device)
    schedule = NoiseSchedule(pre.SILHOUETTE_SCHEDULE)
    sampler_obj = DDIMSampler(schedule) if sampler == "ddim" else DDPMSampler(schedule)
    g = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    samples = torch.cat([
        sample(unet, sampler_obj, (min(250, num_samples - i), 1, 28, 28), num_steps=num_steps, generator=g,
               progress=False).cpu()
        for i in range(0, num_samples, 250)
    ])
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


@torch.no_grad()
def evaluate_scene_vae(*, device="cpu", num: int = 1000) -> dict:
    """PSNR of reconstructions (posterior mode, decoded) on scenes the VAE never saw, and on the cat photo."""
    from .checkpoint import read_metadata
    from .data import load_photo, to_float
    from .metrics import psnr
    from .scenes import make_scenes

    vae = pre.load_pretrained("scene_vae", device=device)
    report = {}
    for split in ("train", "heldout"):
        images = to_float(make_scenes(num, seed=pre.SCENE_TEST_SEED, split=split)[0]).to(device)
        recon = torch.cat([vae.decode(vae.encode(images[i:i + 250]).mode()) for i in range(0, num, 250)])
        label = "seen object-background pairs" if split == "train" else "held-out pairs"
        report[f"PSNR, new scenes, {label}"] = f"{psnr(recon.clamp(-1, 1), images).mean().item():.2f} dB ({num} scenes)"
    cat = load_photo("chelsea", size=64).to(device)
    report["PSNR, chelsea the cat (64×64)"] = f"{psnr(vae.decode(vae.encode(cat).mode()).clamp(-1, 1), cat).item():.2f} dB"
    report["latent scale (1 / std)"] = round(read_metadata(pre.checkpoint_path("scene_vae"))["latent_scale"], 4)
    return report


@torch.no_grad()
def evaluate_scene_judge(*, device="cpu", num: int = 2000) -> dict:
    """Accuracy of each head on freshly drawn scenes of both splits (a seed the judge never trained on)."""
    from .data import to_float
    from .scenes import make_scenes

    judge = pre.load_pretrained("scene_judge", device=device)
    report = {}
    for split in ("train", "heldout"):
        images, _, labels = make_scenes(num, seed=pre.SCENE_JUDGE_TEST_SEED, split=split)
        logits = [torch.cat(parts) for parts in zip(*[
            [lg.cpu() for lg in judge(to_float(images[i:i + 500].to(device)))] for i in range(0, num, 500)])]
        correct = torch.stack([lg.argmax(-1) == labels[:, k] for k, lg in enumerate(logits)], dim=1)
        heads = ("object", "background", "position", "size")
        accs = ", ".join(f"{h} {correct[:, k].float().mean().item():.2%}" for k, h in enumerate(heads))
        report[f"accuracy, {split} pairs"] = f"{accs}; all four {correct.all(1).float().mean().item():.2%} ({num} scenes)"
    return report
