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


# --- Stable Diffusion's sampling as released, against the formulas and against diffusers' schedulers ---

def _sd(cls, **kw):
    return cls(NoiseSchedule("scaled_linear"), clip_sample=None, timestep_spacing="leading", steps_offset=1,
               final_alpha_one=False, **kw)


def _diffusers(name):
    import diffusers
    return getattr(diffusers, name)(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                    beta_schedule="scaled_linear", clip_sample=False, steps_offset=1,
                                    timestep_spacing="leading",
                                    **({"set_alpha_to_one": False} if name == "DDIMScheduler" else {}))


def test_leading_spacing_is_sds_981_to_1():
    s = _sd(DDIMSampler)
    s.set_timesteps(50)
    assert s.timesteps.tolist() == list(range(981, 0, -20))  # t_k = 20 k + 1
    assert s.prev_timestep(21) == 1 and s.prev_timestep(1) == -1
    s.set_timesteps(999)  # 999 … 1; 1000 steps would need t = 1000, which diffusers allows and the schedule lacks
    assert s.timesteps.tolist() == list(range(999, 0, -1))
    with pytest.raises(ValueError, match="num_steps = 1000 with steps_offset = 1 would start at t = 1000"):
        s.set_timesteps(1000)


def test_default_spacing_is_unchanged():
    """The course's models keep their T-1 … 0 spacing and ᾱ_{-1} = 1 (their notebooks and model card rely on it)."""
    s = DDIMSampler(NoiseSchedule("scaled_linear"))
    s.set_timesteps(50)
    assert s.timesteps[0].item() == 999 and s.timesteps[-1].item() == 0
    assert s._alphas(0)[1] == 1.0


def test_final_alpha_is_alpha_bar_0_when_asked():
    """set_alpha_to_one=False: the last DDIM step goes to sqrt(ᾱ_0) x̂_0 + sqrt(1 - ᾱ_0) ε̂, not to x̂_0."""
    schedule = NoiseSchedule("scaled_linear")
    s = _sd(DDIMSampler)
    s.set_timesteps(50)
    x, eps = torch.randn(1, 4, 3, 3, dtype=torch.float64), torch.randn(1, 4, 3, 3, dtype=torch.float64)
    a0, a1 = schedule.alphas_cumprod[0].item(), schedule.alphas_cumprod[1].item()
    x0 = (x - (1 - a1) ** 0.5 * eps) / a1**0.5
    torch.testing.assert_close(s.step(eps, 1, x), a0**0.5 * x0 + (1 - a0) ** 0.5 * eps, rtol=0, atol=1e-12)


@pytest.mark.parametrize("num_steps", [50, 7, 1])
def test_ddim_matches_diffusers_configured_as_sd(num_steps):
    """Same timesteps and, on random inputs, the same steps: 1e-5 (abs and rel) in fp64 and fp32 alike:
    diffusers keeps ᾱ in fp32 and we in fp64, which bounds fp64 agreement at ~4e-6 relative on x̂_0 at t = 981."""
    ref, ours = _diffusers("DDIMScheduler"), _sd(DDIMSampler)
    ref.set_timesteps(num_steps)
    ours.set_timesteps(num_steps)
    assert ours.timesteps.tolist() == ref.timesteps.tolist()
    g = torch.Generator().manual_seed(num_steps)
    for dtype, tol in ((torch.float64, 1e-5), (torch.float32, 1e-5)):
        for t in ref.timesteps:
            x, eps = torch.randn(2, 4, 5, 5, generator=g, dtype=dtype), torch.randn(2, 4, 5, 5, generator=g, dtype=dtype)
            out = ref.step(eps, t, x, eta=0.0)
            torch.testing.assert_close(ours.step(eps, t, x), out.prev_sample, rtol=tol, atol=tol)
            torch.testing.assert_close(ours.predict_x0(eps, t, x), out.pred_original_sample, rtol=tol, atol=tol)


@pytest.mark.parametrize("num_steps", [50, 999])
def test_ddpm_matches_diffusers_configured_as_sd(num_steps):
    """Same timesteps; with the noise diffusers draws from a generator, the same sample (fp64 to 1e-10).

    diffusers' DDPM has no set_alpha_to_one: its ᾱ after the last step is 1, so ours runs with final_alpha_one=True.
    Both draw z with torch.randn(shape, generator) on the CPU in the sample's dtype; ours draws fp32 and casts, so the
    comparison feeds fp32 inputs and compares to 1e-5.
    """
    ref = _diffusers("DDPMScheduler")
    ours = DDPMSampler(NoiseSchedule("scaled_linear"), clip_sample=None, timestep_spacing="leading", steps_offset=1)
    ref.set_timesteps(num_steps)
    ours.set_timesteps(num_steps)
    assert ours.timesteps.tolist() == ref.timesteps.tolist()
    g = torch.Generator().manual_seed(3)
    for t in ref.timesteps[:: max(1, num_steps // 10)].tolist() + [ref.timesteps[-1].item()]:
        x, eps = torch.randn(2, 4, 5, 5, generator=g), torch.randn(2, 4, 5, 5, generator=g)
        a = ref.step(eps, t, x, generator=torch.Generator().manual_seed(t)).prev_sample
        b = ours.step(eps, t, x, generator=torch.Generator().manual_seed(t))
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_bad_spacing_options_are_rejected():
    with pytest.raises(ValueError, match="timestep_spacing must be one of linspace, leading, got 'trailing'"):
        DDIMSampler(NoiseSchedule("linear"), timestep_spacing="trailing")
    with pytest.raises(ValueError, match="steps_offset must be an int"):
        DDIMSampler(NoiseSchedule("linear"), steps_offset=-1)


def test_batched_guidance_equals_two_passes():
    from conftest import tiny_unet_config
    from sdlesson.unet import UNet
    torch.manual_seed(0)
    model = UNet(tiny_unet_config(in_channels=4, context_dim=16))
    context, mask = torch.randn(2, 5, 16), torch.tensor([[True] * 5, [True, True, False, False, False]])
    cond, uncond = {"context": context, "context_mask": mask}, {"context": context, "context_mask": mask & False}
    uncond["context_mask"][:, 0] = True
    sampler = DDIMSampler(NoiseSchedule("scaled_linear"), clip_sample=None)
    run = lambda batch: sample(model, sampler, (2, 4, 8, 8), num_steps=4, cond=cond, uncond=uncond,  # noqa: E731
                               guidance_scale=5.0, batch_guidance=batch, generator=torch.Generator().manual_seed(0),
                               progress=False)
    torch.testing.assert_close(run(True), run(False), rtol=1e-4, atol=1e-4)


def test_sample_starts_from_given_latents():
    class Zero(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x, t):
            return torch.zeros_like(x)

    sampler = DDIMSampler(NoiseSchedule("linear"), clip_sample=None)
    x_T = torch.randn(1, 1, 2, 2)
    out = sample(Zero(), sampler, (1, 1, 2, 2), num_steps=1, latents=x_T, progress=False)
    torch.testing.assert_close(out, x_T / NoiseSchedule("linear").alphas_cumprod[-1].sqrt().float())  # x̂_0, ε̂ = 0
    with pytest.raises(ValueError, match=r"latents must have shape \(1, 1, 3, 3\)"):
        sample(Zero(), sampler, (1, 1, 3, 3), num_steps=1, latents=x_T, progress=False)
