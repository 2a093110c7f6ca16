"""Reverse diffusion: samplers that turn a predicted noise ε̂ into the next, less noisy x.

A sampler is a plan and a rule. The plan is the list of noise levels it visits, printable and plottable:

    sampler = make_sampler("euler", schedule, karras=True)
    sampler.set_timesteps(20)
    sampler.sigmas      # σ_0 > σ_1 > … > σ_20 = 0, with σ = sqrt((1 - ᾱ) / ᾱ): noise over signal
    sampler.timesteps   # the (possibly fractional) timesteps the UNet is called with, one per model call

The rule is `step`, which goes from level i to level i + 1. Model and sampler are apart, as in diffusers, so the
loop is yours to read — the same loop for every sampler:

    x = torch.randn(shape, generator=g)                  # x_T ~ N(0, I), for every sampler
    for t in sampler.timesteps:
        eps = model(x, t)
        x0 = sampler.predict_x0(eps, t, x)   # the clean image this ε̂ implies, to look at along the way
        x = sampler.step(eps, t, x, generator=g)

`sample(...)` is that loop with a progress bar, guidance, a per-step callback and the intermediate steps kept.

Two spaces, one x. The loop's x is always the model's own, variance-preserving x_t = sqrt(ᾱ) x_0 + sqrt(1 - ᾱ) ε,
so the UNet never needs its input scaled and N(0, I) noise starts any sampler (diffusers' Euler-family schedulers
instead keep x_σ and ask for `scale_model_input`). Euler, Heun and DPM-Solver++ think in σ-space, as k-diffusion
does: x_σ = x_t / sqrt(ᾱ) = x_0 + σ ε, where the probability-flow ODE is simply dx_σ/dσ = ε̂ = (x_σ - x̂_0) / σ.
They convert in, step, and convert back. One consequence worth seeing: Euler's step in σ-space,
x_σ' = x_σ + (σ' - σ) ε̂ = x̂_0 + σ' ε̂, is DDIM's η = 0 step sqrt(ᾱ') x̂_0 + sqrt(1 - ᾱ') ε̂ divided by sqrt(ᾱ'):
on the same plan Euler *is* DDIM (η = 0), and Euler ancestral is DDIM with η = 1, i.e. DDPM (tests show both).

The samplers (`SAMPLERS`; model calls per level in `sampler.order`):
    ddpm      ancestral posterior sampling (Ho et al. 2020)
    ddim      η = 0 deterministic, η = 1 DDPM (Song et al. 2021)
    euler     Euler's method on the ODE (Karras et al. 2022, Algorithm 1 without churn)
    euler_a   Euler ancestral: step down to σ_down, add fresh noise back up to σ' (k-diffusion)
    heun      Heun's method, 2 model calls per level: Euler's guess, then the trapezoid rule (Karras et al. 2022)
    dpmpp_2m  DPM-Solver++(2M): exact in the linear part, second order from the previous step's x̂_0 (Lu et al. 2022)
The four σ-space samplers take karras=True: levels spaced evenly in σ^(1/7) (Karras et al. 2022, ρ = 7), which
spends more steps at low noise. Their plans equal diffusers' EulerDiscrete, EulerAncestralDiscrete, HeunDiscrete and
DPMSolverMultistep schedulers' (`timesteps` and `sigmas`, tested; diffusers' Euler ancestral has no Karras option).

Starting mid-plan (img2img, inpainting). `sampler.add_noise(x0, noise, t)` is x_t at one of the sampler's timesteps
t (the plan's σ at t: for Karras plans it is not the training schedule's σ at round(t)). img2img noises the init
latents to `sampler.timesteps[start]` and loops over `sampler.timesteps[start:]`, where start = order · k skips the
first k levels (diffusers' `t_start * scheduler.order`; for Heun, an even index). A step finds its place in the plan
from t: the call after the previous one when its timestep is t, else where t starts a level (for a timestep listed
twice, the second entry, as diffusers' `index_for_timestep`) — so a loop starting mid-plan starts fresh: DPM-Solver++
takes a first-order step first (it has no previous x̂_0), Heun starts with Euler's guess. `set_timesteps` clears the
memory. Steps of one plan must run in order; a step that is not the one after the last restarts the memory.

Stable Diffusion's sampling as released is a configuration:
    DDIMSampler(NoiseSchedule("scaled_linear"), clip_sample=None, spacing="leading", steps_offset=1,
                set_alpha_to_one=False)    # 981, 961, …, 1 at 50 steps; the last step lands on ᾱ_0, not 1
"""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from .checks import check_number
from .schedule import NoiseSchedule

SPACINGS = ("linspace", "leading", "trailing")


# --- plans: lists of noise levels ------------------------------------------------------------------------------

def schedule_sigmas(schedule: NoiseSchedule) -> torch.Tensor:
    """σ_t = sqrt((1 - ᾱ_t) / ᾱ_t) for t = 0 … T-1 (float64): the noise-to-signal ratio of x_t."""
    a = schedule.alphas_cumprod
    return ((1 - a) / a).sqrt()


def spaced_timesteps(spacing: str, n: int, T: int, steps_offset: int = 0) -> torch.Tensor:
    """n timesteps, descending, float64 (diffusers' `timestep_spacing`; Lin et al. 2023, Table 2):
    linspace: T-1 … 0 evenly (fractional); leading: (n-1)·⌊T/n⌋ … 0, plus the offset; trailing: T-1 down by T/n."""
    if spacing == "linspace":
        return torch.linspace(0, T - 1, n, dtype=torch.float64).flip(0)
    if spacing == "leading":
        return torch.arange(n - 1, -1, -1, dtype=torch.float64) * (T // n) + steps_offset
    return torch.arange(T, 0, -T / n, dtype=torch.float64).round() - 1  # trailing


def sigma_at(t: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """σ at fractional timesteps: linear between the training steps' σ (diffusers' np.interp)."""
    low = t.floor().long().clamp(0, len(sigmas) - 2)
    w = t - low
    return (1 - w) * sigmas[low] + w * sigmas[low + 1]


def timestep_at(sigma: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """The fractional timestep whose σ is `sigma`: linear in log σ between training steps (diffusers' _sigma_to_t)."""
    log_sigmas, log_sigma = sigmas.log(), sigma.clamp(min=1e-10).log()
    low = (torch.searchsorted(log_sigmas, log_sigma, right=True) - 1).clamp(0, len(sigmas) - 2)
    w = ((log_sigma - log_sigmas[low]) / (log_sigmas[low + 1] - log_sigmas[low])).clamp(0, 1)
    return low + w


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> torch.Tensor:
    """n levels evenly spaced in σ^(1/ρ) from σ_max down to σ_min (Karras et al. 2022, eq. 5; ρ = 7)."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    return (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


def _noise_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    # Drawn on the generator's device (the CPU by default) and moved, so a seed gives the same images on any device.
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=torch.float32).to(x.device, x.dtype)


# --- DDPM and DDIM: steps between training timesteps, in the model's own x_t ---------------------------------------

class Sampler:
    """What DDPM and DDIM share: a subset of the training timesteps and the ε -> x̂_0 estimate."""

    order = 1  # model calls per level (Heun: 2)

    def __init__(self, schedule: NoiseSchedule, *, clip_sample: float | None = 1.0, spacing: str = "linspace",
                 steps_offset: int = 0, set_alpha_to_one: bool = True):
        self._setup(schedule, clip_sample, spacing, steps_offset)
        self.set_alpha_to_one = set_alpha_to_one  # the last step lands on ᾱ = 1 (the clean image) or on ᾱ_0 (SD)
        self.set_timesteps(schedule.num_timesteps - (steps_offset if spacing == "leading" else 0))  # every step

    def _setup(self, schedule, clip_sample, spacing, steps_offset):
        if spacing not in SPACINGS:
            raise ValueError(f"spacing must be one of {', '.join(SPACINGS)}, got {spacing!r}")
        # linspace: T-1 … 0 evenly (rounded for DDPM/DDIM: the course's); leading: 0, T/n, 2T/n, … (SD's)
        self.spacing = spacing
        self.steps_offset = steps_offset  # added to every timestep under leading spacing (SD: 1, so 981 … 1)
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
        self.schedule = schedule
        if clip_sample is not None:  # None: no clamping (latents); else x̂_0 is clamped to [-c, c], c > 0
            clip_sample = check_number("clip_sample", clip_sample, low=0, low_open=True)
        self.clip_sample = clip_sample  # clamp the x̂_0 estimate to [-c, c]: pixels live in [-1, 1]; None for latents

    def _check_num_steps(self, num_steps, most: int) -> None:
        T = self.schedule.num_timesteps
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or not 1 <= num_steps <= most:
            limit = f"T = {T}" if most == T else f"T - 1 = {most}"
            raise ValueError(f"num_steps must be an int from 1 to {limit}, got {num_steps!r}")

    def set_timesteps(self, num_steps: int) -> None:
        """Use `num_steps` timesteps, descending: linspace spacing runs T-1 … 0; leading runs
        (n-1)·T/n + offset … offset in steps of T/n (SD at 50 steps: 981, 961, …, 1); trailing T-1 down by T/n."""
        T = self.schedule.num_timesteps
        self._check_num_steps(num_steps, T)
        if self.spacing == "leading":
            self.timesteps = torch.arange(num_steps - 1, -1, -1) * (T // num_steps) + self.steps_offset
            if self.timesteps[0] >= T:
                raise ValueError(f"num_steps = {num_steps} with steps_offset = {self.steps_offset} reaches t = "
                                 f"{int(self.timesteps[0])}, past T - 1 = {T - 1}; use fewer steps")
        elif self.spacing == "trailing":
            self.timesteps = spaced_timesteps("trailing", num_steps, T).long()
        else:
            self.timesteps = torch.linspace(T - 1, 0, num_steps, dtype=torch.float64).round().long()  # descending
        self._prev = {int(t): int(p) for t, p in zip(self.timesteps, list(self.timesteps[1:]) + [-1])}
        a = self.schedule.alphas_cumprod
        final = torch.ones(1, dtype=a.dtype) if self.set_alpha_to_one else a[:1]
        a_bars = torch.cat([a[self.timesteps], final])  # ᾱ at each level, then where the last step lands
        self.sigmas = ((1 - a_bars) / a_bars).sqrt()  # the plan as noise levels: σ = sqrt((1 - ᾱ) / ᾱ)

    @property
    def num_steps(self) -> int:
        """Steps from level to level: len(sigmas) - 1 (the model calls: len(timesteps))."""
        return len(self.sigmas) - 1

    def prev_timestep(self, t) -> int:
        """The timestep after t in this sampler's sequence; -1 after the last (the clean image)."""
        t = int(t)
        if t not in self._prev:
            raise ValueError(f"t = {t} is not one of this sampler's {self.num_steps} timesteps; "
                             "call set_timesteps first")
        return self._prev[t]

    def _alphas(self, t: int, x: torch.Tensor):
        a, t = self.schedule.alphas_cumprod, int(t)
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

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
        """x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε at one of this sampler's timesteps: where img2img starts."""
        self.prev_timestep(t)  # a clear error for a t outside the plan
        return self.schedule.add_noise(x0, noise, torch.as_tensor(t).long())

    def step(self, model_output, t, x, *, generator=None):  # pragma: no cover - overridden
        raise NotImplementedError


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

    x_{t'} = sqrt(ᾱ_{t'}) x̂_0 + sqrt(1 - ᾱ_{t'} - σ²) ε̂ + σ z,
    σ = η sqrt((1 - ᾱ_{t'}) / (1 - ᾱ_t)) sqrt(1 - ᾱ_t / ᾱ_{t'})
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


# --- σ-space samplers: k-diffusion's rules over a list of noise levels ---------------------------------------------

class SigmaSampler(Sampler):
    """A plan of noise levels σ_0 > … > σ_n = 0 and a rule to step between them, in σ-space (x_σ = x_0 + σ ε).

    Subclasses write `step`; this class holds the plan, the place in it and the conversions to and from x_t.
    """

    def __init__(self, schedule: NoiseSchedule, *, karras: bool = False, spacing: str = "linspace",
                 steps_offset: int = 0, clip_sample: float | None = None):
        self._setup(schedule, clip_sample, spacing, steps_offset)
        if not isinstance(karras, bool):
            raise TypeError(f"karras must be True or False, got {karras!r}")
        self.karras = karras  # levels evenly spaced in σ^(1/7) instead of in t
        self.schedule_sigmas = schedule_sigmas(schedule)  # σ_t of every training step, (T,) float64
        self.set_timesteps(self.max_steps - (steps_offset if spacing == "leading" else 0))  # every step

    @property
    def max_steps(self) -> int:
        return self.schedule.num_timesteps

    def plan(self, n: int):
        """n timesteps and their n levels σ (float64), before the final σ = 0 (diffusers' Euler and Heun)."""
        T, table = self.schedule.num_timesteps, self.schedule_sigmas
        t = spaced_timesteps(self.spacing, n, T, self.steps_offset)  # evenly in t …
        sigmas = sigma_at(t, table)  # … σ_i = σ(t_i)
        if self.karras:  # … or evenly in σ^(1/7) over the same range, and the t of each σ
            sigmas = karras_sigmas(sigmas[-1].item(), sigmas[0].item(), n)
            t = timestep_at(sigmas, table)
        return t.float(), sigmas  # the UNet sees float32 timesteps, as diffusers' do

    def set_timesteps(self, num_steps: int) -> None:
        """Fill the plan: `sigmas`, n + 1 noise levels ending at 0, and `timesteps`, one per model call."""
        T = self.schedule.num_timesteps
        self._check_num_steps(num_steps, self.max_steps)
        t, sigmas = self.plan(num_steps)
        if self.spacing == "leading" and t[0] > T - 1:
            raise ValueError(f"num_steps = {num_steps} with steps_offset = {self.steps_offset} reaches t = "
                             f"{float(t[0]):g}, past T - 1 = {T - 1}; use fewer steps")
        self.sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])  # σ_0 > … > σ_{n-1} > σ_n = 0, the clean image
        self.level_timesteps = t  # one timestep per level (σ_n = 0 has none: the model is not called there)
        self.levels = torch.arange(num_steps)  # the level at which each model call sees x (Heun: 0, 1, 1, 2, 2, …)
        self.timesteps = t
        self.memory, self._last = None, None  # what a step leaves for the next (multistep, Heun); the last call

    # The place in the plan, from t alone: the caller's loop stays `for t in sampler.timesteps`.
    def _find(self, t) -> int:
        hits = (self.timesteps == torch.as_tensor(t, dtype=self.timesteps.dtype)).nonzero().flatten()
        if not len(hits):
            raise ValueError(f"t = {float(t):g} is not one of this sampler's {len(self.timesteps)} timesteps; "
                             "call set_timesteps first")
        return int(hits[1] if len(hits) > 1 else hits[0])  # listed twice: the second, where a level starts

    def _index(self, t) -> int:
        """Which model call of the plan this is: the one after the last, if its timestep is t; else where t
        starts a level (a loop beginning mid-plan, as img2img's). The memory is kept only for the next call."""
        nxt = 0 if self._last is None else self._last + 1
        i = nxt if nxt < len(self.timesteps) and self.timesteps[nxt] == t else self._find(t)
        if i != nxt:
            self.memory = None  # a new chain: nothing from another one may leak into it
        self._last = i
        return i

    def sigma_of(self, t) -> float:
        """The noise level σ at which the plan calls the model with timestep t."""
        return self.sigmas[self.levels[self._find(t)]].item()

    def prev_timestep(self, t):
        """The timestep of the level after t's; -1 after the last level (the clean image)."""
        k = int(self.levels[self._find(t)]) + 1
        return self.level_timesteps[k].item() if k < len(self.level_timesteps) else -1

    @staticmethod
    def to_sigma_space(x: torch.Tensor, sigma: float) -> torch.Tensor:
        return x * (1 + sigma**2) ** 0.5  # x_σ = x_t / sqrt(ᾱ),   ᾱ = 1 / (1 + σ²)

    @staticmethod
    def to_x_t(x: torch.Tensor, sigma: float) -> torch.Tensor:
        return x / (1 + sigma**2) ** 0.5  # x_t = sqrt(ᾱ) x_σ

    def denoise(self, eps: torch.Tensor, sigma: float, x: torch.Tensor) -> torch.Tensor:
        """x̂_0 = x_σ - σ ε̂ (clamped to [-c, c] if clip_sample is set)."""
        x0 = x - sigma * eps
        return x0.clamp(-self.clip_sample, self.clip_sample) if self.clip_sample is not None else x0

    def predict_x0(self, eps: torch.Tensor, t, x: torch.Tensor) -> torch.Tensor:
        """x̂_0 = x_t sqrt(1 + σ²) - σ ε̂ = (x_t - sqrt(1 - ᾱ) ε̂) / sqrt(ᾱ), σ the plan's level at t."""
        sigma = self.sigma_of(t)
        return self.denoise(eps, sigma, self.to_sigma_space(x, sigma))

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
        """x_t = (x_0 + σ ε) / sqrt(1 + σ²) = sqrt(ᾱ) x_0 + sqrt(1 - ᾱ) ε, σ the plan's level at t."""
        if noise.shape != x0.shape:
            raise ValueError(f"noise must have the shape of x0 {tuple(x0.shape)}, got {tuple(noise.shape)}")
        return self.to_x_t(x0 + self.sigma_of(t) * noise, self.sigma_of(t))


class EulerSampler(SigmaSampler):
    """Euler's method on the probability-flow ODE dx_σ/dσ = (x_σ - x̂_0) / σ (k-diffusion's sample_euler)."""

    def step(self, model_output, t, x, *, generator=None):
        i = self._index(t)
        sigma, sigma_next = self.sigmas[i].item(), self.sigmas[i + 1].item()  # from level i to level i + 1
        x = self.to_sigma_space(x, sigma)  # x_σ = x_t sqrt(1 + σ²)
        denoised = self.denoise(model_output, sigma, x)  # x̂_0 = x_σ - σ ε̂
        d = (x - denoised) / sigma  # dx_σ/dσ = (x_σ - x̂_0) / σ  (= ε̂)
        x = x + (sigma_next - sigma) * d  # x_σ' = x_σ + (σ' - σ) dx/dσ
        return self.to_x_t(x, sigma_next)


class EulerAncestralSampler(SigmaSampler):
    """Euler ancestral (k-diffusion's sample_euler_ancestral): an Euler step down to σ_down < σ', then fresh noise
    of std σ_up back up to σ' (σ_down² + σ_up² = σ'²). Same plan and noise: DDIM with η = 1, i.e. DDPM."""

    def step(self, model_output, t, x, *, generator=None):
        i = self._index(t)
        sigma, sigma_next = self.sigmas[i].item(), self.sigmas[i + 1].item()
        x = self.to_sigma_space(x, sigma)
        denoised = self.denoise(model_output, sigma, x)  # x̂_0 = x_σ - σ ε̂
        sigma_up = (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5  # σ_up² = σ'² (σ² - σ'²) / σ²
        sigma_down = (sigma_next**2 - sigma_up**2) ** 0.5  # σ_down² = σ'² - σ_up²
        d = (x - denoised) / sigma  # dx_σ/dσ
        x = x + (sigma_down - sigma) * d  # the deterministic part: Euler to σ_down
        x = x + sigma_up * _noise_like(x, generator)  # + σ_up z: back to noise level σ' (z drawn at every step)
        return self.to_x_t(x, sigma_next)


class HeunSampler(SigmaSampler):
    """Heun's method (Karras et al. 2022, Algorithm 1 without churn): Euler's guess x̃ at σ', then the average of
    the slopes at σ and at σ' — two model calls per level, one per `step`, as diffusers' HeunDiscreteScheduler fits
    it into the one-call loop: timesteps t_0, t_1, t_1, t_2, t_2, …, t_{n-1}, t_{n-1} (2n - 1 calls); the first
    call at each t_k (k ≥ 1) is the correction of the step that arrived there. The last step, to σ = 0, is Euler's."""

    order = 2

    def set_timesteps(self, num_steps: int) -> None:
        super().set_timesteps(num_steps)
        self.levels = torch.cat([self.levels[:1], self.levels[1:].repeat_interleave(2)])  # 0, 1, 1, 2, 2, …
        self.timesteps = torch.cat([self.timesteps[:1], self.timesteps[1:].repeat_interleave(2)])

    def step(self, model_output, t, x, *, generator=None):
        i = self._index(t)
        k = int(self.levels[i])
        sigma = self.sigmas[k].item()  # the model saw x at level k
        x = self.to_sigma_space(x, sigma)
        d = (x - self.denoise(model_output, sigma, x)) / sigma  # dx_σ/dσ at (x, σ_k)
        if i % 2 == 0:  # first call of level k: Euler's guess at σ_{k+1}
            sigma_next = self.sigmas[k + 1].item()
            if sigma_next > 0:
                self.memory = (x, d)  # x_σ and its slope, for the correction
            return self.to_x_t(x + (sigma_next - sigma) * d, sigma_next)  # x̃ = x_σ + (σ' - σ) d
        if self.memory is None:
            raise ValueError(f"Heun's call at index {i} corrects the step before it; start a loop at an even index")
        x_prev, d_prev = self.memory
        sigma_prev = self.sigmas[k - 1].item()
        self.memory = None
        x = x_prev + (sigma - sigma_prev) * (d_prev + d) / 2  # x_σ' = x_σ + (σ' - σ) (d + d̃) / 2: trapezoid rule
        return self.to_x_t(x, sigma)


class DPMSolverPP2MSampler(SigmaSampler):
    """DPM-Solver++(2M) (Lu et al. 2022; k-diffusion's sample_dpmpp_2m): in λ = -log σ (half the log-SNR) the linear
    part of the ODE is solved exactly, x_σ' = (σ'/σ) x_σ + (1 - e^{-h}) x̂_0 with h = λ' - λ (that alone is DDIM);
    the second order extrapolates x̂_0 linearly from the previous step's, its memory. First step and last step (to
    σ = 0) are first order, as diffusers' DPMSolverMultistepScheduler(solver_order=2) takes them.

    Its plan is diffusers': n + 1 levels evenly spaced (linspace, leading) with the cleanest replaced by σ = 0, at
    integer timesteps; the Karras plan spans the whole training range and rounds its timesteps."""

    @property
    def max_steps(self) -> int:
        return self.schedule.num_timesteps - 1

    def plan(self, n: int):
        T, table = self.schedule.num_timesteps, self.schedule_sigmas
        if self.karras:
            sigmas = karras_sigmas(table[0].item(), table[-1].item(), n)
            return timestep_at(sigmas, table).round().long(), sigmas
        if self.spacing == "trailing":
            t = spaced_timesteps("trailing", n, T)
        else:  # n + 1 levels; the last (cleanest) becomes σ = 0
            t = spaced_timesteps(self.spacing, n + 1, T, self.steps_offset).round()[:-1]
        t = t.long()
        if (t[:-1] <= t[1:]).any():
            raise ValueError(f"num_steps = {n} repeats timesteps under {self.spacing} spacing; use fewer steps")
        return t, table[t]

    def step(self, model_output, t, x, *, generator=None):
        i = self._index(t)
        sigma, sigma_next = self.sigmas[i].item(), self.sigmas[i + 1].item()
        x = self.to_sigma_space(x, sigma)
        denoised = self.denoise(model_output, sigma, x)  # x̂_0 = x_σ - σ ε̂
        previous, self.memory = self.memory, denoised  # the memory: the last step's x̂_0
        if sigma_next == 0:
            return denoised  # h = ∞: the last step lands on x̂_0 (x_t = x_σ at σ = 0)
        h = math.log(sigma / sigma_next)  # h = λ' - λ,  λ = -log σ
        if previous is not None:  # second order: x̂_0 extrapolated from the last two, D = (1 + 1/2r) x̂_0 - 1/2r x̂_0^prev
            r = math.log(self.sigmas[i - 1].item() / sigma) / h  # r = h_last / h
            denoised = (1 + 1 / (2 * r)) * denoised - 1 / (2 * r) * previous
        x = (sigma_next / sigma) * x - math.expm1(-h) * denoised  # x_σ' = (σ'/σ) x_σ + (1 - e^{-h}) D
        return self.to_x_t(x, sigma_next)


SAMPLERS = {"ddpm": DDPMSampler, "ddim": DDIMSampler, "euler": EulerSampler, "euler_a": EulerAncestralSampler,
            "heun": HeunSampler, "dpmpp_2m": DPMSolverPP2MSampler}
ALIASES = {"euler_ancestral": "euler_a"}  # other names for the same sampler


def make_sampler(name: str, schedule: NoiseSchedule, *, karras: bool = False, **kwargs) -> Sampler:
    """A sampler by name: one of SAMPLERS (or an alias); karras=True for the σ-space ones' Karras plan."""
    key = ALIASES.get(name, name)
    if key not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}: expected one of {', '.join(list(SAMPLERS) + list(ALIASES))}")
    cls = SAMPLERS[key]
    if issubclass(cls, SigmaSampler):
        return cls(schedule, karras=karras, **kwargs)
    if karras:  # an option this sampler does not take: TypeError, as for any unexpected keyword
        raise TypeError(f"karras=True is for the σ-space samplers "
                         f"({', '.join(k for k, c in SAMPLERS.items() if issubclass(c, SigmaSampler))}), not {name!r}")
    return cls(schedule, **kwargs)


def timestep_batch(t: torch.Tensor, n: int, device) -> torch.Tensor:
    """One plan timestep for a batch of n, as the UNet takes it: fractional timesteps (Euler-family plans) passed
    exactly as float32, integer ones (DDPM, DDIM) as long."""
    if t.is_floating_point():
        return torch.full((n,), t.item(), device=device, dtype=torch.float32)
    return torch.full((n,), int(t), device=device, dtype=torch.long)


def _cat_kwargs(a: dict, b: dict) -> dict:
    """Two sets of model keyword arguments -> one, each tensor stacked on the batch: [cond; uncond]."""
    if a.keys() != b.keys():
        raise ValueError(f"cond and uncond must name the same model arguments, got {sorted(a)} and {sorted(b)}")
    return {k: torch.cat([a[k], b[k]]) for k in a}


@torch.no_grad()
def sample(model, sampler: Sampler, shape, *, num_steps: int = 50, generator: torch.Generator | None = None,
           cond: dict | None = None, uncond: dict | None = None, guidance_scale: float = 1.0,
           keep_every: int = 0, progress: bool = True, device=None, latents: torch.Tensor | None = None,
           batch_guidance: bool = True, callback=None, start: int = 0):
    """Run reverse diffusion from pure noise. Returns x_0, or (x_0, [x_t kept every `keep_every` steps]).

    cond / uncond: keyword arguments for the model (e.g. {"class_labels": y}); with guidance_scale != 1 the model is
    run on both and ε̂ = ε̂_uncond + s (ε̂_cond - ε̂_uncond) (classifier-free guidance). batch_guidance runs the two
    as one batch of 2B (one forward pass: faster wherever the model is not already saturating the device).
    latents: the starting noise x_T (shape `shape`), in place of a draw from `generator`.
    callback(i, t, x_t, x̂_0): called at every model call i with the x_t the model saw at timestep t and the clean
    image its ε̂ implies — to watch the picture form.
    start: begin at sampler.timesteps[start] with `latents` as x_t there (img2img: latents =
    sampler.add_noise(x0, noise, sampler.timesteps[start]); start = sampler.order · levels skipped).
    """
    guidance_scale = check_number("guidance_scale", guidance_scale, low=0)
    if guidance_scale != 1.0 and uncond is None and cond:
        raise ValueError("guidance_scale != 1 needs `uncond` (the model's keyword arguments without the condition)")
    param = next(model.parameters())
    device, dtype = device or param.device, param.dtype  # the model may run in fp16 / bf16; the sampler's math in fp32
    sampler.set_timesteps(num_steps)
    if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start < len(sampler.timesteps):
        raise ValueError(f"start must be an int from 0 to {len(sampler.timesteps) - 1}, got {start!r}")
    if start and latents is None:
        raise ValueError("start > 0 needs `latents`: x_t at sampler.timesteps[start] (sampler.add_noise gives it)")
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
    timesteps = sampler.timesteps[start:]
    for i, t in enumerate(tqdm(timesteps, disable=not progress, desc="sampling", leave=False)):
        t_batch = timestep_batch(t, shape[0], device)
        if both is not None:  # one forward pass on [x; x] with [cond; uncond]
            eps, eps_uncond = model(torch.cat([x, x]).to(dtype), torch.cat([t_batch, t_batch]), **both).chunk(2)
        else:
            eps = model(x.to(dtype), t_batch, **(cond or {}))
            eps_uncond = model(x.to(dtype), t_batch, **uncond) if guided else None
        if guided:
            eps = eps_uncond + guidance_scale * (eps - eps_uncond)  # ε̂ = ε̂_u + s (ε̂_c − ε̂_u)
        if callback is not None:
            callback(start + i, t, x, sampler.predict_x0(eps.float(), t, x))
        x = sampler.step(eps.float(), t, x, generator=generator)
        if keep_every and (i % keep_every == 0 or i == len(timesteps) - 1):
            kept.append(x.cpu())
    return (x, kept) if keep_every else x
