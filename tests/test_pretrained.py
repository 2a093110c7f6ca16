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


def _scene_latents(n=64, split="train"):
    from sdlesson.latents import encode_scenes

    vae = pretrained.load_pretrained("scene_vae")
    return encode_scenes(vae, n, seed=pretrained.SCENE_TEST_SEED, split=split, scale=pretrained.scene_latent_scale())


def test_shipped_latent_unets_denoise_new_scene_latents():
    from sdlesson.schedule import NoiseSchedule
    from sdlesson.text import encode_prompts

    latents, captions, _ = _scene_latents()
    schedule = NoiseSchedule(pretrained.SCENE_SCHEDULE)
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(0))
    t = torch.full((len(latents),), 300)
    x_t = schedule.add_noise(latents, noise, t)
    unet = pretrained.load_pretrained("scene_latent_unet")
    text_unet = pretrained.load_pretrained("scene_text_unet")
    assert unet.config == pretrained.SCENE_LATENT_UNET and text_unet.config == pretrained.SCENE_TEXT_UNET
    context, mask = encode_prompts(pretrained.load_pretrained("scene_clip"), captions)
    with torch.no_grad():
        plain = torch.nn.functional.mse_loss(unet(x_t, t), noise).item()
        prompted = torch.nn.functional.mse_loss(text_unet(x_t, t, context=context, context_mask=mask), noise).item()
        empty = mask.clone()
        empty[:, 1:] = False
        unprompted = torch.nn.functional.mse_loss(text_unet(x_t, t, context=context, context_mask=empty), noise).item()
    assert plain < 0.2 and prompted < unprompted  # an untrained UNet scores about 1; the caption helps


def test_shipped_clip_matches_scenes_to_their_captions():
    latents, captions, _ = _scene_latents(50, split="heldout")
    clip = pretrained.load_pretrained("scene_clip")
    ids, mask = clip.config.tokenizer()(captions)
    with torch.no_grad():
        best = (clip.encode_image(latents) @ clip.encode_text(ids, mask).T).argmax(1)
    same = [captions[i] == c for i, c in zip(best.tolist(), captions)]
    assert sum(same) / len(same) > 0.9


def test_fine_tuned_decoder_keeps_the_encoder():
    vae, fine = pretrained.load_pretrained("scene_vae"), pretrained.load_pretrained("scene_vae_decoder")
    for a, b in zip(vae.encoder.state_dict().values(), fine.encoder.state_dict().values()):
        assert torch.equal(a, b)  # the same latents, so the latent UNets work with either decoder
    assert any((a - b).abs().max() > 1e-3 for a, b in zip(vae.decoder.parameters(), fine.decoder.parameters()))


def test_generate_command_with_the_shipped_models(tmp_path, capsys):
    from PIL import Image

    from sdlesson.cli import main

    out = tmp_path / "cat.png"
    main(["generate", "a large cat face in the center on a blue background", "-n", "2", "--num-steps", "10",
          "--zoom", "1", "--out", str(out)])
    assert Image.open(out).size == (2 * 64 + 3, 64 + 2) and "wrote" in capsys.readouterr().out


def test_provenance_says_how_each_checkpoint_was_made():
    for name in pretrained.CHECKPOINTS:
        meta = read_metadata(pretrained.checkpoint_path(name))
        text = pretrained.provenance(name)
        assert f"{meta['steps']:,} steps" in text and meta["command"] in text and name in text
