"""Textual-inversion embeddings in the common file formats, loaded as diffusers' load_textual_inversion loads them.

Oracle: diffusers' StableDiffusionPipeline (transformers' CLIPTokenizer.add_tokens + resized token embeddings) on the
tiny random SD snapshot of sd_snapshot.py: same token ids, same prompt embeddings, same image, fp32.
"""

from __future__ import annotations

import pytest
import torch

from sd_snapshot import TEXT, diffusers_pipeline, reference_models, write_snapshot
from sdlesson.clip_tokenizer import CLIPTokenizer
from sdlesson.textual_inversion import load_textual_inversion, read_embedding

TOLERANCE = 1e-4  # images in [0, 1]; prompt embeddings: 1e-5
WIDTH = TEXT["hidden_size"]


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    return write_snapshot(tmp_path_factory.mktemp("sd"), reference_models(seed=3))


def test_added_tokens_get_transformers_ids(snapshot):
    from transformers import CLIPTokenizer as HFTokenizer

    theirs = HFTokenizer.from_pretrained(str(snapshot / "tokenizer"), model_max_length=77)
    ours = CLIPTokenizer.bundled()
    new = ["<cat-toy>", "<cat-toy>_1x", "sksx", "é-thing"]
    theirs.add_tokens(new)
    assert ours.add_tokens(new) == theirs.convert_tokens_to_ids(new) == [49408, 49409, 49410, 49411]
    for prompt in ["A photo of <cat-toy> <cat-toy>_1x on the beach", "a<cat-toy>b", "<CAT-TOY> x", "ab<cat-toy>_1",
                   "a  <cat-toy>_1xx sksx sksxy", "<cat-toy>,<cat-toy>", "É-THING<|endoftext|>sksx"]:
        expected = theirs(prompt, padding="max_length", max_length=77, return_tensors="pt").input_ids[0]
        assert torch.equal(ours([prompt])[0][0], expected), prompt  # (ids, mask): the one prompt's ids
    assert ours.decode(ours.encode("a <cat-toy> sksx")) == "a <cat-toy> sksx"
    with pytest.raises(ValueError, match="written as prompts are read"):
        ours.add_tokens(["<Cat>"])


def write(tmp_path, fmt: str, vectors: torch.Tensor, token: str):
    """The embedding as each tool saves it; returns (path, the token to pass, or None if the file names it)."""
    from safetensors.torch import save_file

    if fmt == "diffusers-safetensors":
        save_file({token: vectors}, str(path := tmp_path / "learned_embeds.safetensors"))
        return path, None
    if fmt == "diffusers-bin":
        torch.save({token: vectors}, path := tmp_path / "learned_embeds.bin")
        return path, None
    if fmt == "a1111-pt":  # what A1111's trainer writes
        torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vectors}, "name": token, "step": 3000,
                    "sd_checkpoint": "abc", "sd_checkpoint_name": "v1-5"}, path := tmp_path / "emb.pt")
        return path, None
    save_file({"emb_params": vectors}, str(path := tmp_path / "emb.safetensors"))  # A1111 safetensors
    return path, token


FORMATS = ["diffusers-safetensors", "diffusers-bin", "a1111-pt", "a1111-safetensors"]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("n", [1, 3])
def test_prompt_embeddings_equal_diffusers(snapshot, tmp_path, fmt, n):
    from sdlesson.stable_diffusion import load_stable_diffusion

    vectors = torch.randn(n, WIDTH, generator=torch.Generator().manual_seed(n))
    if n == 1 and fmt == "diffusers-safetensors":
        vectors = vectors[0]  # diffusers writes one vector as (d,)
    path, token = write(tmp_path, fmt, vectors, "<cat-toy>")
    theirs = diffusers_pipeline(snapshot)
    theirs.load_textual_inversion(str(path), token=token)
    sd = load_stable_diffusion(snapshot)
    added = load_textual_inversion(sd, path, token=token)
    assert added == ["<cat-toy>"] + [f"<cat-toy>_{i}" for i in range(1, n)]
    prompts = ["a photo of <cat-toy> on the beach", "<cat-toy>, <cat-toy> and a dog"]
    with torch.no_grad():
        mine = sd.text_encoder(sd.tokenizer(prompts)[0])  # ids; SD reads every position (no mask)
        ref = theirs.encode_prompt(prompts, "cpu", 1, False)[0]
    err = (mine - ref).abs().max()
    print(f"{fmt} n={n}: max |ours - diffusers| prompt embeddings = {err:.2e}")
    assert err <= 1e-5
    plain = load_stable_diffusion(snapshot)
    with torch.no_grad():
        assert (plain.text_encoder(plain.tokenizer(prompts)[0]) - mine).abs().max() > 0.1  # the new vectors are read


def test_image_equals_diffusers(snapshot, tmp_path):
    from sdlesson.generate import TextToImage

    vectors = torch.randn(2, WIDTH, generator=torch.Generator().manual_seed(9))
    path, _ = write(tmp_path, "diffusers-safetensors", vectors, "<cat-toy>")
    theirs = diffusers_pipeline(snapshot)
    theirs.load_textual_inversion(str(path))
    ours = TextToImage.from_stable_diffusion(snapshot)
    load_textual_inversion(ours, path)
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    prompt = "a photo of <cat-toy> riding a horse"
    mine = ours(prompt, num_images=1, num_steps=3, latents=latents, output_type="float")
    ref = theirs(prompt, num_inference_steps=3, latents=latents, output_type="np", height=32, width=32).images
    err = (mine - torch.from_numpy(ref).permute(0, 3, 1, 2)).abs().max()
    print(f"textual inversion image: max |ours - diffusers| = {err:.2e}")
    assert err <= TOLERANCE


def test_embedding_errors(snapshot):
    from sdlesson.stable_diffusion import load_stable_diffusion

    sd = load_stable_diffusion(snapshot)
    with pytest.raises(ValueError, match="SDXL"):
        load_textual_inversion(sd, {"clip_l": torch.zeros(1, 768), "clip_g": torch.zeros(1, 1280)})
    with pytest.raises(ValueError, match="2.x"):
        load_textual_inversion(sd, {"<x>": torch.zeros(1, 1024)})
    with pytest.raises(ValueError, match="already in the tokenizer"):
        load_textual_inversion(sd, {"cat</w>": torch.zeros(1, WIDTH)})
    with pytest.raises(ValueError, match="does not name its token"):
        read_embedding({"emb_params": torch.zeros(1, WIDTH)})
    with pytest.raises(ValueError, match="expected diffusers"):
        read_embedding({"a": torch.zeros(1), "b": torch.zeros(1)})
    assert sd.tokenizer.vocab_size == sd.text_encoder.token_embedding.num_embeddings == 49408  # nothing half-added
