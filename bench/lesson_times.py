"""Time every lesson as a learner runs it: `jupyter nbconvert --execute` wall time, kernel start included.

    python bench/lesson_times.py                       # every lesson, natively and with AVX2 kernels only
    python bench/lesson_times.py 04 05 --modes avx2    # some lessons, one machine class
    python bench/lesson_times.py --modes native --inplace   # re-execute the committed notebooks, timed (maintainers)

Two machine classes from one machine: "native" runs as the CPU is; "avx2" sets ATEN_CPU_CAPABILITY=avx2 and
ONEDNN_MAX_CPU_ISA=AVX2, so PyTorch and oneDNN use AVX2 kernels only, as on most laptops (no AVX-512, no native
bf16). Before timing, it checks that the emulation is real: a bf16 training step must be much slower under it
(on a CPU that has native bf16) or the CPU must already be AVX2-only. Executed copies go to a temporary folder;
the committed notebooks are not touched (unless --inplace: then
the first mode's executed notebooks replace them). The course's budget: 3 minutes a lesson; 15 for the course natively,
20 on the AVX2 class.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
MODES = {"native": {}, "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}}
PROBE = ("from sdlesson import devices; print(devices.describe_cpu()); "
         "print(f'{devices.bf16_step_ratio(batch=32):.1f}x')")


def machine_line(env: dict) -> str:
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True).stdout
    described, ratio = out.strip().splitlines()
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "unknown CPU") if Path("/proc/cpuinfo").exists() else "CPU"
    return f"{model}, {os.cpu_count()} cores; {described}; a bf16 conv step takes {ratio} an fp32 one"


def run_lesson(path: Path, env: dict, out_dir: Path | None) -> float:
    """nbconvert's wall time for one lesson; out_dir None: executed in place."""
    where = ["--inplace"] if out_dir is None else ["--output-dir", str(out_dir)]
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
                          "--ExecutePreprocessor.timeout=1800", *where, str(path)],
                         env=env, capture_output=True, text=True, cwd=path.parent)
    if run.returncode:  # a failing lesson is reported, and the others still run
        print(f"  {path.stem} FAILED:\n" + "\n".join(run.stderr.splitlines()[-15:]), flush=True)
        return float("nan")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("lessons", nargs="*", help="lesson numbers (default: all), e.g. 04 05")
    parser.add_argument("--modes", default="native,avx2", help="comma-separated: native, avx2 (default: both)")
    parser.add_argument("--inplace", action="store_true", help="the first mode's runs replace the committed notebooks")
    args = parser.parse_args()
    modes = args.modes.split(",")
    if unknown := [m for m in modes if m not in MODES]:
        parser.error(f"--modes: unknown {unknown}, expected native and/or avx2")
    lessons = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if args.lessons:
        lessons = [p for p in lessons if p.name[:2] in args.lessons]
        if not lessons:
            parser.error(f"no lesson numbered {args.lessons}")
    times: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in modes:
            env = {**os.environ, **MODES[mode]}
            print(f"{mode}: {machine_line(env)}", flush=True)
            for path in lessons:
                seconds = run_lesson(path, env, None if args.inplace and mode == modes[0] else Path(tmp))
                times.setdefault(path.stem, {})[mode] = seconds
                print(f"  {path.stem:<32} {seconds:6.0f} s", flush=True)
    print("\n| lesson | " + " | ".join(modes) + " |\n|---|" + "---|" * len(modes))
    for stem, row in times.items():
        print(f"| {stem} | " + " | ".join(f"{row[m]:.0f} s" for m in modes) + " |")
    print("| course | " + " | ".join(f"{sum(r[m] for r in times.values()) / 60:.1f} min" for m in modes) + " |")
    over = [f"{s} ({m})" for s, r in times.items() for m in modes if r[m] > 180]
    print("over 3 minutes: " + (", ".join(over) if over else "none"))


if __name__ == "__main__":
    main()
