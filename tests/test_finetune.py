"""Fine-tuning the course's text-to-image model on a new word: a few steps lower the loss on the new pictures, and
only the parameters each method means to train move (textual inversion: one embedding row; LoRA: the adapters)."""

from __future__ import annotations

import pytest
import torch

from sdlesson import finetune as F
from sdlesson import lora as L
from sdlesson.generate import TextToImage


@pytest.fixture(scope="module")
def concept():
    images, captions = F.concept_scenes(6, seed=0)
    return images, captions, F.encode_concept(images)


def snapshot(model):
    return {f"text.{k}": v.clone() for k, v in model.clip.state_dict().items()} | \
        {f"unet.{k}": v.clone() for k, v in model.unet.state_dict().items()}


def test_concept_scenes_are_new_and_reproducible(concept):
    images, captions, latents = concept
    again, captions2 = F.concept_scenes(6, seed=0)
    assert torch.equal(images, again) and captions == captions2 and latents.shape == (6, 4, 8, 8)
    assert all(F.NEW_WORD in c.split() for c in captions)
    model = TextToImage.from_pretrained()
    with pytest.raises(ValueError, match="unknown word"):  # the word is new to the model
        model.encode(captions[:1])
    assert not torch.equal(F.concept_scenes(6, seed=1)[0], images)


def test_textual_inversion_trains_one_row(concept, tmp_path):
    _, captions, latents = concept
    model = TextToImage.from_pretrained()
    new_id = F.add_word(model.clip, F.NEW_WORD)
    before, weights = F.concept_loss(model, latents, captions), snapshot(model)
    history = F.finetune(model, latents, captions, method="textual_inversion", steps=12, lr=5e-2, batch_size=4)
    after = F.concept_loss(model, latents, captions)
    print(f"textual inversion: loss {before:.4f} -> {after:.4f} in 12 steps, {history['parameters']} numbers trained")
    assert after < before and history["parameters"] == 64 and history["word_id"] == new_id
    changed = [k for k, v in snapshot(model).items() if not torch.equal(v, weights[k])]
    assert changed == ["text.text.token_embedding.weight"]
    rows = (snapshot(model)[changed[0]] != weights[changed[0]]).any(1).nonzero().flatten().tolist()
    assert rows == [new_id]  # the new word's row, and no other
    model(captions[0], num_images=1, num_steps=2)  # generates with the new word
    fresh = TextToImage.from_pretrained()
    assert F.load_word(fresh.clip, F.save_word(model.clip, F.NEW_WORD, tmp_path / "turtle.safetensors")) == F.NEW_WORD
    with torch.no_grad():
        assert torch.equal(fresh.encode(captions)[0], model.encode(captions)[0])  # the word, as learned


def test_lora_trains_only_adapters(concept, tmp_path):
    _, captions, latents = concept
    model = TextToImage.from_pretrained()
    F.add_word(model.clip, F.NEW_WORD)
    before = F.concept_loss(model, latents, captions)
    weights = snapshot(model)
    history = F.finetune(model, latents, captions, method="lora", steps=12, lr=5e-3, batch_size=4, text_lora=True)
    after = F.concept_loss(model, latents, captions)
    print(f"LoRA: loss {before:.4f} -> {after:.4f} in 12 steps, {history['parameters']} numbers trained")
    assert after < before
    now = snapshot(model)
    adapters = {f"{part}.{name}.{ab}.weight" for part, net in (("unet", model.unet), ("text", model.clip))
                for name in L.lora_layers(net) for ab in ("down", "up")}
    base = {k.replace(".base.", "."): v for k, v in now.items() if k not in adapters}
    assert len(adapters) == 2 * len(history["trained"])
    assert history["parameters"] == sum(now[k].numel() for k in adapters)
    assert set(base) == set(weights) and all(torch.equal(base[k], weights[k]) for k in weights)  # base frozen
    path = L.save_lora(model.unet, tmp_path / "turtle.safetensors")
    fresh = TextToImage.from_pretrained()
    L.load_lora(fresh.unet, path)
    x, t = latents[:2], torch.tensor([100, 500])
    with torch.no_grad():
        ctx, mask = model.encode(captions[:2])
        same = fresh.unet(x, t, context=ctx, context_mask=mask) - model.unet(x, t, context=ctx, context_mask=mask)
    assert same.abs().max() < 1e-5  # the file holds the adapters as trained (fp32 rounding aside)
    assert path.stat().st_size < 400_000  # the adapters alone


def test_finetune_errors(concept):
    _, captions, latents = concept
    model = TextToImage.from_pretrained()
    with pytest.raises(ValueError, match="method"):
        F.finetune(model, latents, captions, method="dreambooth")
    with pytest.raises(ValueError, match="one caption per picture"):
        F.finetune(model, latents, captions[:2])
    with pytest.raises(ValueError, match="already a word"):
        F.add_word(model.clip, "fish")
    from sdlesson.textual_inversion import load_textual_inversion

    with pytest.raises(TypeError, match="load_lora"):  # SD's loaders refuse the course's model, saying what fits
        L.load_sd_lora(model, {})
    with pytest.raises(TypeError, match="add_word"):
        load_textual_inversion(model, {})


def test_identity_probe_tells_the_new_object_from_the_old():
    """The measure behind 'samples of the new word show the new object': a linear probe on the frozen judge's
    features, validated on fresh real renders (VAE round trips) it was not fitted on."""
    from sdlesson import pretrained as pre

    probe = F.identity_probe(pre.load_pretrained("scene_judge"), n_per_class=20)
    acc = F.identity_accuracy(probe, n_per_class=20)
    print(acc)
    assert acc["new object found"] >= 0.8 and acc["old objects called new"] <= 0.05 and acc["9-way accuracy"] >= 0.9
    images, _ = F.concept_scenes(4, seed=5)
    assert F.shows_new_object(probe, F.round_trip(images)).all()


def test_forgetting_table_pairs_the_prompts():
    before = torch.tensor([[1, 1, 1, 1], [1, 0, 1, 1], [0, 1, 1, 1], [1, 1, 1, 0]], dtype=torch.bool)
    after = before.clone()
    after[0, 0] = False  # one object forgotten
    table = F.forgetting(before, after)
    assert table["object"]["before"][0] == 0.75 and table["object"]["after"][0] == 0.5
    assert table["object"]["change"] == (-0.25, 0.25)  # paired: mean of (0,0,0,-1) = -1/4, sd 1/2 over √4
    assert table["all four"]["before"][0] == 0.25 and table["background"]["change"] == (0.0, 0.0)
