import math

import numpy as np
import pytest
import torch

from sdlesson.schedule import NoiseSchedule, make_betas


def test_named_schedules_match_their_papers():
    linear = make_betas("linear", 1000)
    assert linear[0].item() == pytest.approx(1e-4) and linear[-1].item() == pytest.approx(0.02)
    scaled = make_betas("scaled_linear", 1000)
    assert scaled[0].item() == pytest.approx(0.00085) and scaled[-1].item() == pytest.approx(0.012)
    # Cosine: ᾱ_t follows f(t)/f(0) with f(t) = cos²((t/T + s)/(1 + s) · π/2), written here with numpy.
    T, s = 1000, 0.008
    f = lambda t: np.cos((t / T + s) / (1 + s) * np.pi / 2) ** 2  # noqa: E731
    a_bar = NoiseSchedule("cosine").alphas_cumprod.numpy()
    expected = f(np.arange(1, T + 1)) / f(0)
    np.testing.assert_allclose(a_bar[:900], expected[:900], rtol=1e-9)  # before the 0.999 clip bites


def test_alphas_cumprod_is_the_product_of_alphas(schedule):
    a_bar = 1.0
    for t in [0, 1, 2, 3]:
        a_bar *= 1 - schedule.betas[t].item()
        assert schedule.alphas_cumprod[t].item() == pytest.approx(a_bar, rel=1e-12)


@pytest.mark.parametrize("T", [10, 1000, 4000])
def test_num_timesteps_is_configurable(T):
    s = NoiseSchedule("cosine", num_timesteps=T)
    assert len(s.betas) == T and s.num_timesteps == T
    assert s.alphas_cumprod[-1] < 0.01  # the last step is (nearly) pure noise


def test_step_by_step_chain_matches_closed_form_in_distribution(schedule):
    """Noising one step at a time gives x_t with the closed form's mean sqrt(ᾱ_t) x_0 and variance 1 - ᾱ_t."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((20000, 1), 0.7, dtype=torch.float64)
    x = x0
    t_check = [0, 99, 499]
    for t in range(max(t_check) + 1):
        x = schedule.step_forward(x, torch.randn(x.shape, generator=g, dtype=torch.float64), t)
        if t in t_check:
            a_bar = schedule.alphas_cumprod[t].item()
            assert x.mean().item() == pytest.approx(math.sqrt(a_bar) * 0.7, abs=0.02)
            assert x.var().item() == pytest.approx(1 - a_bar, abs=0.02)


def test_add_noise_is_the_closed_form(schedule):
    x0 = torch.randn(4, 3, 5, 5)
    noise = torch.randn(4, 3, 5, 5)
    t = torch.tensor([0, 10, 500, 999])
    out = schedule.add_noise(x0, noise, t)
    for i in range(4):
        a = schedule.alphas_cumprod[t[i]].item()
        torch.testing.assert_close(out[i], math.sqrt(a) * x0[i] + math.sqrt(1 - a) * noise[i])


def test_snr_definition(schedule):
    t = torch.tensor([0, 250, 999])
    a = schedule.alphas_cumprod[t]
    torch.testing.assert_close(schedule.snr(t), a / (1 - a))
    assert torch.all(schedule.snr()[1:] < schedule.snr()[:-1])  # noise only ever grows


def test_posterior_matches_bayes_rule_numerically():
    """q(x_{t-1} | x_t, x_0) ∝ q(x_t | x_{t-1}) q(x_{t-1} | x_0): multiply the two Gaussian densities on a grid."""
    s = NoiseSchedule("linear")
    x0, xt, t = torch.tensor([0.3], dtype=torch.float64), torch.tensor([0.1], dtype=torch.float64), 300
    mean, var = s.posterior(x0, xt, t)
    beta, a_bar_prev = s.betas[t].item(), s.alphas_cumprod[t - 1].item()
    grid = np.linspace(-3, 3, 200001)
    log_p = (-(xt.item() - np.sqrt(1 - beta) * grid) ** 2 / (2 * beta)
             - (grid - np.sqrt(a_bar_prev) * x0.item()) ** 2 / (2 * (1 - a_bar_prev)))
    w = np.exp(log_p - log_p.max())
    w /= w.sum()
    grid_mean = (w * grid).sum()
    assert mean.item() == pytest.approx(grid_mean, abs=1e-6)
    assert var.item() == pytest.approx((w * (grid - grid_mean) ** 2).sum(), rel=1e-4)


def test_unknown_schedule_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown schedule 'quadratic'.*linear, cosine, scaled_linear"):
        NoiseSchedule("quadratic")


@pytest.mark.parametrize("t", [-1, 1000, [0, 1000]])
def test_timesteps_outside_range_are_rejected(t):
    s = NoiseSchedule("linear")
    with pytest.raises(ValueError, match=r"timesteps must lie in \[0, 1000\)"):
        s.add_noise(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), t)


def test_float_timesteps_are_rejected():
    with pytest.raises(TypeError, match="integers"):
        NoiseSchedule("linear").add_noise(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), torch.tensor([0.5]))


def test_loss_per_timestep_is_zero_for_the_true_noise_and_one_for_none():
    """A model that inverts x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε exactly (it knows x_0) has no error at any t;
    one that predicts zeros has the noise's own mean square, ≈ 1."""
    from sdlesson.schedule import loss_per_timestep

    schedule = NoiseSchedule("linear")
    x0 = torch.rand(64, 1, 8, 8) * 2 - 1

    class Oracle(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))  # a parameter, so the helper finds the model's device

        def forward(self, x_t, t):
            a_bar = schedule.alphas_cumprod[t].float().view(-1, 1, 1, 1)
            return (x_t - a_bar.sqrt() * x0) / (1 - a_bar).sqrt() + self.w

    class Zero(Oracle):
        def forward(self, x_t, t):
            return torch.zeros_like(x_t) + self.w

    ts = [0, 100, 999]
    assert max(loss_per_timestep(Oracle(), schedule, x0, ts)) < 1e-4
    assert all(abs(v - 1) < 0.1 for v in loss_per_timestep(Zero(), schedule, x0, ts))
