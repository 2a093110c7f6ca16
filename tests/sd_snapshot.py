"""Tiny Stable Diffusion snapshots with random weights, written exactly as the reference libraries save them.

The oracle models are diffusers' UNet2DConditionModel and AutoencoderKL and transformers' CLIPTextModel, built from
small configs (no hub access): tests load the folder (or a single file in the original layout) with sdlesson and
compare outputs. Used by test_stable_diffusion.py and the pipeline's parity test.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from sdlesson.clip_tokenizer import CLIPTokenizer

UNET = dict(sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64, 64), layers_per_block=2,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32, attention_head_dim=2, norm_num_groups=8)  # 2 heads (diffusers' name for it)
VAE = dict(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
           up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4, norm_num_groups=8,
           sample_size=32)
TEXT = dict(vocab_size=49408, hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=77, hidden_act="quick_gelu")


def reference_models(seed: int = 0):
    """(unet, vae, text_encoder) of diffusers / transformers, tiny, random, in eval mode."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet, vae = UNet2DConditionModel(**UNET), AutoencoderKL(**VAE)
    text = CLIPTextModel(CLIPTextConfig(**TEXT))
    for m in (unet, vae, text):  # random, not zero-initialised output layers, so every weight matters
        with torch.no_grad():
            for p in m.parameters():
                if p.abs().sum() == 0:
                    p.normal_(0, 0.02)
    return unet.eval(), vae.eval(), text.eval()


def write_snapshot(root: Path, models) -> Path:
    """unet/, vae/, text_encoder/, tokenizer/ as a Hugging Face snapshot of SD v1.5 lays them out."""
    unet, vae, text = models
    unet.save_pretrained(root / "unet")
    vae.save_pretrained(root / "vae")
    text.save_pretrained(root / "text_encoder")
    CLIPTokenizer.bundled().save(root / "tokenizer")
    return root


# --- the original single-file layout, written from diffusers' names (checked against diffusers' own converter) -----

def unet_to_ldm(state: dict, layers: int, attention: tuple[bool, ...]) -> dict:
    L = layers
    res = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
           ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection")]
    up_attention = tuple(reversed(attention))
    out = {}
    for key, value in state.items():
        new = (key.replace("time_embedding.linear_1.", "time_embed.0.")
               .replace("time_embedding.linear_2.", "time_embed.2.")
               .replace("conv_norm_out.", "out.0.").replace("conv_in.", "input_blocks.0.0."))
        new = re.sub(r"^conv_out\.", "out.2.", new)
        if m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
            n = 1 + int(m[1]) * (L + 1) + int(m[3])
            new = f"input_blocks.{n}.{0 if m[2] == 'resnets' else 1}.{m[4]}"
        elif m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
            new = f"input_blocks.{1 + int(m[1]) * (L + 1) + L}.0.op.{m[2]}"
        elif m := re.match(r"mid_block\.(resnets|attentions)\.(\d)\.(.*)", key):
            index = {("resnets", 0): 0, ("attentions", 0): 1, ("resnets", 1): 2}[(m[1], int(m[2]))]
            new = f"middle_block.{index}.{m[3]}"
        elif m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
            new = f"output_blocks.{int(m[1]) * (L + 1) + int(m[3])}.{0 if m[2] == 'resnets' else 1}.{m[4]}"
        elif m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
            i = int(m[1])
            new = f"output_blocks.{i * (L + 1) + L}.{2 if up_attention[i] else 1}.conv.{m[2]}"
        if re.match(r"(input|output)_blocks\.\d+\.0\.|middle_block\.[02]\.", new):
            for a, b in res:
                new = new.replace(f".{a}.", f".{b}.")
        out["model.diffusion_model." + new] = value
    return out


def vae_to_ldm(state: dict, levels: int) -> dict:
    out = {}
    for key, value in state.items():
        new = key
        if m := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
            new = f"encoder.down.{m[1]}.block.{m[2]}.{m[3]}"
        elif m := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.*)", key):
            new = f"encoder.down.{m[1]}.downsample.{m[2]}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
            new = f"decoder.up.{levels - 1 - int(m[1])}.block.{m[2]}.{m[3]}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.*)", key):
            new = f"decoder.up.{levels - 1 - int(m[1])}.upsample.{m[2]}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d)\.(.*)", key):
            new = f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\."
                           r"(group_norm|to_q|to_k|to_v|to_out\.0)\.(.*)", key):
            name = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}[m[2]]
            new = f"{m[1]}.mid.attn_1.{name}.{m[3]}"
            value = value[:, :, None, None] if value.dim() == 2 else value  # LDM stores them as 1×1 convs
        new = new.replace(".conv_shortcut.", ".nin_shortcut.").replace("conv_norm_out.", "norm_out.")
        out["first_stage_model." + new] = value
    return out


def write_single_file(path: Path, models) -> Path:
    from safetensors.torch import save_file

    unet, vae, text = models
    attention = tuple("CrossAttn" in b for b in UNET["down_block_types"])
    state = unet_to_ldm(unet.state_dict(), UNET["layers_per_block"], attention)
    state |= vae_to_ldm(vae.state_dict(), len(VAE["block_out_channels"]))
    state |= {"cond_stage_model.transformer." + k: v for k, v in text.state_dict().items()}
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def course_configs():
    """The course's configs for the tiny reference models (what a single file cannot say about itself)."""
    from sdlesson.stable_diffusion import (text_config_from_transformers, unet_config_from_diffusers,
                                           vae_config_from_diffusers)

    unet = unet_config_from_diffusers(UNET | {"out_channels": 4})
    vae = vae_config_from_diffusers(VAE | {"in_channels": 3})[0]
    return {"unet": unet, "vae": vae, "text": text_config_from_transformers(TEXT)}


def diffusers_pipeline(root: Path, seed: int = 3):
    """diffusers' SD pipeline (DDIM as SD's) on fresh copies of the snapshot's models, written with reference_models(
    seed): fresh, because load_lora_weights and load_textual_inversion change the models a pipeline holds."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer as HFTokenizer

    unet, vae, text = reference_models(seed=seed)
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                              steps_offset=1, timestep_spacing="leading", set_alpha_to_one=False)
    tokenizer = HFTokenizer.from_pretrained(str(root / "tokenizer"), model_max_length=77)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, unet=unet, scheduler=scheduler, tokenizer=tokenizer,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe
