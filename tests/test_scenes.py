"""Emoji scenes: determinism, captions, held-out pairs, and that the picture matches its caption."""

import itertools

import numpy as np
import pytest
import torch

from sdlesson import scenes
from sdlesson.scenes import Scene, image_at, make_scenes, parse_caption, render, scene_at

ATTRIBUTES = (scenes.OBJECTS, scenes.BACKGROUNDS, scenes.POSITIONS, scenes.SIZES)
ALL_SCENES = [Scene(*combo) for combo in itertools.product(*ATTRIBUTES)]


def glyph_mask(image: np.ndarray, background: str) -> np.ndarray:
    """Pixels that differ from the background colour: where the glyph is. (64, 64) bool."""
    difference = np.abs(image.astype(int) - np.array(scenes.BACKGROUND_RGB[background])).sum(-1)
    return difference > 30


# --- shapes, determinism -------------------------------------------------------------------------


def test_make_scenes_shapes_and_types():
    images, captions, labels = make_scenes(6, seed=1)
    assert images.shape == (6, 3, 64, 64) and images.dtype == torch.uint8
    assert labels.shape == (6, 4) and labels.dtype == torch.long
    assert len(captions) == 6 and all(isinstance(c, str) for c in captions)
    assert render(scene_at(0)).shape == (64, 64, 3) and render(scene_at(0)).dtype == np.uint8


def test_make_scenes_zero():
    images, captions, labels = make_scenes(0)
    assert images.shape == (0, 3, 64, 64) and captions == [] and labels.shape == (0, 4)


def test_same_seed_and_index_give_the_same_scene_whatever_came_before():
    images, captions, labels = make_scenes(12, seed=3)
    late_images, late_captions, late_labels = make_scenes(4, seed=3, start=8)  # a different call, later indices
    assert torch.equal(images[8:], late_images)
    assert captions[8:] == late_captions and torch.equal(labels[8:], late_labels)
    for i in (0, 5, 11):
        assert scene_at(i, seed=3).caption == captions[i]
        assert np.array_equal(image_at(i, seed=3), images[i].permute(1, 2, 0).numpy())
        assert list(scene_at(i, seed=3).labels) == labels[i].tolist()


def test_different_indices_and_seeds_differ():
    images, captions, _ = make_scenes(20)
    assert len(set(captions)) >= 15
    assert len({bytes(image.numpy()) for image in images}) == 20
    assert [scene_at(i, seed=0) for i in range(10)] != [scene_at(i, seed=1) for i in range(10)]


def test_render_jitter_is_small_and_seeded():
    scene = Scene("apple", "white", "center", "large")
    still = glyph_mask(render(scene), "white")
    assert np.array_equal(render(scene, jitter_rng=7), render(scene, jitter_rng=7))
    for seed in range(10):
        moved = glyph_mask(render(scene, jitter_rng=seed), "white")
        shift = np.abs(np.argwhere(moved).mean(0) - np.argwhere(still).mean(0))
        assert (shift <= scenes.JITTER + 0.5).all()


# --- captions ------------------------------------------------------------------------------------


def test_caption_reads_as_documented():
    cat = Scene("cat face", "blue", "top left", "small")
    dog = Scene("dog face", "green", "center", "large")
    assert cat.caption == "a small cat face in the top left on a blue background"
    assert dog.caption == "a large dog face in the center on a green background"


def test_caption_round_trip_over_every_combination():
    assert len(ALL_SCENES) == 8 * 6 * 5 * 2
    for scene in ALL_SCENES:
        assert parse_caption(scene.caption) == scene


def test_parse_caption_forgives_case_spaces_and_full_stop():
    assert parse_caption("  A Small  cat face in the top left on a blue background. ") == Scene(
        "cat face", "blue", "top left", "small"
    )


@pytest.mark.parametrize(
    "caption",
    [
        "a cat",
        "a medium cat face in the top left on a blue background",
        "a small cow in the top left on a blue background",
        "a small cat face in the middle on a blue background",
        "a small cat face in the top left on a orange background",
        "a small cat face in the top left on a blue background with a hat",
        "",
    ],
)
def test_parse_caption_rejects_what_it_cannot_read(caption):
    expected_form = r"expected 'a <size> <object> in the <position> on a <background> background'"
    with pytest.raises(ValueError, match=expected_form):
        parse_caption(caption)


def test_labels_index_the_attribute_tuples():
    scene = Scene("house", "pink", "bottom right", "large")
    assert scene.labels == (
        scenes.OBJECTS.index("house"),
        scenes.BACKGROUNDS.index("pink"),
        scenes.POSITIONS.index("bottom right"),
        scenes.SIZES.index("large"),
    )


# --- held-out pairs ------------------------------------------------------------------------------


def test_heldout_pairs_are_the_documented_ones():
    assert scenes.HELDOUT_PAIRS == (
        ("cat face", "purple"),
        ("dog face", "green"),
        ("apple", "white"),
        ("car", "blue"),
        ("star", "gray"),
        ("tree", "pink"),
        ("fish", "purple"),
        ("house", "green"),
    )
    assert {obj for obj, _ in scenes.HELDOUT_PAIRS} == set(scenes.OBJECTS)
    assert {background for _, background in scenes.HELDOUT_PAIRS} == set(scenes.BACKGROUNDS)


def test_train_never_shows_a_heldout_pair_and_shows_every_other():
    pairs = [(s.object, s.background) for s in (scene_at(i, seed=0) for i in range(1000))]
    assert not set(pairs) & set(scenes.HELDOUT_PAIRS)
    assert set(pairs) == set(scenes.TRAIN_PAIRS)  # 40 pairs, 1000 draws: all of them turn up


def test_heldout_shows_only_heldout_pairs_with_every_position_and_size():
    drawn = [scene_at(i, seed=5, split="heldout") for i in range(300)]
    assert {(s.object, s.background) for s in drawn} == set(scenes.HELDOUT_PAIRS)
    assert {s.position for s in drawn} == set(scenes.POSITIONS)
    assert {s.size for s in drawn} == set(scenes.SIZES)


# --- the picture matches the caption -------------------------------------------------------------


@pytest.mark.parametrize("obj", scenes.OBJECTS)
def test_glyph_sits_where_the_caption_says_and_large_is_larger(obj):
    middle, edge = 31.5, scenes.MARGIN + 1  # + 1: the outline's anti-aliased rim may fall under the threshold
    for background in ("white", "blue"):
        area = {}
        for position, size in itertools.product(scenes.POSITIONS, scenes.SIZES):
            mask = glyph_mask(render(Scene(obj, background, position, size)), background)
            rows, cols = np.nonzero(mask)
            where = (obj, background, position, size)
            if position == "center":
                assert abs((rows.min() + rows.max()) / 2 - middle) <= 1.5, where
                assert abs((cols.min() + cols.max()) / 2 - middle) <= 1.5, where
            else:
                vertical, horizontal = position.split()
                # The glyph's mass is on the named side, and the glyph reaches that side's margin.
                if vertical == "top":
                    assert rows.mean() < middle - 4 and rows.min() <= edge, where
                else:
                    assert rows.mean() > middle + 4 and rows.max() >= 63 - edge, where
                if horizontal == "left":
                    assert cols.mean() < middle - 4 and cols.min() <= edge, where
                else:
                    assert cols.mean() > middle + 4 and cols.max() >= 63 - edge, where
            area[position, size] = mask.sum()
        for position in scenes.POSITIONS:
            assert area[position, "large"] > 2 * area[position, "small"], (obj, background, position)


def test_the_background_is_the_named_colour():
    for background, rgb in scenes.BACKGROUND_RGB.items():
        image = render(Scene("apple", background, "top left", "small"))
        assert tuple(image[-1, -1]) == rgb  # the bottom-right corner is far from a top-left glyph


def test_every_object_renders_visible_and_distinct():
    images = {obj: render(Scene(obj, "white", "center", "large")).astype(int) for obj in scenes.OBJECTS}
    for obj, image in images.items():
        assert glyph_mask(image, "white").sum() > 300, obj  # a 38 px glyph covers several hundred pixels
    for a, b in itertools.combinations(scenes.OBJECTS, 2):
        assert np.abs(images[a] - images[b]).mean() > 10, (a, b)


def test_glyphs_are_not_clipped_when_drawn():
    for obj in scenes.OBJECTS:
        glyph = scenes._glyph(obj)
        assert glyph.width < scenes._CANVAS - 32 and glyph.height < scenes._CANVAS - 32


def test_glyph_stays_inside_the_image_with_a_margin_even_jittered():
    for obj, position, size in itertools.product(scenes.OBJECTS, scenes.POSITIONS, scenes.SIZES):
        scene = Scene(obj, "white", position, size)  # one background is enough: placement ignores it
        for seed in range(4):
            mask = glyph_mask(render(scene, jitter_rng=seed), "white")
            rows, cols = np.nonzero(mask)
            assert rows.min() >= 1 and cols.min() >= 1 and rows.max() <= 62 and cols.max() <= 62, scene


def test_attribution_is_openmojis_credit_line():
    assert "OpenMoji" in scenes.ATTRIBUTION and "CC BY-SA 4.0" in scenes.ATTRIBUTION


# --- errors at the public boundary ---------------------------------------------------------------


def test_unknown_attribute_names_the_allowed_values():
    with pytest.raises(ValueError, match=r"unknown object 'cow'; expected one of 'cat face', 'dog face'"):
        Scene("cow", "blue", "center", "small")
    with pytest.raises(ValueError, match=r"unknown background 'orange'; expected one of .*'pink'"):
        Scene("cat face", "orange", "center", "small")
    with pytest.raises(ValueError, match=r"unknown position 'middle'; expected one of .*'center'"):
        Scene("cat face", "blue", "middle", "small")
    with pytest.raises(ValueError, match=r"unknown size 'medium'; expected one of 'small', 'large'"):
        Scene("cat face", "blue", "center", "medium")


def test_bad_split_n_index_and_seed():
    with pytest.raises(ValueError, match=r"unknown split 'test'; expected one of 'train', 'heldout'"):
        make_scenes(3, split="test")
    with pytest.raises(ValueError, match=r"unknown split 'val'"):
        scene_at(0, split="val")
    with pytest.raises(ValueError, match=r"n must be >= 0, got -1"):
        make_scenes(-1)
    with pytest.raises(ValueError, match=r"start must be >= 0, got -2"):
        make_scenes(1, start=-2)
    with pytest.raises(ValueError, match=r"index must be >= 0, got -1"):
        scene_at(-1)
    with pytest.raises(TypeError, match=r"n must be an int, got float"):
        make_scenes(2.5)
    with pytest.raises(TypeError, match=r"render expects a Scene, got str"):
        render("a small cat face in the top left on a blue background")
