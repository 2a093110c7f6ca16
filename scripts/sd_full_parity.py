"""Stable Diffusion v1.5 at full size, random weights: sdlesson's networks against diffusers' and transformers'.

Not a test: it allocates about 5 GB (the three reference models in fp32, whose tensors sdlesson's models then share)
and writes a 2 GB fp16 snapshot to a temporary folder. It prints

1. the max abs error of each output (UNet ε̂ on 16×16 latents, VAE encode mean / logvar and decode, CLIP hidden
   states), fp32 on the CPU;
2. the wall time and peak RAM of `load_stable_diffusion` on a random-weight diffusers snapshot in SD v1.5's real
   layout (fp16 safetensors, as the snapshot's fp16 variant), measured in a fresh process.

    python scripts/sd_full_parity.py [--tmp /tmp]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from sdlesson import stable_diffusion as sdm
from sdlesson.clip_tokenizer import CLIPTokenizer

CLIP_L = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                        num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                        bos_token_id=49406, eos_token_id=49407)
SD_VAE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=512,
              down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)

LOAD = """
import resource, sys, time, torch
start = time.perf_counter()
from sdlesson.stable_diffusion import load_stable_diffusion
sd = load_stable_diffusion(sys.argv[1], dtype=torch.float16)
seconds = time.perf_counter() - start
n = sum(p.numel() for m in (sd.unet, sd.vae, sd.text_encoder) for p in m.parameters())
print(f"{seconds:.1f} {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} {n}")
"""


def reference_models():
    torch.manual_seed(0)
    unet = UNet2DConditionModel(cross_attention_dim=768, sample_size=64).eval()
    vae = AutoencoderKL(**SD_VAE).eval()
    text = CLIPTextModel(CLIP_L).eval()
    return unet, vae, text


def parity(unet, vae, text) -> dict[str, float]:
    """The references' weights through the loader's renaming rules (in memory: the tensors are shared, not copied)."""
    configs = {"unet": sdm.unet_config_from_diffusers(dict(unet.config)),
               "vae": sdm.vae_config_from_diffusers(dict(vae.config))[0],
               "text": sdm.text_config_from_transformers(text.config.to_dict())}
    sd = sdm.build_stable_diffusion(unet=configs["unet"], vae=configs["vae"], text_encoder=configs["text"])
    for part, ref, model in (("unet", unet, sd.unet), ("vae", vae, sd.vae), ("text", text, sd.text_encoder)):
        state = sdm.diffusers_to_course(part, ref.state_dict(), configs[part])
        sdm.check_state(model, state, part)
        model.load_state_dict(state, assign=True)
    g = torch.Generator().manual_seed(1)
    x, ctx = torch.randn(1, 4, 16, 16, generator=g), torch.randn(1, 77, 768, generator=g)
    image, z = torch.rand(1, 3, 128, 128, generator=g) * 2 - 1, torch.randn(1, 4, 16, 16, generator=g)
    ids = torch.randint(0, 49408, (1, 77), generator=g)
    t = torch.tensor([500])
    with torch.no_grad():
        post, ref_post = sd.vae.encode(image), vae.encode(image).latent_dist
        pairs = {"unet eps": (sd.unet(x, t, context=ctx), unet(x, t, encoder_hidden_states=ctx).sample),
                 "vae mean": (post.mean, ref_post.mean), "vae logvar": (post.logvar, ref_post.logvar),
                 "vae decode": (sd.vae.decode(z), vae.decode(z).sample),
                 "text hidden states": (sd.text_encoder(ids), text(ids).last_hidden_state)}
    return {k: ((a - b).abs().max().item(), b.abs().max().item()) for k, (a, b) in pairs.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tmp", default=tempfile.gettempdir(), help="where to write the snapshots (never the repo)")
    args = parser.parse_args()
    unet, vae, text = reference_models()
    print("SD v1.5, random weights, fp32 on the CPU: max abs error (and the reference's max abs value)", flush=True)
    for name, (err, scale) in parity(unet, vae, text).items():
        print(f"  {name:<20} {err:.2e}   (|ref| up to {scale:.2f})", flush=True)
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        fp16 = Path(tmp)
        for name, model in (("unet", unet), ("vae", vae), ("text_encoder", text)):
            model.half().save_pretrained(fp16 / name, variant="fp16")  # the snapshot's *.fp16.safetensors
        CLIPTokenizer.bundled().save(fp16 / "tokenizer")  # vocab.json, merges.txt
        del unet, vae, text
        size = sum(f.stat().st_size for f in fp16.rglob("*.safetensors")) / 2**30
        out = subprocess.run([sys.executable, "-c", LOAD, str(fp16)], capture_output=True, text=True, check=True)
        seconds, peak, n = out.stdout.split()
        print(f"load_stable_diffusion(fp16 snapshot, {size:.2f} GiB of safetensors, dtype=float16) in a fresh "
              f"process: {seconds} s wall (imports included), peak RSS {peak} GiB, {int(n):,} parameters")


if __name__ == "__main__":
    main()
