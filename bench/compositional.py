"""How fast the compositional world renders and the GenEval reader reads, and the reader's validation table.

    python bench/compositional.py               # speeds only (~20 s)
    python bench/compositional.py --validate    # also geneval.validate_reader (with the shipped scene_vae: ~4 min)
"""

from __future__ import annotations

import argparse
import time

import torch

from sdlesson import compositional as cw
from sdlesson import geneval as ge


def rate(fn, n: int) -> float:
    start = time.perf_counter()
    fn(n)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--validate", action="store_true", help="print validate_reader's table too")
    args = parser.parse_args()
    cw.glyph_masks("car"), ge.templates()  # caches filled outside the timing
    print(f"threads: {torch.get_num_threads()}")
    for split in cw.SPLITS:
        print(f"make_scenes, {split}: {rate(lambda n: cw.make_scenes(n, split=split), 2000):,.0f} scenes/s "
              "(scene, caption and image)")
    images = cw.make_scenes(500, seed=1)[0]
    print(f"read_images: {rate(lambda n: ge.read_images(images[:n]), 500):,.0f} images/s")
    if args.validate:
        from sdlesson.pretrained import load_pretrained

        print(ge.format_report(ge.validate_reader(num=500, vae=load_pretrained("scene_vae"))))


if __name__ == "__main__":
    main()
