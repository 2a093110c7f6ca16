import math

import pytest
import torch
import torch.nn.functional as F

from sdlesson.scenes import make_scenes
from sdlesson.text import CLIP, CLIPConfig, Tokenizer, clip_loss, encode_prompts, scene_vocabulary, unconditional
from sdlesson.train import TrainConfig, Trainer

CAPTION = "a small cat face in the top left on a blue background"


def tiny_clip(**overrides) -> CLIP:
    torch.manual_seed(0)
    return CLIP(CLIPConfig(**(dict(width=16, layers=1, heads=2, image_width=8, embed_dim=16) | overrides)))


def test_vocabulary_covers_every_caption_word():
    _, captions, _ = make_scenes(200, seed=0)
    assert {w for c in captions for w in c.split()} <= set(scene_vocabulary())


def test_tokenizer_round_trip_and_layout():
    tok = Tokenizer(scene_vocabulary(), max_length=16)
    ids, mask = tok([CAPTION, "A Dog face."])
    assert ids.shape == mask.shape == (2, 16)
    assert tok.decode(ids[0]) == CAPTION and tok.decode(ids[1]) == "a dog face"
    assert ids[0, 0] == tok.ids["<bos>"] and ids[0, 13] == tok.ids["<eos>"]  # 12 words between them
    assert mask[0].sum() == 14 and mask[1].sum() == 5 and not mask[1, 5:].any()


def test_unknown_words_are_named_with_the_vocabulary():
    with pytest.raises(ValueError, match=r"unknown word\(s\) 'red', 'bird'.*knows only: a apple"):
        Tokenizer(scene_vocabulary())("a red bird on a red background")


def test_overlong_prompts_are_truncated_to_max_length():
    tok = Tokenizer(scene_vocabulary(), max_length=6)
    ids, mask = tok(CAPTION)
    assert mask.all() and tok.decode(ids[0]) == "a small cat face" and ids[0, -1] == tok.ids["<eos>"]


def test_text_encoder_is_causal_so_padding_changes_nothing():
    clip = tiny_clip()
    tok = clip.config.tokenizer()
    ids, mask = tok(CAPTION)
    states = clip.text(ids)
    changed = ids.clone()
    changed[~mask] = 5  # junk where the padding was
    assert torch.allclose(clip.text(changed)[mask], states[mask], atol=1e-6)
    # and <bos> sees only itself: the same embedding for every prompt (the 'empty prompt' of guidance)
    other = clip.text(tok("a large house in the center on a gray background")[0])
    assert torch.allclose(other[0, 0], states[0, 0], atol=1e-6) and not torch.allclose(other[0, 2], states[0, 2])


def test_clip_loss_matches_its_definition():
    clip = tiny_clip()
    latents = torch.randn(4, 4, 8, 8)
    ids, mask = clip.config.tokenizer()([CAPTION, "a large dog face in the center on a gray background", CAPTION,
                                         "a small star in the top right on a pink background"])
    loss = clip_loss(clip, (latents, ids, mask))
    img, txt = clip.encode_image(latents), clip.encode_text(ids, mask)
    logits = clip.logit_scale.exp() * img @ txt.T
    # images 0 and 2 share a caption: each of them has two right answers, weighted 1/2
    targets = torch.tensor([[.5, 0, .5, 0], [0, 1, 0, 0], [.5, 0, .5, 0], [0, 0, 0, 1]])
    rows = -(targets * logits.log_softmax(1)).sum(1).mean()
    cols = -(targets * logits.T.log_softmax(1)).sum(1).mean()
    assert torch.allclose(loss, (rows + cols) / 2, atol=1e-5)
    assert math.isclose(clip.logit_scale.exp().item(), 1 / 0.07, rel_tol=1e-5)


def test_clip_learns_to_match_captions_to_latents():
    # Four distinct 'images' and captions: a few steps of contrastive training pair each with its own.
    clip = tiny_clip()
    captions = [CAPTION, "a large dog face in the center on a gray background",
                "a small star in the top right on a pink background",
                "a large tree in the bottom left on a green background"]
    ids, mask = clip.config.tokenizer()(captions)
    latents = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    trainer = Trainer(clip, clip_loss, (latents, ids, mask),
                      TrainConfig(steps=150, batch_size=4, lr=3e-3, warmup_steps=10), device="cpu", progress=False)
    history = trainer.fit()
    assert history[-1] < 0.4 * history[0]
    with torch.no_grad():
        assert (clip(latents, ids, mask).argmax(1) == torch.arange(4)).all()


def test_encode_prompts_and_the_unconditional_mask():
    clip = tiny_clip()
    context, mask = encode_prompts(clip, [CAPTION, "a dog face"])
    assert context.shape == (2, 16, 16) and mask.dtype == torch.bool
    ctx, empty = unconditional(context, mask)
    assert ctx is context and empty[:, 0].all() and not empty[:, 1:].any() and mask[:, 1].all()


def test_clip_uses_cosine_similarity():
    clip = tiny_clip()
    ids, mask = clip.config.tokenizer()(CAPTION)
    assert torch.allclose(clip.encode_text(ids, mask).norm(dim=-1), torch.ones(1))
    assert torch.allclose(clip.encode_image(torch.randn(3, 4, 8, 8)).norm(dim=-1), torch.ones(3))
    latents = torch.randn(3, 4, 8, 8)
    texts, masks = clip.config.tokenizer()([CAPTION, "a dog face", "a large tree"])
    raw_image = clip.image(latents)  # (3, D) before normalising
    states = clip.text(texts)
    raw_text = clip.text_projection(states[torch.arange(3), masks.sum(1) - 1])
    cos = F.cosine_similarity(raw_image[:, None], raw_text[None], dim=-1)  # (3 images, 3 captions)
    with torch.no_grad():
        clip.logit_scale.fill_(math.log(20.0))
    torch.testing.assert_close(clip(latents, texts, masks), 20.0 * cos, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        clip.logit_scale.fill_(math.log(500.0))  # capped at 100, as CLIP does
    torch.testing.assert_close(clip(latents, texts, masks), 100.0 * cos, atol=1e-4, rtol=1e-5)
