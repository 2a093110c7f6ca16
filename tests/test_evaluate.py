"""The measuring helpers: the fixed prompt sets, and the judge-based scores on real scenes."""

import pytest
import torch

from sdlesson import pretrained
from sdlesson.evaluate import judge_scenes, prompt_set, scene_quality
from sdlesson.scenes import HELDOUT_PAIRS, TRAIN_PAIRS, make_scenes


def test_prompt_sets_cover_their_pairs_without_repeats():
    seen, heldout = prompt_set("train"), prompt_set("heldout")
    assert len(seen) == len(heldout) == 80
    assert len(set(seen)) == len(set(heldout)) == 80
    assert {(s.object, s.background) for s in seen} == set(TRAIN_PAIRS)  # each of the 40 pairs, twice
    assert {(s.object, s.background) for s in heldout} == set(HELDOUT_PAIRS)  # each of the 8 pairs, 10 times
    assert {(s.position, s.size) for s in heldout if (s.object, s.background) == HELDOUT_PAIRS[0]} == {
        (s.position, s.size) for s in heldout if (s.object, s.background) == HELDOUT_PAIRS[1]}
    assert prompt_set("train") == seen  # fixed


def test_real_scenes_are_clean_and_scene_quality_compares_the_right_sets():
    """scene_quality's Fréchet distances are samples vs reference and floor reference vs reference, in judge features,
    recomputed here from the features; real scenes are judged right and clean."""
    from sdlesson.classifier import extract_features
    from sdlesson.metrics import frechet_distance

    judge = pretrained.load_pretrained("scene_judge")
    images, _, labels = make_scenes(96, seed=pretrained.SCENE_TEST_SEED, split="heldout")
    predicted, confidence = judge_scenes(judge, images, batch_size=40)
    assert torch.equal(predicted, labels) and confidence.shape == (96, 4)
    samples, reference = images[:48], images[48:]
    training = make_scenes(96, seed=pretrained.SCENE_TRAIN_SEED)[0]
    q = scene_quality(judge, samples, reference, training)
    features = lambda x: extract_features(judge, x)  # noqa: E731
    assert q["fd"] == pytest.approx(frechet_distance(features(samples), features(reference)), rel=1e-4)
    assert q["floor"] == pytest.approx(frechet_distance(features(training[:48]), features(reference)), rel=1e-4)
    assert q["clean"] > 0.95 and q["floor"] > q["fd"] > 0  # held-out scenes lie nearer each other than training


def test_batched_judging_equals_one_batch():
    """judge_scenes runs the judge in chunks (batches.batched): the chunk size changes nothing."""
    judge = pretrained.load_pretrained("scene_judge")
    images = make_scenes(50, seed=pretrained.SCENE_TEST_SEED)[0]
    one, confidence = judge_scenes(judge, images, batch_size=50)
    chunked, chunked_confidence = judge_scenes(judge, images, batch_size=7)
    assert torch.equal(one, chunked)
    torch.testing.assert_close(confidence, chunked_confidence, rtol=0, atol=1e-6)


@pytest.mark.parametrize("options, message", [
    (["scene_latent_unet", "--num-steps", "0"], "num_steps must be an int from 1 to 1000, got 0"),
    (["silhouette_unet", "--num-samples", "0"], "num_samples must be an int >= 1, got 0"),
    (["scene_text_unet", "--guidance", "nan"], "guidance_scale must be a finite number"),
    (["scene_text_unet", "--guidance", "-1"], "guidance_scale must be >= 0"),
    (["scene_text_unet", "--num-steps", "1001"], "num_steps must be an int from 1 to 1000"),
    (["scene_vae", "--num-steps", "5"], "does not use --num-steps"),
    (["scene_judge", "--device", "nowhere"], "device must be one of"),
])
def test_evaluate_refuses_a_bad_option_before_any_work(options, message, monkeypatch, capsys):
    from sdlesson import cli, reports

    def no_work(*args, **kwargs):
        raise AssertionError("a model was loaded or data made despite a bad option")

    monkeypatch.setattr(reports.pre, "load_pretrained", no_work)
    monkeypatch.setattr(reports, "make_scenes", no_work)
    monkeypatch.setattr(reports, "TextToImage", no_work)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["evaluate", *options])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_background_distance_is_zero_on_the_palette_and_grows_between_colours():
    from sdlesson.evaluate import background_distance
    from sdlesson.scenes import BACKGROUND_RGB

    images = make_scenes(30, seed=4)[0]
    assert background_distance(images).max() == 0  # every rendered background is a palette colour
    white, gray = (torch.tensor(BACKGROUND_RGB[c], dtype=torch.float32) for c in ("white", "gray"))
    between = ((white + gray) / 2).round().to(torch.uint8).view(1, 3, 1, 1).expand(1, 3, 64, 64)
    nearest = min(float(((white + gray) / 2).round().sub(torch.tensor(c, dtype=torch.float32)).norm())
                  for c in BACKGROUND_RGB.values())
    assert background_distance(between).item() == pytest.approx(nearest) and nearest > 30  # far from all six
