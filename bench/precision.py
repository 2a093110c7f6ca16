"""Seconds per training step of each shipped recipe in fp32 and in bf16 on this machine: what `--precision bf16`
costs where bf16 is not native (the model card quotes these numbers).

    python bench/precision.py                          # every recipe
    python bench/precision.py scene_vae scene_text_unet --steps 4

Each recipe trains a few steps of its own batch size from its own initial weights, on 300 rendered scenes
(SDLESSON_RECIPE_SCENES; the step's cost does not depend on how many scenes there are); the first step (oneDNN's
kernel selection, data caches) is not counted. Prints what `precision="auto"` picks here.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

os.environ.setdefault("SDLESSON_RECIPE_SCENES", "300")

from sdlesson import devices, recipes  # noqa: E402  (after the environment variable, which recipes.py reads)
from sdlesson.train import Trainer  # noqa: E402


def seconds_per_step(name: str, precision: str, steps: int) -> float:
    recipe = recipes.get(name)
    config = dataclasses.replace(recipe.train, steps=steps + 1, warmup_steps=1, precision=precision,
                                 checkpoint_every=10**9)
    trainer = Trainer(recipe.build_model(), recipe.loss, recipe.data(), config, device="cpu", progress=False)
    trainer.fit(steps=1)  # warm-up step, not counted
    start = time.perf_counter()
    trainer.fit()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help=f"recipes (default: all of {', '.join(recipes.RECIPES)})")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per recipe and precision (default 3)")
    args = parser.parse_args()
    names = args.names or list(recipes.RECIPES)
    for name in names:
        recipes.get(name)  # an unknown name fails now, before any training
    print(f"{devices.describe_cpu()}; precision='auto' picks {devices.fast_precision('cpu')} here")
    print("| recipe | batch | fp32 s/step | bf16 s/step | bf16 / fp32 |\n|---|---|---|---|---|")
    for name in names:
        fp32, bf16 = (seconds_per_step(name, p, args.steps) for p in ("fp32", "bf16"))
        print(f"| {name} | {recipes.get(name).train.batch_size} | {fp32:.3f} | {bf16:.3f} | {bf16 / fp32:.1f}x |",
              flush=True)


if __name__ == "__main__":
    main()
