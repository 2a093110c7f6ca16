"""The course's data, all of it offline: animal silhouettes, bundled photos, and (in scenes.py) the emoji scenes.

Images for the models are float tensors in [-1, 1], shape (N, C, H, W): the range diffusion works in.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

SILHOUETTE_CLASSES = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra")
TEST_PER_CLASS = 100  # the last 100 distinct images of each class are held out for testing


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """The package ships numpy arrays as pickles. Allow only what an array needs, so the file cannot run code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the silhouette data")
        return super().find_class(module, name)


def _silhouette_folder() -> Path:
    spec = importlib.util.find_spec("animal_shape_mnist")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the silhouettes come from the package animal-shape-mnist: "
                                  "pip install animal-shape-mnist")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "Animal Shape"


@functools.lru_cache(maxsize=1)
def _silhouette_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images, labels, is_test) with exact duplicates removed (the package repeats 284 of its 10,000 images)."""
    # Read the package's two gzip files directly: its own loader imports tensorflow.
    folder = _silhouette_folder()
    with gzip.open(folder / "animal_data_version_3.gz", "rb") as f:
        images = _NumpyOnlyUnpickler(f).load()  # (10000, 28, 28) uint8, white animal on black
    with gzip.open(folder / "animal_label_version_3.gz", "rb") as f:
        labels = _NumpyOnlyUnpickler(f).load()  # (10000,) int, sorted by class, 1000 each
    _, first = np.unique(images.reshape(len(images), -1), axis=0, return_index=True)
    keep = np.sort(first)  # the first copy of each distinct image, in the original order
    images, labels = images[keep], labels[keep]
    # The last TEST_PER_CLASS images of each class are the test split, so no test image is also a training image.
    from_end = np.zeros(len(labels), int)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        from_end[idx] = np.arange(len(idx))[::-1]
    return images, labels, from_end < TEST_PER_CLASS


def load_silhouettes(split: str = "train", *, classes=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Animal silhouettes as (images (N, 1, 28, 28) float in [-1, 1], labels (N,) long).

    split: "train" (8,716 distinct images), "test" (100 a class) or "all". classes: names to keep, e.g.
    ("cat", "dog"); labels keep their index in SILHOUETTE_CLASSES.
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    images, labels, is_test = _silhouette_arrays()
    keep = np.ones(len(labels), bool) if split == "all" else is_test == (split == "test")
    if classes is not None:
        unknown = set(classes) - set(SILHOUETTE_CLASSES)
        if unknown:
            raise ValueError(f"unknown silhouette classes {sorted(unknown)}: expected names from {SILHOUETTE_CLASSES}")
        keep &= np.isin(labels, [SILHOUETTE_CLASSES.index(c) for c in classes])
    x = torch.from_numpy(images[keep]).float().div(127.5).sub(1).unsqueeze(1)  # uint8 [0, 255] -> [-1, 1]
    return x, torch.from_numpy(labels[keep]).long()


PHOTOS = ("chelsea", "astronaut", "coffee", "rocket")  # bundled in scikit-image's wheel; its other images download


def load_photo(name: str = "chelsea", *, size: int | None = 64) -> torch.Tensor:
    """A photo bundled with scikit-image as (1, 3, size, size) in [-1, 1]: centre-cropped square, then resized.

    chelsea is a cat (CC0). size=None keeps the full resolution, uncropped.
    """
    if name not in PHOTOS:
        raise ValueError(f"unknown photo {name!r}: expected one of {PHOTOS} "
                         "(the others in skimage.data need a download)")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise ValueError(f"size must be a positive int (pixels a side) or None (full resolution), got {size!r}")
    import skimage.data

    img = torch.from_numpy(np.ascontiguousarray(getattr(skimage.data, name)())).permute(2, 0, 1)[None].float()
    img = img.div(127.5).sub(1)  # (1, 3, H, W) in [-1, 1]
    if size is None:
        return img
    H, W = img.shape[-2:]
    s = min(H, W)
    img = img[..., (H - s) // 2:(H - s) // 2 + s, (W - s) // 2:(W - s) // 2 + s]
    return F.interpolate(img, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp(-1, 1)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (0 … 255) -> float in [-1, 1]; float images pass through. Datasets stay uint8 in memory (4× smaller)
    and become floats a batch at a time."""
    return images.float() / 127.5 - 1 if images.dtype == torch.uint8 else images


def from_float(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images -> uint8 tensors (0 … 255) of the same shape, on the CPU: to_float's inverse, as datasets and
    the judge hold images."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] images (B, C, H, W) or (C, H, W) -> uint8 arrays (B, H, W, C) or (H, W, C) for plotting or PNGs."""
    return from_float(x).movedim(-3, -1).numpy()
