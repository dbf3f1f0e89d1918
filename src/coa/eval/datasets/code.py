"""Next-line completion over long real Python files (as LongBench's LCC): the default
source is the running interpreter's standard library."""

from __future__ import annotations

import random
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from coa.errors import InputError
from coa.eval.datasets import Example, Source, dataset
from coa.eval.datasets.text import take_tokens
from coa.task import Kind, Task

MIN_LINE_CHARS = 12  # a target line worth predicting: not a lone bracket or "else:"


def target_lines(lines: list[str], prefix_chars: int) -> list[int]:
    """Lines that are code (not blank, not a comment or docstring edge), with enough text before them."""
    result, before = [], 0
    for i, line in enumerate(lines):
        stripped = line.strip()
        if before >= prefix_chars and len(stripped) >= MIN_LINE_CHARS and not stripped.startswith(("#", '"""', "'''")):
            result.append(i)
        before += len(line)
    return result


@dataset("code", "next-line completion over long Python files (root=DIR, default: the standard library; length=N)")
def code(source: Source) -> Iterator[Example]:
    root = Path(source.option("root", sysconfig.get_paths()["stdlib"]))
    length = source.option("length", 4000, int, valid=lambda v: v > 0, expected="a token count above 0")
    if not root.is_dir():
        raise InputError(f"code root {root} is not a directory")
    files = sorted(
        p for p in root.rglob("*.py")
        if p.is_file() and p.stat().st_size > length * 5 and not {"site-packages", "dist-packages"} & set(p.parts)
    )
    random.Random(source.seed).shuffle(files)
    for path in files:
        try:
            lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        except (UnicodeDecodeError, OSError):
            continue
        rng = random.Random(f"{source.seed}/{path.relative_to(root)}")
        candidates = target_lines(lines, length * 4)
        if not candidates:
            continue
        line = rng.choice(candidates)
        prefix = take_tokens("".join(lines[:line]), length, source.count_tokens, keep="tail")
        prefix = prefix[prefix.find("\n") + 1 :] if "\n" in prefix else prefix  # start on a whole line
        yield Example(
            id=f"{path.relative_to(root)}:{line + 1}",
            task=Task(prefix, None, Kind.CODE),
            references=[lines[line].strip()],
            metric="code_sim",
            meta={"length": length, "tokens": source.count_tokens(prefix), "file": str(path.relative_to(root))},
        )
