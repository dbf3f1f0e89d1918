"""The page `coa serve` serves at `/`, driven in headless Chromium by Playwright against the real
server (`--model scripted`): a run draws its calls as cards and shows the answer, hostile text
stays text, the page talks to nobody but its server, and an API key is asked for and sent."""

import json
import sys
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from conftest import CHROMIUM, free_port, needs_chromium, server_process

pytestmark = [pytest.mark.server, needs_chromium]

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
expect = sync_api.expect

RUN_TIMEOUT_MS = 120_000
IMG = "<img src=x onerror=alert(1)>"
SCRIPT = "<script>alert(2)</script>"
HOSTILE = f"{IMG} {SCRIPT} </textarea><b>bold</b> <!--"


def story_text(sentences: int = 250) -> str:
    """About 2,500 words: several chunks at window 512."""
    return " ".join(f"Sentence number {i} tells of event {i} in the story." for i in range(sentences))


@contextmanager
def coa_server(tmp_path: Path, *extra: str):
    """`coa serve --model scripted --window 512` on a free port; yields its base URL."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "coa", "serve", "--model", "scripted", "--window", "512", "--port", str(port),
               "--store", str(tmp_path / "serve.sqlite"), *extra]
    log_dir = tmp_path / "server"
    log_dir.mkdir()
    with server_process(command, f"{base}/health", log_dir, name="coa serve", timeout=60):
        yield base


@contextmanager
def browser_page(base: str):
    """A fresh headless Chromium page (the system binary) that records its requests, dialogs and
    Content-Security-Policy complaints."""
    with sync_api.sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        except sync_api.Error as e:  # a Chromium Playwright cannot drive
            pytest.skip(f"Playwright cannot start {CHROMIUM}: {e}")
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
            page = context.new_page()
            page.requests, page.dialogs, page.csp = [], [], []
            page.on("request", lambda request: page.requests.append(request.url))
            page.on("dialog", lambda dialog: (page.dialogs.append(dialog.message), dialog.dismiss()))
            page.on("console", lambda m: page.csp.append(m.text) if "Content Security Policy" in m.text else None)
            page.goto(f"{base}/")
            yield page
        finally:
            browser.close()


def wait_for_strategies(page) -> None:
    expect(page.locator("#strategy option[value='coa']")).to_have_count(1)


def test_a_run_shows_its_calls_answer_and_trace(tmp_path):
    document = tmp_path / "story.txt"
    document.write_text(story_text())
    with coa_server(tmp_path) as base, browser_page(base) as page:
        assert page.title() == "Chain-of-Agents"
        wait_for_strategies(page)
        assert page.get_attribute("#strategy option[value='coa']", "title")  # the description, as a tooltip

        page.set_input_files("#file", str(document))
        expect(page.locator("#document")).to_have_value(document.read_text())
        expect(page.locator("#doc-info")).to_contain_text("story.txt")
        page.fill("#question", "What happens in event 7?")
        page.select_option("#strategy", "coa")
        page.click("#run")

        expect(page.locator("#answer")).not_to_be_empty(timeout=RUN_TIMEOUT_MS)
        expect(page.locator("#status")).to_have_text("succeeded")
        answer = page.inner_text("#answer")
        assert answer.strip()
        assert page.inner_text("#error") == ""

        workers, managers = page.locator(".card.worker"), page.locator(".card.manager")
        assert workers.count() >= 2
        assert managers.count() >= 1
        assert page.locator(".card.running").count() == 0
        assert page.locator(".card.done").count() == page.locator(".card").count()
        first = workers.first.inner_text()
        assert f"/{workers.count()}" in first.lower().replace(" ", "")  # "worker 1/N"
        assert "Sentence number 7 tells of event 7" in first  # what the worker passed on: the evidence CU
        assert "span" in first and "in" in first and "out" in first

        download_button = page.locator("#download")
        expect(download_button).to_be_enabled()
        with page.expect_download() as info:
            download_button.click()
        trace = json.loads(Path(info.value.path()).read_text())
        assert trace["status"] == "succeeded"
        assert trace["answer"].strip() == answer.strip()
        assert trace["result"]
        assert info.value.suggested_filename.endswith(".json")

        shot = tmp_path / "serve-page.png"
        page.screenshot(path=shot, full_page=True)
        assert shot.exists() and shot.stat().st_size > 0
        assert page.csp == []


# A stream as a hostile model or proxy could make it: markup in every field, CRLF line ends,
# comments, an event split over two data lines, an unknown event type.
def hostile_events() -> str:
    def event(number, kind, data, newline="\n"):
        return f"id: {number}{newline}event: {kind}{newline}data: {json.dumps(data)}{newline}{newline}"

    started = {"type": "started", "role": "worker", "index": 0, "total": 2}
    finished = {**started, "type": "finished", "span": [0, 400], "prompt_tokens": 450, "completion_tokens": 12,
                "cached_tokens": 0, "seconds": 0.5, "output": IMG, "cu": SCRIPT, "note": HOSTILE}
    odd = {"type": "finished", "role": IMG, "index": 0, "total": 1, "span": None, "prompt_tokens": 1,
           "completion_tokens": 1, "cached_tokens": 0, "seconds": 0.1, "output": HOSTILE, "cu": None, "note": None}
    manager = {"type": "finished", "role": "manager", "index": 0, "total": 1, "span": None, "prompt_tokens": 100,
               "completion_tokens": 5, "cached_tokens": 0, "seconds": 0.2, "output": IMG, "cu": None, "note": None}
    done = {"id": "run_hostile", "object": "coa.run", "status": "succeeded", "answer": f"{IMG}\n{SCRIPT}", "error": None,
            "usage": {"prompt_tokens": 551, "completion_tokens": 18, "total_tokens": 569, "cached_tokens": 0,
                      "calls": 3, "seconds": 0.8}}
    split = json.dumps({**manager, "type": "started"})
    cut = split.index(', "role"') + 1  # between two members: the joined data lines are still JSON
    return (": ping\n\n" + event(1, "status", {"status": "running"}, "\r\n") + event(2, "call", started)
            + event(3, "call", finished) + ": ping\n\n" + event(4, "call", odd) + event(5, "surprise", {"x": IMG})
            + f"id: 6\nevent: call\ndata: {split[:cut]}\ndata: {split[cut:]}\n\n" + event(7, "call", manager)
            + event(8, "done", done))


def test_hostile_text_stays_text_and_the_page_talks_only_to_its_server(tmp_path):
    document = tmp_path / f"{IMG}.txt"  # a file name is shown too
    document.write_text(f"{HOSTILE}\n{story_text(120)}\n{HOSTILE}")
    with coa_server(tmp_path) as base, browser_page(base) as page:
        wait_for_strategies(page)
        page.set_input_files("#file", str(document))
        expect(page.locator("#doc-info")).to_contain_text(IMG)
        page.fill("#question", f"Who wrote {IMG} and {SCRIPT}?")
        page.click("#run")
        expect(page.locator("#answer")).not_to_be_empty(timeout=RUN_TIMEOUT_MS)
        expect(page.locator("#status")).to_have_text("succeeded")
        assert page.locator(".card.worker").count() >= 2

        # Hostile model output, through the page's own stream parser.
        page.route("**/v1/runs/*/events", lambda route: route.fulfill(
            status=200, headers={"Content-Type": "text/event-stream"}, body=hostile_events()))
        page.click("#run")
        expect(page.locator("#answer")).to_have_text(f"{IMG}\n{SCRIPT}", timeout=RUN_TIMEOUT_MS)
        expect(page.locator("#status")).to_have_text("succeeded")
        assert page.locator(".card.worker").count() == 1
        assert page.locator(".card.manager").count() == 1
        assert page.locator(".card").count() == 3  # the worker, the oddly named role, the manager
        assert page.locator(".card.running").count() == 0
        worker = page.locator(".card.worker").inner_text()
        assert SCRIPT in worker and HOSTILE.split(" <!--")[0] in worker  # the CU passed on, and the note
        assert IMG in page.locator(".card").nth(1).inner_text()
        page.unroute("**/v1/runs/*/events")

        # A hostile strategy name comes back in the server's error message.
        page.evaluate("""name => { const o = document.createElement('option'); o.value = name; o.textContent = 'x';
                                   document.getElementById('strategy').appendChild(o); }""", IMG)
        page.select_option("#strategy", IMG)
        page.click("#run")
        expect(page.locator("#error")).not_to_be_empty()
        expect(page.locator("#status")).to_have_text("error")

        assert page.locator("img").count() == 0
        assert page.locator("b").count() == 0
        assert page.locator("script").count() == 1  # app.js
        assert page.title() == "Chain-of-Agents"
        assert page.dialogs == []
        assert page.requests, "no request was recorded"
        strangers = [url for url in page.requests if not url.startswith(f"{base}/")]
        assert strangers == []
        assert page.csp == []


def test_an_api_key_is_asked_for_and_sent(tmp_path):
    with coa_server(tmp_path, "--api-key", "secret") as base:
        refused = httpx.get(f"{base}/v1/models")
        assert refused.status_code == 401
        message = refused.json()["error"]["message"]
        with browser_page(base) as page:
            expect(page.locator("#error")).to_have_text(message)  # the strategies could not be listed

            page.fill("#document", story_text())
            page.fill("#question", "What happens in event 7?")
            page.click("#run")
            expect(page.locator("#status")).to_have_text("error")
            expect(page.locator("#error")).to_have_text(message)  # POST /v1/runs was refused
            assert page.locator(".card").count() == 0

            page.fill("#api-key", "secret")
            wait_for_strategies(page)
            expect(page.locator("#error")).to_have_text("")
            assert page.evaluate("sessionStorage.getItem('coa.apiKey')") == "secret"
            page.select_option("#strategy", "coa")
            page.click("#run")
            expect(page.locator("#answer")).not_to_be_empty(timeout=RUN_TIMEOUT_MS)
            expect(page.locator("#status")).to_have_text("succeeded")
            assert page.locator(".card.worker").count() >= 2
            assert page.locator(".card.manager").count() >= 1

            with page.expect_download() as info:
                page.click("#download")
            assert json.loads(Path(info.value.path()).read_text())["status"] == "succeeded"

            page.reload()  # the key is kept for the tab
            expect(page.locator("#api-key")).to_have_value("secret")
            wait_for_strategies(page)
            assert page.csp == []


def test_citations_are_listed_under_the_answer_and_select_their_span(tmp_path):
    # A character outside the BMP first: the server counts code points, the text box UTF-16 units.
    text = "\U0001d11e Overture. " + story_text(60)
    with coa_server(tmp_path) as base, browser_page(base) as page:
        wait_for_strategies(page)
        page.fill("#document", text)
        page.fill("#question", "What happens in event 7?")
        page.select_option("#strategy", "coa")
        page.click("#run")
        expect(page.locator("#status")).to_have_text("succeeded", timeout=RUN_TIMEOUT_MS)
        items = page.locator("#citations li")
        expect(items.first).to_be_visible()
        cited = items.first.locator(".citation-text").inner_text()
        assert "event 7" in cited  # the sentence that answers, in the document's words
        items.first.locator("button").click()
        selected = page.evaluate("() => { const b = document.getElementById('document');"
                                 " return b.value.slice(b.selectionStart, b.selectionEnd); }")
        assert selected == cited
        assert page.inner_text("#support")  # says whether the answer is supported
        page.fill("#document", text + " More.")  # the box no longer holds what was cited
        items.first.locator("button").click()
        expect(page.locator("#error")).to_contain_text("changed since the run")
