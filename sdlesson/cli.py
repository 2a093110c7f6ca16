"""`python -m sdlesson ...`: train the course's checkpoints, and evaluate them.

    python -m sdlesson train silhouette_classifier
    python -m sdlesson train silhouette_unet --steps 4000 --precision bf16
    python -m sdlesson evaluate silhouette_unet

`train` keeps its full state (weights, EMA, optimizer, loss history) in runs/NAME.train.safetensors and resumes
from it when run again; when done it writes the EMA weights alone to data/NAME.safetensors with what the model
card needs (command, steps, wall time, hardware) in the file's metadata.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
from pathlib import Path

import torch

from . import checkpoint as ckpt
from . import pretrained as pre
from .classifier import Classifier, classification_loss
from .cost import device_name
from .scenes import make_scenes
from .vae import VAE, vae_loss
from .data import load_silhouettes
from .schedule import NoiseSchedule
from .train import DiffusionLoss, Trainer, pick_device
from .unet import UNet, count_parameters


LOSS_CURVE_EVERY = 50  # the shipped file keeps the training loss averaged over blocks of this many steps


def loss_curve(history: list[float], every: int) -> list[float]:
    return [round(sum(history[i:i + every]) / len(history[i:i + every]), 5) for i in range(0, len(history), every)]


def recipe(name: str):
    """(model, loss_fn, data, train config) for a shipped checkpoint."""
    if name == "silhouette_unet":
        images, _ = load_silhouettes("train")
        return UNet(pre.SILHOUETTE_UNET), DiffusionLoss(NoiseSchedule(pre.SILHOUETTE_SCHEDULE)), images, pre.SILHOUETTE_TRAIN
    if name == "silhouette_classifier":
        return (Classifier(pre.SILHOUETTE_CLASSIFIER), classification_loss, load_silhouettes("train"),
                pre.SILHOUETTE_CLASSIFIER_TRAIN)
    if name == "scene_vae":
        images, _, _ = make_scenes(pre.SCENE_TRAIN_COUNT, seed=pre.SCENE_TRAIN_SEED)  # uint8, 246 MB
        return (VAE(pre.SCENE_VAE), functools.partial(vae_loss, kl_weight=pre.SCENE_VAE_KL_WEIGHT), images,
                pre.SCENE_VAE_TRAIN)
    if name == "scene_judge":
        seen = make_scenes(16000, seed=pre.SCENE_JUDGE_SEED, split="train")
        heldout = make_scenes(4000, seed=pre.SCENE_JUDGE_SEED, split="heldout")
        data = (torch.cat([seen[0], heldout[0]]), torch.cat([seen[2], heldout[2]]))  # uint8 images, (N, 4) labels
        return Classifier(pre.SCENE_JUDGE), classification_loss, data, pre.SCENE_JUDGE_TRAIN
    raise SystemExit(f"unknown model {name!r}: expected one of {', '.join(pre.RECIPES)}")


def train(args) -> None:
    model, loss_fn, data, config = recipe(args.name)
    overrides = {k: v for k, v in (("steps", args.steps), ("precision", args.precision)) if v is not None}
    config = dataclasses.replace(config, **overrides)
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(model, loss_fn, data, config, device=args.device, checkpoint_path=runs / f"{args.name}.train.safetensors")
    print(f"{args.name}: {count_parameters(model):,} parameters, {config.steps} steps on {trainer.device}"
          + (f", resuming at step {trainer.step}" if trainer.step else ""))
    trainer.fit()
    out = Path(args.out) if args.out else pre.DATA_DIR / f"{args.name}.safetensors"
    command = "python -m sdlesson " + " ".join(sys.argv[1:])
    extra = {}
    if args.name == "scene_vae":  # the latent scale factor, 1 / std of the training latents (SD's 0.18215 rule)
        from .latents import latent_scale

        extra["latent_scale"] = latent_scale(trainer.ema_model, data[:2000])
    ckpt.save_model(out, trainer.ema_model, command=command, **extra, steps=trainer.step, seconds=round(trainer.seconds, 1),
                    hardware=device_name(trainer.device), torch=torch.__version__, train_config=dataclasses.asdict(config),
                    loss_curve=loss_curve(trainer.history, LOSS_CURVE_EVERY), loss_curve_every=LOSS_CURVE_EVERY)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) after {trainer.seconds / 60:.1f} min of training")


def evaluate(args) -> None:
    from . import evaluate as ev

    device = pick_device(args.device)
    if args.name == "silhouette_unet":
        report = ev.evaluate_silhouette_unet(device=device, num_samples=args.num_samples, num_steps=args.num_steps)
    else:
        report = getattr(ev, f"evaluate_{args.name}")(device=device)
    for key, value in report.items():
        print(f"{key:>36}: {value}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sdlesson", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a shipped checkpoint (resumes where a previous run stopped)")
    p.add_argument("name", choices=sorted(pre.RECIPES))
    p.add_argument("--steps", type=int, help="total training steps (default: the recipe's)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), help="default: the recipe's (auto)")
    p.add_argument("--device", help="cuda, mps or cpu (default: the best available)")
    p.add_argument("--runs", default="runs", help="folder for the resumable training state (default: runs/)")
    p.add_argument("--out", help="where to write the weights (default: data/NAME.safetensors)")
    p.set_defaults(func=train)

    p = sub.add_parser("evaluate", help="measure a shipped checkpoint's quality")
    p.add_argument("name", choices=sorted(pre.RECIPES))
    p.add_argument("--device")
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--num-steps", type=int, default=100)
    p.set_defaults(func=evaluate)

    args = parser.parse_args(argv)
    args.func(args)
