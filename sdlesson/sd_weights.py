"""Stable Diffusion's weight files, read into the course's names: what `load_stable_diffusion` stands on.

Two layouts exist for SD v1.x's weights, and both are read here (nothing downloads):

    a diffusers snapshot    unet/ vae/ text_encoder/ tokenizer/, each with config.json and *.safetensors
    the original file       v1-5-pruned-emaonly.safetensors: model.diffusion_model.* (UNet),
                            first_stage_model.* (VAE), cond_stage_model.transformer.* (text encoder)

    original file ─ ldm_*_to_diffusers ─┐
                                        ├─ diffusers' names ─ diffusers_to_course ─ the course's names ─ check_state
    diffusers snapshot ─────────────────┘   (regex rules, q/k/v fused into one projection)

`read_weights(path)` does all of it and returns the three parts' configurations and state dicts;
`stable_diffusion.load_stable_diffusion` builds the networks and assigns them. The key rules are also what a LoRA
file's diffusers names are mapped with.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .clip_tokenizer import CLIPTokenizer
from .text import CLIPConfig
from .unet import UNetConfig
from .vae import VAEConfig

DIFFUSERS_LATENT_SCALE = 0.18215  # AutoencoderKL's default scaling_factor, for a vae/config.json without one


# --- key mapping: diffusers' names -> the course's -------------------------------------------------------------------

UNET_RULES = [  # (regex, replacement), applied in order to each diffusers key
    (r"^time_embedding\.linear_1\.", "time_mlp.0."), (r"^time_embedding\.linear_2\.", "time_mlp.2."),
    (r"^(down|up)_blocks\.(\d+)\.resnets\.(\d+)\.", r"\1.\2.res.\3."),
    (r"^(down|up)_blocks\.(\d+)\.attentions\.(\d+)\.", r"\1.\2.attn.\3."),
    (r"^(down|up)_blocks\.(\d+)\.(down|up)samplers\.0\.", r"\1.\2.resample."),
    (r"^mid_block\.resnets\.0\.", "mid_res1."), (r"^mid_block\.resnets\.1\.", "mid_res2."),
    (r"^mid_block\.attentions\.0\.", "mid_attn."), (r"^conv_norm_out\.", "norm_out."),
    (r"\.time_emb_proj\.", ".emb_proj."), (r"\.conv_shortcut\.", ".skip."), (r"\.transformer_blocks\.0\.", "."),
    (r"\.to_out\.0\.", ".to_out."), (r"\.ff\.net\.0\.proj\.", ".ff.proj."), (r"\.ff\.net\.2\.", ".ff.out."),
]
TEXT_RULES = [  # transformers' CLIPTextModel; files written by transformers 5 drop the "text_model." prefix
    (r"^text_model\.", ""), (r"^embeddings\.token_embedding\.", "token_embedding."),
    (r"^embeddings\.position_embedding\.weight$", "position_embedding"),
    (r"^encoder\.layers\.(\d+)\.layer_norm(\d)\.", r"blocks.\1.ln\2."),
    (r"^encoder\.layers\.(\d+)\.self_attn\.out_proj\.", r"blocks.\1.proj."),
    (r"^encoder\.layers\.(\d+)\.self_attn\.(q|k|v)_proj\.", r"blocks.\1.\2_proj."),  # fused below
    (r"^encoder\.layers\.(\d+)\.mlp\.fc1\.", r"blocks.\1.mlp.0."),
    (r"^encoder\.layers\.(\d+)\.mlp\.fc2\.", r"blocks.\1.mlp.2."),
    (r"^final_layer_norm\.", "ln_final."),
]
IGNORED = re.compile(r"(position_ids|num_batches_tracked)$")  # buffers some files carry; nothing to load


def vae_rules(config: VAEConfig) -> list[tuple[str, str]]:
    """The course's VAE keeps each side's layers in one nn.Sequential: a diffusers block's layers get flat indices."""
    L = config.layers_per_block
    enc = lambda m: str(int(m[1]) * (L + 1) + int(m[2]))  # noqa: E731 - level i, resnet j
    dec = lambda m: str(int(m[1]) * (L + 2) + int(m[2]))  # noqa: E731
    return [
        (r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", lambda m: f"encoder.down.{enc(m)}."),
        (r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", lambda m: f"encoder.down.{int(m[1]) * (L + 1) + L}."),
        (r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.", lambda m: f"decoder.up.{dec(m)}."),
        (r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: f"decoder.up.{int(m[1]) * (L + 2) + L + 1}."),
        (r"^(encoder|decoder)\.mid_block\.resnets\.0\.", r"\1.mid.res1."),
        (r"^(encoder|decoder)\.mid_block\.resnets\.1\.", r"\1.mid.res2."),
        (r"^(encoder|decoder)\.mid_block\.attentions\.0\.group_norm\.", r"\1.mid.attn.norm."),
        (r"^(encoder|decoder)\.mid_block\.attentions\.0\.to_out\.0\.", r"\1.mid.attn.out."),
        (r"^(encoder|decoder)\.mid_block\.attentions\.0\.to_(q|k|v)\.", r"\1.mid.attn.\2_proj."),  # fused below
        (r"^(encoder|decoder)\.conv_norm_out\.", r"\1.norm_out."), (r"^quant_conv\.", "encoder.quant_conv."),
        (r"^post_quant_conv\.", "decoder.post_quant_conv."), (r"\.conv_shortcut\.", ".skip."),
    ]


def rename(state: dict, rules) -> dict:
    out = {}
    for key, value in state.items():
        if IGNORED.search(key):
            continue
        for pattern, repl in rules:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


def fuse_qkv(state: dict, fused: str) -> dict:
    """q_proj, k_proj, v_proj (weights (C, C) and biases (C,)) -> one `fused` projection (3C, C), as the course's
    attention computes q, k and v with one matrix product."""
    out = dict(state)
    for key in [k for k in state if ".q_proj." in k]:
        parts = [key.replace(".q_proj.", f".{n}_proj.") for n in "qkv"]
        if all(p in state for p in parts):
            out[key.replace(".q_proj.", f".{fused}.")] = torch.cat([out.pop(p) for p in parts])
    return out


def diffusers_to_course(part: str, state: dict, config) -> dict:
    """A diffusers / transformers state dict -> the course's names for the UNet, VAE or text encoder."""
    if part == "unet":
        return rename(state, UNET_RULES)
    if part == "vae":
        state = {k: v.flatten(1) if re.search(r"attentions\.0\.(to_|query|key|value)", k) and v.dim() == 4 else v
                 for k, v in state.items()}  # some old files store the VAE's attention as 1×1 convs
        return fuse_qkv(rename(state, vae_rules(config)), "qkv")
    return fuse_qkv(rename(state, TEXT_RULES), "qkv")


# --- the original single file (CompVis / RunwayML layout) -> diffusers' names ------------------------------------

def ldm_unet_to_diffusers(state: dict, config: UNetConfig) -> dict:
    """model.diffusion_model.* (input_blocks / middle_block / output_blocks) -> diffusers' UNet names."""
    L = config.layers_per_block
    res = [("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("emb_layers.1", "time_emb_proj"),
           ("out_layers.0", "norm2"), ("out_layers.3", "conv2"), ("skip_connection", "conv_shortcut")]
    out = {}
    for key, value in state.items():
        new = key
        m = re.match(r"input_blocks\.(\d+)\.(\d)\.(.*)", key)
        if key.startswith("time_embed.0."):
            new = key.replace("time_embed.0.", "time_embedding.linear_1.")
        elif key.startswith("time_embed.2."):
            new = key.replace("time_embed.2.", "time_embedding.linear_2.")
        elif key.startswith("input_blocks.0.0."):
            new = key.replace("input_blocks.0.0.", "conv_in.")
        elif key.startswith("out.0."):
            new = key.replace("out.0.", "conv_norm_out.")
        elif key.startswith("out.2."):
            new = key.replace("out.2.", "conv_out.")
        elif m:
            n, sub, rest = int(m[1]), int(m[2]), m[3]
            level, j = divmod(n - 1, L + 1)
            if rest.startswith("op."):
                new = f"down_blocks.{level}.downsamplers.0.conv.{rest[3:]}"
            elif sub == 0:
                new = f"down_blocks.{level}.resnets.{j}.{rest}"
            else:
                new = f"down_blocks.{level}.attentions.{j}.{rest}"
        elif m := re.match(r"middle_block\.(\d)\.(.*)", key):
            new = {0: "mid_block.resnets.0.", 1: "mid_block.attentions.0.", 2: "mid_block.resnets.1."}[int(m[1])] + m[2]
        elif m := re.match(r"output_blocks\.(\d+)\.(\d)\.(.*)", key):
            level, j = divmod(int(m[1]), L + 1)
            sub, rest = int(m[2]), m[3]
            if sub == 0:
                new = f"up_blocks.{level}.resnets.{j}.{rest}"
            elif rest.startswith("conv."):
                new = f"up_blocks.{level}.upsamplers.0.{rest}"
            else:
                new = f"up_blocks.{level}.attentions.{j}.{rest}"
        if ".resnets." in new:
            for a, b in res:
                new = new.replace(f".{a}.", f".{b}.")
        out[new] = value
    return out


def ldm_vae_to_diffusers(state: dict, config: VAEConfig) -> dict:
    """first_stage_model.* -> diffusers' AutoencoderKL names (LDM's decoder.up is numbered by level, reversed)."""
    levels = len(config.block_channels)
    out = {}
    for key, value in state.items():
        new = key
        if m := re.match(r"encoder\.down\.(\d+)\.block\.(\d+)\.(.*)", key):
            new = f"encoder.down_blocks.{m[1]}.resnets.{m[2]}.{m[3]}"
        elif m := re.match(r"encoder\.down\.(\d+)\.downsample\.(.*)", key):
            new = f"encoder.down_blocks.{m[1]}.downsamplers.0.{m[2]}"
        elif m := re.match(r"decoder\.up\.(\d+)\.block\.(\d+)\.(.*)", key):
            new = f"decoder.up_blocks.{levels - 1 - int(m[1])}.resnets.{m[2]}.{m[3]}"
        elif m := re.match(r"decoder\.up\.(\d+)\.upsample\.(.*)", key):
            new = f"decoder.up_blocks.{levels - 1 - int(m[1])}.upsamplers.0.{m[2]}"
        elif m := re.match(r"(encoder|decoder)\.mid\.block_(\d)\.(.*)", key):
            new = f"{m[1]}.mid_block.resnets.{int(m[2]) - 1}.{m[3]}"
        elif m := re.match(r"(encoder|decoder)\.mid\.attn_1\.(norm|q|k|v|proj_out)\.(.*)", key):
            name = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}[m[2]]
            new = f"{m[1]}.mid_block.attentions.0.{name}.{m[3]}"
            value = value.flatten(1) if value.dim() == 4 else value  # 1×1 conv -> linear
        new = new.replace(".nin_shortcut.", ".conv_shortcut.").replace("encoder.norm_out.", "encoder.conv_norm_out.")
        new = new.replace("decoder.norm_out.", "decoder.conv_norm_out.")
        out[new] = value
    return out


def split_single_file(state: dict) -> dict[str, dict]:
    """The original single file's three prefixes -> diffusers-named state dicts for the unet, vae and text parts."""
    looks_like = identify(state)
    if looks_like != "sd1":
        raise ValueError(f"this file looks like {looks_like}, not Stable Diffusion v1.x: "
                         "only SD v1's layout is supported")
    take = lambda prefix: {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}  # noqa: E731
    return {"unet": take("model.diffusion_model."), "vae": take("first_stage_model."),
            "text": take("cond_stage_model.transformer.")}


def identify(state: dict) -> str:
    """Which family a single file's keys look like: 'sd1', or a name for what it is instead."""
    keys = state.keys()
    if any(k.startswith("conditioner.embedders.") for k in keys):
        return "SDXL (conditioner.embedders.* keys)"
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return "Stable Diffusion 2.x (an OpenCLIP text encoder, cond_stage_model.model.* keys)"
    if not any(k.startswith("model.diffusion_model.") for k in keys):
        return "something else (no model.diffusion_model.* keys: not a Stable Diffusion checkpoint)"
    ctx = state.get("model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight")
    if ctx is not None and ctx.shape[1] == 1024:
        return "Stable Diffusion 2.x (cross-attention reads 1024-wide text, SD v1 reads 768)"
    if not any(k.startswith("cond_stage_model.transformer.") for k in keys):
        return "a UNet-only or unknown file (no cond_stage_model.transformer.* text encoder keys)"
    return "sd1"


# --- diffusers' config.json -> the course's configs ----------------------------------------------------------------

def unet_config_from_diffusers(cfg: dict) -> UNetConfig:
    def refuse(what):
        raise ValueError(f"unet/config.json: {what}; sdlesson builds SD v1's UNet layout only")

    # diffusers' quirk: SD v1's config calls its 8 heads "attention_head_dim"
    heads = cfg.get("num_attention_heads") or cfg.get("attention_head_dim", 8)
    if isinstance(heads, (list, tuple)):
        refuse(f"a head count per level {heads} (Stable Diffusion 2.x)")
    if cfg.get("use_linear_projection"):
        refuse("use_linear_projection = true (Stable Diffusion 2.x)")
    if cfg.get("addition_embed_type") or cfg.get("class_embed_type"):
        refuse("extra embeddings (SDXL or another model)")
    tl = cfg.get("transformer_layers_per_block", 1)
    if tl not in (1, [1] * len(cfg["block_out_channels"])):
        refuse(f"transformer_layers_per_block = {tl} (SDXL)")
    down = cfg["down_block_types"]
    attention = tuple("CrossAttn" in b for b in down)
    if tuple("CrossAttn" in b for b in reversed(cfg["up_block_types"])) != attention:
        refuse("up blocks whose attention does not mirror the down blocks'")
    return UNetConfig(in_channels=cfg["in_channels"], out_channels=cfg["out_channels"], sample_size=cfg["sample_size"],
                      block_channels=tuple(cfg["block_out_channels"]), layers_per_block=cfg["layers_per_block"],
                      attention_levels=attention, attention_heads=heads, attention_block="transformer",
                      norm_groups=cfg.get("norm_num_groups", 32), context_dim=cfg["cross_attention_dim"])


def vae_config_from_diffusers(cfg: dict) -> tuple[VAEConfig, float]:
    if cfg.get("use_quant_conv") is False or cfg.get("use_post_quant_conv") is False:
        raise ValueError("vae/config.json: a VAE without quant_conv is not SD v1's layout")
    config = VAEConfig(in_channels=cfg.get("in_channels", 3), latent_channels=cfg["latent_channels"],
                       block_channels=tuple(cfg["block_out_channels"]), layers_per_block=cfg["layers_per_block"],
                       norm_groups=cfg.get("norm_num_groups", 32), sample_size=cfg.get("sample_size", 512),
                       patch_size=1,
                       mid_attention=cfg.get("mid_block_add_attention", True), norm_eps=1e-6,
                       downsample_padding="asymmetric", quant_conv=True)
    return config, float(cfg.get("scaling_factor", DIFFUSERS_LATENT_SCALE))


def text_config_from_transformers(cfg: dict) -> CLIPConfig:
    if cfg.get("hidden_act", "quick_gelu") not in ("quick_gelu", "gelu"):
        raise ValueError(f"text_encoder/config.json: unsupported activation {cfg['hidden_act']!r}")
    return CLIPConfig(vocab=(), vocab_size=cfg["vocab_size"], max_length=cfg.get("max_position_embeddings", 77),
                      width=cfg["hidden_size"], layers=cfg["num_hidden_layers"], heads=cfg["num_attention_heads"],
                      activation=cfg.get("hidden_act", "quick_gelu"), mlp_width=cfg.get("intermediate_size"))


# --- loading ---------------------------------------------------------------------------------------------------

def read_state(path: Path) -> dict:
    """safetensors by default; a pickle .ckpt only with torch.load(weights_only=True), which runs no code."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if path.suffix in (".ckpt", ".pt", ".pth", ".bin"):
        state = torch.load(path, map_location="cpu", weights_only=True)
        return state.get("state_dict", state)
    raise ValueError(f"{path}: expected a .safetensors file (or a .ckpt / .bin read with weights_only=True)")


def check_state(model: nn.Module, state: dict, name: str) -> None:
    """Every key present, none extra, every shape right — or an error naming the first few that are not."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise ValueError(f"{name}: {len(missing)} missing key(s) {missing[:4]} and {len(unexpected)} unexpected "
                         f"key(s) {unexpected[:4]}")
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise ValueError(f"{name}: tensor {k} has shape {tuple(state[k].shape)}, "
                             f"the model expects {tuple(v.shape)}")


def folder_part(root: Path, part: str, *, half: bool = False) -> tuple[dict, dict]:
    """config.json and the weights of one part. A snapshot may hold several copies of them: SD v1.5's unet/ also
    has diffusion_pytorch_model.non_ema.safetensors (training weights, never these) and .fp16. variants (read when
    `half`, else the full-precision files); several files of one kind are shards of one state dict."""
    folder = root / part
    if not folder.is_dir():
        raise FileNotFoundError(f"{root} has no {part}/ folder: a diffusers snapshot of SD v1.5 holds unet/, vae/, "
                                "text_encoder/ and tokenizer/")
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not files or not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} must hold config.json and the weights (*.safetensors)")
    files = [f for f in files if ".non_ema." not in f.name] or files
    fp16 = [f for f in files if ".fp16." in f.name]
    full = [f for f in files if ".fp16." not in f.name]
    state = {}
    for f in (fp16 if half and fp16 else full) or files:
        state.update(read_state(f))
    return json.loads((folder / "config.json").read_text()), state


@dataclass
class Weights:
    """What a weight file holds, in the course's names: one state dict and one configuration per part."""

    configs: dict  # {"unet": UNetConfig, "vae": VAEConfig, "text": CLIPConfig}
    states: dict  # {"unet": ..., "vae": ..., "text": ...}: the course's key names, not yet checked
    tokenizer: CLIPTokenizer | None  # a snapshot's own tokenizer/; None for a single file (it carries none)
    latent_scale: float | None  # a snapshot's vae scaling_factor; None for a single file


def read_weights(path, *, configs: dict, half: bool = False) -> Weights:
    """A diffusers folder or the original single file -> configs and course-named state dicts.

    A folder's configurations come from its config.json files; a single file holds none, so it is read with
    `configs` ({"unet", "vae", "text"}). `half`: read a snapshot's fp16 files where it has them (half the bytes).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no Stable Diffusion weights at {path}: give a diffusers folder (unet/, vae/, "
                                "text_encoder/, tokenizer/) or a single .safetensors file")
    tokenizer = latent_scale = None
    if path.is_dir():
        unet_cfg, unet_state = folder_part(path, "unet", half=half)
        vae_cfg, vae_state = folder_part(path, "vae", half=half)
        text_cfg, text_state = folder_part(path, "text_encoder", half=half)
        configs = {"unet": unet_config_from_diffusers(unet_cfg), "text": text_config_from_transformers(text_cfg)}
        configs["vae"], latent_scale = vae_config_from_diffusers(vae_cfg)
        states = {"unet": unet_state, "vae": vae_state, "text": text_state}
        tok = path / "tokenizer"
        if not (tok / "vocab.json").is_file() or not (tok / "merges.txt").is_file():
            raise FileNotFoundError(f"{tok} must hold vocab.json and merges.txt")
        tokenizer = CLIPTokenizer.from_files(tok / "vocab.json", tok / "merges.txt",
                                             max_length=configs["text"].max_length)
    else:
        states = split_single_file(read_state(path))
        states["unet"] = ldm_unet_to_diffusers(states["unet"], configs["unet"])
        states["vae"] = ldm_vae_to_diffusers(states["vae"], configs["vae"])
    course = {part: diffusers_to_course(part, states[part], configs[part]) for part in ("unet", "vae", "text")}
    return Weights(configs, course, tokenizer, latent_scale)
