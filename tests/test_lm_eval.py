"""coa as an lm-evaluation-harness model: the document/question rules on requests lm-eval builds
from the tasks' own YAMLs, generate_until on the scripted model, lm-eval's real CLI end to end,
the optional import, and LongBench metric parity with lm-eval's."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

lm_eval = pytest.importorskip("lm_eval")

from coa.errors import ConfigError  # noqa: E402
from coa.lm_eval.__main__ import hide_secrets, usage_default  # noqa: E402
from coa.lm_eval.model import CoaLM, cut  # noqa: E402
from coa.lm_eval.split import split_request  # noqa: E402
from coa.models.scripted import ScriptedModel  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "lm_eval"
TASKS = Path(lm_eval.__file__).parent / "tasks"


# -- requests as lm-eval builds them -----------------------------------------------------------
class _Loader(yaml.SafeLoader):
    pass


_Loader.add_constructor("!function", lambda loader, node: "!function " + loader.construct_scalar(node))


def task_yaml(path: Path) -> dict:
    """A task's YAML with its includes merged (functions kept as text: the ones that build the
    request, doc_to_text and the like, are templates)."""
    config = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    if "include" in config:
        base = task_yaml(path.parent / config.pop("include"))
        base.update(config)
        config = base
    return config


def requests_of(yaml_path: Path, rows: Path, limit: int | None = None) -> list:
    """The requests lm-eval builds from the task's own YAML over local rows: only where the data
    comes from (and the scoring, which needs the task's extra packages) is replaced."""
    from lm_eval.api.task import ConfigurableTask

    config = task_yaml(yaml_path)
    for key in ("custom_dataset", "process_results", "dataset_name", "tag", "group"):
        config.pop(key, None)
    config.update(dataset_path="json", dataset_kwargs={"data_files": {"test": str(rows)}}, test_split="test",
                  metric_list=[{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}])
    task = ConfigurableTask(config=config)
    task.build_all_requests(limit=limit, rank=0, world_size=1)
    return task.instances


def row(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8").splitlines()[0])


def split_of(request):
    return split_request(request.args[0], request.doc, request.task_name)


def test_longbench_takes_context_and_question_from_the_doc():
    [request] = requests_of(TASKS / "longbench" / "hotpotqa.yaml", FIXTURES / "longbench_hotpotqa.jsonl")
    data = row("longbench_hotpotqa.jsonl")
    assert request.task_name == "longbench_hotpotqa" and data["context"] in request.args[0]
    split = split_of(request)
    assert (split.rule, split.document, split.question) == ("longbench", data["context"], data["question"])


def test_longbench_without_a_question_asks_the_prompts_instruction():
    [request] = requests_of(TASKS / "longbench" / "gov_report.yaml", FIXTURES / "longbench_gov_report.jsonl")
    split = split_of(request)
    assert split.rule == "longbench" and split.document == row("longbench_gov_report.jsonl")["context"]
    assert split.question.startswith("You are given a report by a government agency")
    assert split.question.endswith("Summary:") and "Spending" not in split.question


def test_ruler_niah_splits_at_the_templates_question_line():
    [request] = requests_of(TASKS / "ruler" / "niah_single_1.yaml", FIXTURES / "ruler_niah.jsonl")
    assert request.task_name == "niah_single_1"
    split = split_of(request)
    assert split.rule == "ruler"
    assert split.document.startswith("Some special magic numbers") and split.document.endswith("The sun is yellow.")
    assert split.question == "What are all the special magic numbers for calm-river mentioned in the provided text?"
    assert "4821937" in split.document and "4821937" not in split.question


def test_ruler_qa_drops_the_question_label():
    [request] = requests_of(TASKS / "ruler" / "qa_squad.yaml", FIXTURES / "ruler_qa.jsonl")
    split = split_of(request)
    assert split.rule == "ruler" and split.question == "Into which sea does the Nile flow?"
    assert split.document.endswith("Only give me the answer and do not output any other words.")
    assert "Document 1:\nThe Nile flows north" in split.document


def test_ruler_variable_tracking_cuts_the_answer_prefix():
    text = ("Memorize and track the chain(s) of variable assignment hidden in the following text.\n\nVAR X = 1 ..."
            "\nQuestion: Find all variables that are assigned the value 1 in the text above. Answer: According to "
            "the chain(s) of variable assignment in the text above, 1 variables are assgined the value 1, they are: ")
    split = split_request(text, {"input": text}, "ruler_vt")
    assert split.question == "Find all variables that are assigned the value 1 in the text above."
    assert split.document.endswith("VAR X = 1 ...")


def test_babilong_takes_input_and_question_past_its_fewshot_examples():
    [request] = requests_of(TASKS / "babilong" / "babilong_qa1.yaml", FIXTURES / "babilong_qa1.jsonl")
    assert "Where is Charlie?" in request.args[0]  # lm-eval's two fewshot examples come first
    split = split_of(request)
    assert (split.rule, split.document, split.question) == (
        "babilong", row("babilong_qa1.jsonl")["input"], "Where is Mary?")


def test_infinitebench_takes_context_and_input():
    [request] = requests_of(TASKS / "infinitebench" / "infinitebench_longbook_qa_en.yaml",
                            FIXTURES / "infinitebench_longbook_qa_en.jsonl")
    data = row("infinitebench_longbook_qa_en.jsonl")
    assert request.args[0].startswith("Read the book below")
    split = split_of(request)
    assert (split.rule, split.document, split.question) == ("infinitebench", data["context"], data["input"])


def test_scrolls_takes_text_and_question():
    # lm-eval's SCROLLS tasks are Python classes that need transformers (and torch): their prompt and
    # _process_doc are copied in tests/fixtures/lm_eval/scrolls_coa_tiny.yaml.
    from lm_eval.tasks import TaskManager, get_task_dict

    task = get_task_dict(["scrolls_coa_tiny"], TaskManager(include_path=str(FIXTURES)))["scrolls_coa_tiny"]
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        task.build_all_requests(limit=1, rank=0, world_size=1)
    finally:
        os.chdir(cwd)
    [request] = task.instances
    split = split_of(request)
    assert (split.rule, split.document, split.question) == (
        "scrolls", "We train on the WikiText corpus and report perplexity.", "What corpus do the authors use?")
    raw = row("scrolls_qasper.jsonl")  # the published row itself, before _process_doc
    assert split_request(request.args[0], raw, "scrolls_qasper") == split


def plain_task(doc_to_text: str):
    from lm_eval.api.task import ConfigurableTask

    task = ConfigurableTask(config={
        "task": "plain_qa", "dataset_path": "json", "test_split": "test", "output_type": "generate_until",
        "dataset_kwargs": {"data_files": {"test": str(FIXTURES / "plain_qa.jsonl")}},
        "doc_to_text": doc_to_text, "doc_to_target": "{{answer}}", "metric_list": [{"metric": "exact_match"}]})
    task.build_all_requests(rank=0, world_size=1)
    return task.instances


def test_generic_rule_takes_the_longest_doc_field_in_the_prompt():
    [request] = plain_task("Read this.\n{{passage}}\nQ: {{query}}\nA:")
    split = split_of(request)
    assert split.rule == "generic"
    assert split.document == row("plain_qa.jsonl")["passage"]
    assert split.question == "Read this.\nQ: When does the library close?\nA:"


def test_last_resort_is_the_prompt_and_its_last_line_with_one_warning_per_task(caplog):
    [request] = plain_task("{{passage|upper}}\n{{query|upper}}\n")
    split = split_of(request)
    assert split.rule == "last-line" and split.document == request.args[0]
    assert split.question == "WHEN DOES THE LIBRARY CLOSE?"
    lm = scripted_lm(reply=lambda messages: "FIVE")
    with caplog.at_level(logging.WARNING, logger="coa.lm_eval"):
        assert lm.generate_until([request, request]) == ["FIVE", "FIVE"]
    assert sum("no document/question rule for task plain_qa" in r.message for r in caplog.records) == 1


# -- the model -------------------------------------------------------------------------------
def scripted_lm(outputs=(), reply=None, **args) -> CoaLM:
    lm = CoaLM(model="scripted", **{"strategy": "vanilla", **args})
    lm.backend = ScriptedModel(outputs, reply=reply, context_window=lm.config.window)
    return lm


class Request:
    def __init__(self, prompt, gen_kwargs, doc, task_name="longbench_hotpotqa", doc_id=0):
        self.args = (prompt, gen_kwargs)
        self.doc, self.task_name, self.doc_id = doc, task_name, doc_id


def hotpot_request(gen_kwargs, doc_id=0):
    [request] = requests_of(TASKS / "longbench" / "hotpotqa.yaml", FIXTURES / "longbench_hotpotqa.jsonl")
    return Request(request.args[0], gen_kwargs, request.doc, doc_id=doc_id)


def test_max_gen_toks_bounds_the_answering_call_and_until_cuts_the_answer(tmp_path):
    lm = scripted_lm(["Paris\nbecause the passage says so"], usage_path=str(tmp_path / "usage.jsonl"))
    [answer] = lm.generate_until([hotpot_request({"max_gen_toks": 17, "until": ["\n"]})])
    assert answer == "Paris"
    assert lm.backend.max_tokens == [17]
    sent = lm.backend.prompts[0][-1]["content"]
    assert "Gustave Eiffel's company designed" in sent and "In which city does the tower" in sent
    [entry] = [json.loads(line) for line in (tmp_path / "usage.jsonl").read_text().splitlines()]
    assert entry["calls"] == 1 and entry["split"] == "longbench" and entry["answer"] == "Paris"
    assert entry["completion_tokens"] == 6 and entry["prompt_tokens"] > 20  # the scripted model's 6 tokens
    assert entry["max_gen_toks"] == 17


def test_below_coas_answer_floor_the_answer_is_cut_to_max_gen_toks():
    lm = scripted_lm(["one two three four five six"])
    assert lm.generate_until([hotpot_request({"max_gen_toks": 3})]) == ["one two three"]
    assert lm.backend.max_tokens == [16]


def test_coa_strategy_caps_only_its_manager_at_max_gen_toks():
    lm = scripted_lm(["worker note", "Paris"], strategy="coa")
    assert lm.generate_until([hotpot_request({"max_gen_toks": 41, "until": []})]) == ["Paris"]
    assert len(lm.backend.max_tokens) == 2 and lm.backend.max_tokens[-1] == 41
    assert lm.backend.max_tokens[0] != 41  # the worker writes a CU of its own size
    assert [c["role"] for c in lm.usage[0]["per_call"]] == ["worker", "manager"]


def test_kind_auto_runs_summaries_and_code_as_such():
    [request] = requests_of(TASKS / "longbench" / "gov_report.yaml", FIXTURES / "longbench_gov_report.jsonl")
    lm = scripted_lm(["A summary."])
    assert lm.generate_until([request]) == ["A summary."]
    assert lm.usage[0]["kind"] == "summarize"
    assert "Write a clear, complete summary" in lm.backend.prompts[0][-1]["content"]
    code = Request("Please complete the code given below. \ndef f(x):\n    y = x\nNext line of code:",
                   {"max_gen_toks": 64}, {"context": "def f(x):\n    y = x\n", "question": ""}, task_name="longbench_lcc")
    lm = scripted_lm(["    return y"])
    assert lm.generate_until([code]) == ["    return y"] and lm.usage[0]["kind"] == "code"
    lm = scripted_lm(["short"], kind="qa")  # kind given: every request runs as that kind
    assert lm.generate_until([request]) == ["short"] and lm.usage[0]["kind"] == "qa"


def test_cut_stops_at_the_first_until_string():
    assert cut("a. b\n c", ["\n", "."]) == "a"
    assert cut("abc", []) == "abc" and cut("abc", ["x"]) == "abc"


def test_options_reach_the_strategy_both_ways():
    assert scripted_lm(strategy="coa", opt_order="rtl").options.order == "rtl"
    assert scripted_lm(strategy="coa:order=rtl").options.order == "rtl"
    assert scripted_lm(strategy="coa", opt_order="rtl").label == "coa:order=rtl"


@pytest.mark.parametrize(("args", "message"), [
    ({"bogus": 1}, "unknown bogus"),
    ({"strategy": "coa", "opt_order": "sideways"}, "order"),
    ({"strategy": "nosuch"}, "nosuch"),
    ({"window": "big"}, "window=big: must be a whole number"),
    ({"window": 10}, "window=10: must be at least 64"),
    ({"max_seconds": 0}, "max_seconds=0"),
    ({"kind": "poem"}, "kind=poem"),
])
def test_a_bad_model_arg_is_one_clear_line(args, message):
    with pytest.raises(ConfigError, match=message) as error:
        CoaLM(model="scripted", **args)
    assert "\n" not in str(error.value)


def test_loglikelihood_names_the_generative_variant():
    lm = scripted_lm()
    request = Request("ctx", "cont", {}, task_name="mmlu")
    for method in (lm.loglikelihood, lm.loglikelihood_rolling):
        with pytest.raises(ConfigError, match="generate_until") as error:
            method([request])
        assert "mmlu" in str(error.value) and "\n" not in str(error.value)


def test_the_api_key_is_taken_out_of_lm_evals_sight():
    args, hidden = hide_secrets(["--model", "coa", "--model_args", "model=openai:m,api_key=SECRET-1,window=2048",
                                 "--tasks", "t"])
    assert args == ["--model", "coa", "--model_args", "model=openai:m,window=2048", "--tasks", "t"]
    assert hidden == {"api_key": "SECRET-1"}
    args, hidden = hide_secrets(["-a", "strategy=coa", "api_key=K2", "--model_args=api_key=K3,window=99"])
    assert args == ["-a", "strategy=coa", "--model_args=window=99"] and hidden == {"api_key": "K3"}
    for form in ("-a=", "-a"):  # the short flag with its value in the same argument, as argparse takes it
        args, hidden = hide_secrets([f"{form}model=openai:m,api_key=K4", "--tasks", "t"])
        assert args == [f"{form}model=openai:m", "--tasks", "t"] and hidden == {"api_key": "K4"}
    lm = CoaLM(model="openai:m", base_url="http://127.0.0.1:9", api_key="SECRET-2")
    assert "SECRET-2" not in repr(lm) and "SECRET-2" not in str(vars(lm).get("label"))


def test_usage_goes_next_to_lm_evals_output():
    assert usage_default(["--output_path", "out/dir"]) == str(Path("out/dir/coa-usage.jsonl"))
    assert usage_default(["--output_path=out/r.json"]) == str(Path("out/coa-usage.jsonl"))
    assert usage_default(["--model_args", "usage_path=x.jsonl", "--output_path", "o"]) is None
    assert usage_default(["--tasks", "t"]) is None


# -- lm-eval's own CLI, end to end -------------------------------------------------------------
def run_cli(tmp_path, model_args: str, *, tasks="longbench_coa_tiny", timeout=600):
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "hf"),
           "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("OPENAI_API_KEY", None)
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "coa.lm_eval", "--model", "coa", "--model_args", model_args, "--tasks", tasks,
         "--include_path", str(FIXTURES), "--output_path", str(out), "--log_samples"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    [results] = list(out.glob("*/results_*.json"))
    [samples] = list(out.glob(f"*/samples_{tasks}_*.jsonl"))
    usage = [json.loads(line) for line in (out / "coa-usage.jsonl").read_text().splitlines()]
    return done, json.loads(results.read_text()), [json.loads(s) for s in samples.read_text().splitlines()], usage


@pytest.mark.parametrize(("strategy", "calls", "answers", "score"), [
    # One scripted backend serves the run: its numbered replies go on counting across requests.
    ("coa", 2, ["scripted output 2", "scripted output 4"], 0.5),
    ("vanilla", 1, ["scripted output 1", "scripted output 2"], 0.5),
])
def test_lm_evals_cli_reports_a_score_for_coa(tmp_path, strategy, calls, answers, score):
    done, results, samples, usage = run_cli(tmp_path, f"strategy={strategy},model=scripted,window=2048,"
                                                      "api_key=SECRET-KEY-77")
    assert results["results"]["longbench_coa_tiny"]["exact_match,none"] == pytest.approx(score)
    assert sorted(s["filtered_resps"][0] for s in samples) == answers
    assert [u["calls"] for u in usage] == [calls, calls] and {u["split"] for u in usage} == {"longbench"}
    assert {u["strategy"] for u in usage} == {strategy} and all(u["prompt_tokens"] > 0 for u in usage)
    assert sorted(u["doc_id"] for u in usage) == [0, 1]
    written = done.stdout + done.stderr + "".join(p.read_text() for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert "SECRET-KEY-77" not in written


def test_a_bad_model_arg_through_the_cli_is_one_line(tmp_path):
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "coa.lm_eval", "--model", "coa", "--model_args",
                           "model=scripted,wndow=2048,api_key=SECRET-9", "--tasks", "longbench_coa_tiny",
                           "--include_path", str(FIXTURES)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --model_args: unknown wndow") and "SECRET-9" not in done.stderr + done.stdout


@pytest.mark.model
def test_embedded_model_through_lm_evals_cli(tmp_path):
    done, results, samples, usage = run_cli(tmp_path, "strategy=coa,model=embedded,window=2048", timeout=1800)
    assert 0.0 <= results["results"]["longbench_coa_tiny"]["exact_match,none"] <= 1.0
    assert len(samples) == 2 and all(u["calls"] >= 2 and u["error"] is None for u in usage)


# -- lm-eval stays optional ---------------------------------------------------------------------
def test_import_coa_does_not_import_lm_eval():
    code = "import sys, coa, coa.cli, coa.cli.lm_eval, coa.lm_eval; assert 'lm_eval' not in sys.modules, 'imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_without_lm_eval_the_command_names_the_extra(monkeypatch):
    from click.testing import CliRunner

    from coa.cli.lm_eval import lm_eval_command

    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval now fails
    result = CliRunner().invoke(lm_eval_command, ["--", "--tasks", "x"])
    assert isinstance(result.exception, ConfigError)
    assert str(result.exception) == "coa lm-eval needs the [lmeval] extra: pip install 'chainofagents[lmeval]'"


# -- LongBench metrics: ours and lm-eval's agree -------------------------------------------------
PREDICTIONS = [
    ("qa_f1", "get_qa_f1_score", "qa_f1_score", "The Eiffel Tower, in Paris.", ["Paris", "Paris, France"], {}),
    ("qa_f1", "get_qa_f1_score", "qa_f1_score", "an old red barn", ["the red barn"], {}),
    ("qa_f1", "get_qa_f1_score", "qa_f1_score", "nothing", ["Paris"], {}),
    ("classification", "get_classification_score", "classification_score", "Type: location, city",
     ["location"], {"all_classes": ["location", "person", "city", "number"]}),
    ("classification", "get_classification_score", "classification_score", "abbreviation",
     ["abbreviation"], {"all_classes": ["abbreviation", "abbreviation expansion"]}),
    ("retrieval", "get_retrieval_score", "retrieval_score", "Paragraph 3, or maybe 12", ["Paragraph 3"], {}),
    ("count", "get_count_score", "count_score", "There are 7 unique paragraphs (of 9).", ["7"], {}),
    ("code_sim", "get_code_sim_score", "code_sim_score", "return x + 1", ["return x + 1"], {}),
    # code_sim as LongBench computes it: the first line without ` # //, its indentation kept, difflib's
    # ratio in whole percents.
    ("code_sim", "get_code_sim_score", "code_sim_score", "return x+1", ["return x + 1"], {}),
    ("code_sim", "get_code_sim_score", "code_sim_score", "```python\n    return x + 1\n", ["return x+1"], {}),
    ("code_sim", "get_code_sim_score", "code_sim_score", "x = 1  # set\n\ny = 2", ["y = 2"], {}),
    ("code_sim", "get_code_sim_score", "code_sim_score", "\n\n", ["y = 2"], {}),
    # ROUGE-L as LongBench scores it: the `rouge` package's (no stemming, its own tokens, summary-level LCS).
    ("rougeL", "get_rouge_score", "rouge_score", "Spending rose by ten percent in the year under review.",
     ["The agency's spending rose ten percent during the year."], {}),
    ("rougeL", "get_rouge_score", "rouge_score", "The meetings discussed budgets and the schedule of works.",
     ["The committee discussed the budget and a revised schedule for the works."], {}),
    ("rougeL", "get_rouge_score", "rouge_score", "First point. Second point, with more.",
     ["The first point. Then a second one."], {}),
    ("rougeL", "get_rouge_score", "rouge_score", "", ["Nothing to score against."], {}),
]


@pytest.mark.parametrize(("ours", "theirs", "key", "prediction", "answers", "context"), PREDICTIONS)
def test_our_longbench_metrics_match_lm_evals(ours, theirs, key, prediction, answers, context):
    for module in ("jieba", "fuzzywuzzy", "rouge"):  # lm-eval's [longbench] extra
        pytest.importorskip(module)
    pytest.importorskip("rouge_score")  # ours: the [eval] extra
    from lm_eval.tasks.longbench import metrics as theirs_module

    from coa.eval.metrics import score

    expected = getattr(theirs_module, theirs)({"answers": answers, **context}, [prediction])[key]
    got = score(ours, prediction, answers, **context)
    assert got == pytest.approx(expected, abs=1e-6)
