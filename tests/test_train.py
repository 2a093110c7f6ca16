import pytest
import torch

from sdlesson.checkpoint import load_model, read_metadata
from sdlesson.classifier import Classifier, ClassifierConfig, classification_loss
from sdlesson.schedule import NoiseSchedule
from sdlesson.train import DiffusionLoss, TrainConfig, Trainer, pick_device
from sdlesson.unet import UNet

from conftest import tiny_unet_config


def small_trainer(path=None, steps=6, seed=0, precision="fp32"):
    torch.manual_seed(0)
    images = torch.rand(16, 1, 8, 8) * 2 - 1
    config = TrainConfig(steps=steps, batch_size=4, lr=1e-3, warmup_steps=2, ema_decay=0.9, checkpoint_every=3,
                         precision=precision)
    return Trainer(UNet(tiny_unet_config()), DiffusionLoss(NoiseSchedule("linear", num_timesteps=50)), images,
                   config, device="cpu", checkpoint_path=path, progress=False)


def test_overfits_one_batch():
    """The whole loop (loss, AdamW, clipping, EMA) can drive the loss of one fixed batch far down."""
    torch.manual_seed(0)
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    y = torch.tensor([0, 1, 2, 3])
    model = Classifier(ClassifierConfig(in_channels=1, num_classes=4, channels=(8, 16), feature_dim=16, norm_groups=4))
    trainer = Trainer(model, classification_loss, (x, y), TrainConfig(steps=100, batch_size=4, lr=1e-2, warmup_steps=1),
                      device="cpu", progress=False)
    history = trainer.fit()
    assert max(history[-5:]) < 0.05 * history[0]


def test_diffusion_loss_falls_on_a_fixed_batch():
    torch.manual_seed(0)
    x = torch.rand(1, 1, 8, 8).repeat(8, 1, 1, 1) * 2 - 1
    trainer = Trainer(UNet(tiny_unet_config()), DiffusionLoss(NoiseSchedule("linear", num_timesteps=50)), x,
                      TrainConfig(steps=150, batch_size=8, lr=3e-3, warmup_steps=5), device="cpu", progress=False)
    history = trainer.fit()
    first, last = sum(history[:10]) / 10, sum(history[-10:]) / 10
    assert last < 0.5 * first


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_resumed_run_equals_uninterrupted_run(tmp_path, precision):
    """3 steps, a checkpoint, 3 more in a fresh Trainer == 6 straight, bit for bit; fp16 restores its loss scale."""
    def fresh(path=None, steps=6):
        trainer = small_trainer(path, steps=steps, precision=precision)
        if precision == "fp16" and trainer.step == 0:  # a loss scale that doubles every 2 steps, so it moves in 3
            trainer.scaler = torch.amp.GradScaler("cpu", growth_interval=2)
        return trainer

    straight = fresh(steps=6)
    straight.fit()

    path = tmp_path / "run.safetensors"
    first = fresh(path, steps=3)
    first.fit()  # writes the checkpoint at step 3
    resumed = small_trainer(path, steps=6, precision=precision)  # a fresh process would do exactly this
    assert resumed.step == 3 and len(resumed.history) == 3
    assert resumed.scaler.state_dict() == first.scaler.state_dict()  # {} when disabled (fp32, bf16)
    if precision == "fp16":
        assert resumed.scaler.get_scale() == 2.0 ** 17 and resumed.amp_dtype == torch.float16
    resumed.fit()

    assert resumed.history == straight.history
    assert resumed.scaler.state_dict() == straight.scaler.state_dict()
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(straight.ema_model.state_dict().values(), resumed.ema_model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_ema_lags_behind_the_weights():
    trainer = small_trainer(steps=5)
    trainer.fit()
    p = dict(trainer.model.named_parameters())["conv_in.weight"]
    e = dict(trainer.ema_model.named_parameters())["conv_in.weight"]
    assert not torch.allclose(p, e) and not e.requires_grad


def test_checkpoint_holds_config_and_loads_as_a_model(tmp_path):
    path = tmp_path / "run.safetensors"
    trainer = small_trainer(path, steps=3)
    trainer.fit()
    meta = read_metadata(path)
    assert meta["kind"] == "unet" and meta["step"] == 3 and meta["config"]["block_channels"] == [8, 16]
    model = load_model(path)
    for a, b in zip(model.state_dict().values(), trainer.ema_model.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_resume_refuses_a_different_train_config(tmp_path):
    path = tmp_path / "run.safetensors"
    small_trainer(path, steps=3).fit()
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="different TrainConfig"):
        Trainer(UNet(tiny_unet_config()), DiffusionLoss(NoiseSchedule("linear", num_timesteps=50)),
                torch.zeros(16, 1, 8, 8), TrainConfig(steps=6, batch_size=8), device="cpu", checkpoint_path=path)


def test_resume_reads_a_file_from_before_a_config_field_existed(tmp_path):
    """A run saved before TrainConfig gained a field (lr_schedule, say) resumes: the field's default is what it ran
    with."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    path = tmp_path / "run.safetensors"
    small_trainer(path, steps=3).fit()
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    old = json.loads(meta["train_config"])
    del old["lr_schedule"]
    save_file(tensors, str(path), metadata=meta | {"train_config": json.dumps(old)})
    trainer = small_trainer(path, steps=6)
    assert trainer.step == 3
    trainer.fit()
    assert trainer.step == 6
    old["no_such_setting"] = 1
    save_file(tensors, str(path), metadata=meta | {"train_config": json.dumps(old)})
    with pytest.raises(ValueError, match="cannot read"):
        small_trainer(path, steps=6)


def test_pick_device_prefers_an_explicit_choice_then_cuda_then_mps(monkeypatch):
    assert pick_device("cpu").type == "cpu"
    cuda, mps = [True], [True]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda[0])
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps[0])
    assert pick_device().type == "cuda" and pick_device("cpu").type == "cpu"
    cuda[0] = False
    assert pick_device().type == "mps"
    mps[0] = False
    assert pick_device().type == "cpu"


def test_class_dropout_uses_the_null_class():
    seen = []

    class Spy(torch.nn.Module):
        config = tiny_unet_config(num_classes=3)

        def forward(self, x, t, class_labels):
            seen.append(class_labels)
            return torch.zeros_like(x)

    loss = DiffusionLoss(NoiseSchedule("linear"), p_uncond=0.5)
    loss(Spy(), (torch.zeros(2000, 1, 2, 2), torch.zeros(2000, dtype=torch.long)), torch.Generator().manual_seed(0))
    frac_null = (seen[0] == 3).float().mean().item()
    assert 0.45 < frac_null < 0.55 and set(seen[0].tolist()) == {0, 3}


def test_bad_config_and_data_are_rejected():
    with pytest.raises(ValueError, match="precision must be one of"):
        TrainConfig(precision="fp8")
    with pytest.raises(ValueError, match="same first dimension"):
        Trainer(UNet(tiny_unet_config()), None, (torch.zeros(4, 1, 8, 8), torch.zeros(3)), device="cpu")


def test_learning_rate_warms_up_then_follows_its_schedule():
    from sdlesson.train import learning_rate

    constant = TrainConfig(steps=100, lr=1.0, warmup_steps=10)
    assert learning_rate(constant, 0) == pytest.approx(0.1) and learning_rate(constant, 50) == 1.0
    cosine = TrainConfig(steps=110, lr=1.0, warmup_steps=10, lr_schedule="cosine")
    assert learning_rate(cosine, 10) == pytest.approx(1.0)
    assert learning_rate(cosine, 60) == pytest.approx(0.55)  # halfway down: 0.1 + 0.9 · 0.5
    assert learning_rate(cosine, 110) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="lr_schedule must be"):
        TrainConfig(lr_schedule="linear")


def test_diffusion_loss_shards_draw_the_global_batch():
    """Two processes' halves (shard = (first, total)) get exactly the t and ε a single process gives those examples."""
    from sdlesson.train import step_generator

    seen = []

    class Echo(torch.nn.Module):  # records the noised input, so the draws can be compared
        def forward(self, x_t, t):
            seen.append((x_t, t))
            return torch.zeros_like(x_t)

    loss = DiffusionLoss(NoiseSchedule("linear", num_timesteps=50))
    x0 = torch.rand(8, 1, 4, 4)
    whole = loss(Echo(), (x0,), step_generator(0, 3))
    halves = [loss(Echo(), (x0[i:i + 4],), step_generator(0, 3), shard=(i, 8)) for i in (0, 4)]
    (x_all, t_all), (x_a, t_a), (x_b, t_b) = seen
    assert torch.equal(torch.cat([t_a, t_b]), t_all) and torch.equal(torch.cat([x_a, x_b]), x_all)
    torch.testing.assert_close((halves[0] + halves[1]) / 2, whole)


def test_a_notebook_fit_ends_as_one_plain_line(monkeypatch):
    """In a notebook the progress is one text output updated in place; when done it is the fit's summary."""
    import sys

    import IPython.display

    shown = {}

    class Handle:
        def update(self, obj, raw):
            shown["last"] = obj["text/plain"]

    monkeypatch.setitem(sys.modules, "ipykernel", sys)
    monkeypatch.setattr(IPython.display, "display",
                        lambda obj, raw, display_id: shown.update(last=obj["text/plain"]) or Handle())
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    trainer = small_trainer(steps=6)
    trainer.progress = True
    trainer.fit()
    assert shown["last"].startswith("trained 6 steps: loss ") and shown["last"].endswith(" s")


class _WithBuffers(torch.nn.Module):
    """A linear map then BatchNorm: a float buffer (running_mean) that trains, and an integer one that must not lerp."""

    def __init__(self):
        super().__init__()
        self.lin, self.norm = torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4)

    def forward(self, x):
        return self.norm(self.lin(x))


def _regression_loss(model, batch, generator):
    x, y = batch
    return ((model(x) - y) ** 2).mean()


def test_ema_follows_its_closed_form_warm_up_and_lerp_buffers_included():
    """After step k: θ_ema ← d_k θ_ema + (1 - d_k) θ_{k+1}, d_k = min(decay, (1 + k) / (10 + k)), computed here in
    float64 from the weights after every step; decay 0.5 is reached at k = 8, so both branches of the min run."""
    torch.manual_seed(0)
    x, y = torch.randn(32, 3), torch.randn(32, 4)
    trainer = Trainer(_WithBuffers(), _regression_loss, (x, y),
                      TrainConfig(steps=12, batch_size=8, lr=1e-2, warmup_steps=1, ema_decay=0.5),
                      device="cpu", progress=False)
    expected = {k: v.double().clone() for k, v in trainer.model.state_dict().items()}
    ints = {k: v.clone() for k, v in trainer.ema_model.state_dict().items() if not v.is_floating_point()}
    for k in range(12):
        trainer.train_step()
        d = min(0.5, (1 + k) / (10 + k))
        for name, now in trainer.model.state_dict().items():
            if now.is_floating_point():
                expected[name] = d * expected[name] + (1 - d) * now.double()
    ema = trainer.ema_model.state_dict()
    assert ints and all(torch.equal(ema[k], v) for k, v in ints.items())  # num_batches_tracked: not averaged
    assert "norm.running_mean" in expected and not torch.equal(trainer.model.norm.running_mean, torch.zeros(4))
    for name, value in expected.items():
        if value.is_floating_point():
            torch.testing.assert_close(ema[name].double(), value, rtol=1e-6, atol=1e-7, msg=name)


def test_diffusion_loss_trains_the_model_to_predict_the_noise():
    """A model that recovers ε from x_t by the closed form (x_t - sqrt(ᾱ_t) x_0) / sqrt(1 - ᾱ_t), with ᾱ computed
    here from the βs, scores 0; one that answers x_0 scores mean((x_0 - ε)²), the same draws replayed by hand."""
    from sdlesson.train import step_generator

    schedule = NoiseSchedule("linear", num_timesteps=50)
    alpha_bar = torch.cumprod(1 - schedule.betas, 0)
    x0 = torch.rand(6, 1, 4, 4) * 2 - 1

    class Oracle(torch.nn.Module):
        def forward(self, x_t, t):
            a = alpha_bar[t].view(-1, 1, 1, 1)
            return ((x_t - a.sqrt() * x0) / (1 - a).sqrt()).float()

    class Clean(torch.nn.Module):
        def forward(self, x_t, t):
            return x0

    loss = DiffusionLoss(schedule)
    assert loss(Oracle(), (x0,), step_generator(0, 4)).item() < 1e-10
    g = step_generator(0, 4)  # the draws in DiffusionLoss's order: t, then ε
    torch.randint(0, 50, (6,), generator=g)
    eps = torch.randn((6, 1, 4, 4), generator=g)
    torch.testing.assert_close(loss(Clean(), (x0,), step_generator(0, 4)), ((x0 - eps) ** 2).mean())


def test_caption_dropout_empties_the_chosen_captions_and_keeps_the_rest():
    """p_uncond of the captions become empty ones (every token masked but the first); the others are untouched."""
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, x_t, t, context, context_mask):
            seen.append((context, context_mask))
            return torch.zeros_like(x_t)

    n = 2000
    context, mask = torch.randn(n, 5, 3), torch.ones(n, 5, dtype=torch.bool)
    mask[::2, 3:] = False  # some captions are shorter
    original = mask.clone()
    DiffusionLoss(NoiseSchedule("linear"), p_uncond=0.25)(Spy(), (torch.zeros(n, 1, 2, 2), context, mask),
                                                        torch.Generator().manual_seed(0))
    got_context, got_mask = seen[0]
    assert torch.equal(mask, original) and torch.equal(got_context, context)  # the batch itself is not modified
    dropped = ~got_mask[:, 1:].any(1) & original[:, 1:].any(1)
    assert 0.22 < dropped.float().mean().item() < 0.28
    assert got_mask[:, 0].all()  # the first (start) token stays: an empty caption, not no caption
    assert torch.equal(got_mask[~dropped], original[~dropped])
    for p, expect in ((0.0, 0), (1.0, n)):
        seen.clear()
        DiffusionLoss(NoiseSchedule("linear"), p_uncond=p)(Spy(), (torch.zeros(n, 1, 2, 2), context, mask),
                                                         torch.Generator().manual_seed(0))
        assert int((~seen[0][1][:, 1:].any(1)).sum()) == expect
