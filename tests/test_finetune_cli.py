"""`python -m sdlesson finetune` and `generate --lora/--embedding`: a few steps write a small file that generate loads
(the same seed, the same tensors), and every mistake is one line, exit status 2, before any model loads."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from sdlesson import finetune as F
from sdlesson import lora as L
from sdlesson.cli import main
from sdlesson.generate import TextToImage
from sdlesson.viz import image_grid

PROMPT = "a large turtle in the center on a pink background"


def cli(*args):
    return subprocess.run([sys.executable, "-m", "sdlesson", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("finetune")
    main(["finetune", "lora", "--steps", "3", "--pictures", "4", "--out", str(tmp / "l.safetensors")])
    main(["finetune", "textual_inversion", "--steps", "3", "--pictures", "4", "--lr", "0.05",
          "--out", str(tmp / "t.safetensors")])
    return tmp


def test_finetune_writes_small_reproducible_files(files):
    lora, embedding = load_file(str(files / "l.safetensors")), load_file(str(files / "t.safetensors"))
    assert list(embedding) == ["turtle"] and embedding["turtle"].shape == (1, 64)
    assert all(k.startswith("unet.") for k in lora) and len(lora) == 2 * len(L.lora_layers(lora_model()))
    config = L.read_lora_config(files / "l.safetensors")
    assert config["word"] == "turtle" and config["init"] == "fish" and config["steps"] == 3
    assert config["parameters"] == sum(v.numel() for v in lora.values())
    assert (files / "l.safetensors").stat().st_size < 400_000 and (files / "t.safetensors").stat().st_size < 1000
    main(["finetune", "textual_inversion", "--steps", "3", "--pictures", "4", "--lr", "0.05",
          "--out", str(files / "again.safetensors")])
    assert torch.equal(load_file(str(files / "again.safetensors"))["turtle"], embedding["turtle"])  # same seed
    base = TextToImage.from_pretrained().clip.text.token_embedding.weight[pre_id("fish")]
    assert not torch.equal(embedding["turtle"][0], base)  # it trained: the row left fish's


def lora_model():
    model = TextToImage.from_pretrained()
    L.inject_lora(model.unet, targets=L.COURSE_ATTENTION)
    return model.unet


def pre_id(word):
    from sdlesson import pretrained as pre

    return pre.SCENE_CLIP.tokenizer().ids[word]


def test_generate_loads_the_files(files, capsys):
    out = files / "g.png"
    main(["generate", PROMPT, "--lora", str(files / "l.safetensors"), "--lora-scale", "0.5", "-n", "1",
          "--num-steps", "2", "--out", str(out)])
    assert out.stat().st_size > 0 and "wrote" in capsys.readouterr().out
    model = TextToImage.from_pretrained()
    assert F.load_lora_word(model, files / "l.safetensors", scale=0.5) == "turtle"
    assert {m.scale for m in L.lora_layers(model.unet).values()} == {0.5}
    main(["generate", PROMPT, "--embedding", str(files / "t.safetensors"), "-n", "1", "--num-steps", "2",
          "--out", str(out)])


@pytest.mark.parametrize("args, message", [
    (["finetune", "lora", "--steps", "0"], "--steps must be >= 1"),
    (["finetune", "lora", "--rank", "0"], "--rank must be >= 1"),
    (["finetune", "lora", "--lr", "-1"], "--lr must be a finite number > 0"),
    (["finetune", "textual_inversion", "--text-lora"], "apply to lora"),
    (["finetune", "lora", "--word", "fish"], "--word must be one lower-case word"),
    (["finetune", "lora", "--prior", "-1"], "--prior must be from 0 to 1000"),
    (["finetune", "lora", "--out", "x.pt"], "--out must be a .safetensors file"),
    (["finetune", "dreambooth"], "invalid choice"),
    (["generate", PROMPT, "--lora", "missing.safetensors"], "--lora: no file at"),
    (["generate", PROMPT, "--lora-scale", "0.5"], "needs --lora"),
    (["generate", PROMPT], "unknown word"),  # the word is new: without a file the model does not know it
])
def test_mistakes_are_one_line_and_fast(args, message, monkeypatch, capsys):
    def no_model(*a, **k):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(TextToImage, "from_pretrained", no_model)
    with pytest.raises(SystemExit) as exit_:
        main(args)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and err.count("\n") == 1, err


def test_a_file_of_the_wrong_kind(files):
    result = cli("generate", PROMPT, "--lora", str(files / "t.safetensors"))  # an embedding given as a LoRA
    assert result.returncode == 2 and "not a file written by" in result.stderr
    result = cli("generate", PROMPT, "--lora", str(files / "l.safetensors"),
                 "--embedding", str(files / "t.safetensors"))
    assert result.returncode == 2 and "the same word" in result.stderr


def test_lora_scale_explorer_moves_the_adapters(files):
    from sdlesson.viz import lora_scale_explorer

    model = TextToImage.from_pretrained()
    F.load_lora_word(model, files / "l.safetensors")
    app = lora_scale_explorer(model, num_images=2)
    assert "LoRA scale 1.00" in app.caption
    at_one = app.image.copy()
    app.controls["lora_scale"].value = 0.0
    assert {m.scale for m in L.lora_layers(model.unet).values()} == {0.0} and "LoRA scale 0.00" in app.caption
    assert not np.array_equal(app.image, at_one)
    L.remove_lora(model.unet)  # scale 0 is the base model, exactly
    np.testing.assert_array_equal(app.image, image_grid(model(PROMPT, num_images=2, seed=0), nrow=2, pad=2))
    with pytest.raises(ValueError, match="no LoRA adapters"):
        lora_scale_explorer(model)
