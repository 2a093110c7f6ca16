"""GenEval in the compositional world: prompts by category, images read back into objects, scored by GenEval's rules.

GenEval (Ghosh et al. 2023) asks a text-to-image model for 553 prompts in six categories, reads each image with an
object detector and scores whether the image holds what the prompt asked for. Here the same, on compositional scenes:

    prompts = make_prompts("heldout")              # Prompt(category='colors', text='a purple key', ...)
    reading = read_image(image)                    # Reading(background='gray', objects=(Found('key', 'purple', box),))
    score(prompts[0], reading)                     # True / False, by the category's rule
    report = geneval(prompts, images_per_prompt)   # per-category accuracy ± standard error

The reader is the instrument, and analytic, so it needs no weights: the background is the median of the image's
border; an object is a connected region of pixels far from it; its colour is the nearest of COLOURS to the median of
its most colourful pixels; its kind is the glyph whose shape and outline correlate best with the region's, over
small shifts.
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
from dataclasses import dataclass

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


TEMPLATE_BLURS = (0.0, 1.5)  # px: each kind has a sharp template and a blurred one (a generator's soft edges)


@functools.lru_cache(maxsize=1)
def templates() -> torch.Tensor:
    """(len(KINDS) · len(TEMPLATE_BLURS), 2, WINDOW, WINDOW): each kind's features at each blur, averaged over its
    colours and backgrounds; kind k's templates are rows k·len(TEMPLATE_BLURS) onwards."""
    out = []
    for kind in cw.KINDS:
        for sigma in TEMPLATE_BLURS:
            feats = []
            for colour, background in itertools.product(cw.COLOURS, cw.BACKGROUNDS):
                thing = cw.place(kind, colour, 0)
                image = cw.render(cw.Scene((thing,), background))
                if sigma:
                    image = ndimage.gaussian_filter(image.astype(np.float32), (sigma, sigma, 0)).round()
                bg = np.array(cw.BACKGROUND_RGB[background], dtype=np.float32)
                region = np.abs(image.astype(np.float32) - bg).max(-1) > FOREGROUND
                region = ndimage.binary_dilation(region, iterations=GROW).astype(np.float32)
                centre = tuple(int(round(c)) for c in thing.centre)
                feats.append(_features(image, region, bg, centre)[:, SHIFT:SHIFT + WINDOW, SHIFT:SHIFT + WINDOW])
            out.append(np.mean(feats, 0))
    return torch.from_numpy(np.stack(out))


def _match(windows: torch.Tensor) -> torch.Tensor:
    """(n, 2, WINDOW + 2·SHIFT, ·) -> (n, len(KINDS)) the best normalised correlation of each window with each
    kind's templates over every shift and blur: cos = ⟨w, t⟩ / (|w| |t|)."""
    t = templates()
    t = t / t.flatten(1).norm(dim=1)[:, None, None, None]
    dots = F.conv2d(windows, t)  # (n, K · blurs, 2·SHIFT + 1, ·)
    energy = F.conv2d(windows.square().sum(1, keepdim=True), torch.ones(1, 1, WINDOW, WINDOW))  # |w|² per shift
    cos = (dots / energy.clamp(min=1e-6).sqrt()).flatten(2).max(2).values
    return cos.view(len(windows), len(cw.KINDS), len(TEMPLATE_BLURS)).max(2).values


def _as_hwc(image) -> np.ndarray:
    image = image.numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or 3 not in (image.shape[0], image.shape[-1]):
        raise ValueError(f"expected a uint8 RGB image (3, H, W) or (H, W, 3), got {image.dtype} {image.shape}")
    return image.transpose(1, 2, 0) if image.shape[0] == 3 and image.shape[-1] != 3 else image


def nearest_name(rgb, palette: dict[str, tuple], *, shade: bool = False) -> str:
    """The palette's name nearest to an RGB value. shade=True forgives brightness: each palette colour c is first
    scaled by the α in [0.5, 1] that brings it closest (a fill blurred into its black outline is a darker c)."""
    p = np.asarray(rgb, np.float64)
    colours = np.array(list(palette.values()), dtype=np.float64)  # (K, 3)
    alpha = (colours @ p / np.square(colours).sum(1)).clip(0.5, 1) if shade else np.ones(len(colours))
    return list(palette)[int(np.argmin(np.square(p - alpha[:, None] * colours).sum(1)))]


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
        colour = nearest_name(np.median(vivid, 0), cw.COLOUR_RGB, shade=True)
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


# --- prompts and GenEval's rules -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Prompt:
    """A prompt and what it asks for: objects as (kind, count, colour), count None meaning "at least one", colour None
    meaning any; and a relation ('left of', ...) that objects[0] must stand in to objects[1]."""

    category: str
    text: str
    objects: tuple[tuple[str, int | None, str | None], ...]
    relation: str | None = None

    def combos(self) -> list[tuple]:
        """The held-out compositions the prompt asks for, in compositional.heldout_combos' form."""
        kinds = [k for k, _, _ in self.objects]
        found = [("colour", k, c) for k, _, c in self.objects if (k, c) in cw.HELDOUT_COLOURS]
        found += [("pair", a, b) for a, b in cw.HELDOUT_PAIRS if a in kinds and b in kinds]
        return found + [("count", k, n) for k, n, _ in self.objects if (k, n) in cw.HELDOUT_COUNTS]


def score(prompt: Prompt, reading: Reading) -> bool:
    """Does the image read as `reading` hold what the prompt asks for? GenEval's rule for its category."""
    chosen = []
    for kind, count, colour in prompt.objects:
        of_kind = [o for o in reading.objects if o.kind == kind]
        if (len(of_kind) != count) if count is not None else not of_kind:
            return False
        if colour is not None:
            of_kind = [o for o in of_kind if o.colour == colour]
            if not of_kind:
                return False
        chosen.append(of_kind)
    if prompt.relation is not None:
        return any(cw.relation_holds(a.centre, b.centre, prompt.relation) for a in chosen[0] for b in chosen[1])
    return True


def _prompt(category: str, objects: list[tuple], relation: str | None = None) -> Prompt:
    phrases = [cw.noun_phrase(k, n or 1, c) for k, n, c in objects]
    text = f"{phrases[0]} {relation} {phrases[1]}" if relation else " and ".join(phrases)
    return Prompt(category, text, tuple(objects), relation)


def parse_prompt(text: str) -> Prompt:
    """A typed prompt of this world as a Prompt the reader can score: "a red car left of a blue star",
    "three yellow hearts", "a fish and a purple umbrella on a gray background" (the background is not scored).

    "a"/"an" asks for at least one, as GenEval's prompts do; "two" … "four" for exactly that many. ValueError for a
    prompt outside the captions' grammar."""
    words = text.lower().split()
    if len(words) >= 4 and words[-1] == "background" and "on" in words:
        words = words[:len(words) - words[::-1].index("on") - 1]  # drop "on a … background"
    relation = next((r for r in cw.RELATIONS if f" {r} " in f" {' '.join(words)} "), None)
    phrases = " ".join(words).replace(f" {relation} ", " and ") if relation else " ".join(words)
    singular = {plural: kind for kind, plural in cw.PLURALS.items()} | {kind: kind for kind in cw.KINDS}
    numbers = {"a": None, "an": None} | {word: n for n, word in cw.NUMBERS.items() if n > 1}
    objects = []
    for phrase in phrases.split(" and "):
        parts = phrase.split()
        if not 2 <= len(parts) <= 3 or parts[0] not in numbers or parts[-1] not in singular or (
                len(parts) == 3 and parts[1] not in cw.COLOURS):
            raise ValueError(f"cannot read {phrase!r} in {text!r}: expected a phrase like 'a car', 'a red car' or "
                             f"'three blue stars' (kinds: {', '.join(cw.KINDS)}; colours: {', '.join(cw.COLOURS)})")
        objects.append((singular[parts[-1]], numbers[parts[0]], parts[1] if len(parts) == 3 else None))
    if relation and len(objects) != 2:
        raise ValueError(f"a relation joins two objects, got {len(objects)} in {text!r}")
    coloured, counted = any(c for _, _, c in objects), any(n for _, n, _ in objects)
    category = ("position" if relation else "counting" if counted and len(objects) == 1 else
                "colors" if coloured and len(objects) == 1 else "single_object" if len(objects) == 1 else
                "color_attr" if coloured else "two_object")
    return Prompt(category, text, tuple(objects), relation)


OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def swap_pairs(scenes: list[cw.Scene]) -> dict[str, list[tuple[int, str, str]]]:
    """Caption pairs that differ only in what binds to what (Yuksekgonul et al. 2023's test of CLIP as a bag of
    words): (scene index, true caption, its twin) where the twin has

        relation   the relation reversed       "a car left of a star"  vs "a car right of a star"
        colour     the two colours swapped     "a red car and a blue star"  vs "a blue car and a red star"
        kinds      (the control) two other kinds  "a car and a star"  vs "an apple and a fish"

    The twins of "relation" and "colour" hold the same words as the truth; the control's do not."""
    pairs = {"relation": [], "colour": [], "kinds": []}
    for i, scene in enumerate(scenes):
        counts, colours = scene.counts, scene.colours
        kinds = list(counts)
        if len(kinds) < 2:
            continue
        a, b = kinds[:2]
        if counts[a] == counts[b] == 1:
            centre = {t.kind: t.centre for t in scene.objects}
            relation = next((r for r in cw.RELATIONS if cw.relation_holds(centre[a], centre[b], r)), None)
            if relation:
                phrase = lambda r: f"{cw.noun_phrase(a)} {r} {cw.noun_phrase(b)}"  # noqa: E731
                pairs["relation"].append((i, phrase(relation), phrase(OPPOSITE[relation])))
        if colours[a] != colours[b]:
            said = lambda ca, cb: f"{cw.noun_phrase(a, counts[a], ca)} and {cw.noun_phrase(b, counts[b], cb)}"  # noqa
            pairs["colour"].append((i, said(colours[a], colours[b]), said(colours[b], colours[a])))
        others = [k for k in cw.KINDS if k not in counts][:2]
        pairs["kinds"].append((i, f"{cw.noun_phrase(a)} and {cw.noun_phrase(b)}",
                               f"{cw.noun_phrase(others[0])} and {cw.noun_phrase(others[1])}"))
    return pairs


@torch.no_grad()
def swap_test(clip, latents: torch.Tensor, scenes: list[cw.Scene]) -> dict[str, tuple[float, float, int]]:
    """How often a CLIP scores a scene's true caption above its twin (swap_pairs), per kind of twin: (share,
    standard error, pairs). Chance is 50%; a model that reads only which words occur scores ~50% on relation and
    colour, whatever it scores on the control. latents: the scenes' (B, 4, 8, 8) latents, × the latent scale."""
    device = next(clip.parameters()).device
    images = clip.encode_image(latents.to(device))
    tokenizer = clip.config.tokenizer()
    report = {}
    for name, pairs in swap_pairs(scenes).items():
        rows = torch.tensor([i for i, _, _ in pairs], device=device)
        true, twin = ([p[k] for p in pairs] for k in (1, 2))
        true, twin = (clip.encode_text(*(t.to(device) for t in tokenizer(c))) for c in (true, twin))
        right = ((images[rows] * true).sum(1) > (images[rows] * twin).sum(1)).float()
        p = right.mean().item()
        report[name] = (p, math.sqrt(p * (1 - p) / len(right)), len(right))
    return report


def make_prompts(split: str = "train", *, per_category: int = 40, seed: int = 0) -> list[Prompt]:
    """GenEval's six categories from templates: compositions seen in training ("train") or held out ("heldout").

    Each category holds every composition of its kind when there are at most `per_category`, else a fixed random
    `per_category` of them. Held-out prompts each ask for at least one held-out composition; seen prompts for none
    (there is no held-out single object: every kind is seen).
    """
    cw._check_split(split)
    rng = np.random.default_rng([seed, cw.SPLITS.index(split)])
    held = split == "heldout"
    pairs = [p for p in itertools.permutations(cw.KINDS, 2) if (tuple(sorted(p, key=cw.KINDS.index)) in
                                                                 cw.HELDOUT_PAIRS) == held]
    colours = [p for p in itertools.product(cw.KINDS, cw.COLOURS) if (p in cw.HELDOUT_COLOURS) == held]
    counts = [p for p in itertools.product(cw.KINDS, range(2, cw.MAX_OBJECTS + 1)) if (p in cw.HELDOUT_COUNTS) == held]
    if held:  # colour attribution: a held-out kind–colour beside a seen one, or a held-out pair in seen colours
        attr = [(a, ca, b, cb) for a, ca in colours for b, cb in itertools.product(cw.KINDS, cw.COLOURS)
                if b != a and (b, cb) not in cw.HELDOUT_COLOURS and tuple(sorted((a, b), key=cw.KINDS.index))
                not in cw.HELDOUT_PAIRS]
        attr += [(a, ca, b, cb) for a, b in pairs for ca, cb in itertools.product(cw.COLOURS, cw.COLOURS)
                 if (a, ca) not in cw.HELDOUT_COLOURS and (b, cb) not in cw.HELDOUT_COLOURS]
    else:
        attr = [(a, ca, b, cb) for a, b in pairs for ca, cb in itertools.product(cw.COLOURS, cw.COLOURS)
                if (a, ca) in colours and (b, cb) in colours]
    position = [(a, r, b) for a, b in pairs for r in cw.RELATIONS]

    def some(items):
        return [items[i] for i in sorted(rng.permutation(len(items))[:per_category])] if len(items) > per_category \
            else items

    prompts = [] if held else [_prompt("single_object", [(k, None, None)]) for k in some(list(cw.KINDS))]
    prompts += [_prompt("two_object", [(a, None, None), (b, None, None)]) for a, b in some(pairs)]
    prompts += [_prompt("counting", [(k, n, None)]) for k, n in some(counts)]
    prompts += [_prompt("colors", [(k, None, c)]) for k, c in some(colours)]
    prompts += [_prompt("position", [(a, None, None), (b, None, None)], r) for a, r, b in some(position)]
    prompts += [_prompt("color_attr", [(a, None, ca), (b, None, cb)]) for a, ca, b, cb in some(attr)]
    return prompts


def render_prompt(prompt: Prompt, rng: np.random.Generator) -> cw.Scene:
    """A scene that holds exactly what the prompt asks (one of each kind unless counted, its colour if given) and
    draws what it leaves open (colours, cells, background) at random: the prompt's ground-truth picture."""
    n = [count or 1 for _, count, _ in prompt.objects]
    if prompt.relation is not None:  # a's cell and b's cell, side by side or diagonal, as the relation says
        options = [(i, j) for i in range(4) for j in range(4) if i != j and cw.relation_holds(
            cw.place("star", "red", i).centre, cw.place("star", "red", j).centre, prompt.relation)]
        first = options[int(rng.integers(len(options)))]
        cells = [*first, *(c for c in rng.permutation(4) if c not in first)]
    else:
        cells = list(rng.permutation(4))
    things, i = [], 0
    for (kind, _, colour), count in zip(prompt.objects, n):
        colour = colour or cw.COLOURS[int(rng.integers(len(cw.COLOURS)))]
        for _ in range(count):
            shift = rng.integers(-cw.JITTER, cw.JITTER + 1, size=2)
            things.append(cw.place(kind, colour, int(cells[i]), *map(int, shift)))
            i += 1
    return cw.Scene(tuple(things), cw.BACKGROUNDS[int(rng.integers(len(cw.BACKGROUNDS)))])


def render_prompts(prompts: list[Prompt], n: int = 4, *, seed: int = 0) -> torch.Tensor:
    """Ground-truth pictures of each prompt: uint8 (len(prompts), n, 3, 64, 64)."""
    rng = np.random.default_rng(seed)
    images = np.stack([[cw.render(render_prompt(p, rng)) for _ in range(n)] for p in prompts])
    return torch.from_numpy(images).permute(0, 1, 4, 2, 3).contiguous()


def geneval(prompts: list[Prompt], images: torch.Tensor) -> dict[str, tuple[float, float, int]]:
    """GenEval's table: images uint8 (P, N, 3, 64, 64), N pictures of each of P prompts -> {category: (share of
    pictures that hold their prompt, its standard error √(p(1−p)/n), n)}, and 'overall': the mean of the categories'
    scores (GenEval's overall), its standard error from theirs."""
    if images.dim() != 5 or len(images) != len(prompts):
        raise ValueError(f"expected images (P, N, 3, H, W) with P = {len(prompts)} prompts, got {tuple(images.shape)}")
    hits: dict[str, list[bool]] = {}
    for prompt, pictures in zip(prompts, images):
        hits.setdefault(prompt.category, []).extend(score(prompt, r) for r in read_images(pictures))
    table = {}
    for category in CATEGORIES:
        if category in hits:
            p, n = float(np.mean(hits[category])), len(hits[category])
            table[category] = (p, math.sqrt(p * (1 - p) / n), n)
    scores = [v[0] for v in table.values()]
    table["overall"] = (float(np.mean(scores)), math.sqrt(sum(v[1] ** 2 for v in table.values())) / len(scores),
                        sum(v[2] for v in table.values()))
    return table


# --- a text-to-image model under the evaluator ------------------------------------------------------------------

@torch.no_grad()
def generate_for(pipe, prompts: list[Prompt], n: int = 4, *, guidance_scale: float, num_steps: int | None = None,
                 seed: int = 0, sampler: str = "ddim", negative_prompt: str | None = None,
                 batch_size: int = 200) -> torch.Tensor:
    """n pictures of each prompt from a TextToImage pipeline: uint8 (P, n, 3, H, W), ready for geneval().

    Picture j of prompt i starts from the same noise whatever the guidance scale (all noise is drawn up front from
    `seed`), so a sweep over scales compares the same seeds, and its differences are the scale's alone.
    """
    check_int("n", n, low=1)
    texts = [p.text for p in prompts for _ in range(n)]
    side = pipe.unet.config.sample_size
    noise = torch.randn((len(texts), pipe.unet.config.in_channels, side, side),
                        generator=torch.Generator().manual_seed(seed))
    images = torch.cat([pipe(texts[i:i + batch_size], latents=noise[i:i + batch_size], guidance_scale=guidance_scale,
                             num_steps=num_steps, sampler=sampler, negative_prompt=negative_prompt)
                        for i in range(0, len(texts), batch_size)])
    return images.view(len(prompts), n, *images.shape[1:])


def open_prompts() -> list[Prompt]:
    """The most under-specified prompts, one kind each ("a car"): colour, place and background are left open."""
    return [_prompt("single_object", [(k, None, None)]) for k in cw.KINDS]


def mean_diversity(prompts: list[Prompt], images: torch.Tensor) -> dict[str, tuple[float, float]]:
    """diversity() of each prompt's pictures (P, N, 3, H, W), averaged over the prompts: {attribute: (mean, standard
    error over prompts)}."""
    per: dict[str, list[float]] = {}
    for prompt, pictures in zip(prompts, images):
        for name, value in diversity(prompt, read_images(pictures)).items():
            per.setdefault(name, []).append(value)
    return {name: (float(np.mean(v)), float(np.std(v, ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0)
            for name, v in per.items()}


def format_table(tables: dict[str, dict[str, tuple[float, float, int]]]) -> str:
    """geneval() tables side by side: one row per category, one column per table (e.g. per guidance scale),
    each cell "score ± standard error" in percent."""
    names = list(tables)
    lines = [f"{'':15}" + "".join(f"{name:>14}" for name in names)]
    for category in [*CATEGORIES, "overall"]:
        cells = [tables[name].get(category) for name in names]
        if any(cells):
            lines.append(f"{category:15}" + "".join(f"{100 * c[0]:>8.1f} ±{100 * c[1]:>4.1f}" if c else f"{'':>14}"
                                                 for c in cells))
    return "\n".join(lines)


def word_localisation(pipe, prompts: list[Prompt], *, levels: dict[str, tuple[str, ...]], ts: tuple[int, ...],
                      seed: int = 0) -> dict[tuple[str, int], tuple[float, float, float]]:
    """Does a word's cross-attention fall on its object? For each prompt's picture (one, from `seed`) and each kind
    it names that the reader finds: the share of the kind word's attention map inside the object's box, at each
    latent level (a name -> the UNet layers of one size, for generate.attention_per_word) and noise level t.

    Returns {(level, t): (mean share, its standard error, the mean share a map spread evenly would put there)}; the
    last is the box's share of the map, the chance the first is measured against."""
    from .generate import attention_per_word

    shares: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for prompt in prompts:
        image = pipe(prompt.text, num_images=1, seed=seed)[0]
        reading, words = read_image(image), ["<bos>", *prompt.text.split()]
        for level, layers in levels.items():
            for t in ts:
                _, maps = attention_per_word(pipe, prompt.text, t=t, levels=layers, image=image)  # (L, h, w)
                for kind, _, _ in prompt.objects:
                    found = [o for o in reading.objects if o.kind == kind]
                    if not found or kind not in words:
                        continue
                    word_map = maps[words.index(kind)]
                    inside = box_coverage(found[0].box, word_map.shape, image.shape[-1])
                    share = float((word_map * inside).sum() / word_map.sum())
                    shares.setdefault((level, t), []).append((share, float(inside.mean())))
    return {key: (float(np.mean([s for s, _ in v])), float(np.std([s for s, _ in v], ddof=1) / math.sqrt(len(v))),
                  float(np.mean([c for _, c in v]))) for key, v in shares.items() if len(v) > 1}


def box_coverage(box: tuple[int, int, int, int], grid: tuple[int, int], image_size: int) -> torch.Tensor:
    """How much of each cell of an (h, w) grid laid over the image a pixel box covers, 0 … 1 per cell."""
    h, w = grid
    pixels = torch.zeros(image_size, image_size)
    x0, y0, x1, y1 = box
    pixels[y0:y1, x0:x1] = 1
    return F.adaptive_avg_pool2d(pixels[None, None], (h, w))[0, 0]


# --- diversity and memorisation ------------------------------------------------------------------------------------

def open_attributes(prompt: Prompt, readings: list[Reading]) -> dict[str, list]:
    """What each picture chose for what the prompt leaves open: the colour of each uncoloured named kind, the cell
    (quadrant) of each named kind when no relation fixes it, and the background.
    Pictures missing the kind add nothing."""
    values: dict[str, list] = {"background": [r.background for r in readings]}
    for kind, _, colour in prompt.objects:
        for r in readings:
            of_kind = [o for o in r.objects if o.kind == kind]
            if of_kind and colour is None:
                values.setdefault("colour", []).append(of_kind[0].colour)
            if of_kind and prompt.relation is None:
                x, y = of_kind[0].centre
                values.setdefault("cell", []).append(int(x >= cw.CELL) + 2 * int(y >= cw.CELL))
    return values


SIZES_OF = {"background": len(cw.BACKGROUNDS), "colour": len(cw.COLOURS), "cell": 4}


def diversity(prompt: Prompt, readings: list[Reading]) -> dict[str, float]:
    """How spread the pictures of one prompt are over each attribute it leaves open: the entropy of the attribute's
    values, H = −Σ p log p, divided by log(number of possible values): 1 = as spread as can be, 0 = always the same.
    (16 samples drawn uniformly from 6 colours score about 0.90 on average, not 1: few samples look uneven.)"""
    out = {}
    for name, values in open_attributes(prompt, readings).items():
        if values:
            p = np.array(list(cw._count(values).values()), dtype=np.float64) / len(values)
            out[name] = float(-(p * np.log(p)).sum() / math.log(SIZES_OF[name]))
    return out


COPY_PSNR = 35.0  # dB: a sample this close to a training scene is called a copy of it (see copy_share)


def copy_share(samples: torch.Tensor, training: torch.Tensor, *, threshold_db: float = COPY_PSNR) -> float:
    """Memorisation: the share of uint8 samples (N, 3, 64, 64) within `threshold_db` PSNR of their nearest training
    image. Set the threshold below the VAE's round-trip PSNR (a decoded copy scores about that) and compare with the
    share for fresh renders of the world (copies by chance: a world of finitely many placements repeats itself)."""
    from .metrics import nearest_psnr

    return float((nearest_psnr(samples, training) >= threshold_db).float().mean())


# --- measuring the instrument --------------------------------------------------------------------------------------

def reader_accuracy(images: torch.Tensor, scenes: list[cw.Scene]) -> dict[str, float]:
    """How well read_images recovers known scenes: per object, its kind and its colour (an object counts as read when
    a found object's box centre lies within 8 px of its true one); per scene, the count of every kind, the background,
    and the relations (all four, between every two objects, from the found boxes); and the share with all of it
    right."""
    hits: dict[str, list[bool]] = {k: [] for k in ("kind", "colour", "count", "position", "background", "scene")}
    for reading, scene in zip(read_images(images), scenes):
        matched = []
        for thing in scene.objects:
            near = [o for o in reading.objects if math.dist(o.centre, thing.centre) < 8]
            matched.append(near[0] if near else None)
            hits["kind"].append(bool(near) and near[0].kind == thing.kind)
            hits["colour"].append(bool(near) and near[0].colour == thing.colour)
        position = [a is not None and b is not None and all(
            cw.relation_holds(a.centre, b.centre, r) == cw.relation_holds(s.centre, t.centre, r) for r in cw.RELATIONS)
            for (a, s), (b, t) in itertools.combinations(zip(matched, scene.objects), 2)]
        hits["position"].extend(position)
        hits["count"].append(reading.counts == scene.counts)
        hits["background"].append(reading.background == scene.background)
        hits["scene"].append(hits["count"][-1] and hits["background"][-1] and all(position) and all(
            m is not None and m.kind == t.kind and m.colour == t.colour for m, t in zip(matched, scene.objects)))
    return {k: float(np.mean(v)) for k, v in hits.items()}


def degrade(images: torch.Tensor, how: str, *, seed: int = 0) -> torch.Tensor:
    """What a generator's pictures may look like: 'noise' (Gaussian, σ 12 levels), 'blur' (Gaussian, σ 0.8 px)."""
    x = images.float()
    if how == "noise":
        x = x + torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)) * 12
    elif how == "blur":
        radius, sigma = 2, 0.8
        g = torch.exp(-0.5 * (torch.arange(-radius, radius + 1.0) / sigma) ** 2)
        g = g / g.sum()
        kernel = (g[:, None] * g[None, :]).expand(3, 1, -1, -1)
        x = F.conv2d(F.pad(x, (radius,) * 4, mode="replicate"), kernel, groups=3)
    else:
        raise ValueError(f"unknown degradation {how!r}; expected 'noise' or 'blur'")
    return x.round().clamp(0, 255).to(torch.uint8)


def validate_reader(*, num: int = 500, seed: int = 7, vae=None, images_per_prompt: int = 4) -> dict[str, dict]:
    """The instrument measured before it judges: reader_accuracy on `num` fresh scenes of each split, clean, noisy,
    blurred and (given a VAE) after a VAE round trip; then GenEval on each prompt set's own ground-truth pictures
    (should be ~100%) and on mismatched ones (prompt i judged on the pictures of the next prompt of its category)."""
    check_int("num", num, low=1)
    report: dict[str, dict] = {}
    for split in cw.SPLITS:
        images, _, scenes = cw.make_scenes(num, seed=seed, split=split)
        report[f"renders, {split}"] = reader_accuracy(images, scenes)
        for how in ("noise", "blur"):
            report[f"{how}, {split}"] = reader_accuracy(degrade(images, how), scenes)
        if vae is not None:
            from .data import to_float
            from .latents import decode_latents, encode_images
            from .metrics import psnr

            trips = decode_latents(vae, encode_images(vae, images))
            report[f"VAE round trip, {split}"] = reader_accuracy(trips, scenes) | {
                "PSNR dB": float(psnr(to_float(trips), to_float(images)).mean())}
    for split in cw.SPLITS:
        prompts = make_prompts(split)
        truth = render_prompts(prompts, images_per_prompt, seed=seed)
        report[f"GenEval on own pictures, {split}"] = {k: v[0] for k, v in geneval(prompts, truth).items()}
        shuffled = torch.empty_like(truth)
        for category in CATEGORIES:
            rows = [i for i, p in enumerate(prompts) if p.category == category]
            shuffled[rows] = truth[np.roll(rows, -1)]
        report[f"GenEval on mismatched pictures, {split}"] = {k: v[0] for k, v in geneval(prompts, shuffled).items()}
    return report


def format_report(report: dict[str, dict]) -> str:
    """validate_reader's report as tables, one row per condition, one column per measure (rows that measure the same
    things share a table)."""
    groups: dict[tuple, list[str]] = {}
    for name, row in report.items():
        groups.setdefault(tuple(row), []).append(name)
    lines = []
    for columns, names in groups.items():
        lines.append(f"{'':40}" + "".join(f"{c[:13]:>14}" for c in columns))
        lines += [f"{name:40}" + "".join(f"{report[name][c]:>14.3f}" for c in columns) for name in names]
    return "\n".join(lines)
