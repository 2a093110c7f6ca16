"""LoRA: low-rank adapters (Hu et al. 2021), on the course's networks and as people share them for SD v1.5.

A frozen layer y = W x + b learns a small correction of rank r instead of a new W:

    y = W x + b + (α / r) · s · B (A x)          A: (r, in) random, B: (out, r) zeros, so training starts at W
    merged:  W' = W + (α / r) · s · B A           same outputs, no extra cost per call; unmerged: W back, exactly

r ≪ min(in, out), so A and B hold r · (in + out) numbers instead of in · out: a 320×320 projection at r = 4 trains
2,560 numbers instead of 102,400. α (alpha) fixes the update's size whatever r is (α = r: factor 1); s is the scale a
user turns at generation time (0: the base model, 1: the LoRA as trained).

    inject_lora(unet, targets=COURSE_ATTENTION, rank=4)     # wrap the matching nn.Linear / nn.Conv2d, freeze the rest
    lora_parameters(unet)                                   # what an optimizer trains: only the A's and B's
    set_lora_scale(unet, 0.5); merge_lora(unet); unmerge_lora(unet)
    save_lora(unet, "concept.safetensors"); load_lora(fresh_unet, "concept.safetensors")

    load_sd_lora(sd, "someone_elses_lora.safetensors", scale=0.8)   # kohya or diffusers layout, onto SD v1.5

Shared SD v1.5 files name layers as diffusers does (kohya: `lora_unet_down_blocks_0_attentions_0_..._to_q`, dots
as underscores); `stable_diffusion.py`'s key rules turn those names into the course's. The text encoder's q, k and v
are one fused projection here, so their three adapters become one, block-diagonal (see `_fused`).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch
from torch import nn

COURSE_ATTENTION = r"(self_attn|cross_attn|attn1|attn2)\.(to_q|to_k|to_v|to_out)$"  # the course UNet's attention
COURSE_TEXT = r"blocks\.\d+\.(qkv|proj)$"  # the course text encoder's attention (q, k, v fused, and out)
FORMAT = "sdlesson-lora"  # written into the course's files, checked when reading them


class LoRA(nn.Module):
    """A frozen layer plus (α / r) · s · up(down(x)). `down` is A, `up` is B; subclasses say what kind of layer."""

    def __init__(self, base: nn.Module, down: nn.Module, up: nn.Module, *, rank: int, alpha: float):
        super().__init__()
        self.base, self.down, self.up = base, down, up
        self.rank, self.alpha, self.scale = rank, float(alpha), 1.0
        self.merged = False
        self.saved: torch.Tensor | None = None  # W before an exact merge, so that unmerging gives it back bit for bit
        nn.init.kaiming_uniform_(down.weight, a=math.sqrt(5))  # A as peft initialises it (nn.Linear's default)
        nn.init.zeros_(up.weight)  # B = 0: the adapted layer starts as the base layer
        self.down.to(base.weight), self.up.to(base.weight)

    @property
    def factor(self) -> float:
        return self.alpha / self.rank * self.scale  # (α / r) · s

    def delta_weight(self) -> torch.Tensor:
        """(α / r) · s · B A, shaped like the base weight."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.merged or self.scale == 0:
            return y
        return y + self.factor * self.up(self.down(x))  # W x + b + (α / r) · s · B (A x)

    @torch.no_grad()
    def merge(self, *, exact: bool = True) -> None:
        """W' = W + ΔW. exact: keep a copy of W for unmerge (memory: one more W); else unmerge subtracts ΔW."""
        if not self.merged:
            self.saved = self.base.weight.detach().clone() if exact else None
            self.base.weight += self.delta_weight().to(self.base.weight)  # W' = W + (α / r) · s · B A
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            if self.saved is not None:
                self.base.weight.copy_(self.saved)  # the saved W, bit for bit
            else:
                self.base.weight -= self.delta_weight().to(self.base.weight)  # W' - ΔW: W up to rounding
            self.merged, self.saved = False, None

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha:g}, scale={self.scale:g}, merged={self.merged}"


class LoRALinear(LoRA):
    """y = W x + b + (α / r) · s · B (A x), around an nn.Linear."""

    def __init__(self, base: nn.Linear, *, rank: int, alpha: float | None = None):
        super().__init__(base, nn.Linear(base.in_features, rank, bias=False),
                         nn.Linear(rank, base.out_features, bias=False), rank=rank, alpha=alpha or rank)

    def delta_weight(self) -> torch.Tensor:
        return self.factor * self.up.weight @ self.down.weight  # (out, r) @ (r, in)


class LoRAConv2d(LoRA):
    """The same around an nn.Conv2d: A is a conv with the base's kernel (r output channels), B a 1×1 conv.
    SD v1.5's proj_in / proj_out are 1×1 convs; kohya's LoCon also adapts the 3×3 ones."""

    def __init__(self, base: nn.Conv2d, *, rank: int, alpha: float | None = None):
        if base.groups != 1:
            raise ValueError(f"LoRA on a grouped convolution is not supported (groups={base.groups})")
        down = nn.Conv2d(base.in_channels, rank, base.kernel_size, base.stride, base.padding, base.dilation, bias=False)
        super().__init__(base, down, nn.Conv2d(rank, base.out_channels, 1, bias=False), rank=rank, alpha=alpha or rank)

    def delta_weight(self) -> torch.Tensor:
        up = self.up.weight.flatten(1)  # (out, r)
        return self.factor * torch.einsum("or,rikl->oikl", up, self.down.weight)  # B A per kernel tap


def wrap(layer: nn.Module, *, rank: int, alpha: float | None = None) -> LoRA:
    if isinstance(layer, nn.Linear):
        return LoRALinear(layer, rank=rank, alpha=alpha)
    if isinstance(layer, nn.Conv2d):
        return LoRAConv2d(layer, rank=rank, alpha=alpha)
    raise TypeError(f"LoRA wraps nn.Linear or nn.Conv2d layers, got {type(layer).__name__}")


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def lora_layers(model: nn.Module) -> dict[str, LoRA]:
    """Adapted layers by the name of the layer they wrap ('down.0.attn.0.attn1.to_q')."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRA)}


def inject_lora(model: nn.Module, *, targets: str | list[str] = COURSE_ATTENTION, rank: int = 4,
                alpha: float | None = None, freeze: bool = True, seed: int | None = None) -> list[str]:
    """Wrap every nn.Linear / nn.Conv2d whose name matches a `targets` regex (re.search) in a LoRA; returns the names.

    freeze: the model's own parameters stop requiring gradients, so only the adapters train. seed: A's draw."""
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be a positive integer, got {rank!r}")
    patterns = [re.compile(t) for t in ([targets] if isinstance(targets, str) else targets)]
    inside = tuple(f"{n}." for n in lora_layers(model))  # an adapter's own base, A and B are not wrapped again
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))
             and not n.startswith(inside) and any(p.search(n) for p in patterns)]
    if not names:
        some = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))][:4]
        raise ValueError(f"no nn.Linear or nn.Conv2d in the model matches {[p.pattern for p in patterns]}; "
                         f"layers are named like {some}")
    if freeze:
        model.requires_grad_(False)
    with torch.random.fork_rng(enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        for name in names:
            _replace(model, name, wrap(model.get_submodule(name), rank=rank, alpha=alpha))
    return names


def remove_lora(model: nn.Module) -> None:
    """Put the base layers back (unmerged): the model as it was before inject_lora."""
    for name, layer in lora_layers(model).items():
        layer.unmerge()
        _replace(model, name, layer.base)


def set_lora_scale(model: nn.Module, scale: float) -> None:
    """s in (α / r) · s · B A, for every adapter (a merged model is unmerged and merged again at the new scale)."""
    for layer in lora_layers(model).values():
        was_merged, exact = layer.merged, layer.saved is not None
        layer.unmerge()
        layer.scale = float(scale)
        if was_merged:
            layer.merge(exact=exact)


def merge_lora(model: nn.Module, *, exact: bool = True) -> None:
    """Fold every adapter into its weight (same outputs, no extra cost per call); exact: unmerge restores W bit for
    bit (a copy of each adapted W is kept), else up to rounding (W' - ΔW)."""
    for layer in lora_layers(model).values():
        layer.merge(exact=exact)


def unmerge_lora(model: nn.Module) -> None:
    for layer in lora_layers(model).values():
        layer.unmerge()


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The adapters' A and B matrices: what an optimizer trains (the base layers are frozen)."""
    return [p for layer in lora_layers(model).values() for p in (layer.down.weight, layer.up.weight)]


# --- the course's own file: {name}.lora_down.weight, {name}.lora_up.weight + the config as metadata ------------------

def save_lora(model: nn.Module, path, *, config: dict | None = None) -> Path:
    """The adapters alone (a few hundred KB), with rank, alpha and targets in the file's metadata."""
    from safetensors.torch import save_file

    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA adapters to save (inject_lora first)")
    state = {}
    for name, layer in layers.items():
        state[f"{name}.lora_down.weight"] = layer.down.weight.detach().float().contiguous().cpu()
        state[f"{name}.lora_up.weight"] = layer.up.weight.detach().float().contiguous().cpu()
    meta = {"format": FORMAT, "rank": {n: m.rank for n, m in layers.items()},
            "alpha": {n: m.alpha for n, m in layers.items()}} | (config or {})
    path = Path(path)
    save_file(state, str(path), metadata={"sdlesson": json.dumps(meta)})
    return path


def read_lora_config(path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = (f.metadata() or {}).get("sdlesson")
    config = json.loads(meta) if meta else {}
    if config.get("format") != FORMAT:
        raise ValueError(f"{path}: not a LoRA file saved by sdlesson.lora.save_lora (for a shared SD v1.5 LoRA, "
                         "use load_sd_lora)")
    return config


def load_lora(model: nn.Module, path, *, scale: float = 1.0, merge: bool = False) -> list[str]:
    """A file from save_lora onto the same kind of model: adapters injected with the saved ranks, then filled."""
    from safetensors.torch import load_file

    config, state = read_lora_config(path), load_file(str(path))
    names = list(config["rank"])
    missing = [n for n in names if not isinstance(_get(model, n), (nn.Linear, nn.Conv2d))]
    if missing:
        raise ValueError(f"{path}: {len(missing)} adapted layer(s) not found in this model, e.g. {missing[:3]}")
    for name in names:
        layer = wrap(model.get_submodule(name), rank=config["rank"][name], alpha=config["alpha"][name])
        for part in ("down", "up"):
            value, param = state[f"{name}.lora_{part}.weight"], getattr(layer, part).weight
            if value.shape != param.shape:
                raise ValueError(f"{path}: {name}.lora_{part}.weight has shape {tuple(value.shape)}, the layer "
                                 f"needs {tuple(param.shape)}")
            param.data.copy_(value)
        _replace(model, name, layer)
    model.requires_grad_(False)
    set_lora_scale(model, scale)
    if merge:
        merge_lora(model)
    return names


def _get(model: nn.Module, name: str):
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


# --- shared SD v1.5 LoRA files: kohya's and diffusers' layouts -> the course's layers --------------------------------

# diffusers' identifiers that contain "_": kohya writes every "." as "_", so these are stitched back (longest first)
COMPOUNDS = sorted(["down_blocks", "up_blocks", "mid_block", "transformer_blocks", "to_q", "to_k", "to_v", "to_out",
                    "proj_in", "proj_out", "time_emb_proj", "conv_shortcut", "conv_in", "conv_out", "conv_norm_out",
                    "time_embedding", "linear_1", "linear_2", "text_model", "self_attn", "q_proj", "k_proj", "v_proj",
                    "out_proj"], key=len, reverse=True)
KOHYA = re.compile(r"^lora_(unet|te)_(.+)\.(lora_down\.weight|lora_up\.weight|alpha)$")
# diffusers: peft's lora_A / lora_B, its older attention processors' to_q_lora.down, text encoders' lora_linear_layer
DIFFUSERS = re.compile(r"^(unet|text_encoder)\.(.+?)(?:\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight"
                       r"|\.(?:lora_linear_layer\.|lora\.)(down|up)\.weight|\.lora_(A|B)\.weight|\.alpha)$")
OTHER_MODELS = [  # (regex on a key, what the file is for)
    (r"^lora_te[12]_|^text_encoder_2\.|^lora_unet_(input|middle|output)_block",
     "SDXL (two text encoders / the original UNet's block names)"),
    (r"transformer_blocks[._][1-9]", "SDXL (several transformer layers per block; SD v1.5 has one)"),
    (r"^(transformer|lora_transformer)[._]|single_transformer_blocks", "a transformer model such as SD3 or FLUX"),
    (r"\.(hada_w|lokr_w)|lora_mid\.", "LyCORIS (LoHa / LoKr / LoCon with a mid layer), not plain LoRA"),
]


def kohya_to_diffusers(name: str) -> str:
    """'down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q' -> 'down_blocks.0.attentions.0.…attn1.to_q'."""
    name = name.replace("_", ".")
    for word in COMPOUNDS:
        name = name.replace(word.replace("_", "."), word)
    return name


def read_sd_lora(path_or_state) -> dict[tuple[str, str], dict]:
    """A shared LoRA file -> {(part, diffusers module name): {"down": A, "up": B, "alpha": α or None}}.

    part is "unet" or "text_encoder". Raises if the file is for another model or has keys that match nothing."""
    from .stable_diffusion import read_state

    state = path_or_state if isinstance(path_or_state, dict) else read_state(Path(path_or_state))
    where = "the LoRA" if isinstance(path_or_state, dict) else Path(path_or_state).name
    for pattern, model in OTHER_MODELS:
        hits = [k for k in state if re.search(pattern, k)]
        if hits:
            raise ValueError(f"{where} is a LoRA for {model}, not Stable Diffusion v1.5: e.g. {hits[:2]}")
    out, unmatched = {}, []
    for key, value in state.items():
        if m := KOHYA.match(key):
            part = "unet" if m[1] == "unet" else "text_encoder"
            name, what = kohya_to_diffusers(m[2]), m[3].removeprefix("lora_").removesuffix(".weight")
        elif m := DIFFUSERS.match(key):
            part, name = m[1], m[2]
            if m[3]:  # unet.….attn1.processor.to_q_lora.down.weight
                name, what = f"{name}.{m[3]}" + (".0" if m[3] == "to_out" else ""), m[4]
            else:
                what = m[5] or {"A": "down", "B": "up"}.get(m[6], "alpha")
        else:
            unmatched.append(key)
            continue
        out.setdefault((part, name), {})[what] = value.float() if what != "alpha" else float(value)
    if unmatched:
        raise ValueError(f"{where}: {len(unmatched)} key(s) match no SD v1.5 LoRA layout (kohya's lora_unet_… / "
                         f"lora_te_…, diffusers' unet.….lora_A.weight), e.g. {unmatched[:3]}")
    half = [k for k, v in out.items() if "down" not in v or "up" not in v]
    if half:
        raise ValueError(f"{where}: layer(s) {[n for _, n in half[:3]]} have a down or an up matrix but not both")
    configs = {} if isinstance(path_or_state, dict) else peft_configs(Path(path_or_state))
    for (part, name), e in out.items():
        if e.get("alpha") is None and part in configs:
            e["alpha"] = peft_alpha(configs[part], name, rank=e["down"].shape[0])
    return out


def peft_configs(path: Path) -> dict[str, dict]:
    """The LoraConfig diffusers writes into a .safetensors' metadata ("lora_adapter_metadata": {"unet.lora_alpha":
    8, "unet.r": 4, …}), by part; {} when there is none (α is then r, as diffusers assumes)."""
    if path.suffix != ".safetensors":
        return {}
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        raw = (f.metadata() or {}).get("lora_adapter_metadata")
    configs: dict[str, dict] = {}
    for key, value in (json.loads(raw) if raw else {}).items():
        part, _, field = key.partition(".")
        configs.setdefault(part, {})[field] = value
    for part, config in configs.items():
        if config.get("use_dora"):
            raise ValueError(f"{path.name}: the {part} adapters are DoRA (use_dora), not plain LoRA")
    return configs


def peft_alpha(config: dict, name: str, *, rank: int) -> float:
    """α for one layer as peft computes its scale: alpha_pattern's first key that ends the layer's name, else
    lora_alpha; rsLoRA scales by α / √r, written here as the α' with α' / r = α / √r."""
    pattern = next((p for p in config.get("alpha_pattern") or {} if re.match(rf"(.*\.)?({p})$", name)), None)
    alpha = float(config["alpha_pattern"][pattern] if pattern else config.get("lora_alpha", rank))
    return alpha * math.sqrt(rank) if config.get("use_rslora") else alpha


def _course_name(part: str, name: str) -> tuple[str, int | None]:
    """A diffusers module name -> (the course's module name, which third of a fused q/k/v projection or None)."""
    from .stable_diffusion import TEXT_RULES, UNET_RULES, rename

    course = next(iter(rename({name + ".weight": 0}, UNET_RULES if part == "unet" else TEXT_RULES)))[: -len(".weight")]
    if part == "text_encoder" and (m := re.search(r"\.(q|k|v)_proj$", course)):
        return course[: m.start()] + ".qkv", "qkv".index(m[1])
    return course, None


def _sizes(layer: nn.Module) -> tuple[int, int]:
    return (layer.in_features, layer.out_features) if isinstance(layer, nn.Linear) else \
        (layer.in_channels, layer.out_channels)


def _fit(value: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """1×1 conv weights (r, in, 1, 1) onto a Linear and back: the same numbers."""
    if isinstance(layer, nn.Linear) and value.dim() == 4 and value.shape[2:] == (1, 1):
        return value.flatten(1)
    if isinstance(layer, nn.Conv2d) and value.dim() == 2:
        return value[:, :, None, None]
    return value


def load_sd_lora(sd, path_or_state, *, scale: float = 1.0, merge: bool = False) -> list[str]:
    """A LoRA shared for SD v1.5 (kohya or diffusers layout) onto the course's SD networks, as live adapters.

    sd: a StableDiffusion (or anything with .unet and .text_encoder, e.g. a TextToImage on SD weights: its text side's
    encoder is used). scale: s; merge: fold the adapters into the weights; unmerge_lora then subtracts them again
    (W back up to rounding: an exact copy of every adapted SD weight would cost up to 1.4 GB in fp32)
    Every layer is found and every shape checked before any adapter is added. Returns the adapted layers' names."""
    unet = sd.unet
    side = getattr(sd, "text", None)  # a TextToImage's text side; the course's holds its small CLIP, SD's none
    text = getattr(sd, "text_encoder", None) or getattr(side, "text_encoder", None)
    if text is None or getattr(side, "clip", None) is not None:
        raise TypeError(f"load_sd_lora expects Stable Diffusion's networks (a StableDiffusion, or a TextToImage made "
                        f"by from_stable_diffusion), got {type(sd).__name__}; for the course's model use load_lora")
    models = {"unet": unet, "text_encoder": text}
    entries = read_sd_lora(path_or_state)
    plan: dict[tuple[str, str], list] = {}  # (part, course layer) -> [(third or None, A, B · α/r)]
    unknown = []
    for (part, name), e in entries.items():
        course, third = _course_name(part, name)
        layer = _get(models[part], course)
        if isinstance(layer, LoRA):
            raise ValueError(f"{course} already has a LoRA adapter: remove_lora first (or merge this one in)")
        if not isinstance(layer, (nn.Linear, nn.Conv2d)):
            unknown.append(f"{part}.{name}")
            continue
        down, up = _fit(e["down"], layer), _fit(e["up"], layer)
        rank = down.shape[0]
        ins, outs = _sizes(layer)
        outs //= 1 if third is None else 3  # a third of the fused q, k, v rows
        if down.shape[1] != ins or up.shape[:2] != (outs, rank):
            wide = " (1024 wide: a LoRA for Stable Diffusion 2.x?)" if 1024 in (*down.shape, *up.shape) else ""
            raise ValueError(f"{part}.{name}: down {tuple(down.shape)} and up {tuple(up.shape)} do not fit a layer of "
                             f"{ins} inputs and {outs} outputs{wide}")
        plan.setdefault((part, course), []).append((third, down, up * ((e.get("alpha") or rank) / rank)))
    if unknown:
        raise ValueError(f"{len(unknown)} LoRA layer(s) match no layer of SD v1.5's networks, e.g. {unknown[:3]}")
    names = []
    for (part, course), pieces in plan.items():
        model, base = models[part], models[part].get_submodule(course)
        layer = _fused(base, pieces) if pieces[0][0] is not None else wrap(base, rank=pieces[0][1].shape[0])
        if pieces[0][0] is None:
            layer.down.weight.data.copy_(pieces[0][1]), layer.up.weight.data.copy_(pieces[0][2])  # α / r is in B
        layer.scale = float(scale)
        _replace(model, course, layer)
        names.append(f"{part}.{course}")
    if merge:
        merge_lora(unet, exact=False), merge_lora(text, exact=False)
    return names


def _fused(base: nn.Linear, pieces) -> LoRALinear:
    """The course's text encoder computes q, k, v with one (3C, C) matrix: adapters for q, k, v (ranks r_q, r_k,
    r_v) become one of rank r_q + r_k + r_v, A stacked and B block-diagonal, so each third sees only its own:
    [B_q 0 0; 0 B_k 0; 0 0 B_v] [A_q; A_k; A_v] x = [B_q A_q x; B_k A_k x; B_v A_v x]."""
    C, rank = base.out_features // 3, sum(p[1].shape[0] for p in pieces)
    layer = LoRALinear(base, rank=rank, alpha=rank)  # α = r: factor 1, each piece's α / r is already in its B
    up = torch.zeros(3 * C, rank)
    col = 0
    for third, down, b in sorted(pieces, key=lambda p: p[0]):
        r = down.shape[0]
        layer.down.weight.data[col: col + r] = down
        up[third * C: (third + 1) * C, col: col + r] = b
        col += r
    layer.up.weight.data.copy_(up)
    return layer
