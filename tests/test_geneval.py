"""The GenEval-shaped evaluator: the reader's accuracy on renders, the category rules on hand-made readings, the prompt
sets, diversity and the copy share."""

import numpy as np
import pytest
import torch

from sdlesson import compositional as cw
from sdlesson import geneval as ge
from sdlesson.geneval import Found, Reading

AIM = 0.98  # the instrument's accuracy aim, per attribute


def obj(kind, colour, cell):
    x, y = 16 + 32 * (cell % 2), 16 + 32 * (cell // 2)
    return Found(kind, colour, (x - 10, y - 10, x + 10, y + 10))


@pytest.mark.parametrize("split", ["train", "heldout"])
@pytest.mark.parametrize("how", [None, "noise", "blur"])
def test_reader_accuracy_above_aim(split, how):
    images, _, scenes = cw.make_scenes(120, seed=11, split=split)
    images = images if how is None else ge.degrade(images, how, seed=1)
    accuracy = ge.reader_accuracy(images, scenes)
    assert min(accuracy.values()) >= AIM, accuracy


def test_reader_reads_a_known_scene():
    scene = cw.Scene((cw.place("umbrella", "purple", 0), cw.place("car", "yellow", 3, 2, -2)), "dark gray")
    reading = ge.read_image(torch.from_numpy(cw.render(scene)).permute(2, 0, 1))
    assert reading.background == "dark gray"
    assert [(o.kind, o.colour) for o in reading.objects] == [("umbrella", "purple"), ("car", "yellow")]
    for found, true in zip(reading.objects, scene.objects):
        assert np.abs(np.subtract(found.box, true.box)).max() <= 1
    assert ge.read_image(np.full((64, 64, 3), 245, np.uint8)) == Reading("white", ())
    with pytest.raises(ValueError, match="uint8 RGB image"):
        ge.read_image(np.zeros((64, 64), np.uint8))


def prompt(category, objects, relation=None):
    return ge._prompt(category, objects, relation)


def test_single_and_two_objects():
    car = prompt("single_object", [("car", None, None)])
    assert car.text == "a car"
    assert ge.score(car, Reading("white", (obj("car", "red", 0), obj("car", "blue", 1), obj("star", "red", 2))))
    assert not ge.score(car, Reading("white", (obj("star", "red", 2),)))
    both = prompt("two_object", [("car", None, None), ("star", None, None)])
    assert ge.score(both, Reading("gray", (obj("star", "red", 2), obj("car", "red", 0))))
    assert not ge.score(both, Reading("gray", (obj("car", "red", 0), obj("car", "red", 1))))


def test_counting_is_exact():
    three = prompt("counting", [("star", 3, None)])
    assert three.text == "three stars"
    stars = [obj("star", "blue", c) for c in range(4)]
    assert ge.score(three, Reading("white", (*stars[:3], obj("car", "red", 3))))  # other kinds may be there
    assert not ge.score(three, Reading("white", tuple(stars[:2])))
    assert not ge.score(three, Reading("white", tuple(stars)))


def test_colours_and_attribution():
    blue_apple = prompt("colors", [("apple", None, "blue")])
    assert ge.score(blue_apple, Reading("white", (obj("apple", "red", 0), obj("apple", "blue", 1))))
    assert not ge.score(blue_apple, Reading("white", (obj("apple", "red", 0), obj("car", "blue", 1))))
    attr = prompt("color_attr", [("car", None, "red"), ("apple", None, "blue")])
    assert attr.text == "a red car and a blue apple"
    assert ge.score(attr, Reading("white", (obj("car", "red", 0), obj("apple", "blue", 1))))
    assert not ge.score(attr, Reading("white", (obj("car", "blue", 0), obj("apple", "red", 1))))  # colours swapped


def test_position_by_box_centres():
    left = prompt("position", [("car", None, None), ("star", None, None)], "left of")
    assert left.text == "a car left of a star"
    assert ge.score(left, Reading("white", (obj("car", "red", 0), obj("star", "red", 1))))
    assert ge.score(left, Reading("white", (obj("car", "red", 2), obj("star", "red", 1))))  # diagonal: also left
    assert not ge.score(left, Reading("white", (obj("car", "red", 1), obj("star", "red", 0))))
    assert not ge.score(left, Reading("white", (obj("car", "red", 0), obj("star", "red", 2))))  # above, not left
    nudged = Found("star", "red", (12, 40, 32, 60))  # centre 6 px right of the car's (16 → 22): inside the margin
    assert not ge.score(left, Reading("white", (obj("car", "red", 0), nudged)))
    below = prompt("position", [("car", None, None), ("star", None, None)], "below")
    assert ge.score(below, Reading("white", (obj("car", "red", 3), obj("star", "red", 0))))


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_prompt_sets(split):
    prompts = ge.make_prompts(split)
    assert len({p.text for p in prompts}) == len(prompts)
    expected = set(ge.CATEGORIES) - ({"single_object"} if split == "heldout" else set())
    assert {p.category for p in prompts} == expected
    for p in prompts:  # a held-out prompt asks for something never trained on; a seen one for nothing of the kind
        assert bool(p.combos()) == (split == "heldout"), p
        assert len({k for k, _, _ in p.objects}) == len(p.objects)
    assert ge.make_prompts(split) == prompts  # fixed


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_own_pictures_score_full_and_mismatched_near_chance(split):
    prompts = [p for p in ge.make_prompts(split, per_category=6)]
    truth = ge.render_prompts(prompts, 2, seed=3)
    table = ge.geneval(prompts, truth)
    assert all(v[0] == 1.0 for v in table.values()), table
    shuffled = torch.roll(truth, 1, dims=0)  # each prompt judged on another prompt's pictures
    assert ge.geneval(prompts, shuffled)["overall"][0] < 0.3


def test_geneval_table_and_errors():
    prompts = ge.make_prompts("train", per_category=2)
    images = ge.render_prompts(prompts, 3)
    images[0, 0] = 245  # one blank picture: single_object scores 5 of 6
    table = ge.geneval(prompts, images)
    p, se, n = table["single_object"]
    assert (p, n) == (5 / 6, 6) and se == pytest.approx((5 / 6 * 1 / 6 / 6) ** 0.5)
    assert table["overall"][0] == pytest.approx(np.mean([table[c][0] for c in ge.CATEGORIES]))
    with pytest.raises(ValueError, match="P = 12 prompts"):
        ge.geneval(prompts, images[:3])


def test_diversity():
    car = prompt("single_object", [("car", None, None)])
    same = [Reading("white", (obj("car", "red", 0),))] * 6
    assert ge.diversity(car, same) == {"background": 0.0, "colour": 0.0, "cell": 0.0}
    spread = [Reading(cw.BACKGROUNDS[i % 3], (obj("car", cw.COLOURS[i], i % 4),)) for i in range(6)]
    d = ge.diversity(car, spread)
    assert d["background"] == pytest.approx(1.0) and d["colour"] == pytest.approx(1.0)
    assert d["cell"] == pytest.approx(-(2 * (1 / 3) * np.log(1 / 3) + 2 * (1 / 6) * np.log(1 / 6)) / np.log(4))
    blue = prompt("colors", [("car", None, "blue")])
    assert "colour" not in ge.diversity(blue, spread)  # the prompt fixes it


def test_copy_share():
    training = cw.make_scenes(50, seed=0)[0]
    fresh = cw.make_scenes(10, seed=9)[0]
    samples = torch.cat([training[:5], fresh[:5]])
    share = ge.copy_share(samples, training)
    chance = ge.copy_share(fresh[:5], training)
    assert share == pytest.approx(0.5 + chance / 2)


def test_parse_prompt_reads_every_template_and_refuses_the_rest():
    for split in cw.SPLITS:
        for p in ge.make_prompts(split):
            assert ge.parse_prompt(p.text) == p  # category, objects, counts, colours and relation recovered
    assert ge.parse_prompt("two cars and a red apple on a dark gray background").objects == (
        ("car", 2, None), ("apple", None, "red"))  # the background is dropped, not scored
    for bad, match in (("a pink car", "cannot read 'a pink car'"), ("a car left of a star and a key", "two objects"),
                       ("cars", "cannot read")):
        with pytest.raises(ValueError, match=match):
            ge.parse_prompt(bad)


def test_vocabulary_covers_captions_and_prompts():
    words = set(cw.vocabulary())
    _, captions, _ = cw.make_scenes(300, seed=5)
    assert all(set(c.split()) <= words for c in captions)
    assert all(set(p.text.split()) <= words for s in cw.SPLITS for p in ge.make_prompts(s))
    assert "pink" not in words and len(words) == 41


def test_box_coverage():
    cover = ge.box_coverage((0, 0, 16, 8), (8, 8), 64)  # a 16×8-pixel box in the top-left corner: 8×8-pixel cells
    assert cover[0, :2].tolist() == [1.0, 1.0] and cover.sum() == pytest.approx(2.0)
    assert ge.box_coverage((4, 0, 12, 8), (8, 8), 64)[0, :2].tolist() == [0.5, 0.5]  # half of two cells


def test_mean_diversity_and_format_table(monkeypatch):
    car = prompt("single_object", [("car", None, None)])
    same = [Reading("white", (obj("car", "red", 0),))] * 4  # one colour: diversity 0
    spread = [Reading("white", (obj("car", cw.COLOURS[i], 0),)) for i in range(4)]  # four colours of six
    images = torch.arange(2).view(2, 1, 1, 1, 1).expand(2, 4, 3, 64, 64)  # picture sets 0 and 1
    monkeypatch.setattr(ge, "read_images", lambda pictures: [same, spread][int(pictures[0, 0, 0, 0])])
    mean, se = ge.mean_diversity([car, car], images)["colour"]
    assert mean == pytest.approx(np.log(4) / np.log(6) / 2)
    assert se == pytest.approx(np.std([0, np.log(4) / np.log(6)], ddof=1) / np.sqrt(2))
    table = ge.format_table({"s = 1": {"counting": (0.5, 0.1, 10), "overall": (0.5, 0.1, 10)}})
    assert table.splitlines()[1].split() == ["counting", "50.0", "±10.0"] and "overall" in table


@pytest.fixture(scope="module")
def tiny_world_pipe():
    from conftest import tiny_unet_config
    from sdlesson.generate import TextToImage
    from sdlesson.text import CLIP, CLIPConfig
    from sdlesson.unet import UNet
    from sdlesson.vae import VAE, VAEConfig

    torch.manual_seed(0)
    clip = CLIP(CLIPConfig(vocab=cw.vocabulary(), max_length=20, width=16, layers=1, heads=2, image_width=8,
                           embed_dim=8))
    unet = UNet(tiny_unet_config(in_channels=4, context_dim=16))
    vae = VAE(VAEConfig(block_channels=(8, 16), norm_groups=4, patch_size=4))
    return TextToImage(clip, unet, vae, latent_scale=0.5, num_steps=2)


def test_generate_for_draws_the_same_noise_at_every_scale(tiny_world_pipe):
    prompts = ge.make_prompts("train", per_category=1)[:3]
    images = ge.generate_for(tiny_world_pipe, prompts, 2, guidance_scale=3.0, seed=4, batch_size=4)
    assert images.shape == (3, 2, 3, 64, 64) and images.dtype == torch.uint8
    noise = torch.randn((6, 4, 8, 8), generator=torch.Generator().manual_seed(4))  # picture j of prompt i: row 2i + j
    texts = [p.text for p in prompts for _ in range(2)]
    expected = tiny_world_pipe(texts, latents=noise, guidance_scale=3.0)
    torch.testing.assert_close(images.flatten(0, 1), expected, atol=0, rtol=0)
    other = ge.generate_for(tiny_world_pipe, prompts, 2, guidance_scale=1.0, seed=4)
    torch.testing.assert_close(other.flatten(0, 1), tiny_world_pipe(texts, latents=noise, guidance_scale=1.0),
                               atol=0, rtol=0)


def test_word_localisation_shares_and_chance(tiny_world_pipe, monkeypatch):
    from sdlesson.generate import attention_per_word

    corner = {0: ((0, 0, 16, 16), (0, 0)), 1: ((48, 48, 64, 64), (3, 3))}  # a 16×16-pixel box: one cell at 4×4
    for p in [q for q in ge.make_prompts("train", per_category=2) if q.category == "two_object"]:
        found = tuple(Found(kind, "red", corner[i][0]) for i, (kind, _, _) in enumerate(p.objects))
        monkeypatch.setattr(ge, "read_image", lambda image: Reading("white", found))  # each kind in its corner
        image = tiny_world_pipe(p.text, num_images=1, seed=0)[0]
        _, maps = attention_per_word(tiny_world_pipe, p.text, t=500, levels=("down.1", "up.0"), image=image)
        words = ["<bos>", *p.text.split()]
        by_hand = [float(maps[words.index(kind)][corner[i][1]] / maps[words.index(kind)].sum())
                   for i, (kind, _, _) in enumerate(p.objects)]
        share, se, chance = ge.word_localisation(tiny_world_pipe, [p], levels={"4×4": ("down.1", "up.0")},
                                                 ts=(500,))["4×4", 500]
        assert share == pytest.approx(np.mean(by_hand), abs=1e-6)
        assert se == pytest.approx(np.std(by_hand, ddof=1) / np.sqrt(2), abs=1e-6)
        assert chance == pytest.approx(1 / 16)  # a 16×16 box is 1/16 of the picture


def test_swap_pairs_are_true_and_their_twins_false():
    """The truth holds of its scene and the twin does not, read by the reader from the render; relation and colour
    twins reorder the truth's words, the control's twin names other kinds."""
    images, _, scenes = cw.make_scenes(80, seed=1)
    pairs = ge.swap_pairs(scenes)
    assert all(len(p) >= 10 for p in pairs.values())
    for name, rows in pairs.items():
        for i, true, twin in rows:
            reading = ge.read_image(images[i])
            assert ge.score(ge.parse_prompt(true), reading) and not ge.score(ge.parse_prompt(twin), reading)
            if name == "colour":  # the same words but for "a"/"an" ("an orange car" vs "a blue car")
                content = [sorted(w for w in c.split() if w not in ("a", "an")) for c in (true, twin)]
                assert content[0] == content[1] and true != twin
            if name == "relation":
                assert true.split()[:2] == twin.split()[:2] and true.split()[-2:] == twin.split()[-2:]


def test_recaptions_are_true_say_more_and_leave_the_alt_text_alone():
    """A recaption names every kind of its scene with its count and colour (describe() refuses untrue ones), states a
    relation more often than the alt text, and drawing it does not change caption_at (its own generator)."""
    alt = [cw.caption_at(i) for i in range(200)]
    dense = [cw.recaption_at(i) for i in range(200)]
    _, captions, scenes = cw.make_scenes(200)
    assert captions == alt
    for caption, scene in zip(dense, scenes):
        assert all(cw.noun_phrase(k, n, scene.colours[k]) in caption for k, n in scene.counts.items()), caption
    relation = lambda caps: sum(any(f" {r} " in c for r in cw.RELATIONS) for c in caps)  # noqa: E731
    assert relation(dense) > 2 * relation(alt)
