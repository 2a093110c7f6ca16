"""Time one training step of sdlesson's UNet against diffusers' UNet2DModel at the same configuration.

A training step is: forward on a batch of noisy images and timesteps, MSE loss against a random target,
backward, AdamW step. Both models get the same inputs; they are timed in turns (A, B, A, B, … over
`--repeats`) so both see the same machine conditions, and the median ms/step over the repeats is printed
with images/s, the best repeat and the parameter counts. diffusers is a bench-only dependency; without it
only sdlesson's UNet is timed.

    pip install -r bench/requirements.txt             # diffusers, for the comparison
    python bench/train_step.py                         # silhouettes preset, batch 64
    python bench/train_step.py --preset rgb32 --steps 3 --repeats 2
    python bench/train_step.py --device cpu --precision fp32 --batch-size 16
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: find the sdlesson package
from sdlesson.cost import device_name, synchronize  # noqa: E402
from sdlesson.recipes import SILHOUETTE_UNET  # noqa: E402
from sdlesson.train import pick_device  # noqa: E402
from sdlesson.unet import UNet, UNetConfig, count_parameters  # noqa: E402

PRESETS = {
    "silhouettes": SILHOUETTE_UNET,  # lesson 02's noise predictor
    "rgb32": UNetConfig(in_channels=3, sample_size=32, block_channels=(64, 128, 128),
                        attention_levels=(False, True, True)),
    "latent8": UNetConfig(in_channels=4, sample_size=8, block_channels=(64, 128, 128),
                          attention_levels=(False, True, True)),
}


def diffusers_unet_like(cfg: UNetConfig):
    """diffusers' UNet2DModel with sdlesson's layout; returns None when diffusers isn't installed."""
    try:
        from diffusers import UNet2DModel
    except ImportError:
        print("diffusers is not installed, timing sdlesson's UNet only; for the comparison run:\n"
              "    pip install -r bench/requirements.txt\n")
        return None
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention_levels)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention_levels))
    return UNet2DModel(
        sample_size=cfg.sample_size, in_channels=cfg.in_channels, out_channels=cfg.out_channels,
        block_out_channels=cfg.block_channels, layers_per_block=cfg.layers_per_block,
        down_block_types=down, up_block_types=up, mid_block_type="UNetMidBlock2D", add_attention=True,
        attention_head_dim=cfg.attention_head_dim, norm_num_groups=cfg.norm_groups, attn_norm_num_groups=None,
        dropout=cfg.dropout, act_fn="silu", norm_eps=1e-5,
        # sdlesson's embedding: [cos, sin] of t·10000^(-i/half), MLP to 4·block_channels[0], added in each ResBlock
        time_embedding_type="positional", flip_sin_to_cos=True, freq_shift=0, resnet_time_scale_shift="default",
        downsample_type="conv", downsample_padding=1, upsample_type="conv", center_input_sample=False,
    )


def make_train_step(predict_noise, model, inputs, device, precision):
    """One closure per model: forward + MSE loss + backward + AdamW step on the same fixed batch."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, t, target = inputs

    def train_step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = F.mse_loss(predict_noise(x, t).float(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return train_step


def time_steps(train_step, steps: int, device: torch.device) -> float:
    """Milliseconds per step over `steps` consecutive steps."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        train_step()
    synchronize(device)
    return (time.perf_counter() - start) * 1000 / steps


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=PRESETS, default="silhouettes")
    parser.add_argument("--device", help="cuda, mps, cpu, … (default: cuda if available, else mps, else cpu)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), help="default: bf16 autocast on cuda, else fp32")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds; each model once per round, in turn")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per model before the first round")
    args = parser.parse_args()

    device = pick_device(args.device)
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    cfg = PRESETS[args.preset]
    torch.manual_seed(0)
    shape = (args.batch_size, cfg.in_channels, cfg.sample_size, cfg.sample_size)
    inputs = (torch.randn(shape, device=device), torch.randint(0, 1000, (args.batch_size,), device=device),
              torch.randn(shape, device=device))

    sdlesson_unet = UNet(cfg)
    models = {"sdlesson UNet": (sdlesson_unet, sdlesson_unet)}  # name: (model, predict_noise(x, t))
    reference = diffusers_unet_like(cfg)
    if reference is not None:
        import diffusers
        models[f"diffusers {diffusers.__version__} UNet2DModel"] = (reference, lambda x, t: reference(x, t).sample)
    train_steps, params = {}, {}
    for name, (model, predict_noise) in models.items():
        model.to(device).train()
        params[name] = count_parameters(model)
        train_steps[name] = make_train_step(predict_noise, model, inputs, device, precision)

    for train_step in train_steps.values():
        for _ in range(args.warmup):
            train_step()
    ms_per_step = {name: [] for name in train_steps}
    for _ in range(args.repeats):  # interleaved: A, B, A, B, …
        for name, train_step in train_steps.items():
            ms_per_step[name].append(time_steps(train_step, args.steps, device))

    print(f"device: {device} ({device_name(device)}), torch {torch.__version__}, precision {precision}")
    print(f"preset {args.preset}: {shape[1]}×{shape[2]}×{shape[3]}, channels {cfg.block_channels}, "
          f"attention {cfg.attention_levels}, batch {args.batch_size}, "
          f"{args.repeats} repeats × {args.steps} steps (median)\n")
    width = max(len(name) for name in train_steps)
    print(f"{'model':<{width}}  {'params':>10}  {'ms/step':>9}  {'images/s':>9}  {'best ms/step':>12}")
    for name, times in ms_per_step.items():
        median_ms = statistics.median(times)
        print(f"{name:<{width}}  {params[name]:>10,}  {median_ms:>9.1f}  {args.batch_size * 1000 / median_ms:>9.1f}"
              f"  {min(times):>12.1f}")  # on a busy machine, the best round is the least disturbed one


if __name__ == "__main__":
    main()
