"""The library's shape: the front door, the time-boxed fit, and the names that moved (still importable where
notebooks and scripts found them)."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_unet_config
from sdlesson.schedule import NoiseSchedule
from sdlesson.train import DiffusionLoss, TrainConfig, Trainer
from sdlesson.unet import UNet


def tiny_trainer(path=None, steps=10_000):
    torch.manual_seed(0)
    images = torch.rand(16, 1, 8, 8) * 2 - 1
    config = TrainConfig(steps=steps, batch_size=4, lr=1e-3, warmup_steps=2, checkpoint_every=10_000)
    return Trainer(UNet(tiny_unet_config()), DiffusionLoss(NoiseSchedule("linear", num_timesteps=50)), images,
                   config, device="cpu", checkpoint_path=path, progress=False)


def test_a_time_boxed_fit_stops_on_time_and_saves_where_it_stopped(tmp_path):
    path = tmp_path / "run.safetensors"
    trainer = tiny_trainer(path)
    trainer.fit(max_seconds=1.0)
    assert 0 < trainer.step < 10_000 and len(trainer.history) == trainer.step
    assert tiny_trainer(path).step == trainer.step  # the checkpoint holds the step it stopped at
    with pytest.raises(ValueError, match="max_seconds"):
        trainer.fit(max_seconds=0)


def test_the_front_door_names_resolve_and_import_nothing_heavy():
    import subprocess
    import sys

    import sdlesson

    assert sdlesson.__all__[:2] == ["NoiseSchedule", "DiffusionLoss"]  # lesson order: the schedule first
    for name in sdlesson.__all__:
        assert getattr(sdlesson, name).__name__ == name
    assert set(sdlesson.__all__) <= set(dir(sdlesson))
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        sdlesson.nothing
    code = "import sys, sdlesson; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


def test_moved_names_stay_importable_where_they_were():
    from sdlesson import pretrained, recipes, schedule, sd_weights, stable_diffusion, train

    assert train.DiffusionLoss is schedule.DiffusionLoss and train.condition_kwargs is schedule.condition_kwargs
    for name in ("UNET_RULES", "TEXT_RULES", "diffusers_to_course", "rename", "fuse_qkv", "read_state", "check_state",
                 "text_config_from_transformers", "unet_config_from_diffusers", "vae_config_from_diffusers"):
        assert getattr(stable_diffusion, name) is getattr(sd_weights, name)
    assert pretrained.SCENE_VAE is recipes.SCENE_VAE and "SCENE_VAE" in dir(pretrained)
    with pytest.raises(AttributeError):
        pretrained.SCENE_VAE_TRAIN  # trimmed: read it from recipes


def test_recording_attention_keeps_the_cross_attention_softmax_and_stops():
    """The recorded weights are a softmax over the text tokens: each row sums to 1 and masked tokens get 0."""
    import dataclasses

    from sdlesson.unet import recording_attention

    torch.manual_seed(0)
    unet = UNet(dataclasses.replace(tiny_unet_config(), context_dim=16)).eval()
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 7])
    context, mask = torch.randn(2, 5, 16), torch.tensor([[True, True, True, False, False]] * 2)
    with recording_attention(unet, where=lambda name: name.startswith("mid")) as layers:
        assert list(layers) == ["mid_attn.cross_attn"]
        unet(x, t, context=context, context_mask=mask)
        w = layers["mid_attn.cross_attn"].weights  # (B, heads, N, L)
        torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]))
        assert (w[..., 3:] == 0).all()
        assert w.shape[:2] == (2, unet.mid_attn.cross_attn.heads) and w.shape[-1] == 5
    assert unet.mid_attn.cross_attn.weights is None and not unet.mid_attn.cross_attn.keep_weights
    with pytest.raises(ValueError, match="kind must be one of"):
        with recording_attention(unet, kind="both"):
            pass


def test_parameters_by_level_and_kind_adds_up_and_finds_every_resampler():
    """Against independent counts: the total is the model's, and the "resample" column is exactly the parameters
    of the Downsample / Upsample modules, found by type rather than by name."""
    from sdlesson.cost import parameters_by_level_and_kind
    from sdlesson.stable_diffusion import SD_UNET
    from sdlesson.unet import Downsample, Upsample, count_parameters

    with torch.device("meta"):
        sd_unet = UNet(SD_UNET)  # shapes only
    for unet in (UNet(tiny_unet_config()), sd_unet):
        table = parameters_by_level_and_kind(unet)
        assert sum(sum(row.values()) for row in table.values()) == count_parameters(unet)
        resamplers = sum(count_parameters(m) for m in unet.modules() if isinstance(m, (Downsample, Upsample)))
        assert sum(row["resample"] for row in table.values()) == resamplers > 0
        assert list(table)[0] == "in/out" and "mid" in table and table["mid"]["resample"] == 0
