"""Run the notebooks' GPU branches (TRAIN_FROM_SCRATCH = True) on this machine, with every recipe cut to 4 steps.

The CPU run that CI does never enters those branches; a learner with a GPU does. This executes copies of the
training notebooks with the switch forced on, the recipes shrunk and the GPU-sized counts replaced by the CPU
ones, and reports any cell that raises. It checks that the code runs, not what it measures (a few minutes):

    python scripts/check_gpu_branches.py            # all training notebooks
    python scripts/check_gpu_branches.py 04_vae     # one
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

import nbformat
from nbconvert.preprocessors import ExecutePreprocessor

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
SHRINK = """import dataclasses as _dc
from sdlesson import pretrained as _p
for _name in dir(_p):
    if _name.endswith("_TRAIN"):
        setattr(_p, _name, _dc.replace(getattr(_p, _name), steps=4, warmup_steps=1))
_p.SCENE_TRAIN_COUNT = 300
"""


def gpu_branch_copy(path: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.source = cell.source.replace('TRAIN_FROM_SCRATCH = device.type == "cuda"', "TRAIN_FROM_SCRATCH = True")
            # "1000 if TRAIN_FROM_SCRATCH else 64" -> "64": GPU-sized counts (and step lists) would take hours here;
            # small numbers (figure layouts) keep their GPU value
            cell.source = re.sub(r"(\[[\d, ]+\]|\b\d+) if TRAIN_FROM_SCRATCH else ",
                                 lambda m: "" if m[1].startswith("[") or int(m[1]) >= 20 else m[0], cell.source)
    nb.cells.insert(2, nbformat.v4.new_code_cell(SHRINK))
    return nb


def main(names: list[str]) -> int:
    paths = [NOTEBOOKS / f"{n}.ipynb" for n in names] if names else sorted(
        p for p in NOTEBOOKS.glob("*.ipynb") if "TRAIN_FROM_SCRATCH" in p.read_text())
    failures = 0
    for path in paths:
        nb = gpu_branch_copy(path)
        with tempfile.TemporaryDirectory() as tmp:
            ExecutePreprocessor(timeout=900, allow_errors=True).preprocess(nb, {"metadata": {"path": tmp}})
        errors = [(i, o) for i, c in enumerate(nb.cells) if c.cell_type == "code"
                  for o in c.get("outputs", []) if o.get("output_type") == "error"]
        for i, o in errors:
            print(f"{path.name}, cell {i}: {o['ename']}: {o['evalue']}")
        print(f"{path.name}: {'ok' if not errors else f'{len(errors)} failing cell(s)'}")
        failures += bool(errors)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
