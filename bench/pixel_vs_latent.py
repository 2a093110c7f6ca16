"""Lesson 03's table: the same UNet on pixels and on latents, at Stable Diffusion's size and at the course's.

"Pixel space is enormous; latent space is 48× smaller, so it's a lot faster." For one UNet configuration,
applied to 3-channel pixels and to 4-channel latents (the VAE's, 8× smaller per side), this prints:

- FLOPs of one forward pass (= one sampling step), split into convolutions, linear layers and attention
  (QKᵀ and AV), and by part of the UNet (conv_in, each level down, mid, each level up, conv_out): why the
  ratio is not 48;
- bytes of activations saved for backward in one training step, counted exactly (fused attention, as today's
  kernels; and the naive math version, which keeps the N × N attention weights);
- seconds per sampling step (a forward pass at batch 1) and per training step (forward, MSE, backward, AdamW
  at --batch-size), measured on the device, with the ratios pixel/latent;
- on CUDA, the peak memory of those steps;
- a resolution sweep of FLOPs and activations, sides 8 … 512.

FLOPs and activations are counted on PyTorch's meta device (shapes without data), so 512×512 costs nothing to
count. Times are measured. At Stable Diffusion's size on a CPU (or MPS), only one forward pass of each is timed,
and a pass expected to take longer than --max-seconds is not run but estimated from its FLOPs at the FLOP rate
the latent pass reached (marked ~); --full times everything.

    python bench/pixel_vs_latent.py                       # best available device: cuda, then mps, then cpu
    python bench/pixel_vs_latent.py --device cpu --batch-size 4
    python bench/pixel_vs_latent.py --channels 32,64,64 --attention 0,0,1 --full
    python bench/pixel_vs_latent.py --sd                  # SD v1.5's real UNet (860 M, text context 77×768)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: find the sdlesson package
from sdlesson.cost import (  # noqa: E402
    activation_memory, device_name, flops_breakdown, peak_memory, resolution_sweep, time_forward,
    time_train_step, train_step_flops, training_state_bytes, unet_for, unet_inputs,
)
from sdlesson.stable_diffusion import SD_UNET  # noqa: E402
from sdlesson.train import pick_device  # noqa: E402
from sdlesson.unet import UNetConfig, count_parameters  # noqa: E402

MB = 2**20


def ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def text_context(base: UNetConfig, batch: int, device) -> dict:
    """The UNet's text input, if it reads one: {"context": (B, 77, context_dim)} (random; shapes only on meta)."""
    if not base.context_dim:
        return {}
    if torch.device(device).type == "meta":
        return {"context": torch.empty(batch, 77, base.context_dim, device=device)}
    return {"context": torch.randn(batch, 77, base.context_dim, generator=torch.Generator().manual_seed(0)).to(device)}


def count(base: UNetConfig, channels: int, size: int, *, math_attention: bool) -> dict:
    """Everything counted on the meta device for one UNet at batch 1."""
    model = unet_for(channels, size, base=base, device="meta")
    x, t = unet_inputs(channels, size, device="meta")
    kw = text_context(base, 1, "meta")
    parts = flops_breakdown(model, x, t, **kw)
    by_op = {kind: sum(p.get(kind, 0) for p in parts.values()) for kind in ("conv", "linear", "attention")}
    return dict(
        parts=parts, by_op=by_op, flops=sum(by_op.values()), train_flops=train_step_flops(model, x, t, **kw),
        activations=activation_memory(model, x, t, **kw),
        activations_math=activation_memory(model, x, t, attention_kernel="math", **kw) if math_attention else None,
        params=count_parameters(model), state=training_state_bytes(model),
    )


def measure(kind: str, base, channels, size, device, *, batch, repeats, warmup) -> tuple[float, int | None]:
    """(median seconds, CUDA peak bytes or None) of a sampling step ("forward") or a training step ("train")."""
    torch.manual_seed(0)
    model = unet_for(channels, size, base=base, device=device)
    x, t = unet_inputs(channels, size, batch_size=batch, device=device)
    timer = time_forward if kind == "forward" else time_train_step
    seconds = []
    kw = text_context(base, batch, device)
    peak = peak_memory(lambda: seconds.append(timer(model, x, t, repeats=repeats, warmup=warmup, **kw)),
                       device=device)
    model = x = t = None  # freed before the cache is emptied (the lambda holds them, so `del` cannot)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return seconds[0], peak


def fmt_time(seconds: float | None, estimated: bool) -> str:
    if seconds is None:
        return "—"
    text = f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:,.2f} s"
    return f"~{text} (est.)" if estimated else text


def ratio(a, b, estimated=False) -> str:
    if a is None or b is None or b == 0:
        return "—"
    return f"{'~' if estimated else ''}{a / b:,.1f}×"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", help="cuda, mps, cpu, … (default: cuda if available, else mps, else cpu)")
    parser.add_argument("--channels", type=ints, default=(64, 128, 128), help="block_channels, e.g. 64,128,128")
    parser.add_argument("--attention", type=ints, default=None,
                        help="self-attention per level, e.g. 0,1,1 (default: all levels but the first)")
    parser.add_argument("--layers-per-block", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=32, help="attention_head_dim")
    parser.add_argument("--batch-size", type=int, default=8, help="training-step batch at the course's size")
    parser.add_argument("--sd-batch-size", type=int, default=1, help="training-step batch at SD's size")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed passes first")
    parser.add_argument("--full", action="store_true",
                        help="at SD's size on a CPU/MPS too: time training steps, repeat, and time every pass "
                             "however long (a pixel pass at 512×512 takes minutes on a CPU)")
    parser.add_argument("--max-seconds", type=float, default=60.0,
                        help="without --full, estimate (don't run) a pass expected to take longer than this")
    parser.add_argument("--sweep-channels", type=int, default=3, help="input channels of the resolution sweep")
    parser.add_argument("--sd", action="store_true",
                        help="SD v1.5's real UNet (sdlesson.stable_diffusion.SD_UNET) at SD's size, in place of "
                             "--channels/--attention; its resolution sweep runs at multiples of 64 pixels")
    args = parser.parse_args()

    device = pick_device(args.device)
    attention = args.attention or tuple(int(i > 0) for i in range(len(args.channels)))
    base = UNetConfig(block_channels=args.channels, attention_levels=attention,
                      layers_per_block=args.layers_per_block, attention_head_dim=args.head_dim)
    if args.sd:
        base = SD_UNET
    print(f"device: {device} ({device_name(device)}), torch {torch.__version__}, fp32")
    print(f"UNet: block_channels {base.block_channels}, attention {base.attention_levels}, "
          f"layers_per_block {base.layers_per_block}, attention_head_dim {base.attention_head_dim}")

    sizes = {  # name: ((pixel channels, side), (latent channels, side), training batch)
        "Stable Diffusion's size": ((3, 512), (4, 64), args.sd_batch_size),
        "the course's size": ((3, 64), (4, 8), args.batch_size),
    }
    if args.sd:  # SD's UNet halves the side 3 times: the course's 8×8 latents would shrink to 1×1
        del sizes["the course's size"]
    best_rate = None  # the highest FLOP/s measured so far: estimates what we don't run
    for name, (pixel, latent, batch) in sizes.items():
        sd = name.startswith("Stable")
        everything = device.type == "cuda" or args.full or not sd  # time training steps too, with repeats
        repeats, warmup = (args.repeats, args.warmup) if everything else (1, 0)
        counts = {space: count(base, c, s, math_attention=sd) for space, (c, s) in
                  (("pixel", pixel), ("latent", latent))}

        times, peaks, estimated = {}, {}, {}  # (space, kind) -> seconds, CUDA peak bytes, whether estimated
        for space, (c, s) in (("latent", latent), ("pixel", pixel)):  # the latent first: it sets the rate
            for kind, b in (("forward", 1), ("train", batch)):
                flops = counts[space]["flops" if kind == "forward" else "train_flops"] * b
                expected = flops / best_rate if best_rate else 0.0
                key = (space, kind)
                if (kind == "train" and not everything) or (not args.full and expected > args.max_seconds):
                    times[key], peaks[key], estimated[key] = (expected or None), None, bool(expected)
                    continue
                times[key], peaks[key] = measure(kind, base, c, s, device, batch=b, repeats=repeats,
                                                 warmup=warmup)
                estimated[key] = False
                best_rate = max(best_rate or 0.0, flops / times[key])

        p, l = counts["pixel"], counts["latent"]
        (pc, ps), (lc, ls) = pixel, latent
        print(f"\n{name}: pixels {pc}×{ps}×{ps} = {pc * ps * ps:,} numbers, latents {lc}×{ls}×{ls} = "
              f"{lc * ls * ls:,}: {pc * ps * ps / (lc * ls * ls):.1f}× fewer")
        print(f"{'':40} {'pixels':>18} {'latents':>18} {'pixel/latent':>14}")

        def row(label, a, b, fmt, r=None):  # one line: the pixel value, the latent value, their ratio
            print(f"{label:40} {fmt(a):>18} {fmt(b):>18} {ratio(a, b) if r is None else r:>14}")

        gflops = lambda v: f"{v / 1e9:,.3f}"  # noqa: E731
        mb = lambda v: "—" if v is None else f"{v / MB:,.1f}"  # noqa: E731
        row("GFLOPs / forward pass (batch 1)", p["flops"], l["flops"], gflops)
        for kind, label in (("conv", "convolutions"), ("linear", "linear (q, k, v, out, time MLP)"),
                            ("attention", "attention QKᵀ and AV (∝ N²)")):
            row(f"  {label}", p["by_op"][kind], l["by_op"][kind], gflops)
        row("GFLOPs / training step (batch 1)", p["train_flops"], l["train_flops"], gflops)
        row("activations for backward, MB (batch 1)", p["activations"], l["activations"], mb)
        if sd:
            row("  with naive (math) attention, MB", p["activations_math"], l["activations_math"], mb)
        row("weights + grads + AdamW, MB", p["state"], l["state"], mb)
        for kind, label, b in (("forward", "time / sampling step (batch 1)", 1),
                               ("train", f"time / training step (batch {batch})", batch)):
            a, c = times[("pixel", kind)], times[("latent", kind)]
            a_est, c_est = estimated[("pixel", kind)], estimated[("latent", kind)]
            print(f"{label:40} {fmt_time(a, a_est):>18} {fmt_time(c, c_est):>18} "
                  f"{ratio(a, c, a_est or c_est):>14}")
            if a and c and not (a_est or c_est):
                work = {space: counts[space]["flops" if kind == "forward" else "train_flops"] * b
                        for space in ("pixel", "latent")}
                row("  achieved GFLOP/s", work["pixel"] / a, work["latent"] / c, lambda v: f"{v / 1e9:,.1f}", "")
            if device.type == "cuda":
                row("  peak CUDA memory, MB", peaks[("pixel", kind)], peaks[("latent", kind)], mb)
        if any(estimated.values()):
            print(f"~ (est.): not run here (too slow on this device, or a training step at SD's size without "
                  f"--full):\n  its FLOPs at the best rate measured so far, {best_rate / 1e9:,.1f} GFLOP/s, "
                  "so its ratio is the FLOP ratio. --full runs it.")
        print(f"\n  GFLOPs by part of the UNet (forward, batch 1){'':3} {'pixels':>14} {'latents':>12} "
              f"{'pixel/latent':>14}  runs at (pixels; latents ÷{ps // ls})")
        levels = len(base.block_channels)
        for part in p["parts"]:
            a, c = sum(p["parts"][part].values()), sum(l["parts"].get(part, {}).values())
            where = ""
            if part.startswith(("down.", "up.")):
                i = int(part.split(".")[1])
                level = i if part.startswith("down.") else levels - 1 - i
                attn = ", attention" if base.attention_levels[level] else ""
                where = f"{ps >> level}×{ps >> level}{attn}"
            elif part == "mid":
                where = f"{ps >> (levels - 1)}×{ps >> (levels - 1)}, attention"
            elif part in ("conv_in", "conv_out"):
                where = f"{ps}×{ps}, {pc} vs {lc} channels"
            print(f"  {part:48} {a / 1e9:>14,.3f} {c / 1e9:>12,.4f} {ratio(a, c):>14}  {where}")

    print(f"\nParameters: {counts['pixel']['params']:,} (pixels) and {counts['latent']['params']:,} (latents): "
          "only conv_in and conv_out differ.")
    sweep_sizes = [s for s in (8, 16, 32, 64, 128, 256, 512) if s % 2 ** (len(base.block_channels) - 1) == 0]
    print(f"\nResolution sweep, {args.sweep_channels} input channels, batch 1 (counted on the meta device):")
    print(f"{'side':>6} {'numbers':>10} {'GFLOPs':>12} {'× previous':>11} {'attention':>10} "
          f"{'activations MB':>15} {'× previous':>11}")
    previous = None
    if args.sd:
        sweep_sizes = [s for s in sweep_sizes if s >= 64]
    for r in resolution_sweep(base, args.sweep_channels, sweep_sizes):
        growth = ("", "") if previous is None else (f"{r.flops / previous.flops:.1f}×",
                                                     f"{r.activation_bytes / previous.activation_bytes:.1f}×")
        print(f"{r.size:>6} {r.numbers:>10,} {r.flops / 1e9:>12,.3f} {growth[0]:>11} "
              f"{100 * r.attention_flops / r.flops:>9.1f}% {r.activation_bytes / MB:>15,.1f} {growth[1]:>11}")
        previous = r
    print("(doubling the side: ×4 positions, so ×4 for convolutions and linear layers, ×16 for attention)")


if __name__ == "__main__":
    main()
