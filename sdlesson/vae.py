"""The KL autoencoder: an encoder that compresses an image 48× into a latent, and a decoder that restores it.

Stable Diffusion's AutoencoderKL (Rombach et al. 2022), scaled down, in one file you can read top to bottom:

    x (B, 3, 64, 64) ─ encoder ─ mean, logvar (B, 4, 8, 8) ─ z = mean + std·ε ─ decoder ─ x̂ (B, 3, 64, 64)

    encoder: patchify ─ conv_in ─ [ResBlock ×n, Downsample] per level ─ Mid(Res, Attn, Res) ─ norm, SiLU, conv_out
    decoder: conv_in ─ Mid(Res, Attn, Res) ─ [ResBlock ×(n+1), Upsample] per level ─ norm, SiLU, conv_out, unpatchify

Each side shrinks (or grows) the image by f = 8 per side: 3×64×64 = 12,288 numbers become 4×8×8 = 256, the same
48× as Stable Diffusion's 3×512×512 -> 4×64×64. The loss is reconstruction + a tiny KL term (weight 1e-6, as SD's)
that only keeps the latents from drifting: their spread is still a few units, so before diffusion they are multiplied
by the latent scale factor, 1 / std of the latents (SD's 0.18215), to make them unit-scale.

A CPU trick, `patch_size`: with patch_size = 4 the encoder starts by folding each 4×4 block of pixels into channels
(PixelUnshuffle: (3, 64, 64) -> (48, 16, 16)) and the decoder ends by unfolding them (PixelShuffle), so no
convolution runs at 64×64 or 32×32, where SD's layout spends most of its time. f = patch_size · 2^(levels - 1):
the default 4 · 2¹ = 8; patch_size = 1 with four levels is SD's own layout (1 · 2³ = 8).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .checks import check_float_tensor, check_pixel_range
from .data import to_float
from .metrics import image_gradients  # the edges decoder_loss compares
from .unet import Downsample, Upsample  # the same resampling layers as the noise predictor


@dataclass
class VAEConfig:
    in_channels: int = 3  # RGB
    latent_channels: int = 4  # as Stable Diffusion's
    block_channels: tuple[int, ...] = (64, 128)  # channels at each resolution, largest first; levels - 1 downsamplings
    layers_per_block: int = 1  # ResBlocks per level in the encoder (one more in the decoder, as SD)
    norm_groups: int = 32
    sample_size: int = 64  # the training images' side; any multiple of the downsampling factor works
    patch_size: int = 4  # p×p pixels folded into channels before conv_in (1: SD's layout, (32, 64, 128, 128) say)
    mid_attention: bool = True  # self-attention over the latent-resolution positions in the mid blocks
    norm_eps: float = 1e-5  # GroupNorm's ε (SD's VAE: 1e-6)
    downsample_padding: str = "symmetric"  # "asymmetric": pad right and bottom by one, then a stride-2 conv (SD's)
    quant_conv: bool = False  # SD's 1×1 convs on the moments after the encoder and on the latent before the decoder

    def __post_init__(self):
        self.block_channels = tuple(self.block_channels)
        if any(c % self.norm_groups for c in self.block_channels):
            raise ValueError(f"every block_channels entry must be divisible by norm_groups={self.norm_groups}, "
                             f"got {self.block_channels}")
        if self.downsample_padding not in ("symmetric", "asymmetric"):
            raise ValueError(f"downsample_padding must be 'symmetric' or 'asymmetric', got {self.downsample_padding!r}")
        if self.layers_per_block < 1:
            raise ValueError(f"layers_per_block must be at least 1, got {self.layers_per_block}")
        if self.patch_size < 1 or self.patch_size & (self.patch_size - 1):
            raise ValueError(f"patch_size must be a power of two (1, 2, 4, ...), got {self.patch_size}")
        if self.sample_size % self.downsample_factor:
            raise ValueError(f"sample_size {self.sample_size} must be a multiple of the downsampling factor "
                             f"{self.downsample_factor}")

    @property
    def downsample_factor(self) -> int:
        return self.patch_size * 2 ** (len(self.block_channels) - 1)  # f = p · 2^(levels - 1): 4 · 2¹ = 8

    def to_dict(self) -> dict:
        return asdict(self)


class DiagonalGaussian:
    """What the encoder returns: a Gaussian per latent number, N(mean, exp(logvar)), independent of each other."""

    def __init__(self, moments: torch.Tensor):
        self.mean, logvar = moments.float().chunk(2, dim=1)  # (B, 2·C, h, w) -> 2 × (B, C, h, w)
        self.logvar = logvar.clamp(-30.0, 20.0)  # as SD: keeps exp() finite
        self.std = torch.exp(0.5 * self.logvar)  # σ = exp(log σ² / 2)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        # z = μ + σ·ε, ε ~ N(0, I): the reparameterisation trick, so gradients flow into μ and σ.
        # ε is drawn on the generator's device (the CPU by default) and moved: a seed gives the same z on any device.
        device = generator.device if generator is not None else self.mean.device
        eps = torch.randn(self.mean.shape, generator=generator, device=device, dtype=torch.float32)
        return self.mean + self.std * eps.to(self.mean.device)

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(N(μ, σ²) ‖ N(0, I)) per example, summed over the latent's numbers: (B,)."""
        # KL = ½ Σ (μ² + σ² − 1 − log σ²)
        return 0.5 * (self.mean.square() + self.var - 1.0 - self.logvar).flatten(1).sum(1)


class ResBlock(nn.Module):
    """GroupNorm → SiLU → conv, twice; a residual connection around it. The UNet's, without the time embedding."""

    def __init__(self, in_ch: int, out_ch: int, *, groups: int, eps: float = 1e-5):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch, eps=eps)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_ch, eps=eps)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, out, H, W)
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """One-head self-attention over the H·W positions, as in SD's VAE mid block: each position sees every other."""

    def __init__(self, channels: int, *, groups: int, eps: float = 1e-5):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=eps)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.norm(x).flatten(2).transpose(1, 2)  # (B, H·W, C): one token per position
        q, k, v = self.qkv(h).chunk(3, dim=-1)  # 3 × (B, H·W, C)
        h = F.scaled_dot_product_attention(q, k, v)  # softmax(q kᵀ / sqrt(C)) v
        return x + self.out(h).transpose(1, 2).reshape(B, C, H, W)


class AsymmetricDownsample(nn.Module):
    """SD's VAE downsampling: pad one pixel on the right and bottom, then a 3×3 conv of stride 2 without padding."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # (H, W) -> (H/2, W/2)


class MidBlock(nn.Module):
    """ResBlock, self-attention, ResBlock at the latent resolution."""

    def __init__(self, channels: int, *, groups: int, attention: bool, eps: float = 1e-5):
        super().__init__()
        self.res1 = ResBlock(channels, channels, groups=groups, eps=eps)
        self.attn = SelfAttention(channels, groups=groups, eps=eps) if attention else nn.Identity()
        self.res2 = ResBlock(channels, channels, groups=groups, eps=eps)

    def forward(self, x):
        return self.res2(self.attn(self.res1(x)))


class Encoder(nn.Module):
    """Image (B, 3, H, W) -> the moments of a Gaussian over latents: mean and log-variance stacked, (B, 2·4, h, w).

    patchify (p×p pixel blocks into channels) ─ conv_in ─ per level: layers_per_block ResBlocks, then a stride-2
    Downsample (none after the last level) ─ Mid (ResBlock, self-attention, ResBlock) ─ GroupNorm, SiLU ─ conv_out
    to 2·latent_channels ─ quant_conv (SD's extra 1×1 conv). No skip connections: unlike the UNet, everything the
    decoder will know must pass through the small latent. `down` holds every level's layers in one nn.Sequential
    (layer k of level i at index i·(layers_per_block + 1) + k; sd_weights.vae_rules maps SD's names onto these).
    """

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        ch, p, g, eps = cfg.block_channels, cfg.patch_size, cfg.norm_groups, cfg.norm_eps
        down = AsymmetricDownsample if cfg.downsample_padding == "asymmetric" else Downsample
        self.patchify = nn.PixelUnshuffle(p) if p > 1 else nn.Identity()  # (3, H, W) -> (3·p², H/p, W/p)
        self.conv_in = nn.Conv2d(cfg.in_channels * p * p, ch[0], 3, padding=1)
        layers, c_in = [], ch[0]
        for i, c in enumerate(ch):
            for _ in range(cfg.layers_per_block):
                layers.append(ResBlock(c_in, c, groups=g, eps=eps))
                c_in = c
            if i < len(ch) - 1:
                layers.append(down(c_in))
        self.down = nn.Sequential(*layers)
        self.mid = MidBlock(c_in, groups=g, attention=cfg.mid_attention, eps=eps)
        self.norm_out = nn.GroupNorm(g, c_in, eps=eps)
        self.conv_out = nn.Conv2d(c_in, 2 * cfg.latent_channels, 3, padding=1)  # mean and log-variance
        m = 2 * cfg.latent_channels
        self.quant_conv = nn.Conv2d(m, m, 1) if cfg.quant_conv else nn.Identity()

    def forward(self, x):  # (B, 3, H, W)
        h = self.conv_in(self.patchify(x))  # (B, ch[0], H/p, W/p)
        h = self.mid(self.down(h))  # (B, ch[-1], H/f, W/f)
        return self.quant_conv(self.conv_out(F.silu(self.norm_out(h))))  # (B, 2·4, H/f, W/f)


class Decoder(nn.Module):
    """Latents (B, 4, h, w) -> image (B, 3, h·f, w·f), roughly in [-1, 1]: the encoder's mirror, one ResBlock wider.

    post_quant_conv ─ conv_in ─ Mid (ResBlock, self-attention, ResBlock) ─ per level, coarsest first:
    layers_per_block + 1 ResBlocks, then a nearest-neighbour Upsample and 3×3 conv (none after the finest) ─
    GroupNorm, SiLU ─ conv_out ─ unpatchify. The extra ResBlock per level is SD's layout too. The decoder alone is
    what lesson 04 fine-tunes (the scene_vae_decoder recipe), so the latents keep their meaning.
    """

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        ch, p, g, eps = cfg.block_channels, cfg.patch_size, cfg.norm_groups, cfg.norm_eps
        c = cfg.latent_channels
        self.post_quant_conv = nn.Conv2d(c, c, 1) if cfg.quant_conv else nn.Identity()
        self.conv_in = nn.Conv2d(cfg.latent_channels, ch[-1], 3, padding=1)
        self.mid = MidBlock(ch[-1], groups=g, attention=cfg.mid_attention, eps=eps)
        layers, c_in = [], ch[-1]
        for i in reversed(range(len(ch))):
            for _ in range(cfg.layers_per_block + 1):
                layers.append(ResBlock(c_in, ch[i], groups=g, eps=eps))
                c_in = ch[i]
            if i > 0:
                layers.append(Upsample(c_in))
        self.up = nn.Sequential(*layers)
        self.norm_out = nn.GroupNorm(g, c_in, eps=eps)
        self.conv_out = nn.Conv2d(c_in, cfg.in_channels * p * p, 3, padding=1)
        self.unpatchify = nn.PixelShuffle(p) if p > 1 else nn.Identity()  # (3·p², H/p, W/p) -> (3, H, W)

    def forward(self, z):  # (B, 4, h, w)
        h = self.mid(self.conv_in(self.post_quant_conv(z)))  # (B, ch[-1], h, w)
        h = self.up(h)  # (B, ch[0], h·f/p, w·f/p)
        return self.unpatchify(self.conv_out(F.silu(self.norm_out(h))))  # (B, 3, h·f, w·f)


class VAE(nn.Module):
    """encode(x) -> DiagonalGaussian over latents; decode(z) -> image; forward(x) -> (reconstruction, posterior)."""

    def __init__(self, config: VAEConfig | None = None):
        super().__init__()
        self.config = config = config or VAEConfig()
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        """Images (B, 3, H, W) in [-1, 1] (or uint8 in 0 … 255, converted) -> a Gaussian over latents (B, 4, H/8, W/8).

        Float pixels far outside [-1, 1] (0 … 255 floats, say) are refused in eval mode, where a learner calls this;
        in training mode the value check is skipped, so a training step never waits on it.
        """
        cfg, f = self.config, self.config.downsample_factor
        if isinstance(x, torch.Tensor) and x.dtype == torch.uint8:
            x = to_float(x)  # 0 … 255 -> [-1, 1]
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != cfg.in_channels:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"expected images of shape (B, {cfg.in_channels}, H, W), got {shape}")
        if x.shape[2] % f or x.shape[3] % f:
            raise ValueError(f"height and width must be multiples of {f} (the VAE's downsampling factor), "
                             f"got {tuple(x.shape[2:])}")
        check_float_tensor("images", x)
        if not self.training:
            check_pixel_range("images", x)
        return DiagonalGaussian(self.encoder(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (B, 4, h, w) -> images (B, 3, 8h, 8w), roughly in [-1, 1] (not clamped)."""
        c = self.config.latent_channels
        if not isinstance(z, torch.Tensor) or z.dim() != 4 or z.shape[1] != c:
            shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"expected latents of shape (B, {c}, h, w), got {shape}")
        check_float_tensor("latents", z)
        return self.decoder(z)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None):
        posterior = self.encode(x)
        return self.decode(posterior.sample(generator)), posterior


def vae_loss(model: VAE, batch, generator: torch.Generator, *, kl_weight: float = 1e-6,
             reconstruction: str = "mse") -> torch.Tensor:
    """Reconstruction error + kl_weight · KL, per pixel value: for the Trainer, via functools.partial.

    As SD's: loss = (Σ_pixels err(x, x̂) + w · KL) / (number of pixel values), so w means what SD's kl_weight does
    (SD: w = 1e-6, err = |x − x̂| + LPIPS, plus a GAN; we have neither LPIPS nor the GAN).
    err is (x − x̂)² by default, |x − x̂| with reconstruction="l1": squared error gave the better PSNR for the same
    training time.
    batch = (images,) in [-1, 1], or uint8 images in 0 … 255.
    """
    x = to_float(batch[0])  # uint8 0 … 255 -> -1 … 1
    recon, posterior = model(x, generator)
    if reconstruction == "mse":
        rec = (recon.float() - x).square().mean()  # mean over pixels and batch of (x − x̂)²
    elif reconstruction == "l1":
        rec = (recon.float() - x).abs().mean()  # mean of |x − x̂|
    else:
        raise ValueError(f"reconstruction must be 'l1' or 'mse', got {reconstruction!r}")
    return rec + kl_weight * posterior.kl().mean() / x[0].numel()  # KL: per example, then per pixel value


def decoder_loss(model: VAE, batch, generator: torch.Generator | None = None, *,
                 edge_weight: float = 0.0) -> torch.Tensor:
    """Fine-tune the decoder alone, as Stable Diffusion's released decoders were (ft-EMA, ft-MSE).

    The encoder only runs (no gradient), so every latent stays what it was, and so does every noise predictor
    trained on them: only the way latents are painted into pixels improves. The decoder reads the posterior's
    mode, the clean latent a sampler ends on. loss = (x − x̂)² + edge_weight · |∇x − ∇x̂|, the second term (on the
    differences between neighbouring pixels) asks for sharp edges; SD used LPIPS there, which needs a pretrained net.
    """
    x = to_float(batch[0])
    with torch.no_grad():
        z = model.encode(x).mode()
    recon = model.decode(z).float()
    loss = (recon - x).square().mean()
    if edge_weight:
        edges = zip(image_gradients(recon), image_gradients(x))
        loss = loss + edge_weight * sum((a - b).abs().mean() for a, b in edges)
    return loss
