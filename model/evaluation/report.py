"""A temporal evaluation's outputs: ``temporal.json``, ``report.md`` and ``temporal.png`` (bpb per condition, per month)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from model.evaluation.figures import figure_png
from model.evaluation.temporal import CONDITIONS, LEAK_NGRAM, months_spanned

LOG = logging.getLogger(__name__)

JSON_FILE = "temporal.json"
REPORT_FILE = "report.md"
PLOT_FILE = "temporal.png"
COLOURS = {"none": "tab:gray", "stale": "tab:orange", "fresh": "tab:green", "control": "tab:purple", "retrained": "tab:blue",
           "prepend-none": "silver", "prepend-stale": "tab:brown", "prepend-fresh": "tab:olive"}


def _fmt(value, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _interval(ci) -> str:
    return "" if not ci else f"[{ci[0]:.4f}, {ci[1]:.4f}]"


def _minus(row: dict) -> str:
    """"− none +0.0123 [a, b]; − stale ..." from a condition's paired differences."""
    return "; ".join(f"− {twin} {d['bpb']:+.4f} {_interval(d['ci95'])}".rstrip() for twin, d in row.get("minus", {}).items()
                     if d.get("bpb") is not None)


def condition_rows(result: dict) -> list[dict]:
    """One row per condition: bpb, its interval, its paired differences, speed, what was read (the table artifact and report.md)."""
    rows = []
    for name, row in result["conditions"].items():
        rows.append({
            "condition": name,
            "index_version": result.get("versions", {}).get(name) or "",
            "bpb": row["bpb"],
            "ci95": _interval(row["ci95"]),
            f"bpb_{LEAK_NGRAM}gram_filtered": row.get(f"bpb_{LEAK_NGRAM}gram_filtered"),
            "minus": _minus(row),
            "tokens_per_s": row.get("tokens_per_s"),
            "tokens": row["tokens"],
            "docs": row["docs"],
        })
    return rows


def markdown(result: dict, plot_name: str | None = PLOT_FILE) -> str:
    """The evaluation as a readable report: conditions, the gap, overlap buckets, months, skipped lines."""
    lines = ["# Temporal evaluation", ""]
    lines.append(f"{result['documents']} documents published {result['dates']['first']} to {result['dates']['last']}, "
                 f"k = {result['k']}, 95% intervals from {result['bootstrap']} bootstrap resamples of the documents. "
                 "Neighbours from the evaluated document itself are never used.")
    if result.get("in_context_ralm"):
        ralm = result["in_context_ralm"]
        lines += ["", f"prepend-* rows are In-Context RALM: {ralm['base']}, frozen, reading the neighbours as text before up to "
                      f"{ralm['prefix_tokens']} tokens of the document's own prefix. prepend-none is that LM alone, not RETRO's none."]
    if result.get("max_tokens"):
        lines += ["", f"Each document's first {result['max_tokens']} tokens are scored."]
    lines += ["", "| condition | index version | bpb | 95% CI | paired differences (95% CI) | bpb, 13-gram leaks dropped | tokens/s | tokens | docs |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in condition_rows(result):
        lines.append(f"| {row['condition']} | {row['index_version']} | {_fmt(row['bpb'])} | {row['ci95']} | {row['minus']} | "
                     f"{_fmt(row[f'bpb_{LEAK_NGRAM}gram_filtered'])} | {_fmt(row['tokens_per_s'], 1)} | {row['tokens']} | {row['docs']} |")
    lines.append("")
    if result.get("fresh_minus_stale_bpb") is not None:
        lines.append(f"- fresh − stale: {result['fresh_minus_stale_bpb']:+.4f} bpb (paired 95% CI {_interval(result.get('fresh_minus_stale_ci95'))})")
    lines.append(f"- gap closed, (stale − fresh) / (stale − retrained): {'n/a (no retrained checkpoint)' if result.get('gap_closed') is None else result['gap_closed']}")
    if result.get("by_overlap"):
        lines += ["", "## By overlap with the neighbours (RETRO §4.4)", "",
                  "Chunks whose longest common token run with the neighbours they read is below α·64; `none` is the condition's baseline "
                  "(retrieval off, same weights: none or prepend-none) on the same chunks.", "",
                  "| α | condition | bpb | 95% CI | none bpb | share of tokens |", "| --- | --- | --- | --- | --- | --- |"]
        for bucket in result["by_overlap"]:
            for name, row in bucket["conditions"].items():
                lines.append(f"| {bucket['alpha']} | {name} | {_fmt(row['bpb'])} | {_interval(row['ci95'])} | {_fmt(row.get('none_bpb'))} | {_fmt(row['share_of_tokens'], 3)} |")
    if len(result.get("by_month", [])) > 1:
        names = list(result["conditions"])
        lines += ["", "## By month", "", "| month | docs | " + " | ".join(names) + " |", "| --- | --- | " + " | ".join("---" for _ in names) + " |"]
        for month in result["by_month"]:
            lines.append(f"| {month['month']} | {month['docs']} | " + " | ".join(_fmt(month["conditions"][n]["bpb"]) for n in names) + " |")
    skipped = {k: v for k, v in result.get("skipped", {}).items() if v}
    lines += ["", "## Skipped lines", ""]
    if skipped:
        lines += [f"- {reason.replace('_', ' ')}: {count} (lines {', '.join(map(str, result.get('skipped_lines', {}).get(reason, [])))}…)" for reason, count in skipped.items()]
    else:
        lines.append("none")
    if plot_name:
        lines += ["", f"![bpb per condition]({plot_name})"]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> bytes:
    """Bits per byte per condition with 95% intervals; a second panel per month when the dates span two months or more.

    Returns:
        The PNG's bytes (also written to ``path``).
    """
    from matplotlib.figure import Figure

    per_month = months_spanned(result) >= 2 and len(result.get("by_month", [])) >= 1
    figure = Figure(figsize=(11 if per_month else 6, 3.8), dpi=100)
    axes = figure.subplots(1, 2 if per_month else 1, squeeze=False)[0]
    names = [n for n in CONDITIONS if n in result["conditions"]]
    bpb = [result["conditions"][n]["bpb"] for n in names]
    errors = [[0, 0] if not result["conditions"][n]["ci95"] else [v - result["conditions"][n]["ci95"][0], result["conditions"][n]["ci95"][1] - v]
              for n, v in zip(names, bpb)]
    axes[0].bar(names, bpb, yerr=list(zip(*errors)) if errors else None, capsize=4, color=[COLOURS[n] for n in names])
    low = min(v - e[0] for v, e in zip(bpb, errors))
    high = max(v + e[1] for v, e in zip(bpb, errors))
    pad = max(high - low, 1e-3) * 0.5
    axes[0].set_ylim(max(0.0, low - pad), high + pad)
    axes[0].set_ylabel("bits per byte (lower is better)")
    axes[0].set_title(f"{result['documents']} documents, {result['dates']['first']} to {result['dates']['last']}", fontsize=9)
    if per_month:
        months = [m["month"] for m in result["by_month"]]
        x = list(range(len(months)))
        for name in names:
            values = [m["conditions"][name]["bpb"] for m in result["by_month"]]
            axes[1].plot(x, values, marker="o", color=COLOURS[name], label=name)
            cis = [m["conditions"][name]["ci95"] for m in result["by_month"]]
            if all(cis):
                axes[1].fill_between(x, [c[0] for c in cis], [c[1] for c in cis], color=COLOURS[name], alpha=0.15)
        axes[1].set_xticks(x, months, rotation=45, ha="right", fontsize=7)
        axes[1].set_ylabel("bits per byte")
        axes[1].set_title("per month of publication (95% intervals)", fontsize=9)
        axes[1].legend(fontsize=8)
    figure.tight_layout()
    return figure_png(figure, path)


def write_outputs(result: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write temporal.json, report.md and temporal.png into ``out_dir`` (created).

    Returns:
        The paths by kind: ``json``, ``report``, ``plot``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / JSON_FILE, "report": out / REPORT_FILE, "plot": out / PLOT_FILE}
    paths["json"].write_text(json.dumps(result, indent=2) + "\n")
    plot(result, paths["plot"])
    paths["report"].write_text(markdown(result, PLOT_FILE))
    LOG.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return paths
