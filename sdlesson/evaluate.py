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
