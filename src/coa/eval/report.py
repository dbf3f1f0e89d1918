"""`coa report`: tables per dataset, plots, and a self-contained HTML page with a trace browser."""

from __future__ import annotations

import base64
import functools
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import jinja2

from coa.eval.audit import audit
from coa.eval.stats import RESAMPLES, bootstrap_interval
from coa.eval.store import Store
from coa.extras import require

MEANS = ("document_tokens", "calls", "prompt_tokens", "completion_tokens", "seconds")
MAX_MESSAGE_CHARS = 20_000  # per prompt shown in the trace browser; chunks at 8k windows fit


def summary(store: Store) -> list[dict[str, Any]]:
    """One entry per (dataset, strategy): pairs scored, errors, mean score (0-100) with its 95%
    bootstrap interval (score_lo, score_hi), the paired difference from the dataset's first
    strategy (baseline; delta, delta_lo, delta_hi over the delta_n examples both scored) and mean costs."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in store.rows(traces=True):  # the traces tell where evidence was lost
        groups[row["dataset"], row["strategy"]].append(row)
    order = {d: (store.config(d) or {}).get("strategies", []) for d in store.datasets()}
    baselines: dict[str, tuple[str, dict[str, float]]] = {}  # per dataset: its first strategy and scores
    entries = []
    for (dataset, strategy), rows in sorted(groups.items(), key=lambda kv: (kv[0][0], _rank(order, *kv[0]))):
        scored = [r for r in rows if r["error"] is None]
        scores = {r["example"]: r["score"] for r in scored if r["score"] is not None}  # a corpus without references has none
        entry = {"dataset": dataset, "strategy": strategy, "n": len(scored), "errors": len(rows) - len(scored),
                 "metric": rows[0]["metric"], **_mean_and_interval("score", list(scores.values()))}
        entry.update(_paired(baselines.setdefault(dataset, (strategy, scores)), strategy, scores))
        for key in MEANS:
            values = [r[key] for r in scored if r[key] is not None]
            entry[key] = round(statistics.fmean(values), 2) if values else None
        entry.update(evidence(scored))
        entries.append(entry)
    return entries


def evidence(rows: list[dict]) -> dict[str, Any]:
    """Right for the right reason, over a strategy's scored rows: the share of checked answers that
    their citations support, the mean score of supported and of unsupported answers, and the chains'
    lost evidence and manager misses (see coa.eval.audit), with the rows they are out of."""
    audits = [(row, (row.get("trace") or {}).get("audit") or audit(row.get("trace") or {}, row["refs"] or [], row["metric"]))
              for row in rows]
    checked = [(row, a) for row, a in audits if a["supported"] is not None]
    held = [a for _, a in audits if a["held"]]
    reached = [a for _, a in audits if a["held"] and not a["lost"]]

    def mean_score(supported: bool) -> float | None:
        values = [row["score"] for row, a in checked if a["supported"] is supported and row["score"] is not None]
        return _percent(statistics.fmean(values)) if values else None

    return {"checked": len(checked), "supported": sum(bool(a["supported"]) for _, a in checked),
            "score_supported": mean_score(True), "score_unsupported": mean_score(False),
            "held": len(held), "lost": sum(bool(a["lost"]) for a in held),
            "reached": len(reached), "missed": sum(bool(a["missed"]) for a in reached)}


def _mean_and_interval(name: str, values: list[float]) -> dict[str, float | None]:
    """{name, name_lo, name_hi}: the mean of `values` and its 95% bootstrap interval, x100."""
    if not values:
        return {name: None, f"{name}_lo": None, f"{name}_hi": None}
    lo, hi = bootstrap_interval(values)
    return {name: _percent(statistics.fmean(values)), f"{name}_lo": _percent(lo), f"{name}_hi": _percent(hi)}


def _paired(baseline: tuple[str, dict[str, float]], strategy: str, scores: dict[str, float]) -> dict[str, Any]:
    """The mean per-example difference from the baseline's scores, on the examples both scored."""
    name, base = baseline
    common = [example for example in base if example in scores]
    differences = [scores[e] - base[e] for e in common] if name != strategy else []
    return {"baseline": name, **_mean_and_interval("delta", differences), "delta_n": len(differences)}


def _percent(value: float) -> float:
    return round(100 * value, 2)


def _rank(order: dict[str, list[str]], dataset: str, strategy: str) -> tuple[int, str]:
    listed = order.get(dataset, [])
    return (listed.index(strategy) if strategy in listed else len(listed), strategy)


HEADER = ("strategy", "score", "95% CI", "Δ (95% CI)", "n", "errors", "supported", "score supp. / unsupp.",
          "evidence lost", "manager missed", "doc tokens", "calls", "prompt tokens", "completion tokens", "seconds")
NOTE = (f"95% CI: percentile bootstrap over the examples ({RESAMPLES} resamples, fixed seed). Δ: mean per-example "
        "difference from the dataset's first strategy over the examples both scored, with its paired bootstrap 95% CI. "
        "supported: answers whose every content word beyond the question is in a citation, of those checked "
        "(– for a strategy that does not cite), with the mean score of each group. evidence lost: rows where some "
        "worker's CU held the answer but the CU that reached the manager did not, of the rows where some CU held it; "
        "manager missed: rows where the CU that reached the manager held the answer and the answer does not, of those "
        "rows (– for strategies without a chain, and multiple-choice and summary rows).")


def sections(store: Store) -> list[dict[str, Any]]:
    """Per dataset, as text: its model, the settings it ran with and one row of `HEADER` cells per
    strategy. The markdown tables and the HTML page both show these."""
    entries = summary(store)
    result = []
    for dataset in dict.fromkeys(e["dataset"] for e in entries):
        config = store.config(dataset) or {}
        rows = [e for e in entries if e["dataset"] == dataset]
        options = " ".join(f"{k}={v}" for k, v in config.get("options", {}).items())
        settings = (
            f"window {config.get('window')}, seed {config.get('seed')}"
            f"{', options ' + options if options else ''}; metric {rows[0]['metric']} (x100); "
            f"{'Δ from ' + rows[0]['strategy'] + '; ' if len(rows) > 1 else ''}"
            f"run started {config.get('started', '?')}, version {config.get('version', '?')} ({config.get('git') or 'no git'})"
        )
        cells = [[e["strategy"], _fmt(e["score"]), _range(e["score_lo"], e["score_hi"]), _delta(e), str(e["n"]),
                  str(e["errors"]), _share(e["supported"], e["checked"]),
                  f"{_fmt(e['score_supported'])} / {_fmt(e['score_unsupported'])}" if e["checked"] else "–",
                  _share(e["lost"], e["held"]), _share(e["missed"], e["reached"]), _fmt(e["document_tokens"], 0), _fmt(e["calls"], 1), _fmt(e["prompt_tokens"], 0),
                  _fmt(e["completion_tokens"], 0), _fmt(e["seconds"], 1)]
                 for e in rows]
        result.append({"dataset": dataset, "model": config.get("model"), "settings": settings, "rows": cells})
    return result


def markdown(store: Store) -> str:
    """A markdown table per dataset, headed by what was run."""
    parts = [
        f"### {s['dataset']}\n\nmodel `{s['model']}`, {s['settings']}\n\n"
        f"| {' | '.join(HEADER)} |\n|---{'|---:' * (len(HEADER) - 1)}|\n"
        + "".join(f"| {' | '.join(cells)} |\n" for cells in s["rows"])
        for s in sections(store)
    ]
    return "\n".join([*parts, NOTE + "\n"]) if parts else "No results yet.\n"


def _share(part: int, whole: int) -> str:
    return f"{part}/{whole}" if whole else "–"


def _fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _range(lo: float | None, hi: float | None) -> str:
    return "–" if lo is None or hi is None else f"{lo:.1f}–{hi:.1f}"


def _delta(entry: dict[str, Any]) -> str:
    if entry["delta"] is None:
        return "–"
    return f"{entry['delta']:+.1f} ({_range(entry['delta_lo'], entry['delta_hi'])})"


# -- plots ---------------------------------------------------------------------------------------
def plots(store: Store, directory: Path) -> list[Path]:
    """PNG plots into `directory`: score against document length per dataset, and a depth x
    length heat map per strategy for niah."""
    matplotlib = require("matplotlib", "eval", "plotting")
    matplotlib.use("Agg")
    written = []
    for dataset in store.datasets():
        rows = [r for r in store.rows(dataset) if r["error"] is None and r["score"] is not None]
        if not rows:
            continue
        written.append(_length_plot(dataset, rows, directory))
        if dataset.startswith("niah"):
            written.extend(_heat_maps(dataset, rows, directory))
    return written


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text).strip("-")


def _length_plot(dataset: str, rows: list[dict], directory: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for strategy in dict.fromkeys(r["strategy"] for r in rows):
        points = _binned([r for r in rows if r["strategy"] == strategy])
        ax.plot([x for x, _ in points], [y for _, y in points], marker="o", label=strategy)
    ax.set_xscale("log")
    ax.set_xlabel("document length (tokens)")
    ax.set_ylabel(f"score ({rows[0]['metric']}, x100)")
    ax.set_ylim(-2, 102)
    ax.set_title(f"{dataset}: score by document length")
    ax.grid(alpha=0.3)
    ax.legend()
    path = directory / f"{_slug(dataset)}-length.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _binned(rows: list[dict]) -> list[tuple[float, float]]:
    """(length, mean score x100): by the requested length where the dataset sets one, else in
    up to five equal-count bins of the document's tokens."""
    if all("length" in r["meta"] for r in rows):
        by: dict[float, list[float]] = defaultdict(list)
        for r in rows:
            by[r["meta"]["length"]].append(r["score"])
        return [(x, 100 * statistics.fmean(v)) for x, v in sorted(by.items())]
    ordered = sorted(rows, key=lambda r: r["document_tokens"])
    size = max(1, -(-len(ordered) // 5))
    bins = [ordered[i : i + size] for i in range(0, len(ordered), size)]
    return [(statistics.fmean(r["document_tokens"] for r in b), 100 * statistics.fmean(r["score"] for r in b)) for b in bins]


def _heat_maps(dataset: str, rows: list[dict], directory: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    lengths = sorted({r["meta"]["length"] for r in rows})
    depths = sorted({r["meta"]["depth"] for r in rows})
    paths = []
    for strategy in dict.fromkeys(r["strategy"] for r in rows):
        grid = [[float("nan")] * len(lengths) for _ in depths]
        cells: dict[tuple, list[float]] = defaultdict(list)
        for r in rows:
            if r["strategy"] == strategy:
                cells[r["meta"]["depth"], r["meta"]["length"]].append(r["score"])
        for (depth, length), scores in cells.items():
            grid[depths.index(depth)][lengths.index(length)] = 100 * statistics.fmean(scores)
        fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(lengths), 1.0 + 0.55 * len(depths)))
        image = ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
        ax.set_xticks(range(len(lengths)), [f"{x:,}" for x in lengths])
        ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
        for i in range(len(depths)):
            for j in range(len(lengths)):
                if grid[i][j] == grid[i][j]:
                    ax.text(j, i, f"{grid[i][j]:.0f}", ha="center", va="center", fontsize=8)
        ax.set_xlabel("haystack length (tokens)")
        ax.set_ylabel("needle depth")
        ax.set_title(f"{dataset}: {strategy}")
        fig.colorbar(image, ax=ax, label="recall")
        path = directory / f"{_slug(dataset)}-heatmap-{_slug(strategy)}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


# -- HTML ------------------------------------------------------------------------------------------
def html_page(store: Store, images: list[Path]) -> str:
    """One self-contained page: the tables, the plots, and a browser over every pair's trace."""
    pictures = [{"name": p.stem, "png": base64.b64encode(p.read_bytes()).decode()} for p in images]
    pairs = [_browsable(r) for r in store.rows(traces=True)]
    return _templates().get_template("report.html.j2").render(
        sections=sections(store), header=HEADER, note=NOTE, pictures=pictures, pairs=pairs)


@functools.cache
def _templates() -> jinja2.Environment:
    # autoescape for every template: all that the page shows comes from runs, settings and models
    return jinja2.Environment(loader=jinja2.PackageLoader("coa.eval", "templates"), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def _browsable(row: dict) -> dict:
    """What the trace browser shows of a pair: each call's input text and output, capped in size."""
    calls = []
    for call in (row.get("trace") or {}).get("calls", []):
        text = call["messages"][-1]["content"] if call.get("messages") else ""
        calls.append({
            "role": call["role"], "index": call["index"], "path": call.get("path"), "span": call.get("span"),
            "prompt_tokens": call["prompt_tokens"], "completion_tokens": call["completion_tokens"],
            "seconds": round(call["seconds"], 2), "input": text[:MAX_MESSAGE_CHARS], "cut": len(text) > MAX_MESSAGE_CHARS,
            "output": call["output"], "cu": call.get("cu"), "note": call.get("note"),
        })
    return {"dataset": row["dataset"], "example": row["example"], "strategy": row["strategy"], "score": row["score"],
            "prediction": row["prediction"], "references": row["refs"], "error": row["error"], "calls": calls,
            "citations": (row.get("trace") or {}).get("citations", [])}

