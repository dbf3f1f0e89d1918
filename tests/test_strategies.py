"""Every strategy's call pattern and combination rule, with the scripted model."""

import re
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coa import Config, ConfigError, Kind, ScriptedModel, Task
from coa.fence import fence
from coa.models.base import MESSAGE_OVERHEAD, REPLY_OVERHEAD
from coa.strategies import STRATEGIES, get_strategy
from coa.strategies.hierarchical import read_worker
from coa.strategies.mapreduce import read_finding
from coa.strategies.options import parse_options, parse_pairs
from conftest import JsonHandler, serve

NAMES = ["coa", "coa-multipath", "vanilla", "rag", "merge", "hierarchical", "mapreduce", "recite"]


def document(sentences: int) -> str:
    return " ".join(f"Sentence number {i} tells of event {i} in the story." for i in range(sentences))


def user(messages):
    return messages[-1]["content"]


WORDS = re.compile(r"\w+|[^\w\s]")  # the scripted model's tokens: words and punctuation marks


def prompt_tokens(messages):
    """A prompt's tokens as the scripted model counts them, counted here: each message and the reply
    add their template allowance."""
    return REPLY_OVERHEAD + sum(MESSAGE_OVERHEAD + len(WORDS.findall(m["content"])) for m in messages)


def numbers_in(text):
    """Sentence numbers quoted in a prompt, in order."""
    return [int(n) for n in re.findall(r"Sentence number (\d+)", text)]


def run(name, task, *, window=600, cu_tokens=40, reply=None, outputs=(), concurrency=1, seed=None, model=None, **options):
    model = model or ScriptedModel(outputs, reply=reply, context_window=window)
    config = Config(window=window, max_cu_tokens=cu_tokens, concurrency=concurrency, seed=seed)
    result = get_strategy(name)(model, config, options=options).run(task)
    return model, result


def test_the_registry_lists_every_strategy_by_name():
    assert [name for name in STRATEGIES if name in NAMES] == sorted(NAMES)
    assert all(entry.description == entry.obj.description for entry in STRATEGIES.items() if entry.name in NAMES)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(NAMES),
    sentences=st.integers(min_value=1, max_value=120),
    window=st.integers(min_value=500, max_value=1500),
    words=st.integers(min_value=0, max_value=300),
    kind=st.sampled_from([Kind.QA, Kind.SUMMARIZE]),
)
def test_no_strategy_sends_a_prompt_beyond_the_window(name, sentences, window, words, kind):
    # Session.call refuses (ContextOverflowError) a prompt that would not fit with its generation
    # limit, so a strategy that budgets wrong fails this run.
    model = ScriptedModel(reply=lambda m: "word " * words, context_window=window)
    task = Task(document(sentences), "What happened?" if kind is Kind.QA else None, kind)
    result = get_strategy(name)(model, Config(window=window, max_cu_tokens=50)).run(task)
    assert len(model.prompts) == len(result.calls) == result.usage.calls  # every call sent is recorded, once
    # The totals, counted here from what the model was sent and the replies' known length (`words`
    # tokens, cut at each call's limit).
    assert result.usage.prompt_tokens == sum(prompt_tokens(m) for m in model.prompts)
    assert result.usage.completion_tokens == sum(min(words, limit) for limit in model.max_tokens)


# -- coa ----------------------------------------------------------------------------------------
def test_coa_right_to_left_reads_the_last_chunk_first():
    model, result = run("coa", Task(document(60), "Who?"), order="rtl", grounding=False)
    read = [numbers_in(user(m)) for m in model.prompts[:-1]]
    assert read[0][-1] == 59 and read[-1][0] == 0
    assert sorted(n for chunk in read for n in chunk) == list(range(60))


class SeedRecorder(ScriptedModel):
    """Records the seed each call was made with."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seeds = []

    def complete(self, messages, **kwargs):
        self.seeds.append(kwargs["seed"])
        return super().complete(messages, **kwargs)


def test_coa_permutation_is_seeded_and_reads_every_chunk_once():
    def order(seed):
        model = SeedRecorder(context_window=600)
        run("coa", Task(document(60), "Who?"), order="perm", chunk_tokens=60, seed=seed, model=model)
        workers = model.prompts[:-1]
        assert sorted(n for m in workers for n in numbers_in(user(m))) == list(range(60))  # every chunk, once
        assert model.seeds == [seed] * len(model.prompts)  # the seed reaches every call
        return [numbers_in(user(m))[0] for m in workers]

    first = order(1)
    assert len(first) >= 4 and first != sorted(first)
    assert order(1) == first  # the same seed, the same order
    others = [order(seed) for seed in (2, 3)]
    assert all(sorted(o) == sorted(first) for o in others)  # another seed: the same chunks...
    assert any(o != first for o in others)  # ...in another order


def test_coa_without_manager_answers_with_the_last_cu():
    model, result = run("coa", Task(document(60), "Who?"), cu="paper", manager=False, grounding=False,
                        outputs=[f"cu {i}" for i in range(20)])
    assert [c.role for c in result.calls] == ["worker"] * len(result.calls)
    assert result.answer == f"cu {len(result.calls) - 1}"


@pytest.mark.parametrize("refusal", [
    "The text does not mention the password.",
    "No information about this is given in the text.",
    "Not mentioned.",
    "I don't know.",
    "There is nothing relevant in this part.",
])
def test_collapse_guard_keeps_the_useful_cu(refusal):
    outputs = ["Sentence number 2 tells of event 2 in the story.", refusal] + ["Sentence number 2 tells of event 2 in the story."] * 20
    task = Task(document(60), "What happened in event 2?", Kind.SUMMARIZE)
    model, result = run("coa", task, outputs=outputs, cu="paper", guard=True)
    second = result.workers[1]
    assert second.output == refusal and second.cu == result.workers[0].cu
    assert "collapse guard" in second.note
    assert refusal not in user(model.prompts[2])
    for guard in (False, None):  # off, and off by default: the paper's CU passes a refusal on
        model, result = run("coa", task, outputs=outputs, cu="paper", guard=guard)
        assert result.workers[1].cu == refusal and refusal in user(model.prompts[2])
    # The evidence CU needs no guard: a refusal adds nothing, and the evidence found before carries on.
    model, result = run("coa", task, outputs=outputs)
    assert result.settings["cu"] == "evidence"
    second = result.workers[1]
    assert second.cu == result.workers[0].cu == "Sentence number 2 tells of event 2 in the story."
    assert second.note == "nothing new" and refusal not in user(model.prompts[2])


# -- coa-multipath --------------------------------------------------------------------------------
def answer_by_path(messages):
    """Workers echo; managers answer by which chunk their chain read last."""
    text = user(messages)
    if "summary of the previous source text" in text:
        return f"seen {numbers_in(text)[0]}"
    if "Candidate" in text:
        return "judged"
    return "LAST " + re.findall(r"seen (\d+)", text)[-1]


def test_multipath_bidirectional_runs_two_chains_and_a_judge():
    model, result = run("coa-multipath", Task(document(60), "Who?"), reply=answer_by_path, cu="paper", grounding=False,
                        guard=False)
    paths = {c.path for c in result.calls if c.role in ("worker", "manager")}
    assert paths == {0, 1}
    last_chunk_start = numbers_in(user([c for c in result.calls if c.path == 0 and c.role == "worker"][-1].messages))[0]
    # Left to right ends with the last chunk, right to left with the first.
    assert result.settings["answers"] == [f"LAST {last_chunk_start}", "LAST 0"] and last_chunk_start > 0
    judge = [c for c in result.calls if c.role == "judge"]
    assert len(judge) == 1 and result.calls[-1] is judge[0]
    judged = user(judge[0].messages)
    assert f"Candidate 1: {fence(f'LAST {last_chunk_start}', 'answer')}" in judged
    assert f"Candidate 2: {fence('LAST 0', 'answer')}" in judged
    assert "Question: Who?" in user(judge[0].messages)
    assert result.answer == "judged"


def test_multipath_vote_breaks_ties_by_path_order():
    _, result = run("coa-multipath", Task(document(60), "Who?"), reply=answer_by_path, combine="vote", cu="paper",
                    grounding=False, guard=False)
    assert result.answer == result.settings["answers"][0] != "LAST 0" and not any(c.role == "judge" for c in result.calls)
    _, result = run("coa-multipath", Task(document(60), "Who?"), paths="perm", n=3, combine="vote",
                    reply=lambda m: "Paris." if "Candidate" not in user(m) else "x", grounding=False, guard=False)
    assert result.answer == "Paris." and len(result.settings["answers"]) == 3


def test_multipath_with_the_evidence_cu_answers_each_path_from_its_evidence():
    text = document(60)
    fact = "Sentence number 3 tells of event 3 in the story."

    def reply(messages):
        prompt = user(messages)
        if "Candidate" in prompt:
            return "judged"
        if "as the evidence:" in prompt:  # an evidence manager: it answers from what it was shown
            return "event 3" if fact in prompt else "nothing"
        return fact if fact in prompt.split("Question:")[0] else "none"

    model, result = run("coa-multipath", Task(text, "What happened in event 3?"), reply=reply)
    assert {c.path for c in result.calls if c.role == "worker"} == {0, 1}
    assert all(c.messages[0]["content"] == model.prompts[0][0]["content"] for c in result.calls if c.role == "worker")
    assert "copy the sentences that help" in user(result.workers[0].messages)  # the evidence worker's prompt
    managers = [c for c in result.calls if c.role == "manager"]
    assert len(managers) == 2 and all(c.cu == fact for c in managers)  # both paths carried the fact to their manager
    assert result.settings["answers"] == ["event 3", "event 3"] and result.answer == "judged"


def test_multipath_answers_carry_the_citations_of_their_chains():
    text = document(60)
    fact = "Sentence number 3 tells of event 3 in the story."
    reply = lambda m: "judged" if "Candidate" in user(m) else (  # noqa: E731
        "sentence number 3" if "as the evidence:" in user(m) else (fact if fact in user(m).split("Question:")[0] else "none"))
    _, result = run("coa-multipath", Task(text, "What happened in event 3?"), reply=reply, combine="vote")
    assert result.answer == "sentence number 3"
    assert {(c.start, c.end) for c in result.citations} == {(text.index(fact), text.index(fact) + len(fact))}
    assert result.supported is True


def test_multipath_sampling_uses_a_temperature_and_a_seed_per_path():
    seen = []

    class Recorder(ScriptedModel):
        def complete(self, messages, **kwargs):
            seen.append((kwargs["temperature"], kwargs["seed"]))
            return super().complete(messages, **kwargs)

    model = Recorder(context_window=600)
    get_strategy("coa-multipath")(model, Config(window=600, max_cu_tokens=40, seed=7),
                                  options={"paths": "sample", "n": 3, "combine": "vote"}).run(Task(document(30), "Who?"))
    assert {s for t, s in seen} == {7, 8, 9} and {t for t, s in seen} == {0.7}


# -- vanilla --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("drop", "keeps_first", "keeps_last"), [("middle", True, True), ("head", False, True), ("tail", True, False)])
def test_vanilla_truncates_as_asked(drop, keeps_first, keeps_last):
    model, result = run("vanilla", Task(document(200), "Who?"), truncate=drop)
    assert len(model.prompts) == 1
    read = numbers_in(user(model.prompts[0]))
    assert (0 in read) is keeps_first and (199 in read) is keeps_last
    assert 100 not in read  # the document cannot fit: something was dropped
    assert result.settings["kept_tokens"] < result.settings["document_tokens"]


def test_vanilla_closed_book_sends_no_document():
    model, result = run("vanilla", Task(document(5), "Who?"), truncate="all")
    assert numbers_in(user(model.prompts[0])) == [] and "Who?" in user(model.prompts[0])
    assert result.settings["kept_tokens"] == 0 < result.settings["document_tokens"]


@pytest.mark.parametrize(("output", "answer"), [
    ("Eenasul Fateh Eenasul Fateh", "Eenasul Fateh"),
    ("Yes yes", "Yes yes"),  # words differ in case: not one phrase twice
    ("New York New York New York", "New York New York New York"),  # three times: left as written
    ("Thane of Cawdor", "Thane of Cawdor"),
])
def test_an_answer_that_is_one_phrase_twice_is_said_once(output, answer):
    _, result = run("vanilla", Task(document(5), "Who?"), outputs=[output])
    assert result.answer == answer


def test_vanilla_sends_a_short_document_whole():
    model, _ = run("vanilla", Task(document(5), "Who?"))
    assert numbers_in(user(model.prompts[0])) == list(range(5))


# -- rag ------------------------------------------------------------------------------------------
def test_rag_retrieves_the_matching_passage_in_document_order():
    text = document(300)
    needle = "The lighthouse keeper hid the silver compass under the stairs."
    middle = len(text) // 2
    text = text[:middle] + " " + needle + " " + text[middle:]
    model, result = run("rag", Task(text, "Where did the lighthouse keeper hide the silver compass?"), chunk_words=40)
    prompt = user(model.prompts[0])
    assert needle in prompt
    retrieved = result.settings["retrieved"]
    assert retrieved == sorted(retrieved) and len(retrieved) < result.settings["passages"]


def test_rag_without_a_query_uses_the_pseudo_query():
    _, result = run("rag", Task(document(100), None, Kind.SUMMARIZE))
    assert result.settings["query"] == "What is the summary of the whole text?"


# -- merge ----------------------------------------------------------------------------------------
def test_merge_answers_each_chunk_once_and_votes():
    def reply(messages):
        first = numbers_in(user(messages))[0]
        return "Paris" if first < 60 else ("The text does not mention it." if first < 120 else "Rome")
    model, result = run("merge", Task(document(200), "Capital?"), reply=reply)
    workers = [c for c in result.calls if c.role == "worker"]
    assert len(workers) == len(model.prompts) >= 3
    read = [n for m in model.prompts for n in numbers_in(user(m))]
    assert read == list(range(200))  # every chunk to exactly one call, each call one chunk
    answers = [c.output for c in workers]
    expected = max(["Paris", "Rome"], key=lambda a: (answers.count(a), a == "Paris"))
    assert result.answer == expected
    assert any("not counted" in c.note for c in workers)


def test_merge_vote_tie_goes_to_the_earliest_chunk():
    _, result = run("merge", Task(document(200), "Who?"), outputs=["Macbeth", "Banquo", "banquo.", "MACBETH!"])
    assert result.answer == "Macbeth"


def test_merge_summaries_go_to_a_manager():
    model, result = run("merge", Task(document(200), None, Kind.SUMMARIZE), reply=lambda m: "part summary" if "Part 1:" not in user(m) else "final")
    assert result.calls[-1].role == "manager" and result.answer == "final"
    workers = len(result.calls) - 1
    assert all(f"Part {i + 1}: {fence('part summary', 'note')}" in user(model.prompts[-1]) for i in range(workers))


# -- hierarchical ---------------------------------------------------------------------------------
def test_hierarchical_leaves_useless_chunks_out_of_the_tree():
    def reply(messages):
        text = user(messages)
        if "Is the text above useful" in text:
            first = numbers_in(text)[0]
            return f"USEFUL: yes\nnote from {first}" if first == 0 else "USEFUL: no"
        return "root answer"
    model, result = run("hierarchical", Task(document(60), "Who?"), reply=reply)
    root = user(model.prompts[-1])
    assert "note from 0" in root and "Part 2:" not in root
    assert result.settings["useful_chunks"] == 1 and result.answer == "root answer"
    assert sum("not useful" in (c.note or "") for c in result.calls) == len(result.calls) - 2


def test_hierarchical_merges_up_a_tree_when_notes_do_not_fit():
    def reply(messages):
        text = user(messages)
        if "Is the text above useful" in text:
            return "USEFUL: yes\n" + "fact " * 35
        if "Merge these notes" in text:
            return "merged " * 20
        return "root"
    model, result = run("hierarchical", Task(document(400), "Who?"), reply=reply, window=500)
    roles = [c.role for c in result.calls]
    assert "merge" in roles and roles[-1] == "manager" and result.settings["merge_levels"] >= 1


def test_hierarchical_reads_the_useful_flag():
    assert read_worker("USEFUL: yes\nThe king dies.") == (True, "The king dies.")
    assert read_worker("**Useful:** no") == (False, "")
    assert read_worker("The king dies.") == (True, "The king dies.")
    assert read_worker("The text does not mention it.")[0] is False


# -- mapreduce ------------------------------------------------------------------------------------
def mapped(answer, confidence, info="a fact"):
    return f"Extracted information: {info}\nRationale: because\nAnswer: {answer}\nConfidence: {confidence}"


def test_mapreduce_drops_empty_chunks_and_ranks_by_confidence():
    outputs = [mapped("Paris", 2), mapped("none", 0, info="none"), mapped("Rome", 5), mapped("Lyon", 4)] + [mapped("none", 0, "none")] * 10
    model, result = run("mapreduce", Task(document(300), "Capital?"), outputs=outputs)
    reduce = user(model.prompts[-1])
    assert result.calls[1].note == "dropped: no information"
    assert reduce.index("Answer: Rome") < reduce.index("Answer: Lyon") < reduce.index("Answer: Paris")
    assert "(confidence 5)" in reduce and "Answer: none" not in reduce


def test_mapreduce_vote_weighs_answers_by_confidence():
    outputs = [mapped("Paris", 1), mapped("Paris", 1), mapped("Rome", 5)] + [mapped("none", 0, "none")] * 10
    _, result = run("mapreduce", Task(document(300), "Capital?"), outputs=outputs, reduce="vote")
    assert result.answer == "Rome" and not any(c.role == "manager" for c in result.calls)


def test_mapreduce_collapses_groups_until_they_fit():
    def reply(messages):
        text = user(messages)
        if "Combine them into one finding" in text:
            return mapped("collapsed", 3, info="joined " * 10)
        if "Findings from the parts" in text:
            return "final"
        return mapped("an answer", 3, info="fact " * 35)
    model, result = run("mapreduce", Task(document(400), "Who?"), reply=reply, window=500)
    roles = [c.role for c in result.calls]
    assert "collapse" in roles and roles[-1] == "manager" and result.settings["collapse_levels"] >= 1


def test_mapreduce_reads_structured_output():
    finding = read_finding("**Extracted information**: The vault code is 42.\nRationale: stated\nAnswer: 42\nConfidence score: 9")
    assert (finding.information, finding.answer, finding.confidence) == ("The vault code is 42.", "42", 5)
    assert read_finding("Extracted information: none\nAnswer: none").empty


# -- options and concurrency ----------------------------------------------------------------------
def test_options_are_parsed_and_checked():
    coa = get_strategy("coa")
    assert parse_options(coa, parse_pairs(["order=rtl", "manager=false", "grounding=auto"])) == coa.Options(
        cu="evidence", order="rtl", manager=False, guard=None, grounding=None)
    assert parse_options(coa, parse_pairs(["cu=paper", "guard=true"])) == coa.Options(cu="paper", guard=True)
    with pytest.raises(ConfigError, match="not one of evidence, paper"):
        parse_options(coa, {"cu": "notes"})
    with pytest.raises(ConfigError, match="no option 'depth'"):
        parse_options(coa, {"depth": "2"})
    with pytest.raises(ConfigError, match="not one of ltr, rtl, perm"):
        parse_options(coa, {"order": "sideways"})
    with pytest.raises(ConfigError, match="not a valid int"):
        parse_options(get_strategy("coa-multipath"), {"n": "many"})
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_pairs(["order"])
    with pytest.raises(ConfigError, match="unknown strategy 'fast'"):
        get_strategy("fast")


def test_the_option_schema_takes_command_line_text_and_python_values_alike():
    multipath = get_strategy("coa-multipath")
    text = parse_options(multipath, {"paths": "perm", "n": "3", "sample_temperature": "0.5", "guard": "off", "grounding": "true"})
    values = parse_options(multipath, {"paths": "perm", "n": 3, "sample_temperature": 0.5, "guard": False, "grounding": True})
    assert text == values and (text.n, text.guard, text.grounding) == (3, False, True)
    assert parse_options(multipath, {"grounding": "auto"}).grounding is None  # optional fields take "auto" for None
    assert parse_options(multipath, {"grounding": None}).grounding is None
    assert parse_options(get_strategy("rag"), {"chunk-words": "40"}).chunk_words == 40
    with pytest.raises(ValueError):  # options are settled once parsed
        text.n = 4
    schema = multipath.Options.model_json_schema()["properties"]["n"]  # what a JSON body is checked against
    assert (schema["minimum"], schema["maximum"], schema["default"]) == (1, 16, 5) and schema["description"]


@pytest.mark.parametrize(("name", "options", "message"), [
    ("coa-multipath", {"n": "0"}, "option n must be 1 to 16, not 0"),
    ("coa-multipath", {"n": 17}, "option n must be 1 to 16, not 17"),
    ("coa-multipath", {"n": 2.5}, "option n: 2.5 is not a valid int"),
    ("coa-multipath", {"sample_temperature": "nan"}, "option sample_temperature must be a finite number of 0 or more, not nan"),
    ("coa-multipath", {"sample_temperature": float("inf")}, "option sample_temperature must be a finite number of 0 or more, not inf"),
    ("coa-multipath", {"sample_temperature": -0.1}, "option sample_temperature must be a finite number of 0 or more, not -0.1"),
    ("coa-multipath", {"guard": "auto"}, "option guard: 'auto' is not a valid bool"),  # only optional fields are auto
    ("coa-multipath", {"paths": "all"}, "option paths: 'all' is not one of bidir, perm, sample"),
    ("coa-multipath", {"n": "0", "depth": 1},
     "option n must be 1 to 16, not 0; strategy coa-multipath has no option 'depth' "
     "(its options: combine, cu, grounding, guard, n, paths, sample_temperature)"),
    ("rag", {"chunk_words": "0"}, "option chunk_words must be 1 or more, not 0"),
    ("hierarchical", {"fan_in": "2"}, "strategy hierarchical has no option 'fan_in' (its options: none)"),
])
def test_option_errors_are_one_line_in_the_cli_words(name, options, message):
    with pytest.raises(ConfigError) as error:
        parse_options(get_strategy(name), options)
    assert str(error.value) == message
    with pytest.raises(ConfigError):  # the Python API checks them the same way
        get_strategy(name)(ScriptedModel(), options=options)


class SlowModel(ScriptedModel):
    """Tracks how many calls are in flight at once."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.lock, self.now, self.most = threading.Lock(), 0, 0

    def complete(self, messages, **kwargs):
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        time.sleep(0.15)  # long enough for the calls a strategy sends together to overlap on a loaded machine
        with self.lock:
            self.now -= 1
        return super().complete(messages, **kwargs)


@pytest.mark.parametrize(("name", "concurrency", "most"), [("merge", 3, 3), ("mapreduce", 2, 2), ("coa", 4, 1), ("coa-multipath", 4, 2)])
def test_independent_calls_run_concurrently_within_the_bound(name, concurrency, most):
    model = SlowModel(context_window=600)
    get_strategy(name)(model, Config(window=600, max_cu_tokens=40, concurrency=concurrency)).run(Task(document(120), "Who?"))
    assert model.most == most


class EmbeddingServer(JsonHandler):
    """An OpenAI-style /embeddings endpoint: bag-of-words vectors over a small vocabulary."""

    VOCAB = ["lighthouse", "compass", "silver", "stairs", "event", "story"]
    requests = []

    def do_POST(self):
        body = self.read_json()
        EmbeddingServer.requests.append(body)
        vectors = [[text.lower().count(word) + 0.01 for word in self.VOCAB] for text in body["input"]]
        self.reply(200, {"data": [{"index": i, "embedding": v} for i, v in enumerate(vectors)]})


def test_rag_dense_retrieval_through_an_embeddings_endpoint():
    text = document(300)
    needle = "The lighthouse keeper hid the silver compass under the stairs."
    text = text[: len(text) // 2] + " " + needle + " " + text[len(text) // 2 :]
    with serve(EmbeddingServer) as base_url:
        model, result = run("rag", Task(text, "Where is the silver compass?"), chunk_words=40, retriever="dense",
                            embed_model="embedder", embed_url=base_url)
    request = EmbeddingServer.requests[-1]
    assert request["model"] == "embedder" and request["input"][0] == "Where is the silver compass?"
    assert len(request["input"]) == result.settings["passages"] + 1
    assert needle in user(model.prompts[0])


def test_rag_dense_retrieval_needs_a_model_name():
    with pytest.raises(ConfigError, match="embed_model"):
        run("rag", Task(document(50), "Who?"), retriever="dense")


def test_rag_cuts_a_passage_longer_than_the_window_and_says_so():
    # One "word" of 5,000 tokens (the scripted model counts each "-"): no passage fits, so the best
    # is cut rather than none read.
    document = "-" * 5000 + " The code is 4417."
    model = ScriptedModel(["4417"], context_window=512)
    result = get_strategy("rag")(model, Config(window=512)).run(Task(document, "What is the code?"))
    assert "-----" in model.prompts[-1][-1]["content"]
    assert any("cut to fit" in w for w in result.warnings)
