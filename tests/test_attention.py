"""generate.attention_per_word: where the UNet reads each token, as lesson 06 plots it."""

import pytest
import torch

from conftest import tiny_unet_config
from sdlesson.generate import TextToImage, attention_per_word
from sdlesson.text import CLIP, CLIPConfig
from sdlesson.unet import UNet
from sdlesson.vae import VAE, VAEConfig

PROMPT = "a large dog face in the top left on a pink background"


@pytest.fixture(scope="module")
def tiny_pipe():
    torch.manual_seed(0)
    clip = CLIP(CLIPConfig(width=16, layers=1, heads=2, image_width=8, embed_dim=8))
    unet = UNet(tiny_unet_config(in_channels=4, context_dim=16))
    vae = VAE(VAEConfig(block_channels=(8, 16), norm_groups=4, patch_size=4))
    return TextToImage(clip, unet, vae, latent_scale=0.5, num_steps=2)


def test_maps_sum_to_one_over_the_prompts_tokens_and_differ_by_word(tiny_pipe):
    image, maps = attention_per_word(tiny_pipe, PROMPT, levels=("down.1", "up.0"))  # the tiny UNet's 4×4 levels
    assert image.dtype == torch.uint8 and image.shape == (3, 64, 64)
    assert maps.shape == (16, 4, 4)  # 16 tokens (<bos>, 11 words, <eos>, padding) on the 4×4 latent grid
    torch.testing.assert_close(maps.sum(0), torch.ones(4, 4), atol=1e-5, rtol=0)  # a softmax over the tokens
    words = ["<bos>", *PROMPT.split(), "<eos>"]
    assert maps[len(words):].abs().max() == 0  # padding is masked out: never read
    assert (maps[words.index("dog")] - maps[words.index("pink")]).abs().max() > 1e-3  # each word its own map
    again = attention_per_word(tiny_pipe, PROMPT, levels=("down.1", "up.0"))
    assert torch.equal(again[1], maps) and torch.equal(again[0], image)  # seeded: the same maps


def test_maps_equal_the_attention_written_out(tiny_pipe):
    """One layer's maps, recomputed from what it read: softmax(q kᵀ / √d) over the unmasked tokens, heads averaged."""
    import math

    layer = dict(tiny_pipe.unet.named_modules())["down.1.attn.0.cross_attn"]
    calls = []
    hook = layer.register_forward_hook(lambda m, args, kwargs, out: calls.append((args, kwargs)), with_kwargs=True)
    try:
        _, maps = attention_per_word(tiny_pipe, PROMPT, levels=("down.1",))
    finally:
        hook.remove()
    (x, context, mask), _ = calls[-1]  # the last call: attention_per_word's own, batch 1
    with torch.no_grad():
        q = layer.to_q(x).view(1, x.shape[1], layer.heads, -1).transpose(1, 2)  # (1, heads, 16, d)
        k = layer.to_k(context).view(1, context.shape[1], layer.heads, -1).transpose(1, 2)  # (1, heads, L, d)
        scores = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).masked_fill(~mask[:, None, None, :], -math.inf)
    expected = scores.softmax(-1)[0].mean(0).T.reshape(-1, 4, 4)  # (L, 4, 4)
    torch.testing.assert_close(maps, expected, atol=1e-6, rtol=0)


def test_levels_of_different_sizes_or_none_are_refused(tiny_pipe):
    torch.manual_seed(0)
    both = TextToImage(tiny_pipe.clip, UNet(tiny_unet_config(in_channels=4, context_dim=16,
                                                            attention_levels=(True, True))),
                       tiny_pipe.vae, latent_scale=0.5, num_steps=1)
    with pytest.raises(ValueError, match="different latent sizes"):
        attention_per_word(both, PROMPT, levels=("down.0", "down.1"))  # 8×8 and 4×4
    assert attention_per_word(both, PROMPT, levels=("down.0",))[1].shape == (16, 8, 8)
    with pytest.raises(ValueError, match="no cross-attention layer in the levels"):
        attention_per_word(tiny_pipe, PROMPT, levels=("down.7",))
