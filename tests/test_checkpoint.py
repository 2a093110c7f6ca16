import os

import pytest
import torch

from sdlesson import checkpoint as ckpt
from sdlesson.classifier import Classifier, ClassifierConfig
from sdlesson.unet import UNet

from conftest import tiny_unet_config


def test_round_trip_rebuilds_the_same_model(tmp_path, tiny_unet):
    path = ckpt.save_model(tmp_path / "m.safetensors", tiny_unet, note="hello")
    loaded = ckpt.load_model(path)
    assert loaded.config == tiny_unet.config
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(loaded(x, 3), tiny_unet.eval()(x, 3))
    assert ckpt.read_metadata(path)["note"] == "hello"


def test_write_is_atomic_and_leaves_no_temporary_files(tmp_path, tiny_unet, monkeypatch):
    path = tmp_path / "m.safetensors"
    ckpt.save_model(path, tiny_unet)
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.os, "replace", crash)
    torch.manual_seed(1)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_model(path, UNet(tiny_unet_config()))
    assert path.read_bytes() == before  # the old checkpoint is intact
    assert os.listdir(tmp_path) == ["m.safetensors"]


def test_config_mismatch_is_a_clear_error(tmp_path, tiny_unet):
    path = ckpt.save_model(tmp_path / "m.safetensors", tiny_unet)
    other = UNet(tiny_unet_config(block_channels=(8, 8)))
    with pytest.raises(ValueError, match=r"different config.*block_channels"):
        ckpt.load_weights(other, path)


def test_wrong_kind_is_a_clear_error(tmp_path, tiny_unet):
    path = ckpt.save_model(tmp_path / "m.safetensors", tiny_unet)
    with pytest.raises(ValueError, match="holds a 'unet' checkpoint, expected a 'classifier'"):
        ckpt.load_model(path, kind="classifier")
    clf = Classifier(ClassifierConfig())
    with pytest.raises(ValueError, match="expected a 'classifier' checkpoint"):
        ckpt.load_weights(clf, path)


def test_a_file_that_is_not_a_checkpoint_is_rejected(tmp_path):
    junk = tmp_path / "notes.safetensors"
    junk.write_text("these are not weights")
    with pytest.raises(ValueError, match="is not an sdlesson checkpoint"):
        ckpt.load_model(junk)
    plain = tmp_path / "plain.safetensors"
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(plain))  # a real safetensors file, but not ours
    with pytest.raises(ValueError, match="no 'sdlesson-checkpoint-v1' format tag"):
        ckpt.load_model(plain)
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        ckpt.load_model(tmp_path / "missing.safetensors")


def test_missing_folder_is_a_clear_error(tmp_path, tiny_unet):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ckpt.save_model(tmp_path / "nope" / "m.safetensors", tiny_unet)


def test_half_precision_files_load_back_into_float32(tmp_path, tiny_unet):
    full = ckpt.save_model(tmp_path / "full.safetensors", tiny_unet)
    half = ckpt.save_model(tmp_path / "half.safetensors", tiny_unet, dtype=torch.float16)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded = ckpt.load_model(half)
    for (name, a), b in zip(tiny_unet.state_dict().items(), loaded.state_dict().values()):
        assert b.dtype == a.dtype
        torch.testing.assert_close(b, a, atol=2e-3, rtol=1e-3)  # fp16 keeps ~3 significant digits


def test_clip_checkpoints_round_trip(tmp_path):
    from sdlesson.text import CLIP, CLIPConfig

    clip = CLIP(CLIPConfig(width=16, layers=1, heads=2, image_width=8, embed_dim=8))
    loaded = ckpt.load_model(ckpt.save_model(tmp_path / "clip.safetensors", clip), kind="clip")
    assert loaded.config == clip.config and loaded.config.tokenizer().vocab == clip.config.tokenizer().vocab
    ids, mask = clip.config.tokenizer()("a cat face")
    torch.testing.assert_close(loaded.encode_text(ids, mask), clip.encode_text(ids, mask))
