import pytest
import torch

from sdlesson.samplers import (SAMPLERS, DDIMSampler, DDPMSampler, EulerAncestralSampler, EulerSampler, HeunSampler,
                               make_sampler, sample, timestep_at)
from sdlesson.schedule import NoiseSchedule


def test_timesteps_are_evenly_spaced_and_descending():
    s = DDIMSampler(NoiseSchedule("linear"))
    s.set_timesteps(4)
    assert s.timesteps.tolist() == [999, 666, 333, 0]
    s.set_timesteps(1000)
    assert s.timesteps.tolist() == list(range(999, -1, -1))


@pytest.mark.parametrize("n", [0, 1001, 2.5])
def test_bad_step_counts_are_rejected(n):
    with pytest.raises(ValueError, match="num_steps must be an int from 1 to T = 1000"):
        DDPMSampler(NoiseSchedule("linear")).set_timesteps(n)


def test_unknown_sampler_and_stray_timestep():
    with pytest.raises(ValueError, match="unknown sampler 'lms': expected one of ddpm, ddim, euler, euler_a, heun, "
                                         "dpmpp_2m, euler_ancestral"):
        make_sampler("lms", NoiseSchedule("linear"))
    s = DDIMSampler(NoiseSchedule("linear"))
    s.set_timesteps(10)
    with pytest.raises(ValueError, match="not one of this sampler's 10 timesteps"):
        s.step(torch.zeros(1), 5, torch.zeros(1))


@pytest.mark.parametrize("num_steps", [1000, 50])
def test_ddpm_step_is_the_posterior_mean_and_variance(num_steps):
    """With ε̂ the true noise, DDPM's step samples q(x_{t'} | x_t, x_0): compare with the schedule's posterior."""
    schedule = NoiseSchedule("linear")
    sampler = DDPMSampler(schedule, clip_sample=None)
    sampler.set_timesteps(num_steps)
    t = int(sampler.timesteps[5])
    t_prev = sampler.prev_timestep(t)
    x0, eps = torch.randn(1, 1, 4, 4, dtype=torch.float64), torch.randn(1, 1, 4, 4, dtype=torch.float64)
    xt = schedule.add_noise(x0, eps, torch.tensor([t]))
    mean, var = schedule.posterior(x0, xt, torch.tensor([t]), torch.tensor([t_prev]))
    draws = torch.stack([sampler.step(eps, t, xt, generator=torch.Generator().manual_seed(i)) for i in range(4000)])
    torch.testing.assert_close(draws.mean(0), mean, atol=4 * var.sqrt().max().item() / 60, rtol=0)
    assert draws.var(0).mean().item() == pytest.approx(var.item(), rel=0.08)


def test_ddim_with_eta_one_is_ddpm():
    """DDIM's η = 1 has DDPM's mean and variance; with the same generator the samples coincide."""
    schedule = NoiseSchedule("cosine")
    ddpm, ddim = DDPMSampler(schedule), DDIMSampler(schedule, eta=1.0)
    for s in (ddpm, ddim):
        s.set_timesteps(20)
    x, eps = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    for t in ddpm.timesteps[:-1]:
        a = ddpm.step(eps, t, x, generator=torch.Generator().manual_seed(1))
        b = ddim.step(eps, t, x, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_ddim_eta_zero_with_true_noise_recovers_x0_in_one_jump():
    schedule = NoiseSchedule("linear")
    ddim = DDIMSampler(schedule, eta=0.0, clip_sample=None)
    ddim.set_timesteps(1)  # one step: from t = 999 straight to the clean image
    x0, eps = torch.rand(1, 3, 4, 4) * 2 - 1, torch.randn(1, 3, 4, 4)
    xt = schedule.add_noise(x0, eps, torch.tensor([999]))
    torch.testing.assert_close(ddim.step(eps, 999, xt), x0, atol=1e-3, rtol=0)


def test_ddim_deterministic_path_is_consistent_across_steps():
    """η = 0 moves x along the path x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε when ε̂ is the true ε."""
    schedule = NoiseSchedule("scaled_linear")
    ddim = DDIMSampler(schedule, clip_sample=None)
    ddim.set_timesteps(10)
    x0, eps = torch.randn(1, 4, 2, 2, dtype=torch.float64), torch.randn(1, 4, 2, 2, dtype=torch.float64)
    x = schedule.add_noise(x0, eps, torch.tensor([999]))
    for t in ddim.timesteps:
        x = ddim.step(eps, t, x)
        t_prev = ddim.prev_timestep(t)
        expected = x0 if t_prev < 0 else schedule.add_noise(x0, eps, torch.tensor([t_prev]))
        torch.testing.assert_close(x, expected)


def test_sample_is_reproducible_by_seed_and_keeps_intermediates(tiny_unet):
    sampler = DDPMSampler(NoiseSchedule("linear"))
    run = lambda seed: sample(tiny_unet, sampler, (2, 1, 8, 8), num_steps=5,  # noqa: E731
                              generator=torch.Generator().manual_seed(seed), keep_every=2, progress=False)
    (a, kept), (b, _), (c, _) = run(0), run(0), run(1)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    assert len(kept) == 3 and kept[-1].shape == a.shape  # steps 0, 2 and the last (4)


@pytest.mark.parametrize("batch_guidance", [True, False])
def test_guidance_combines_conditional_and_unconditional(batch_guidance):
    calls = []

    class Fake(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x, t, *, class_labels):
            calls.append(class_labels.tolist())
            return class_labels.float().view(-1, 1, 1, 1).expand_as(x)  # each image's ε̂ = its label

    schedule = NoiseSchedule("linear")
    sampler = DDIMSampler(schedule, clip_sample=None)
    y, y0 = torch.tensor([1]), torch.tensor([0])
    # ε̂ = ε̂_u + s (ε̂_c - ε̂_u) = 0 + 3 (1 - 0) = 3, so the guided run equals a model that predicts 3 everywhere.
    guided = sample(Fake(), sampler, (1, 1, 2, 2), num_steps=3, cond={"class_labels": y}, uncond={"class_labels": y0},
                    guidance_scale=3.0, generator=torch.Generator().manual_seed(0), progress=False,
                    batch_guidance=batch_guidance)
    sampler.set_timesteps(3)
    x = torch.randn((1, 1, 2, 2), generator=torch.Generator().manual_seed(0))
    for t in sampler.timesteps:
        x = sampler.step(torch.full_like(x, 3.0), t, x)
    torch.testing.assert_close(guided, x)
    assert calls == ([[1, 0]] * 3 if batch_guidance else [[1], [0]] * 3)  # one pass on [cond; uncond], or two
    with pytest.raises(ValueError, match="guidance_scale must be >= 0"):
        sample(Fake(), sampler, (1, 1, 2, 2), num_steps=3, guidance_scale=-1.0, progress=False)


# --- Stable Diffusion's sampling as released, against diffusers' schedulers (the oracle) -------------------------

SD_SCHEDULER = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                    steps_offset=1, timestep_spacing="leading", num_train_timesteps=1000)


def sd_sampler(cls, **kw):
    return cls(NoiseSchedule("scaled_linear"), clip_sample=None, spacing="leading", steps_offset=1, **kw)


@pytest.mark.parametrize("num_steps", [1, 7, 50, 500])
def test_leading_spacing_equals_diffusers(num_steps):
    from diffusers import DDIMScheduler

    ours = sd_sampler(DDIMSampler, set_alpha_to_one=False)
    ours.set_timesteps(num_steps)
    theirs = DDIMScheduler(**SD_SCHEDULER, set_alpha_to_one=False)
    theirs.set_timesteps(num_steps)
    assert ours.timesteps.tolist() == theirs.timesteps.tolist()
    if num_steps == 50:
        assert ours.timesteps[:3].tolist() == [981, 961, 941] and ours.timesteps[-1].item() == 1


@pytest.mark.parametrize("set_alpha_to_one", [False, True])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_steps_equal_diffusers(set_alpha_to_one, eta):
    from diffusers import DDIMScheduler

    ours = sd_sampler(DDIMSampler, set_alpha_to_one=set_alpha_to_one, eta=eta)
    theirs = DDIMScheduler(**SD_SCHEDULER, set_alpha_to_one=set_alpha_to_one)
    ours.set_timesteps(10)
    theirs.set_timesteps(10)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=g)
    for t in ours.timesteps:  # the whole chain, with a fixed pseudo-model: ε̂ = 0.5 x + noise
        eps = 0.5 * x + 0.1 * torch.randn(x.shape, generator=g)
        a = ours.step(eps, t, x, generator=torch.Generator().manual_seed(int(t)))
        b = theirs.step(eps, int(t), x, eta=eta, generator=torch.Generator().manual_seed(int(t))).prev_sample
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        x = b


def test_ddpm_steps_equal_diffusers():
    from diffusers import DDPMScheduler

    ours = sd_sampler(DDPMSampler)
    theirs = DDPMScheduler(**SD_SCHEDULER)
    ours.set_timesteps(20)
    theirs.set_timesteps(20)
    assert ours.timesteps.tolist() == theirs.timesteps.tolist()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 8, 8, generator=g)
    for t in ours.timesteps:  # the same noise draw: both take it from a generator seeded alike
        eps = 0.5 * x + 0.1 * torch.randn(x.shape, generator=g)
        a = ours.step(eps, t, x, generator=torch.Generator().manual_seed(int(t)))
        b = theirs.step(eps, int(t), x, generator=torch.Generator().manual_seed(int(t))).prev_sample
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        x = b


def test_spacing_is_checked():
    for cls in (DDIMSampler, EulerSampler):
        with pytest.raises(ValueError, match="spacing must be one of linspace, leading, trailing, got 'uniform'"):
            cls(NoiseSchedule("linear"), spacing="uniform")


@pytest.mark.parametrize("num_steps", [1, 10, 50])
def test_ddim_trailing_spacing_equals_diffusers(num_steps):
    from diffusers import DDIMScheduler

    ours = DDIMSampler(NoiseSchedule("scaled_linear"), clip_sample=None, spacing="trailing")
    theirs = DDIMScheduler(**(SD_SCHEDULER | dict(timestep_spacing="trailing")))
    ours.set_timesteps(num_steps)
    theirs.set_timesteps(num_steps)
    assert ours.timesteps.tolist() == theirs.timesteps.tolist()


# --- σ-space samplers: whole chains against diffusers' schedulers (the oracle) --------------------------------------
# diffusers' Euler-family schedulers keep x_σ = x_t sqrt(1 + σ²) and feed the model scale_model_input(x_σ) = x_t;
# DPMSolverMultistep keeps x_t. Ours keep x_t throughout. The fake model sees the same x_t in both and is smooth in t
# (Karras timesteps differ by ~1e-3 where diffusers interpolates a float32 σ table, ours float64).

def fake_eps(x, t):
    """A fixed deterministic ε̂ = f(x_t, t), smooth in both."""
    return 0.6 * x + 0.3 * torch.sin(3 * x + torch.as_tensor(t, dtype=torch.float32) / 300)


ORACLES = {"euler": ("EulerDiscreteScheduler", {}), "euler_a": ("EulerAncestralDiscreteScheduler", {}),
           "heun": ("HeunDiscreteScheduler", {}),
           "dpmpp_2m": ("DPMSolverMultistepScheduler", dict(algorithm_type="dpmsolver++", solver_order=2))}
BETAS = {"scaled_linear": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
         "linear": dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02)}


def oracle(name, schedule_name, *, karras=False, spacing="linspace", steps_offset=0):
    import diffusers

    cls, kw = ORACLES[name]
    kw = kw | BETAS[schedule_name] | dict(num_train_timesteps=1000, timestep_spacing=spacing, steps_offset=steps_offset)
    if karras and name != "euler_a":
        kw["use_karras_sigmas"] = True
    return getattr(diffusers, cls)(**kw)


def oracle_plan(name, schedule_name, num_steps, **kw):
    theirs = oracle(name, schedule_name, **kw)
    theirs.set_timesteps(num_steps)
    if name == "euler_a" and kw.get("karras"):  # diffusers' Euler ancestral has no Karras option: give it Euler's plan
        euler = oracle("euler", schedule_name, **kw)
        euler.set_timesteps(num_steps)
        theirs.sigmas, theirs.timesteps = euler.sigmas, euler.timesteps
    return theirs


def vp(theirs, name, sample):
    """diffusers' sample after a step, as x_t: Euler-family samples are x_σ at the scheduler's current σ."""
    if name == "dpmpp_2m":
        return sample
    sigma = theirs.sigmas[theirs.step_index].item()
    return sample / (1 + sigma**2) ** 0.5


def run_oracle(theirs, name, x, calls, model_t):
    """diffusers' chain over `calls` from x_t = x, in its own space; every step's result as x_t. The fake model is
    called with our timesteps `model_t` (Karras plans differ by < 1e-2 of a step), so both get the same ε̂."""
    if name != "dpmpp_2m":  # its own space: x_σ = x_t sqrt(1 + σ²) at the first call's level
        x = x * (1 + theirs.sigmas[theirs.index_for_timestep(calls[0])].item() ** 2) ** 0.5
    out = []
    for t, t_model in zip(calls, model_t):
        gen = dict(generator=torch.Generator().manual_seed(len(out))) if name == "euler_a" else {}
        x = theirs.step(fake_eps(theirs.scale_model_input(x, t), t_model), t, x, **gen).prev_sample
        out.append(vp(theirs, name, x))
    return torch.stack(out)


def run_ours(ours, x, calls):
    out = []
    for t in calls:
        x = ours.step(fake_eps(x, t), t, x, generator=torch.Generator().manual_seed(len(out)))
        out.append(x)
    return torch.stack(out)


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("schedule_name", ["scaled_linear", "linear"])
@pytest.mark.parametrize("karras", [False, True])
@pytest.mark.parametrize("name", list(ORACLES))
def test_sigma_samplers_equal_diffusers_over_whole_chains(name, karras, schedule_name, spacing):
    """Same plan (timesteps and σ), same model outputs, same noise: every step of the chain within 1e-5 (fp32)."""
    num_steps, offset = 10, (1 if spacing == "leading" else 0)
    ours = make_sampler(name, NoiseSchedule(schedule_name), karras=karras, spacing=spacing, steps_offset=offset)
    ours.set_timesteps(num_steps)
    theirs = oracle_plan(name, schedule_name, num_steps, karras=karras, spacing=spacing, steps_offset=offset)
    # The plan: timesteps exact (Karras: within 2e-3); σ within 1e-4 relative. Both gaps are diffusers' float32
    # ᾱ table (1 - ᾱ loses digits near t = 0); ours is float64.
    torch.testing.assert_close(ours.timesteps.double(), theirs.timesteps.double(), atol=1e-2 if karras else 0, rtol=0)
    if karras and name != "dpmpp_2m":  # on diffusers' own float32 σ table, σ -> t agrees to 1e-4 of a step
        a = theirs.alphas_cumprod.double()
        table = ((1 - a) / a).sqrt()
        levels = theirs.sigmas[:-1][::ours.order].double()  # Heun lists each level twice: take every other
        torch.testing.assert_close(timestep_at(levels, table), theirs.timesteps[::ours.order].double(),
                                   atol=1e-4, rtol=0)
    sigmas = ours.sigmas if name != "heun" else torch.cat([ours.sigmas[:1], ours.sigmas[1:-1].repeat_interleave(2),
                                                           ours.sigmas[-1:]])  # diffusers lists Heun's σ per call
    torch.testing.assert_close(sigmas, theirs.sigmas.double(), atol=0, rtol=1e-4)
    assert ours.sigmas[-1] == 0 and (ours.sigmas[1:] < ours.sigmas[:-1]).all()
    # The rule: the whole chain on the same plan (diffusers' σ, whose float32 rounding alone moves a linear-schedule
    # Karras chain by ~3e-5), with the same ε̂ and the same noise.
    ours.sigmas = torch.cat([theirs.sigmas[:-1][::ours.order], theirs.sigmas[-1:]]).double()
    x_T = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    mine, ref = run_ours(ours, x_T, ours.timesteps), run_oracle(theirs, name, x_T, theirs.timesteps, ours.timesteps)
    assert len(mine) == (2 * num_steps - 1 if name == "heun" else num_steps)
    # fp32: within 1e-5 of the chain's largest |x| (this fake ε̂ grows x to ~36 on the linear schedule, and x_σ there
    # reaches 157 x_t, where float32 keeps ~1e-5 absolute).
    torch.testing.assert_close(mine, ref, atol=1e-5 * max(1.0, ref.abs().max().item()), rtol=1e-5)


# --- one ODE, several names ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spacing, num_steps", [("leading", 20), ("linspace", 10)])  # linspace 10: 999/9 = 111, whole
def test_euler_in_sigma_space_is_ddim_with_eta_zero(spacing, num_steps):
    """x_σ' = x_σ + (σ' - σ) ε̂ is DDIM's sqrt(ᾱ') x̂_0 + sqrt(1 - ᾱ') ε̂ divided by sqrt(ᾱ'): on the same plan, the
    same chain (fp32, 1e-5)."""
    schedule = NoiseSchedule("scaled_linear")
    kw = dict(spacing=spacing, steps_offset=1 if spacing == "leading" else 0)
    euler, ddim = EulerSampler(schedule, **kw), DDIMSampler(schedule, clip_sample=None, **kw)
    euler.set_timesteps(num_steps)
    ddim.set_timesteps(num_steps)
    assert euler.timesteps.tolist() == ddim.timesteps.tolist()  # the same plan: whole timesteps …
    torch.testing.assert_close(euler.sigmas, ddim.sigmas, atol=0, rtol=1e-12)  # … and levels, down to σ = 0
    x = y = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    for t in euler.timesteps:
        x, y = euler.step(fake_eps(x, t), t, x), ddim.step(fake_eps(y, t), t, y)
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)


def test_euler_ancestral_is_ddim_with_eta_one():
    """σ_up² = σ'² (σ² - σ'²) / σ² is DDIM's η = 1 variance seen in σ-space, and the means agree: the same chain."""
    schedule = NoiseSchedule("scaled_linear")
    kw = dict(spacing="leading", steps_offset=1)
    ancestral, ddim = EulerAncestralSampler(schedule, **kw), DDIMSampler(schedule, clip_sample=None, eta=1.0, **kw)
    ancestral.set_timesteps(20)
    ddim.set_timesteps(20)
    x = y = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    for j, t in enumerate(ancestral.timesteps):
        x = ancestral.step(fake_eps(x, t), t, x, generator=torch.Generator().manual_seed(j))
        y = ddim.step(fake_eps(y, t), t, y, generator=torch.Generator().manual_seed(j))
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)


# --- starting mid-plan: add_noise and img2img's loop ----------------------------------------------------------------

@pytest.mark.parametrize("karras", [False, True])
@pytest.mark.parametrize("name", list(ORACLES))
def test_img2img_from_mid_plan_equals_diffusers(name, karras):
    """add_noise at timesteps[start] and the loop over timesteps[start:] equal diffusers' img2img (set_begin_index,
    add_noise, the same steps): a fresh start — DPM-Solver++ first order, Heun from Euler's guess."""
    num_steps, skip = 10, 4  # img2img at strength 0.6: skip the first 4 levels
    ours = make_sampler(name, NoiseSchedule("scaled_linear"), karras=karras)
    ours.set_timesteps(num_steps)
    theirs = oracle_plan(name, "scaled_linear", num_steps, karras=karras)
    ours.sigmas = torch.cat([theirs.sigmas[:-1][::ours.order], theirs.sigmas[-1:]]).double()  # the same plan
    start = skip * ours.order  # diffusers' t_start * scheduler.order
    theirs.set_begin_index(start)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    x = ours.add_noise(x0, noise, ours.timesteps[start])
    noisy = theirs.add_noise(x0, noise, theirs.timesteps[start:start + 1])
    if name != "dpmpp_2m":  # diffusers' Euler family noises into x_σ = x_0 + σ ε
        noisy = noisy / (1 + theirs.sigmas[start].item() ** 2) ** 0.5
    torch.testing.assert_close(x, noisy, atol=1e-6, rtol=1e-5)
    mine = run_ours(ours, x, ours.timesteps[start:])
    ref = run_oracle(theirs, name, x, theirs.timesteps[start:], ours.timesteps[start:])
    torch.testing.assert_close(mine, ref, atol=1e-5 * max(1.0, ref.abs().max().item()), rtol=1e-5)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_add_noise_is_the_forward_process_at_the_plans_level(name):
    """x_t = sqrt(ᾱ) x_0 + sqrt(1 - ᾱ) ε with ᾱ = 1 / (1 + σ²), σ the plan's level at t."""
    sampler = make_sampler(name, NoiseSchedule("scaled_linear"), **({"clip_sample": None} if name in ("ddpm", "ddim")
                                                                       else {"karras": True}))
    sampler.set_timesteps(8)
    x0, noise = torch.randn(1, 4, 4, 4, dtype=torch.float64), torch.randn(1, 4, 4, 4, dtype=torch.float64)
    for k, t in enumerate(sampler.timesteps[::sampler.order]):
        a_bar = 1 / (1 + sampler.sigmas[k] ** 2)
        torch.testing.assert_close(sampler.add_noise(x0, noise, t), a_bar.sqrt() * x0 + (1 - a_bar).sqrt() * noise)
    with pytest.raises(ValueError, match="is not one of this sampler's"):
        sampler.add_noise(x0, noise, 500.5)


def test_ddpm_and_ddim_plans_as_noise_levels():
    ddim = DDIMSampler(NoiseSchedule("scaled_linear"), clip_sample=None, spacing="leading", steps_offset=1,
                       set_alpha_to_one=False)
    ddim.set_timesteps(50)
    a = NoiseSchedule("scaled_linear").alphas_cumprod
    assert ddim.num_steps == 50 and len(ddim.sigmas) == 51
    torch.testing.assert_close(ddim.sigmas[0], ((1 - a[981]) / a[981]).sqrt())
    torch.testing.assert_close(ddim.sigmas[-1], ((1 - a[0]) / a[0]).sqrt())  # SD lands on ᾱ_0, not on σ = 0
    ddim.set_alpha_to_one = True
    ddim.set_timesteps(50)
    assert ddim.sigmas[-1] == 0


# --- the loop: fractional timesteps reach the model exactly; callback; start -------------------------------------

class Recorder(torch.nn.Module):
    """A fake model that records the timesteps it is called with and returns a smooth ε̂."""

    def __init__(self):
        super().__init__()
        self.p, self.seen = torch.nn.Parameter(torch.zeros(())), []

    def forward(self, x, t):
        self.seen.append(t.clone())
        return fake_eps(x, t.view(-1, 1, 1, 1))


@pytest.mark.parametrize("name", ["euler", "heun", "dpmpp_2m", "ddim"])
def test_sample_passes_the_plans_timesteps_exactly_and_calls_back(name):
    sampler = make_sampler(name, NoiseSchedule("scaled_linear"), karras=name != "ddim",
                           **({"clip_sample": None} if name == "ddim" else {}))
    model, calls = Recorder(), []
    out = sample(model, sampler, (2, 4, 8, 8), num_steps=6, generator=torch.Generator().manual_seed(0),
                 progress=False, callback=lambda i, t, x, x0: calls.append((i, t, x, x0)))
    assert len(model.seen) == len(sampler.timesteps) == len(calls) == (11 if name == "heun" else 6)
    for seen, t in zip(model.seen, sampler.timesteps):
        assert seen.dtype == (torch.float32 if t.is_floating_point() else torch.long)
        assert (seen == t).all()  # fractional Karras timesteps are not rounded on the way
    if name == "euler":
        assert any(t != t.round() for t in sampler.timesteps)
    i, t, x, x0 = calls[-1]
    assert i == len(sampler.timesteps) - 1
    torch.testing.assert_close(x0, sampler.predict_x0(fake_eps(x, t), t, x))
    torch.testing.assert_close(out, x0)  # the last step lands on σ = 0: the last x̂_0 is the image


@pytest.mark.parametrize("name", ["euler", "heun", "dpmpp_2m", "ddim"])
def test_sample_from_mid_plan_is_the_hand_written_loop(name):
    sampler = make_sampler(name, NoiseSchedule("scaled_linear"), **({"clip_sample": None} if name == "ddim" else {}))
    sampler.set_timesteps(8)
    start = 3 * sampler.order
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    x = sampler.add_noise(x0, noise, sampler.timesteps[start])
    out = sample(Recorder(), sampler, (1, 4, 8, 8), num_steps=8, latents=x, start=start, progress=False)
    for t in sampler.timesteps[start:]:
        x = sampler.step(fake_eps(x, t), t, x)
    torch.testing.assert_close(out, x)
    with pytest.raises(ValueError, match="start > 0 needs `latents`"):
        sample(Recorder(), sampler, (1, 4, 8, 8), num_steps=8, start=start, progress=False)


def test_unet_takes_fractional_timesteps(tiny_unet):
    """Integer-valued float t embeds exactly as long t; a fractional t lands between its neighbours' outputs."""
    from tests.conftest import tiny_unet_config
    from sdlesson.unet import UNet

    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(tiny_unet(x, torch.tensor([500, 501])), tiny_unet(x, torch.tensor([500.0, 501.0])))
        mid = tiny_unet(x, torch.tensor([500.5, 500.5]))
        assert not torch.equal(mid, tiny_unet(x, torch.tensor([500, 500])))
        torch.manual_seed(0)
        classed = UNet(tiny_unet_config(num_classes=3))
        assert torch.equal(classed(x, torch.tensor([7.0, 7.0])), classed(x, torch.tensor([7, 7])))  # "no class" row


def test_sampler_errors_are_clear():
    schedule = NoiseSchedule("scaled_linear")
    with pytest.raises(TypeError, match="karras=True is for the σ-space samplers .*not 'ddim'"):
        make_sampler("ddim", schedule, karras=True)
    assert isinstance(make_sampler("euler_ancestral", schedule), EulerAncestralSampler)
    heun = HeunSampler(schedule)
    heun.set_timesteps(5)
    x = torch.zeros(1, 4, 2, 2)
    heun.step(x, heun.timesteps[1], x)  # t listed twice, out of sequence: its second entry, a level's start …
    assert heun._last == 2 and heun.memory is not None  # … as diffusers' index_for_timestep; Euler's guess made
    heun.memory = None  # (a memory lost between the two calls of a level)
    with pytest.raises(ValueError, match="Heun's call at index 3 corrects the step before it"):
        heun.step(x, heun.timesteps[3], x)
    with pytest.raises(ValueError, match=r"num_steps must be an int from 1 to T - 1 = 999, got 1000"):
        make_sampler("dpmpp_2m", schedule).set_timesteps(1000)
    with pytest.raises(ValueError, match="num_steps = 1000 with steps_offset = 1 reaches t = 1000"):
        EulerSampler(schedule, spacing="leading", steps_offset=1).set_timesteps(1000)
    with pytest.raises(TypeError, match="karras must be True or False"):
        EulerSampler(schedule, karras="yes")
