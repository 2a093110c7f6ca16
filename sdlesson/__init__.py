"""sdlesson: Stable Diffusion, built in small modules you can read — the front door, in the order the lessons go.

The pipeline's shape. Training (lessons 01-06): noise a clean latent, teach the UNet to name the noise.

    image ─ VAE.encode ─ z_0 ─ add_noise(t, ε) ─ z_t ─┐
    caption ─ Tokenizer ─ ids ─ TextEncoder ─ context ─┴─ UNet(z_t, t, context) ─ ε̂ ─ || ε - ε̂ ||² ─ Trainer

Generation (TextToImage; Stable Diffusion is the same pipeline with bigger configurations):

    prompt ─ Tokenizer ─ TextEncoder ─ context ─┐
    noise z_T ─ sampler step ← UNet(z_t, t, context), guided ─ … ─ z_0 ─ VAE.decode ─ image

Where each piece lives (lesson, module, main objects):

    01 forward diffusion  schedule.py         NoiseSchedule (β_t, ᾱ_t, add_noise), DiffusionLoss, loss_per_timestep
    02 noise predictor    unet.py             UNet, UNetConfig: time embedding, ResBlocks, attention, skips
                          samplers.py         a plan of noise levels and a step rule: DDPM, DDIM, Euler (a), Heun,
                                              DPM-Solver++(2M), uniform or Karras; sample(), the loop
                          train.py            Trainer, TrainConfig: AdamW, EMA, clipping, mixed precision, resume
    03-04 latent space    vae.py, latents.py  VAE, VAEConfig: encoder, decoder, KL; the latent cache and scale
    06 text               text.py             Tokenizer, TextEncoder, CLIP and its loss, encode_prompts
                          text_unet.py        TextUNet: a UNet trained together with its own text encoder
    05-06 the pipeline    generate.py         TextToImage: prompt -> context -> guided sampling -> decoder
    07 Stable Diffusion   stable_diffusion.py SD v1.5 as configurations of the modules above, build / load
                          sd_weights.py       SD's weight files (diffusers folder, original single file) -> our names
                          clip_tokenizer.py   CLIP's BPE tokenizer (77 tokens, 49,408 ids)
    the course's models   recipes.py          one recipe per shipped model: config, training settings, data, loss
                          pretrained.py       the shipped checkpoints: load_pretrained(NAME), provenance(NAME)
                          checkpoint.py       safetensors checkpoints with their config, written atomically
    instruments           metrics.py          PSNR, SSIM, edge error, Fréchet distance, nearest-neighbour PSNR
                          classifier.py       a small CNN: silhouette classes, the scene judge
                          evaluate.py         what `python -m sdlesson evaluate` measures, one function per model
                          cost.py             FLOPs, activation memory and timings, counted on the meta device
    support               checks.py           input checks at the public boundary; batches.py: run a model in chunks
                          data.py, scenes.py  silhouettes, photos, the emoji-scene generator
                          compositional.py    the compositional world: 1-4 objects, counts, colours, positions
                          geneval.py          GenEval's prompts and rules in that world, images read back to objects
                          viz.py, progress.py image grids and widgets; a training run's progress line
                          cli.py              python -m sdlesson train | evaluate | generate

`import sdlesson` loads nothing heavy: each name below is imported from its module when first used (PEP 562), so
`sdlesson.UNet` costs torch's import and `import sdlesson` costs nothing.
"""

from __future__ import annotations

import importlib

# name -> module, in lesson order (the table above)
_EXPORTS = {
    "NoiseSchedule": "schedule", "DiffusionLoss": "schedule", "loss_per_timestep": "schedule",
    "UNet": "unet", "UNetConfig": "unet",
    "sample": "samplers", "make_sampler": "samplers", "DDPMSampler": "samplers", "DDIMSampler": "samplers",
    "EulerSampler": "samplers", "EulerAncestralSampler": "samplers", "HeunSampler": "samplers",
    "DPMSolverPP2MSampler": "samplers",
    "Trainer": "train", "TrainConfig": "train",
    "VAE": "vae", "VAEConfig": "vae",
    "Tokenizer": "text", "TextEncoder": "text", "CLIP": "text", "CLIPConfig": "text", "encode_prompts": "text",
    "TextUNet": "text_unet", "TextUNetConfig": "text_unet",
    "TextToImage": "generate",
    "StableDiffusion": "stable_diffusion", "build_stable_diffusion": "stable_diffusion",
    "load_stable_diffusion": "stable_diffusion",
    "load_pretrained": "pretrained",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value  # the next lookup is an ordinary attribute
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
