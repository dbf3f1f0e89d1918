"""coa inside EleutherAI's lm-evaluation-harness (the [lmeval] extra).

`python -m coa.lm_eval ARGS` (or `coa lm-eval -- ARGS`) registers the model `coa` and runs
lm-eval's own CLI with ARGS, e.g.

    python -m coa.lm_eval --model coa --model_args strategy=coa,model=openai:NAME,base_url=URL \
        --tasks longbench_hotpotqa --output_path out --log_samples

The model is in `coa.lm_eval.model`, the document/question rules in `coa.lm_eval.split`.
Importing this package does not import lm-eval; `import coa` does not import this package.
"""
