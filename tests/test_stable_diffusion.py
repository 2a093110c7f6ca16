"""Stable Diffusion's own networks: sdlesson's UNet, VAE and text encoder compute what diffusers' and transformers' do.

The oracle models are built from small configs with random weights (no download), saved as a Hugging Face snapshot
would be, and loaded with load_stable_diffusion; the single-file path is checked on a file written in the original
CompVis key layout, itself checked against diffusers' own single-file converters.
"""

import json
import re

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (convert_ldm_clip_checkpoint, convert_ldm_unet_checkpoint,
                                                 convert_ldm_vae_checkpoint)
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel

from sdlesson import stable_diffusion as sdm
from sdlesson.unet import count_parameters

TOL = 1e-4  # fp32, max abs error

UNET = dict(sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64, 64), layers_per_block=2,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
            attention_head_dim=2, norm_num_groups=32)
VAE = dict(in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=2, latent_channels=4,
           down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=32,
           sample_size=32)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's / CLIP's map of the 256 bytes to printable characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def write_tokenizer(folder) -> int:
    """A small CLIP BPE vocabulary: the 256 byte symbols, alone and word-final, a few merges, the two specials."""
    folder.mkdir(parents=True)
    chars = list(bytes_to_unicode().values())
    merges = ["a </w>", "t h", "th e</w>", "c a", "ca t</w>", "d o", "do g</w>"]
    vocab = chars + [c + "</w>" for c in chars] + [m.replace(" ", "") for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return len(vocab)


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    """Reference models with random weights, saved as a diffusers snapshot of SD is laid out."""
    root = tmp_path_factory.mktemp("sd")
    torch.manual_seed(0)
    vocab_size = write_tokenizer(root / "tokenizer")
    unet = UNet2DConditionModel(**UNET).eval()
    vae = AutoencoderKL(**VAE).eval()
    text = CLIPTextModel(CLIPTextConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=128,
                                        num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
                                        hidden_act="quick_gelu", bos_token_id=vocab_size - 2,
                                        eos_token_id=vocab_size - 1)).eval()
    with torch.no_grad():  # GroupNorm/LayerNorm start at (1, 0): randomise them too, so a swapped norm shows
        for model in (unet, vae, text):
            for name, p in model.named_parameters():
                if "norm" in name:
                    p.add_(0.1 * torch.randn_like(p))
    unet.save_pretrained(root / "unet")
    vae.save_pretrained(root / "vae")
    text.save_pretrained(root / "text_encoder")
    return root, unet, vae, text


def inputs(text_width=32, latent=16):
    g = torch.Generator().manual_seed(1)
    return dict(x=torch.randn(2, 4, latent, latent, generator=g), t=torch.tensor([10, 700]),
                ctx=torch.randn(2, 77, text_width, generator=g), image=torch.rand(2, 3, 32, 32, generator=g) * 2 - 1,
                ids=torch.randint(0, 500, (2, 77), generator=g))


def compare(sd, unet, vae, text) -> dict[str, float]:
    """Max abs error of each output, sdlesson vs the reference."""
    i = inputs()
    with torch.no_grad():
        post, ref_post = sd.vae.encode(i["image"]), vae.encode(i["image"]).latent_dist
        z = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(2))
        pairs = {
            "unet": (sd.unet(i["x"], i["t"], context=i["ctx"]), unet(i["x"], i["t"], encoder_hidden_states=i["ctx"]).sample),
            "vae mean": (post.mean, ref_post.mean), "vae logvar": (post.logvar, ref_post.logvar),
            "vae decode": (sd.vae.decode(z), vae.decode(z).sample),
            "text": (sd.text_encoder(i["ids"]), text(i["ids"]).last_hidden_state),
        }
    for name, (ours, ref) in pairs.items():
        assert ours.shape == ref.shape, name
    return {name: (ours - ref).abs().max().item() for name, (ours, ref) in pairs.items()}


def test_parameter_counts_at_full_size_match_diffusers_and_transformers():
    sd = sdm.build_stable_diffusion()  # meta: shapes only
    assert next(sd.unet.parameters()).device.type == "meta"
    with torch.device("meta"):
        unet = UNet2DConditionModel(cross_attention_dim=768, sample_size=64)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
        text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                            num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                                            hidden_act="quick_gelu"))
    assert count_parameters(sd.unet) == count_parameters(unet) == 859_520_964
    assert count_parameters(sd.vae) == count_parameters(vae) == 83_653_863
    assert count_parameters(sd.text_encoder) == count_parameters(text) == 123_060_480


def test_diffusers_folder_loads_and_matches_the_references(snapshot):
    root, unet, vae, text = snapshot
    sd = sdm.load_stable_diffusion(root)
    errors = compare(sd, unet, vae, text)
    print("diffusers folder, max abs errors:", errors)
    assert max(errors.values()) <= TOL, errors
    assert sd.unet.config.attention_heads == 2 and sd.latent_scale == pytest.approx(vae.config.scaling_factor)
    assert next(sd.unet.parameters()).dtype == torch.float32


def test_dtype_and_device_are_applied(snapshot):
    sd = sdm.load_stable_diffusion(snapshot[0], dtype=torch.bfloat16)
    for part in (sd.unet, sd.vae, sd.text_encoder):
        assert {p.dtype for p in part.parameters()} == {torch.bfloat16}
        assert {p.device.type for p in part.parameters()} == {"cpu"}


# The original single file, in CompVis' key layout: written from the diffusers models by the mapping below (the
# inverse of sdlesson's), which diffusers' own converters must turn back into the diffusers state dicts exactly.

def ldm_unet(state: dict, n: int, attention_levels) -> dict:
    out = {}
    res = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
           ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection")]
    for k, v in state.items():
        key = k
        key = re.sub(r"^time_embedding\.linear_([12])\.", lambda m: f"time_embed.{2 * int(m[1]) - 2}.", key)
        key = re.sub(r"^conv_in\.", "input_blocks.0.0.", key)
        key = re.sub(r"^conv_norm_out\.", "out.0.", key)
        key = re.sub(r"^conv_out\.", "out.2.", key)
        key = re.sub(r"^down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.",
                     lambda m: f"input_blocks.{1 + int(m[1]) * (n + 1) + int(m[3])}.{int(m[2] == 'attentions')}.", key)
        key = re.sub(r"^down_blocks\.(\d+)\.downsamplers\.0\.conv\.",
                     lambda m: f"input_blocks.{1 + int(m[1]) * (n + 1) + n}.0.op.", key)
        key = re.sub(r"^up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.",
                     lambda m: f"output_blocks.{int(m[1]) * (n + 1) + int(m[3])}.{int(m[2] == 'attentions')}.", key)
        key = re.sub(r"^up_blocks\.(\d+)\.upsamplers\.0\.",
                     lambda m: f"output_blocks.{int(m[1]) * (n + 1) + n}."
                               f"{2 if attention_levels[len(attention_levels) - 1 - int(m[1])] else 1}.", key)
        key = re.sub(r"^mid_block\.resnets\.([01])\.", lambda m: f"middle_block.{2 * int(m[1])}.", key)
        key = re.sub(r"^mid_block\.attentions\.0\.", "middle_block.1.", key)
        if not re.search(r"\.\d+\.1\.", key) and not key.startswith("middle_block.1."):  # a ResBlock's own names
            for a, b in res:
                key = key.replace(f".{a}.", f".{b}.")
        out["model.diffusion_model." + key] = v
    return out


def ldm_vae(state: dict, levels: int) -> dict:
    out = {}
    for k, v in state.items():
        key = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", k)
        key = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", key)
        key = re.sub(r"^decoder\.up_blocks\.(\d+)\.resnets\.", lambda m: f"decoder.up.{levels - 1 - int(m[1])}.block.", key)
        key = re.sub(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
                     lambda m: f"decoder.up.{levels - 1 - int(m[1])}.upsample.", key)
        key = re.sub(r"mid_block\.resnets\.([01])\.", lambda m: f"mid.block_{int(m[1]) + 1}.", key)
        key = key.replace("mid_block.attentions.0.group_norm.", "mid.attn_1.norm.")
        key = re.sub(r"mid_block\.attentions\.0\.to_([qkv])\.", r"mid.attn_1.\1.", key)
        key = key.replace("mid_block.attentions.0.to_out.0.", "mid.attn_1.proj_out.")
        key = key.replace("conv_norm_out.", "norm_out.").replace("conv_shortcut.", "nin_shortcut.")
        if re.search(r"attn_1\.(q|k|v|proj_out)\.weight$", key):
            v = v[:, :, None, None]  # the original uses 1×1 convs
        out["first_stage_model." + key] = v
    return out


@pytest.fixture(scope="module")
def single_file(snapshot, tmp_path_factory):
    root, unet, vae, text = snapshot
    levels = tuple(t.startswith("CrossAttn") for t in UNET["down_block_types"])
    state = ldm_unet(unet.state_dict(), UNET["layers_per_block"], levels)
    state |= ldm_vae(vae.state_dict(), len(VAE["block_out_channels"]))
    state |= {"cond_stage_model.transformer." + k: v for k, v in text.state_dict().items()}
    path = tmp_path_factory.mktemp("single") / "sd-v1-small.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    configs = {"unet": sdm.unet_config_from_diffusers(dict(unet.config)),
               "vae": sdm.vae_config_from_diffusers(dict(vae.config))[0],
               "text_encoder": sdm.text_config_from_transformers(text.config.to_dict())}
    return path, configs


def test_the_single_file_layout_is_the_one_diffusers_converts(snapshot, single_file):
    _, unet, vae, text = snapshot
    state = load_file(str(single_file[0]))
    for converted, ref in [(convert_ldm_unet_checkpoint(state, dict(unet.config)), unet.state_dict()),
                           (convert_ldm_vae_checkpoint(state, dict(vae.config)), vae.state_dict()),
                           (convert_ldm_clip_checkpoint(state), text.state_dict())]:
        assert sorted(converted) == sorted(ref)
        for k in ref:
            assert torch.equal(converted[k].reshape(ref[k].shape), ref[k]), k


def test_single_file_loads_and_matches_the_references(snapshot, single_file):
    _, unet, vae, text = snapshot
    sd = sdm.load_stable_diffusion(single_file[0], configs=single_file[1])
    errors = compare(sd, unet, vae, text)
    print("single file, max abs errors:", errors)
    assert max(errors.values()) <= TOL, errors
    folder = sdm.load_stable_diffusion(snapshot[0])
    for ours, theirs in [(sd.unet, folder.unet), (sd.vae, folder.vae), (sd.text_encoder, folder.text_encoder)]:
        for (name, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items()):
            assert torch.equal(a, b), name


# Errors: each names the problem.

def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        sdm.load_stable_diffusion(tmp_path / "nowhere")


def test_folder_missing_a_part(snapshot, tmp_path):
    root = tmp_path / "snap"
    root.mkdir()
    for part in ("unet", "text_encoder", "tokenizer"):
        (root / part).symlink_to(snapshot[0] / part)
    with pytest.raises(FileNotFoundError, match="vae/"):
        sdm.load_stable_diffusion(root)


@pytest.mark.parametrize("key, looks_like", [("conditioner.embedders.0.transformer.x", "SDXL"),
                                              ("cond_stage_model.model.token_embedding.weight", "2.x"),
                                              ("encoder.layers.0.weight", "not a Stable Diffusion")])
def test_other_models_are_named(tmp_path, key, looks_like):
    path = tmp_path / "other.safetensors"
    save_file({key: torch.zeros(2), "model.diffusion_model.x" if "Stable" not in looks_like else "y": torch.zeros(1)},
              str(path))
    with pytest.raises(ValueError, match=re.escape(looks_like)):
        sdm.load_stable_diffusion(path)


def test_sd2_diffusers_config_is_named():
    with pytest.raises(ValueError, match=r"Stable Diffusion 2\.x"):
        sdm.unet_config_from_diffusers(dict(UNET, use_linear_projection=True))


def test_missing_unexpected_and_misshapen_keys_are_named(single_file, tmp_path):
    path, configs = single_file
    state = load_file(str(path))
    broken = dict(state)
    del broken["model.diffusion_model.out.2.bias"]
    broken["model.diffusion_model.extra.weight"] = torch.zeros(1)
    save_file(broken, str(tmp_path / "keys.safetensors"))
    with pytest.raises(ValueError, match=r"unet: .*missing key\(s\), e\.g\. conv_out\.bias.*unexpected key\(s\), "
                                         r"e\.g\. extra\.weight"):
        sdm.load_stable_diffusion(tmp_path / "keys.safetensors", configs=configs)
    misshapen = dict(state)
    misshapen["first_stage_model.quant_conv.weight"] = torch.zeros(8, 8, 3, 3)
    save_file(misshapen, str(tmp_path / "shape.safetensors"))
    with pytest.raises(ValueError, match=r"vae: tensor quant_conv\.weight has shape \(8, 8, 3, 3\)"):
        sdm.load_stable_diffusion(tmp_path / "shape.safetensors", configs=configs)


def test_sd_configs_sit_beside_the_course_ones(capsys):
    sdm.print_configs()
    out = capsys.readouterr().out
    assert "(320, 640, 1280, 1280)" in out and "transformer" in out and "quick_gelu" in out
