"""`coa batch`: strategies over a corpus of documents (and questions about them), resumable."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

import click

from coa.cli.common import Interrupts, cli, fail, model_options, stderr
from coa.cli.evaluate import (
    comma_list,
    executor_options,
    largest_window,
    left_in,
    make_executor,
    run_limit_options,
    store_errors,
)
from coa.config import Config
from coa.errors import CoaError, InputError

if TYPE_CHECKING:
    from coa.eval.runner import Plan

ANSWERS = "answers.jsonl"


@cli.command()
@click.argument("corpus", metavar="IN.jsonl", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "-o", "out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Run directory: results.sqlite and answers.jsonl.")
@click.option("--strategy", "-s", "strategies", multiple=True, default=["coa"], show_default=True,
              help="Strategies, comma-separated or repeated; options after colons, e.g. coa,coa:order=rtl,vanilla.")
@click.option("--opt", "opts", multiple=True, metavar="KEY=VALUE", help="An option for every strategy (repeatable), e.g. order=rtl.")
@model_options
@run_limit_options
@click.option("--seed", type=int, default=0, show_default=True, help="Sampling seed; also seeds permutations.")
@click.option("--concurrency", "-c", type=click.IntRange(min=1), default=1, show_default=True, help="Pairs in flight at once.")
@executor_options
@click.option("--limit", "-n", type=click.IntRange(min=1), help="Use the first N rows of IN.jsonl.")
@click.option("--resume", is_flag=True,
              help="Continue a run in --out: finished pairs are skipped, pairs whose row or settings changed run again.")
@click.option("--retry-errors", is_flag=True, help="With --resume, run failed pairs again.")
@click.option("--replace", is_flag=True,
              help="Drop the results --out holds (of this corpus or another) and start over.")
def batch(corpus, out, strategies, opts, model, base_url, api_key, embed_api_key, cache, window, max_cu_tokens, temperature, timeout,
          requirement, max_calls, max_total_tokens, max_seconds, max_answer_tokens, prompts_dir, seed, concurrency, executor, ray_address, limit, resume, retry_errors,
          replace) -> None:
    """Answer every row of IN.jsonl with each strategy; results stream into OUT/results.sqlite.

    Rows are those of `coa eval --dataset jsonl:PATH` (context, input, optional answers,
    choices, kind, metric, id); a row with "questions": [...] is one task per question over
    its document, with ids ID#0, ID#1, ... OUT holds one corpus: OUT/answers.jsonl gets id,
    strategy, answer and error for every pair of IN.jsonl as it is now (its first N rows with
    --limit) finished so far."""
    from coa.eval.executors import ModelSpec
    from coa.eval.runner import Evaluation, plan, read_corpus, run, write_answers

    suffix = "".join(f":{o.strip()}" for o in opts)
    labels = [label + suffix for text in strategies for label in comma_list(text)]
    dataset = f"batch:{corpus.name}"
    config = Config(window=window, max_cu_tokens=max_cu_tokens, temperature=temperature, seed=seed, max_calls=max_calls,
                    max_total_tokens=max_total_tokens, max_seconds=max_seconds, max_answer_tokens=max_answer_tokens,
                    prompts_dir=prompts_dir, embed_api_key=embed_api_key)
    evaluation = Evaluation(dataset=dataset, strategies=labels, model=model, config=config, requirement=requirement,
                            limit=limit, concurrency=concurrency, out=out, resume=resume, retry_errors=retry_errors,
                            base_url=base_url, api_key=api_key, corpus=corpus, replace=replace)
    examples = read_corpus(corpus, limit)  # a broken row stops the command before anything is written
    spec = ModelSpec(model, window=largest_window(window, labels), base_url=base_url, api_key=api_key, timeout=timeout, cache=cache)
    answers = out / ANSWERS
    with Interrupts() as interrupts, store_errors(out):
        work = None
        try:
            runner = make_executor(executor, ray_address, concurrency, spec)
            work = plan(evaluation, lambda: examples)
            outcome = run(work, runner, console=stderr)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: every finished pair is stored; say so, and how to go on
            saved = work is not None and save_answers(work, answers)
            fail(f"{interrupts.what}; {left_in(out, dataset)}" + (f"; their answers are in {answers}" if saved else ""),
                 interrupts.exit_code)
        assert work is not None  # else fail() has exited
        try:
            write_answers(work, answers)
        except OSError as e:
            raise InputError(f"cannot write {answers} ({e.strerror}); the results are in {outcome.store.path}") from None
    click.echo(f"{outcome.summary()}; results in {outcome.store.path}, answers in {answers}")
    if outcome.all_failed:  # as with coa eval: no answer at all is not a success, though the errors are kept
        fail(f"all {outcome.ran} pairs failed; first error: {outcome.errors[0]}", 1)


def save_answers(work: Plan, path: Path) -> bool:
    """OUT/answers.jsonl from what an interrupted run stored; False where it could not be written."""
    from coa.eval.runner import write_answers

    try:
        write_answers(work, path)
        return True
    except (CoaError, sqlite3.Error, OSError):
        return False
