#!/usr/bin/env bash
# CI: the README promises Python 3.10 through 3.13. For the oldest and the newest of those found on this
# machine, install the course into a throwaway virtual environment as a new user would (requirements.txt, then
# the package), run the unit tests (tests/, not the notebooks) and one `generate`; fail if either fails.
# Prints the seconds each version takes (most of it is pip fetching torch, a CUDA build of several GB, for that
# Python). The tests that exercise the install doors themselves (wheel, Colab cell, browser) run under the main
# Python only: they build venvs and start JupyterLab, and say nothing more about the language version.
# Usage: scripts/check_python_versions.sh [VERSION ...]   (default: 3.10 3.13)
set -uo pipefail
cd "$(dirname "$0")/.."
versions=("$@")
[ ${#versions[@]} -gt 0 ] || versions=(3.10 3.13)

find_python() {  # $1 = "3.10": an interpreter of that version on PATH or under pyenv, else nothing
    local v=$1 p
    for p in "$(command -v "python$v" || true)" "$HOME"/.pyenv/versions/"$v".*/bin/python; do
        if [ -x "$p" ] && "$p" -c "import sys; sys.exit(sys.version_info[:2] != tuple(map(int, '$v'.split('.'))))"; then
            echo "$p"; return
        fi
    done
}

failed=()
for v in "${versions[@]}"; do
    py=$(find_python "$v")
    if [ -z "$py" ]; then
        echo "python $v: not on this machine, not checked"
        continue
    fi
    start=$SECONDS
    venv=$(mktemp -d "/tmp/sdlesson-py$v.XXXXXX")
    log=$venv.log
    ok=1
    {
        "$py" -m venv "$venv" &&
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-test.txt &&
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -e . &&
        "$venv/bin/python" -m pytest tests -q -p no:cacheprovider --ignore=tests/test_wheel.py \
            --ignore=tests/test_first_cell.py --ignore=tests/test_browser.py &&
        "$venv/bin/python" -m sdlesson generate \
            "a small cat face in the center on a blue background" --out "$venv/cat.png" &&
        [ -s "$venv/cat.png" ]
    } >"$log" 2>&1 || ok=0
    secs=$((SECONDS - start))
    if [ $ok = 1 ]; then
        echo "python $v ($("$py" -V 2>&1)): unit tests and generate pass, $(grep -E '[0-9]+ passed' "$log" | tail -1), ${secs} s"
    else
        echo "python $v ($("$py" -V 2>&1)): FAILED after ${secs} s; last lines of $log:"
        tail -n 30 "$log"
        failed+=("$v")
    fi
    rm -rf "$venv"
done
[ ${#failed[@]} -eq 0 ] || { echo "failed on python ${failed[*]}"; exit 1; }
