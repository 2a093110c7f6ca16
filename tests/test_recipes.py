"""Recipes and `python -m sdlesson train`, run as a user runs them: in subprocesses, on silhouette_classifier
(the cheapest recipe: 77k parameters, the bundled silhouettes) cut to a few steps."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sdlesson import pretrained, recipes
from sdlesson.checkpoint import read_metadata
from sdlesson.cli import main

ROOT = Path(__file__).resolve().parent.parent
ENV = os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
ENV.pop("SDLESSON_RECIPE_STEPS", None)
NAME = "silhouette_classifier"


def train_command(folder: Path, steps: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "sdlesson", "train", NAME, "--steps", str(steps), "--device", "cpu",
            "--runs", str(folder / "runs"), "--out", str(folder), *extra]


def run_train(folder: Path, steps: int, *extra: str) -> dict[str, torch.Tensor]:
    subprocess.run(train_command(folder, steps, *extra), env=ENV, check=True, capture_output=True, timeout=120)
    return load_file(folder / f"{NAME}.safetensors")


def assert_same_tensors(a: dict, b: dict, atol=0.0):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=atol, msg=key)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """One uninterrupted 40-step run: (its folder, its weights)."""
    folder = tmp_path_factory.mktemp("straight")
    return folder, run_train(folder, 40)


def test_every_shipped_model_has_one_recipe():
    assert set(recipes.RECIPES) == set(pretrained.CHECKPOINTS)
    for name, recipe in recipes.RECIPES.items():
        assert recipe.name == name and set(recipe.needs) <= set(recipes.RECIPES) - {name}
    assert recipes.get("scene_text_unet").needs == ("scene_vae", "scene_clip")
    assert recipes.get("scene_text_unet").dtype == torch.float16 and recipes.get("scene_clip").dtype is None


def test_unknown_recipe_is_a_value_error_not_an_exit():
    with pytest.raises(ValueError, match="unknown model 'sd15'.*silhouette_unet"):
        recipes.get("sd15")


def test_build_model_is_seeded_and_leaves_the_global_rng_alone():
    recipe = recipes.get("silhouette_unet")
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = recipe.build_model()
    assert torch.equal(torch.rand(3), before)  # the global generator is where it was
    b = recipe.build_model()
    assert_same_tensors(a.state_dict(), b.state_dict())


def test_recipe_steps_shrink_by_environment(monkeypatch):
    monkeypatch.setenv("SDLESSON_RECIPE_STEPS", "4")
    assert recipes.get("scene_vae").train.steps == 4
    monkeypatch.setenv("SDLESSON_RECIPE_STEPS", "four")
    with pytest.raises(ValueError, match="SDLESSON_RECIPE_STEPS.*'four'"):
        recipes.get("scene_vae")


def test_train_from_scratch_switch(monkeypatch):
    monkeypatch.delenv("SDLESSON_TRAIN_FROM_SCRATCH", raising=False)
    assert recipes.train_from_scratch(torch.device("cuda")) and not recipes.train_from_scratch(torch.device("cpu"))
    monkeypatch.setenv("SDLESSON_TRAIN_FROM_SCRATCH", "1")
    assert recipes.train_from_scratch(torch.device("cpu"))
    monkeypatch.setenv("SDLESSON_TRAIN_FROM_SCRATCH", "0")
    assert not recipes.train_from_scratch(torch.device("cuda"))
    monkeypatch.setenv("SDLESSON_TRAIN_FROM_SCRATCH", "yes")
    with pytest.raises(ValueError, match="must be 1 or 0, got 'yes'"):
        recipes.train_from_scratch(torch.device("cpu"))


def test_same_command_twice_gives_identical_tensors(straight, tmp_path):
    folder, weights = straight
    assert_same_tensors(run_train(tmp_path, 40), weights)
    meta = read_metadata(folder / f"{NAME}.safetensors")
    assert meta["steps"] == 40 and meta["command"].startswith(f"python -m sdlesson train {NAME} --steps 40")


def test_killed_run_resumes_to_the_uninterrupted_result(straight, tmp_path):
    """SIGKILL right after the first checkpoint appears (a real kill), then the same command again."""
    state = tmp_path / "runs" / f"{NAME}.train.safetensors"
    proc = subprocess.Popen(train_command(tmp_path, 40, "--checkpoint-every", "5"), env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=10) == -signal.SIGKILL  # killed, not finished
    killed_at = read_metadata(state)["step"]
    assert 5 <= killed_at < 40 and not (tmp_path / f"{NAME}.safetensors").exists()
    assert_same_tensors(run_train(tmp_path, 40, "--checkpoint-every", "5"), straight[1])


def test_cli_refuses_what_does_not_apply(capsys, tmp_path):
    cases = [(["evaluate", "scene_vae", "--sampler", "ddpm"], "evaluate scene_vae does not use --sampler"),
             (["evaluate", "scene_text_unet", "--num-samples", "10"], "does not use --num-samples"),
             (["train", "sd15"], "unknown model 'sd15'"),
             (["train", NAME, "--out", str(tmp_path / "weights.pt")], "--out must be a folder or a .safetensors")]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def torchrun(folder: Path, processes: int, steps: int) -> dict[str, torch.Tensor]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               *train_command(folder, steps)[1:]]
    subprocess.run(command, env=ENV, check=True, capture_output=True, timeout=120)
    return load_file(folder / f"{NAME}.safetensors")


def test_two_processes_train_like_one(tmp_path):
    """torchrun, 2 gloo processes on the CPU, against 1 process at the same global batch (128): the same batches,
    so the loss history and the weights agree up to the order of float sums (the all-reduce averages gradients
    that one process sums in one go). Then resumed with 1 process: a run may change its process count."""
    one = run_train(tmp_path / "one", 6)
    two = torchrun(tmp_path / "two", 2, 6)
    assert_same_tensors(two, one, atol=1e-5)
    loss_one, loss_two = (load_file(tmp_path / f / "runs" / f"{NAME}.train.safetensors")["history.loss"]
                          for f in ("one", "two"))
    assert len(loss_one) == len(loss_two) == 6
    torch.testing.assert_close(loss_two, loss_one, rtol=0, atol=1e-5)
    assert read_metadata(tmp_path / "two" / f"{NAME}.safetensors")["processes"] == 2
    assert_same_tensors(run_train(tmp_path / "two", 8), run_train(tmp_path / "one", 8), atol=1e-5)
