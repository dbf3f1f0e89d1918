"""Take docs/serve-page.png: the page of `coa serve` after a real run with the embedded model.

Starts `coa serve --model embedded --window 2048` on a free port with a temporary store, opens
the page in headless Chromium (the system binary, driven by Playwright), pastes
examples/macbeth-act1.txt, asks a question, waits for the answer and saves a full-page
screenshot 1280 pixels wide. The embedded model is slow on a small CPU: the run can take
several minutes.

    python scripts/page_screenshot.py [--out docs/serve-page.png] [--timeout 1200]
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
DOCUMENT = REPO / "examples" / "macbeth-act1.txt"
QUESTION = "What new title does King Duncan give to Macbeth?"
FINISHED = ("succeeded", "failed", "cancelled", "error", "unknown")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, process: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"coa serve did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "serve-page.png")
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--window", type=int, default=2048)
    parser.add_argument("--strategy", default="coa")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds to wait for the answer")
    args = parser.parse_args()

    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        sys.exit("no Chromium found (Debian package chromium)")
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        sys.exit("playwright is not installed (pip install playwright; the system Chromium is used)")

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="coa-page-") as tmp:
        log = Path(tmp) / "server.log"
        command = [sys.executable, "-m", "coa", "serve", "--model", args.model, "--window", str(args.window),
                   "--port", str(port), "--store", str(Path(tmp) / "serve.sqlite")]
        with log.open("w") as out:
            server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        try:
            wait_for(f"{base}/health", server, log, timeout=300)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
                try:
                    page = browser.new_page(viewport={"width": 1280, "height": 900})
                    page.goto(f"{base}/")
                    expect(page.locator(f"#strategy option[value='{args.strategy}']")).to_have_count(1)
                    page.fill("#document", DOCUMENT.read_text(encoding="utf-8"))
                    page.select_option("#task", "qa")
                    page.select_option("#strategy", args.strategy)
                    page.fill("#question", QUESTION)
                    started = time.monotonic()
                    page.click("#run")
                    page.wait_for_function(
                        "states => states.includes(document.getElementById('status').textContent)",
                        arg=list(FINISHED), timeout=args.timeout * 1000, polling=500)
                    status = page.inner_text("#status")
                    print(f"{status} in {time.monotonic() - started:.0f} s: {page.inner_text('#answer')!r}",
                          file=sys.stderr)
                    if status != "succeeded":
                        sys.exit(f"the run ended {status}: {page.inner_text('#error')}")
                    # The document from its beginning, no focus ring, then the whole page.
                    page.eval_on_selector("#document", "el => { el.scrollTop = 0; el.setSelectionRange(0, 0); }")
                    page.evaluate("document.activeElement && document.activeElement.blur()")
                    page.evaluate("window.scrollTo(0, 0)")
                    args.out.parent.mkdir(parents=True, exist_ok=True)
                    page.screenshot(path=str(args.out), full_page=True)
                finally:
                    browser.close()
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
    print(args.out)


if __name__ == "__main__":
    main()
