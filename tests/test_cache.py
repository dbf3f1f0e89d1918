"""The response cache: a call made before is answered from the file, with its original counts,
zero seconds and `from_cache`; anything that changes the completion changes the key."""

from __future__ import annotations

import json
import sqlite3

import pytest

from coa import Config, ScriptedModel, Task, get_strategy
from coa.errors import InputError
from coa.models.cache import CachedModel, ResponseCache, cached
from conftest import run_cli

MESSAGES = [{"role": "user", "content": "Who is the Thane of Cawdor?"}]
DOCUMENT = " ".join(f"Sentence {i} tells of the thane number {i}." for i in range(120))


class Counting(ScriptedModel):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.made = 0

    def complete(self, messages, **kwargs):
        self.made += 1
        return super().complete(messages, **kwargs)


def test_a_repeated_call_is_answered_from_the_file_with_its_counts(tmp_path):
    inner = Counting(outputs=["Macbeth."])
    model = cached(inner, tmp_path / "cache.sqlite")
    first = model.complete(MESSAGES, max_tokens=20)
    again = cached(Counting(), tmp_path / "cache.sqlite").complete(MESSAGES, max_tokens=20)  # a new process's view
    assert inner.made == 1 and first.text == again.text == "Macbeth." and not first.from_cache
    assert again.from_cache and again.seconds == 0.0
    assert (again.prompt_tokens, again.completion_tokens, again.finish_reason) == \
        (first.prompt_tokens, first.completion_tokens, first.finish_reason)


@pytest.mark.parametrize("change", [
    {"messages": [{"role": "user", "content": "Who is the Thane of Glamis?"}]},
    {"max_tokens": 21},
    {"temperature": 0.5, "seed": 1},
])
def test_anything_that_changes_the_completion_changes_the_key(tmp_path, change):
    inner = Counting()
    model = cached(inner, tmp_path / "cache.sqlite")
    model.complete(MESSAGES, max_tokens=20)
    call = {"messages": MESSAGES, "max_tokens": 20, **change}
    assert not model.complete(call.pop("messages"), **call).from_cache and inner.made == 2


def test_sampling_is_cached_only_with_a_seed_and_greedy_calls_ignore_the_seed(tmp_path):
    inner = Counting()
    model = cached(inner, tmp_path / "cache.sqlite")
    for _ in range(2):
        model.complete(MESSAGES, max_tokens=20, temperature=0.7)
    assert inner.made == 2  # no seed: each call is meant to differ
    model.complete(MESSAGES, max_tokens=20, temperature=0.7, seed=3)
    assert model.complete(MESSAGES, max_tokens=20, temperature=0.7, seed=3).from_cache and inner.made == 3
    model.complete(MESSAGES, max_tokens=20, seed=1)
    assert model.complete(MESSAGES, max_tokens=20, seed=2).from_cache  # greedy: the seed changes nothing


def test_clients_of_a_server_never_share_answers_and_backends_share_one_file(tmp_path):
    path = tmp_path / "cache.sqlite"
    model = cached(Counting(), path)
    model.scoped("client-a").complete(MESSAGES, max_tokens=20)
    assert not model.scoped("client-b").complete(MESSAGES, max_tokens=20).from_cache
    assert model.scoped("client-a").complete(MESSAGES, max_tokens=20).from_cache
    other = cached(Counting(name="scripted-other"), path)
    assert not other.complete(MESSAGES, max_tokens=20).from_cache  # another backend in the same file
    backends = {row[0] for row in sqlite3.connect(path).execute("SELECT DISTINCT backend FROM responses")}
    assert backends == {"scripted", "scripted-other"}


def test_a_model_files_digest_is_remembered_by_size_and_modification_time(tmp_path):
    import os

    cache = ResponseCache(tmp_path / "cache.sqlite")
    weights = tmp_path / "model.gguf"
    weights.write_bytes(b"GGUF" + bytes(1000))
    first = cache.file_digest(weights)
    cache.db.execute("UPDATE digests SET sha256 = 'remembered'")  # what a second look must return unread
    assert cache.file_digest(weights) == "remembered"
    weights.write_bytes(b"GGUF" + bytes(999) + b"\x01")
    os.utime(weights, ns=(1, 1))
    changed = cache.file_digest(weights)
    assert changed not in ("remembered", first) and len(changed) == 64


def test_a_servers_identity_holds_no_credentials(tmp_path):
    from coa.models.openai import OpenAIModel

    model = OpenAIModel("qwen", base_url="http://user:secret@127.0.0.1:9/v1?key=hidden", api_key="sk-key")
    wrapped = CachedModel(model, ResponseCache(tmp_path / "cache.sqlite"))
    assert wrapped.backend == "openai:http://127.0.0.1:9/v1:qwen"


def test_a_warm_cache_reruns_an_eval_without_a_model_call_and_with_identical_rows(tmp_path, books):
    from coa.eval.store import Store

    cache = tmp_path / "cache.sqlite"
    common = ["--dataset", "niah", "--strategies", "coa,rag", "--model", "scripted", "--window", "600", "--max-cu-tokens",
              "40", "--limit", "2", "--opt", "lengths=400", "--opt", "depths=0,1", "--opt", "haystack=books", "--data-dir", books.parent, "--cache", cache]
    for out in ("cold", "warm"):
        result = run_cli("eval", *common, "--out", tmp_path / out)
        assert result.returncode == 0, result.stderr
    cold, warm = (Store(tmp_path / out).rows(traces=True) for out in ("cold", "warm"))
    assert len(cold) == len(warm) == 4
    for a, b in zip(sorted(cold, key=lambda r: (r["example"], r["strategy"])),
                    sorted(warm, key=lambda r: (r["example"], r["strategy"])), strict=True):
        assert a["prediction"] == b["prediction"] and a["score"] == b["score"]
        assert (a["calls"], a["prompt_tokens"], a["completion_tokens"]) == (b["calls"], b["prompt_tokens"], b["completion_tokens"])
        assert not any(c["from_cache"] for c in a["trace"]["calls"])
        assert all(c["from_cache"] and c["seconds"] == 0 for c in b["trace"]["calls"])  # no call reached the model


def test_a_strategy_run_through_the_cache_records_which_calls_it_answered(tmp_path):
    model = cached(Counting(context_window=600), tmp_path / "cache.sqlite")
    coa = get_strategy("coa")
    task = Task(DOCUMENT, "Who is thane number 7?")
    first = coa(model, Config(window=600, max_cu_tokens=40)).run(task)
    second = coa(model, Config(window=600, max_cu_tokens=40)).run(task)
    assert second.answer == first.answer and len(second.calls) == len(first.calls) > 2
    assert [c.from_cache for c in second.calls] == [True] * len(second.calls)
    assert second.to_dict()["calls"][0]["from_cache"] is True


@pytest.mark.parametrize("damage", ["version", "garbage", "foreign"])
def test_a_file_of_an_unknown_version_or_damaged_is_refused_in_one_line(tmp_path, damage):
    path = tmp_path / "cache.sqlite"
    if damage == "garbage":
        path.write_bytes(b"not a database at all " * 200)
    else:
        db = sqlite3.connect(path)
        if damage == "version":
            ResponseCache(path).close()
            db.execute("PRAGMA user_version = 99")
        else:
            db.execute("CREATE TABLE notes (text TEXT)")
            db.execute("PRAGMA user_version = 1")
        db.commit()
        db.close()
    with pytest.raises(InputError):
        ResponseCache(path)
    result = run_cli("ask", "-", "Who?", "--model", "scripted", "--cache", path, stdin=b"Some text to read.")
    assert result.returncode == 2 and result.stderr.decode().count("\n") == 1, result.stderr
    assert "--cache" in result.stderr.decode() and "Traceback" not in result.stderr.decode()


def test_a_damaged_stored_response_is_refused_not_answered(tmp_path):
    path = tmp_path / "cache.sqlite"
    model = cached(ScriptedModel(), path)
    model.complete(MESSAGES, max_tokens=20)
    sqlite3.connect(path, isolation_level=None).execute("UPDATE responses SET completion = ?", (json.dumps({"text": 5}),))
    with pytest.raises(InputError, match="damaged"):
        cached(ScriptedModel(), path).complete(MESSAGES, max_tokens=20)
