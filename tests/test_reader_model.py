"""The reader model (Qwen2.5-Coder-1.5B-Instruct from the [reader] extra) end to end: one short
question over a document several chunks long, through the CLI. The only reader-model test in the
suite (it reads at about 35 tokens a second on two cores); the tables are benchmarks."""

import json

import pytest

from coa.errors import ConfigError
from conftest import run_cli

pytestmark = pytest.mark.model


def reader_installed() -> bool:
    from coa.models.reader import part_file

    try:
        part_file(1)
    except ConfigError:
        return False
    return True


@pytest.mark.skipif(not reader_installed(), reason="the [reader] extra is not installed (make reader)")
def test_the_reader_answers_from_evidence_it_cites_in_the_documents_words(tmp_path):
    filler = [f"On day {d} the ferry left the harbour on time and the gulls followed it out." for d in range(1, 41)]
    filler.insert(23, "The lighthouse keeper, Ingrid Solberg, painted the tower red in the spring of 1931.")
    document = tmp_path / "log.txt"
    document.write_text(" ".join(filler), encoding="utf-8")
    result = run_cli("ask", document, "What colour did the lighthouse keeper paint the tower?", "--model", "reader",
                     "--window", "512", "--json", timeout=600)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    text = document.read_text(encoding="utf-8")
    assert "red" in answer["answer"].lower()
    assert answer["citations"], "the answer cites nothing"
    for citation in answer["citations"]:  # the document's own words, at the offsets given
        assert citation["text"] == text[citation["start"] : citation["end"]]
    assert any("red" in c["text"] for c in answer["citations"])
    assert answer["supported"] is True
    assert all(c["role"] in ("worker", "manager") for c in answer["calls"])
    assert sum(c["role"] == "worker" for c in answer["calls"]) >= 2  # the document is longer than one chunk
