"""GenEval in the compositional world: prompts by category, images read back into objects, scored by GenEval's rules.

GenEval (Ghosh et al. 2023) asks a text-to-image model for 553 prompts in six categories, reads each image with an
object detector and scores whether the image holds what the prompt asked for. Here the same, on compositional scenes:

    prompts = make_prompts("heldout")              # Prompt(category='colors', text='a purple key', ...)
    reading = read_image(image)                    # Reading(background='gray', objects=(Found('key', 'purple', box),))
    score(prompts[0], reading)                     # True / False, by the category's rule
    report = geneval(prompts, images_per_prompt)   # per-category accuracy ± standard error

The reader is the instrument, and analytic, so it needs no weights: the background is the median of the image's
border; an object is a connected region of pixels far from it; its colour is the nearest of COLOURS to the median of
its most colourful pixels; its kind is the glyph whose shape and outline correlate best with the region's, over small shifts.
Its accuracy is measured on real renders (seen and held-out), on blurred and noisy ones and on VAE round trips by
`validate_reader`, before it judges any model.

The rules (GenEval's, with "at least one" where it counts detections):
    single_object   "a car"                        at least one car
    two_object      "a car and a star"             at least one of each
    counting        "three stars"                  exactly three stars (other kinds may be there)
    colors          "a blue apple"                 at least one apple, and a blue one among them
    position        "a car left of a star"         a car and a star whose box centres stand so (RELATION_MARGIN px)
    color_attr      "a red car and a blue apple"   a red car and a blue apple
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from . import compositional as cw
from .checks import check_int

CATEGORIES = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
# GenEval's published scores (overall, then by category in CATEGORIES order): the anchors for the failure modes.
GENEVAL_ANCHORS = {"SD v1.5": (0.43, (0.97, 0.38, 0.35, 0.76, 0.04, 0.06)), "SDXL": (0.55, None),
                   "DALL·E 3": (0.67, None), "SD3 (8B)": (0.74, None)}

FOREGROUND = 45  # a pixel is part of an object when a channel differs from the background by more than this
MIN_AREA = 30  # px: smaller regions are specks, not objects (the smallest glyph, the car, covers ~190 px)
BRIGHT = 110  # an object's pixel whose brightest channel is below this is outline, not fill
VIVID = 0.8  # an object's colour is the median of its pixels at least this colourful (max − min channel) as its top 5%
WINDOW = 32  # px: the kind is read in a window this size centred on the region's box
SHIFT = 3  # px: templates are matched at every shift up to this
GROW = 2  # px: the kind is read on the region grown by this much, so a thin faint part (a handle) still counts


@dataclass(frozen=True)
class Found:
    """An object read from an image: kind, colour, box (x0, y0, x1, y1), x1 and y1 exclusive."""

    kind: str
    colour: str
    box: tuple[int, int, int, int]

    @property
    def centre(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return (x0 + x1) / 2, (y0 + y1) / 2


@dataclass(frozen=True)
class Reading:
    background: str
    objects: tuple[Found, ...]

    @property
    def counts(self) -> dict[str, int]:
        return dict(sorted(cw._count(o.kind for o in self.objects).items()))


# --- the reader ----------------------------------------------------------------------------------------------------

def _features(image: np.ndarray, region: np.ndarray, background: np.ndarray, centre: tuple[int, int]) -> np.ndarray:
    """(2, WINDOW + 2·SHIFT, same) float32 around `centre`: how far from the background (the shape) and how dark (the
    outline) each pixel of the region is; zero outside the region (a neighbour never leaks in)."""
    image = image.astype(np.float32)
    shape = np.clip(np.abs(image - background).max(-1) / 100, 0, 1) * region
    line = np.clip((BRIGHT - image.max(-1)) / BRIGHT, 0, 1) * region
    half = WINDOW // 2 + SHIFT
    padded = np.pad(np.stack([shape, line]), ((0, 0), (half, half), (half, half)))
    cx, cy = centre
    return padded[:, cy:cy + 2 * half, cx:cx + 2 * half]


@functools.lru_cache(maxsize=1)
def templates() -> torch.Tensor:
    """(len(KINDS), 2, WINDOW, WINDOW): each kind's features, averaged over its colours and backgrounds."""
    out = []
    for kind in cw.KINDS:
        feats = []
        for colour, background in itertools.product(cw.COLOURS, cw.BACKGROUNDS):
            thing = cw.place(kind, colour, 0)
            image = cw.render(cw.Scene((thing,), background))
            bg = np.array(cw.BACKGROUND_RGB[background], dtype=np.float32)
            region = np.abs(image.astype(np.float32) - bg).max(-1) > FOREGROUND
            region = ndimage.binary_dilation(region, iterations=GROW).astype(np.float32)
            centre = tuple(int(round(c)) for c in thing.centre)
            feats.append(_features(image, region, bg, centre)[:, SHIFT:SHIFT + WINDOW, SHIFT:SHIFT + WINDOW])
        out.append(np.mean(feats, 0))
    return torch.from_numpy(np.stack(out))


def _match(windows: torch.Tensor) -> torch.Tensor:
    """(n, 2, WINDOW + 2·SHIFT, ·) -> (n, len(KINDS)) the best normalised correlation of each window with each
    template over every shift: cos = ⟨w, t⟩ / (|w| |t|)."""
    t = templates()
    t = t / t.flatten(1).norm(dim=1)[:, None, None, None]
    dots = F.conv2d(windows, t)  # (n, K, 2·SHIFT + 1, ·)
    energy = F.conv2d(windows.square().sum(1, keepdim=True), torch.ones(1, 1, WINDOW, WINDOW))  # |w|² per shift
    return (dots / energy.clamp(min=1e-6).sqrt()).flatten(2).max(2).values


def _as_hwc(image) -> np.ndarray:
    image = image.numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or 3 not in (image.shape[0], image.shape[-1]):
        raise ValueError(f"expected a uint8 RGB image (3, H, W) or (H, W, 3), got {image.dtype} {image.shape}")
    return image.transpose(1, 2, 0) if image.shape[0] == 3 and image.shape[-1] != 3 else image


def nearest_name(rgb, palette: dict[str, tuple]) -> str:
    names = list(palette)
    return names[int(np.argmin([np.square(np.asarray(rgb, np.float32) - palette[n]).sum() for n in names]))]


def read_image(image) -> Reading:
    """What a uint8 RGB image (3, H, W) or (H, W, 3) shows: its background and its objects (kind, colour, box)."""
    image = _as_hwc(image)
    pixels = image.astype(np.float32)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background = np.median(border, 0)
    mask = np.abs(pixels - background).max(-1) > FOREGROUND
    labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
    found, windows = [], []
    for i, box in enumerate(ndimage.find_objects(labels), start=1):
        region = labels == i
        if region.sum() < MIN_AREA:
            continue
        ys, xs = box
        inside = pixels[region]
        chroma = inside.max(1) - inside.min(1)  # blends with the outline or the background are less colourful
        vivid = inside[chroma >= VIVID * np.percentile(chroma, 95)]
        colour = nearest_name(np.median(vivid, 0), cw.COLOUR_RGB)
        centre = ((xs.start + xs.stop) // 2, (ys.start + ys.stop) // 2)
        near = ndimage.binary_dilation(region, iterations=GROW) & ((labels == 0) | region)  # thin parts, faint
        windows.append(_features(image, near.astype(np.float32), background, centre))
        found.append((colour, (xs.start, ys.start, xs.stop, ys.stop)))
    kinds = _match(torch.from_numpy(np.stack(windows))).argmax(1).tolist() if windows else []
    objects = tuple(Found(cw.KINDS[k], colour, box) for k, (colour, box) in zip(kinds, found))
    return Reading(nearest_name(background, cw.BACKGROUND_RGB), objects)


def read_images(images) -> list[Reading]:
    """read_image for each image of a uint8 batch (N, 3, H, W)."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ValueError(f"expected a uint8 image batch (N, 3, H, W), got {getattr(images, 'shape', type(images))}")
    return [read_image(im) for im in images]
