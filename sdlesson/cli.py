"""`python -m sdlesson ...`: train the course's checkpoints, and evaluate them.

    python -m sdlesson train silhouette_classifier
    python -m sdlesson train silhouette_unet --steps 4000 --out runs/    # precision: what is fast here (auto)
    torchrun --standalone --nproc_per_node=2 -m sdlesson train silhouette_unet
    python -m sdlesson evaluate silhouette_unet --num-steps 50
    python -m sdlesson generate "a large cat face in the center on a blue background" --seed 1 --out cat.png
    python -m sdlesson generate "a large cat face in the center on a pink background" --init-image cat.png --strength .6
    python -m sdlesson generate "a large dog face in the center on a blue background" --init-image cat.png --mask m.png
    python -m sdlesson finetune lora --steps 400 --out turtle-lora.safetensors     # teach it "turtle" (lesson 09)
    python -m sdlesson generate "a large turtle in the center on a pink background" --lora turtle-lora.safetensors

`train` makes a model from its recipe (sdlesson/recipes.py), keeps its full state (weights, EMA, optimizer, loss
history) in runs/NAME.train.safetensors and resumes from it when run again; when done it writes the EMA weights
alone to ./NAME.safetensors (or where --out says) with what the model card needs (command, steps, wall time,
hardware) in the file's metadata. The same command gives the same tensors. Under torchrun it trains with
DistributedDataParallel, one process per GPU (or several on a CPU), on the same global batch.
"""

from __future__ import annotations

import argparse
import math
import dataclasses
import functools
import os
import sys
from pathlib import Path

import torch

from . import checkpoint as ckpt
from . import pretrained as pre
from . import recipes
from .cost import device_name
from .devices import pick_device
from .samplers import SAMPLERS
from .train import Trainer
from .unet import count_parameters


LOSS_CURVE_EVERY = 50  # the shipped file keeps the training loss averaged over blocks of this many steps


def loss_curve(history: list[float], every: int) -> list[float]:
    return [round(sum(history[i:i + every]) / len(history[i:i + every]), 5) for i in range(0, len(history), every)]


def output_path(out: str | None, name: str) -> Path:
    """--out: a .safetensors file, or a folder for NAME.safetensors (made if missing); default the current folder."""
    path = Path(out) if out else Path.cwd()
    if path.suffix == ".safetensors":
        if not path.parent.is_dir():
            raise ValueError(f"--out: folder {str(path.parent)!r} does not exist")
        return path
    if path.suffix:
        raise ValueError(f"--out must be a folder or a .safetensors file, got {out!r}")
    path.mkdir(parents=True, exist_ok=True)
    return path / f"{name}.safetensors"


def start_processes(device: str | None) -> torch.device:
    """Under torchrun (WORLD_SIZE set): join the process group, NCCL on CUDA, gloo on a CPU; one GPU per process."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return pick_device(device)
    import torch.distributed as dist

    device = pick_device(device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")  # reads RANK, WORLD_SIZE, MASTER_ADDR, ...
    return device


def train(args) -> None:
    recipe = recipes.get(args.name)
    overrides = {k: v for k, v in (("steps", args.steps), ("precision", args.precision),
                                   ("checkpoint_every", args.checkpoint_every)) if v is not None}
    config = dataclasses.replace(recipe.train, **overrides)
    out = output_path(args.out, args.name)  # checked before any data is made
    device = start_processes(args.device)
    try:
        model, data = recipe.build_model(), recipe.data()
        runs = Path(args.runs)
        runs.mkdir(parents=True, exist_ok=True)
        trainer = Trainer(model, recipe.loss, data, config, device=device,
                          checkpoint_path=runs / f"{args.name}.train.safetensors")
        if trainer.rank == 0:
            precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[trainer.amp_dtype]
            print(f"{args.name}: {count_parameters(model):,} parameters, {config.steps} steps on {trainer.device}"
                  + f" in {precision}" + (f" ({config.precision})" if config.precision == "auto" else "")
                  + (f" × {trainer.world_size} processes" if trainer.world_size > 1 else "")
                  + (f", resuming at step {trainer.step}" if trainer.step else ""), flush=True)
        trainer.fit()
        if trainer.rank != 0:
            return
        command = "python -m sdlesson " + " ".join(sys.argv[1:])
        extra = recipe.metadata(trainer.ema_model, data) if recipe.metadata else {}
        ckpt.save_model(out, trainer.ema_model, dtype=recipe.dtype, command=command, **extra, steps=trainer.step,
                        seconds=round(trainer.seconds, 1), hardware=device_name(trainer.device),
                        processes=trainer.world_size, torch=torch.__version__, train_config=dataclasses.asdict(config),
                        loss_curve=loss_curve(trainer.history, LOSS_CURVE_EVERY), loss_curve_every=LOSS_CURVE_EVERY)
        print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) after {trainer.seconds / 60:.1f} min of training")
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


# The options of `evaluate` each model takes (its evaluate_NAME function's keyword: CLI flag); others are refused.
EVALUATE_OPTIONS = {
    "silhouette_unet": {"num_samples": "--num-samples", "num_steps": "--num-steps", "sampler": "--sampler"},
    "scene_latent_unet": {"num_samples": "--num-samples", "num_steps": "--num-steps", "sampler": "--sampler"},
    "scene_text_unet": {"guidance_scale": "--guidance", "num_steps": "--num-steps"},
    **dict.fromkeys(("comp_text_unet", "comp_text_unet_joint", "comp_text_unet_recaptioned",
                     "comp_text_unet_relations"),
                    {"guidance_scale": "--guidance", "num_steps": "--num-steps"}),
}
EVALUATE_FLAGS = {"--num-samples": "num_samples", "--num-steps": "num_steps", "--sampler": "sampler",
                  "--guidance": "guidance"}  # flag: its attribute in args


def evaluate(args) -> None:
    """Every option checked before any model loads or any data is made: a mistake costs no time."""
    from . import reports  # here: the instruments' imports cost a second, which train and generate need not pay

    recipes.get(args.name)  # ValueError for an unknown name
    takes = EVALUATE_OPTIONS.get(args.name, {})
    given = [flag for flag, attr in EVALUATE_FLAGS.items() if getattr(args, attr) is not None]
    refused = [flag for flag in given if flag not in takes.values()]
    if refused:
        accepted = ", ".join(takes.values()) or "no options but --device"
        raise ValueError(f"evaluate {args.name} does not use {', '.join(refused)} (it takes {accepted})")
    options = {key: getattr(args, EVALUATE_FLAGS[flag]) for key, flag in takes.items()
               if getattr(args, EVALUATE_FLAGS[flag]) is not None}
    reports.check_options(**options)
    device = pick_device(args.device)
    report = getattr(reports, f"evaluate_{args.name}")(device=device, **options)
    for key, value in report.items():
        print(f"{key:>36}: {value}")


def read_image(path: str, flag: str, parser, *, mode: str):
    """A file Pillow can read, fully loaded (a truncated file fails here, not later), in RGB or L (grey) mode."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert(mode)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        parser.error(f"{flag}: cannot read {path!r} as an image ({type(e).__name__}: {e})")


def init_image_and_mask(args, parser, size: tuple[int, int]):
    """--init-image and --mask as uint8 tensors (1, C, H, W) of the output's size, or None.

    Sizes: the mask must have the init image's size (a mask drawn for another picture is a mistake); the two are
    resized to the output size when their aspect ratio is the same (within 1%) and refused otherwise, as cropping
    is the learner's choice to make. The image is resized by area averaging (a PNG this command wrote with --zoom
    comes back pixel for pixel), the mask by nearest neighbour, then binarised: white (≥ 128) = repaint.
    """
    import numpy as np
    from PIL import Image

    if args.init_image is None:
        return None, None
    height, width = size
    image = read_image(args.init_image, "--init-image", parser, mode="RGB")
    mask = read_image(args.mask, "--mask", parser, mode="L") if args.mask else None
    if mask is not None and mask.size != image.size:
        parser.error(f"--mask is {mask.width}×{mask.height} but --init-image is {image.width}×{image.height}: "
                     "they must be the same size (white = repaint)")
    if abs(image.width / image.height - width / height) > 0.01 * width / height:
        parser.error(f"--init-image is {image.width}×{image.height}, another shape than the {width}×{height} output: "
                     "crop it to that aspect ratio first" + (" (or pass --height/--width)" if args.model else ""))
    as_tensor = lambda im: torch.from_numpy(np.array(im)).reshape(im.height, im.width, -1).permute(2, 0, 1)[None]  # noqa: E731
    image = as_tensor(image.resize((width, height), Image.BOX))  # (1, 3, H, W) uint8
    return image, None if mask is None else as_tensor(mask.resize((width, height), Image.NEAREST))  # (1, 1, H, W)


FINETUNE_LR = {"textual_inversion": 5e-3, "lora": 1e-3}  # finetune.finetune's defaults, shown in --help


def finetune(args, parser) -> None:
    """Teach the course's model a new word from rendered pictures of a new glyph: every input checked first."""
    from .checks import check_device

    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    if not 1 <= args.pictures <= 1000:
        parser.error(f"--pictures must be from 1 to 1000, got {args.pictures}")
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        parser.error(f"--lr must be a finite number > 0, got {args.lr}")
    if args.rank < 1:
        parser.error(f"--rank must be >= 1, got {args.rank}")
    if args.method != "lora" and (args.text_lora or args.rank != 4):
        parser.error("--rank and --text-lora apply to lora; textual inversion trains one embedding row")
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    if not 0 <= args.prior <= 1000:
        parser.error(f"--prior must be from 0 to 1000 scenes of the old words, got {args.prior}")
    if not (args.word.isalpha() and args.word == args.word.lower()) or args.word in pre.SCENE_CLIP.vocab:
        parser.error(f"--word must be one lower-case word of letters the model does not know yet, got {args.word!r}")
    out = Path(args.out or f"{args.word}-{args.method.replace('_', '-')}.safetensors")
    if out.suffix != ".safetensors" or not out.parent.is_dir():
        parser.error(f"--out must be a .safetensors file in an existing folder, got {str(out)!r}")
    device = check_device(args.device) if args.device else pick_device()
    import time

    from . import finetune as F
    from .generate import TextToImage

    images, captions = F.concept_scenes(args.pictures, seed=args.seed, word=args.word)
    if args.prior:  # prior preservation (DreamBooth): scenes of the old words trained beside the new ones
        from .scenes import make_scenes

        old_images, old_captions, _ = make_scenes(args.prior, seed=args.seed + 1)
        images, captions = torch.cat([images, old_images]), captions + old_captions
    model = TextToImage.from_pretrained(device=device)
    latents = F.encode_concept(images.to(device))
    print(f"{args.method}: {args.pictures} pictures of {args.word!r} (e.g. {captions[0]!r})"
          + (f" + {args.prior} of the old words" if args.prior else "") + f", {args.steps} steps on {device}",
          flush=True)
    start = time.process_time(), time.perf_counter()
    history = F.finetune(model, latents, captions, method=args.method, steps=args.steps, lr=args.lr, rank=args.rank,
                         text_lora=args.text_lora, word=args.word, seed=args.seed)
    cpu, wall = time.process_time() - start[0], time.perf_counter() - start[1]
    curve = loss_curve(history["loss"], max(1, args.steps // 10))
    meta = {"command": "python -m sdlesson " + " ".join(sys.argv[1:]), "steps": args.steps, "pictures": args.pictures,
            "prior": args.prior, "seed": args.seed, "lr": args.lr or FINETUNE_LR[args.method],
            "parameters": history["parameters"],
            "seconds": round(wall, 1), "cpu_seconds": round(cpu, 1), "hardware": device_name(device),
            "loss_curve": curve}
    if args.method == "lora":
        F.save_lora_word(model, out, word=args.word, config=meta)
    else:
        F.save_word(model.clip, args.word, out)
    print(f"loss {curve[0]:.4f} -> {curve[-1]:.4f}; {history['parameters']:,} numbers trained in {wall:.0f} s; "
          f"wrote {out} ({out.stat().st_size / 1024:.1f} KB)")


def finetune_words(args, parser) -> list[str]:
    """generate --lora / --embedding: the files checked and their words read (metadata only), before models load."""
    from .lora import read_lora_config
    from .textual_inversion import read_embedding

    if args.lora_scale is not None and (args.lora is None or not math.isfinite(args.lora_scale)):
        parser.error(f"--lora-scale must be a finite number and needs --lora, got {args.lora_scale}")
    words = []
    for flag, path in (("--lora", args.lora), ("--embedding", args.embedding)):
        if path is None:
            continue
        if not Path(path).is_file():
            parser.error(f"{flag}: no file at {path!r}")
        if args.model is None:  # the course's model: files written by `finetune`
            try:
                words.append(read_lora_config(path).get("word") if flag == "--lora" else read_embedding(path)[0])
            except Exception as e:  # noqa: BLE001 — any unreadable file is a one-line mistake, not a traceback
                parser.error(f"{flag}: {path!r} is not a file written by `python -m sdlesson finetune` ({e})")
    if len(words) != len(set(words)) or None in words:
        parser.error(f"--lora and --embedding teach the same word {words[0]!r}: give one of them"
                     if None not in words else "--lora: the file names no word (write it with `finetune lora`)")
    return words


def add_finetunes(pipe, args, *, sd: bool) -> None:
    """Load --lora (at --lora-scale, merged) and --embedding onto the loaded model."""
    from . import finetune as F
    from .lora import load_sd_lora
    from .textual_inversion import load_textual_inversion

    scale = 1.0 if args.lora_scale is None else args.lora_scale
    if args.lora:
        load_sd_lora(pipe, args.lora, scale=scale, merge=True) if sd else \
            F.load_lora_word(pipe, args.lora, scale=scale, merge=True)
    if args.embedding:
        load_textual_inversion(pipe, args.embedding) if sd else F.load_word(pipe.clip, args.embedding)


def generate(args, parser) -> None:
    """Check every argument before loading a model, so a mistake costs no time and says what was expected."""
    from .checks import check_device
    from .generate import (DEFAULT_GUIDANCE, DEFAULT_STEPS, SD_GUIDANCE, SD_SAMPLERS, SD_STEPS, TextToImage,
                           pipeline_sampler)
    from .schedule import NoiseSchedule
    from .viz import image_grid, to_png

    if not args.prompt.strip():
        parser.error('the prompt is empty; give one such as "a small dog face in the top left on a green background"')
    sd = args.model is not None
    num_steps = args.num_steps if args.num_steps is not None else (SD_STEPS if sd else DEFAULT_STEPS)
    guidance = args.guidance if args.guidance is not None else (SD_GUIDANCE if sd else DEFAULT_GUIDANCE)
    if not 1 <= num_steps <= 1000:
        parser.error(f"--num-steps must be from 1 to 1000 (the training timesteps), got {num_steps}")
    if not math.isfinite(guidance) or guidance < 0:
        parser.error(f"--guidance must be a finite number >= 0 (1 = no guidance), got {guidance}")
    if not 1 <= args.num_images <= 64:
        parser.error(f"--num-images must be from 1 to 64, got {args.num_images}")
    if args.zoom < 1:
        parser.error(f"--zoom must be >= 1, got {args.zoom}")
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    for name in ("height", "width"):
        value = getattr(args, name)
        if value is not None and (not sd or value < 64 or value % 64):
            parser.error(f"--{name} applies to --model (Stable Diffusion) and must be a multiple of 64, got {value}"
                         if sd else f"--{name} applies only with --model: the course's models make 64×64 scenes")
    for flag, value in (("--strength", args.strength), ("--mask", args.mask)):
        if value is not None and args.init_image is None:
            parser.error(f"{flag} applies to img2img and inpainting: give --init-image PATH too")
    if args.strength is not None:
        if not (math.isfinite(args.strength) and 0 < args.strength <= 1):
            parser.error(f"--strength must be in (0, 1] (the share of the steps that run), got {args.strength}")
        if int(num_steps * args.strength) < 1:
            parser.error(f"--strength {args.strength} × --num-steps {num_steps} leaves no step to run: raise either")
    try:  # the sampler is built now (cheap), so an unknown name or option fails before any model loads
        from .stable_diffusion import SD_SCHEDULE

        sampler = pipeline_sampler(args.sampler, NoiseSchedule(SD_SCHEDULE if sd else pre.SCENE_SCHEDULE),
                                   SD_SAMPLERS if sd else {}, karras=args.karras)
    except TypeError:
        parser.error(f"--karras does not apply to --sampler {args.sampler}")
    except ValueError as e:
        parser.error(f"--sampler {args.sampler}: {e}")
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        parser.error(f"--out must name a .png file, got {args.out!r}")
    if not out.parent.is_dir():
        parser.error(f"--out: folder {str(out.parent)!r} does not exist")
    size = (args.height or 512, args.width or 512) if sd else (64, 64)
    init_image, mask = init_image_and_mask(args, parser, size)
    words = finetune_words(args, parser)
    device = check_device(args.device) if args.device else pick_device()
    if sd:
        if not Path(args.model).exists():
            parser.error(f"--model: no Stable Diffusion weights at {args.model!r} (a diffusers folder with unet/, "
                         "vae/, text_encoder/, tokenizer/, or a single .safetensors file)")
        pipe = TextToImage.from_stable_diffusion(args.model, device=device)
        if device.type == "cpu":
            print("Stable Diffusion on a CPU takes minutes per 512×512 image at 50 steps (two UNet passes a step, "
                  "guidance); fewer --num-steps or a smaller --height/--width cost less", file=sys.stderr)
    else:
        if args.world == "compositional" and (args.lora or args.embedding):
            parser.error("--lora and --embedding were trained on the emoji scenes: use them with --world scenes")
        vocab = (recipes.COMP_CLIP if args.world == "compositional" else pre.SCENE_CLIP).vocab
        tokenizer = dataclasses.replace(pre.SCENE_CLIP, vocab=vocab + tuple(words), max_length=20).tokenizer()
        for text in filter(None, (args.prompt, args.negative)):
            try:
                tokenizer(text)  # unknown words are named now, before any model loads
            except ValueError as e:
                parser.error(str(e))
        pipe = TextToImage.from_pretrained(args.world, device=device)
    add_finetunes(pipe, args, sd=sd)
    size = {} if init_image is not None else dict(height=args.height, width=args.width)  # else the init image's
    images = pipe(args.prompt, negative_prompt=args.negative, num_images=args.num_images, num_steps=num_steps,
                  guidance_scale=guidance, seed=args.seed, sampler=sampler, init_image=init_image, mask=mask,
                  strength=args.strength, **size)
    grid = image_grid(images, nrow=args.nrow, pad=1 if len(images) > 1 else 0)  # one image: written as it is
    out.write_bytes(to_png(grid, scale=args.zoom if not sd else 1))
    side = f"{images.shape[-2]}×{images.shape[-1]}"
    print(f"wrote {out}: {args.num_images} image(s) of {side} for {args.prompt!r}")


class OneLineParser(argparse.ArgumentParser):
    """Mistakes on the command line: one line and exit status 2 (argparse's own status), no usage dump, no traceback."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def main(argv=None) -> None:
    parser = OneLineParser(prog="python -m sdlesson", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    names = ", ".join(recipes.RECIPES)

    p = sub.add_parser("train", help="train a shipped checkpoint from its recipe (resumes where a run stopped)")
    p.add_argument("name", help=f"one of {names}")
    p.add_argument("--steps", type=int, help="total training steps (default: the recipe's)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"),
                   help="default: the recipe's (auto: bf16 only where this machine computes it natively and faster, "
                   "else fp32 on a CPU; bf16 or fp16 on CUDA)")
    p.add_argument("--checkpoint-every", type=int,
                   help="steps between saves of the training state (default: the recipe's)")
    p.add_argument("--device", help="cuda, mps or cpu (default: the best available)")
    p.add_argument("--runs", default="runs", help="folder for the resumable training state (default: runs/)")
    p.add_argument("--out", help="a folder, or a .safetensors file, for the weights (default: ./NAME.safetensors)")
    p.set_defaults(func=train)

    p = sub.add_parser("evaluate", help="measure a shipped checkpoint's quality")
    p.add_argument("name", help=f"one of {names}")
    p.add_argument("--device")
    p.add_argument("--num-samples", type=int, help="unconditional UNets: how many samples to judge (default: 1000)")
    p.add_argument("--num-steps", type=int,
                   help="UNets: sampling steps (default: 100 for silhouettes, 50 for latents, the pipeline's for text)")
    p.add_argument("--sampler", choices=("ddim", "ddpm"), help="unconditional UNets (default: ddim)")
    p.add_argument("--guidance", type=float, help="scene_text_unet: the guidance scale (default: the generate default)")
    p.set_defaults(func=evaluate)

    p = sub.add_parser("generate", help="text to image with the shipped models (or SD weights), written to a PNG")
    p.add_argument("prompt", help='e.g. "a small dog face in the top left on a green background"')
    p.add_argument("--model", help="Stable Diffusion v1.x weights: a diffusers folder or a single .safetensors file "
                                   "(default: the course's own scene models)")
    p.add_argument("--world", choices=("scenes", "compositional"), default="scenes",
                   help="the course's models to use: the emoji scenes (lessons 04-05, 08-09) or the compositional "
                        "world of lesson 06, e.g. \"a red car left of a blue star\" (default: scenes)")
    p.add_argument("--negative", help="negative prompt: what guidance steers away from")
    p.add_argument("--num-steps", type=int, help="sampling steps (default: 25; 50 with --model)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: 3; 7.5 with --model)")
    p.add_argument("--height", type=int, help="with --model: image height, a multiple of 64 (default: 512)")
    p.add_argument("--width", type=int, help="with --model: image width, a multiple of 64 (default: 512)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-n", "--num-images", type=int, default=4, help="(default: 4)")
    p.add_argument("--sampler", choices=tuple(SAMPLERS), default="ddim", help="(default: ddim)")
    p.add_argument("--karras", action="store_true", help="Karras σ spacing, for the samplers that offer it")
    p.add_argument("--init-image", help="img2img: start from this image (PNG, JPEG, …), resized to the output size "
                                        "if its aspect ratio matches")
    p.add_argument("--strength", type=float, help="with --init-image: how much is redrawn, in (0, 1] "
                                                  "(default: 0.8; 1 with --mask)")
    p.add_argument("--mask", help="inpainting: an image of --init-image's size, white = repaint, black = keep")
    p.add_argument("--out", default="generated.png", help="PNG file to write (default: generated.png)")
    p.add_argument("--nrow", type=int, default=8, help="images per row of the PNG")
    p.add_argument("--zoom", type=int, default=4, help="enlarge each pixel this many times (default: 4)")
    p.add_argument("--device")
    p.add_argument("--lora", help="a LoRA file: from `finetune lora`, or with --model a shared SD v1.5 LoRA")
    p.add_argument("--lora-scale", type=float, help="s in W + s·(α/r)·B A (default: 1)")
    p.add_argument("--embedding", help="a textual-inversion file: from `finetune textual_inversion`, or with --model "
                                       "an SD v1.5 embedding (its token goes in the prompt)")
    p.set_defaults(func=functools.partial(generate, parser=p))

    p = sub.add_parser("finetune", help="teach the course's text-to-image model a new word (lesson 09)")
    p.add_argument("method", choices=("textual_inversion", "lora"))
    p.add_argument("--steps", type=int, default=300, help="(default: 300)")
    p.add_argument("--lr", type=float, help="learning rate (default: 5e-3 textual inversion, 1e-3 LoRA)")
    p.add_argument("--rank", type=int, default=4, help="lora: the adapters' rank r (default: 4)")
    p.add_argument("--text-lora", action="store_true", help="lora: adapt the text encoder's attention too")
    p.add_argument("--pictures", type=int, default=12, help="rendered pictures of the new object (default: 12)")
    p.add_argument("--prior", type=int, default=0,
                   help="scenes of the old words trained beside (prior preservation; default 0)")
    p.add_argument("--word", default="turtle", help="the new word (default: turtle, an OpenMoji glyph the world lacks)")
    p.add_argument("--seed", type=int, default=0, help="pictures, noise draws and adapter init (default: 0)")
    p.add_argument("--out", help="a .safetensors file (default: ./WORD-METHOD.safetensors)")
    p.add_argument("--device")
    p.set_defaults(func=functools.partial(finetune, parser=p))

    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (ValueError, TypeError, FileNotFoundError) as e:  # found by the library: one line, exit status 2
        print(f"python -m sdlesson {args.command}: error: {e}", file=sys.stderr)
        sys.exit(2)
