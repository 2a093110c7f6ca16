"""LoRA: the adapter's formula, merge / unmerge, the course's file, and shared SD v1.5 files loaded as diffusers does.

Oracle: diffusers' StableDiffusionPipeline after `load_lora_weights` (peft underneath), on the tiny random SD
snapshot of sd_snapshot.py and a tiny random LoRA written in kohya's and diffusers' layouts: same image, fp32.
"""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from sd_snapshot import diffusers_pipeline, reference_models, write_snapshot
from sdlesson import lora as L

TOLERANCE = 1e-4  # max abs difference of images in [0, 1], fp32
PROMPT = "a photograph of an astronaut riding a horse"
# what shared SD v1.5 LoRAs adapt: attention projections, proj_in / proj_out, the GEGLU MLP; CLIP's attention + MLP
UNET_TARGETS = r"(attn[12]\.(to_q|to_k|to_v|to_out\.0)|proj_in|proj_out|ff\.net\.(0\.proj|2))$"
TEXT_TARGETS = r"(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])$"


# --- the adapter itself --------------------------------------------------------------------------------------------

def test_lora_linear_is_the_formula_and_merges_exactly():
    torch.manual_seed(0)
    base = nn.Linear(12, 10)
    layer = L.LoRALinear(base, rank=3, alpha=6)
    assert torch.equal(layer.up.weight, torch.zeros(10, 3))  # B = 0: starts as the base layer
    nn.init.normal_(layer.up.weight)
    layer.scale = 0.7
    x = torch.randn(5, 12)
    W, b, A, B = base.weight.detach().clone(), base.bias.detach(), layer.down.weight.detach(), layer.up.weight.detach()
    expected = x @ W.T + b + (6 / 3) * 0.7 * (x @ A.T @ B.T)  # W x + b + (α / r) · s · B A x, written independently
    assert torch.allclose(layer(x), expected, atol=1e-5)
    layer.merge()
    assert torch.allclose(base.weight, W + 2 * 0.7 * B @ A, atol=1e-6) and torch.allclose(layer(x), expected, atol=1e-5)
    layer.unmerge()
    assert torch.equal(base.weight, W)  # exactly the old weight, not W' - ΔW


def test_lora_conv_matches_its_merged_weight():
    torch.manual_seed(1)
    base = nn.Conv2d(6, 8, 3, padding=1)
    layer = L.LoRAConv2d(base, rank=2, alpha=1)
    nn.init.normal_(layer.up.weight)
    x = torch.randn(2, 6, 5, 5)
    live = layer(x)
    expected = nn.functional.conv2d(x, base.weight + 0.5 * torch.einsum("or,rikl->oikl", layer.up.weight[:, :, 0, 0],
                                                                      layer.down.weight), base.bias, padding=1)
    assert torch.allclose(live, expected, atol=1e-5)
    layer.merge()
    assert torch.allclose(layer(x), live, atol=1e-5)


def test_initialised_as_peft():
    """A drawn as peft draws it (kaiming-uniform, a = √5: U(±1/√in)), B zeros: the same numbers from the same seed."""
    from peft import LoraConfig, inject_adapter_in_model

    net = nn.Sequential(nn.Linear(40, 30))
    torch.manual_seed(2)
    theirs = inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, target_modules=["0"]), net)[0]
    torch.manual_seed(2)
    ours = L.LoRALinear(theirs.base_layer, rank=4)
    assert torch.equal(ours.down.weight, theirs.lora_A["default"].weight)
    assert torch.equal(ours.up.weight, theirs.lora_B["default"].weight)


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8))


def test_inject_freezes_the_rest_and_saves_a_small_file(tmp_path):
    net = small_net()
    x = torch.randn(4, 8)
    before = net(x)
    names = L.inject_lora(net, targets=r"^[02]$", rank=2, alpha=4, seed=0)
    assert names == ["0", "2"] and torch.equal(net(x), before)  # B = 0
    trainable = [p for p in net.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in L.lora_parameters(net)} and len(trainable) == 4
    for p in L.lora_parameters(net):
        nn.init.normal_(p)
    out = net(x)
    path = L.save_lora(net, tmp_path / "a.safetensors", config={"targets": r"^[02]$"})
    fresh = small_net()
    assert L.load_lora(fresh, path) == ["0", "2"] and torch.allclose(fresh(x), out)
    assert L.read_lora_config(path)["alpha"] == {"0": 4.0, "2": 4.0}
    L.set_lora_scale(fresh, 0)
    assert torch.allclose(fresh(x), before)
    L.set_lora_scale(fresh, 1)
    L.merge_lora(fresh)
    assert torch.allclose(fresh(x), out, atol=1e-6)
    L.remove_lora(fresh)
    assert isinstance(fresh[0], nn.Linear) and torch.equal(fresh(x), before)


def test_lora_errors():
    with pytest.raises(ValueError, match="matches"):
        L.inject_lora(small_net(), targets="to_q")
    with pytest.raises(ValueError, match="rank"):
        L.inject_lora(small_net(), targets="0", rank=0)


# --- shared SD v1.5 files ------------------------------------------------------------------------------------------

def random_lora(unet, text, *, rank=2, seed=0, alphas=(4.0, 1.0)) -> dict[tuple[str, str], dict]:
    """{(part, diffusers layer): down, up, alpha} for every layer a shared SD v1.5 LoRA adapts, random, B ≠ 0.

    One α per network, as trainers write them: diffusers 0.42 drops per-layer α's of kohya files (peft warns that its
    alpha_pattern matched nothing), so layers with different α's would not be a fair comparison."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for part, model, pattern, alpha in (("unet", unet, UNET_TARGETS, alphas[0]),
                                        ("text_encoder", text, TEXT_TARGETS, alphas[1])):
        for name, m in model.named_modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)) and re.search(pattern, name):
                ins, outs = L._sizes(m)
                kernel = (1, 1) if isinstance(m, nn.Conv2d) else ()
                out[part, name] = dict(down=torch.randn(rank, ins, *kernel, generator=g) * 0.3,
                                       up=torch.randn(outs, rank, *kernel, generator=g) * 0.3,
                                       alpha=alpha)
    return out


def kohya_layout(lora) -> dict:
    state = {}
    for (part, name), e in lora.items():
        key = ("lora_unet_" if part == "unet" else "lora_te_") + name.replace(".", "_")
        state |= {f"{key}.lora_down.weight": e["down"], f"{key}.lora_up.weight": e["up"],
                  f"{key}.alpha": torch.tensor(e["alpha"])}
    return state


def peft_layout(lora) -> dict:
    """diffusers' saved layout: unet.<layer>.lora_A.weight / lora_B.weight; α folded into B (diffusers stores none)."""
    return {f"{part}.{name}.lora_{ab}.weight": (e["down"] if ab == "A" else e["up"] * e["alpha"] / e["down"].shape[0])
            for (part, name), e in lora.items() for ab in "AB"}


def processor_layout(lora) -> dict:
    """diffusers' older attention-processor layout: only the attention projections, no α."""
    state = {}
    for (part, name), e in lora.items():
        up = e["up"] * e["alpha"] / e["down"].shape[0]
        if part == "unet" and (m := re.match(r"(.*attn[12])\.(to_q|to_k|to_v|to_out)(\.0)?$", name)):
            key = f"unet.{m[1]}.processor.{m[2]}_lora"
        elif part == "text_encoder" and "self_attn" in name:
            key = f"text_encoder.{name}.lora_linear_layer"
        else:
            continue
        state |= {f"{key}.down.weight": e["down"], f"{key}.up.weight": up}
    return state


LAYOUTS = {"kohya": kohya_layout, "peft": peft_layout, "processor": processor_layout}


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    return write_snapshot(tmp_path_factory.mktemp("sd"), reference_models(seed=3))


def images(ours, theirs, *, scale):
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    mine = ours(PROMPT, num_images=1, num_steps=3, latents=latents, output_type="float")
    ref = theirs(PROMPT, num_inference_steps=3, latents=latents, output_type="np", height=32, width=32,
                 cross_attention_kwargs={"scale": scale}).images
    return mine, torch.from_numpy(ref).permute(0, 3, 1, 2)


@pytest.mark.parametrize("layout, merge", [("kohya", False), ("peft", False), ("kohya", True), ("peft", True),
                                           ("processor", False)])
def test_sd_lora_image_equals_diffusers(snapshot, tmp_path, layout, merge):
    from safetensors.torch import save_file

    from sdlesson.generate import TextToImage

    theirs = diffusers_pipeline(snapshot)
    lora = random_lora(theirs.unet, theirs.text_encoder)
    path = tmp_path / f"{layout}.safetensors"
    state = LAYOUTS[layout](lora)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    theirs.load_lora_weights(str(path), adapter_name="x")
    ours = TextToImage.from_stable_diffusion(snapshot)
    base, _ = images(ours, theirs, scale=0.0)
    names = L.load_sd_lora(ours, path, scale=0.8, merge=merge)
    adapted = {(p, L._course_name(p, n)[0]) for p, n in L.read_sd_lora(state)}
    assert len(names) == len(adapted)  # every layer adapted (q, k, v: one)
    mine, ref = images(ours, theirs, scale=0.8)
    print(f"{layout} merged={merge}: max |ours - diffusers| = {(mine - ref).abs().max():.2e}, "
          f"LoRA effect {(ref - base).abs().max():.2e}")
    assert (ref - base).abs().max() > 100 * TOLERANCE  # the LoRA changes the image, so the comparison means something
    assert (mine - ref).abs().max() <= TOLERANCE
    if merge:  # unmerged (W' - ΔW) and at scale 0: the base model's image again, up to rounding
        for net in (ours.unet, ours.text.text_encoder):
            L.unmerge_lora(net), L.set_lora_scale(net, 0)
        assert (images(ours, theirs, scale=0.0)[0] - base).abs().max() <= 1e-5


def test_kohya_locon_3x3_convs_equal_diffusers(snapshot, tmp_path):
    """kohya's LoCon: adapters on the resnets' 3×3 convs too (A a 3×3 conv to r channels, B a 1×1 conv)."""
    from safetensors.torch import save_file

    from sdlesson.generate import TextToImage

    theirs, g, state = diffusers_pipeline(snapshot), torch.Generator().manual_seed(0), {}
    for name, m in theirs.unet.named_modules():
        if isinstance(m, nn.Conv2d) and re.search(r"resnets\.\d\.conv[12]$", name):
            key = "lora_unet_" + name.replace(".", "_")
            state |= {f"{key}.lora_down.weight": torch.randn(2, m.in_channels, 3, 3, generator=g) * 0.1,
                      f"{key}.lora_up.weight": torch.randn(m.out_channels, 2, 1, 1, generator=g) * 0.1,
                      f"{key}.alpha": torch.tensor(1.0)}
    save_file(state, str(path := tmp_path / "locon.safetensors"))
    theirs.load_lora_weights(str(path), adapter_name="x")
    ours = TextToImage.from_stable_diffusion(snapshot)
    base, _ = images(ours, theirs, scale=0.0)
    assert len(L.load_sd_lora(ours, path, scale=0.8)) == len(state) // 3
    mine, ref = images(ours, theirs, scale=0.8)
    print(f"kohya LoCon 3×3: max |ours - diffusers| = {(mine - ref).abs().max():.2e}")
    assert (ref - base).abs().max() > 100 * TOLERANCE and (mine - ref).abs().max() <= TOLERANCE


def test_file_saved_by_diffusers_with_its_config(snapshot, tmp_path):
    """What diffusers' training scripts write: peft adapters with lora_alpha, alpha_pattern, rank_pattern and rsLoRA
    in the file's metadata, and transformers 5's text keys without "text_model."."""
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    from sdlesson.generate import TextToImage

    unet, _, text = reference_models(seed=3)
    torch.manual_seed(0)
    config_unet = LoraConfig(r=2, lora_alpha=8, target_modules=["to_q", "to_k", "to_v", "to_out.0", "proj_in"],
                             init_lora_weights=False, alpha_pattern={"proj_in": 2}, rank_pattern={"to_v": 3})
    unet.add_adapter(config_unet)
    config_text = LoraConfig(r=4, lora_alpha=2, target_modules=["q_proj", "v_proj", "fc1"], init_lora_weights=False,
                             use_rslora=True)
    text = inject_adapter_in_model(config_text, text)
    theirs = diffusers_pipeline(snapshot)
    theirs.save_lora_weights(tmp_path, unet_lora_layers=get_peft_model_state_dict(unet),
                             text_encoder_lora_layers=get_peft_model_state_dict(text),
                             unet_lora_adapter_metadata=config_unet.to_dict(),
                             text_encoder_lora_adapter_metadata=config_text.to_dict())
    path = tmp_path / "pytorch_lora_weights.safetensors"
    theirs.load_lora_weights(str(path), adapter_name="x")
    ours = TextToImage.from_stable_diffusion(snapshot)
    L.load_sd_lora(ours, path, scale=0.8)
    base = TextToImage.from_stable_diffusion(snapshot)
    mine, ref = images(ours, theirs, scale=0.8)
    err = (mine - ref).abs().max()
    print(f"diffusers-saved file with its LoraConfig: max |ours - diffusers| = {err:.2e}")
    assert (ref - images(base, theirs, scale=0.0)[0]).abs().max() > 100 * TOLERANCE and err <= TOLERANCE


def test_sd_lora_errors(snapshot):
    from sdlesson.stable_diffusion import load_stable_diffusion

    sd = load_stable_diffusion(snapshot)
    down, up = torch.zeros(2, 32), torch.zeros(32, 2)
    with pytest.raises(ValueError, match="SDXL"):
        L.load_sd_lora(sd, {"lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": down})
    with pytest.raises(ValueError, match="SDXL"):
        L.load_sd_lora(sd, {"lora_unet_input_blocks_4_1_proj_in.lora_down.weight": down})
    with pytest.raises(ValueError, match="SDXL"):
        L.load_sd_lora(sd, {"unet.down_blocks.1.attentions.0.transformer_blocks.1.attn1.to_q.lora_A.weight": down})
    with pytest.raises(ValueError, match="2.x"):  # cross-attention reading 1024-wide text
        L.load_sd_lora(sd, {"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight":
                            torch.zeros(2, 1024), "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
                            ".lora_B.weight": up})
    with pytest.raises(ValueError, match=r"match no .*'vae\.encoder\.x'"):
        L.load_sd_lora(sd, {"vae.encoder.x": down})
    with pytest.raises(ValueError, match=r"match no layer .*unet\.down_blocks\.9\.attentions"):
        L.load_sd_lora(sd, {"unet.down_blocks.9.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight": down,
                            "unet.down_blocks.9.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight": up})
    assert not L.lora_layers(sd.unet) and not L.lora_layers(sd.text_encoder)  # nothing half-loaded
