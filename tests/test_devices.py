"""The precision the library picks follows what the machine computes fast, never the device type alone."""

import json
from pathlib import Path

import pytest
import torch

from sdlesson import devices, recipes
from sdlesson.train import TrainConfig

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.fixture
def cpu(monkeypatch):
    """A CPU whose bf16 support the test sets: hardware flags, PyTorch's kernel level and oneDNN's ISA cap."""
    def make(*, bf16_hardware: bool, capability: str = "AVX512", onednn_isa: str | None = None):
        monkeypatch.setattr(devices.platform, "machine", lambda: "x86_64")
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: bf16_hardware)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
        if onednn_isa is None:
            monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
        else:
            monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", onednn_isa)
        devices.cpu_bf16_is_faster.cache_clear()
    yield make
    devices.cpu_bf16_is_faster.cache_clear()


def test_no_native_bf16_means_fp32_by_default(cpu):
    cpu(bf16_hardware=False, capability="AVX2")
    assert not devices.cpu_has_native_bf16()
    assert devices.fast_precision("cpu") == "fp32"
    assert devices.autocast_dtype("auto", torch.device("cpu")) is None
    for name, recipe in recipes.RECIPES.items():  # every shipped recipe's default, as `train NAME` runs it
        assert devices.autocast_dtype(recipe.train.precision, torch.device("cpu")) is None, name
    assert devices.autocast_dtype(TrainConfig().precision, torch.device("cpu")) is None


@pytest.mark.parametrize("capability, isa", [("AVX2", None), ("AVX512", "AVX2"), ("AVX512", "AVX512_CORE")])
def test_emulation_switches_turn_native_bf16_off(cpu, capability, isa):
    """ATEN_CPU_CAPABILITY=avx2 or ONEDNN_MAX_CPU_ISA below bf16 make even a bf16 CPU emulate it."""
    cpu(bf16_hardware=True, capability=capability, onednn_isa=isa)
    assert not devices.cpu_has_native_bf16()
    assert devices.fast_precision("cpu") == "fp32"


def test_native_bf16_is_used_only_when_measured_faster(cpu, monkeypatch):
    cpu(bf16_hardware=True)
    assert devices.cpu_has_native_bf16()
    monkeypatch.setattr(devices.time, "perf_counter", iter(range(1000)).__next__)  # every step "takes" 1 s
    assert devices.fast_precision("cpu") == "fp32"  # equal times: no clear win, so fp32


def test_a_forced_choice_is_honoured(cpu):
    cpu(bf16_hardware=False, capability="AVX2")
    assert devices.autocast_dtype("bf16", "cpu") is torch.bfloat16
    assert devices.autocast_dtype("fp16", "cpu") is torch.float16
    assert devices.autocast_dtype("fp32", "cuda") is None
    assert devices.fast_precision("mps") == "fp32"
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16, fp16, got 'half'"):
        devices.autocast_dtype("half", "cpu")


def test_no_lesson_hard_codes_bf16_on_the_cpu():
    """The lessons' brief training runs use precision="auto", so an AVX2 laptop trains in fp32."""
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            if cell["cell_type"] == "code":
                source = "".join(cell["source"])
                assert 'precision="bf16"' not in source and "precision='bf16'" not in source, path.name
