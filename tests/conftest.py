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
