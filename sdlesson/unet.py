"""The noise predictor: a UNet that takes a noisy image x_t and its timestep t and predicts the noise ε.

The layout is DDPM's (and diffusers' UNet2DModel's), in one file you can read top to bottom:

    x_t ─ conv_in ─ [ResBlock ×n (+Attn)] ─ Downsample ─ … ─ Mid(Res, Attn, Res) ─ … ─ Upsample ─ [ResBlock ×(n+1)]
                    │ each output kept as a skip connection, concatenated on the way up ──↑          ─ conv_out ─ ε̂
    t ─ sinusoidal embedding ─ MLP ─ added inside every ResBlock   (+ a class embedding, when conditioned)
    text tokens ─ cross-attention inside every Attention block     (when context_dim is set)
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .checks import check_unet_inputs


@dataclass
class UNetConfig:
    """Every choice the UNet is built from; the course's models and SD v1.5 differ only in these values
    (stable_diffusion.configs_side_by_side shows them side by side)."""

    in_channels: int = 3  # 1 for silhouettes, 3 for RGB, 4 for VAE latents
    out_channels: int | None = None  # defaults to in_channels: ε has the shape of x
    sample_size: int = 32  # height = width of the input, 8 … 64; the training size (any multiple of 2^(levels-1) runs)
    block_channels: tuple[int, ...] = (64, 128, 128)  # channels at each resolution; len = number of levels, each
    # level halving the resolution: wider where the image is small, where convolutions cost least per channel
    layers_per_block: int = 2  # ResBlocks per level on the way down (one more on the way up, for the extra skip)
    attention_levels: tuple[bool, ...] = (False, True, True)  # self-attention at which levels: its cost grows with
    # (H·W)², so the coarse levels get it (SD v1 also at 64×64, none at its coarsest, 8×8)
    attention_head_dim: int = 32  # channels per head, so wider levels get more heads ...
    attention_heads: int | None = None  # ... unless a fixed number of heads is set (SD v1: 8 at every level)
    attention_block: str = "simple"  # "simple": GroupNorm + self-attention (+ cross-attention), DDPM's block;
    # "transformer": SD's spatial transformer, a whole transformer layer over the H·W positions (see below)
    norm_groups: int = 32  # GroupNorm's groups: batch-size independent, so a batch of 1 samples like training
    dropout: float = 0.0  # inside each ResBlock, before its second conv (off in every shipped recipe)
    num_classes: int | None = None  # class conditioning: an embedding added to the time embedding
    context_dim: int | None = None  # text conditioning: cross-attention to (B, L, context_dim) tokens

    def __post_init__(self):
        self.block_channels = tuple(self.block_channels)
        self.attention_levels = tuple(bool(a) for a in self.attention_levels)
        if self.out_channels is None:
            self.out_channels = self.in_channels
        if self.attention_block not in ("simple", "transformer"):
            raise ValueError(f"attention_block must be 'simple' or 'transformer', got {self.attention_block!r}")
        if len(self.attention_levels) != len(self.block_channels):
            raise ValueError(
                f"attention_levels needs one entry per level ({len(self.block_channels)}), "
                f"got {len(self.attention_levels)}"
            )
        if any(c % self.norm_groups for c in self.block_channels):
            raise ValueError(f"every block_channels entry must be divisible by norm_groups={self.norm_groups}")
        factor = 2 ** (len(self.block_channels) - 1)
        if self.sample_size % factor:
            raise ValueError(f"sample_size {self.sample_size} must be divisible by 2**(levels-1) = {factor}")

    def to_dict(self) -> dict:
        return asdict(self)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of t (Transformer positions, as in DDPM): (B,) -> (B, dim).

    t may be fractional (Karras plans call the UNet between training steps); integer t embeds exactly as before.

    emb[i] = cos(t · ω_i), emb[dim/2 + i] = sin(t · ω_i), with ω_i = max_period^(-i / (dim/2)).
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]  # (B, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ResBlock(nn.Module):
    """GroupNorm → SiLU → conv, plus the time embedding, twice; a residual connection around it."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, *, groups: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, out, H, W)
        h = h + self.emb_proj(F.silu(emb))[:, :, None, None]  # each channel shifted by the timestep
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head attention; keys and values come from `context` when given (cross-attention)."""

    def __init__(self, dim: int, *, head_dim: int | None = None, heads: int | None = None,
                 context_dim: int | None = None, bias: bool = True):
        super().__init__()
        self.heads = heads or max(1, dim // head_dim)  # a fixed number of heads, or one per head_dim channels
        self.to_q = nn.Linear(dim, dim, bias=bias)  # SD's transformer: q, k, v without bias
        self.to_k = nn.Linear(context_dim or dim, dim, bias=bias)
        self.to_v = nn.Linear(context_dim or dim, dim, bias=bias)
        self.to_out = nn.Linear(dim, dim)
        self.keep_weights = False  # set True to keep the attention weights of the next call in .weights, for plots
        self.weights: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, context_mask=None) -> torch.Tensor:
        context = x if context is None else context
        B, N, C = x.shape
        q = self.to_q(x).view(B, N, self.heads, -1).transpose(1, 2)  # (B, heads, N, d)
        k = self.to_k(context).view(B, context.shape[1], self.heads, -1).transpose(1, 2)  # (B, heads, L, d)
        v = self.to_v(context).view(B, context.shape[1], self.heads, -1).transpose(1, 2)
        mask = None if context_mask is None else context_mask[:, None, None, :]  # (B, 1, 1, L), True = attend
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # softmax(q kᵀ / sqrt(d)) v
        if self.keep_weights:  # the same softmax written out, to see which tokens each position reads
            scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, heads, N, L)
            self.weights = (scores if mask is None else scores.masked_fill(~mask, float("-inf"))).softmax(-1)
        return self.to_out(out.transpose(1, 2).reshape(B, N, C))


class AttentionBlock(nn.Module):
    """Self-attention over the H·W positions, then cross-attention to the text tokens if configured."""

    def __init__(self, channels: int, *, groups: int, head_dim: int, context_dim: int | None, heads: int | None = None):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.self_attn = Attention(channels, head_dim=head_dim, heads=heads)
        self.cross_attn = None
        if context_dim is not None:
            self.cross_norm = nn.LayerNorm(channels)
            self.cross_attn = Attention(channels, head_dim=head_dim, heads=heads, context_dim=context_dim)

    def forward(self, x: torch.Tensor, context=None, context_mask=None) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.norm(x).flatten(2).transpose(1, 2)  # (B, H·W, C): one token per position
        h = x.flatten(2).transpose(1, 2) + self.self_attn(h)
        if self.cross_attn is not None and context is not None:
            h = h + self.cross_attn(self.cross_norm(h), context, context_mask)
        return h.transpose(1, 2).reshape(B, C, H, W)


class FeedForward(nn.Module):
    """GEGLU (Shazeer 2020): out(h · GELU(gate)), with h and gate two halves of one projection to 4× the width."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.proj = nn.Linear(dim, 2 * mult * dim)
        self.out = nn.Linear(mult * dim, dim)

    def forward(self, x):
        h, gate = self.proj(x).chunk(2, dim=-1)  # 2 × (B, N, 4·dim)
        return self.out(h * F.gelu(gate))


class SpatialTransformer(nn.Module):
    """Stable Diffusion's attention block: one transformer layer over the H·W positions, text read by cross-attention.

        x ─ GroupNorm ─ 1×1 conv ─ tokens (B, H·W, C) ─ + self-attn(LN) ─ + cross-attn(LN, text) ─ + GEGLU(LN)
          ─ 1×1 conv ─ + x
    """

    def __init__(self, channels: int, *, groups: int, heads: int | None, head_dim: int, context_dim: int | None):
        super().__init__()
        kw = dict(heads=heads, head_dim=head_dim, bias=False)
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.norm1 = nn.LayerNorm(channels)
        self.attn1 = Attention(channels, **kw)
        self.norm2 = nn.LayerNorm(channels)
        self.attn2 = Attention(channels, context_dim=context_dim, **kw)  # self-attention again if no context_dim
        self.norm3 = nn.LayerNorm(channels)
        self.ff = FeedForward(channels)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, context=None, context_mask=None) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)  # (B, H·W, C)
        h = h + self.attn1(self.norm1(h))
        h = h + self.attn2(self.norm2(h), context, context_mask)  # the prompt enters here
        h = h + self.ff(self.norm3(h))
        return x + self.proj_out(h.transpose(1, 2).reshape(B, C, H, W))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)  # (H, W) -> (H/2, W/2)

    def forward(self, x):
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))  # (H, W) -> (2H, 2W)


class Level(nn.Module):
    """The ResBlocks (and attention) at one resolution, with the resampling that follows them (None at the last
    level going down and at full resolution going up)."""

    def __init__(self, res_blocks, attn_blocks, resample):
        super().__init__()
        self.res = nn.ModuleList(res_blocks)
        self.attn = nn.ModuleList(attn_blocks)  # empty, or one per ResBlock
        self.resample = resample


class UNet(nn.Module):
    """x_t (B, C, H, W), t (B,) -> predicted noise ε̂ (B, C_out, H, W); the layout in the module docstring.

    The skip connections, counted: conv_in's output and every ResBlock's and Downsample's output on the way down
    are pushed on a stack (1 + levels · layers_per_block + (levels - 1) tensors). On the way up each level has
    layers_per_block + 1 ResBlocks, and each pops one tensor and concatenates it on the channels: the pops mirror
    the pushes exactly, so the stack is empty at conv_out. `skip_channels` in __init__ keeps the same stack of
    channel counts, to size each up-ResBlock's input (its own width + the popped skip's).
    """

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = cfg = config
        ch = cfg.block_channels
        emb_dim = 4 * ch[0]
        kw = dict(groups=cfg.norm_groups, dropout=cfg.dropout)
        block = SpatialTransformer if cfg.attention_block == "transformer" else AttentionBlock
        attn = lambda c: block(  # noqa: E731
            c, groups=cfg.norm_groups, head_dim=cfg.attention_head_dim, heads=cfg.attention_heads,
            context_dim=cfg.context_dim,
        )

        self.time_mlp = nn.Sequential(nn.Linear(ch[0], emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))  # (B, emb)
        # Class conditioning: one extra row, index num_classes, is the "no class" used for guidance.
        self.class_emb = nn.Embedding(cfg.num_classes + 1, emb_dim) if cfg.num_classes else None
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)

        # Down: each level keeps its outputs for the skip connections; skip_channels records their widths.
        self.down = nn.ModuleList()
        skip_channels, c_in = [ch[0]], ch[0]  # conv_in's output is the first skip
        for i, c in enumerate(ch):
            last = i == len(ch) - 1
            res, att = [], []
            for _ in range(cfg.layers_per_block):
                res.append(ResBlock(c_in, c, emb_dim, **kw))
                att += [attn(c)] if cfg.attention_levels[i] else []
                c_in = c
                skip_channels.append(c)
            self.down.append(Level(res, att, None if last else Downsample(c)))
            if not last:
                skip_channels.append(c)

        self.mid_res1 = ResBlock(c_in, c_in, emb_dim, **kw)
        self.mid_attn = attn(c_in)
        self.mid_res2 = ResBlock(c_in, c_in, emb_dim, **kw)

        # Up: the mirror image, each ResBlock taking a skip connection concatenated on its channels.
        self.up = nn.ModuleList()
        for i, c in reversed(list(enumerate(ch))):
            res, att = [], []
            for _ in range(cfg.layers_per_block + 1):
                res.append(ResBlock(c_in + skip_channels.pop(), c, emb_dim, **kw))
                att += [attn(c)] if cfg.attention_levels[i] else []
                c_in = c
            self.up.append(Level(res, att, Upsample(c) if i > 0 else None))

        self.norm_out = nn.GroupNorm(cfg.norm_groups, c_in)
        self.conv_out = nn.Conv2d(c_in, cfg.out_channels, 3, padding=1)

    def forward(self, x, t, *, class_labels=None, context=None, context_mask=None):
        """x: (B, C, H, W) noisy input; t: (B,) timesteps -> predicted noise (B, C_out, H, W).

        class_labels: (B,) ints, num_classes meaning "no class"; context: (B, L, context_dim) token embeddings,
        context_mask: (B, L) bool, True where a token is real.
        """
        t = check_unet_inputs(self.config, x, t, class_labels=class_labels, context=context,
                              context_mask=context_mask)  # (B,) timesteps, or a clear error
        emb = self.time_mlp(timestep_embedding(t, self.config.block_channels[0]))  # (B, emb_dim)
        if self.class_emb is not None:
            if class_labels is None:  # unconditional: the "no class" row
                class_labels = torch.full(t.shape, self.config.num_classes, device=t.device)  # long, whatever t is
            emb = emb + self.class_emb(class_labels)

        h = self.conv_in(x)  # (B, ch[0], H, W)
        skips = [h]  # every output on the way down, pushed here, popped in reverse on the way up
        for level in self.down:
            for j, res in enumerate(level.res):
                h = res(h, emb)  # (B, ch[i], H_i, W_i)
                if level.attn:
                    h = level.attn[j](h, context, context_mask)
                skips.append(h)
            if level.resample is not None:
                h = level.resample(h)  # (B, ch[i], H_i / 2, W_i / 2)
                skips.append(h)

        h = self.mid_res2(self.mid_attn(self.mid_res1(h, emb), context, context_mask), emb)  # (B, ch[-1], h, w)

        for level in self.up:
            for j, res in enumerate(level.res):
                h = res(torch.cat([h, skips.pop()], dim=1), emb)  # (B, c + c_skip, H_i, W_i) -> (B, ch[i], H_i, W_i)
                if level.attn:
                    h = level.attn[j](h, context, context_mask)
            if level.resample is not None:
                h = level.resample(h)  # (B, ch[i], 2 H_i, 2 W_i)

        return self.conv_out(F.silu(self.norm_out(h)))  # (B, C_out, H, W)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


ATTENTION_KINDS = {"cross": ("cross_attn", "attn2"), "self": ("self_attn", "attn1")}  # simple / transformer names


@contextmanager
def recording_attention(model: nn.Module, *, kind: str = "cross",
                        where: Callable[[str], bool] = lambda name: True) -> Iterator[dict[str, Attention]]:
    """Keep the attention weights of the model's `kind` ("cross": to the text tokens, or "self") attention layers
    whose names pass `where` (e.g. lambda n: n.startswith(("down.1", "up.1")), the 4×4 levels), for plots.

        with recording_attention(pipe.unet) as layers:
            pipe.unet(z_t, t, context=context, context_mask=mask)
            maps = torch.stack([layer.weights for layer in layers.values()])  # each (B, heads, H·W, L)

    Inside the block each layer's `.weights` holds the softmax of its latest call; on leaving, recording stops and
    the weights are dropped. (SD's transformer calls its cross-attention attn2; without a context it is self-attention.)
    """
    if kind not in ATTENTION_KINDS:
        raise ValueError(f"kind must be one of {', '.join(ATTENTION_KINDS)}, got {kind!r}")
    layers = {name: m for name, m in model.named_modules()
              if isinstance(m, Attention) and name.endswith(ATTENTION_KINDS[kind]) and where(name)}
    for layer in layers.values():
        layer.keep_weights = True
    try:
        yield layers
    finally:
        for layer in layers.values():
            layer.keep_weights, layer.weights = False, None
