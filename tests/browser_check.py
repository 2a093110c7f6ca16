"""UNFINISHED (not collected: rename to test_browser.py once it passes). Last run: after Run All of lesson 00 the
kernel reports idle but the last cell still shows [*], so wait_idle times out; see the report of issue 8.

The browser door: JupyterLab in a real Chromium, lessons 00, 01 and 06 run, their explorers answer a control.

Starts JupyterLab on 127.0.0.1 (a free port, a token set here) over a copy of notebooks/, drives /usr/bin/chromium
with Playwright at 1366x768, Run All, waits for the kernel to go idle, moves a slider or types a prompt in the
lesson's explorer, and checks the picture's bytes changed and the console shows no errors. Screenshots go to
$SDLESSON_SCREENSHOTS (default: the test's tmp folder). Skips only where Chromium or Playwright is missing.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
sync_api = pytest.importorskip("playwright.sync_api", reason="needs Playwright (pip install playwright)")
if not CHROMIUM.exists():
    pytest.skip("needs Chromium at /usr/bin/chromium (apt-get install -y chromium)", allow_module_level=True)

TOKEN = "sdlesson-browser-test"
# lesson -> how to change its explorer: (kind, selector index within the explorer's controls)
LESSONS = {"00_quickstart": "prompt", "01_forward_diffusion": "slider", "06_text_conditioning": "prompt"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    folder = tmp_path_factory.mktemp("notebooks")
    for name in LESSONS:
        shutil.copy2(ROOT / "notebooks" / f"{name}.ipynb", folder)
    port = free_port()
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--ServerApp.ip=127.0.0.1",
           f"--ServerApp.port={port}", f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={folder}"]
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    log = open(folder / "lab.log", "w")
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            urllib.request.urlopen(f"{url}/api/status?token={TOKEN}", timeout=1)
            break
        except OSError:
            time.sleep(0.5)
    else:
        server.terminate()
        pytest.fail(f"JupyterLab did not start: {(folder / 'lab.log').read_text()[-2000:]}")
    yield url, folder
    server.terminate()
    server.wait(timeout=30)


def kernels(url):
    with urllib.request.urlopen(f"{url}/api/kernels?token={TOKEN}", timeout=5) as r:
        return json.load(r)


def wait_idle(page, url, timeout=300):
    end = time.time() + timeout
    while time.time() < end:
        busy = [k for k in kernels(url) if k["execution_state"] != "idle"]
        prompts = page.eval_on_selector_all(".jp-InputPrompt", "els => els.map(e => e.textContent)")
        print([k["execution_state"] for k in kernels(url)], [p for p in prompts if "*" in p][:3], flush=True)
        if not busy and not any("*" in p for p in prompts):
            return
        time.sleep(1)
    raise AssertionError("the notebook did not finish running")


def picture_bytes(page):
    """The explorer's current picture, fetched from its blob URL."""
    return page.evaluate("""async () => {
        const img = [...document.querySelectorAll('.widget-vbox img.widget-image')].pop();
        const buf = await (await fetch(img.src)).arrayBuffer();
        return Array.from(new Uint8Array(buf)).join(',');
    }""")


@pytest.mark.parametrize("lesson", list(LESSONS))
def test_lesson_runs_and_its_explorer_answers(lab, lesson, tmp_path):
    url, folder = lab
    shots = Path(os.environ.get("SDLESSON_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    errors = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1366, "height": 768})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        try:
            page.goto(f"{url}/lab/tree/{lesson}.ipynb?token={TOKEN}")
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
            page.wait_for_function("() => document.querySelector('.jp-Notebook-ExecutionIndicator') !== null"
                                   " || true")
            time.sleep(3)  # the kernel starts
            page.click("li.lm-MenuBar-item:has-text('Run')")
            page.click('[data-command="runmenu:run-all"]')
            time.sleep(2)
            wait_idle(page, url)
            explorer = page.locator(".widget-vbox").last
            for _ in range(3):  # cells above re-measure while outputs render
                explorer.scroll_into_view_if_needed()
                time.sleep(0.5)
            page.wait_for_selector(".widget-vbox img.widget-image", timeout=30_000)
            before = picture_bytes(page)
            page.screenshot(path=shots / f"{lesson}-before.png")
            if LESSONS[lesson] == "slider":
                handle = explorer.locator(".widget-slider .noUi-handle").first
                handle.focus()
                for _ in range(5):
                    handle.press("ArrowRight")
            else:
                box = explorer.locator(".widget-text input").first
                box.fill("a large cat face in the center on a pink background")
                box.press("Enter")
            end = time.time() + 60
            while time.time() < end and picture_bytes(page) == before:
                time.sleep(0.5)
            wait_idle(page, url)
            page.screenshot(path=shots / f"{lesson}-after.png")
            assert picture_bytes(page) != before, f"{lesson}: the explorer's picture did not change"
            real_errors = [e for e in errors if "favicon" not in e]
            assert not real_errors, f"{lesson}: console errors {real_errors}"
        except Exception:
            print("ERROR OUTPUTS:", page.eval_on_selector_all(".jp-OutputArea-output[data-mime-type*='error'], .jp-RenderedText[data-mime-type*='stderr']", "els => els.map(e => e.textContent.slice(0, 400))"))
            print("PROMPTS:", page.eval_on_selector_all(".jp-InputPrompt", "els => els.map(e => e.textContent)"))
            page.screenshot(path=shots / f"{lesson}-failure.png")
            raise
        finally:
            for k in kernels(url):
                urllib.request.urlopen(urllib.request.Request(f"{url}/api/kernels/{k['id']}?token={TOKEN}",
                                                              method="DELETE"), timeout=10)
            browser.close()
