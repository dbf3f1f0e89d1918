"""The error contract of the `coa` command, case by case.

A user's mistake prints exactly one line on stderr, `error: ...`, exits with code 2 and
shows no traceback; work already done is kept. Other codes: 1 for an eval in which every
pair failed (the failures are stored, the table is printed), 130 for Ctrl-C and 143 for
SIGTERM (the partial trace or the stored pairs are kept, and the line says where).
Every case runs the real command in a subprocess, on the scripted model.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import EXAMPLE_PLAY, REPO, JsonHandler, run_cli, serve
from faultserver import FaultServer, respond

SCRIPTED = ("--model", "scripted", "--window", "400", "--max-cu-tokens", "40")
EVAL = ("--model", "scripted", "--window", "1024")
ENV = {**os.environ, "COLUMNS": "200", "OPENAI_API_KEY": "", "OPENAI_BASE_URL": ""}


class World:
    """The files the cases read, made once for the module."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._fresh = itertools.count(1)
        self.story = self.write("story.txt", " ".join(f"Sentence number {i} tells of event {i} in the story." for i in range(60)))
        self.code = self.write("module.py", "".join(f"def f{i}(x):\n    return x + {i}\n" for i in range(50)))
        self.empty = self.write("empty.txt", "")
        self.blank = self.write("blank.txt", "  \n\t\n ")
        self.nul = self.write("nul.bin", b"abc\x00def" * 10)
        self.noise = self.write("noise.bin", bytes(range(128, 256)) * 20)

        tasks = (REPO / "src" / "coa" / "prompts" / "tasks.yaml").read_text()
        self.write("prompts-zero/tasks.yaml", tasks.replace("max_tokens: 64", "max_tokens: 0", 1))
        self.write("prompts-negative/tasks.yaml", tasks.replace("max_tokens: 1024", "max_tokens: -5"))
        self.write("prompts-list/tasks.yaml", tasks.replace(
            "requirement: Write only the next line of code, nothing else.", "requirement: [one, two]"))
        self.write("prompts-latin1/tasks.yaml", tasks.encode() + "# caf\xe9\n".encode("latin-1"))
        # The evidence worker: the prompt a question's first call loads by default.
        self.write("prompts-system/coa/evidence-worker.yaml", "system: [not, a, text]\nuser: '{{ chunk }} {{ query }}'\n")
        self.write("prompts-malformed/coa/evidence-worker.yaml", "system: hello\nuser: '{{ chunk '\n")

        self.data = root / "data"
        shutil.copytree(REPO / "tests" / "fixtures" / "data", self.data)
        (self.data / "books").mkdir()
        shutil.copy(EXAMPLE_PLAY, self.data / "books" / "macbeth.txt")

        good = [{"id": f"q{i}", "context": f"Item {i} is stored in box {i * 7}. " * 20, "input": f"Where is item {i}?",
                 "answers": [f"box {i * 7}"]} for i in range(3)]
        self.good = self.jsonl("good.jsonl", good)
        self.jsonl("list-row.jsonl", [good[0], ["a", "list"]])
        self.jsonl("string-row.jsonl", ["just text"])
        self.jsonl("bad-kind.jsonl", [{**good[0], "kind": "poetry"}])
        self.jsonl("bad-metric.jsonl", [{**good[0], "metric": "bleu"}])
        self.jsonl("number-context.jsonl", [{**good[0], "context": 12345}])
        self.jsonl("list-choices.jsonl", [{**good[0], "choices": "ABCD"}])
        self.jsonl("no-answers.jsonl", [{"context": "Ann is 30.", "input": "How old is Ann?"}])
        self.jsonl("duplicate-ids.jsonl", [good[0], good[0]])
        self.jsonl("no-context.jsonl", [{"input": "Q?", "answers": ["a"]}])
        self.write("empty.jsonl", "\n")
        self.write("latin1.jsonl", json.dumps(good[0]).encode() + b"\n" + '{"context": "caf\xe9"}\n'.encode("latin-1"))
        self.write("not-json.jsonl", "{context: oops}\n")

        # Run directories that cases get copies of: a finished run, and stores coa must not touch.
        self.write("run-corrupt/results.sqlite", b"this is not a database, " * 100)
        (root / "run-foreign").mkdir()
        foreign = sqlite3.connect(root / "run-foreign" / "results.sqlite")
        foreign.execute("CREATE TABLE notes (text TEXT)")
        foreign.execute("INSERT INTO notes VALUES ('mine')")
        foreign.commit()
        foreign.close()
        self.write("run-zero/results.sqlite", b"")
        done = run_cli("eval", "--dataset", f"jsonl:{self.good}", "--strategies", "vanilla", *EVAL, "--out", root / "run-good")
        assert done.returncode == 0, done.stderr.decode()
        self.rows = stored(root / "run-good")

    def write(self, name: str, content: str | bytes) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path

    def jsonl(self, name: str, rows: list) -> Path:
        return self.write(name, "".join(json.dumps(r) + "\n" for r in rows))

    def fresh(self) -> Path:
        """A directory path that does not exist yet."""
        return self.root / f"out-{next(self._fresh)}"

    def copy(self, run: str) -> Path:
        """A case's own copy of run directory `run-<run>`, so that what one case does cannot show up in another."""
        return shutil.copytree(self.root / f"run-{run}", self.fresh())


def stored(run_dir: Path) -> dict:
    db = sqlite3.connect(run_dir / "results.sqlite")
    try:
        return {(e, s): (t, err) for e, s, t, err in db.execute("SELECT example, strategy, finished_at, error FROM results")}
    finally:
        db.close()


def finished(run_dir: Path) -> int:
    """Pairs stored so far by a run that may still be creating its store."""
    try:
        return len(stored(run_dir)) if (run_dir / "results.sqlite").exists() else 0
    except sqlite3.OperationalError:
        return 0


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    return World(tmp_path_factory.mktemp("bad-input"))


@dataclass(frozen=True)
class Case:
    name: str
    args: Callable[[World], list]
    message: str  # in the error line
    code: int = 2
    check: Callable[[World, list], None] | None = None  # what was kept, or not left behind
    progress: bool = False  # the run started: progress lines may come before the error line
    stdout: bool = False  # the command printed its output before failing


def run_dir(args: list) -> Path:
    return Path(args[args.index("--out") + 1] if "--out" in args else args[1])


def kept(run: str):
    """The case's copy of `run-<run>` holds what it held: the same rows, or for a store that is
    not a results store, the same bytes."""
    def check(w: World, args: list) -> None:
        if run == "good":
            assert stored(run_dir(args)) == w.rows
        else:
            assert (run_dir(args) / "results.sqlite").read_bytes() == (w.root / f"run-{run}" / "results.sqlite").read_bytes()

    return check


def nothing_created(w: World, args: list) -> None:
    assert not (run_dir(args) / "results.sqlite").exists()


def no_trace_left(w: World, args: list) -> None:
    assert not Path(args[args.index("--trace") + 1]).exists()


def no_store_left(w: World, args: list) -> None:
    assert not Path(args[args.index("--store") + 1]).exists()


def ask(*more):
    """`coa ask` on the story with the scripted model; `more` may hold functions of the World."""
    return lambda w: ["ask", w.story, "Q?", *SCRIPTED, *(m(w) if callable(m) else m for m in more)]


def evaluate(*more, dataset=None):
    """`coa eval` of vanilla over the good JSONL (or `dataset`) into a new directory, unless `more` says --out."""
    def args(w: World) -> list:
        rest = [m(w) if callable(m) else m for m in more]
        out = [] if "--out" in rest else ["--out", w.fresh()]
        return ["eval", "-d", dataset or f"jsonl:{w.good}", "-s", "vanilla", *EVAL, *out, *rest]

    return args


def niah(*opts: str):
    return evaluate("--data-dir", lambda w: w.data, "--opt", "haystack=books", *(x for o in opts for x in ("--opt", o)),
                    dataset="niah")


def jsonl(name: str):
    return lambda w: evaluate(dataset=f"jsonl:{w.root / name}")(w)


def prompts(name: str):
    return ("--prompts-dir", lambda w: w.root / name)


def copy(run: str):
    return ("--out", lambda w: w.copy(run))


CASES = [
    # ask, summarize, complete: the document
    Case("ask-missing-file", lambda w: ["ask", w.root / "missing.txt", "Q?", *SCRIPTED], "no such file"),
    Case("ask-directory", lambda w: ["ask", w.root, "Q?", *SCRIPTED], "is a directory"),
    Case("ask-empty-file", lambda w: ["ask", w.empty, "Q?", *SCRIPTED], "the document is empty"),
    Case("summarize-blank-file", lambda w: ["summarize", w.blank, *SCRIPTED], "the document is empty"),
    Case("complete-binary-file", lambda w: ["complete", w.nul, *SCRIPTED], "looks binary"),
    Case("ask-not-utf8", lambda w: ["ask", w.noise, "Q?", *SCRIPTED], "mostly not UTF-8"),
    Case("ask-blank-question", lambda w: ["ask", w.story, "  ", *SCRIPTED], "needs a question"),
    Case("ask-one-choice", ask("-c", "only"), "2 to 26 choices"),
    # ask, summarize, complete: settings
    Case("ask-window-too-small", ask("--window", "100", "--trace", lambda w: w.root / "small.json"), "too small",
         check=no_trace_left),
    Case("ask-unknown-model", lambda w: ["ask", w.story, "Q?", "--model", "nonsense"], "unknown model 'nonsense'"),
    Case("ask-missing-gguf", lambda w: ["ask", w.story, "Q?", "--model", "gguf:/no/such.gguf"], "no GGUF file"),
    Case("ask-unknown-strategy", ask("-s", "fastest"), "unknown strategy 'fastest'"),
    Case("ask-unknown-option", ask("-o", "depth=3"), "no option 'depth'"),
    Case("ask-bad-option-value", ask("-o", "order=sideways"), "'sideways' is not one of"),
    Case("ask-option-without-value", ask("-o", "order"), "expected key=value"),
    Case("ask-window-below-range", lambda w: ["ask", w.story, "Q?", "--window", "5"], "--window"),
    Case("ask-negative-temperature", ask("--temperature", "-1"), "--temperature"),
    Case("ask-nan-temperature", ask("--temperature", "nan"), "'--temperature': must be a finite number"),
    Case("ask-answer-tokens-below-floor", ask("--max-answer-tokens", "8"), "'--max-answer-tokens': 8 is not in the range x>=16"),
    Case("summarize-inf-temperature", lambda w: ["summarize", w.story, *SCRIPTED, "--temperature", "inf"],
         "'--temperature': must be a finite number"),
    Case("ask-missing-question", lambda w: ["ask", w.story], "give a question"),
    Case("summarize-unknown-flag", lambda w: ["summarize", w.story, "--frobnicate"], "No such option"),
    Case("unknown-command", lambda w: ["frobnicate"], "No such command"),
    Case("lm-eval-unknown-strategy", lambda w: ["lm-eval", "--", "--model", "coa", "--model_args", "strategy=fastest,model=scripted",
                                                "--tasks", "longbench_coa_tiny", "--include_path",
                                                Path(__file__).parent / "fixtures" / "lm_eval"], "unknown strategy 'fastest'"),
    Case("ask-auto-unknown-candidate", ask("-s", "auto", "-o", "candidates=vanilla,fastest"),
         "option candidates: fastest; choose from vanilla, rag, coa"),
    Case("lm-eval-unknown-task", lambda w: ["lm-eval", "--", "--model", "coa", "--model_args", "model=scripted",
                                            "--tasks", "no_such_task"], "Tasks not found: no_such_task"),
    Case("multipath-zero-paths", ask("-s", "coa-multipath", "-o", "paths=perm", "-o", "n=0"), "option n must be 1 to 16"),
    Case("multipath-too-many-paths", ask("-s", "coa-multipath", "-o", "n=100000"), "option n must be 1 to 16"),
    Case("multipath-nan-temperature", ask("-s", "coa-multipath", "-o", "paths=sample", "-o", "sample_temperature=nan"),
         "option sample_temperature must be a finite number"),
    # ask, summarize, complete: where things are written and read from
    Case("ask-trace-dir-missing", ask("--trace", lambda w: w.root / "no" / "t.json"), "does not exist"),
    Case("ask-trace-is-directory", ask("--trace", lambda w: w.root), "is a directory"),
    Case("ask-trace-under-proc", ask("--trace", "/proc/coa-trace.json"), "--trace /proc/coa-trace.json: cannot write"),
    Case("summarize-trace-under-sys", lambda w: ["summarize", w.story, *SCRIPTED, "--trace", "/sys/coa-trace.json"],
         "--trace /sys/coa-trace.json: cannot write"),
    Case("ask-prompts-dir-missing", ask(*prompts("nowhere")), "no such directory"),
    Case("ask-prompt-malformed", ask(*prompts("prompts-malformed")), "is malformed"),
    Case("ask-prompt-system-not-text", ask(*prompts("prompts-system")), "coa/evidence-worker.yaml is malformed"),
    Case("ask-max-tokens-zero", ask(*prompts("prompts-zero")), "max_tokens must be a positive whole number, not 0"),
    Case("summarize-max-tokens-negative", lambda w: ["summarize", w.story, *SCRIPTED, "--prompts-dir", w.root / "prompts-negative"],
         "max_tokens must be a positive whole number, not -5"),
    Case("complete-requirement-not-text", lambda w: ["complete", w.code, *SCRIPTED, "--prompts-dir", w.root / "prompts-list"],
         "requirement must be a text"),
    Case("ask-tasks-yaml-not-utf8", ask(*prompts("prompts-latin1")), "tasks.yaml is not UTF-8"),
    # eval: the command and its directory
    Case("eval-unknown-dataset", evaluate(dataset="squad"), "unknown dataset 'squad'"),
    Case("eval-unknown-strategy", evaluate("-s", "fastest"), "unknown strategy 'fastest'"),
    Case("eval-no-strategies", evaluate("-s", ","), "at least one strategy"),
    Case("eval-unknown-dataset-option", niah("colour=red"), "has no option colour"),
    Case("eval-nan-temperature", evaluate("--temperature", "nan", *copy("good"), "--resume"),
         "'--temperature': must be a finite number", check=kept("good")),
    Case("eval-out-is-a-file", evaluate("--out", lambda w: w.story), "is a file"),
    Case("eval-out-under-proc", evaluate("--out", "/proc/coa-run"), "--out /proc/coa-run: cannot create"),
    Case("eval-corrupt-store", evaluate(*copy("corrupt")), "not a coa results store (file is not a database)",
         check=kept("corrupt")),
    Case("eval-foreign-sqlite", evaluate(*copy("foreign")), "not a coa results store (it has tables notes and no results)",
         check=kept("foreign")),
    Case("eval-already-holds-results", evaluate(*copy("good")), "already holds results", check=kept("good")),
    Case("eval-resume-changed-window", evaluate(*copy("good"), "--resume", "--window", "2048"), "window differ",
         check=kept("good")),
    Case("eval-rerun-unknown-strategy", evaluate(*copy("good"), "--rerun", "coa"), "--rerun names coa", check=kept("good")),
    Case("eval-resume-nothing", evaluate("--resume"), "holds no run to resume (leave out --resume", check=nothing_created),
    Case("eval-rerun-nothing", evaluate("--rerun", "vanilla"), "holds no run to resume (leave out --rerun", check=nothing_created),
    Case("eval-resume-other-dataset", evaluate(*copy("good"), "--resume", "--data-dir", lambda w: w.data, dataset="qmsum"),
         "holds no run of qmsum to resume", check=kept("good")),
    Case("eval-data-dir-missing", evaluate("--data-dir", lambda w: w.root / "nowhere", dataset="qmsum"), "not found"),
    Case("eval-every-pair-fails", evaluate("-s", "coa", "--window", "100"),
         "all 3 pairs failed; first error: window 100 is too small", code=1, progress=True, stdout=True),
    # eval: the dataset's rows
    Case("jsonl-missing", jsonl("missing.jsonl"), "no such JSONL file"),
    Case("jsonl-not-json", jsonl("not-json.jsonl"), "not-json.jsonl:1: not JSON"),
    Case("jsonl-no-context", jsonl("no-context.jsonl"), "no-context.jsonl:1: no 'context' or 'document' field"),
    Case("jsonl-row-is-a-list", jsonl("list-row.jsonl"), "list-row.jsonl:2: expected a JSON object, not a list"),
    Case("jsonl-row-is-a-string", jsonl("string-row.jsonl"), "string-row.jsonl:1: expected a JSON object, not a string"),
    Case("jsonl-unknown-kind", jsonl("bad-kind.jsonl"), "bad-kind.jsonl:1: unknown kind 'poetry'"),
    Case("jsonl-unknown-metric", jsonl("bad-metric.jsonl"), "bad-metric.jsonl:1: unknown metric 'bleu'"),
    Case("jsonl-context-not-text", jsonl("number-context.jsonl"), "number-context.jsonl:1: 'context' must be a text"),
    Case("jsonl-choices-not-list", jsonl("list-choices.jsonl"), "list-choices.jsonl:1: 'choices' must be a list of texts"),
    Case("jsonl-no-answers", jsonl("no-answers.jsonl"), "no-answers.jsonl:1: no 'answers' field"),
    Case("jsonl-duplicate-ids", jsonl("duplicate-ids.jsonl"), "duplicate-ids.jsonl: example id 'q0' is used twice"),
    Case("jsonl-empty", jsonl("empty.jsonl"), "empty.jsonl has no examples"),
    Case("jsonl-not-utf8", jsonl("latin1.jsonl"), "latin1.jsonl:2: not UTF-8"),
    Case("niah-lengths-not-numbers", niah("lengths=abc"), "lengths='abc' is not valid: expected comma-separated token counts"),
    Case("niah-negative-length", niah("lengths=1000,-5"), "lengths='1000,-5' is not valid"),
    Case("niah-depth-above-one", niah("depths=0,1.5"), "depths='0,1.5' is not valid: expected comma-separated fractions from 0 to 1"),
    Case("niah-depth-below-zero", niah("depths=-0.1"), "depths='-0.1' is not valid"),
    Case("niah-no-keys", niah("variant=multikey", "keys=0"), "keys='0' is not valid: expected 1 to 400"),
    Case("niah-zero-per-cell", niah("per_cell=0"), "per_cell='0' is not valid"),
    Case("niah-unknown-variant", niah("variant=triple"), "variant='triple' is not valid: expected single or multikey"),
    Case("niah-length-below-needle", niah("lengths=10"), "niah length 10 leaves no room for text"),
    Case("qmsum-unknown-queries", evaluate("--data-dir", lambda w: w.data, "--opt", "queries=some", dataset="qmsum"),
         "queries must be specific, general or all"),
    Case("hotpotqa-zero-length", evaluate("--data-dir", lambda w: w.data, "--opt", "length=0", dataset="hotpotqa"),
         "length='0' is not valid"),
    # report
    Case("report-no-store", lambda w: ["report", w.root], "no results.sqlite here"),
    Case("report-is-a-file", lambda w: ["report", w.story], "is a file"),
    Case("report-corrupt-store", lambda w: ["report", w.copy("corrupt")], "not a coa results store", check=kept("corrupt")),
    Case("report-foreign-sqlite", lambda w: ["report", w.copy("foreign")], "not a coa results store", check=kept("foreign")),
    Case("report-empty-store", lambda w: ["report", w.copy("zero")], "holds no results", check=kept("zero")),
    # batch: the corpus, read before anything is written
    Case("batch-missing-corpus", lambda w: ["batch", w.root / "missing.jsonl", "--out", w.fresh(), *SCRIPTED],
         "missing.jsonl: no such JSONL file", check=nothing_created),
    Case("batch-row-not-json", lambda w: ["batch", w.root / "not-json.jsonl", "--out", w.fresh(), *SCRIPTED],
         "not-json.jsonl:1: not JSON", check=nothing_created),
    Case("batch-row-is-a-list", lambda w: ["batch", w.root / "list-row.jsonl", "--out", w.fresh(), *SCRIPTED],
         "list-row.jsonl:2: expected a JSON object, not a list", check=nothing_created),
    # serve: its keys, checked before it listens or opens its store
    Case("serve-blank-key", lambda w: ["serve", "--model", "scripted", "--api-key", " ", "--store", w.fresh() / "s.sqlite"],
         "an empty or blank key is refused", check=no_store_left),
    Case("serve-key-file-missing", lambda w: ["serve", "--model", "scripted", "--api-key-file", w.root / "keys.txt",
                                              "--store", w.fresh() / "s.sqlite"],
         "keys.txt: cannot read (No such file or directory)", check=no_store_left),
    # strategies, models, datasets: they take no input but their name
    Case("strategies-extra-argument", lambda w: ["strategies", "coa"], "Got unexpected extra argument (coa)"),
    Case("models-unknown-flag", lambda w: ["models", "--all"], "No such option '--all'"),
    Case("datasets-unknown-flag", lambda w: ["datasets", "--json"], "No such option '--json'"),
    Case("longbench2-no-choice", evaluate(dataset=f"longbench2:{Path(__file__).parent / 'fixtures' / 'longbench2_no_choice_c.jsonl'}"),
         "longbench2_no_choice_c.jsonl:1: no 'choice_C' field"),
    Case("leval-every-row-judged", evaluate("--data-dir", Path(__file__).parent / "fixtures" / "leval_judged", dataset="leval:judged"),
         "judged.jsonl: evaluation 'LLM' has no automatic metric, and every question has it; choose one with --opt metric="),
]


@pytest.fixture(scope="module")
def outcomes(world, request) -> dict[str, tuple[list[str], subprocess.CompletedProcess]]:
    """The selected cases' commands, run a few at a time (each is a process of its own, mostly waiting
    on imports), as (arguments, result) by case name."""
    params = [getattr(item, "callspec", None) for item in request.session.items]
    selected = {p.params["case"].name for p in params if p is not None and isinstance(p.params.get("case"), Case)}

    def one(case: Case):
        args = [str(a) for a in case.args(world)]
        try:
            return case.name, (args, run_cli(*args, timeout=300))
        except subprocess.TimeoutExpired as e:  # that case fails, the others still run
            return case.name, (args, e)

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(pool.map(one, [c for c in CASES if c.name in selected]))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(world, outcomes, case):
    args, result = outcomes[case.name]
    assert not isinstance(result, Exception), result
    err = result.stderr.decode()
    assert "Traceback" not in err, err
    assert result.returncode == case.code, err
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0] == lines[-1], err
    assert case.message in errors[0], err
    if not case.progress:
        assert len(lines) == 1, err
    if not case.stdout:
        assert result.stdout == b"", result.stdout
    if case.check:
        case.check(world, args)


class WorldStub:
    """Enough of a World for reading the command of a case."""

    def __getattr__(self, name):
        return Path("/stub") / name

    def fresh(self):
        return Path("/stub/out")

    def copy(self, run):
        return Path("/stub/out")


def test_cases_cover_every_command():
    """Every command of the CLI, as its click group lists them, so that a new one cannot be forgotten."""
    from coa.cli import cli

    commands = {c.args(WorldStub())[0] for c in CASES}
    assert set(cli.commands) >= {"ask", "batch", "eval", "report", "serve"}  # the group is the whole CLI
    assert set(cli.commands) <= commands, f"no bad-input case for: {sorted(set(cli.commands) - commands)}"
    assert len(CASES) >= 40


def test_a_failed_eval_does_not_block_the_corrected_command(world):
    out = world.fresh()
    common = ["eval", "-d", "qmsum", "-s", "vanilla", *EVAL, "--out", out]
    failed = run_cli(*common, "--data-dir", world.root / "nowhere")
    assert failed.returncode == 2 and "not found" in failed.stderr.decode()
    corrected = run_cli(*common, "--data-dir", world.data)
    assert corrected.returncode == 0, corrected.stderr.decode()
    assert len(stored(out)) > 0


def test_every_pair_failing_keeps_the_errors(world):
    out = world.fresh()
    result = run_cli("eval", "-d", f"jsonl:{world.good}", "-s", "coa", "--model", "scripted", "--window", "100", "--out", out)
    assert result.returncode == 1
    rows = stored(out)
    assert len(rows) == 3 and all("too small" in error for _, error in rows.values())
    assert "| coa |" in result.stdout.decode()  # the table shows the errors
    # Retrying the failed pairs runs them again in place: still three rows, still failing, still exit code 1.
    again = run_cli("eval", "-d", f"jsonl:{world.good}", "-s", "coa", "--model", "scripted", "--window", "100", "--out", out,
                    "--resume", "--retry-errors")
    assert again.returncode == 1 and "all 3 pairs failed" in again.stderr.decode()
    assert stored(out).keys() == rows.keys()


def read_only(directory: Path, *args: str) -> subprocess.CompletedProcess:
    """`coa *args` for which `directory` cannot be written: by its mode, or for root (whom modes do
    not stop) by a read-only bind mount in a private mount namespace."""
    if os.geteuid() != 0:
        paths = [directory, *directory.iterdir()]
        modes = {p: p.stat().st_mode for p in paths}
        for p in paths:
            p.chmod(0o555 if p.is_dir() else 0o444)
        try:
            return run_cli(*args)
        finally:
            for p, mode in modes.items():
                p.chmod(mode)
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
    command = ["unshare", "--mount", "sh", "-c", script, str(directory)]
    if not shutil.which("unshare") or subprocess.run([*command, "true"], capture_output=True).returncode != 0:
        pytest.skip("running as root without a way to make a directory read-only (unshare --mount failed)")
    return subprocess.run([*command, sys.executable, "-m", "coa", *map(str, args)], capture_output=True, env=ENV, timeout=120)


def unsearchable(directory: Path, *args) -> subprocess.CompletedProcess:
    """`coa *args` for which `directory` may be neither searched nor read (mode 000); for root, whom
    modes do not stop, run without the capabilities that let it pass them (setpriv)."""
    command = [sys.executable, "-m", "coa", *map(str, args)]
    if os.geteuid() == 0:
        drop = ["setpriv", "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search"]
        if not shutil.which("setpriv") or subprocess.run([*drop, "true"], capture_output=True).returncode != 0:
            pytest.skip("running as root, whom file modes do not stop, without setpriv to drop that privilege")
        command = [*drop, *command]
    mode = directory.stat().st_mode
    directory.chmod(0)
    try:
        return subprocess.run(command, capture_output=True, env=ENV, timeout=120)
    finally:
        directory.chmod(mode)


@pytest.mark.parametrize("where", ["t.json", "sub/t.json"], ids=["in-it", "below-it"])
def test_trace_in_a_directory_that_may_not_be_searched(world, where):
    locked = world.fresh()
    (locked / "sub").mkdir(parents=True)
    trace = locked / where
    result = unsearchable(locked, "ask", world.story, "Q?", *SCRIPTED, "--trace", trace)
    err = result.stderr.decode()
    assert result.returncode == 2 and "Traceback" not in err and result.stdout == b"", err
    assert err.strip().splitlines() == [f"error: --trace {trace}: cannot write (Permission denied)"], err
    assert sorted(p.name for p in locked.rglob("*")) == ["sub"]


@pytest.mark.parametrize("given", [True, False], ids=["trace", "no-trace"])
def test_a_failed_run_keeps_its_calls_and_says_where(tmp_path, given):
    """A run that fails after some calls keeps them (in --trace, else in the temporary directory)
    and names the file in its one error line, whatever the failure."""
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    trace = tmp_path / "trace.json"
    refusal = respond(400, {"error": {"message": "unsupported parameter", "type": "invalid_request_error"}})
    with FaultServer() as server:
        server.inject(refusal, when=lambda request: "too long to show" in request.prompt, times=None)  # the manager's
        result = subprocess.run(
            [sys.executable, "-m", "coa", "ask", long_story(tmp_path), "What happened?", "--model", "openai:m",
             "--base-url", server.base_url, "--window", "400", "--max-cu-tokens", "40", *(["--trace", trace] if given else [])],
            capture_output=True, env={**ENV, "TMPDIR": str(temporary)}, cwd=tmp_path, timeout=300)
        workers = len(server.received()) - 1
    err = result.stderr.decode()
    assert result.returncode == 2 and "Traceback" not in err and result.stdout == b"", err
    lines = err.strip().splitlines()
    assert [line for line in lines if line.startswith("error: ")] == lines[-1:], err
    partials = list(temporary.glob("coa-partial-*.json"))
    assert partials == ([] if given else partials[:1]), partials
    saved = trace if given else partials[0]
    assert lines[-1].startswith("error: the model server at ") and "answered HTTP 400" in lines[-1], err
    assert lines[-1].endswith(f"; the {workers} calls made are in {saved}"), err
    partial = json.loads(saved.read_text())
    assert "unsupported parameter" in partial["error"] and workers >= 3
    assert [c["role"] for c in partial["calls"]] == ["worker"] * workers
    assert not list(tmp_path.glob("coa-partial-*"))  # nothing in the current directory


def test_report_on_a_read_only_run_directory(world):
    directory = world.copy("good")
    before = sorted(p.name for p in directory.iterdir())
    result = read_only(directory, "report", directory)
    err = result.stderr.decode()
    assert result.returncode == 2 and "Traceback" not in err, err
    [line] = err.strip().splitlines()
    assert line.startswith(f"error: cannot write the report files in {directory} (") and line.endswith("; the tables are on stdout only")
    assert "| vanilla |" in result.stdout.decode()  # the tables were printed all the same
    assert sorted(p.name for p in directory.iterdir()) == before
    figures = read_only(directory, "report", directory, "--json")
    assert figures.returncode == 2 and json.loads(figures.stdout)[0]["strategy"] == "vanilla"


class SlowChat(JsonHandler):
    """An OpenAI-style chat endpoint that takes a while per call and counts the answered calls."""

    answered = 0

    def do_POST(self):
        body = self.read_json()
        if not self.path.endswith("/chat/completions"):
            return self.reply(404, {"detail": "Not Found"})
        time.sleep(0.2)
        SlowChat.answered += 1
        answer = body["messages"][-1]["content"].split()[-1]
        self.reply(200, {"choices": [{"message": {"content": answer}, "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": 50, "completion_tokens": 1}})

    def do_GET(self):
        self.reply(404, {"detail": "Not Found"})


def interrupt(args: list, signum: int, ready: Callable[[], bool], cwd: Path, env: dict | None = None) -> tuple[int, str]:
    """Start `coa *args`, send `signum` once `ready()`, and return its exit code and stderr."""
    # A shell that runs a script in the background starts it with SIGINT ignored, and Python
    # then installs no Ctrl-C handler: give the child the default, as a terminal would.
    process = subprocess.Popen([sys.executable, "-m", "coa", *map(str, args)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, env={**ENV, **(env or {})}, cwd=cwd,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    err = []
    reader = threading.Thread(target=lambda: err.append(process.stderr.read()), daemon=True)
    reader.start()
    deadline = time.monotonic() + 60
    while not ready() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    assert process.poll() is None, "the command ended before it could be interrupted"
    process.send_signal(signum)
    code = process.wait(timeout=60)
    reader.join(timeout=10)
    return code, err[0].decode()


def long_story(tmp_path: Path) -> Path:
    path = tmp_path / "long.txt"
    path.write_text(" ".join(f"Sentence number {i} tells of event {i} in the story." for i in range(400)))
    return path


@pytest.mark.parametrize("signum, code, word", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")])
def test_a_signal_keeps_the_partial_trace_in_the_trace_file(tmp_path, signum, code, word):
    trace = tmp_path / "trace.json"
    with serve(SlowChat) as url:
        start = SlowChat.answered
        returncode, err = interrupt(
            ["summarize", long_story(tmp_path), "--model", "openai:slow", "--base-url", url, "--window", "400",
             "--max-cu-tokens", "40", "--trace", trace], signum, lambda: SlowChat.answered - start >= 3, tmp_path)
    assert returncode == code and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: {word}") and str(trace) in last, err
    assert sum(line.startswith("error: ") for line in err.splitlines()) == 1, err
    partial = json.loads(trace.read_text())
    assert len(partial["calls"]) >= 2 and partial["error"].startswith(word)  # the call in flight is lost
    assert all(c["role"] == "worker" for c in partial["calls"])


def test_sigterm_without_trace_writes_the_partial_trace_in_the_temporary_directory(tmp_path):
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    with serve(SlowChat) as url:
        start = SlowChat.answered
        returncode, err = interrupt(
            ["ask", long_story(tmp_path), "What happened?", "--model", "openai:slow", "--base-url", url, "--window", "400",
             "--max-cu-tokens", "40"], signal.SIGTERM, lambda: SlowChat.answered - start >= 3, tmp_path,
            env={"TMPDIR": str(temporary)})
    assert returncode == 143, err
    [saved] = list(temporary.glob("coa-partial-*.json"))
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: terminated (SIGTERM); the ") and last.endswith(f"calls made are in {saved}"), err
    assert len(json.loads(saved.read_text())["calls"]) >= 2
    assert not list(tmp_path.glob("coa-partial-*"))  # nothing in the current directory


def test_sigterm_ends_an_eval_cleanly_and_it_resumes(tmp_path):
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps({"id": f"q{i}", "context": f"Item {i} is in box {i}. " * 20,
                                             "input": f"Where is item {i}?", "answers": [f"box {i}"]}) + "\n" for i in range(8)))
    out = tmp_path / "run"
    with serve(SlowChat) as url:
        args = ["eval", "-d", f"jsonl:{questions}", "-s", "vanilla", "--model", "openai:slow", "--base-url", url,
                "--window", "1024", "--out", out]
        returncode, err = interrupt(args, signal.SIGTERM, lambda: finished(out) >= 2, tmp_path)
        assert returncode == 143 and "Traceback" not in err, err
        last = err.strip().splitlines()[-1]
        assert last.startswith("error: terminated") and "--resume" in last and str(out) in last, err
        before = stored(out)
        assert 2 <= len(before) < 8
        again = run_cli(*args, "--resume")
        assert again.returncode == 0, again.stderr.decode()
    after = stored(out)
    assert len(after) == 8 and all(after[pair] == value for pair, value in before.items())
