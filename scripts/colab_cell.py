"""Write every notebook's first cell (the Colab install cell) and the README's Colab badges from one address.

The repository's address lives only in pyproject.toml's [project.urls] Repository. A fork changes it there and runs

    python scripts/colab_cell.py

tests/test_first_cell.py checks that the notebooks and the README agree with what this script writes.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
CELL_INDEX = 1  # cell 0 is the lesson's title

CELL = '''\
# On Colab: install the course (about a minute). Where sdlesson is already installed, this does nothing.
import importlib, importlib.util, os, subprocess, sys
REPOSITORY = os.environ.get("SDLESSON_REPOSITORY", "{repository}")
spec = importlib.util.find_spec("sdlesson")
if spec is None or spec.origin is None:  # origin None: only a folder named sdlesson, not the package
    print(f"installing sdlesson from {{REPOSITORY}} with pip (about 60 s) ...", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"git+{{REPOSITORY}}"], check=True)
    importlib.invalidate_caches()
    print("installed: restart not needed")'''


def repository() -> str:
    """The address in pyproject.toml's [project.urls] Repository, e.g. https://github.com/sdlesson/sdlesson."""
    # a regex, not tomllib: tomllib is Python 3.11+, and the course promises 3.10
    found = re.search(r'^Repository\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    if found is None:
        raise ValueError("pyproject.toml has no [project.urls] Repository = \"https://github.com/OWNER/NAME\"")
    return found[1].rstrip("/")


def first_cell(repo: str) -> str:
    return CELL.format(repository=repo)


def colab_prefix(repo: str) -> str:
    """The Colab address of the repository's notebooks folder; a badge link is this plus the notebook's name."""
    owner_name = re.fullmatch(r"https://github\.com/([^/]+/[^/]+?)(\.git)?", repo)
    if owner_name is None:
        raise ValueError(f"Repository must be https://github.com/OWNER/NAME for Colab, got {repo!r}")
    return f"https://colab.research.google.com/github/{owner_name[1]}/blob/main/notebooks/"


BADGE = re.compile(r"https://colab\.research\.google\.com/github/[^/]+/[^/]+/blob/[^/]+/notebooks/")


def readme_with_badges(text: str, repo: str) -> str:
    return BADGE.sub(colab_prefix(repo), text)


def main() -> None:
    repo = repository()
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        cell = nb.cells[CELL_INDEX]
        if cell.cell_type != "code":
            sys.exit(f"{path.name}: cell {CELL_INDEX} should be the install cell, found a {cell.cell_type} cell")
        if cell.source != first_cell(repo):
            cell.source = first_cell(repo)
            nbformat.write(nb, path)
            print(f"wrote {path.relative_to(ROOT)}")
    readme = ROOT / "README.md"
    text = readme.read_text()
    if readme_with_badges(text, repo) != text:
        readme.write_text(readme_with_badges(text, repo))
        print("wrote README.md")
    print(f"first cells and badges point at {repo}")


if __name__ == "__main__":
    main()
