"""`python -m sdlesson ...`: train the course's checkpoints, and evaluate them.

    python -m sdlesson train silhouette_classifier
    python -m sdlesson train silhouette_unet --steps 4000 --precision bf16
    python -m sdlesson evaluate silhouette_unet
    python -m sdlesson generate "a large cat face in the center on a blue background" --seed 1 --out cat.png

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
from .vae import VAE, decoder_loss, vae_loss
from .data import load_silhouettes
from .latents import encode_scenes
from .text import CLIP, clip_loss, encode_prompts
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
    if name == "scene_vae_decoder":  # starts from the shipped VAE; the encoder is frozen
        vae = pre.load_pretrained("scene_vae")
        vae.encoder.requires_grad_(False)
        images, _, _ = make_scenes(pre.SCENE_TRAIN_COUNT, seed=pre.SCENE_TRAIN_SEED)
        loss = functools.partial(decoder_loss, edge_weight=pre.SCENE_DECODER_EDGE_WEIGHT)
        return vae.train(), loss, images, pre.SCENE_DECODER_TRAIN
    if name.startswith("scene_"):  # the rest train on the training scenes' latents, encoded once by the shipped VAE
        latents, captions, _ = encode_scenes(pre.load_pretrained("scene_vae"), pre.SCENE_TRAIN_COUNT,
                                             seed=pre.SCENE_TRAIN_SEED, scale=pre.scene_latent_scale())
        schedule = NoiseSchedule(pre.SCENE_SCHEDULE)
    if name == "scene_latent_unet":
        return UNet(pre.SCENE_LATENT_UNET), DiffusionLoss(schedule), latents, pre.SCENE_LATENT_TRAIN
    if name == "scene_clip":
        ids, mask = pre.SCENE_CLIP.tokenizer()(captions)
        return CLIP(pre.SCENE_CLIP), clip_loss, (latents, ids, mask), pre.SCENE_CLIP_TRAIN
    if name == "scene_text_unet":  # the frozen text encoder's token embeddings, computed once per caption
        context, mask = encode_prompts(pre.load_pretrained("scene_clip"), captions)
        loss = DiffusionLoss(schedule, p_uncond=pre.SCENE_TEXT_P_UNCOND)
        return UNet(pre.SCENE_TEXT_UNET), loss, (latents, context, mask), pre.SCENE_TEXT_TRAIN
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
    dtype = torch.float16 if args.name in pre.HALF_PRECISION else None
    ckpt.save_model(out, trainer.ema_model, dtype=dtype, command=command, **extra, steps=trainer.step, seconds=round(trainer.seconds, 1),
                    hardware=device_name(trainer.device), torch=torch.__version__, train_config=dataclasses.asdict(config),
                    loss_curve=loss_curve(trainer.history, LOSS_CURVE_EVERY), loss_curve_every=LOSS_CURVE_EVERY)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) after {trainer.seconds / 60:.1f} min of training")


def evaluate(args) -> None:
    from . import evaluate as ev

    device = pick_device(args.device)
    if args.name in ("silhouette_unet", "scene_latent_unet"):
        report = getattr(ev, f"evaluate_{args.name}")(device=device, num_samples=args.num_samples,
                                                      num_steps=args.num_steps, sampler=args.sampler)
    elif args.name == "scene_text_unet":
        report = ev.evaluate_scene_text_unet(device=device, guidance_scale=args.guidance, num_steps=args.num_steps)
    else:
        report = getattr(ev, f"evaluate_{args.name}")(device=device)
    for key, value in report.items():
        print(f"{key:>36}: {value}")


def generate(args, parser) -> None:
    """Check every argument before loading a model, so a mistake costs no time and says what was expected."""
    from .generate import TextToImage
    from .viz import image_grid, to_png

    if not args.prompt.strip():
        parser.error('the prompt is empty; give one such as "a small dog face in the top left on a green background"')
    if not 1 <= args.steps <= 1000:
        parser.error(f"--steps must be from 1 to 1000 (the training timesteps), got {args.steps}")
    if args.guidance < 0:
        parser.error(f"--guidance must be >= 0 (1 = no guidance, 3 = the default), got {args.guidance}")
    if not 1 <= args.num_images <= 64:
        parser.error(f"--num-images must be from 1 to 64, got {args.num_images}")
    if args.zoom < 1:
        parser.error(f"--zoom must be >= 1, got {args.zoom}")
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        parser.error(f"--out must name a .png file, got {args.out!r}")
    if not out.parent.is_dir():
        parser.error(f"--out: folder {str(out.parent)!r} does not exist")
    tokenizer = pre.SCENE_CLIP.tokenizer()
    for text in filter(None, (args.prompt, args.negative)):
        try:
            tokenizer(text)  # unknown words are named now, before any model loads
        except ValueError as e:
            parser.error(str(e))
    pipe = TextToImage.from_pretrained(device=pick_device(args.device))
    images = pipe(args.prompt, negative_prompt=args.negative, num_images=args.num_images, num_steps=args.steps,
                  guidance_scale=args.guidance, seed=args.seed, sampler=args.sampler)
    out.write_bytes(to_png(image_grid(images, nrow=args.nrow), scale=args.zoom))
    print(f"wrote {out}: {args.num_images} image(s) of 64×64 for {args.prompt!r}")


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
    p.add_argument("--num-samples", type=int, default=1000, help="unconditional UNets: how many samples to judge")
    p.add_argument("--num-steps", type=int, help="sampling steps (default: 100 for silhouettes, 50 for latents, 25 for text)")
    p.add_argument("--sampler", choices=("ddim", "ddpm"), default="ddim", help="unconditional UNets (default: ddim)")
    p.add_argument("--guidance", type=float, help="scene_text_unet: the guidance scale (default: the generate default)")
    p.set_defaults(func=evaluate)

    from .generate import DEFAULT_GUIDANCE

    p = sub.add_parser("generate", help="text to image with the shipped models, written to a PNG")
    p.add_argument("prompt", help='e.g. "a small dog face in the top left on a green background"')
    p.add_argument("--negative", help="negative prompt: what guidance steers away from")
    p.add_argument("--steps", type=int, default=25, help="sampling steps (default: 25)")
    p.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE,
                   help=f"classifier-free guidance scale (default: {DEFAULT_GUIDANCE})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-n", "--num-images", type=int, default=4, help="(default: 4)")
    p.add_argument("--sampler", choices=("ddim", "ddpm"), default="ddim")
    p.add_argument("--out", default="generated.png", help="PNG file to write (default: generated.png)")
    p.add_argument("--nrow", type=int, default=8, help="images per row of the PNG")
    p.add_argument("--zoom", type=int, default=4, help="enlarge each pixel this many times (default: 4)")
    p.add_argument("--device")
    p.set_defaults(func=functools.partial(generate, parser=p))

    args = parser.parse_args(argv)
    args.func(args)
