"""Stable Diffusion v1.5's own networks, as configurations of the course's modules, and a loader for its weights.

The UNet, VAE and text encoder you trained in the lessons are the same classes as SD's; only the numbers differ:

    field                    scene text UNet (lesson 06)     SD v1.5's UNet
    in_channels              4 (VAE latents)                 4 (VAE latents)
    sample_size              8 (8×8 latents)                 64 (64×64 latents, 512×512 pixels)
    block_channels           (64, 128, 128)                  (320, 640, 1280, 1280)
    layers_per_block         2                               2
    attention_levels         (False, True, True)             (True, True, True, False)
    attention_block          "simple"                        "transformer" (+ LayerNorms and a GEGLU MLP)
    attention heads          channels / 32                   8 at every level (head dims 40, 80, 160)
    context_dim              64 (our CLIP's width)           768 (CLIP ViT-L/14's width)
    parameters               ~7 M                            859,520,964

    VAE: (64, 128), 1 ResBlock a level, patch 4          vs (128, 256, 512, 512), 2 a level, patch 1: 83,653,863
    text encoder: 30 words, 16 positions, 64 wide, 3 layers vs 49,408 BPE tokens, 77 positions, 768 wide, 12 layers,
                  GELU                                      quick-GELU: 123,060,480

`print_configs()` prints the table from the live configs. `build_stable_diffusion()` builds the four parts on the
`meta` device by default (shapes only: no memory, no time), so a CPU can count SD's parameters and FLOPs.
`load_stable_diffusion(path)` reads weights a user downloaded: a diffusers folder (a Hugging Face snapshot of
stable-diffusion-v1-5/stable-diffusion-v1-5) or the original single file (v1-5-pruned-emaonly.safetensors). Nothing
here downloads anything; tests/test_stable_diffusion.py proves the outputs equal diffusers' and transformers'.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .text import TextEncoder, TextEncoderConfig
from .unet import UNet, UNetConfig
from .vae import VAE, VAEConfig

try:  # SD's byte-level BPE tokenizer (sdlesson/clip_tokenizer.py)
    from .clip_tokenizer import CLIPTokenizer
except ImportError:  # pragma: no cover - until the tokenizer lands
    CLIPTokenizer = None

SD_UNET = UNetConfig(in_channels=4, sample_size=64, block_channels=(320, 640, 1280, 1280), layers_per_block=2,
                     attention_levels=(True, True, True, False), attention_block="transformer", attention_heads=8,
                     attention_bias=False, norm_groups=32, context_dim=768)
SD_VAE = VAEConfig(in_channels=3, latent_channels=4, block_channels=(128, 256, 512, 512), layers_per_block=2,
                   norm_groups=32, sample_size=512, patch_size=1, mid_attention=True, norm_eps=1e-6,
                   asymmetric_downsample=True, quant_conv=True)
SD_TEXT_ENCODER = TextEncoderConfig(vocab_size=49408, max_length=77, width=768, layers=12, heads=12,
                                    activation="quick_gelu")
SD_LATENT_SCALE = 0.18215  # 1 / std of SD's VAE latents: z = 0.18215 · encode(x) has unit scale
SD_SCHEDULE = "scaled_linear"  # β from 0.00085 to 0.012 over 1,000 steps, as the course's scenes


@dataclass
class StableDiffusion:
    """The four parts, as plain attributes: prompt -> tokenizer -> text_encoder -> (unet, many steps) -> vae.decode."""

    tokenizer: object  # CLIPTokenizer: prompts -> ids (B, 77) long; None when no tokenizer was found
    text_encoder: TextEncoder  # ids (B, 77) -> last hidden states (B, 77, 768)
    unet: UNet  # unet(x (B, 4, h, w), t (B,), context=(B, 77, 768)) -> ε̂ (B, 4, h, w)
    vae: VAE  # vae.encode(x in [-1, 1]) -> DiagonalGaussian; vae.decode(z) -> image in about [-1, 1]
    latent_scale: float = SD_LATENT_SCALE


def print_configs() -> None:
    """The course's scene models beside SD v1.5's: the same fields, different numbers."""
    from . import pretrained

    pairs = [("UNet", pretrained.SCENE_TEXT_UNET, SD_UNET), ("VAE", pretrained.SCENE_VAE, SD_VAE),
             ("text encoder", pretrained.SCENE_CLIP.text_config(), SD_TEXT_ENCODER)]
    for name, ours, sd in pairs:
        print(f"{name:<24}{'the course':<32}Stable Diffusion v1.5")
        for f in dataclasses.fields(ours):
            print(f"  {f.name:<22}{str(getattr(ours, f.name)):<32}{getattr(sd, f.name)}")


def build_stable_diffusion(*, device="meta", dtype=torch.float32, unet: UNetConfig = SD_UNET, vae: VAEConfig = SD_VAE,
                           text_encoder: TextEncoderConfig = SD_TEXT_ENCODER, tokenizer=None) -> StableDiffusion:
    """The three networks at the given configs (SD v1.5's by default), on `device` (meta: shapes only, no memory)."""
    with torch.device(device):
        parts = TextEncoder(text_encoder), UNet(unet), VAE(vae)
    text_model, unet_model, vae_model = (m.to(dtype).eval() for m in parts)
    return StableDiffusion(tokenizer, text_model, unet_model, vae_model)


# ---------------------------------------------------------------------------------------------------------------
# Key names. Each rule is (pattern, replacement), applied in order to every key; one table per source layout.
# Keys that end in "#q", "#k", "#v" are the three parts of a fused qkv weight, concatenated in that order.

_DIFFUSERS_ATTENTION = [  # inside an attention block, diffusers -> ours
    (r"\.transformer_blocks\.0\.attn1\.", ".self_attn."), (r"\.transformer_blocks\.0\.attn2\.", ".cross_attn."),
    (r"\.transformer_blocks\.0\.ff\.net\.0\.proj\.", ".ff_in."), (r"\.transformer_blocks\.0\.ff\.net\.2\.", ".ff_out."),
    (r"\.transformer_blocks\.0\.(norm[123])\.", r".\1."), (r"\.to_out\.0\.", ".to_out."),
]
_DIFFUSERS_RESNET = [(r"\.time_emb_proj\.", ".emb_proj."), (r"\.conv_shortcut\.", ".skip.")]

DIFFUSERS_UNET_RULES = [
    (r"^time_embedding\.linear_1\.", "time_mlp.0."), (r"^time_embedding\.linear_2\.", "time_mlp.2."),
    (r"^conv_norm_out\.", "norm_out."),
    (r"^(down|up)_blocks\.(\d+)\.resnets\.(\d+)\.", r"\1.\2.res.\3."),
    (r"^(down|up)_blocks\.(\d+)\.attentions\.(\d+)\.", r"\1.\2.attn.\3."),
    (r"^(down|up)_blocks\.(\d+)\.(down|up)samplers\.0\.", r"\1.\2.resample."),
    (r"^mid_block\.resnets\.0\.", "mid_res1."), (r"^mid_block\.resnets\.1\.", "mid_res2."),
    (r"^mid_block\.attentions\.0\.", "mid_attn."),
    *_DIFFUSERS_ATTENTION, *_DIFFUSERS_RESNET,
]


def diffusers_vae_rules(cfg: VAEConfig) -> list:
    """diffusers' AutoencoderKL -> ours. Our encoder.down / decoder.up are flat Sequentials: per level, its ResBlocks
    then its resampler, so diffusers' (level i, resnet j) is index i·(n + 1) + j in the encoder and i·(n + 2) + j in
    the decoder (n = layers_per_block)."""
    n = cfg.layers_per_block
    enc = lambda m: f"encoder.down.{int(m[1]) * (n + 1) + int(m[2])}."  # noqa: E731
    enc_down = lambda m: f"encoder.down.{int(m[1]) * (n + 1) + n}."  # noqa: E731
    dec = lambda m: f"decoder.up.{int(m[1]) * (n + 2) + int(m[2])}."  # noqa: E731
    dec_up = lambda m: f"decoder.up.{int(m[1]) * (n + 2) + n + 1}."  # noqa: E731
    return [
        (r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", enc),
        (r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", enc_down),
        (r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.", dec),
        (r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.", dec_up),
        (r"^(en|de)coder\.conv_norm_out\.", r"\1coder.norm_out."),
        (r"^(en|de)coder\.mid_block\.resnets\.0\.", r"\1coder.mid.res1."),
        (r"^(en|de)coder\.mid_block\.resnets\.1\.", r"\1coder.mid.res2."),
        (r"^(en|de)coder\.mid_block\.attentions\.0\.group_norm\.", r"\1coder.mid.attn.norm."),
        (r"^(en|de)coder\.mid_block\.attentions\.0\.to_out\.0\.", r"\1coder.mid.attn.out."),
        (r"^(en|de)coder\.mid_block\.attentions\.0\.to_([qkv])\.(weight|bias)$", r"\1coder.mid.attn.qkv.\3#\2"),
        *_DIFFUSERS_RESNET,
    ]


TRANSFORMERS_CLIP_RULES = [
    (r"^text_model\.", ""),
    (r"^embeddings\.token_embedding\.", "token_embedding."),
    (r"^embeddings\.position_embedding\.weight$", "position_embedding"),
    (r"^encoder\.layers\.(\d+)\.layer_norm([12])\.", r"blocks.\1.ln\2."),
    (r"^encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$", r"blocks.\1.qkv.\3#\2"),
    (r"^encoder\.layers\.(\d+)\.self_attn\.out_proj\.", r"blocks.\1.proj."),
    (r"^encoder\.layers\.(\d+)\.mlp\.fc1\.", r"blocks.\1.mlp.0."),
    (r"^encoder\.layers\.(\d+)\.mlp\.fc2\.", r"blocks.\1.mlp.2."),
    (r"^final_layer_norm\.", "ln_final."),
]
TRANSFORMERS_CLIP_IGNORED = re.compile(r"(^|\.)embeddings\.position_ids$")  # a buffer older checkpoints saved


def rename(tensors: dict[str, torch.Tensor], rules: list, *, ignore: re.Pattern | None = None) -> dict:
    """Apply the rules to every key, then concatenate the q, k, v parts of fused weights (along dim 0)."""
    out, parts = {}, {}
    for key, value in tensors.items():
        if ignore is not None and ignore.search(key):
            continue
        for pattern, replacement in rules:
            key = re.sub(pattern, replacement, key)
        if "#" in key:
            name, part = key.split("#")
            parts.setdefault(name, {})[part] = value
        else:
            out[key] = value
    for name, qkv in parts.items():
        if sorted(qkv) != ["k", "q", "v"]:
            raise ValueError(f"{name}: expected q, k and v weights to fuse, found only {', '.join(sorted(qkv))}")
        out[name] = torch.cat([qkv["q"], qkv["k"], qkv["v"]], dim=0)
    return out


def assign_weights(model: nn.Module, tensors: dict[str, torch.Tensor], *, part: str, dtype, device) -> nn.Module:
    """Check names and shapes against the (meta) model, then make the tensors its parameters: no random-init copy."""
    expected = {k: v.shape for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    if missing or unexpected:
        msg = [f"{part}: the weights do not fit this configuration"]
        if missing:
            msg.append(f"{len(missing)} missing key(s), e.g. {', '.join(missing[:5])}")
        if unexpected:
            msg.append(f"{len(unexpected)} unexpected key(s), e.g. {', '.join(unexpected[:5])}")
        raise ValueError("; ".join(msg))
    for k, shape in expected.items():
        if tensors[k].shape != shape:
            raise ValueError(f"{part}: tensor {k} has shape {tuple(tensors[k].shape)}, the model expects {tuple(shape)}")
    tensors = {k: v.to(device=device, dtype=dtype) for k, v in tensors.items()}
    model.load_state_dict(tensors, strict=True, assign=True)
    return model.eval()


# ---------------------------------------------------------------------------------------------------------------
# diffusers' config.json -> the course's configs


def _require(cfg: dict, key: str, allowed, part: str, default=None):
    value = cfg.get(key, default)
    if value not in allowed:
        raise ValueError(f"{part}/config.json: {key}={value!r} is not supported (expected {allowed}); "
                         "only Stable Diffusion v1-style models load")
    return value


def unet_config_from_diffusers(cfg: dict) -> UNetConfig:
    part = "unet"
    if cfg.get("addition_embed_type") is not None:
        raise ValueError(f"unet/config.json: addition_embed_type={cfg['addition_embed_type']!r}: this looks like "
                         "SDXL's UNet; only Stable Diffusion v1 models load")
    if cfg.get("use_linear_projection") or cfg.get("cross_attention_dim") == 1024:
        raise ValueError("unet/config.json: linear projections / 1024-wide context: this looks like Stable "
                         "Diffusion 2.x; only Stable Diffusion v1 models load")
    for key, allowed, default in [("act_fn", ["silu"], "silu"), ("norm_eps", [1e-5], 1e-5),
                                  ("flip_sin_to_cos", [True], True), ("freq_shift", [0], 0),
                                  ("time_embedding_type", ["positional"], "positional"),
                                  ("class_embed_type", [None], None), ("upcast_attention", [False, None], False),
                                  ("transformer_layers_per_block", [1], 1), ("only_cross_attention", [False], False),
                                  ("mid_block_type", ["UNetMidBlock2DCrossAttn"], "UNetMidBlock2DCrossAttn"),
                                  ("resnet_time_scale_shift", ["default"], "default"),
                                  ("center_input_sample", [False], False), ("dual_cross_attention", [False], False)]:
        _require(cfg, key, allowed, part, default)
    down = cfg["down_block_types"]
    levels = tuple(t == "CrossAttnDownBlock2D" for t in down)
    if tuple(t == "CrossAttnUpBlock2D" for t in reversed(cfg["up_block_types"])) != levels:
        raise ValueError(f"unet/config.json: up_block_types {cfg['up_block_types']} do not mirror down_block_types {down}")
    heads = cfg.get("num_attention_heads") or cfg.get("attention_head_dim", 8)  # SD v1's "attention_head_dim" = heads
    if isinstance(heads, (list, tuple)):
        if len(set(heads)) != 1:
            raise ValueError(f"unet/config.json: a different head count per level {heads} is not supported")
        heads = heads[0]
    sample = cfg.get("sample_size") or 64
    return UNetConfig(in_channels=cfg["in_channels"], out_channels=cfg["out_channels"], sample_size=sample,
                      block_channels=tuple(cfg["block_out_channels"]), layers_per_block=cfg["layers_per_block"],
                      attention_levels=levels, attention_block="transformer", attention_heads=heads,
                      attention_bias=False, norm_groups=cfg.get("norm_num_groups", 32),
                      context_dim=cfg["cross_attention_dim"])


def vae_config_from_diffusers(cfg: dict) -> tuple[VAEConfig, float]:
    part = "vae"
    if cfg.get("out_channels", 3) != cfg.get("in_channels", 3):
        raise ValueError(f"vae/config.json: in_channels {cfg['in_channels']} != out_channels {cfg['out_channels']}")
    _require(cfg, "act_fn", ["silu"], part, "silu")
    _require(cfg, "use_quant_conv", [True], part, True)
    _require(cfg, "use_post_quant_conv", [True], part, True)
    _require(cfg, "force_upcast", [True, False, None], part, True)
    config = VAEConfig(in_channels=cfg.get("in_channels", 3), latent_channels=cfg["latent_channels"],
                       block_channels=tuple(cfg["block_out_channels"]), layers_per_block=cfg["layers_per_block"],
                       norm_groups=cfg.get("norm_num_groups", 32), sample_size=cfg.get("sample_size", 512),
                       patch_size=1, mid_attention=cfg.get("mid_block_add_attention", True), norm_eps=1e-6,
                       asymmetric_downsample=True, quant_conv=True)
    return config, float(cfg.get("scaling_factor", SD_LATENT_SCALE))


def text_config_from_transformers(cfg: dict) -> TextEncoderConfig:
    part = "text_encoder"
    width = cfg["hidden_size"]
    if cfg.get("intermediate_size", 4 * width) != 4 * width:
        raise ValueError(f"text_encoder/config.json: intermediate_size {cfg['intermediate_size']} must be 4 × "
                         f"hidden_size ({4 * width})")
    _require(cfg, "layer_norm_eps", [1e-5], part, 1e-5)
    act = _require(cfg, "hidden_act", ["quick_gelu", "gelu"], part, "quick_gelu")
    return TextEncoderConfig(vocab_size=cfg["vocab_size"], max_length=cfg["max_position_embeddings"], width=width,
                             layers=cfg["num_hidden_layers"], heads=cfg["num_attention_heads"], activation=act)


# ---------------------------------------------------------------------------------------------------------------
# Loading


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if path.suffix in (".ckpt", ".bin", ".pt", ".pth"):  # pickles: tensors only, never arbitrary objects
        state = torch.load(path, map_location="cpu", weights_only=True)
        return state.get("state_dict", state)
    raise ValueError(f"{path}: expected a .safetensors file (or a .ckpt read with weights_only=True)")


def _part_weights(folder: Path, part: str) -> dict[str, torch.Tensor]:
    sub = folder / part
    if not sub.is_dir():
        raise FileNotFoundError(f"{folder} is missing the {part}/ folder a diffusers Stable Diffusion snapshot has "
                                "(unet/, vae/, text_encoder/, tokenizer/)")
    for name in ("diffusion_pytorch_model.safetensors", "model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
                 "model.fp16.safetensors"):
        if (sub / name).exists():
            return _read_weights(sub / name)
    raise FileNotFoundError(f"{sub} has no weights: expected diffusion_pytorch_model.safetensors or "
                            "model.safetensors (fp16 variants too)")


def _part_config(folder: Path, part: str) -> dict:
    path = folder / part / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: each part of a diffusers snapshot comes with its config.json")
    return json.loads(path.read_text())


def _load_tokenizer(folder: Path | None):
    if CLIPTokenizer is None:
        return None
    if folder is not None and (folder / "vocab.json").exists() and (folder / "merges.txt").exists():
        return CLIPTokenizer.from_files(folder / "vocab.json", folder / "merges.txt")
    return CLIPTokenizer.bundled()


def load_stable_diffusion(path, *, device="cpu", dtype=None, configs: dict | None = None) -> StableDiffusion:
    """Stable Diffusion v1 weights a user downloaded -> StableDiffusion, in eval mode, on `device`, as `dtype`.

    path: a diffusers folder (unet/, vae/, text_encoder/, tokenizer/, each with config.json and safetensors, as a
    Hugging Face snapshot of stable-diffusion-v1-5/stable-diffusion-v1-5), or the original single file
    (v1-5-pruned-emaonly.safetensors; a pickle .ckpt is read with torch.load(weights_only=True)).
    dtype: None keeps float32; torch.float16 or bfloat16 halves the memory (on a GPU).
    configs: for a single file, {"unet": UNetConfig, "vae": VAEConfig, "text_encoder": TextEncoderConfig} to
    replace SD v1.5's (tests use small ones). Everything is checked before anything is returned: all or nothing.
    """
    path = Path(path)
    dtype = torch.float32 if dtype is None else dtype
    if not path.exists():
        raise FileNotFoundError(f"path {path} does not exist: point it at a diffusers Stable Diffusion folder or "
                                "a v1-5-pruned-emaonly.safetensors file")
    if path.is_dir():
        if configs is not None:
            raise ValueError("configs= is for single files; a diffusers folder brings its own config.json files")
        unet_cfg = unet_config_from_diffusers(_part_config(path, "unet"))
        vae_cfg, scale = vae_config_from_diffusers(_part_config(path, "vae"))
        text_cfg = text_config_from_transformers(_part_config(path, "text_encoder"))
        weights = {"unet": rename(_part_weights(path, "unet"), DIFFUSERS_UNET_RULES),
                   "vae": rename(_part_weights(path, "vae"), diffusers_vae_rules(vae_cfg)),
                   "text_encoder": rename(_part_weights(path, "text_encoder"), TRANSFORMERS_CLIP_RULES,
                                          ignore=TRANSFORMERS_CLIP_IGNORED)}
        tokenizer_dir = path / "tokenizer"
        if not tokenizer_dir.is_dir():
            raise FileNotFoundError(f"{path} is missing the tokenizer/ folder (vocab.json, merges.txt)")
    else:
        configs = dict(configs or {})
        unet_cfg = configs.pop("unet", SD_UNET)
        vae_cfg = configs.pop("vae", SD_VAE)
        text_cfg = configs.pop("text_encoder", SD_TEXT_ENCODER)
        if configs:
            raise ValueError(f"configs: unknown part(s) {sorted(configs)}; expected unet, vae, text_encoder")
        weights = split_single_file(_read_weights(path), vae_cfg, unet_cfg, source=path)
        scale, tokenizer_dir = SD_LATENT_SCALE, None

    sd = build_stable_diffusion(device="meta", unet=unet_cfg, vae=vae_cfg, text_encoder=text_cfg)
    for part in ("unet", "vae", "text_encoder"):
        assign_weights(getattr(sd, part), weights[part], part=part, dtype=dtype, device=device)
    sd.tokenizer = _load_tokenizer(tokenizer_dir)
    sd.latent_scale = scale
    return sd


# ---------------------------------------------------------------------------------------------------------------
# The original single file (CompVis' LDM layout): model.diffusion_model.*, first_stage_model.*, cond_stage_model.*

def _identify(keys) -> str | None:
    """Which model a single file's keys look like, when it is not SD v1."""
    if any(k.startswith("conditioner.embedders.") for k in keys):
        return "SDXL (keys conditioner.embedders.*)"
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return "Stable Diffusion 2.x (OpenCLIP text encoder, keys cond_stage_model.model.*)"
    if not any(k.startswith("model.diffusion_model.") for k in keys):
        return "not a Stable Diffusion checkpoint (no model.diffusion_model.* keys)"
    return None


def split_single_file(tensors: dict, vae_cfg: VAEConfig, unet_cfg: UNetConfig, *, source="") -> dict:
    """One LDM-layout state dict -> {"unet", "vae", "text_encoder"} in the course's key names."""
    other = _identify(tensors.keys())
    if other is not None:
        raise ValueError(f"{source}: this looks like {other}; only Stable Diffusion v1 files load")
    ctx = tensors.get("model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight")
    if ctx is not None and ctx.shape[1] == 1024:
        raise ValueError(f"{source}: cross-attention reads 1024-wide text: this looks like Stable Diffusion 2.x; "
                         "only Stable Diffusion v1 files load")
    groups = {"unet": {}, "vae": {}, "text_encoder": {}}
    for key, value in tensors.items():
        for prefix, part in (("model.diffusion_model.", "unet"), ("first_stage_model.", "vae"),
                             ("cond_stage_model.transformer.", "text_encoder")):
            if key.startswith(prefix):
                if part == "vae" and re.search(r"\.attn_1\.(q|k|v|proj_out)\.weight$", key) and value.dim() == 4:
                    value = value[:, :, 0, 0]  # a 1×1 conv's (C, C, 1, 1) -> a Linear's (C, C)
                groups[part][key[len(prefix):]] = value
    return {"unet": rename(groups["unet"], ldm_unet_rules(unet_cfg)),
            "vae": rename(groups["vae"], ldm_vae_rules(vae_cfg)),
            "text_encoder": rename(groups["text_encoder"], [(r"^(?!text_model\.)", "text_model.")]
                                   + TRANSFORMERS_CLIP_RULES, ignore=TRANSFORMERS_CLIP_IGNORED)}


def ldm_unet_rules(cfg: UNetConfig) -> list:
    """CompVis' UNetModel -> ours. input_blocks are numbered: 0 is conv_in, then per level n ResBlocks (each with
    its attention as .1) and a downsampler; output_blocks: per level n + 1 ResBlocks, the last with the upsampler."""
    n, levels = cfg.layers_per_block, len(cfg.block_channels)

    def inp(m):
        k = int(m[1]) - 1
        level, j = divmod(k, n + 1)
        return f"down.{level}.{'res' if m[2] == '0' else 'attn'}.{j}."

    def out(m):
        level, j = divmod(int(m[1]), n + 1)
        kind = {"0": "res", "1": "attn", "2": "upsample"}[m[2]]
        if kind == "upsample" or (kind == "attn" and not cfg.attention_levels[levels - 1 - level]):
            return f"up.{level}.resample.conv."  # .1.conv or .2.conv: the upsampler follows the last ResBlock
        return f"up.{level}.{kind}.{j}."

    return [
        (r"^time_embed\.(\d)\.", r"time_mlp.\1."), (r"^input_blocks\.0\.0\.", "conv_in."),
        (r"^out\.0\.", "norm_out."), (r"^out\.2\.", "conv_out."),
        (r"^input_blocks\.(\d+)\.0\.op\.", lambda m: f"down.{(int(m[1]) - 1) // (n + 1)}.resample.conv."),
        (r"^input_blocks\.(\d+)\.([01])\.", inp),
        (r"^output_blocks\.(\d+)\.([012])\.(?:conv\.)?", out),
        (r"^middle_block\.0\.", "mid_res1."), (r"^middle_block\.1\.", "mid_attn."), (r"^middle_block\.2\.", "mid_res2."),
        (r"\.in_layers\.0\.", ".norm1."), (r"\.in_layers\.2\.", ".conv1."), (r"\.emb_layers\.1\.", ".emb_proj."),
        (r"\.out_layers\.0\.", ".norm2."), (r"\.out_layers\.3\.", ".conv2."), (r"\.skip_connection\.", ".skip."),
        *_DIFFUSERS_ATTENTION,
    ]


def ldm_vae_rules(cfg: VAEConfig) -> list:
    """CompVis' AutoencoderKL -> ours. Its decoder.up.{i} is numbered by resolution (up.{levels-1} runs first), and
    its mid attention uses 1×1 convs for q, k, v and proj_out (weights (C, C, 1, 1): squeezed to Linear's (C, C))."""
    n, levels = cfg.layers_per_block, len(cfg.block_channels)
    return [
        (r"^encoder\.down\.(\d+)\.block\.(\d+)\.", lambda m: f"encoder.down.{int(m[1]) * (n + 1) + int(m[2])}."),
        (r"^encoder\.down\.(\d+)\.downsample\.", lambda m: f"encoder.down.{int(m[1]) * (n + 1) + n}."),
        (r"^decoder\.up\.(\d+)\.block\.(\d+)\.",
         lambda m: f"decoder.up.{(levels - 1 - int(m[1])) * (n + 2) + int(m[2])}."),
        (r"^decoder\.up\.(\d+)\.upsample\.", lambda m: f"decoder.up.{(levels - 1 - int(m[1])) * (n + 2) + n + 1}."),
        (r"^(en|de)coder\.mid\.block_([12])\.", r"\1coder.mid.res\2."),
        (r"^(en|de)coder\.mid\.attn_1\.norm\.", r"\1coder.mid.attn.norm."),
        (r"^(en|de)coder\.mid\.attn_1\.proj_out\.", r"\1coder.mid.attn.out."),
        (r"^(en|de)coder\.mid\.attn_1\.([qkv])\.(weight|bias)$", r"\1coder.mid.attn.qkv.\3#\2"),
        (r"\.nin_shortcut\.", ".skip."),
    ]
