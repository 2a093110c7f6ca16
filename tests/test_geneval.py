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
