"""Samplers raced on the course's own text-to-image model: seconds per image and steps to DDIM-50's quality.

Every sampler starts from the same noise for the same prompts (the judge's fixed prompt set, seen pairs), with the
model's own guidance (3.0), and is measured by the course's instruments:

- distance: RMSE (decoded pixels in [0, 1], before rounding to uint8) of each image from a reference run from the
  same noise with many steps of a second-order solver (Heun, --reference-steps), mean ± standard error over images.
  The deterministic samplers all solve the same probability-flow ODE, so they converge to that image and the
  distance is their error. The instrument is checked first: its floor is Heun with half the steps against it. (A
  first-order reference, DDIM-100 say, is no good: its own error is as large as DDIM-50's.) Plans differ in where
  they make their last jump to σ = 0 (DPM++'s linspace plan from t ≈ T/(n+1), the others from t = 0), which no step
  count removes. Ancestral samplers (Euler a) draw a different image: no distance.
- adherence: the share of the asked-for attributes (object, background, position, size) the shipped judge finds in
  the image (sdlesson.evaluate.judge_scenes), mean ± standard error over prompts.
- seconds per image: sampling (the UNet twice per call, as one batch) and decoding, over the batch, on this device.

Steps to quality: the fewest steps in the sweep whose mean distance is no larger than DDIM-50's. Heun calls the
model 2n - 1 times for n steps, so the table gives model calls beside steps.

    python bench/samplers.py                               # defaults: 8 prompts, ~970 model calls on batches of 16
    python bench/samplers.py --prompts 80 --steps 4 6 8 12 16 25 50 --device cuda
"""

from __future__ import annotations

import argparse

import torch

from sdlesson import pretrained as pre
from sdlesson.evaluate import judge_scenes, mean_se, prompt_set, rmse_to, timed_run
from sdlesson.generate import DEFAULT_GUIDANCE, TextToImage
from sdlesson.samplers import make_sampler

CONTESTANTS = {  # label: (sampler name, karras)
    "DDIM": ("ddim", False), "Euler": ("euler", False), "Euler a": ("euler_a", False), "Heun": ("heun", False),
    "DPM++ 2M": ("dpmpp_2m", False), "DPM++ 2M Karras": ("dpmpp_2m", True), "Euler Karras": ("euler", True)}
ANCESTRAL = {"euler_a", "ddpm"}


_done = {}


@torch.no_grad()
def run(pipe, name: str, karras: bool, steps: int, latents, cond, uncond, seed: int):
    """Images (uint8) from one sampler at one step count, the seconds it took (sampling + decoding), model calls."""
    if (name, karras, steps) in _done:  # the reference's half-steps run is DDIM-50 at the default 100
        return _done[name, karras, steps]
    sampler = make_sampler(name, pipe.schedule, karras=karras, clip_sample=None)
    # images in [0, 1]; the judge reads them as uint8, as the pipeline returns them
    _done[name, karras, steps] = timed_run(pipe, sampler, latents, cond, uncond, num_steps=steps, seed=seed,
                                           guidance_scale=DEFAULT_GUIDANCE)
    return _done[name, karras, steps]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=8, help="images per run, one per prompt (<= 80)")
    parser.add_argument("--steps", type=int, nargs="+", default=[4, 6, 8, 12, 16, 20])
    parser.add_argument("--ddim-steps", type=int, nargs="+", default=[25, 50], help="DDIM's extra step counts")
    parser.add_argument("--reference-steps", type=int, default=100, help="Heun steps (2n - 1 model calls)")
    parser.add_argument("--samplers", nargs="+", default=list(CONTESTANTS), choices=list(CONTESTANTS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    pipe = TextToImage.from_pretrained(device=args.device)
    judge = pre.load_pretrained("scene_judge", device=args.device)
    scenes = prompt_set("train")
    scenes = scenes[:: max(1, len(scenes) // args.prompts)][: args.prompts]
    labels = torch.tensor([s.labels for s in scenes])
    context, mask = pipe.encode([s.caption for s in scenes])
    neg_context, neg_mask = pipe.encode([""] * len(scenes))
    cond, uncond = pipe._kwargs(context, mask), pipe._kwargs(neg_context, neg_mask)
    latents = torch.randn((len(scenes), 4, pipe.unet.config.sample_size, pipe.unet.config.sample_size),
                          generator=torch.Generator().manual_seed(args.seed))  # the same x_T for everyone

    def to_uint8(images):
        return (images * 255).round().to(torch.uint8)

    reference, ref_seconds, _ = run(pipe, "heun", False, args.reference_steps, latents, cond, uncond, args.seed)
    check, _, _ = run(pipe, "heun", False, args.reference_steps // 2, latents, cond, uncond, args.seed)
    floor = rmse_to(check, reference)
    print(f"{len(scenes)} prompts (seen pairs), guidance {DEFAULT_GUIDANCE}, device {args.device}, "
          f"{torch.get_num_threads()} threads")
    print(f"reference: Heun, {args.reference_steps} steps ({ref_seconds / len(scenes):.3f} s/image); its floor, "
          f"RMSE of Heun {args.reference_steps // 2} steps from it: {'{:.4f} ± {:.4f}'.format(*mean_se(floor))}\n")

    rows = []
    print(f"{'sampler':16s} {'steps':>5s} {'calls':>5s} {'s/image':>8s} {'RMSE to reference':>19s} {'adherence':>15s}")
    for label in args.samplers:
        name, karras = CONTESTANTS[label]
        for steps in sorted(set(args.steps + (args.ddim_steps if label == "DDIM" else []))):
            images, seconds, calls = run(pipe, name, karras, steps, latents, cond, uncond, args.seed)
            rmse = rmse_to(images, reference)
            found = (judge_scenes(judge, to_uint8(images))[0] == labels).float().mean(1)  # per prompt: share of 4
            d, d_se = mean_se(rmse)
            a, a_se = mean_se(found)
            rows.append((label, name, steps, d))
            dist = "—" if name in ANCESTRAL else f"{d:.4f} ± {d_se:.4f}"
            print(f"{label:16s} {steps:5d} {calls:5d} {seconds / len(scenes):8.3f} {dist:>19s} "
                  f"{a:7.1%} ± {a_se:5.1%}", flush=True)

    target = [d for label, _, steps, d in rows if label == "DDIM" and steps == 50]
    if not target:
        return
    print(f"\nsteps to DDIM-50's distance ({target[0]:.4f}); a third of DDIM's steps is {50 // 3}:")
    for label in args.samplers:
        name = CONTESTANTS[label][0]
        if name in ANCESTRAL or label == "DDIM":
            print(f"  {label:16s} " + ("(the target)" if label == "DDIM" else
                                        "—  (ancestral: a different image, not an error to measure)"))
            continue
        ok = sorted(steps for lab, _, steps, d in rows if lab == label and d <= target[0])
        verdict = (f"{ok[0]} steps ({'within' if ok[0] <= 50 // 3 else 'more than'} a third)" if ok
                   else f"not within {max(s for lab, _, s, _ in rows if lab == label)} steps")
        print(f"  {label:16s} {verdict}")


if __name__ == "__main__":
    main()
