"""How long text to image takes with the shipped models: from a shell, and inside Python.

The budget (issue 4): `python -m sdlesson generate` of 4 images at 25 steps within 10 seconds on a 2-core CPU,
start-up included. This prints:

- wall time of the command itself (a fresh interpreter: imports, loading three checkpoints, sampling, the PNG),
  best and median of --repeats runs;
- inside one process, the time of a `TextToImage` call (encode, guided sampling — the UNet twice a step —
  and decode) at several batch sizes, and per image.

    python bench/generate.py
    python bench/generate.py --steps 50 --device cuda

SD mode (--sd): seconds per image of Stable Diffusion v1.5 with sdlesson's TextToImage beside diffusers'
StableDiffusionPipeline on the same weights (--model, a diffusers folder; else random weights at SD v1.5's configs,
written once as a snapshot both load), same prompt, negative prompt and starting latents, interleaved repeats, median.
fp16 on CUDA, fp32 elsewhere. Defaults: 512², 50 steps on CUDA; 128², 2 steps on a CPU (a 512² 50-step image takes
minutes there).

    python bench/generate.py --sd --device cuda
    python bench/generate.py --sd --device cpu --size 128 --sd-steps 2 --repeats 3
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


def sd_snapshot(root: Path, tiny: bool) -> Path:
    """Random SD v1.5-sized (or the tests' tiny) diffusers + transformers models, saved as a snapshot."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from sdlesson.clip_tokenizer import CLIPTokenizer

    torch.manual_seed(0)
    if tiny:  # the parity test's configs: checks the bench itself in seconds
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from sd_snapshot import TEXT, UNET, VAE
        unet, vae, text = UNet2DConditionModel(**UNET), AutoencoderKL(**VAE), CLIPTextModel(CLIPTextConfig(**TEXT))
    else:  # SD v1.5's configs (diffusers' UNet defaults are SD v1's, cross-attending to CLIP ViT-L/14's
        # 768 wide tokens)
        unet = UNet2DConditionModel(cross_attention_dim=768, sample_size=64)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                            sample_size=512, down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4)
        text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                            num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                                            hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407))
    unet.save_pretrained(root / "unet")
    vae.save_pretrained(root / "vae")
    text.save_pretrained(root / "text_encoder")
    CLIPTokenizer.bundled().save(root / "tokenizer")
    return root


def sd_main(args) -> None:
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from sdlesson.cost import device_name, synchronize
    from sdlesson.generate import TextToImage
    from sdlesson.train import pick_device

    device = pick_device(args.device)
    cuda = device.type == "cuda"
    dtype = torch.float16 if cuda else torch.float32
    size = args.size or (512 if cuda else 128)
    steps = args.sd_steps or (50 if cuda else 2)
    prompt, negative = "a photograph of an astronaut riding a horse", "blurry, low quality"
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        root = Path(args.model) if args.model else sd_snapshot(Path(tmp), args.tiny)
        print(f"weights: {args.model or ('random, tiny test configs' if args.tiny else 'random, SD v1.5 configs')}"
              f" ({time.perf_counter() - start:.0f} s to build and write)")
        ours = TextToImage.from_stable_diffusion(root, device=device, dtype=dtype)
        load = dict(torch_dtype=dtype)
        theirs = StableDiffusionPipeline(
            vae=AutoencoderKL.from_pretrained(root / "vae", **load),
            unet=UNet2DConditionModel.from_pretrained(root / "unet", **load),
            text_encoder=CLIPTextModel.from_pretrained(root / "text_encoder", **load),
            tokenizer=CLIPTokenizer.from_pretrained(str(root / "tokenizer"), model_max_length=77),
            scheduler=DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                    clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                                    timestep_spacing="leading"),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False).to(device)
        theirs.set_progress_bar_config(disable=True)
    f = 2 ** (len(theirs.vae.config.block_out_channels) - 1)
    latents = torch.randn(1, 4, size // f, size // f, generator=torch.Generator().manual_seed(0))
    runs = {
        "sdlesson": lambda: ours(prompt, negative_prompt=negative, num_images=1, num_steps=steps, guidance_scale=7.5,
                                 height=size, width=size, latents=latents, output_type="float"),
        "diffusers": lambda: torch.from_numpy(theirs(prompt, negative_prompt=negative, num_inference_steps=steps,
                                                     guidance_scale=7.5, height=size, width=size,
                                                     latents=latents.to(device, dtype), output_type="np").images),
    }
    print(f"device: {device_name(device)}, torch {torch.__version__}, {dtype}; {size}×{size}, {steps} DDIM steps, "
          f"guidance 7.5 (batched into one forward by both)")
    images = {name: run() for name, run in runs.items()}  # warm-up, and the two images compared
    diff = (images["sdlesson"].permute(0, 2, 3, 1) - images["diffusers"]).abs().max().item()
    print(f"max abs difference of the two images on [0, 1]: {diff:.2e}")
    times = {name: [] for name in runs}
    for _ in range(args.repeats):  # interleaved, so drift in the machine's load hits both alike
        for name, run in runs.items():
            synchronize(device)
            start = time.perf_counter()
            run()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    for name, t in times.items():
        print(f"{name:>10}: median {statistics.median(t):.3f} s / image, best {min(t):.3f} s ({args.repeats} runs)")
    ratio = statistics.median(times["sdlesson"]) / statistics.median(times["diffusers"])
    print(f"sdlesson / diffusers: {ratio:.2f}×")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--device", help="cuda, mps or cpu (default: the best available)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sd", action="store_true", help="Stable Diffusion v1.5: sdlesson beside diffusers")
    parser.add_argument("--model", help="--sd: a diffusers folder of SD v1.x weights (default: random weights)")
    parser.add_argument("--size", type=int, help="--sd: image side (default: 512 on CUDA, 128 elsewhere)")
    parser.add_argument("--sd-steps", type=int, help="--sd: DDIM steps (default: 50 on CUDA, 2 elsewhere)")
    parser.add_argument("--tiny", action="store_true", help="--sd without --model: the parity test's tiny configs")
    args = parser.parse_args()
    if args.sd:
        return sd_main(args)

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
