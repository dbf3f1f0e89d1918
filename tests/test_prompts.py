"""Prompt files: shared blocks through the Jinja loader, overrides, and the exact text.

`fixtures/prompts/renders.json` holds every packaged prompt rendered by `render_all()`
with the prompt files as they were before the shared blocks were factored out; the
prompts must still come out byte for byte the same. The evidence CU's prompts
(coa/evidence-worker.yaml, coa/evidence-manager.yaml) were added to it as first written.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest

from coa.errors import ConfigError
from coa.prompts import load_prompt, task_format
from conftest import REPO, run_cli

RENDERS = REPO / "tests" / "fixtures" / "prompts" / "renders.json"
KINDS = ("qa", "mcq", "summarize", "code")


def values(kind: str, first: bool) -> dict:
    """What the strategies pass, for one task kind: `first` is the first call of a chain
    (no previous summary) and, for summaries, a task without a focus."""
    query = {
        "qa": "Who is the Thane of Cawdor?",
        "mcq": "Who kills Duncan?",
        "summarize": "" if first else "the witches' prophecy",
        "code": "def add(a, b):\n    return a + b\n\ndef sub(a, b):",
    }[kind]
    return {
        "kind": kind,
        "query": query,
        "choices": ["A. Macbeth", "B. Banquo", "C. Macduff"] if kind == "mcq" else [],
        "requirement": f"The requirement for {kind}.",
        "chunk": "Enter three Witches. </document-x> Thunder and lightning.",
        "document": "When shall we three meet again?\nIn thunder, lightning, or in rain?",
        "index": 1 if first else 2,
        "total": 3,
        "previous": "" if first else "Macbeth is made Thane of Cawdor.",
        "evidence": "" if first else "Macbeth is made Thane of Cawdor.\nEnter three Witches.",
        "summary": "Macbeth meets the witches, who hail him as king hereafter.",
        "notes": ["Duncan names Malcolm his heir.", "NONE"],
        "answers": ["Macbeth", "Macbeth and his wife"],
        "items": [
            {"information": "Macbeth kills Duncan.", "rationale": "Stated in Act II.", "answer": "Macbeth", "confidence": 5},
            {"information": "none", "rationale": "none", "answer": "none", "confidence": 0},
        ],
        "memory": "" if first else "Macbeth is made Thane of Cawdor.",
        "words": 45,
        "lookups": 2,
        "gists": ["Witches meet on a heath.", "Duncan hears of the battle."],
        "pages": [{"text": "Witches meet on a heath.", "full": False},
                  {"text": "Enter Duncan, Malcolm, Donalbain, Lennox.", "full": True}],
    }


def longagent_values(first: bool) -> dict:
    """What LongAgent's leader, members and their conflict round are given besides `values`."""
    rounds = [] if first else [
        {"number": 1, "question": "Who is made Thane of Cawdor?", "silent": 1, "omitted": 0,
         "groups": [{"members": [1, 3], "answer": "Macbeth"}, {"members": [2], "answer": "Banquo"}]},
        {"number": 2, "question": "Who kills Duncan?", "silent": 0, "omitted": 2,
         "groups": [{"members": [2], "answer": "Macbeth </answer-x>"}]},
    ]
    return {"members": 1 if first else 3, "rounds": rounds, "left_out": 0 if first else 1, "final": not first,
            "previous": "" if first else "I think it is Macbeth.", "question": "Who is made Thane of Cawdor?",
            "texts": ["Enter three Witches.", "Hail, Thane of Cawdor! </document-x>"]}


def longrag_values(first: bool) -> dict:
    """What LongRAG's extractor, filter and generator are given besides `values`."""
    return {"parts": ["Enter three Witches.", "Hail, Thane of Cawdor! </document-x>"],
            "passage": "Hail, Thane of Cawdor! </document-x>",
            "information": "" if first else "Macbeth is made Thane of Cawdor.",
            "passages": [] if first else ["Enter three Witches.", "Hail, Thane of Cawdor! </document-x>"]}


def rlm_values(first: bool) -> dict:
    """What rlm's root and its sub-calls are given besides `values`."""
    turns = [] if first else [
        {"number": 2, "call": "search /Thane of \\w+/", "note": "1 hit (regular expression):",
         "result": "120-210: Hail, Thane of Cawdor! </result-x>"},
        {"number": 3, "call": "ask 0-31 :: Who speaks?", "note": "The helper read 0-31 and answered:", "result": "Witches"}]
    return {"turns": turns, "left_out": 0 if first else 1, "length": 5000, "read_chars": 2000, "subcalls": first, "code": first,
            "max_spans": 8, "parts": 3, "subcalls_left": 16, "error": "" if first else "offsets out of range",
            "final": not first, "question": "Who is made Thane of Cawdor?",
            "spans": [{"start": 0, "end": 31, "text": "When shall we three meet again?"},
                      {"start": 120, "end": 160, "text": "Hail, Thane of Cawdor! </document-x>"}]}


def graphreader_values(first: bool) -> dict:
    """What GraphReader's construction, exploration and answer calls are given besides `values`."""
    return {"plan": "" if first else "Find who is Thane of Cawdor. </plan-x>",
            "notebook": "" if first else "Macbeth is made Thane of Cawdor. </notebook-x>",
            "node": "Thane of Cawdor", "most": 2, "left_out": 0 if first else 3, "more": first,
            "fact_ids": [1, 4], "facts": "[1] Macbeth is made Thane of Cawdor.\n[4] The Thane of Cawdor is executed. </facts-x>",
            "elements": "1. Macbeth\n2. Thane of Cawdor </elements-x>", "number": 1, "count": 2}


PEER_VALUES = {"longagent": longagent_values, "longrag": longrag_values, "rlm": rlm_values,
               "graphreader": graphreader_values}


def packaged_prompts() -> list[str]:
    root = resources.files("coa").joinpath("prompts")
    return sorted(f"{d.name}/{f.name}" for d in root.iterdir() if d.is_dir() for f in d.iterdir()
                  if f.name.endswith(".yaml"))


def render_all() -> dict[str, list[dict[str, str]]]:
    """Every packaged prompt for every task kind it serves, first call and later call."""
    renders = {}
    for name in packaged_prompts():
        strategy, role = name.removesuffix(".yaml").split("/")
        kinds = [k for k in KINDS if role.endswith(f"-{k}")] or KINDS  # coa's role-kind files serve one kind
        for kind in kinds:
            for first in (True, False):
                renders[f"{name} {kind} {'first' if first else 'later'}"] = load_prompt(strategy, role).render(
                    **values(kind, first) | (PEER_VALUES[strategy](first) if strategy in PEER_VALUES else {}))
    return renders


def test_every_prompt_renders_as_before():
    expected = json.loads(RENDERS.read_text(encoding="utf-8"))
    actual = render_all()
    assert actual.keys() == expected.keys()
    for key in expected:
        assert actual[key] == expected[key], key


def write(path: Path, text: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode() if isinstance(text, str) else text)


def test_shared_blocks_are_imported_not_copied():
    """The choices and task blocks live in one file; no prompt file words them itself."""
    for name in packaged_prompts():
        text = resources.files("coa").joinpath("prompts", *name.split("/")).read_text(encoding="utf-8")
        assert "Options:" not in text and "Task: " not in text, name


def test_a_prompts_directory_overrides_a_shared_block(tmp_path):
    blocks = resources.files("coa").joinpath("prompts", "common", "blocks.j2").read_text(encoding="utf-8")
    write(tmp_path / "common" / "blocks.j2", blocks.replace("Options:", "Pick one of:"))
    for strategy, role in [("hierarchical", "worker"), ("mapreduce", "map"), ("common", "answer"), ("coa", "worker-mcq")]:
        user = load_prompt(strategy, role, directory=tmp_path).render(**values("mcq", False))[1]["content"]
        assert "Pick one of:\nA. Macbeth\nB. Banquo\nC. Macduff\n" in user and "Options:" not in user, (strategy, role)
    # Without the directory, the package's block is used as before.
    assert "Options:\nA. Macbeth" in load_prompt("hierarchical", "worker").render(**values("mcq", False))[1]["content"]


def test_a_prompts_directory_overrides_a_whole_prompt_that_uses_the_packaged_blocks(tmp_path):
    write(tmp_path / "hierarchical" / "worker.yaml",
          'system: Be brief.\nuser: |\n  {% from "common/blocks.j2" import options %}\n  {{ query }}\n  {{ options(choices) }}\n')
    messages = load_prompt("hierarchical", "worker", directory=tmp_path).render(**values("mcq", False))
    assert messages == [{"role": "system", "content": "Be brief."},
                        {"role": "user", "content": "Who kills Duncan?\nOptions:\nA. Macbeth\nB. Banquo\nC. Macduff"}]
    # The other prompts still come from the package.
    assert load_prompt("hierarchical", "merge", directory=tmp_path).render(**values("qa", False)) == \
        load_prompt("hierarchical", "merge").render(**values("qa", False))


def test_a_missing_variable_is_still_an_error():
    with pytest.raises(ConfigError, match="prompt hierarchical/worker.yaml: 'choices' is undefined"):
        load_prompt("hierarchical", "worker").render(**{k: v for k, v in values("qa", True).items() if k != "choices"})


@pytest.mark.parametrize("block, message", [
    (None, "prompt coa/worker-qa.yaml: no prompt file common/mine.j2"),
    ("{% macro line( %}", r"prompt coa/worker-qa.yaml: common/mine.j2 is malformed: .* \(line 1\)"),
    ("caf\xe9".encode("latin-1"), r"common/mine.j2 is not UTF-8 text"),
])
def test_a_broken_included_block_is_one_config_error(tmp_path, block, message):
    write(tmp_path / "coa" / "worker-qa.yaml", 'user: \'{% include "common/mine.j2" %} {{ chunk }}\'\n')
    if block is not None:
        write(tmp_path / "common" / "mine.j2", block)
    prompt = load_prompt("coa", "worker", "qa", directory=tmp_path)  # the include is only read when rendering
    with pytest.raises(ConfigError, match=message) as raised:
        prompt.render(**values("qa", False))
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(("opts", "prompt"), [
    ((), "coa/evidence-worker.yaml"),  # a question: the evidence CU's worker
    (("--opt", "cu=paper"), "coa/worker-qa.yaml"),
])
def test_a_missing_include_stops_the_command_with_one_line(tmp_path, opts, prompt):
    write(tmp_path / "prompts" / prompt, 'user: \'{% include "common/mine.j2" %} {{ chunk }}\'\n')
    write(tmp_path / "story.txt", " ".join(f"Sentence {i} tells of event {i}." for i in range(40)))
    done = run_cli("ask", tmp_path / "story.txt", "What happens?", "--model", "scripted", "--window", "400",
                   "--max-cu-tokens", "40", "--prompts-dir", tmp_path / "prompts", *opts)
    assert done.returncode == 2
    assert done.stderr.decode() == f"error: prompt {prompt}: no prompt file common/mine.j2\n"


def test_tasks_yaml_still_comes_through_the_same_loader(tmp_path):
    assert task_format("qa").max_tokens == 64
    tasks = resources.files("coa").joinpath("prompts", "tasks.yaml").read_text(encoding="utf-8")
    write(tmp_path / "tasks.yaml", tasks.replace("max_tokens: 64", "max_tokens: 32", 1))
    assert task_format("qa", tmp_path).max_tokens == 32
