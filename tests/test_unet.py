import math

import pytest
import torch

from sdlesson.unet import Attention, UNet, UNetConfig, count_parameters, timestep_embedding

from conftest import tiny_unet_config


@pytest.mark.parametrize("channels, size", [(1, 8), (3, 16), (4, 8), (1, 28), (3, 64)])
def test_output_has_the_input_shape(channels, size):
    model = UNet(tiny_unet_config(in_channels=channels, sample_size=size))
    x = torch.randn(2, channels, size, size)
    assert model(x, torch.tensor([0, 999])).shape == x.shape


@pytest.mark.parametrize("block", ["simple", "transformer"])
def test_unet_fits_a_tiny_batch(block):
    """More than shapes: 3-channel 16×16, text-conditioned, the UNet learns two fixed (x, t, context) → target maps
    (the loss falls to under 5% of its start in 60 Adam steps), so every path from input to output carries signal."""
    torch.manual_seed(0)
    model = UNet(tiny_unet_config(in_channels=3, sample_size=16, context_dim=6, attention_block=block))
    x, t, ctx = torch.randn(2, 3, 16, 16), torch.tensor([10, 500]), torch.randn(2, 3, 6)
    target = torch.randn(2, 3, 16, 16)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss = (model(x, t, context=ctx) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.05 * losses[0]


def test_timestep_embedding_formula():
    t = torch.tensor([0, 7, 500])
    emb = timestep_embedding(t, 8)
    for i, ti in enumerate(t.tolist()):
        for j in range(4):
            w = 10000 ** (-j / 4)
            assert emb[i, j].item() == pytest.approx(math.cos(ti * w), abs=1e-5)
            assert emb[i, 4 + j].item() == pytest.approx(math.sin(ti * w), abs=1e-5)


def test_output_depends_on_the_timestep(tiny_unet):
    x = torch.randn(1, 1, 8, 8)
    assert not torch.allclose(tiny_unet(x, torch.tensor([0])), tiny_unet(x, torch.tensor([900])))


def test_scalar_timestep_is_broadcast(tiny_unet):
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(tiny_unet(x, 5), tiny_unet(x, torch.tensor([5, 5, 5])))


def test_attention_matches_its_definition():
    torch.manual_seed(0)
    attn = Attention(16, head_dim=8)
    x = torch.randn(2, 5, 16)
    q, k, v = attn.to_q(x), attn.to_k(x), attn.to_v(x)
    heads = []
    for h in range(2):
        sl = slice(8 * h, 8 * h + 8)
        weights = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(8), dim=-1)
        heads.append(weights @ v[..., sl])
    torch.testing.assert_close(attn(x), attn.to_out(torch.cat(heads, -1)))


@pytest.mark.parametrize("block", ["simple", "transformer"])
def test_self_attention_mixes_positions_and_convolutions_stay_local(monkeypatch, block):
    """A change in one corner of a 64×64 input reaches the far quadrant only through self-attention: the convolutions'
    reach is under 32 pixels, and GroupNorm (whose statistics span the whole image and would carry any change
    everywhere) is swapped for the identity so it cannot stand in for attention."""
    from sdlesson import unet

    torch.manual_seed(0)
    model = UNet(tiny_unet_config(sample_size=64, attention_levels=(True, True), attention_block=block))
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, torch.nn.GroupNorm):
                setattr(module, name, torch.nn.Identity())
    x = torch.randn(1, 1, 64, 64)
    y = x.clone()
    y[..., 0, 0] += 5.0

    def far_change():
        with torch.no_grad():
            return (model(x, 10) - model(y, 10))[..., 40:, 40:].abs().max().item()

    assert far_change() > 1e-7
    real = unet.Attention.forward  # now self-attention answers zeros: nothing reaches the far quadrant
    monkeypatch.setattr(unet.Attention, "forward", lambda self, h, context=None, context_mask=None: (
        torch.zeros_like(h) if context is None else real(self, h, context, context_mask)))
    assert far_change() == 0.0


def test_class_conditioning_changes_the_prediction_and_has_a_null_class():
    torch.manual_seed(0)
    model = UNet(tiny_unet_config(num_classes=3))
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 3])
    a = model(x, t, class_labels=torch.tensor([0, 0]))
    b = model(x, t, class_labels=torch.tensor([2, 2]))
    assert not torch.allclose(a, b)
    torch.testing.assert_close(model(x, t), model(x, t, class_labels=torch.tensor([3, 3])))


def test_cross_attention_uses_the_context_and_respects_the_mask():
    torch.manual_seed(0)
    model = UNet(tiny_unet_config(context_dim=6))
    x, t = torch.randn(1, 1, 8, 8), torch.tensor([3])
    ctx = torch.randn(1, 4, 6)
    assert not torch.allclose(model(x, t, context=ctx), model(x, t, context=torch.randn(1, 4, 6)))
    mask = torch.tensor([[True, True, False, False]])
    other = ctx.clone()
    other[:, 2:] = torch.randn(1, 2, 6)  # change only the masked-out tokens
    torch.testing.assert_close(model(x, t, context=ctx, context_mask=mask),
                               model(x, t, context=other, context_mask=mask))


def test_resblock_parameter_count_by_formula():
    from sdlesson.unet import ResBlock

    i, o, e = 32, 64, 128
    # norms, convs, the time embedding's projection, the skip's 1×1 conv
    by_hand = (2 * i) + (9 * i * o + o) + (e * o + o) + (2 * o) + (9 * o * o + o) + (i * o + o)
    assert count_parameters(ResBlock(i, o, e, groups=8, dropout=0.0)) == by_hand


@pytest.mark.parametrize("bad, message", [
    (torch.randn(1, 8, 8), r"expected images of shape \(B, 1, H, W\), got \(1, 8, 8\)"),
    (torch.randn(1, 3, 8, 8), "takes 1-channel input, got 3 channels"),
    (torch.randn(1, 1, 9, 9), "multiples of 2"),
])
def test_bad_images_are_rejected_with_a_clear_message(tiny_unet, bad, message):
    with pytest.raises(ValueError, match=message):
        tiny_unet(bad, torch.tensor([0]))


def test_wrong_number_of_timesteps_is_rejected(tiny_unet):
    with pytest.raises(ValueError, match="one timestep per image"):
        tiny_unet(torch.randn(2, 1, 8, 8), torch.tensor([0, 1, 2]))


def test_conditioning_the_model_lacks_is_rejected(tiny_unet):
    with pytest.raises(ValueError, match="no class conditioning"):
        tiny_unet(torch.randn(1, 1, 8, 8), 0, class_labels=torch.tensor([1]))
    with pytest.raises(ValueError, match="no cross-attention"):
        tiny_unet(torch.randn(1, 1, 8, 8), 0, context=torch.randn(1, 2, 4))


def test_config_validates_itself():
    with pytest.raises(ValueError, match="one entry per level"):
        UNetConfig(block_channels=(32, 64), attention_levels=(False,))
    with pytest.raises(ValueError, match="divisible by 2\\*\\*\\(levels-1\\) = 4"):
        UNetConfig(sample_size=30)


def test_cross_attention_can_keep_its_weights_for_plots():
    from sdlesson.unet import Attention

    torch.manual_seed(0)
    attn = Attention(16, head_dim=8, context_dim=6)
    x, context = torch.randn(2, 4, 16), torch.randn(2, 5, 6)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    out = attn(x, context, mask)
    assert attn.weights is None  # off by default: nothing is stored
    attn.keep_weights = True
    assert torch.equal(attn(x, context, mask), out)  # keeping the weights changes nothing
    w = attn.weights  # (B, heads, positions, tokens)
    assert w.shape == (2, 2, 4, 5)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 2, 4))
    assert (w[1, :, :, 3:] == 0).all()  # masked tokens get no attention
    v = attn.to_v(context).view(2, 5, 2, 8).transpose(1, 2)
    torch.testing.assert_close(attn.to_out((w @ v).transpose(1, 2).reshape(2, 4, 16)), out, atol=1e-5, rtol=1e-5)
