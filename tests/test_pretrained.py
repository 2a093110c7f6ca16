"""The shipped checkpoints in data/: they load into the recipes' configs and do their job."""

import pytest
import torch

from sdlesson import pretrained
from sdlesson.checkpoint import read_metadata
from sdlesson.classifier import predict
from sdlesson.data import load_silhouettes


@pytest.mark.parametrize("name", sorted(pretrained.CHECKPOINTS))
def test_shipped_checkpoint_has_a_model_card_entry(name):
    meta = read_metadata(pretrained.checkpoint_path(name))
    assert meta["command"].startswith("python -m sdlesson train " + name)
    assert meta["steps"] == meta["train_config"]["steps"] and meta["seconds"] > 0 and meta["hardware"]


def test_shipped_silhouette_classifier_is_accurate():
    classifier = pretrained.load_pretrained("silhouette_classifier")
    assert classifier.config == pretrained.SILHOUETTE_CLASSIFIER
    x, y = load_silhouettes("test")
    accuracy = (predict(classifier, x).argmax(-1) == y).float().mean().item()
    assert accuracy > 0.95


def test_shipped_unet_matches_its_recipe_and_denoises():
    unet = pretrained.load_pretrained("silhouette_unet")
    assert unet.config == pretrained.SILHOUETTE_UNET
    from sdlesson.schedule import NoiseSchedule

    schedule = NoiseSchedule(pretrained.SILHOUETTE_SCHEDULE)
    x0, _ = load_silhouettes("test")
    x0 = x0[:64]
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(x0.shape, generator=g)
    t = torch.full((64,), 300)
    with torch.no_grad():
        mse = torch.nn.functional.mse_loss(unet(schedule.add_noise(x0, noise, t), t), noise).item()
    assert mse < 0.1  # an untrained UNet scores about 1


def test_unknown_or_missing_checkpoint_is_a_clear_error(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="unknown checkpoint 'sd15'"):
        pretrained.checkpoint_path("sd15")
    monkeypatch.setattr(pretrained, "DATA_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="MODEL_CARD.md"):
        pretrained.checkpoint_path("silhouette_unet")
