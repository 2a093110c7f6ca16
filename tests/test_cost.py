"""The cost tools against hand counts: FLOPs of a convolution, a linear layer and attention from their formulas,
activation bytes of a small chain counted by hand, the meta device against a real one, and how the UNet's cost
grows with resolution."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sdlesson.cost import (
    activation_memory, attention_flops, flops_breakdown, flops_by_op, forward_flops, peak_memory,
    resolution_sweep, time_forward, time_train_step, train_step_flops, training_state_bytes, unet_for,
    unet_inputs, vae_flops,
)
from sdlesson.unet import count_parameters

from conftest import tiny_unet_config


@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize("stride", [1, 2])
def test_conv_flops_match_the_formula(device, stride):
    B, c_in, c_out, k, H, W = 2, 3, 8, 3, 16, 12
    conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=1, device=device)
    x = torch.randn(B, c_in, H, W, device=device)
    H_out, W_out = H // stride, W // stride
    # each output number: k·k·C_in multiply-adds = 2·k²·C_in FLOPs; there are B·C_out·H_out·W_out of them
    assert forward_flops(conv, x) == 2 * B * H_out * W_out * c_in * c_out * k * k


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_linear_flops_match_the_formula(device):
    B, N, d_in, d_out = 2, 5, 7, 11
    linear = nn.Linear(d_in, d_out, device=device)
    assert forward_flops(linear, torch.randn(B, N, d_in, device=device)) == 2 * B * N * d_in * d_out
    assert flops_by_op(linear, torch.randn(B, N, d_in, device=device))["linear"] == 2 * B * N * d_in * d_out


@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize("L", [None, 7])  # self-attention (L = N), cross-attention to L tokens
def test_attention_flops_are_counted_on_cpu_and_meta(device, L):
    B, h, N, d = 2, 4, 16, 8
    L = L or N
    q = torch.randn(B, h, N, d, device=device)
    k, v = torch.randn(B, h, L, d, device=device), torch.randn(B, h, L, d, device=device)
    flops = forward_flops(F.scaled_dot_product_attention, q, k, v)
    assert flops == 2 * (2 * B * h * N * L * d)  # q kᵀ and (…) v: two batched matmuls
    assert flops == attention_flops(q.shape, k.shape, v.shape)
    assert flops_by_op(F.scaled_dot_product_attention, q, k, v)["attention"] == flops
    # backward: two products per forward product, on the fused CPU kernel as through the math version
    q.requires_grad_(), k.requires_grad_(), v.requires_grad_()
    assert train_step_flops(F.scaled_dot_product_attention, q, k, v) == 3 * flops


def test_meta_counts_equal_real_counts_for_a_tiny_unet():
    context_dim = 16  # self-attention and cross-attention (with a padding mask) both
    cfg = tiny_unet_config(context_dim=context_dim)
    counts = {}
    for device in ("cpu", "meta"):
        torch.manual_seed(0)
        model = unet_for(1, 8, base=cfg, device=device)
        x, t = unet_inputs(1, 8, batch_size=2, device=device)
        kw = dict(context=torch.randn(2, 5, context_dim, device=device),
                  context_mask=torch.tensor([[True] * 5, [True] * 3 + [False] * 2], device=device))
        counts[device] = (forward_flops(model, x, t, **kw), flops_breakdown(model, x, t, **kw),
                          train_step_flops(model, x, t, **kw), activation_memory(model, x, t, **kw))
    assert counts["cpu"] == counts["meta"]
    forward, breakdown, train, _ = counts["cpu"]
    assert sum(sum(kinds.values()) for kinds in breakdown.values()) == forward  # every FLOP in one part
    assert flops_by_op(model, x, t, **kw)["attention"] > 0
    assert 2.9 * forward < train < 3 * forward  # backward ≈ 2× forward (the first layer needs no input gradient)


def test_breakdown_parts_follow_the_unet():
    model = unet_for(4, 8, base=tiny_unet_config(), device="meta")
    x, t = unet_inputs(4, 8, device="meta")
    parts = flops_breakdown(model, x, t)
    assert list(parts) == ["time_mlp", "conv_in", "down.0", "down.1", "mid", "up.0", "up.1", "conv_out"]
    assert parts["conv_in"] == {"conv": 2 * 8 * 8 * 4 * 8 * 9, "linear": 0, "attention": 0}
    assert parts["down.0"]["attention"] == 0 and parts["down.1"]["attention"] > 0  # attention at level 1 only


def test_activation_memory_of_a_linear_relu_chain_by_hand():
    B, d_in, hidden, d_out = 3, 5, 7, 2
    chain = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, d_out), nn.ReLU())
    # Saved for backward, weights aside: Linear 1 its input x (for ∂L/∂W₁ = δᵀx); ReLU 1 its output;
    # Linear 2 its input, which *is* ReLU 1's output (counted once); ReLU 2 its output. fp32: 4 bytes each.
    expected = 4 * B * (d_in + hidden + d_out)
    for device in ("cpu", "meta"):
        chain.to(device)
        assert activation_memory(chain, torch.randn(B, d_in, device=device)) == expected


def test_activation_memory_counts_a_tensor_saved_twice_once():
    x = torch.randn(10, 10, requires_grad=True)
    assert activation_memory(lambda a: a * a, x) == 400  # mul saves both factors: the same 100 floats


def test_activation_memory_of_attention_fused_and_math():
    B, h, N, d = 1, 2, 32, 8

    def qkv(device):
        return [torch.randn(B, h, N, d, device=device, requires_grad=True) for _ in range(3)]

    fused = {dev: activation_memory(F.scaled_dot_product_attention, *qkv(dev)) for dev in ("cpu", "meta")}
    math = {dev: activation_memory(F.scaled_dot_product_attention, *qkv(dev), attention_kernel="math")
            for dev in ("cpu", "meta")}
    assert fused["meta"] == fused["cpu"]  # the meta device imitates the fused kernel faithfully
    assert fused["cpu"] == 4 * (4 * B * h * N * d + B * h * N)  # q, k, v, output; one log-sum-exp per row
    assert math["meta"] == math["cpu"]
    weights = 4 * B * h * N * N  # the (N × N) attention weights of each head, which the math version keeps
    assert weights <= math["cpu"] and math["cpu"] - weights < fused["cpu"]  # besides them, q, k, v at most
    with pytest.raises(ValueError, match="attention_kernel"):
        activation_memory(F.scaled_dot_product_attention, *qkv("meta"), attention_kernel="flash")


def test_conv_flops_grow_with_the_number_of_positions():
    base = tiny_unet_config(attention_levels=(False, False))  # the mid-block attention stays: it is tiny here
    by_side = {}
    for side in (8, 16):
        model = unet_for(3, side, base=base, device="meta")
        by_side[side] = flops_by_op(model, *unet_inputs(3, side, device="meta"))
    assert by_side[16]["conv"] == 4 * by_side[8]["conv"]  # conv FLOPs = 2·H·W·C_in·C_out·k²: ∝ H·W exactly
    total = {side: sum(flops.values()) for side, flops in by_side.items()}
    assert 3.8 < total[16] / total[8] < 4.3  # ≈ ×4; the time MLP is constant, the mid attention ∝ (H·W)²


def test_attention_flops_grow_with_the_square_of_the_positions():
    rows = resolution_sweep(tiny_unet_config(), 3, [8, 16, 32])
    assert [row.size for row in rows] == [8, 16, 32]
    assert [row.numbers for row in rows] == [3 * 8 * 8, 3 * 16 * 16, 3 * 32 * 32]
    for small, large in zip(rows, rows[1:]):
        assert large.attention_flops == 16 * small.attention_flops  # N² with N = H·W: (2·2)² = 16
        assert large.flops / small.flops > 4.2  # super-linear in the positions
        assert large.activation_bytes > 3.5 * small.activation_bytes


def test_unet_for_changes_only_channels_and_size():
    base = tiny_unet_config()
    pixel, latent = unet_for(3, 16, base=base), unet_for(4, 8, base=base)
    assert (pixel.config.in_channels, pixel.config.out_channels, pixel.config.sample_size) == (3, 3, 16)
    assert (latent.config.in_channels, latent.config.out_channels, latent.config.sample_size) == (4, 4, 8)
    assert latent.config.block_channels == pixel.config.block_channels == base.block_channels
    # only conv_in's and conv_out's weights differ: one more input channel and one more output channel
    c0 = base.block_channels[0]
    assert count_parameters(latent) - count_parameters(pixel) == c0 * 9 + (c0 * 9 + 1)


def test_training_state_bytes_are_four_fp32_copies_of_the_weights():
    model = nn.Linear(10, 3)
    assert training_state_bytes(model) == 33 * 4 * 4
    model.bias.requires_grad_(False)
    assert training_state_bytes(model) == 30 * 4 * 4 + 3 * 4


def test_time_functions_return_positive_seconds():
    torch.manual_seed(0)
    model = unet_for(3, 8, base=tiny_unet_config())
    x, t = unet_inputs(3, 8, batch_size=2)
    before = model.conv_in.weight.detach().clone()
    assert isinstance(seconds := time_forward(model, x, t, repeats=2, warmup=0), float) and seconds > 0
    assert isinstance(seconds := time_train_step(model, x, t, repeats=1, warmup=1), float) and seconds > 0
    assert not torch.equal(model.conv_in.weight, before)  # the AdamW steps ran
    with pytest.raises(ValueError, match="meta"):
        time_forward(unet_for(3, 8, base=tiny_unet_config(), device="meta"), *unet_inputs(3, 8, device="meta"))


def test_peak_memory_runs_fn_and_is_none_on_a_cpu():
    ran = []
    assert peak_memory(lambda: ran.append(torch.randn(100)), device="cpu") is None
    assert len(ran) == 1


class _ToyVAE(nn.Module):
    """A stand-in with the interface lesson 03 needs: encode(x) -> Gaussian with mode(), decode(z) -> image."""

    class _Gaussian:
        def __init__(self, moments):
            self.mean, self.logvar = moments.chunk(2, dim=1)

        def mode(self):
            return self.mean

    def __init__(self):
        super().__init__()
        self.enc = nn.Conv2d(3, 8, 8, stride=8)  # (3, H, W) -> 2·4 channels at (H/8, W/8)
        self.dec = nn.ConvTranspose2d(4, 3, 8, stride=8)

    def encode(self, x):
        return self._Gaussian(self.enc(x))

    def decode(self, z):
        return self.dec(z)


def test_vae_flops_count_encode_and_decode():
    x = torch.randn(1, 3, 32, 32, device="meta")
    flops = vae_flops(_ToyVAE().to("meta"), x)
    assert flops["encode"] == 2 * 4 * 4 * 3 * 8 * 8 * 8  # 2 · H_out·W_out · C_in·C_out · k²
    assert flops["decode"] == 2 * 4 * 4 * 4 * 3 * 8 * 8  # transposed: 2 · H_in·W_in · C_in·C_out · k²


def test_resolution_sweep_counts_a_text_conditioned_unet_with_its_context():
    from sdlesson.unet import UNetConfig

    base = UNetConfig(in_channels=4, sample_size=8, block_channels=(16, 32), attention_levels=(True, False),
                      layers_per_block=1, norm_groups=8, attention_block="transformer", attention_heads=2,
                      context_dim=24)
    rows = resolution_sweep(base, 3, [8, 16])
    longer = resolution_sweep(base, 3, [8, 16], context_length=154)
    # cross-attention's QKᵀ and AV grow with the text's length: 2 more B·h·N·L·d per layer for each extra token
    assert all(b.attention_flops > a.attention_flops for a, b in zip(rows, longer))
    assert rows[1].flops > rows[0].flops and rows[1].activation_bytes > rows[0].activation_bytes
