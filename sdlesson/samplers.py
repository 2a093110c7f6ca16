"""Reverse diffusion: samplers that turn a predicted noise ε̂ into the next, less noisy x.

Model and sampler are apart, as in diffusers: a sampler holds only the noise math, so the loop is yours to read:

    sampler = DDIMSampler(schedule)
    sampler.set_timesteps(50)
    x = torch.randn(shape, generator=g)
    for t in sampler.timesteps:
        eps = model(x, t)
        x0 = sampler.predict_x0(eps, t, x)        # x̂_0: the clean image this step aims at (to show or to judge)
        x = sampler.step(eps, t, x, generator=g)  # x_{t'}: the next, less noisy sample

`predict_x0` is THE way to see x̂_0 (diffusers' `pred_original_sample`); `step` returns x_{t'} alone.
`sample(...)` is that loop with a progress bar, guidance and the intermediate steps kept.

Stable Diffusion as released samples with options the course's own models do not use (diffusers' names in brackets):

    DDIMSampler(NoiseSchedule("scaled_linear"), clip_sample=None, timestep_spacing="leading", steps_offset=1,
                final_alpha_one=False)    # 981, 961, …, 1 at 50 steps; the last step lands on ᾱ_0, not 1
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .schedule import NoiseSchedule

SPACINGS = ("linspace", "leading")


class Sampler:
    """What DDPM and DDIM share: a subset of the training timesteps and the ε -> x̂_0 estimate."""

    def __init__(self, schedule: NoiseSchedule, *, clip_sample: float | None = 1.0, timestep_spacing: str = "linspace",
                 steps_offset: int = 0, final_alpha_one: bool = True):
        if timestep_spacing not in SPACINGS:
            raise ValueError(f"timestep_spacing must be one of {', '.join(SPACINGS)}, got {timestep_spacing!r}")
        if not isinstance(steps_offset, int) or not 0 <= steps_offset < schedule.num_timesteps:
            raise ValueError(f"steps_offset must be an int in [0, {schedule.num_timesteps}), got {steps_offset!r}")
        self.schedule = schedule
        self.clip_sample = clip_sample  # clamp the x̂_0 estimate to [-c, c]: pixels live in [-1, 1]; None for latents
        self.timestep_spacing = timestep_spacing  # "linspace": T-1 … 0 evenly (the course); "leading": SD's k·T/n
        self.steps_offset = steps_offset  # added to "leading" timesteps: SD uses 1, so 981 … 1 rather than 980 … 0
        # ᾱ_{t'} after the last step: 1 (the clean image) or ᾱ_0 as SD was released [set_alpha_to_one=False]
        self.final_alpha_one = final_alpha_one
        self._a_bar = schedule.alphas_cumprod.tolist()  # ᾱ_t as host floats: no device sync in the loop
        self.set_timesteps(schedule.num_timesteps - (steps_offset if timestep_spacing == "leading" else 0))

    def set_timesteps(self, num_steps: int) -> None:
        """Use `num_steps` timesteps, descending: evenly from T-1 to 0 ("linspace") or k·⌊T/n⌋ + offset ("leading")."""
        T = self.schedule.num_timesteps
        if not isinstance(num_steps, int) or isinstance(num_steps, bool) or not 1 <= num_steps <= T:
            raise ValueError(f"num_steps must be an int from 1 to T = {T}, got {num_steps!r}")
        if self.timestep_spacing == "linspace":
            self.timesteps = torch.linspace(T - 1, 0, num_steps, dtype=torch.float64).round().long()  # descending
        else:  # "leading" (DDIM paper, SD): t_k = k ⌊T/n⌋ + offset, k = n-1 … 0
            ratio = T // num_steps
            self.timesteps = torch.arange(num_steps - 1, -1, -1) * ratio + self.steps_offset
            if self.timesteps[0] >= T:  # e.g. 1000 steps with offset 1 would ask for t = 1000 (diffusers allows it)
                raise ValueError(f"num_steps = {num_steps} with steps_offset = {self.steps_offset} would start at "
                                 f"t = {int(self.timesteps[0])}, past T - 1 = {T - 1}; use fewer steps")
        ts = self.timesteps.tolist()
        self._prev = dict(zip(ts, ts[1:] + [-1]))
        final = 1.0 if self.final_alpha_one else self._a_bar[0]  # ᾱ_{-1}: 1, or ᾱ_0 [set_alpha_to_one=False]
        # (ᾱ_t, ᾱ_{t'}, t') per timestep, computed once here, on the host
        self._alphas_at = {t: (self._a_bar[t], self._a_bar[p] if p >= 0 else final, p) for t, p in self._prev.items()}

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    def prev_timestep(self, t) -> int:
        """The timestep after t in this sampler's sequence; -1 after the last (the clean image)."""
        return self._alphas(t)[2]

    def _alphas(self, t) -> tuple[float, float, int]:
        """(ᾱ_t, ᾱ_{t'}, t') for one of this sampler's timesteps."""
        try:
            return self._alphas_at[int(t)]
        except KeyError:
            raise ValueError(f"t = {int(t)} is not one of this sampler's {self.num_steps} timesteps; "
                             "call set_timesteps first") from None

    def predict_x0(self, eps: torch.Tensor, t, x: torch.Tensor) -> torch.Tensor:
        """x̂_0 = (x_t - sqrt(1 - ᾱ_t) ε̂) / sqrt(ᾱ_t): the clean image the noise prediction implies."""
        a_bar = self._a_bar[int(t)]
        x0 = (x - (1 - a_bar) ** 0.5 * eps) / a_bar**0.5
        return x0.clamp(-self.clip_sample, self.clip_sample) if self.clip_sample is not None else x0

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
        a_bar, a_bar_prev, t_prev = self._alphas(t)
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

    def __init__(self, schedule: NoiseSchedule, *, eta: float = 0.0, **options):
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        self.eta = eta
        super().__init__(schedule, **options)

    def step(self, model_output, t, x, *, generator=None):
        a_bar, a_bar_prev, t_prev = self._alphas(t)
        x0 = self.predict_x0(model_output, t, x)
        # Recompute ε̂ from the (possibly clipped) x̂_0, so both terms describe the same image.
        eps = (x - a_bar**0.5 * x0) / (1 - a_bar) ** 0.5
        sigma = self.eta * ((1 - a_bar_prev) / (1 - a_bar)) ** 0.5 * (1 - a_bar / a_bar_prev) ** 0.5
        x_prev = a_bar_prev**0.5 * x0 + max(1 - a_bar_prev - sigma**2, 0.0) ** 0.5 * eps
        if sigma > 0 and t_prev >= 0:
            x_prev = x_prev + sigma * _noise_like(x, generator)
        return x_prev


SAMPLERS = {"ddpm": DDPMSampler, "ddim": DDIMSampler}


def make_sampler(name: str, schedule: NoiseSchedule, **kwargs) -> Sampler:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}: expected one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name](schedule, **kwargs)


@torch.no_grad()
def sample(model, sampler: Sampler, shape, *, num_steps: int = 50, generator: torch.Generator | None = None,
           cond: dict | None = None, uncond: dict | None = None, guidance_scale: float = 1.0,
           batch_guidance: bool = False, latents: torch.Tensor | None = None,
           keep_every: int = 0, progress: bool = True, device=None):
    """Run reverse diffusion from pure noise. Returns x_0, or (x_0, [x_t kept every `keep_every` steps]).

    cond / uncond: keyword arguments for the model (e.g. {"class_labels": y}); with guidance_scale != 1 the model is
    run on both and ε̂ = ε̂_uncond + s (ε̂_cond - ε̂_uncond) (classifier-free guidance).
    batch_guidance: run the two guidance passes as one forward on a doubled batch (cat cond + uncond), as diffusers
    does; off by default because on the course's small models on a CPU two passes measured faster
    (bench/generate.py --cfg-mode). Same result either way, up to float rounding.
    latents: the starting x_T (shape `shape`) instead of drawing it from `generator`.
    """
    if guidance_scale < 0:
        raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale}")
    device = device or next(model.parameters()).device
    sampler.set_timesteps(num_steps)
    model.eval()
    if latents is not None:
        if tuple(latents.shape) != tuple(shape):
            raise ValueError(f"latents must have shape {tuple(shape)}, got {tuple(latents.shape)}")
        x = latents.to(device=device, dtype=torch.float32)
    else:
        x = _noise_like(torch.empty(shape, device=device), generator)  # x_T ~ N(0, I)
    guided = guidance_scale != 1.0 and uncond is not None
    if guided and batch_guidance:  # one forward on [cond; uncond]: (2N, ...) for every model input
        both = {k: torch.cat([v, uncond[k]]) for k, v in (cond or {}).items()}
    kept = []
    n = shape[0]
    dtype = next(model.parameters()).dtype  # fp16 models take fp16 inputs; the sampler's arithmetic stays fp32
    for i, t in enumerate(tqdm(sampler.timesteps, disable=not progress, desc="sampling", leave=False)):
        t_batch = torch.full((n,), int(t), device=device, dtype=torch.long)  # host int -> device: no sync
        xin = x.to(dtype)
        if guided and batch_guidance:
            eps, eps_uncond = model(torch.cat([xin, xin]), t_batch.repeat(2), **both).float().chunk(2)
        else:
            eps = model(xin, t_batch, **(cond or {})).float()
            if guided:
                eps_uncond = model(xin, t_batch, **uncond).float()
        if guided:
            eps = eps_uncond + guidance_scale * (eps - eps_uncond)  # ε̂ = ε̂_u + s (ε̂_c - ε̂_u)
        x = sampler.step(eps, t, x, generator=generator)
        if keep_every and (i % keep_every == 0 or i == sampler.num_steps - 1):
            kept.append(x.cpu())
    return (x, kept) if keep_every else x
