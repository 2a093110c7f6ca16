"""Noise schedules, forward diffusion, and the loss a noise predictor is trained with.

Equation numbers are those of DDPM (Ho, Jain & Abbeel 2020, arXiv:2006.11239). The forward process adds a little
Gaussian noise at each of T steps:

    q(x_t | x_{t-1}) = N(sqrt(1 - β_t) x_{t-1}, β_t I)                                          (DDPM eq. 2)

and, because Gaussians compose, jumps straight to any step in closed form:

    q(x_t | x_0) = N(sqrt(ᾱ_t) x_0, (1 - ᾱ_t) I),   ᾱ_t = ∏_{s<=t} (1 - β_s)                    (DDPM eq. 4)

A network ε_θ learns to predict the noise: L_simple = E_{t, x_0, ε} || ε - ε_θ(x_t, t) ||²     (DDPM eq. 14)

Timesteps are 0-indexed, t = 0 … T-1, as in diffusers: t = 0 is the first noising step.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .checks import check_number
from .text import unconditional

SCHEDULES = ("linear", "cosine", "scaled_linear")


def make_betas(name: str, num_timesteps: int = 1000) -> torch.Tensor:
    """β_1 … β_T for a named schedule, as float64, shape (T,)."""
    if not isinstance(num_timesteps, int) or num_timesteps < 1:
        raise ValueError(f"num_timesteps must be a positive int, got {num_timesteps!r}")
    T = num_timesteps
    if name == "linear":
        # DDPM (Ho et al. 2020): β rises linearly from 1e-4 to 0.02.
        return torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    if name == "scaled_linear":
        # Stable Diffusion: linear in sqrt(β), from 0.00085 to 0.012.
        return torch.linspace(0.00085**0.5, 0.012**0.5, T, dtype=torch.float64) ** 2
    if name == "cosine":
        # Nichol & Dhariwal 2021: ᾱ(t) = f(t)/f(0), f(t) = cos²((t/T + s)/(1 + s) · π/2), s = 0.008;
        # β_t = 1 - ᾱ(t+1)/ᾱ(t), clipped at 0.999 so the last step is not infinitely noisy.
        s = 0.008
        steps = torch.arange(T + 1, dtype=torch.float64) / T
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        return (1 - f[1:] / f[:-1]).clamp(max=0.999)
    raise ValueError(f"unknown schedule {name!r}: expected one of {', '.join(SCHEDULES)}")


class NoiseSchedule:
    """A noise schedule: β_t, α_t = 1 - β_t, ᾱ_t and the forward process built on them.

    >>> schedule = NoiseSchedule("scaled_linear")
    >>> x_t = schedule.add_noise(x0, noise, t)      # (B, C, H, W), t: (B,) ints in [0, T)
    """

    def __init__(self, name: str = "linear", *, num_timesteps: int = 1000):
        self.name = name
        self.betas = make_betas(name, num_timesteps)  # β_t, float64 (T,)
        self.alphas = 1.0 - self.betas  # α_t = 1 - β_t
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)  # ᾱ_t = ∏_{s<=t} α_s

    @property
    def num_timesteps(self) -> int:
        return len(self.betas)

    def __repr__(self) -> str:
        return f"NoiseSchedule({self.name!r}, num_timesteps={self.num_timesteps})"

    def check_timesteps(self, t) -> torch.Tensor:
        """t as a long tensor, or a clear error if any t is outside [0, T)."""
        t = torch.as_tensor(t)
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"timesteps must be integers in [0, {self.num_timesteps}), got dtype {t.dtype}")
        t = t.long()
        if t.numel() and (t.min() < 0 or t.max() >= self.num_timesteps):
            raise ValueError(
                f"timesteps must lie in [0, {self.num_timesteps}) for this schedule, "
                f"got values from {int(t.min())} to {int(t.max())}"
            )
        return t

    def _check_batch(self, t, x: torch.Tensor) -> None:
        """One timestep for the whole batch, or one per image: (), (1,) or (B,)."""
        shape = tuple(self.check_timesteps(t).shape)
        if shape not in ((), (1,), (x.shape[0],)):
            raise ValueError(f"t must be one timestep or one per image, shape ({x.shape[0]},), got shape {shape} "
                             f"for images of shape {tuple(x.shape)}")

    def _at(self, values: torch.Tensor, t, like: torch.Tensor) -> torch.Tensor:
        """values[t], shaped to broadcast over `like`: (B,) -> (B, 1, 1, 1)."""
        t = self.check_timesteps(t).cpu()
        out = values[t].to(device=like.device, dtype=like.dtype)
        return out.reshape(out.shape + (1,) * (like.dim() - out.dim()))

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
        """Forward diffusion in closed form: x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε (DDPM eq. 4, reparametrised)."""
        if noise.shape != x0.shape:
            raise ValueError(f"noise must have the shape of x0 {tuple(x0.shape)}, got {tuple(noise.shape)}")
        self._check_batch(t, x0)
        a_bar = self._at(self.alphas_cumprod, t, x0)
        return a_bar.sqrt() * x0 + (1 - a_bar).sqrt() * noise

    def step_forward(self, x_prev: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
        """One forward step: x_t = sqrt(1 - β_t) x_{t-1} + sqrt(β_t) ε (DDPM eq. 2; x_{-1} is the clean image)."""
        self._check_batch(t, x_prev)
        beta = self._at(self.betas, t, x_prev)
        return (1 - beta).sqrt() * x_prev + beta.sqrt() * noise

    def snr(self, t=None) -> torch.Tensor:
        """Signal-to-noise ratio ᾱ_t / (1 - ᾱ_t), for given t or for every t."""
        a_bar = self.alphas_cumprod if t is None else self.alphas_cumprod[self.check_timesteps(t)]
        return a_bar / (1 - a_bar)

    def posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t, t_prev=None):
        """Mean and variance of q(x_{t'} | x_t, x_0), the Gaussian the reverse step aims at (DDPM eqs. 6-7).

        t' is t - 1 by default; a sampler that skips steps passes its own t' < t (-1 means the clean image).
            β'    = 1 - ᾱ_t / ᾱ_{t'}
            mean  = sqrt(ᾱ_{t'}) β' / (1 - ᾱ_t) · x_0  +  sqrt(1 - β') (1 - ᾱ_{t'}) / (1 - ᾱ_t) · x_t
            var   = (1 - ᾱ_{t'}) / (1 - ᾱ_t) · β'
        """
        t = self.check_timesteps(t)
        t_prev = t - 1 if t_prev is None else torch.as_tensor(t_prev).long()
        if (t_prev >= t).any() or (t_prev < -1).any():
            raise ValueError("t_prev must satisfy -1 <= t_prev < t")
        a_bar = self._at(self.alphas_cumprod, t, x_t)
        ones = torch.ones_like(self.alphas_cumprod[:1])
        padded = torch.cat([ones, self.alphas_cumprod])  # padded[t + 1] = ᾱ_t, with ᾱ_{-1} = 1
        a_bar_prev = self._at(padded, t_prev + 1, x_t)
        beta = 1 - a_bar / a_bar_prev
        mean = (a_bar_prev.sqrt() * beta * x0 + (1 - beta).sqrt() * (1 - a_bar_prev) * x_t) / (1 - a_bar)
        var = (1 - a_bar_prev) / (1 - a_bar) * beta
        return mean, var


# --- the loss built on the schedule ------------------------------------------------------------------------------

class DiffusionLoss:
    """ε-prediction loss: pick t, noise x_0 to x_t in closed form, ask the model for ε, compare by mean squared error.

    batch = (x0,) or (x0, cond) where cond is class labels (B,) or a (context, context_mask) pair.
    p_uncond drops the condition for that fraction of examples, for classifier-free guidance.
    """

    def __init__(self, schedule: NoiseSchedule, *, p_uncond: float = 0.0):
        self.schedule = schedule
        self.p_uncond = check_number("p_uncond", p_uncond, low=0, high=1)  # the share of dropped conditions

    def __call__(self, model, batch, generator: torch.Generator, *,
                 shard: tuple[int, int] | None = None) -> torch.Tensor:
        """shard = (first, total): the batch is examples first … first + B of a global batch of `total` (several
        processes); the draws are the whole global batch's, so each example gets the same t and ε for any split."""
        x0 = batch[0]
        B = x0.shape[0]
        first, total = shard or (0, B)
        mine = slice(first, first + B)
        t = torch.randint(0, self.schedule.num_timesteps, (total,), generator=generator)[mine].to(x0.device)
        noise = torch.randn((total, *x0.shape[1:]), generator=generator)[mine].to(x0.device)
        x_t = self.schedule.add_noise(x0, noise, t)  # x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε   (DDPM eq. 4)
        drop = (torch.rand(total, generator=generator)[mine] < self.p_uncond).to(x0.device)
        pred = model(x_t, t, **condition_kwargs(model, batch[1:], drop))
        return F.mse_loss(pred.float(), noise)  # || ε - ε_θ(x_t, t) ||²   (DDPM eq. 14, L_simple)


def condition_kwargs(model, cond: tuple, drop: torch.Tensor) -> dict:
    """Model keyword arguments for the condition in a batch, with dropped examples made unconditional."""
    if not cond:
        return {}
    if len(cond) == 1:  # class labels; the extra index num_classes means "no class"
        labels = torch.where(drop, getattr(model, "module", model).config.num_classes, cond[0])  # .module: DDP's
        return {"class_labels": labels}
    context, mask = cond  # text: dropped captions become the empty prompt (all tokens masked out but <bos>)
    mask = torch.where(drop[:, None], unconditional(context, mask)[1], mask)
    return {"context": context, "context_mask": mask}


@torch.no_grad()
def loss_per_timestep(model, schedule: NoiseSchedule, x0: torch.Tensor, timesteps, *, seed: int = 0) -> list[float]:
    """The noise-prediction error || ε - ε_θ(x_t, t) ||² (mean over x0) at each of `timesteps`: which noise levels
    a model finds hard. One seeded generator draws every t's noise, on the CPU; the model runs where it lives."""
    g = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    out = []
    for t in timesteps:
        noise = torch.randn(x0.shape, generator=g)
        x_t = schedule.add_noise(x0, noise, torch.full((len(x0),), t))
        pred = model(x_t.to(device), torch.full((len(x0),), t, device=device))
        out.append(F.mse_loss(pred.cpu(), noise).item())
    return out
