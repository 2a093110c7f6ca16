import pytest
import torch

from sdlesson.samplers import DDIMSampler, DDPMSampler, make_sampler, sample
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
    with pytest.raises(ValueError, match="unknown sampler 'euler'"):
        make_sampler("euler", NoiseSchedule("linear"))
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
    with pytest.raises(ValueError, match="spacing must be one of linspace, leading"):
        DDIMSampler(NoiseSchedule("linear"), spacing="trailing")
