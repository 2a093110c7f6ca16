"""The compositional world: determinism, geometry, held-out splits, and captions that never lie.

Captions are checked by a parser written here from the grammar, independently of how compositional.py writes them.
"""

import itertools
import re

import numpy as np
import pytest

from sdlesson import compositional as cw

N_CHECK = 1500  # scenes per split for the split and caption checks (~2 s)


@pytest.fixture(scope="module")
def train():
    return cw.make_scenes(N_CHECK, seed=3)


@pytest.fixture(scope="module")
def heldout():
    return cw.make_scenes(N_CHECK // 3, seed=3, split="heldout")


def parse(caption: str):
    """(claims {kind: (count, colour or None)}, relation (a, rel, b) or None, background or None) of a caption."""
    words = r"(a|an|two|three|four) (?:(red|orange|yellow|green|blue|purple) )?([a-z]+)"
    background = None
    m = re.fullmatch(r"(.*) on a (white|gray|dark gray) background", caption)
    if m:
        caption, background = m.groups()
    claims, relation = {}, None
    for i, part in enumerate(caption.split(" and ")):
        m = re.fullmatch(words + r"(?: (left of|right of|above|below) " + words + ")?", part)
        assert m, f"caption part {part!r} of {caption!r} does not parse"
        n1, c1, k1, rel, n2, c2, k2 = m.groups()
        phrases = [(n1, c1, k1)] + ([(n2, c2, k2)] if rel else [])
        if rel:
            assert i == 0, "a relation joins the first two phrases"
        for number, colour, noun in phrases:
            count = {"a": 1, "an": 1, "two": 2, "three": 3, "four": 4}[number]
            kind = noun if count == 1 else ("fish" if noun == "fish" else noun[:-1])
            assert kind in cw.KINDS and (count > 1) == (noun != kind or kind == "fish" and count > 1)
            assert number != "an" or (colour or kind)[0] in "aeiou", caption
            assert kind not in claims, f"{kind} named twice in {caption!r}"
            claims[kind] = (count, colour)
        if rel:
            relation = (k1, rel, k2)
    return claims, relation, background


def centres(scene):
    return {t.kind: ((t.box[0] + t.box[2]) / 2, (t.box[1] + t.box[3]) / 2) for t in scene.objects}


def holds(a, rel, b):  # the rule written out again: box centres at least 8 px apart along the relation's axis
    return {"left of": b[0] - a[0] >= 8, "right of": a[0] - b[0] >= 8,
            "above": b[1] - a[1] >= 8, "below": a[1] - b[1] >= 8}[rel]


def test_deterministic_by_seed_and_index():
    images, captions, scenes = cw.make_scenes(6, seed=4, start=10)
    for row, index in enumerate(range(10, 16)):
        assert cw.scene_at(index, seed=4) == scenes[row]
        assert cw.caption_at(index, seed=4) == captions[row]
        assert np.array_equal(cw.render(scenes[row]), images[row].permute(1, 2, 0).numpy())
    again = cw.make_scenes(6, seed=4, start=10)
    assert (again[0] == images).all() and again[1] == captions
    assert cw.make_scenes(6, seed=5, start=10)[2] != scenes


def test_geometry(train):
    images, _, scenes = train
    for image, scene in zip(images[:300], scenes[:300]):
        assert 1 <= len(scene.objects) <= cw.MAX_OBJECTS
        assert len({t.cell for t in scene.objects}) == len(scene.objects)
        for a, b in itertools.combinations(scene.objects, 2):  # at least 4 px of background between two boxes
            gap = max(b.box[0] - a.box[2], a.box[0] - b.box[2], b.box[1] - a.box[3], a.box[1] - b.box[3])
            assert gap >= 4
        pixels = image.permute(1, 2, 0).numpy().astype(int)
        painted = np.abs(pixels - cw.BACKGROUND_RGB[scene.background]).max(-1) > 0
        inside = np.zeros_like(painted)
        for t in scene.objects:
            x0, y0, x1, y1 = t.box
            assert 0 < x0 and 0 < y0 and x1 < 64 and y1 < 64
            inside[y0:y1, x0:x1] = True
            box = painted[y0:y1, x0:x1]
            assert box[0].any() and box[-1].any() and box[:, 0].any() and box[:, -1].any(), "box is tight"
            fill = pixels[y0:y1, x0:x1][np.all(pixels[y0:y1, x0:x1] == cw.COLOUR_RGB[t.colour], axis=-1)]
            assert len(fill) > 20, f"a {t.colour} {t.kind} shows its colour"
        assert not (painted & ~inside).any(), "nothing is drawn outside the boxes"
        kinds = [t.kind for t in scene.objects]
        assert all(len({t.colour for t in scene.objects if t.kind == k}) == 1 for k in kinds)


def test_heldout_compositions_never_in_training(train, heldout):
    held_colours, held_pairs = set(cw.HELDOUT_COLOURS), {frozenset(p) for p in cw.HELDOUT_PAIRS}
    held_counts = set(cw.HELDOUT_COUNTS)
    for caption, scene in zip(train[1], train[2]):
        kinds = [t.kind for t in scene.objects]
        assert not held_colours & {(t.kind, t.colour) for t in scene.objects}
        assert not any(frozenset(p) in held_pairs for p in itertools.combinations(set(kinds), 2))
        assert not held_counts & {(k, kinds.count(k)) for k in kinds}
        claims, _, _ = parse(caption)
        assert not held_colours & {(k, c) for k, (n, c) in claims.items()}
        assert not held_counts & {(k, n) for k, (n, c) in claims.items()}
        assert not any(frozenset(p) in held_pairs for p in itertools.combinations(claims, 2))
    for scene in heldout[2]:  # every held-out scene holds one, and each kind of held-out composition occurs
        assert cw.heldout_combos(scene)
    kinds_seen = {c[0] for s in heldout[2] for c in cw.heldout_combos(s)}
    assert kinds_seen == {"colour", "pair", "count"}


def test_training_covers_the_rest(train):
    """Every composition not held out occurs in training (else 'held out' would not be the only thing new)."""
    colours = {(t.kind, t.colour) for s in train[2] for t in s.objects}
    assert colours == set(cw.all_compositions()["colour"]) - set(cw.HELDOUT_COLOURS)
    counts = {(k, n) for s in train[2] for k, n in s.counts.items() if n > 1}
    assert counts == set(cw.all_compositions()["count"]) - set(cw.HELDOUT_COUNTS)


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_captions_are_true(split, train, heldout):
    _, captions, scenes = train if split == "train" else heldout
    for caption, scene in zip(captions, scenes):
        claims, relation, background = parse(caption)
        kinds = [t.kind for t in scene.objects]
        for kind, (count, colour) in claims.items():
            assert kinds.count(kind) == count, f"{caption!r}: {kind} × {kinds.count(kind)}"
            assert colour is None or all(t.colour == colour for t in scene.objects if t.kind == kind), caption
        if relation:
            a, rel, b = relation
            assert kinds.count(a) == kinds.count(b) == 1 and holds(centres(scene)[a], rel, centres(scene)[b]), caption
        assert background in (None, scene.background)


def test_relation_captions_are_true_and_state_a_relation(train):
    """compositional.relation_captions_at: for a scene with two single objects, `count` captions each stating a true
    relation between two of them (checked by the rule written out again); none for the other scenes; and drawing
    them leaves caption_at and recaption_at as they were (their own generators)."""
    _, captions, scenes = train
    before = [cw.recaption_at(i, seed=3) for i in range(100)]
    with_relation = 0
    for i, scene in enumerate(scenes[:100]):
        said = cw.relation_captions_at(i, seed=3, count=3)  # the fixture's seed
        singles = [k for k, n in scene.counts.items() if n == 1]
        assert len(said) == (3 if len(singles) >= 2 else 0), (scene, said)
        for caption in said:
            claims, relation, _ = parse(caption)
            a, rel, b = relation
            assert set(claims) == {a, b} and scene.counts[a] == scene.counts[b] == 1, caption
            assert holds(centres(scene)[a], rel, centres(scene)[b]), caption
        with_relation += bool(said)
    assert 10 < with_relation < 50  # ~23% of scenes hold two single objects
    assert [cw.caption_at(i, seed=3) for i in range(100)] == captions[:100]
    assert [cw.recaption_at(i, seed=3) for i in range(100)] == before


def test_captions_leave_things_out(train):
    """Alt text, not a full description: a caption fits many scenes, and each kind of omission happens."""
    captions, scenes = train[1], train[2]
    parsed = [parse(c) for c in captions]
    named_all = np.mean([set(p[0]) == set(s.counts) for p, s in zip(parsed, scenes)])
    assert 0.75 < named_all < 0.95  # some kinds left out (never only part of one: counts above are exact)
    assert 0.3 < np.mean([c is None for p in parsed for _, c in p[0].values()]) < 0.7  # colour left out
    assert 0.15 < np.mean([p[2] is not None for p in parsed]) < 0.45  # background said
    assert any(p[1] for p in parsed)
    assert len(set(captions)) < len(captions) / 2  # a caption has many pictures
    short = [i for i, c in enumerate(captions) if c == "a star"]
    assert len(short) > 3 and len({(scenes[i].background, scenes[i].objects) for i in short}) == len(short)


def test_describe_refuses_false_statements():
    scene = cw.Scene((cw.place("car", "red", 0), cw.place("star", "blue", 1)), "white")
    assert cw.describe(scene, kinds=["car", "star"], relation=("car", "left of", "star")) == "a car left of a star"
    assert cw.describe(scene, kinds=["star"], colour=True, background=True) == "a blue star on a white background"
    with pytest.raises(ValueError, match="relation"):
        cw.describe(scene, kinds=["car", "star"], relation=("car", "above", "star"))
    with pytest.raises(ValueError, match="names kinds"):
        cw.describe(scene, kinds=["apple"])
    assert cw.noun_phrase("apple", 1, "orange") == "an orange apple" and cw.noun_phrase("fish", 3) == "three fish"


def test_bad_input():
    with pytest.raises(ValueError, match="unknown split 'test'"):
        cw.scene_at(0, split="test")
    with pytest.raises(ValueError, match="index"):
        cw.scene_at(-1)
    with pytest.raises(ValueError, match="count"):
        cw.relation_captions_at(1, count=-1)  # scene 1 has no two single objects: checked before it is drawn
    with pytest.raises(ValueError, match="unknown kind 'dog'"):
        cw.place("dog", "red", 0)
    with pytest.raises(ValueError, match="unknown colour 'pink'"):
        cw.place("car", "pink", 0)
