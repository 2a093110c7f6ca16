import matplotlib
import pytest
import torch

matplotlib.use("Agg")

from sdlesson.schedule import NoiseSchedule  # noqa: E402
from sdlesson.unet import UNet, UNetConfig  # noqa: E402


def tiny_unet_config(**overrides) -> UNetConfig:
    """A UNet small enough for a unit test: two levels, 8 and 16 channels."""
    kw = dict(in_channels=1, sample_size=8, block_channels=(8, 16), attention_levels=(False, True),
              layers_per_block=1, attention_head_dim=8, norm_groups=4)
    return UNetConfig(**(kw | overrides))


@pytest.fixture
def tiny_unet():
    torch.manual_seed(0)
    return UNet(tiny_unet_config())


@pytest.fixture(params=["linear", "cosine", "scaled_linear"])
def schedule(request):
    return NoiseSchedule(request.param)


# Markers (registered in pyproject.toml): `python -m pytest tests -m "not slow"` runs the unit tests alone.
DOOR_TESTS = {"test_browser.py", "test_wheel.py", "test_first_cell.py"}  # install doors: venvs, JupyterLab, Chromium
SLOW_TESTS = {"test_shipped_behaviour.py",  # the shipped models measured: recipes trained, evaluate_* run
              # whole pipelines against diffusers on tiny SD snapshots (minutes; CI runs them on 3.11)
              "test_sd_pipeline.py", "test_img2img.py", "test_lora.py", "test_textual_inversion.py",
              # `python -m sdlesson train` in subprocesses (40-step runs, a killed run, torchrun with 2 processes)
              "test_recipes.py::test_same_command_twice_gives_identical_tensors",
              "test_recipes.py::test_killed_run_resumes_to_the_uninterrupted_result",
              "test_recipes.py::test_two_processes_train_like_one"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        name = item.path.name
        if name in DOOR_TESTS:
            item.add_marker(pytest.mark.door)
        elif item.path.suffix == ".ipynb":  # nbval's notebook cells
            item.add_marker(pytest.mark.notebook)
        elif name not in SLOW_TESTS and f"{name}::{getattr(item, 'originalname', item.name)}" not in SLOW_TESTS:
            continue
        item.add_marker(pytest.mark.slow)
