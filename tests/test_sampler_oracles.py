"""The course's own sampler settings (linear schedule, linspace spacing, x̂_0 clipped to [-1, 1], the last step onto
ᾱ = 1) against diffusers' schedulers, the oracle: whole chains from the same x_T, the same pseudo-model and the same
noise draws, in fp32. Tolerance: 1e-4 absolute on values of order 1 after up to 1000 steps (measured: at most
3.5e-5, DDPM over 1000 steps).

(Stable Diffusion's settings — scaled_linear, leading spacing, no clipping — are compared in test_samplers.py.)
"""

import pytest
import torch

from sdlesson.samplers import DDIMSampler, DDPMSampler
from sdlesson.schedule import NoiseSchedule

COURSE = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02, clip_sample=True,
              clip_sample_range=1.0, timestep_spacing="linspace", set_alpha_to_one=True)


def pseudo_model(x, t):
    """A fixed ε̂(x, t): depends on x and on t, so any mismatch of steps or timesteps shows; large enough at high t
    that x̂_0 leaves [-1, 1] and the clipping path runs."""
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(1234))
    return 0.6 * x + 0.4 * torch.sin(torch.tensor(int(t) / 97.0)) * z


def run(step, timesteps, x, clipped=None):
    for t in timesteps:
        eps = pseudo_model(x, t)
        if clipped is not None:  # how often x̂_0 = (x - sqrt(1 - ᾱ) ε̂) / sqrt(ᾱ) leaves [-1, 1]
            clipped.append(clipped_share(x, eps, int(t)))
        x = step(eps, int(t), x, generator=torch.Generator().manual_seed(int(t)))  # the same noise draw for both
    return x


def clipped_share(x, eps, t):
    a = NoiseSchedule("linear").alphas_cumprod[t].item()
    return (((x - (1 - a) ** 0.5 * eps) / a**0.5).abs() > 1).float().mean().item()


def x_T():
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("num_steps", [1000, 50, 7])
def test_ddpm_course_settings_equal_diffusers_whole_chain(num_steps):
    from diffusers import DDPMScheduler

    ours = DDPMSampler(NoiseSchedule("linear"), clip_sample=1.0)
    theirs = DDPMScheduler(**{k: v for k, v in COURSE.items() if k != "set_alpha_to_one"},
                           variance_type="fixed_small")
    ours.set_timesteps(num_steps)
    theirs.set_timesteps(num_steps)
    assert ours.timesteps.tolist() == theirs.timesteps.tolist()
    clipped = []
    a = run(lambda e, t, x, generator: ours.step(e, t, x, generator=generator), ours.timesteps, x_T(), clipped)
    b = run(lambda e, t, x, generator: theirs.step(e, t, x, generator=generator).prev_sample, theirs.timesteps, x_T())
    assert max(clipped) > 0.5  # the clipping path ran
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    assert (a - x_T()).abs().mean() > 0.1  # and the chain went somewhere


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_course_settings_equal_diffusers_with_the_clipped_model_output(eta):
    """Our DDIM recomputes ε̂ from the clipped x̂_0, which is diffusers' use_clipped_model_output=True. diffusers' DDIM
    steps back by T // n, which is linspace's spacing only at n = T: 1000 steps here; leading spacing below."""
    from diffusers import DDIMScheduler

    ours = DDIMSampler(NoiseSchedule("linear"), eta=eta, clip_sample=1.0)
    theirs = DDIMScheduler(**COURSE)
    ours.set_timesteps(1000)
    theirs.set_timesteps(1000)
    assert ours.timesteps.tolist() == theirs.timesteps.tolist()
    clipped = []
    a = run(lambda e, t, x, generator: ours.step(e, t, x, generator=generator), ours.timesteps, x_T(), clipped)

    def diffusers_step(clip_output):
        return lambda e, t, x, generator: theirs.step(e, t, x, eta=eta, use_clipped_model_output=clip_output,
                                                      generator=generator).prev_sample

    b = run(diffusers_step(True), theirs.timesteps, x_T())
    assert max(clipped) > 0.5
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    unclipped_eps = run(diffusers_step(False), theirs.timesteps, x_T())
    assert (a - unclipped_eps).abs().max() > 1e-2  # the choice matters: the other one is a different chain


@pytest.mark.parametrize("num_steps", [10, 50])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_clipping_path_at_few_steps_equals_diffusers(num_steps, eta):
    """The same clipped chain at 10 and 50 steps, on leading spacing (where diffusers' T // n step is the spacing)."""
    from diffusers import DDIMScheduler

    ours = DDIMSampler(NoiseSchedule("linear"), eta=eta, clip_sample=1.0, spacing="leading")
    theirs = DDIMScheduler(**COURSE | {"timestep_spacing": "leading"})
    ours.set_timesteps(num_steps)
    theirs.set_timesteps(num_steps)
    assert ours.timesteps.tolist() == theirs.timesteps.tolist()
    a = run(lambda e, t, x, generator: ours.step(e, t, x, generator=generator), ours.timesteps, x_T())
    b = run(lambda e, t, x, generator: theirs.step(e, t, x, eta=eta, use_clipped_model_output=True,
                                                   generator=generator).prev_sample, theirs.timesteps, x_T())
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


@pytest.mark.parametrize("num_steps", [2, 4, 7, 50, 333, 1000])
def test_linspace_timesteps_equal_diffusers(num_steps):
    """(At n = 1 they part on purpose: our one step starts from pure noise, t = 999; diffusers' linspace: t = 0.)"""
    from diffusers import DDIMScheduler, DDPMScheduler

    ours = DDIMSampler(NoiseSchedule("linear"))
    ours.set_timesteps(num_steps)
    ddpm = {k: v for k, v in COURSE.items() if k != "set_alpha_to_one"}
    for theirs in (DDIMScheduler(**COURSE), DDPMScheduler(**ddpm)):
        theirs.set_timesteps(num_steps)
        assert ours.timesteps.tolist() == theirs.timesteps.tolist()
