"""The packaging door: a built wheel carries the checkpoints, so the course works from any directory.

Builds the wheel offline (no build isolation: setuptools is already installed), installs it into a fresh venv that
reuses the installed dependencies (--system-site-packages) but not this checkout, and from a directory outside the
repository loads every shipped model and generates one picture through the command line.
"""

import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def clean_env(**extra) -> dict:
    """The environment without this session's PYTHONPATH, so only what is installed can be imported."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return env | {"PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"} | extra


def make_venv(path: Path) -> Path:
    """A venv that sees the installed dependencies but gets its own sdlesson; returns its python."""
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(path)
    return path / "bin" / "python"


def test_wheel_holds_checkpoints_and_works_outside_the_repository(tmp_path):
    src = tmp_path / "src"  # a copy, so the build leaves no build/ or egg-info in the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "sdlesson", "data", "jupyter"):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        ignore = {"ignore": shutil.ignore_patterns("__pycache__")} if copy is shutil.copytree else {}
        copy(ROOT / name, src / name, **ignore)
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist")], check=True, env=clean_env())
    (wheel,) = (tmp_path / "dist").glob("sdlesson-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = sorted(p.name for p in (ROOT / "data").glob("*.safetensors"))
    assert shipped, "no checkpoints in data/"
    assert {f"sdlesson/data/{n}" for n in shipped} <= names, "the wheel lacks checkpoints"
    settings = "share/jupyter/lab/settings/overrides.d/sdlesson.json5"  # JupyterLab keeps widget state (see file)
    assert any(n.endswith(f".data/data/{settings}") for n in names), "the wheel lacks the JupyterLab settings"
    print(f"wheel: {wheel.stat().st_size / 2**20:.1f} MiB")

    python = make_venv(tmp_path / "venv")
    # --force-reinstall: the venv sees the machine's own sdlesson, which pip would otherwise count as installed
    subprocess.run([python, "-m", "pip", "install", "--no-deps", "--force-reinstall", "-q", str(wheel)], check=True,
                   env=clean_env())
    assert (tmp_path / "venv" / settings).exists(), "the wheel did not install the JupyterLab settings"
    work = tmp_path / "elsewhere"
    work.mkdir()
    script = (
        "import sdlesson, sdlesson.pretrained as pre\n"
        "print(sdlesson.__file__)\n"
        "for name in pre.CHECKPOINTS:\n"
        "    pre.load_pretrained(name)\n"
        "print(pre.DATA_DIR)\n")
    out = subprocess.run([python, "-c", script], cwd=work, env=clean_env(), check=True, capture_output=True,
                         text=True).stdout.split("\n")
    venv_dir = (tmp_path / "venv").resolve()
    assert Path(out[0]).resolve().is_relative_to(venv_dir), f"imported {out[0]}, not the wheel in the venv"
    assert Path(out[1]).resolve().is_relative_to(venv_dir), f"checkpoints read from {out[1]}, not the installed wheel"

    subprocess.run([python, "-m", "sdlesson", "generate", "a small dog face in the top left on a green background",
                    "-n", "1", "--seed", "0", "--out", "x.png"], cwd=work, env=clean_env(), check=True)
    assert (work / "x.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
