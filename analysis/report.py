"""results/REPORT.md: the verdicts, tables and figures of every study on one page.

`render_report` is pure (study data and findings in, Markdown out); which
figure files exist is passed in, so the page never links a file that was
not built.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from .findings import FINDINGS, ComparisonResult, FindingResult, delta_text, describe, findings_for
from .load import StudyData
from .stats import CONFIDENCE
from .tables import METRICS, TABLE_METRICS, duration, spec, summary_table, to_markdown

CANONICAL = ("labels", "sampling", "boundary", "final")
FIGURE_TITLES = {
    "knn_convergence": "kNN top-1 against epoch",
    "label_dynamics": "pseudo-label NMI and label change ratio against epoch",
    "negatives_similarity": "similarity of the sampled negatives",
    "margin_sweep": "final accuracy against the margin",
}
PAPER_REFERENCE = ("Paper's reference (ResNet-50, 200 epochs, ImageNet-1k, mmselfsup 0.x model zoo): linear top-1 "
                   "InterCLR 68.04 vs MoCo v2 66.24; VOC07 SVM 85.24 vs 84.04.")
VERDICT_RULE = (
    "**Verdict rule.** Each comparison pairs the seeds two levels share and takes d = (the level the paper "
    "says is better) - (the other) on the study's metric. The finding *holds* if the {c:.0%} t-interval of "
    "the mean of d lies above 0, is *contradicted* if it lies below 0, is *equivalent within ±δ* if neither "
    "and the paired two one-sided tests (TOST, statsmodels `ttost_paired`) reject |mean d| ≥ δ at 0.05 "
    "(δ is the study file's `equivalence_delta`, default 0.5 points), and is *inconclusive at n=k seeds* "
    "otherwise (also with fewer than 2 pairs); an inconclusive comparison states its minimum detectable "
    "effect at n and the seeds a paired t-test needs to detect δ, both at 80% power from the observed paired "
    "standard deviation (statsmodels `TTestPower`). A finding tested by several comparisons holds only if all "
    "hold; it is *mixed* if some hold and others are contradicted or equivalent. The p-value is the two-sided "
    "paired t-test (scipy; Wilcoxon signed-rank added from 6 pairs on); it is shown, the interval decides. "
    "P(A > B) is the share of seeds on which the claimed-better level wins (ties count 1/2), with a seeded "
    "percentile bootstrap interval (scipy `bootstrap`), as Bouthillier et al. (MLSys 2021) recommend. "
    "A study run with `--until-decided` (seeds added where a comparison is open) is decided instead by an "
    "anytime-valid {c:.0%} confidence sequence for the mean of d (Lai's t-mixture, our own closed form in "
    "`analysis/decide.py`), which stays valid however often it is looked at; it is shown for every study. "
    "Cost: cell-hours are the summed wall time of the compared cells (a cell linked from another study "
    "counts its source's time, and is marked); wall time is the time during which at least one cell of the "
    "study ran."
).format(c=CONFIDENCE)


def safe_name(study: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in study) or "_"


def metric_label(metric: str) -> str:
    if metric == "knn_top1":
        return "final kNN top-1 (%)"
    return spec(metric).label if metric in METRICS else metric


def _num(x: float, scale: float, signed: bool = True) -> str:
    if not math.isfinite(x):
        return "-"
    v = x * scale
    v = 0.0 if round(v, 2) == 0 else v
    return f"{v:+.2f}" if signed else f"{v:.2f}"


def finding_name(f: FindingResult) -> str:
    keys = [spec.key for spec in FINDINGS]
    i = keys.index(f.spec.key) if f.spec.key in keys else -1
    return f"{i + 1}. {f.spec.title}" if f.spec.key != "method" and i >= 0 else f.spec.title


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f}" if math.isfinite(seconds) else "-"


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "-"
    return f"{seconds / 60:.1f} min" if seconds < 3600 else f"{seconds / 3600:.2f} h"


def study_wall_seconds(cells) -> float:
    """Seconds during which at least one cell trained in this study (the union of the
    cells' run intervals; linked cells trained elsewhere are left out)."""
    if cells.empty or "seconds" not in cells.columns:
        return math.nan
    own = cells[(cells["reused_from"] == "") & cells["seconds"].notna()]
    spans = sorted((float(e) / 1000 - float(s), float(e) / 1000) for s, e in zip(own["seconds"], own["end_time"]))
    total, cur_start, cur_end = 0.0, None, None
    for start, end in spans:
        if cur_end is None or start > cur_end:
            if cur_end is not None:
                total += cur_end - cur_start
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    if cur_end is not None:
        total += cur_end - cur_start
    return total


def verdict_cell(r: ComparisonResult) -> str:
    """A comparison's verdict, with the MDE and seeds needed when it is inconclusive."""
    if not r.open or not math.isfinite(r.mde):
        return r.verdict
    scale = spec(r.metric).scale
    need = f"{r.seeds_for_delta} seeds" if r.seeds_for_delta is not None else "-"
    return (f"{r.verdict} (MDE {_num(r.mde, scale, signed=False)}; ±{_num(r.delta, scale, signed=False)} "
            f"needs {need})")


# the verdict table's columns and their Markdown alignment; verdict_rows writes one cell per column
VERDICT_COLUMNS = (("Finding", "---"), ("Study", "---"), ("Finding's verdict", "---"), ("Comparison", "---"),
                   ("Metric", "---"), ("mean d", "---:"), ("95% CI of d", "---"), ("anytime-valid 95% CI", "---"),
                   ("p (paired t)", "---:"), ("n", "---:"), ("P(A > B)", "---"), ("Comparison's verdict", "---"),
                   ("cell-h", "---:"), ("wall", "---:"))


def verdict_rows(results: Sequence[FindingResult], walls: dict[str, float] | None = None) -> list[str]:
    """Rows of the verdict table: one per comparison; the finding's own verdict on its first row.

    ``walls``: study -> wall seconds (shown on the finding's first row)."""
    rows = []
    walls = walls or {}
    for f in results:
        head = f"{finding_name(f)} | {f.study} | **{f.verdict}**"
        if not f.comparisons:  # every comparison column empty, n = 0
            empty = ["0" if name == "n" else "-" for name, _ in VERDICT_COLUMNS[3:]]
            rows.append(f"| {head} | " + " | ".join(empty) + " |")
            continue
        for j, r in enumerate(f.comparisons):
            c = r.comparison
            scale = spec(r.metric).scale
            p = f"{c.p_value:.3g}" if math.isfinite(c.p_value) else "-"
            ci = f"[{_num(c.ci_low, scale)}, {_num(c.ci_high, scale)}]" if math.isfinite(c.ci_low) else "-"
            cs = f"[{_num(r.cs_low, scale)}, {_num(r.cs_high, scale)}]" if math.isfinite(r.cs_low) else "(-inf, inf)"
            imp = r.improvement
            pi = f"{imp.p:.2f} [{imp.ci_low:.2f}, {imp.ci_high:.2f}]" if imp is not None and math.isfinite(imp.p) \
                else "-"
            hours = _hours(r.cell_seconds) + (f" ({r.reused} linked)" if r.reused else "")
            wall = _duration(walls.get(f.study, math.nan)) if j == 0 else ""
            what = f" ({r.what})" if r.what else ""
            lead = head if j == 0 else " |  | "
            rows.append(f"| {lead} | {r.better} - {r.worse}{what} | {metric_label(r.metric)} | "
                        f"{_num(c.mean_diff, scale)} | {ci} | {cs} | {p} | {c.n} | {pi} | {verdict_cell(r)} | "
                        f"{hours} | {wall} |")
    return rows


def _missing_text(data: StudyData) -> str:
    if data.missing.empty:
        return "Missing or failed cells: none."
    items = []
    for _, m in data.missing.iterrows():
        status = "not in the store" if m["status"] == "NOT IN STORE" else f"{m['status']}, run {m['run_id'][:8]}"
        items.append(f"{m['level']} seed {m['seed']} ({status})")
    return f"Missing or failed cells ({len(items)}), left out of every number: " + "; ".join(items) + "."


def _excluded_text(data: StudyData) -> str | None:
    if data.excluded is None or data.excluded.empty:
        return None
    items = [f"{e['level']} seed {e['seed']} (run {e['run_id'][:8]}: {e['reason']})"
             for _, e in data.excluded.iterrows()]
    return f"Finished cells left out ({len(items)}): " + "; ".join(items) + "."


def _cells_text(data: StudyData) -> str:
    seeds = sorted(set(data.cells["seed"]))
    secs = data.cells["seconds"].fillna(0.0).sum() if "seconds" in data.cells.columns else math.nan
    rule = ("seeds added until decided (anytime-valid confidence sequence)" if data.stopping == "sequential"
            else "fixed seeds (t-interval)")
    return (f"Cells: {len(data.cells)} finished, {len(data.levels)} levels, seeds {', '.join(map(str, seeds))}; "
            f"preset {data.preset or 'unknown'}; primary metric {metric_label(data.metric)}; "
            f"equivalence region {delta_text(data.equivalence_delta, data.metric)}; {rule}. "
            f"Cost: {_hours(secs)} cell-hours, wall {_duration(study_wall_seconds(data.cells))}.")


def _counts(values) -> str:
    counts: dict[str, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return ", ".join(f"`{k}`: {n}" for k, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def provenance_text(data: StudyData) -> str:
    """Which code and data the counted cells come from; several commits or digests are named."""
    c = data.cells
    commits = [("unknown" if not x or x == "unknown" else x[:7] + ("+dirty" if d == "true" else ""))
               for x, d in zip(c["git_commit"], c["git_dirty"])]
    digests = [d[:12] if d and d != "unknown" else "unknown" for d in c["dataset_digest"]]
    n_c, n_d = len(set(commits)), len(set(digests))
    code = (f"cells from {n_c} commits ({_counts(commits)})" if n_c > 1 else f"commit `{commits[0]}`")
    data_part = (f"cells from {n_d} dataset digests ({_counts(digests)})" if n_d > 1
                 else f"dataset digest `{digests[0]}`")
    return f"Code: {code}; data: {data_part}."


def cost_text(data: StudyData) -> str:
    """The study's total compute: the counted cells' CPU (and GPU) time and wall time (``cost_*`` metrics),
    and the study's wall time summed over its invocations (the parent's ``study_wall_s``)."""
    c = data.cells
    if not np.isfinite(c["cost_cpu_s"]).any():
        return "Compute: not recorded."
    cpu, wall = float(np.nansum(c["cost_cpu_s"])), float(np.nansum(c["cost_wall_s"]))
    gpu = float(np.nansum(c["cost_gpu_s"])) if np.isfinite(c["cost_gpu_s"]).any() else 0.0
    out = f"Compute: {duration(cpu)} CPU time" + (f" ({cpu / 3600:.2f} CPU-h)" if cpu >= 36 else "")
    if gpu > 0:
        out += f", {duration(gpu)} GPU time" + (f" ({gpu / 3600:.2f} GPU-h)" if gpu >= 36 else "")
    out += f" over the {len(c)} cells, {duration(wall)} of cell wall time"
    if math.isfinite(data.study_wall_s):
        out += f"; the study took {duration(data.study_wall_s)} wall time"
    return out + "."


def _comparison_line(r: ComparisonResult) -> str:
    what = f" ({r.what}: {metric_label(r.metric)})" if r.what else f" ({metric_label(r.metric)})"
    cost = f"; cost {_hours(r.cell_seconds)} cell-h" + (f", {r.reused} cells linked from other studies"
                                                         if r.reused else "")
    return f"- {describe(r)}{cost}{what}: **{r.verdict}**"


def study_section(data: StudyData, results: Sequence[FindingResult], figures: Sequence[str]) -> list[str]:
    d = safe_name(data.study)
    out = [f"## Study `{data.study}`" + (f": {finding_name(results[0])}" if results else ""), ""]
    if not data.found:
        return out + [f"No experiment named `{data.study}` in the store: not run yet.", ""]
    if data.empty:
        out += ["No finished cells: nothing to tabulate.", _missing_text(data), ""]
        return out
    out += [_cells_text(data), "", provenance_text(data) + " " + cost_text(data), "", _missing_text(data), ""]
    if (ex := _excluded_text(data)) is not None:
        out += [ex, ""]
    for f in results:
        out += [f"Paper's claim: {f.spec.claim}.", "", f"**Verdict: {f.verdict}.**", ""]
        out += [_comparison_line(r) for r in f.comparisons] + [""]
    table = summary_table(data.cells, data.levels, TABLE_METRICS)
    out += [to_markdown(table).rstrip("\n"), ""]
    out.append(f"Mean ± std over seeds, 95% t-interval, best mean in bold. Tables: [md]({d}/summary.md) · "
               f"[tex]({d}/summary.tex) · [csv]({d}/summary.csv)")
    if "method" in data.factors:
        out += ["", PAPER_REFERENCE]
    out.append("")
    for stem in figures:
        title = FIGURE_TITLES.get(stem, stem)
        out += [f"![{title}]({d}/{stem}.png)", f"*{title}* ([pdf]({d}/{stem}.pdf))", ""]
    return out


def render_report(studies: Sequence[StudyData], figures: dict[str, Sequence[str]],
                  ablation_md: str | None = None) -> str:
    """The whole page. ``figures`` maps a study name to the stems of its figures that exist."""
    results = {s.study: findings_for(s) for s in studies}
    lines = ["# InterCLR study report", "",
             "Rebuilt from the MLflow store by `python -m analysis` (no training). Every number comes from "
             "finished cell runs; a cell logged twice counts once (its latest finished run). Accuracies are in %, "
             "± is the standard deviation over seeds, intervals are 95% t-intervals.", "",
             VERDICT_RULE, "", "## Verdicts", "",
             "| " + " | ".join(name for name, _ in VERDICT_COLUMNS) + " |",
             "|" + "|".join(align for _, align in VERDICT_COLUMNS) + "|"]
    all_results = [f for s in studies for f in results[s.study]]
    tested = {f.spec.key for f in all_results}
    all_results += [FindingResult(spec, "-", (), f"not run: no study in the store varies `{spec.factor}`")
                    for spec in FINDINGS if spec.key not in tested]
    walls = {s.study: study_wall_seconds(s.cells) for s in studies}
    lines += (verdict_rows(all_results, walls) if all_results
              else ["| - | - | no study run | - | - | - | - | - | - | 0 | - | - | - | - |"])
    lines.append("")
    if ablation_md:
        lines += ["## Ablation across the three factors", "", ablation_md.rstrip("\n"), "",
                  "Tables: [md](ablation.md) · [tex](ablation.tex) · [csv](ablation.csv)", ""]
    for s in studies:
        lines += study_section(s, results[s.study], figures.get(s.study, ()))
    return "\n".join(lines).rstrip("\n") + "\n"


def existing_figures(out_dir: Path, study: str, stems: Sequence[str] = tuple(FIGURE_TITLES)) -> list[str]:
    d = out_dir / safe_name(study)
    return [s for s in stems if (d / f"{s}.png").is_file()]
