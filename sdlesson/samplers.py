"""Reverse diffusion: samplers that turn a predicted noise ε̂ into the next, less noisy x.

Model and sampler are apart, as in diffusers: a sampler holds only the noise math, so the loop is yours to read:

    sampler = DDIMSampler(schedule)
    sampler.set_timesteps(50)
    x = torch.randn(shape, generator=g)
    for t in sampler.timesteps:
        eps = model(x, t)
        x0 = sampler.predict_x0(eps, t, x)   # the clean image this ε̂ implies, to look at along the way
        x = sampler.step(eps, t, x, generator=g)

`sample(...)` is that loop with a progress bar, guidance and the intermediate steps kept.

Stable Diffusion's sampling as released is a configuration:
    DDIMSampler(NoiseSchedule("scaled_linear"), clip_sample=None, spacing="leading", steps_offset=1,
                set_alpha_to_one=False)    # 981, 961, …, 1 at 50 steps; the last step lands on ᾱ_0, not 1
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .checks import check_number
from .schedule import NoiseSchedule


SPACINGS = ("linspace", "leading")


class Sampler:
    """What DDPM and DDIM share: a subset of the training timesteps and the ε -> x̂_0 estimate."""

    def __init__(self, schedule: NoiseSchedule, *, clip_sample: float | None = 1.0, spacing: str = "linspace",
                 steps_offset: int = 0, set_alpha_to_one: bool = True):
        if spacing not in SPACINGS:
            raise ValueError(f"spacing must be one of {', '.join(SPACINGS)}, got {spacing!r}")
        self.spacing = spacing  # linspace: T-1 … 0 evenly, rounded (the course's); leading: 0, T/n, 2T/n, … (SD's)
        self.steps_offset = steps_offset  # added to every timestep under leading spacing (SD: 1, so 981 … 1)
        self.set_alpha_to_one = set_alpha_to_one  # the last step lands on ᾱ = 1 (the clean image) or on ᾱ_0 (SD)
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
        self.schedule = schedule
        if clip_sample is not None:  # None: no clamping (latents); else x̂_0 is clamped to [-c, c], c > 0
            clip_sample = check_number("clip_sample", clip_sample, low=0, low_open=True)
        self.clip_sample = clip_sample  # clamp the x̂_0 estimate to [-c, c]: pixels live in [-1, 1]; None for latents
        self.set_timesteps(schedule.num_timesteps - (steps_offset if spacing == "leading" else 0))  # every step

    def set_timesteps(self, num_steps: int) -> None:
        """Use `num_steps` timesteps, descending: linspace spacing runs T-1 … 0; leading runs
        (n-1)·T/n + offset … offset in steps of T/n (SD at 50 steps: 981, 961, …, 1)."""
        T = self.schedule.num_timesteps
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or not 1 <= num_steps <= T:
            raise ValueError(f"num_steps must be an int from 1 to T = {T}, got {num_steps!r}")
        if self.spacing == "leading":
            self.timesteps = torch.arange(num_steps - 1, -1, -1) * (T // num_steps) + self.steps_offset
            if self.timesteps[0] >= T:
                raise ValueError(f"num_steps = {num_steps} with steps_offset = {self.steps_offset} reaches t = "
                                 f"{int(self.timesteps[0])}, past T - 1 = {T - 1}; use fewer steps")
        else:
            self.timesteps = torch.linspace(T - 1, 0, num_steps, dtype=torch.float64).round().long()  # descending
        self._prev = {int(t): int(p) for t, p in zip(self.timesteps, list(self.timesteps[1:]) + [-1])}

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    def prev_timestep(self, t) -> int:
        """The timestep after t in this sampler's sequence; -1 after the last (the clean image)."""
        t = int(t)
        if t not in self._prev:
            raise ValueError(f"t = {t} is not one of this sampler's {self.num_steps} timesteps; call set_timesteps first")
        return self._prev[t]

    def _alphas(self, t: int, x: torch.Tensor):
        a = self.schedule.alphas_cumprod
        t_prev = self.prev_timestep(t)
        a_bar = a[t].item()
        final = 1.0 if self.set_alpha_to_one else a[0].item()  # ᾱ_{-1} = 1, the clean image; or ᾱ_0, as SD
        a_bar_prev = a[t_prev].item() if t_prev >= 0 else final
        return a_bar, a_bar_prev, t_prev

    def predict_x0(self, eps: torch.Tensor, t, x: torch.Tensor) -> torch.Tensor:
        """x̂_0 = (x_t - sqrt(1 - ᾱ_t) ε̂) / sqrt(ᾱ_t): the clean image the noise prediction implies."""
        a_bar = self.schedule.alphas_cumprod[int(t)].item()
        x0 = (x - (1 - a_bar) ** 0.5 * eps) / a_bar**0.5
        return x0.clamp(-self.clip_sample, self.clip_sample) if self.clip_sample is not None else x0

    # Minimal, for img2img and inpainting (branch knobs); the samplers redesign's add_noise replaces it at merge.
    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
        """x_t = √ᾱ_t x_0 + √(1 - ᾱ_t) ε at one of this sampler's timesteps: where img2img's chain starts."""
        return self.schedule.add_noise(x0, noise, torch.tensor([int(t)]))

    def step(self, model_output, t, x, *, generator=None):  # pragma: no cover - overridden
        raise NotImplementedError


def _noise_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    # Drawn on the generator's device (the CPU by default) and moved, so a seed gives the same images on any device.
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=torch.float32).to(x.device, x.dtype)


class DDPMSampler(Sampler):
    """Ancestral sampling (Ho et al. 2020): sample x_{t'} from the posterior q(x_{t'} | x_t, x̂_0).

    With fewer steps than T it uses the respaced schedule: β' = 1 - ᾱ_t / ᾱ_{t'} between consecutive chosen steps.
    """

    def step(self, model_output, t, x, *, generator=None):
        a_bar, a_bar_prev, t_prev = self._alphas(t, x)
        beta = 1 - a_bar / a_bar_prev  # β' = 1 - ᾱ_t / ᾱ_{t'}
        x0 = self.predict_x0(model_output, t, x)
        # μ̃ = sqrt(ᾱ_{t'}) β' / (1 - ᾱ_t) · x̂_0 + sqrt(1 - β') (1 - ᾱ_{t'}) / (1 - ᾱ_t) · x_t
        mean = (a_bar_prev**0.5 * beta * x0 + (1 - beta) ** 0.5 * (1 - a_bar_prev) * x) / (1 - a_bar)
        if t_prev < 0:
            return mean  # the last step returns the mean: no noise is added to the final image
        var = (1 - a_bar_prev) / (1 - a_bar) * beta  # σ² = β̃ = (1 - ᾱ_{t'}) / (1 - ᾱ_t) · β'
        return mean + var**0.5 * _noise_like(x, generator)


class DDIMSampler(Sampler):
    """DDIM (Song et al. 2021): η = 0 is deterministic; η = 1 matches DDPM's ancestral step.

    x_{t'} = sqrt(ᾱ_{t'}) x̂_0 + sqrt(1 - ᾱ_{t'} - σ²) ε̂ + σ z,   σ = η sqrt((1 - ᾱ_{t'}) / (1 - ᾱ_t)) sqrt(1 - ᾱ_t / ᾱ_{t'})
    """

    def __init__(self, schedule: NoiseSchedule, *, eta: float = 0.0, clip_sample: float | None = 1.0, **spacing):
        self.eta = check_number("eta", eta, low=0)
        super().__init__(schedule, clip_sample=clip_sample, **spacing)  # spacing, steps_offset, set_alpha_to_one

    def step(self, model_output, t, x, *, generator=None):
        a_bar, a_bar_prev, t_prev = self._alphas(t, x)
        x0 = self.predict_x0(model_output, t, x)
        # Recompute ε̂ from the (possibly clipped) x̂_0, so both terms describe the same image.
        eps = (x - a_bar**0.5 * x0) / (1 - a_bar) ** 0.5
        sigma = self.eta * ((1 - a_bar_prev) / (1 - a_bar)) ** 0.5 * (1 - a_bar / a_bar_prev) ** 0.5
        x_prev = a_bar_prev**0.5 * x0 + max(1 - a_bar_prev - sigma**2, 0.0) ** 0.5 * eps
        if sigma > 0:  # (zero at the last step when it lands on ᾱ = 1; SD lands on ᾱ_0 and adds a little)
            x_prev = x_prev + sigma * _noise_like(x, generator)
        return x_prev


SAMPLERS = {"ddpm": DDPMSampler, "ddim": DDIMSampler}


def make_sampler(name: str, schedule: NoiseSchedule, **kwargs) -> Sampler:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}: expected one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name](schedule, **kwargs)


def _cat_kwargs(a: dict, b: dict) -> dict:
    """Two sets of model keyword arguments -> one, each tensor stacked on the batch: [cond; uncond]."""
    if a.keys() != b.keys():
        raise ValueError(f"cond and uncond must name the same model arguments, got {sorted(a)} and {sorted(b)}")
    return {k: torch.cat([a[k], b[k]]) for k in a}


@torch.no_grad()
def sample(model, sampler: Sampler, shape, *, num_steps: int = 50, generator: torch.Generator | None = None,
           cond: dict | None = None, uncond: dict | None = None, guidance_scale: float = 1.0,
           keep_every: int = 0, progress: bool = True, device=None, latents: torch.Tensor | None = None,
           batch_guidance: bool = True):
    """Run reverse diffusion from pure noise. Returns x_0, or (x_0, [x_t kept every `keep_every` steps]).

    cond / uncond: keyword arguments for the model (e.g. {"class_labels": y}); with guidance_scale != 1 the model is
    run on both and ε̂ = ε̂_uncond + s (ε̂_cond - ε̂_uncond) (classifier-free guidance). batch_guidance runs the two
    as one batch of 2B (one forward pass: faster wherever the model is not already saturating the device).
    latents: the starting noise x_T (shape `shape`), in place of a draw from `generator`.
    """
    guidance_scale = check_number("guidance_scale", guidance_scale, low=0)
    if guidance_scale != 1.0 and uncond is None and cond:
        raise ValueError("guidance_scale != 1 needs `uncond` (the model's keyword arguments without the condition)")
    param = next(model.parameters())
    device, dtype = device or param.device, param.dtype  # the model may run in fp16 / bf16; the sampler's math in fp32
    sampler.set_timesteps(num_steps)
    model.eval()
    if latents is not None:
        if tuple(latents.shape) != tuple(shape):
            raise ValueError(f"latents must have the shape {tuple(shape)}, got {tuple(latents.shape)}")
        x = latents.to(device, torch.float32)
    else:
        x = _noise_like(torch.empty(shape, device=device), generator)  # x_T ~ N(0, I)
    guided = guidance_scale != 1.0 and uncond is not None
    both = _cat_kwargs(cond or {}, uncond) if guided and batch_guidance else None
    kept = []
    for i, t in enumerate(tqdm(sampler.timesteps, disable=not progress, desc="sampling", leave=False)):
        t_batch = torch.full((shape[0],), int(t), device=device, dtype=torch.long)
        if both is not None:  # one forward pass on [x; x] with [cond; uncond]
            eps, eps_uncond = model(torch.cat([x, x]).to(dtype), torch.cat([t_batch, t_batch]), **both).chunk(2)
        else:
            eps = model(x.to(dtype), t_batch, **(cond or {}))
            eps_uncond = model(x.to(dtype), t_batch, **uncond) if guided else None
        if guided:
            eps = eps_uncond + guidance_scale * (eps - eps_uncond)  # ε̂ = ε̂_u + s (ε̂_c − ε̂_u)
        x = sampler.step(eps.float(), t, x, generator=generator)
        if keep_every and (i % keep_every == 0 or i == sampler.num_steps - 1):
            kept.append(x.cpu())
    return (x, kept) if keep_every else x
