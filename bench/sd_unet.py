"""One denoising step of Stable Diffusion v1.5's UNet: sdlesson's against diffusers' UNet2DConditionModel.

Same weights (random, SD v1.5's configuration), same inputs: batch 2 (classifier-free guidance runs the UNet on the
conditional and the unconditional half together), text context (2, 77, 768). Runs alternate between the two models
(interleaved, so a busy machine slows both alike); the median of the repeats is printed, and peak CUDA memory.

    python bench/sd_unet.py                       # CPU: fp32, 16×16 latents (a 64×64 step takes minutes here)
    python bench/sd_unet.py --device cuda         # GPU: fp16, 64×64 latents (512×512 images)

Needs diffusers (a test dependency, see requirements-test.txt); the course itself does not.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from diffusers import UNet2DConditionModel

from sdlesson import stable_diffusion as sdm
from sdlesson.cost import device_name
from sdlesson.unet import UNet


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--latent", type=int, default=None, help="latent side (default: 64 on CUDA, 16 on a CPU)")
    parser.add_argument("--dtype", default=None, choices=["float16", "bfloat16", "float32"],
                        help="default: float16 on CUDA, float32 on a CPU")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per model (default: 20 CUDA, 5 CPU)")
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    dtype = getattr(torch, args.dtype or ("float16" if cuda else "float32"))
    latent = args.latent or (64 if cuda else 16)
    repeats = args.repeats or (20 if cuda else 5)

    torch.manual_seed(0)
    with torch.device("meta"):
        ref = UNet2DConditionModel(cross_attention_dim=768, sample_size=64)
    ref = ref.to_empty(device=args.device)
    with torch.no_grad():  # random weights, small enough that activations stay finite in fp16
        for p in ref.parameters():
            p.normal_(0, 0.02)
    ref = ref.to(dtype).eval()
    with torch.device("meta"):
        ours = UNet(sdm.SD_UNET)  # shapes only; then given ref's own tensors under the course's names
    state = sdm.diffusers_to_course("unet", ref.state_dict(), sdm.SD_UNET)
    sdm.check_state(ours, state, "unet")
    ours.load_state_dict(state, assign=True)
    ours.eval()
    # Our parameters are ref's own tensors (assign, no copy): a separate copy would double the memory; the weights
    # are the same either way. Peak memory below is each model's activations on top of the shared weights.

    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, latent, latent, generator=g).to(args.device, dtype)
    ctx = torch.randn(2, 77, 768, generator=g).to(args.device, dtype)
    t = torch.tensor([500, 500], device=args.device)
    steps = {"sdlesson": lambda: ours(x, t, context=ctx),
             "diffusers": lambda: ref(x, t, encoder_hidden_states=ctx).sample}

    def run(name):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = steps[name]()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start, out

    times, peaks = {k: [] for k in steps}, {}
    with torch.inference_mode():
        outs = {k: run(k)[1] for k in steps}  # warm-up (and the outputs, to compare)
        base = torch.cuda.memory_allocated() if cuda else 0
        for name in steps:
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            run(name)
            if cuda:
                peaks[name] = (torch.cuda.max_memory_allocated() - base) / 2**20
        for _ in range(repeats):
            for name in steps:
                times[name].append(run(name)[0])

    err = (outs["sdlesson"].float() - outs["diffusers"].float()).abs().max().item()
    print(f"SD v1.5 UNet, one step: batch 2, {latent}×{latent} latents, {dtype}, {args.device} "
          f"({device_name(args.device)}), median of {repeats}")
    for name in steps:
        peak = f", peak activations {peaks[name]:.0f} MiB" if cuda else ""
        print(f"  {name:<10} {statistics.median(times[name]) * 1e3:9.1f} ms  (min {min(times[name]) * 1e3:.1f}){peak}")
    ratio = statistics.median(times["sdlesson"]) / statistics.median(times["diffusers"])
    print(f"  sdlesson / diffusers time: {ratio:.3f};  max abs difference of the outputs: {err:.2e}")


if __name__ == "__main__":
    main()
