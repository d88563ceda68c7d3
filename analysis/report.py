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

from .anova import anova, blocks, cell_means, simple_effects
from .evaluate import HypothesisResult, PartResult, UnitResult, delta_text, describe, evaluate_study, part_scale
from .hypotheses import PRIMARY, HypothesisError, resolve
from .load import StudyData
from .stats import CONFIDENCE, NOT_RUN
from .tables import (COST_COLUMNS, MECHANISM_METRICS, PROTOCOL_METRICS, PROTOCOL_SECONDS, TABLE_METRICS, difference_row,
                     duration, metric_label, spec, summary_table, to_markdown)

CANONICAL = ("labels", "sampling", "boundary", "final")
FIGURE_TITLES = {
    "knn_convergence": "kNN top-1 against epoch",
    "label_dynamics": "pseudo-label NMI and label change ratio against epoch",
    "negatives_similarity": "similarity of the sampled negatives",
    "lowshot": "low-shot linear top-1 against the labelled images per class (log axis; band: ±1 std over seeds)",
    "false_negatives": "false negatives among the sampled negatives and their class divergence from the prior, "
                       "against epoch (true classes, never seen by training)",
    "positive_quality": "precision of the inter-image positives and recall of the clusters against epoch "
                        "(true classes, never seen by training)",
    "margin_sweep": "final accuracy against the margin",
}
INTERACTION_PREFIX = "interaction_"  # interaction_<a>_x_<b>: the metric against a, one line per level of b
PAPER_REFERENCE = ("Paper's reference (ResNet-50, 200 epochs, ImageNet-1k, mmselfsup 0.x model zoo): linear top-1 "
                   "InterCLR 68.04 vs MoCo v2 66.24; VOC07 SVM 85.24 vs 84.04.")
VERDICT_RULE = (
    "**Verdict rule.** A study states its hypotheses in its file; each becomes units (one, or one per stratum "
    "with `each`) of one or more parts, and a part is a contrast whose per-seed value d is oriented so that a "
    "positive d is the claim: a paired difference (better - worse, other factors averaged within a seed), a "
    "slope on an ordered setting, or a difference of slopes (an interaction). At the study's fixed seeds, a "
    "part's p is the two-sided one-sample t-test of mean d = 0 (scipy; Wilcoxon signed-rank added from 6 seeds "
    "on), and a unit's evidence for its claim is the largest p of its parts when all point the claimed way "
    "(every part must hold), against it the smallest p of a part pointing the other way times the number of "
    "parts. Across the study's units these are adjusted by Holm's procedure (statsmodels): a unit whose "
    "adjusted p is below 0.05 *holds* (a claim of equality: is *equivalent*) or is *contradicted*; otherwise it "
    "is *equivalent within ±δ* when the Holm-adjusted paired two one-sided tests (TOST, statsmodels) reject "
    "|mean d| ≥ δ for every part (δ: the hypothesis's `delta`, else the study's `equivalence_delta`, default "
    "0.5 points), and *inconclusive at n=k seeds* otherwise. With one unit of one part this is: *holds* if the "
    "{c:.0%} t-interval of mean d lies above 0, *contradicted* if below. An inconclusive part states its minimum "
    "detectable effect at n and the seeds a t-test needs to detect δ (80% power, statsmodels `TTestPower`). "
    "P(d > 0) is the share of seeds on which the claim's side wins (ties count 1/2), with a seeded percentile "
    "bootstrap interval (scipy), as Bouthillier et al. (MLSys 2021) recommend. A study run with "
    "`--until-decided` is decided instead by a group-sequential design planned over its looks (the file's "
    "seeds, then 2 more per look, up to its max_seeds; Hwang-Shih-DeCani alpha spending, critical values of the "
    "paired t-statistic, `analysis/decide.py`): repeated confidence intervals, each at level 0.05 / (parts in "
    "the study), so that the study's family-wise error stays at 0.05 over all its looks: the interval shown is "
    "their running intersection over the looks, which never widens, and a unit's first decision is kept. A "
    "study at fixed seeds shows the anytime-valid confidence sequence (Lai's t-mixture) for the record. Cost: cell-hours are the summed wall time "
    "of the compared cells (a cell linked from another study counts its source's time, and is marked); wall "
    "time is the time during which at least one cell of the study ran."
).format(c=CONFIDENCE)


def safe_name(study: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in study) or "_"


def _num(x: float, scale: float, signed: bool = True) -> str:
    if not math.isfinite(x):
        return "-"
    v = x * scale
    v = 0.0 if round(v, 2) == 0 else v
    return f"{v:+.2f}" if signed else f"{v:.2f}"


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


def _missing_text(data: StudyData) -> str:
    if data.missing.empty:
        return "Missing or failed cells: none."
    items = []
    for _, m in data.missing.iterrows():
        status = "not in the store" if m["status"] == "NOT IN STORE" else f"{m['status']}, run {m['run_id'][:8]}"
        items.append(f"{m['level']} seed {m['seed']} ({status})")
    return (f"Missing or failed cells ({len(items)}), left out of every number: " + "; ".join(items) + ". **The "
            "verdicts below are provisional**: they may change once these cells finish.")


def _excluded_text(data: StudyData) -> str | None:
    if data.excluded is None or data.excluded.empty:
        return None
    items = [f"{e['level']} seed {e['seed']} (run {e['run_id'][:8]}: {e['reason']})"
             for _, e in data.excluded.iterrows()]
    return f"Finished cells left out ({len(items)}): " + "; ".join(items) + "."


def _cells_text(data: StudyData) -> str:
    seeds = sorted(set(data.cells["seed"]))
    secs = data.cells["seconds"].fillna(0.0).sum() if "seconds" in data.cells.columns else math.nan
    rule = ("seeds added until decided (group-sequential design)" if data.stopping == "sequential"
            else "fixed seeds (t-interval)")
    return (f"Cells: {len(data.cells)} finished, {len(data.levels)} levels, seeds {', '.join(map(str, seeds))}; "
            f"preset {data.preset or 'unknown'}; primary metric {metric_label(data.metric)}; "
            f"equivalence region {delta_text(data.equivalence_delta, data.metric)} (a hypothesis's own delta: in its "
            f"row); {rule}. "
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


def _interval(lo: float, hi: float, scale: float, signed: bool = True) -> str:
    if not (math.isfinite(lo) or math.isfinite(hi)):
        return "(-inf, +inf)"
    return f"[{_num(lo, scale, signed)}, {_num(hi, scale, signed)}]"


def _pval(p: float) -> str:
    return f"{p:.3g}" if math.isfinite(p) else "-"


# the verdict table's columns and their Markdown alignment; verdict_rows writes one cell per column
VERDICT_COLUMNS = (("Hypothesis", "---"), ("Study", "---"), ("Verdict", "---"), ("Part", "---"), ("Metric", "---"),
                   ("estimate", "---:"), ("95% CI", "---"), ("sequential CI", "---"), ("p", "---:"),
                   ("Holm p (deciding test)", "---:"), ("n", "---:"), ("P(d > 0)", "---"), ("Part's verdict", "---"),
                   ("cell-h", "---:"), ("wall", "---:"))


def _unit_head(h: HypothesisResult, u: UnitResult | None) -> str:
    name = f"`{h.spec.name}`" + (f" [{u.unit.stratum}]" if u is not None and u.unit.stratum else "")
    return name


def verdict_rows(results: Sequence[HypothesisResult], walls: dict[str, float] | None = None) -> list[str]:
    """Rows of the verdict table: one per part; the hypothesis's verdict (or its stratum's) on its first row.

    ``walls``: study -> wall seconds (shown on a hypothesis's first row)."""
    rows = []
    walls = walls or {}
    for h in results:
        if not h.units or h.verdict is NOT_RUN:
            empty = ["0" if name == "n" else "-" for name, _ in VERDICT_COLUMNS[3:]]
            rows.append(f"| `{h.spec.name}` | {h.study} | **{h.text}** | " + " | ".join(empty) + " |")
            continue
        first = True
        for u in h.units:
            for j, p in enumerate(u.parts):
                c = p.comparison
                scale = spec(p.metric).scale
                imp = p.improvement
                pi = f"{imp.p:.2f} [{imp.ci_low:.2f}, {imp.ci_high:.2f}]" if math.isfinite(imp.p) else "-"
                hours = _hours(p.cell_seconds) + (f" ({p.reused} linked)" if p.reused else "")
                wall = _duration(walls.get(h.study, math.nan)) if first else ""
                verdict = (f"**{h.text if len(h.units) == 1 else u.text}**" if j == 0 else "")
                lead = f"{_unit_head(h, u)} | {h.study if first else ''} | {verdict}" if j == 0 else " |  | "
                holm = _pval(u.p_adjusted) if j == 0 else ""
                ci = _interval(c.ci_low, c.ci_high, scale) if math.isfinite(c.ci_low) else "-"
                rows.append(f"| {lead} | {p.label} | {metric_label(p.metric)} | {_num(c.mean_diff, scale)} | {ci} | "
                            f"{_interval(p.cs_low, p.cs_high, scale)} | {_pval(c.p_value)} | {holm} | {c.n} | {pi} | "
                            f"{p.verdict.value} | {hours} | {wall} |")
                first = False
    return rows


def cost_to_decide_lines(studies: Sequence[str], results: dict[str, list[HypothesisResult]]) -> list[str]:
    """The compute each decision took: per primary unit (the studies' own questions; a mechanism family
    adds no seeds), its verdict, the seeds that decided it, the cell-hours of its levels' cells at those
    seeds; then cell-hours per decided comparison over the report. Empty when nothing was decided."""
    rows, spent, decided = [], 0.0, 0
    for study in studies:
        for h in results.get(study, []):
            for u in h.units:
                if not u.unit.primary or not u.n:
                    continue
                seeds = u.decided_at if u.decided_at else u.n
                cost = u.cost_s if math.isfinite(u.cost_s) else 0.0
                if u.verdict.decided:
                    spent, decided = spent + cost, decided + 1
                rows.append(f"| {_unit_head(h, u)} | {study} | {u.text} | {seeds} | {_hours(cost)} |")
    if not decided:
        return []
    return ["## Cost to decide", "",
            "Cell-hours of the compared levels' cells at the seeds that decided each comparison (all its seeds "
            "while open; a rule at fixed seeds decides at its seeds).", "",
            "| Hypothesis | Study | Verdict | seeds per level | cell-h |", "|---|---|---|---:|---:|", *rows, "",
            f"**{_hours(spent)} cell-hours for {decided} decided comparison{'s' if decided != 1 else ''}: "
            f"{_hours(spent / decided)} cell-hours per decided comparison.**", ""]


def _part_lines(p: PartResult, u: UnitResult) -> list[str]:
    cost = f"; cost {_hours(p.cell_seconds)} cell-h" + (f", {p.reused} cells linked from other studies"
                                                         if p.reused else "")
    lines = [f"- {describe(p, u)}{cost}; the part's own verdict: {p.verdict.value}"]
    if p.steps:
        scale, unit = part_scale(p)
        lines += ["", "  | step | estimate | 95% CI | p | n |", "  |---|---:|---|---:|---:|"]
        for st in p.steps:
            c = st.comparison
            lines.append(f"  | {st.label} | {_num(c.mean_diff, scale)}{unit} | "
                         f"{_interval(c.ci_low, c.ci_high, scale) if math.isfinite(c.ci_low) else '-'} | "
                         f"{_pval(c.p_value)} | {c.n} |")
        lines.append("")
    return lines


def hypothesis_lines(h: HypothesisResult) -> list[str]:
    """A hypothesis's part of a study's section: its claim, its verdict, and each unit's numbers."""
    family = ("" if h.spec.family == PRIMARY else f"; family `{h.spec.family}`: its own 5% family-wise error rate, "
              "it adds no seeds")
    out = [f"### Hypothesis `{h.spec.name}` ({h.spec.kind}{family})", "", f"Claim: {h.spec.claim}.", "",
           f"**Verdict: {h.text}.**", ""]
    for u in h.units:
        if len(h.units) > 1:
            out += [f"Stratum {u.unit.stratum}: **{u.text}**" + _decided(u), ""]
        elif u.rule == "sequential" or math.isfinite(u.p_adjusted):
            out += [("Sequential rule: " if u.rule == "sequential" else "") + _decided(u).lstrip("; ") + ".", ""]
        for p in u.parts:
            out += _part_lines(p, u)
        out.append("")
    return out


def _decided(u: UnitResult) -> str:
    if u.rule == "sequential":
        return f"; decided at n={u.decided_at} seeds" if u.decided_at else f"; open at n={u.n}"
    return f"; Holm-adjusted p {_pval(u.p_adjusted)} in the study's family" if math.isfinite(u.p_adjusted) else ""


def crossed_lines(data: StudyData, results: Sequence[HypothesisResult], figures: Sequence[str]) -> list[str]:
    """A crossed study's grid: the ANOVA table, the cell means of each pair of factors, the simple effects and
    the interaction plots."""
    if data.design is None or not data.design.crossed or data.empty:
        return []
    frame = blocks(data.cells, data.design, data.metric)
    scale = spec(data.metric).scale
    seeds = sorted(set(frame["seed"])) if not frame.empty else []
    out = [f"### The grid: {' × '.join(data.design.factors)} on {metric_label(data.metric)}", "",
           f"Complete blocks (seeds with every cell of the grid): {len(seeds)} "
           f"({', '.join(map(str, seeds)) or 'none'}).", ""]
    rows = anova(frame, data.design.factors)
    if rows:
        out += ["Linear model with the seed as a block, `metric ~ C(seed) + " + " * ".join(data.design.factors)
                + "` (statsmodels OLS, type-II ANOVA; sums of squares in the metric's units²):", "",
                "| source | df | SS | F | p | partial η² |", "|---|---:|---:|---:|---:|---:|"]
        for r in rows:
            out.append(f"| {r.source} | {r.df:.0f} | {r.ss:.3g} | {_pval(r.f) if math.isfinite(r.f) else '-'} | "
                       f"{_pval(r.p)} | {r.eta_p2:.3f} |" if math.isfinite(r.eta_p2) else
                       f"| {r.source} | {r.df:.0f} | {r.ss:.3g} | - | - | - |")
        out.append("")
    else:
        out += ["ANOVA: needs at least two complete blocks.", ""]
    for a, b in zip(data.design.factors, data.design.factors[1:]) if len(data.design.factors) == 2 else             [(a, b) for i, a in enumerate(data.design.factors) for b in data.design.factors[i + 1:]]:
        means = cell_means(frame, a, b, data.design)
        cols = list(data.design.levels[b])
        out += [f"Cell means, {a} × {b} (mean over seeds [95% CI]" + (", other factors averaged" if
                                                                       len(data.design.factors) > 2 else "") + "):",
                "", f"| {a} \\ {b} | " + " | ".join(cols) + " |", "|---|" + "|".join(["---"] * len(cols)) + "|"]
        for la in data.design.levels[a]:
            cells = []
            for lb in cols:
                m = means[(la, lb)]
                cells.append("-" if m.n == 0 else f"{_num(m.mean, scale, signed=False)} "
                             f"{_interval(m.ci_low, m.ci_high, scale, False) if math.isfinite(m.ci_low) else ''}".rstrip())
            out.append(f"| {la} | " + " | ".join(cells) + " |")
        out.append("")
    simple = simple_effects(data, [h.spec for h in results])
    if simple:
        out += ["Simple effects (each pairwise hypothesis within each stratum of the other factors; p Holm-adjusted "
                "across its strata):", "", "| hypothesis | stratum | estimate | 95% CI | p | p (Holm) | n |",
                "|---|---|---:|---|---:|---:|---:|"]
        for e in simple:
            c = e.part.comparison
            sc = spec(e.part.metric).scale
            out.append(f"| `{e.hypothesis}` | {e.stratum} | {_num(c.mean_diff, sc)} | "
                       f"{_interval(c.ci_low, c.ci_high, sc) if math.isfinite(c.ci_low) else '-'} | "
                       f"{_pval(c.p_value)} | {_pval(e.p_holm)} | {c.n} |")
        out.append("")
    d = safe_name(data.study)
    for stem in figures:
        if stem.startswith(INTERACTION_PREFIX):
            title = figure_title(stem)
            out += [f"![{title}]({d}/{stem}.png)", f"*{title}* ([pdf]({d}/{stem}.pdf))", ""]
    return out


def _logged_table(data: StudyData, metrics, intro: str, always=()) -> list[str]:
    """A table per level of those of ``metrics`` the study's cells logged (none logged: no table), and
    ``always`` in front of them."""
    got = [m for m in metrics if m in data.cells.columns and data.cells[m].notna().any()]
    if not got:
        return []
    cols = [m for m in always if m in data.cells.columns] + got
    table = summary_table(data.cells, data.levels, cols).drop(columns=list(COST_COLUMNS))
    pairs = compared_pairs(data)
    extra = [difference_row(data.cells, b, w, cols) for b, w in pairs]
    note = (" Last rows: the paired (by seed) differences of the levels the study's primary hypotheses compare, "
            "with their 95% t-intervals." if pairs else "")
    return ["", intro + note, "", to_markdown(table, cols, extra=extra).rstrip("\n")]


def compared_pairs(data: StudyData) -> list[tuple[str, str]]:
    """(better, worse) level pairs of the primary hypotheses that compare two levels (one-factor contrasts)."""
    out: list[tuple[str, str]] = []
    for h in data.hypotheses:
        if h.family != PRIMARY or data.design is None:
            continue
        try:
            units = resolve(h, data.design, data.metric, data.equivalence_delta).units
        except HypothesisError:
            continue
        for p in (p for u in units for p in u.parts if p.shape == "difference"):
            w = dict(p.weights)
            if sorted(w.values()) == [-1.0, 1.0]:
                pair = (max(w, key=w.get), min(w, key=w.get))
                if pair not in out:
                    out.append(pair)
    return out


def mechanism_lines(data: StudyData) -> list[str]:
    """The table of the mechanism metrics per level (last epoch), where the study's cells logged them."""
    return _logged_table(data, MECHANISM_METRICS, (
        "Mechanisms at the last epoch, measured against the true classes (never seen by training): false negatives "
        "and class divergence (KL, nats) of the sampled negatives (`neg_*`; `queue_*`: the intra-image queue's, "
        "MoCo v2's baseline), precision of the inter-image positives and recall of the clusters. Lower is better "
        "for `*_false_ratio` and `*_kl`; best mean in bold."))


def protocol_lines(data: StudyData) -> list[str]:
    """Every benchmark protocol per level (the paper's Sec. 5 at the study's scale), where the cells ran them."""
    lines = _logged_table(data, PROTOCOL_METRICS, (
        "Every protocol (study/train/protocols.py): kNN and linear probe, low-shot linear probes with k labelled "
        "images per class (mean of a few fixed draws, the same for every cell of a seed), fine-tuning of the "
        "whole backbone on 1% and 10% of the labels; top-1 in %, best mean in bold."), always=("knn_top1",
                                                                                            "linear_top1"))
    secs = [m for m in PROTOCOL_SECONDS if m in data.cells.columns and data.cells[m].notna().any()]
    if lines and secs:
        cell = data.cells["seconds"].median() if "seconds" in data.cells.columns else math.nan
        spent = data.cells[secs].sum(axis=1).median()
        share = f", {100 * spent / cell:.0f}% of a cell's median {cell:.0f} s" if cell and math.isfinite(cell) else ""
        lines += ["", f"What the low-shot probes and fine-tunes cost a cell: median {spent:.1f} s{share}."]
    return lines


def figure_title(stem: str) -> str:
    if stem.startswith(INTERACTION_PREFIX):
        a, _, b = stem[len(INTERACTION_PREFIX):].partition("_x_")
        return f"interaction plot: the metric against {a}, one line per level of {b} (band: ±1 std over seeds)"
    return FIGURE_TITLES.get(stem, stem)


def study_section(data: StudyData, results: Sequence[HypothesisResult], figures: Sequence[str],
                  tables: bool = True) -> list[str]:
    """A study's part of REPORT.md; ``tables``: its summary tables exist beside the report (linked)."""
    d = safe_name(data.study)
    out = [f"## Study `{data.study}`" + (f": {data.description}" if data.description else ""), ""]
    if not data.found:
        return out + [f"No experiment named `{data.study}` in the store: not run yet.", ""]
    if data.empty:
        out += ["No finished cells: nothing to tabulate.", _missing_text(data), ""]
        return out
    out += [_cells_text(data), "", provenance_text(data) + " " + cost_text(data), "", _missing_text(data), ""]
    if (ex := _excluded_text(data)) is not None:
        out += [ex, ""]
    if not results:
        out += ["The study states no hypotheses (`hypotheses:` in its file): tables and figures only.", ""]
    for h in results:
        out += hypothesis_lines(h)
    out += crossed_lines(data, results, figures)
    table = summary_table(data.cells, data.levels, TABLE_METRICS)
    out += [to_markdown(table).rstrip("\n"), ""]
    out.append("Mean ± std over seeds, 95% t-interval, best mean in bold." + (
        f" Tables: [md]({d}/summary.md) · [tex]({d}/summary.tex) · [csv]({d}/summary.csv)" if tables else ""))
    out += mechanism_lines(data)
    out += protocol_lines(data)
    if tuple(data.factors) == ("method",):
        out += ["", PAPER_REFERENCE]
    out.append("")
    for stem in figures:
        if stem.startswith(INTERACTION_PREFIX):
            continue
        title = figure_title(stem)
        out += [f"![{title}]({d}/{stem}.png)", f"*{title}* ([pdf]({d}/{stem}.pdf))", ""]
    return out


def render_report(studies: Sequence[StudyData], figures: dict[str, Sequence[str]],
                  ablation_md: str | None = None, results: dict[str, list[HypothesisResult]] | None = None,
                  tables: set[str] | None = None) -> str:
    """The whole page. ``figures`` maps a study name to the stems of its figures that exist; ``tables``: the
    studies whose summary tables exist beside it (None: all)."""
    results = results if results is not None else {s.study: evaluate_study(s) for s in studies}
    lines = ["# InterCLR study report", "",
             "Rebuilt from the MLflow store by `python -m analysis` (no training). Every number comes from "
             "finished cell runs; a cell logged twice counts once (its latest finished run). Accuracies are in %, "
             "± is the standard deviation over seeds, intervals are 95% t-intervals.", "",
             VERDICT_RULE, "", "## Verdicts", "",
             "| " + " | ".join(name for name, _ in VERDICT_COLUMNS) + " |",
             "|" + "|".join(align for _, align in VERDICT_COLUMNS) + "|"]
    walls = {s.study: study_wall_seconds(s.cells) for s in studies}
    rows = [row for s in studies for row in verdict_rows(results[s.study], walls)]
    absent = [s for s in studies if s.study in CANONICAL and not results[s.study]]
    rows += [f"| - | {s.study} | **not run: " + ("no hypothesis stated" if s.found else "no experiment of this name in "
                                                "the store") + "** | "
             + " | ".join("0" if col == "n" else "-" for col, _ in VERDICT_COLUMNS[3:]) + " |" for s in absent]
    lines += rows or ["| - | - | no study run | " + " | ".join("0" if c == "n" else "-" for c, _ in VERDICT_COLUMNS[3:])
                      + " |"]
    lines.append("")
    lines += cost_to_decide_lines([s.study for s in studies], results)
    if ablation_md:
        lines += ["## Ablation across the three factors", "", ablation_md.rstrip("\n"), "",
                  "Tables: [md](ablation.md) · [tex](ablation.tex) · [csv](ablation.csv)", ""]
    for s in studies:
        lines += study_section(s, results[s.study], figures.get(s.study, ()), tables is None or s.study in tables)
    return "\n".join(lines).rstrip("\n") + "\n"


def existing_figures(out_dir: Path, study: str, stems: Sequence[str] | None = None) -> list[str]:
    """The stems of the study's figures that exist (the known ones in their order, then interaction plots)."""
    d = out_dir / safe_name(study)
    if stems is None:
        inter = sorted(p.stem for p in d.glob(f"{INTERACTION_PREFIX}*.png")) if d.is_dir() else []
        stems = list(FIGURE_TITLES) + inter
    return [s for s in stems if (d / f"{s}.png").is_file()]
