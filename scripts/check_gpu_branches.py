"""Run the notebooks' GPU branches (training from scratch) on this machine, with every recipe cut to 4 steps.

The CPU run that CI does never enters those branches; a learner with a GPU does. This executes the training
notebooks as they are, with two switches in the kernel's environment, and reports any cell that raises:
SDLESSON_TRAIN_FROM_SCRATCH=1 (the notebooks' TRAIN_FROM_SCRATCH, see sdlesson.recipes.train_from_scratch),
SDLESSON_RECIPE_STEPS=4 and SDLESSON_RECIPE_SCENES=300 (every recipe shrunk: 4 steps, 300 training scenes).
It checks that the code runs, not what it measures. The notebooks' own GPU-sized counts (samples, sampling steps)
stay as they are, so on a CPU this takes a while; on a GPU, minutes:

    python scripts/check_gpu_branches.py            # all training notebooks
    python scripts/check_gpu_branches.py 04_vae     # one
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import nbformat
from nbconvert.preprocessors import ExecutePreprocessor

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
SWITCHES = {"SDLESSON_TRAIN_FROM_SCRATCH": "1", "SDLESSON_RECIPE_STEPS": "4", "SDLESSON_RECIPE_SCENES": "300"}


def main(names: list[str]) -> int:
    paths = [NOTEBOOKS / f"{n}.ipynb" for n in names] if names else sorted(
        p for p in NOTEBOOKS.glob("*.ipynb") if "TRAIN_FROM_SCRATCH" in p.read_text())
    os.environ.update(SWITCHES)  # the kernels started below inherit this environment
    failures = 0
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        with tempfile.TemporaryDirectory() as tmp:
            ExecutePreprocessor(timeout=1800, allow_errors=True).preprocess(nb, {"metadata": {"path": tmp}})
        errors = [(i, o) for i, c in enumerate(nb.cells) if c.cell_type == "code"
                  for o in c.get("outputs", []) if o.get("output_type") == "error"]
        for i, o in errors:
            print(f"{path.name}, cell {i}: {o['ename']}: {o['evalue']}")
        print(f"{path.name}: {'ok' if not errors else f'{len(errors)} failing cell(s)'}")
        failures += bool(errors)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
