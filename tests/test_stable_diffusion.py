"""Stable Diffusion v1.5's networks in the course's code, proven equal to diffusers and transformers.

The oracles are built from small configs with random weights, saved as a snapshot (or a single file in the original
layout), loaded by sdlesson, and run on the same inputs. Full size is checked by parameter counts on the meta device
(scripts/sd_full_parity.py compares full-size outputs; it needs GBs, so it is not a test).
"""

from __future__ import annotations

import json

import pytest
import torch

from sd_snapshot import course_configs, reference_models, write_single_file, write_snapshot
from sdlesson.stable_diffusion import (SD_LATENT_SCALE, build_stable_diffusion, configs_side_by_side,
                                       load_stable_diffusion)

TOLERANCE = 1e-4  # fp32, max abs error


@pytest.fixture(scope="module")
def reference():
    return reference_models()


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory, reference):
    return write_snapshot(tmp_path_factory.mktemp("sd"), reference)


@pytest.fixture(scope="module")
def loaded(snapshot):
    return load_stable_diffusion(snapshot)


def inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(2, 4, 16, 16, generator=g)
    context = torch.randn(2, 77, 32, generator=g)
    images = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1  # pixels in [-1, 1]
    return latents, context, images


@torch.no_grad()
def max_errors(sd, reference) -> dict[str, float]:
    unet, vae, text = reference
    latents, context, images = inputs()
    t = torch.tensor([999, 10])
    ids, _ = sd.tokenizer(["a photo of a cat", "an astronaut riding a horse, 4k"])
    posterior, theirs = sd.vae.encode(images), vae.encode(images).latent_dist
    return {
        "unet": (sd.unet(latents, t, context=context)
                 - unet(latents, t, encoder_hidden_states=context).sample).abs().max().item(),
        "vae mean": (posterior.mean - theirs.mean).abs().max().item(),
        "vae logvar": (posterior.logvar - theirs.logvar).abs().max().item(),
        "vae decode": (sd.vae.decode(latents[:, :, :8, :8])
                       - vae.decode(latents[:, :, :8, :8]).sample).abs().max().item(),
        "text": (sd.text_encoder(ids) - text(ids).last_hidden_state).abs().max().item(),
    }


def test_diffusers_folder_computes_what_the_references_compute(loaded, reference):
    errors = max_errors(loaded, reference)
    assert max(errors.values()) <= TOLERANCE, errors


def test_single_file_in_the_original_layout(tmp_path, reference, loaded):
    """The original layout, written from diffusers' names: diffusers' own converters read it back to the same
    weights (so the file is right), and sdlesson loads it to the same outputs."""
    from diffusers.loaders.single_file_utils import (convert_ldm_clip_checkpoint, convert_ldm_unet_checkpoint,
                                                      convert_ldm_vae_checkpoint)
    from safetensors.torch import load_file

    unet, vae, text = reference
    path = write_single_file(tmp_path / "tiny-v1.safetensors", reference)
    state = load_file(str(path))
    for theirs, back in ((unet.state_dict(), convert_ldm_unet_checkpoint(state, dict(unet.config))),
                         (vae.state_dict(), convert_ldm_vae_checkpoint(state, dict(vae.config))),
                         (text.state_dict(), convert_ldm_clip_checkpoint(state))):
        back = {k: v for k, v in back.items() if not k.endswith("position_ids")}
        assert set(back) == {k for k in theirs if not k.endswith("position_ids")}
        assert all(torch.equal(back[k].reshape(theirs[k].shape), theirs[k]) for k in back)
    sd = load_stable_diffusion(path, configs=course_configs())
    errors = max_errors(sd, reference)
    assert max(errors.values()) <= TOLERANCE, errors


def test_full_size_parameter_counts_equal_the_references():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    sd = build_stable_diffusion()  # meta device: no memory
    with torch.device("meta"):
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)  # diffusers' defaults are SD v1's
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
        text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                            num_attention_heads=12, max_position_embeddings=77,
                                            hidden_act="quick_gelu"))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(sd.unet) == count(unet) == 859_520_964
    assert count(sd.vae) == count(vae) == 83_653_863
    assert count(sd.text_encoder) == count(text) == 123_060_480
    assert all(p.is_meta for p in sd.unet.parameters())
    assert sd.latent_scale == SD_LATENT_SCALE == 0.18215


def test_configs_side_by_side_name_both_models():
    rows = dict((f, (a, b)) for f, a, b in configs_side_by_side())
    assert rows["unet.block_channels"] == ("(64, 128, 128)", "(320, 640, 1280, 1280)")
    assert rows["text.width"] == ("64", "768")
    # SD fixes 8 heads, so its head size follows the width; it has no image tower
    assert rows["unet.attention_heads"] == ("channels / 32 (2/4 heads)", "8 (head size 40/80/160)")
    assert rows["unet.attention_levels"] == ("(True, True, True)", "(True, True, True, False)")
    assert rows["unet.attention_head_dim"][1] == "unused (8 heads)"
    assert rows["text.embed_dim"] == ("64", "— (no image tower)")


def test_loads_in_half_precision(snapshot):
    sd = load_stable_diffusion(snapshot, dtype=torch.bfloat16)
    assert {p.dtype for p in sd.unet.parameters()} == {torch.bfloat16}


def test_reads_the_ema_weights_and_the_variant_asked_for(tmp_path, reference):
    """SD v1.5's unet/ also ships non-EMA and fp16 copies of the weights: the loader picks the right file."""
    from safetensors.torch import load_file, save_file

    root = write_snapshot(tmp_path, reference)
    unet = root / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(unet))
    non_ema = {k: torch.zeros_like(v) for k, v in state.items()} | {"only_in_non_ema": torch.zeros(1)}  # read: an error
    save_file(non_ema, str(unet.with_name(unet.name.replace(".safe", ".non_ema.safe"))))
    fp16_file = unet.with_name(unet.name.replace(".safe", ".fp16.safe"))
    save_file({k: (v + 1).half() for k, v in state.items()}, str(fp16_file))
    key = "conv_in.weight"
    assert torch.equal(load_stable_diffusion(root).unet.state_dict()[key], state[key])
    half = load_stable_diffusion(root, dtype=torch.float16).unet.state_dict()[key]
    assert torch.equal(half, (state[key] + 1).half())


# --- errors: each names the problem, and nothing is half-loaded ----------------------------------------------

def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no Stable Diffusion weights at"):
        load_stable_diffusion(tmp_path / "nowhere")


def test_folder_missing_a_part(tmp_path, reference):
    root = write_snapshot(tmp_path, reference)
    import shutil

    shutil.rmtree(root / "vae")
    with pytest.raises(FileNotFoundError, match="has no vae/ folder"):
        load_stable_diffusion(root)


@pytest.mark.parametrize("keys, looks_like", [
    ({"conditioner.embedders.0.transformer.text_model.x": 1, "model.diffusion_model.x": 1}, "SDXL"),
    ({"cond_stage_model.model.x": 1, "model.diffusion_model.x": 1}, "Stable Diffusion 2.x"),
    ({"encoder.layer.0.weight": 1}, "not a Stable Diffusion checkpoint"),
])
def test_other_models_are_named(tmp_path, keys, looks_like):
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({k: torch.zeros(v) for k, v in keys.items()}, str(path))
    with pytest.raises(ValueError, match=looks_like):
        load_stable_diffusion(path)


def test_missing_and_unexpected_keys_are_named(tmp_path, reference):
    from safetensors.torch import load_file, save_file

    path = write_single_file(tmp_path / "x.safetensors", reference)
    state = load_file(str(path))
    state.pop("model.diffusion_model.out.2.weight")
    save_file(state, str(path))
    with pytest.raises(ValueError, match=r"missing key\(s\) \['conv_out.weight'\]"):
        load_stable_diffusion(path, configs=course_configs())


def test_shape_mismatch_names_the_tensor(tmp_path, reference):
    root = write_snapshot(tmp_path, reference)
    config = json.loads((root / "unet" / "config.json").read_text())
    config["cross_attention_dim"] = 48  # the file's cross-attention reads 32-wide text
    (root / "unet" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"tensor .*attn2.to_k.weight has shape \(32, 32\), "
                                         r"the model expects \(32, 48\)"):
        load_stable_diffusion(root)


def test_sd2_config_is_named(tmp_path, reference):
    root = write_snapshot(tmp_path, reference)
    config = json.loads((root / "unet" / "config.json").read_text())
    config["use_linear_projection"] = True
    (root / "unet" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="Stable Diffusion 2.x"):
        load_stable_diffusion(root)


def test_pickle_checkpoints_load_without_running_code(tmp_path, reference):
    from safetensors.torch import load_file

    path = write_single_file(tmp_path / "x.safetensors", reference)
    ckpt = tmp_path / "x.ckpt"
    torch.save({"state_dict": load_file(str(path))}, ckpt)
    sd = load_stable_diffusion(ckpt, configs=course_configs())
    assert max(max_errors(sd, reference).values()) <= TOLERANCE


@torch.no_grad()
def test_text_encoder_with_another_mlp_width_loads_and_matches_transformers():
    """A CLIPTextModel whose intermediate_size is not 4 × hidden_size (small test models often have one) loads field
    for field and gives transformers' hidden states (fp32, max abs error < TOLERANCE)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    from sd_snapshot import TEXT
    from sdlesson.stable_diffusion import check_state, diffusers_to_course, text_config_from_transformers
    from sdlesson.text import TextEncoder

    torch.manual_seed(0)
    theirs = CLIPTextModel(CLIPTextConfig(**(TEXT | {"intermediate_size": 48}))).eval()  # 48 ≠ 4 × 32
    config = text_config_from_transformers(theirs.config.to_dict())
    assert config.mlp_width == 48
    ours = TextEncoder(config).eval()
    state = diffusers_to_course("text", theirs.state_dict(), config)
    check_state(ours, state, "text")
    ours.load_state_dict(state)
    ids = torch.randint(0, TEXT["vocab_size"], (2, 77), generator=torch.Generator().manual_seed(1))
    assert (ours(ids) - theirs(ids).last_hidden_state).abs().max().item() < TOLERANCE


def test_the_pipelines_text_side_for_sd_reads_all_77_and_has_no_clip(loaded):
    """SD's text side: the tokenizer's ids through the text encoder, no mask (SD's UNet reads all 77 embeddings, the
    empty prompt encoded like any other); the pipeline's .clip is None (only CLIP's text tower is here)."""
    from sdlesson.generate import TextToImage

    pipe = TextToImage.from_stable_diffusion(loaded)
    assert pipe.clip is None
    context, mask = pipe.encode(["a photo of a cat", ""])
    ids, _ = loaded.tokenizer(["a photo of a cat", ""])
    with torch.no_grad():
        assert mask is None and torch.equal(context, loaded.text_encoder(ids))
