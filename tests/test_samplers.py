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


def test_guidance_combines_conditional_and_unconditional():
    calls = []

    class Fake(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x, t, *, class_labels):
            calls.append(class_labels[0].item())
            return torch.full_like(x, float(class_labels[0]))

    schedule = NoiseSchedule("linear")
    sampler = DDIMSampler(schedule, clip_sample=None)
    y, y0 = torch.tensor([1]), torch.tensor([0])
    # ε̂ = ε̂_u + s (ε̂_c - ε̂_u) = 0 + 3 (1 - 0) = 3, so the guided run equals a model that predicts 3 everywhere.
    guided = sample(Fake(), sampler, (1, 1, 2, 2), num_steps=3, cond={"class_labels": y}, uncond={"class_labels": y0},
                    guidance_scale=3.0, generator=torch.Generator().manual_seed(0), progress=False)
    sampler.set_timesteps(3)
    x = torch.randn((1, 1, 2, 2), generator=torch.Generator().manual_seed(0))
    for t in sampler.timesteps:
        x = sampler.step(torch.full_like(x, 3.0), t, x)
    torch.testing.assert_close(guided, x)
    assert calls == [1, 0] * 3
    with pytest.raises(ValueError, match="guidance_scale must be >= 0"):
        sample(Fake(), sampler, (1, 1, 2, 2), num_steps=3, guidance_scale=-1.0, progress=False)
