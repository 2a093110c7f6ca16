"""How long text to image takes with the shipped models: from a shell, and inside Python.

The budget (issue 4): `python -m sdlesson generate` of 4 images at 25 steps within 10 seconds on a 2-core CPU,
start-up included. This prints:

- wall time of the command itself (a fresh interpreter: imports, loading three checkpoints, sampling, the PNG),
  best and median of --repeats runs;
- inside one process, the time of a `TextToImage` call (encode, guided sampling — the UNet twice a step —
  and decode) at several batch sizes, and per image.

    python bench/generate.py
    python bench/generate.py --steps 50 --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

PROMPT = "a small dog face in the top left on a green background"


def command_seconds(steps: int, device: str | None, repeats: int) -> list[float]:
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeats):
            cmd = [sys.executable, "-m", "sdlesson", "generate", PROMPT, "-n", "4", "--num-steps", str(steps),
                   "--out", str(Path(tmp) / "out.png")] + (["--device", device] if device else [])
            start = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--device", help="cuda, mps or cpu (default: the best available)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from sdlesson.cost import device_name, synchronize
    from sdlesson.generate import TextToImage
    from sdlesson.train import pick_device

    device = pick_device(args.device)
    print(f"device: {device_name(device)}, torch {torch.__version__}; {args.steps} DDIM steps, guidance on")
    times = command_seconds(args.steps, args.device, args.repeats)
    print(f"python -m sdlesson generate, 4 images: best {min(times):.2f} s, median {statistics.median(times):.2f} s "
          f"({args.repeats} runs, start-up included)")

    pipe = TextToImage.from_pretrained(device=device)
    pipe(PROMPT, num_images=1, num_steps=2)  # warm-up
    print(f"{'images':>8} {'call s':>9} {'s / image':>10}")
    for n in (1, 4, 16, 64):
        synchronize(device)
        start = time.perf_counter()
        pipe(PROMPT, num_images=n, num_steps=args.steps)
        synchronize(device)
        seconds = time.perf_counter() - start
        print(f"{n:>8} {seconds:9.3f} {seconds / n:10.4f}")


if __name__ == "__main__":
    main()
