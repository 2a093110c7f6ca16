"""The Colab door: every notebook's first cell installs the course into a fresh runtime with pip.

Offline: the cell is pointed (SDLESSON_REPOSITORY) at a local git repository holding this checkout's files, and runs
in a fresh venv that reuses the installed dependencies but hides any sdlesson installed here, as on a new Colab
runtime. It runs twice in one process (the second does nothing), then in a new process as after a restart.
"""

import importlib.util
import os
import shutil
import subprocess
import venv
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("colab_cell", ROOT / "scripts" / "colab_cell.py")
colab_cell = importlib.util.module_from_spec(spec)
spec.loader.exec_module(colab_cell)

# Imported after the system's .pth files: drops an editable install's finder so the venv starts without sdlesson.
# The venv sees the machine's packages (torch and the rest, no network here) but must not see its sdlesson, however
# that was installed: an editable install's import hook is dropped, and a regular install in the base environment's
# site-packages is passed over (sdlesson is looked up only on paths outside the base environment).
HIDE_SYSTEM_SDLESSON = """\
import importlib.machinery, sys
sys.meta_path[:] = [f for f in sys.meta_path if 'sdlesson' not in repr(f)]
class HideBaseSdlesson:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name != 'sdlesson':
            return None
        paths = [p for p in sys.path if not (p or '.').startswith(sys.base_prefix)]
        spec = importlib.machinery.PathFinder.find_spec(name, paths)
        if spec is None:
            raise ModuleNotFoundError("No module named 'sdlesson'", name=name)
        return spec
sys.meta_path.insert(0, HideBaseSdlesson)
"""


def test_first_cells_and_badges_are_what_the_script_writes():
    repo = colab_cell.repository()
    cells = {p.name: nbformat.read(p, as_version=4).cells[colab_cell.CELL_INDEX].source for p in colab_cell.NOTEBOOKS}
    assert len(cells) == len(colab_cell.NOTEBOOKS) >= 8  # lessons 00-07
    stale = [name for name, source in cells.items() if source != colab_cell.first_cell(repo)]
    assert not stale, f"run `python scripts/colab_cell.py`: first cells differ in {stale}"
    readme = (ROOT / "README.md").read_text()
    assert readme == colab_cell.readme_with_badges(readme, repo), "run `python scripts/colab_cell.py`: README badges"
    badges = [p.name for p in colab_cell.NOTEBOOKS if colab_cell.colab_prefix(repo) + p.name in readme]
    assert len(badges) == len(cells), f"README has Colab badges only for {badges}"


def test_first_cell_installs_the_course_offline(tmp_path):
    origin = tmp_path / "origin"  # a git repository with this checkout's files, standing in for GitHub
    origin.mkdir()
    for name in ("pyproject.toml", "README.md", "sdlesson", "data", "jupyter"):  # what the package is built from
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, origin / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, origin / name)
    # Another version than the machine's own sdlesson, which the venv (seeing the machine's packages) would otherwise
    # count as installed: pip then installs from the clone, as on a fresh Colab runtime that has no sdlesson at all.
    pyproject = origin / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('version = "0.1.0"', 'version = "0.1.0+origin"', 1))
    assert "0.1.0+origin" in pyproject.read_text()
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.org", "-C", str(origin)]
    for args in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "course"]):
        subprocess.run(git + args, check=True)

    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(tmp_path / "venv")
    python = tmp_path / "venv" / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "sitecustomize.py").write_text(HIDE_SYSTEM_SDLESSON)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env |= {"SDLESSON_REPOSITORY": origin.as_uri(), "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "PIP_NO_BUILD_ISOLATION": "0"}  # pip's inverted switch: 0 turns build isolation off (no index here)
    content = tmp_path / "content"  # Colab's working directory, holding a folder named sdlesson that must not shadow
    (content / "sdlesson").mkdir(parents=True)

    def run(code):
        return subprocess.run([python, "-c", code], cwd=content, env=env, capture_output=True, text=True, check=True)

    found = run("import importlib.util as u; s = u.find_spec('sdlesson'); print(s and s.origin)")
    assert found.stdout.strip() == "None"
    cell = colab_cell.first_cell(colab_cell.repository())
    twice = run(f"exec({cell!r})\nexec({cell!r})\nimport sdlesson.pretrained; print(sdlesson.__file__)").stdout
    assert twice.count("installing sdlesson") == 1, twice
    assert Path(twice.strip().splitlines()[-1]).is_relative_to(site), twice

    after_restart = run(f"exec({cell!r})\nimport sdlesson.pretrained as pre; pre.load_pretrained('scene_text_unet')"
                        "\nprint(pre.DATA_DIR)").stdout
    assert "installing" not in after_restart and Path(after_restart.strip()).is_relative_to(site), after_restart
    help_text = subprocess.run([python, "-m", "sdlesson", "--help"], cwd=content, env=env, capture_output=True,
                               text=True, check=True).stdout
    assert "generate" in help_text
