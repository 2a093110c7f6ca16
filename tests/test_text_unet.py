"""TextUNet: a UNet that owns its text encoder (lesson 06's jointly trained model), with tiny random weights."""

import pytest
import torch

from conftest import tiny_unet_config
from sdlesson import checkpoint as ckpt
from sdlesson import pretrained
from sdlesson.generate import TextSide, TextToImage
from sdlesson.schedule import DiffusionLoss, NoiseSchedule
from sdlesson.text import CLIPConfig
from sdlesson.text_unet import TextUNet, TextUNetConfig
from sdlesson.vae import VAE, VAEConfig

TEXT = CLIPConfig(width=16, layers=1, heads=2, image_width=8, embed_dim=8)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return TextUNet(TextUNetConfig(unet=tiny_unet_config(in_channels=4, context_dim=16), text=TEXT))


def test_forward_is_the_unet_reading_its_own_text_encoder(model):
    ids, mask = TEXT.tokenizer()(["a small cat face", "a dog face"])
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 500])
    with torch.no_grad():
        expected = model.unet(x, t, context=model.text(ids), context_mask=mask)
        assert torch.equal(model(x, t, context=ids, context_mask=mask), expected)
    with pytest.raises(ValueError, match="token ids"):
        model(x, t)


def test_the_denoising_loss_reaches_the_text_encoder_unless_it_is_frozen(model):
    ids, mask = TEXT.tokenizer()(["a small cat face"] * 4)
    batch = (torch.randn(4, 4, 8, 8), ids, mask)
    loss = DiffusionLoss(NoiseSchedule("scaled_linear"), p_uncond=0.5)
    loss(model, batch, torch.Generator().manual_seed(0)).backward()
    assert model.text.token_embedding.weight.grad.abs().sum() > 0
    model.zero_grad()
    model.text.requires_grad_(False)
    loss(model, batch, torch.Generator().manual_seed(0)).backward()
    assert model.text.token_embedding.weight.grad is None and model.unet.conv_in.weight.grad.abs().sum() > 0


def test_config_must_match_widths():
    with pytest.raises(ValueError, match="context_dim"):
        TextUNetConfig(unet=tiny_unet_config(in_channels=4, context_dim=8), text=TEXT)


def test_checkpoint_round_trip_and_pipeline(model, tmp_path, monkeypatch):
    path = ckpt.save_model(tmp_path / "joint.safetensors", model)
    back = ckpt.load_model(path)
    assert type(back) is TextUNet and back.config.to_dict() == model.config.to_dict()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), back.state_dict().values()))

    # from_pretrained with a TextUNet checkpoint: the text side is the model's own encoder, not the world's CLIP
    vae = VAE(VAEConfig(block_channels=(8, 16), norm_groups=4, patch_size=4))
    shipped = {"joint": back, "comp_vae": vae}
    monkeypatch.setattr(pretrained, "load_pretrained", lambda name, device="cpu": shipped[name])
    monkeypatch.setattr(pretrained, "latent_scale_of", lambda name: 0.5)
    pipe = TextToImage.from_pretrained("compositional", unet="joint")
    assert isinstance(pipe.text, TextSide) and pipe.text.text_encoder is back.text and pipe.unet is back.unet
    images = pipe("a small cat face", num_images=2, num_steps=2, seed=0)
    assert images.shape == (2, 3, 64, 64)
    direct = TextToImage(None, back, vae, latent_scale=0.5)  # a TextUNet in hand (lesson 06's GPU branch)
    assert torch.equal(direct("a small cat face", num_images=2, num_steps=2, seed=0), images)
    with pytest.raises(ValueError, match="own text encoder"):
        TextToImage(pipe.text, back, vae, latent_scale=0.5)
