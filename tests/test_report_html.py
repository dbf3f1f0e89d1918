"""The HTML report shows whatever a run holds as text: hostile dataset names, settings, documents,
model outputs and errors neither become markup nor break the trace browser."""

import json
from html.parser import HTMLParser

import pytest

from coa.eval.report import HEADER, NOTE, _browsable, html_page, markdown, plots, summary
from coa.eval.store import Store
from conftest import dump_dom, needs_chromium

# Each one would change the page's title if it ever ran as markup.
IMG = """<img src=x onerror="document.title='PWNED'">"""
SCRIPT = "</script><script>document.title='PWNED'</script>"
COMMENT = "<!--<script>"  # inside a script element this starts a state that swallows the rest of the page
SEPARATORS = "line\u2028separator\u2029paragraph"  # line breaks to JavaScript, not to JSON
HOSTILE = (IMG, SCRIPT, COMMENT, SEPARATORS)
TITLE = "coa evaluation report"


def call(role, index, text, output, **extra):
    return {"role": role, "index": index, "prompt_tokens": 40, "completion_tokens": 5, "seconds": 0.1, "output": output,
            "messages": [{"role": "user", "content": text}], "span": None, "cu": None, "path": None, "note": None, **extra}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("hostile"))
    dataset = f"jsonl:{IMG}"
    store.set_config(dataset, {"dataset": dataset, "model": f"openai:{SCRIPT}", "window": 1024, "seed": 0,
                               "options": {"haystack": IMG, "note": COMMENT}, "strategies": ["coa", f"vanilla:x={IMG}"],
                               "started": SCRIPT, "version": COMMENT, "git": SEPARATORS})
    document = " ".join(HOSTILE)
    base = {"dataset": dataset, "metric": "qa_f1", "meta": {"note": COMMENT}, "document_tokens": 900}
    chain = {"answer": SCRIPT, "calls": [
        call("worker", 0, document, IMG, cu=SCRIPT, span=(0, 450), note=COMMENT),
        call("worker", 1, document, SEPARATORS, cu=IMG, span=(450, 900)),
        call("manager", 0, SCRIPT, SCRIPT),
    ], "citations": [{"text": IMG, "start": 3, "end": 40, "worker": 0}, {"text": SCRIPT, "start": 50, "end": 90, "worker": 1}]}
    store.save({**base, "example": COMMENT, "strategy": "coa", "position": 0, "prediction": SCRIPT, "refs": [IMG, COMMENT],
                "score": 0.5, "calls": 3, "prompt_tokens": 120, "completion_tokens": 15, "seconds": 0.3, "trace": chain,
                "error": None})
    store.save({**base, "example": COMMENT, "strategy": f"vanilla:x={IMG}", "position": 0, "prediction": None,
                "refs": [IMG], "score": None, "calls": None, "prompt_tokens": None, "completion_tokens": None,
                "seconds": 0.01, "trace": None, "error": f"ValueError: {COMMENT} {SEPARATORS}"})
    store.save({**base, "example": SEPARATORS, "strategy": "coa", "position": 1, "prediction": IMG, "refs": [SCRIPT],
                "score": 1.0, "calls": 1, "prompt_tokens": 40, "completion_tokens": 5, "seconds": 0.1,
                "trace": {"answer": IMG, "calls": [call("manager", 0, document, IMG)]}, "error": None})
    return store


@pytest.fixture(scope="module")
def page(store, tmp_path_factory):
    """The page as `coa report --html` writes it, with the real plots."""
    images = plots(store, tmp_path_factory.mktemp("plots"))
    assert images  # so that the page is checked with its pictures in it
    path = tmp_path_factory.mktemp("page") / "report.html"
    path.write_text(html_page(store, images), encoding="utf-8")
    return path


class Elements(HTMLParser):
    """Every element of a page (tag and attributes) and its text outside scripts, in order."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.elements, self.texts, self.title, self.where = [], [], "", None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))
        self.where = tag

    def handle_endtag(self, tag):
        self.where = None

    def handle_data(self, data):
        if self.where == "title":
            self.title += data
        elif self.where not in ("script", "style"):
            self.texts.append(data)

    def text(self) -> str:
        return "".join(self.texts)


def embedded_json(text: str) -> str:
    """The trace data as written between the script tags."""
    return text.split('<script id="pairs" type="application/json">', 1)[1].split("</script>", 1)[0]


def assert_nothing_injected(parsed: Elements) -> None:
    assert parsed.title == TITLE
    assert [a.get("id") for t, a in parsed.elements if t == "script"] == ["pairs", None]  # the page's own two
    assert all(a["src"].startswith("data:image/png;base64,") for t, a in parsed.elements if t == "img")
    assert not [(t, a) for t, a in parsed.elements if any(name.startswith("on") for name in a)]


def test_the_page_shows_hostile_text_as_text(page):
    text = page.read_text(encoding="utf-8")
    assert "<img src=x" not in text and "<script>document" not in text and "<!--" not in text
    parsed = Elements(text)
    assert_nothing_injected(parsed)
    shown = parsed.text()
    for hostile in HOSTILE:  # in the tables and the settings lines, as the characters they are
        assert hostile in shown
    assert f"openai:{SCRIPT}" in shown and f"haystack={IMG}" in shown and f"vanilla:x={IMG}" in shown
    assert sum(t == "img" for t, _ in parsed.elements) >= 1  # the plots are still there


def test_the_trace_data_cannot_leave_its_script_and_reads_back_unchanged(page, store):
    data = embedded_json(page.read_text(encoding="utf-8"))
    for character in "<>&\u2028\u2029":
        assert character not in data
    assert json.loads(data) == [_browsable(r) for r in store.rows(traces=True)]


@needs_chromium
@pytest.mark.parametrize("choice", [0, 1])  # a pair with calls, and a failed one
def test_the_trace_browser_runs_and_shows_hostile_text_in_chromium(page, store, tmp_path, choice):
    dom = dump_dom(f"{page.as_uri()}#pair={choice}", tmp_path / "profile", 2000)
    assert 'id="trace"' in dom, "Chromium printed no page"
    parsed = Elements(dom)
    assert_nothing_injected(parsed)  # no markup from the data, and none of its scripts ran

    # The script ran to the end: one entry per stored pair, and the chosen pair's calls drawn.
    pairs = [_browsable(r) for r in store.rows(traces=True)]
    assert sum(t == "option" for t, _ in parsed.elements) == len(pairs) == 3
    drawn = [a["class"] for t, a in parsed.elements if t == "div" and a.get("class", "").startswith("call ")]
    assert drawn == [f"call {c['role']}" for c in pairs[choice]["calls"]]

    trace = Elements(dom.split('id="trace"', 1)[1]).text()
    pair = pairs[choice]
    if pair["error"]:
        assert pair["error"] in trace
    else:
        assert pair["prediction"] in trace and " | ".join(pair["references"]) in trace
        for c in pair["calls"]:
            assert c["input"] in trace and c["output"] in trace and (c["cu"] or "") in trace and (c["note"] or "") in trace
        for c in pair["citations"]:  # the evidence the answer was given, with its place in the document
            assert f"chars {c['start']}–{c['end']} (worker {c['worker'] + 1}): {c['text']}" in trace
        assert pair["citations"] or choice == 1


def test_tables_show_bootstrap_intervals_and_paired_differences(tmp_path):
    """Baseline a and b on eight examples, b better by one point on two of them; c failed on one."""
    store = Store(tmp_path)
    store.set_config("d", {"model": "scripted", "window": 1024, "seed": 0, "strategies": ["a", "b", "c"]})
    a = [0, 0, 1, 1, 0, 1, 0, 1]
    b = [1, 0, 1, 1, 1, 1, 0, 1]
    for strategy, scores in (("a", a), ("b", b), ("c", a)):
        for i, value in enumerate(scores):
            failed = strategy == "c" and i == 0
            store.save({"dataset": "d", "example": f"e{i}", "strategy": strategy, "position": i, "prediction": "x",
                        "refs": ["x"], "metric": "qa_f1", "score": None if failed else float(value), "document_tokens": 9,
                        "calls": 1, "prompt_tokens": 9, "completion_tokens": 1, "seconds": 0.1, "meta": {}, "trace": None,
                        "error": "ValueError: boom" if failed else None})
    first, second, third = summary(store)
    assert (first["score"], second["score"]) == (50.0, 75.0)
    assert first["score_lo"] < 50 < first["score_hi"] and second["score_lo"] < 75 < second["score_hi"]
    assert first["baseline"] == second["baseline"] == "a" and first["delta"] is None
    assert second["delta"] == 25.0 and second["delta_n"] == 8
    assert second["delta_lo"] == 0.0 and 25 < second["delta_hi"] <= 100  # b is never worse: no resample is below 0
    assert (third["delta"], third["delta_lo"], third["delta_hi"], third["delta_n"]) == (0.0, 0.0, 0.0, 7)  # paired on e1..e7
    text = markdown(store)
    assert f"| {' | '.join(HEADER)} |" in text and "| 95% CI | Δ (95% CI) |" in text and NOTE in text
    assert f"| b | 75.0 | {second['score_lo']:.1f}–{second['score_hi']:.1f} | +25.0 (0.0–{second['delta_hi']:.1f}) | 8 |" in text
    assert "| a | 50.0 |" in text and "| – | 8 |" in text
    page = Elements(html_page(store, []))
    assert "95% CI" in page.text() and "Δ from a" in page.text() and NOTE in page.text()
