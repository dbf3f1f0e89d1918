import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coa import ChainOfAgents, Config, ConfigError, ContextOverflowError, Kind, ScriptedModel, Task
from coa.budget import MIN_ANSWER_TOKENS, MIN_CHUNK_TOKENS, SAFETY_TOKENS
from coa.evidence import REPLY_TOKENS
from coa.models.base import MESSAGE_OVERHEAD, REPLY_OVERHEAD, count_prompt
from coa.prompts import load_prompt, task_format
from coa.session import Session, ignore
from coa.strategies.chaining import evidence_messages, uses_evidence, worker_messages
from coa.strategies.manager import manager_messages


def document(sentences: int) -> str:
    return " ".join(f"Sentence number {i} tells of event {i} in the story." for i in range(sentences))


def chain(outputs=(), *, window=400, grounding=False, **options):
    model = ScriptedModel(outputs, context_window=window)
    options = {"cu": "paper", "grounding": grounding, "guard": False, **options}
    return model, ChainOfAgents(model, Config(window=window, max_cu_tokens=40), options=options)


def worker_prompts(model):
    return model.prompts[:-1]


def user_text(messages):
    return messages[-1]["content"]


WORDS = re.compile(r"\w+|[^\w\s]")  # the scripted model's tokens
FENCED = re.compile(r"<(document-[0-9a-f]+)>\n(.*?)\n</\1>", re.DOTALL)


def chunk_text(messages):
    """The chunk a worker prompt shows: what lies inside its document fence (not the previous CU,
    which the paper's prompt puts between the chunk and the question)."""
    return FENCED.search(user_text(messages)).group(2)


def sentences_read(model):
    """The numbers of the document's sentences, in the order the workers read them."""
    numbers = []
    for messages in worker_prompts(model):
        numbers += [int(word) for word in chunk_text(messages).split() if word.isdigit()][::2]
    return numbers


def task_of(kind: Kind, sentences: int) -> Task:
    return Task(
        document(sentences),
        query=None if kind in (Kind.SUMMARIZE, Kind.CODE) else "What happened in event 7?",
        kind=kind,
        choices=("event seven", "event eight") if kind is Kind.MCQ else (),
    )


def too_little_room(model, window: int, cu_tokens: int, task: Task) -> bool:
    """Whether, by the budget's own arithmetic, the chain's prompts leave too little room: the worker's
    (with the CU it reads and the reply it writes kept) for MIN_CHUNK_TOKENS of text, or the manager's
    (with the CU it reads kept) for MIN_ANSWER_TOKENS of answer."""
    config = Config(window=window, max_cu_tokens=cu_tokens)
    session = Session(model, config, ignore)
    options = ChainOfAgents(model, config).options
    if uses_evidence(options, task):  # the evidence so far in, a short reply out
        worker, reserve = evidence_messages(session, task, "", "x"), cu_tokens + min(REPLY_TOKENS, cu_tokens)
    else:  # the paper's CU in, the next CU out
        worker, reserve = worker_messages(session, task, "", "x", 1, 1), 2 * cu_tokens
    manager = manager_messages(session, task, "", options)
    text = window - count_prompt(model, worker) - reserve - SAFETY_TOKENS
    answer = window - count_prompt(model, manager) - cu_tokens - SAFETY_TOKENS
    return text < MIN_CHUNK_TOKENS or answer < MIN_ANSWER_TOKENS


@settings(max_examples=60, deadline=None)
@given(
    sentences=st.integers(min_value=1, max_value=150),
    window=st.integers(min_value=330, max_value=2000),
    cu_tokens=st.integers(min_value=1, max_value=60),
    output_words=st.lists(st.integers(min_value=0, max_value=200), min_size=1, max_size=5),
    kind=st.sampled_from(list(Kind)),
)
def test_no_prompt_ever_exceeds_the_window(sentences, window, cu_tokens, output_words, kind):
    # Outputs longer than the CU limit are cut by the model like a real one would. Session.call refuses
    # (ContextOverflowError) any prompt that would not fit with its generation limit, so a run that
    # finishes without re-splitting budgeted every chunk right the first time.
    model = ScriptedModel(reply=lambda m: "word " * output_words[len(model.prompts) % len(output_words)], context_window=window)
    task = task_of(kind, sentences)
    try:
        result = ChainOfAgents(model, Config(window=window, max_cu_tokens=cu_tokens)).run(task)
    except ConfigError as e:
        # A window too small is refused up front, before any call, and only where it is too small.
        assert "too small" in str(e) and model.prompts == []
        assert too_little_room(model, window, cu_tokens, task), e
        return
    assert not too_little_room(model, window, cu_tokens, task)  # and a window too small is never run with
    assert result.settings["rechunks"] == 0
    assert len(model.prompts) == len(result.calls)


def test_few_windows_in_the_generated_range_are_refused():
    """The property above proves little if most of its cases are refusals: over a grid of its
    windows, CU limits and kinds, the prompts leave room nearly everywhere."""
    cases = [(window, cu, kind) for window in range(330, 2001, 60) for cu in (1, 20, 40, 60) for kind in Kind]
    refused = [case for case in cases if too_little_room(ScriptedModel(context_window=case[0]), *case[:2], task_of(case[2], 3))]
    assert len(refused) <= 0.05 * len(cases), refused
    # ...and the boundary is there: a window far below the range is refused for every kind.
    assert all(too_little_room(ScriptedModel(context_window=150), 150, 40, task_of(kind, 3)) for kind in Kind)


def test_cu_of_worker_i_minus_1_reaches_worker_i():
    model, coa = chain([f"summary-{i} of part {i}" for i in range(50)])
    result = coa.run(Task(document(60), "What happened?"))
    workers = worker_prompts(model)
    assert len(workers) >= 3
    assert "(none)" in user_text(workers[0])
    for i in range(1, len(workers)):
        assert f"summary-{i - 1} of part" in user_text(workers[i])
        assert f"summary-{i} of part" not in user_text(workers[i])
    assert [c.cu for c in result.workers] == [f"summary-{i} of part {i}" for i in range(len(workers))]


def test_manager_sees_only_the_last_cu_and_the_query():
    model, coa = chain([f"summary-{i}" for i in range(50)])
    coa.run(Task(document(60), "What happened in event 7?"))
    last = len(model.prompts) - 2
    manager = user_text(model.prompts[-1])
    assert f"summary-{last}" in manager
    assert "What happened in event 7?" in manager
    assert not any(f"summary-{i}\n" in manager or f"summary-{i} " in manager for i in range(last))
    assert "Sentence number" not in manager  # no source text reaches the manager


def test_workers_read_every_chunk_in_order_once():
    text = document(80)
    model, coa = chain()
    result = coa.run(Task(text, "What happened?"))
    spans = [c.span for c in result.workers]
    assert spans[0][0] == 0 and all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
    assert sentences_read(model) == list(range(80))


MARKERS = {  # words of each kind's paper worker instruction
    Kind.QA: "keeps the evidence needed to answer the question",
    Kind.MCQ: "keeps the evidence needed to decide between the options",
    Kind.SUMMARIZE: "running summary",
    Kind.CODE: "write the next line",
}


@pytest.mark.parametrize(
    ("kind", "query", "choices", "marker"),
    [
        (Kind.QA, "Who?", (), MARKERS[Kind.QA]),
        (Kind.MCQ, "Who?", ("Ann", "Bob"), MARKERS[Kind.MCQ]),
        (Kind.SUMMARIZE, None, (), MARKERS[Kind.SUMMARIZE]),
        (Kind.CODE, None, (), MARKERS[Kind.CODE]),
    ],
)
def test_each_task_kind_uses_its_own_prompts(kind, query, choices, marker):
    model, coa = chain(window=700)
    coa.run(Task(document(40), query, kind, choices))
    worker = load_prompt("coa", "worker", kind)
    manager = load_prompt("coa", "manager", kind)
    assert marker in user_text(model.prompts[0])
    assert model.prompts[0][0]["content"] == worker.system.strip()
    assert model.prompts[-1][0]["content"] == manager.system.strip()
    assert worker.name == f"coa/worker-{kind}.yaml" and manager.name == f"coa/manager-{kind}.yaml"
    for other in Kind:  # no other kind's worker instruction shows up in this kind's prompt
        if other is not kind:
            assert MARKERS[other] not in user_text(model.prompts[0])
    if choices:
        assert "A. Ann" in user_text(model.prompts[0]) and "B. Bob" in user_text(model.prompts[-1])
    if query:  # a paper worker reads the question and the previous CU ("(none)" for the first)
        assert f"Question: {query}" in user_text(model.prompts[0]) and "(none)" in user_text(model.prompts[0])


@pytest.mark.parametrize(("kind", "choices"), [(Kind.QA, ()), (Kind.MCQ, ("Ann", "Bob"))])
def test_a_paper_worker_prompt_follows_the_paper(kind, choices):
    """The paper's worker: the chunk, "Here is the summary of the previous source text: ...", the
    question, then the instruction to write one summary of both."""
    model, coa = chain(window=700)
    coa.run(Task(document(80), "Who?", kind, choices))
    assert len(worker_prompts(model)) >= 2
    second = user_text(worker_prompts(model)[1])
    chunk = FENCED.search(second)
    previous = second.index("Here is the summary of the previous source text:")
    cu = second.index("scripted output 1")  # the first worker's CU, fenced
    question = second.index("Question: Who?")
    instruction = second.index("Read the source text above and the summary of the previous source text")
    assert chunk.start() == 0 and chunk.end() < previous < cu < question < instruction
    assert "write one summary of both" in second[instruction:]
    assert "Repeat the summary" not in second  # the echo instruction is gone


def test_requirement_override_reaches_only_the_manager():
    model, coa = chain()
    coa.run(Task(document(30), "Who?", requirement="Reply in French."))
    assert "Reply in French." in user_text(model.prompts[-1])
    assert all("Reply in French." not in user_text(p) for p in worker_prompts(model))


def test_generation_limits_are_sized_for_the_role_and_kind():
    model, coa = chain()
    coa.run(Task(document(30), "Who?"))
    assert set(model.max_tokens[:-1]) == {40}  # workers: the CU limit
    assert model.max_tokens[-1] == task_format("qa").max_tokens


@pytest.mark.parametrize("strategy", ["coa", "vanilla", "rag"])
def test_max_answer_tokens_sets_only_the_answering_calls_limit(strategy):
    from coa.strategies import get_strategy

    model = ScriptedModel([], context_window=1000)
    config = Config(window=1000, max_cu_tokens=40, max_answer_tokens=24)
    get_strategy(strategy)(model, config).run(Task(document(30), "Who?"))
    assert model.max_tokens[-1] == 24 != task_format("qa").max_tokens
    assert all(limit != 24 for limit in model.max_tokens[:-1])


def test_max_answer_tokens_joins_the_fingerprint_only_where_set():
    from coa.identity import run_settings

    assert "max_answer_tokens" not in run_settings("embedded", Config())  # results stored before it keep theirs
    assert run_settings("embedded", Config(max_answer_tokens=24))["max_answer_tokens"] == 24


def test_grounding_drops_sentences_the_sources_do_not_contain():
    text = document(30)
    outputs = ["The password is swordfish. Sentence number 3 tells of event 3 in the story."] + ["Made up claim."] * 40
    model, coa = chain(outputs, grounding=True)
    result = coa.run(Task(text, "What happened in event 3?"))
    first, second = result.workers[0], result.workers[1]
    assert first.cu == "Sentence number 3 tells of event 3 in the story."
    assert "swordfish" in first.output  # the trace keeps what the model wrote
    assert second.cu == first.cu  # nothing supported: the previous CU carries on
    assert "Sentence number 3 tells of event 3" in user_text(model.prompts[-1])
    assert result.settings["grounding"] is True


def test_paper_cu_is_ungrounded_by_default_and_grounded_when_asked():
    # The paper's CoA passes the worker's CU on as written; grounding is an option, for questions only.
    for kind, query, grounding, expected in ((Kind.QA, "Who?", None, False), (Kind.SUMMARIZE, None, None, False),
                                             (Kind.QA, "Who?", True, True), (Kind.SUMMARIZE, None, True, False)):
        model = ScriptedModel(["Not in the text at all."] * 40, context_window=400)
        options = {"cu": "paper", "guard": False, "grounding": grounding}
        result = ChainOfAgents(model, Config(window=400, max_cu_tokens=40), options=options).run(
            Task(document(30), query, kind)
        )
        assert result.settings["cu"] == "paper"
        assert result.settings["grounding"] is expected
        assert result.workers[0].cu == ("" if expected else "Not in the text at all.")


def test_the_evidence_cu_is_the_default_for_questions_and_the_paper_cu_for_the_rest():
    model = ScriptedModel(["Not in the text at all."] * 40, context_window=400)
    result = ChainOfAgents(model, Config(window=400, max_cu_tokens=40)).run(Task(document(30), "Who?"))
    assert result.settings["cu"] == "evidence"
    assert all(c.cu == "" for c in result.workers)  # an invented line never joins the evidence CU
    assert "(no evidence was found)" in user_text(model.prompts[-1])
    for task in (Task(document(30), None, Kind.SUMMARIZE), Task("x = 1\n" * 80, kind=Kind.CODE)):
        model = ScriptedModel(["Not in the text at all."] * 40, context_window=400)
        result = ChainOfAgents(model, Config(window=400, max_cu_tokens=40)).run(task)
        assert result.settings["cu"] == "paper", task.kind
        assert result.workers[0].cu == "Not in the text at all."
        assert model.prompts[0][0]["content"] == load_prompt("coa", "worker", task.kind).system.strip()


def test_a_window_too_small_is_a_clear_error():
    model = ScriptedModel(context_window=8192)
    with pytest.raises(ConfigError, match="window 120 is too small for the answering prompt"):
        ChainOfAgents(model, Config(window=120, max_cu_tokens=40)).run(Task(document(10), "Who?"))
    with pytest.raises(ConfigError, match="window 200 is too small: the worker prompt"):
        ChainOfAgents(model, Config(window=200, max_cu_tokens=40)).run(Task(document(10), "Who?"))
    assert model.prompts == []  # refused before any call


def test_window_is_capped_at_the_models_own():
    model = ScriptedModel(context_window=500)
    result = ChainOfAgents(model, Config(window=8192)).run(Task(document(50), "Who?"))
    assert result.window == 500
    assert result.settings["max_cu_tokens"] == 500 // 8


class OverflowingModel(ScriptedModel):
    """Says its context overflows whenever a prompt is longer than `real_limit`."""

    def __init__(self, real_limit, **kwargs):
        super().__init__(**kwargs)
        self.real_limit = real_limit
        self.refused = 0

    def complete(self, messages, **kwargs):
        if count_prompt(self, messages) > self.real_limit:
            self.refused += 1
            raise ContextOverflowError("server: this model's maximum context length is exceeded")
        return super().complete(messages, **kwargs)


def test_a_context_overflow_from_the_server_rechunks_smaller_and_carries_on():
    text = document(80)
    model = OverflowingModel(real_limit=350, context_window=600)
    result = ChainOfAgents(model, Config(window=600, max_cu_tokens=30)).run(Task(text, "Who?"))
    assert model.refused >= 1 and result.settings["rechunks"] >= 1
    assert result.answer
    assert sentences_read(model) == list(range(80))  # the re-split document is still read whole, once, in order


def test_an_overflow_that_never_ends_is_reported():
    model = OverflowingModel(real_limit=10, context_window=600)
    with pytest.raises(ContextOverflowError):
        ChainOfAgents(model, Config(window=600, max_cu_tokens=30)).run(Task(document(80), "Who?"))


def test_code_completion_uses_the_last_lines_and_returns_one_line():
    code = "".join(f"def f{i}(x):\n    return x + {i}\n" for i in range(40))
    model, coa = chain(window=600)
    model.reply = lambda m: "```python\n    return x + 40\nmore\n```" if "next line of code" in m[-1]["content"] else "summary"
    result = coa.run(Task(code, kind=Kind.CODE))
    assert result.answer == "    return x + 40"  # indentation is part of the line
    assert "def f39(x):" in user_text(model.prompts[-1])


def test_trace_accounts_for_every_call_and_serialises():
    model, coa = chain()
    result = coa.run(Task(document(60), "Who?"))
    data = json.loads(result.to_json())
    assert {"answer", "strategy", "model", "window", "calls", "usage"} <= data.keys()
    assert data["strategy"] == "coa" and data["model"] == "scripted" and data["window"] == 400
    assert [c["role"] for c in data["calls"]] == ["worker"] * (len(data["calls"]) - 1) + ["manager"]
    for call in data["calls"]:
        assert {"role", "index", "prompt_tokens", "completion_tokens", "seconds", "output", "span"} <= call.keys()
    # The totals, counted here from what the model was sent and wrote: the scripted model's tokens are
    # words and punctuation marks, each message adds MESSAGE_OVERHEAD and the reply REPLY_OVERHEAD, and
    # its default output "scripted output N" is three tokens.
    assert data["usage"]["calls"] == len(model.prompts)
    assert data["usage"]["prompt_tokens"] == sum(
        REPLY_OVERHEAD + sum(MESSAGE_OVERHEAD + len(WORDS.findall(m["content"])) for m in messages) for messages in model.prompts
    )
    assert data["usage"]["completion_tokens"] == 3 * len(model.prompts)


def echo_reply(messages):
    """A reply that depends on the whole prompt, so that any difference in what a worker saw shows."""
    import hashlib

    return "note " + hashlib.sha256(json.dumps(messages).encode()).hexdigest()[:8]


@pytest.mark.parametrize("kind", [Kind.QA, Kind.MCQ, Kind.SUMMARIZE])
def test_several_questions_share_one_chunk_major_read_with_the_same_answers(kind):
    questions = ["What happened in event 7?", "Who?", "Which event came after event 41 and before the last one?"]
    choices = ("seven", "eight") if kind is Kind.MCQ else ()
    tasks = [Task(document(80), q, kind, choices) for q in questions]
    alone = []
    for task in tasks:
        model = ScriptedModel(reply=echo_reply, context_window=400)
        alone.append(ChainOfAgents(model, Config(window=400, max_cu_tokens=40)).run(task))
    budget = min(r.settings["chunk_tokens"] for r in alone)
    # Alone, each question gets the largest chunks its prompt allows; together they share the smallest.
    model = ScriptedModel(reply=echo_reply, context_window=400)
    together = ChainOfAgents(model, Config(window=400, max_cu_tokens=40)).run_many(tasks)
    assert [r.settings["chunk_tokens"] for r in together] == [budget] * 3
    longest = questions.index(max(questions, key=len))  # its prompt leaves the least room: its chunks are shared
    assert together[longest].answer == alone[longest].answer
    assert [c.messages for c in together[longest].calls] == [c.messages for c in alone[longest].calls]
    # Chunk-major: the workers of all three questions read chunk i before any reads chunk i+1. Only the
    # chunk itself counts: the evidence CU of "What happened in event 7?" holds sentence 7 (found by the
    # question's words) and shows it in that question's later prompts.
    chunks = [re.findall(r"Sentence number (\d+)", chunk_text(m)) for m in model.prompts[:6]]
    assert chunks[0] == chunks[1] == chunks[2] != chunks[3] == chunks[4] == chunks[5]
    for result in together:
        assert len(result.workers) == len(together[0].workers) > 3 and result.calls[-1].role == "manager"


def test_questions_over_different_documents_run_one_after_another():
    model = ScriptedModel(reply=echo_reply, context_window=400)
    tasks = [Task(document(30), "Who?"), Task(document(31), "Who?")]
    results = ChainOfAgents(model, Config(window=400, max_cu_tokens=40)).run_many(tasks)
    first = len(results[0].calls)
    assert all("Sentence number 30 " not in m[-1]["content"] for m in model.prompts[:first])
    assert "Sentence number 30 " in "".join(m[-1]["content"] for m in model.prompts[first:])


class PrefillingModel(ScriptedModel):
    """A scripted model with a server's prefill: records each prefix it was asked to cache."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.prefilled = []

    def prefill(self, messages):
        self.prefilled.append((len(self.prompts), messages))
        return count_prompt(self, messages)


@pytest.mark.parametrize(("kind", "cu"), [
    (Kind.QA, "paper"),
    (Kind.SUMMARIZE, "evidence"),  # no question: the paper CU whatever cu says
    pytest.param(Kind.QA, "evidence"),
])
def test_prefetch_caches_the_next_workers_prompt_up_to_its_cu(kind, cu):
    model = PrefillingModel(reply=echo_reply, context_window=400)
    task = Task(document(60), "What happened in event 7?" if kind is Kind.QA else None, kind)
    options = {"prefetch": True, "cu": cu}
    result = ChainOfAgents(model, Config(window=400, max_cu_tokens=40), options=options).run(task)
    workers = [m for m in model.prompts if m is not model.prompts[-1]]
    assert len(model.prefilled) == len(workers) - 1 >= 2  # every worker but the first
    for k, (asked_after, prefix) in enumerate(model.prefilled):
        assert asked_after == k + 1  # while worker k ran, before worker k+1 asked
        full = workers[k + 1][-1]["content"]
        cached = prefix[-1]["content"]
        assert full.startswith(cached) and prefix[0] == workers[k + 1][0]
        assert "Sentence number" in cached and result.workers[k].output not in cached  # the chunk, not the CU
        # Everything before the CU is cached: the system text and the whole chunk (and, for the evidence
        # worker, the question); what is left is the CU and what follows it. (Not a share of the prompt: at
        # this window a chunk is four sentences, the paper's prompt puts the question and its instruction
        # after the CU, and the evidence CU already holds sentence 7, found by the question's words.)
        assert FENCED.search(cached).group(0) == FENCED.search(full).group(0)
        assert (result.workers[k].cu or "(none)") in full[len(cached):]
        assert ("Question: What happened in event 7?" in cached) == (kind is Kind.QA and cu == "evidence")
    prefetches = [c for c in result.calls if c.role == "prefetch"]
    assert len(prefetches) == len(model.prefilled) and all(c.completion_tokens == 0 for c in prefetches)
    # The same answer and workers as without prefetch.
    plain = ChainOfAgents(ScriptedModel(reply=echo_reply, context_window=400), Config(window=400, max_cu_tokens=40),
                          options={"cu": cu}).run(task)
    assert plain.answer == result.answer and [c.messages for c in plain.workers] == [c.messages for c in result.workers]


def test_prefetch_is_skipped_where_the_backend_cannot_prefill():
    model = ScriptedModel(reply=echo_reply, context_window=400)
    result = ChainOfAgents(model, Config(window=400, max_cu_tokens=40), options={"prefetch": True}).run(Task(document(60), "Who?"))
    assert [c.role for c in result.calls if c.role not in ("worker", "manager")] == []


def chunk_of(model, number):
    """The worker prompt (its index) whose chunk holds sentence `number`."""
    return next(i for i, messages in enumerate(worker_prompts(model)) if f"event {number} in" in user_text(messages))


def test_relevance_order_reads_the_chunk_that_matches_the_question_last():
    model, coa = chain(order="relevance")
    result = coa.run(Task(document(80), "What happened in event 57?"))
    assert len(result.workers) > 2
    assert chunk_of(model, 57) == len(result.workers) - 1  # nearest the manager
    assert sorted(sentences_read(model)) == list(range(80))  # every chunk, once
    assert result.settings["skipped_chunks"] == 0


def test_skip_reads_only_the_chunks_that_match_the_question():
    model, coa = chain(skip=0.5)
    result = coa.run(Task(document(80), "What happened in event 57?"))
    assert 57 in sentences_read(model) and len(result.workers) == 1
    assert result.settings["skipped_chunks"] >= 2
    model, coa = chain(skip=0.5)  # a question no chunk matches better than another: everything is read
    assert len(coa.run(Task(document(80), "What happened in the story?")).workers) == 1 + chunk_of(model, 79)


def test_query_aware_options_give_each_question_its_own_reading():
    model, coa = chain(skip=0.5)
    results = coa.run_many([Task(document(80), "What happened in event 57?"), Task(document(80), "What about event 12?")])
    assert [len(r.workers) for r in results] == [1, 1]
    assert "event 57 in" in user_text(results[0].workers[0].messages)
    assert "event 12 in" in user_text(results[1].workers[0].messages)


def test_early_exit_stops_once_an_answer_bearing_cu_stays_the_same():
    fact = "Sentence number 3 tells of event 3 in the story."
    model, coa = chain([fact] * 50, grounding=True, early_exit=2)
    result = coa.run(Task(document(80), "What did sentence number 3 tell?"))
    assert len(result.workers) == 3  # the CU is set by worker 1 and unchanged by workers 2 and 3
    assert result.settings["early_exit_saved"] > 0
    whole = chain([fact] * 50, grounding=True)[1].run(Task(document(80), "What did sentence number 3 tell?"))
    assert result.settings["early_exit_saved"] + 3 == len(whole.workers)
    # A CU that does not bear on the question (nothing beyond its words) never stops the chain.
    model, coa = chain(["(none)"] * 50, early_exit=1)
    result = coa.run(Task(document(80), "What did sentence number 3 tell?"))
    assert result.settings["early_exit_saved"] == 0 and len(result.workers) > 3


@pytest.mark.parametrize("cu", ["evidence", "paper"])
def test_citations_give_each_quote_its_place_in_the_document(cu):
    text = document(80)
    quote = "Sentence number 62 tells of event 62 in the story."
    # Worker 1 restates the question (no place); a later worker quotes sentence 62, and the next ones keep it.
    model = ScriptedModel(context_window=400, reply=lambda m: quote if "event 62 in" in user_text(m).split(
        "Question:")[0] else "(none)")
    coa = ChainOfAgents(model, Config(window=400, max_cu_tokens=40), options={"cu": cu, "guard": False, "grounding": True})
    result = coa.run(Task(text, "What happened in event 62?"))
    [citation] = result.citations
    assert text[citation.start : citation.end] == quote and citation.text == quote and citation.line == quote
    assert citation.worker == chunk_of(model, 62)
    data = json.loads(result.to_json())
    assert data["citations"] == [{"text": quote, "start": citation.start, "end": citation.end, "worker": citation.worker,
                                  "line": quote}]
    assert "[chars" not in user_text(model.prompts[-1])
    assert quote in user_text(model.prompts[-1])  # the manager read it


def test_cite_shows_the_manager_each_quote_with_its_place():
    text = document(40)
    quote = "Sentence number 5 tells of event 5 in the story."
    model = ScriptedModel(context_window=400, reply=lambda m: quote)
    coa = ChainOfAgents(model, Config(window=400, max_cu_tokens=40), options={"cu": "paper", "grounding": True, "cite": True})
    result = coa.run(Task(text, "What happened in event 5?"))
    start = text.index(quote)
    assert f"[chars {start}-{start + len(quote)}] {quote}" in user_text(model.prompts[-1])
    assert [(c.start, c.worker) for c in result.citations] == [(start, 0)]  # carried from the first worker on


def test_a_restatement_is_cited_at_the_sentence_it_rests_on():
    text = document(40)
    restated = "In the story, event 5 happened to the number."
    model, coa = chain([restated] * 40, grounding=True)
    result = coa.run(Task(text, "What happened in event 5?"))
    [citation] = result.citations
    assert citation.line == restated and citation.worker == 0  # the CU line as written
    # ...and the citation is the document's sentence it rests on, in the document's words
    assert citation.text == text[citation.start : citation.end] == "Sentence number 5 tells of event 5 in the story."
    model, coa = chain(["Event 5 happened."] * 40, grounding=True)  # adds nothing to the question: no place
    assert coa.run(Task(text, "What happened in event 5?")).citations == []


@pytest.mark.parametrize("option", ["skip=2", "skip=-0.1", "early_exit=-1", "order=best", "chunk_tokens=5"])
def test_bad_reading_options_are_one_line_errors(option):
    key, value = option.split("=")
    with pytest.raises(ConfigError, match=key):
        chain(**{key: value})


def test_chunk_tokens_caps_what_each_worker_reads():
    whole = chain()[1].run(Task(document(80), "What happened?"))
    capped = chain(chunk_tokens=60)[1].run(Task(document(80), "What happened?"))
    assert all(end - start <= 60 for start, end in (c.span for c in capped.workers))
    assert len(capped.workers) > len(whole.workers) and capped.settings["chunk_tokens"] <= 60


@pytest.mark.parametrize("limit", [{"max_calls": 3}, {"max_total_tokens": 1400}])
def test_at_its_limits_the_chain_answers_from_what_it_read(limit):
    model = ScriptedModel(context_window=400)
    coa = ChainOfAgents(model, Config(window=400, max_cu_tokens=40, **limit), options={"guard": False})
    result = coa.run(Task(document(80), "What did sentence number 3 tell?"))
    whole = ChainOfAgents(ScriptedModel(context_window=400), Config(window=400, max_cu_tokens=40),
                          options={"guard": False}).run(Task(document(80), "What did sentence number 3 tell?"))
    assert 1 <= len(result.workers) < len(whole.workers) and result.calls[-1].role == "manager"
    assert result.settings["stopped_at_limit"] is True and not whole.settings["stopped_at_limit"]
    assert f"the answer is from the first {len(result.workers)} of {len(whole.workers)} chunks" in result.warnings[0]
    if "max_calls" in limit:
        assert len(result.calls) == limit["max_calls"]
    else:  # prompt + generation limit of every call, counted before it was sent, stays within the limit
        assert sum(c.prompt_tokens + c.completion_tokens for c in result.calls) <= limit["max_total_tokens"]
    assert len(model.prompts) == len(result.calls)  # no call was sent and then dropped


def test_a_limit_that_leaves_no_room_to_read_and_answer_is_an_error():
    from coa.errors import LimitError

    coa = ChainOfAgents(ScriptedModel(context_window=400), Config(window=400, max_cu_tokens=40, max_calls=1))
    with pytest.raises(LimitError, match="limit of 1 model calls"):
        coa.run(Task(document(80), "What did sentence number 3 tell?"))
    # Without a manager there is nothing to answer from what was read: the limit ends the run.
    paper = ChainOfAgents(ScriptedModel(context_window=400), Config(window=400, max_cu_tokens=40, max_calls=2),
                          options={"manager": False})
    with pytest.raises(LimitError):
        paper.run(Task(document(80), "What did sentence number 3 tell?"))
