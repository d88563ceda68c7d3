"""Tables: per-level summaries over seeds, as Markdown, LaTeX (booktabs) and CSV.

`summary_table` and `ablation_table` are pure (cells frame in, numbers out);
`to_markdown`, `to_latex` and `to_csv` only format them. Accuracies are
stored as fractions and shown in percent; NMI is shown as is. The best
level of each metric (highest mean) is bold.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from study.core import names

from .stats import paired_compare, summarize


@dataclass(frozen=True)
class MetricSpec:
    name: str  # column of the cells frame
    label: str  # header
    scale: float  # display multiplier (100 for accuracies stored as fractions)
    decimals: int
    better: str | None = "higher"  # which mean a table marks best ("higher", "lower"; None: none)


def _from_contract(m: names.MetricName) -> MetricSpec:
    """A per-epoch metric's display, from its entry in the store's contract (study/core/names.py)."""
    if m.unit == "fraction":
        return MetricSpec(m.name, f"{m.name} (%)", 100.0, 2, m.better)
    return MetricSpec(m.name, f"{m.name} ({m.unit})", 1.0, 3, m.better)


METRICS: dict[str, MetricSpec] = {
    **{m: MetricSpec(m, m.replace("_top1", "").replace("lowshot_", "low-shot ").replace("semisup_", "fine-tune ")
                     .replace("pct", "%") + " (%)", 100.0, 2) for m in names.PROTOCOL_METRICS},
    **{m.name: _from_contract(m) for m in names.EPOCH_METRICS},
    "knn_top1": MetricSpec("knn_top1", "kNN top-1 (%)", 100.0, 2),
    "linear_top1": MetricSpec("linear_top1", "Linear top-1 (%)", 100.0, 2),
    "nmi": MetricSpec("nmi", "NMI", 1.0, 3),
    "ari": MetricSpec("ari", "ARI", 1.0, 3),
    "knn_auc": MetricSpec("knn_auc", "mean kNN top-1 over epochs (%)", 100.0, 2),
}
# the summary tables' columns: the final accuracies and NMI, then every per-epoch metric the contract
# marks ``table=True``
TABLE_METRICS = ("knn_top1", "linear_top1", "nmi") + tuple(
    m.name for m in names.EPOCH_METRICS if m.table and m.name not in ("knn_top1", "nmi"))
# the mechanism metrics (measured against the true classes): a table of their own
MECHANISM_METRICS = tuple(m.name for m in names.EPOCH_METRICS if m.mechanism)
# the paper's other protocols (final metrics) and what they cost
PROTOCOL_METRICS, PROTOCOL_SECONDS = names.PROTOCOL_METRICS, names.PROTOCOL_SECONDS
STATS = ("mean", "std", "ci_low", "ci_high", "n")
COST_COLUMNS = ("cost_wall_s", "cost_cpu_s", "cost_gpu_s")
COST_HEADER = "Cost (sum)"


def spec(metric: str) -> MetricSpec:
    return METRICS.get(metric, MetricSpec(metric, metric, 1.0, 3, None))


def metric_label(metric: str) -> str:
    if metric == "knn_top1":
        return "final kNN top-1 (%)"
    return spec(metric).label if metric in METRICS else metric


# --------------------------------------------------------------------------- numbers


def summary_table(cells: pd.DataFrame, levels: Sequence[str], metrics: Sequence[str] = TABLE_METRICS) -> pd.DataFrame:
    """One row per level (in ``levels`` order): ``n`` finished seeds and, per metric,
    ``<m>_mean, <m>_std, <m>_ci_low, <m>_ci_high, <m>_n`` and ``<m>_best``."""
    rows = []
    for level in levels:
        sel = cells[cells["level"] == level]
        row: dict = {"level": level, "n": int(len(sel))}
        for m in metrics:
            s = summarize(sel[m].to_numpy(dtype=float) if m in sel else [])
            row.update({f"{m}_mean": s.mean, f"{m}_std": s.std, f"{m}_ci_low": s.ci_low,
                        f"{m}_ci_high": s.ci_high, f"{m}_n": s.n})
        for c in COST_COLUMNS:  # what the level's counted cells cost, summed (NaN when none logged it)
            vals = sel[c].to_numpy(dtype=float) if c in sel else np.array([])
            row[c] = float(np.nansum(vals)) if np.isfinite(vals).any() else math.nan
        rows.append(row)
    df = pd.DataFrame(rows, columns=["level", "n"] + [f"{m}_{k}" for m in metrics for k in STATS]
                      + list(COST_COLUMNS))
    for m in metrics:
        df[f"{m}_best"] = mark_best(df[f"{m}_mean"].to_numpy(dtype=float), spec(m).better)
    return df


def mark_best(means: np.ndarray, better: str | None = "higher") -> np.ndarray:
    """True where the mean is the best finite one: the highest (``better="higher"``) or the lowest
    (``"lower"``), ties all marked; nothing for a metric without a direction (``None``).

    No mark with fewer than 2 finite means or when all finite means are equal (nothing is best).
    """
    if better is None:
        return np.zeros(np.shape(means), dtype=bool)
    means = np.asarray(means, dtype=float) * (-1.0 if better == "lower" else 1.0)
    finite = np.isfinite(means)
    if finite.sum() < 2:
        return np.zeros(means.shape, dtype=bool)
    top = np.max(means[finite])
    at_top = finite & np.isclose(np.nan_to_num(means, nan=-np.inf), top, rtol=1e-9, atol=1e-12)  # float-noise ties
    if at_top.sum() == finite.sum():
        return np.zeros(means.shape, dtype=bool)
    return at_top


def difference_row(cells: pd.DataFrame, better: str, worse: str, metrics: Sequence[str] = TABLE_METRICS) -> dict:
    """Paired (by seed) difference ``better - worse`` per metric, in the columns of `summary_table`."""
    row: dict = {"level": f"{better} - {worse} (paired)"}
    a = cells[cells["level"] == better].set_index("seed")
    b = cells[cells["level"] == worse].set_index("seed")
    seeds = sorted(set(a.index) & set(b.index))
    row["n"] = len(seeds)
    for m in metrics:
        c = paired_compare(a.loc[seeds, m].to_numpy(dtype=float), b.loc[seeds, m].to_numpy(dtype=float))
        row.update({f"{m}_mean": c.mean_diff, f"{m}_std": c.std_diff, f"{m}_ci_low": c.ci_low,
                    f"{m}_ci_high": c.ci_high, f"{m}_n": c.n, f"{m}_best": False})
    return row


def ablation_table(groups: Sequence[tuple[str, pd.DataFrame, Sequence[str]]],
                   metrics: Sequence[str] = TABLE_METRICS) -> pd.DataFrame:
    """The paper-style ablation: ``groups`` = (group title, cells, level order) per study;
    the best level is marked within each group."""
    parts = []
    for title, cells, levels in groups:
        t = summary_table(cells, levels, metrics)
        t.insert(0, "group", title)
        parts.append(t)
    if not parts:
        return pd.DataFrame(columns=["group", "level", "n"])
    return pd.concat(parts, ignore_index=True)


# --------------------------------------------------------------------------- formatting


def _fmt(x: float, s: MetricSpec, signed: bool = False) -> str:
    if not math.isfinite(x):
        return "-"
    v = x * s.scale
    v = 0.0 if round(v, s.decimals) == 0 else v  # no "-0.00"
    return f"{v:+.{s.decimals}f}" if signed else f"{v:.{s.decimals}f}"


def mean_std(row: pd.Series | dict, m: str, signed: bool = False) -> str:
    s = spec(m)
    if row[f"{m}_n"] == 0:
        return "-"
    out = _fmt(row[f"{m}_mean"], s, signed)
    if math.isfinite(row[f"{m}_std"]):
        out += f" ± {_fmt(row[f'{m}_std'], s)}"
    return out


def ci(row: pd.Series | dict, m: str, signed: bool = False) -> str:
    s = spec(m)
    lo, hi = row[f"{m}_ci_low"], row[f"{m}_ci_high"]
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "-"
    return f"[{_fmt(lo, s, signed)}, {_fmt(hi, s, signed)}]"


def duration(seconds: float) -> str:
    """'45 s', '12.3 min' or '1.23 h'."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def cost_text(row: pd.Series | dict) -> str:
    """A level's cost: CPU time, plus GPU time where a GPU was used ('-' when not logged)."""
    cpu, gpu = row.get("cost_cpu_s", math.nan), row.get("cost_gpu_s", math.nan)
    parts = []
    if isinstance(gpu, float) and math.isfinite(gpu) and gpu > 0:
        parts.append(f"GPU {duration(gpu)}")
    if isinstance(cpu, float) and math.isfinite(cpu):
        parts.append(f"CPU {duration(cpu)}")
    return ", ".join(parts) or "-"


def _display(table: pd.DataFrame, metrics: Sequence[str], extra: Sequence[dict] = ()):
    """Header and rows of (text, bold) cells shared by the Markdown and LaTeX writers."""
    header = (["Group"] if "group" in table.columns else []) + ["Level", "n"]
    for m in metrics:
        header += [spec(m).label, "95% CI"]
    cost = "cost_cpu_s" in table.columns
    if cost:
        header.append(COST_HEADER)
    rows, groups = [], []
    prev = None
    for rec in list(table.to_dict("records")) + [dict(r, _diff=True) for r in extra]:
        diff = rec.get("_diff", False)
        cells = []
        if "group" in table.columns:
            g = rec.get("group", "")
            cells.append((g if g != prev else "", False))
            groups.append(g != prev and prev is not None)
            prev = g
        else:
            groups.append(diff)
        cells += [(str(rec["level"]), False), (str(int(rec["n"])), False)]
        for m in metrics:
            bold = bool(rec.get(f"{m}_best", False))
            cells += [(mean_std(rec, m, signed=diff), bold), (ci(rec, m, signed=diff), False)]
        if cost:
            cells.append(("-" if diff else cost_text(rec), False))
        rows.append(cells)
    return header, rows, groups


def to_markdown(table: pd.DataFrame, metrics: Sequence[str] = TABLE_METRICS, extra: Sequence[dict] = ()) -> str:
    """A GitHub Markdown table; best means in bold; ``extra`` rows (paired differences) appended."""
    header, rows, _ = _display(table, metrics, extra)
    n_text = len(header) - 2 * len(metrics) - (header[-1] == COST_HEADER)
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] * n_text + ["---:"] * (len(header) - n_text)) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(f"**{t}**" if b and t != "-" else t for t, b in r) + " |")
    return "\n".join(lines) + "\n"


_TEX_ESCAPE = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
               "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def tex_escape(text: str) -> str:
    out = "".join(_TEX_ESCAPE.get(ch, ch) for ch in text)
    return out.replace("±", r"$\pm$")


def to_latex(table: pd.DataFrame, metrics: Sequence[str] = TABLE_METRICS, caption: str = "", label: str = "",
             extra: Sequence[dict] = ()) -> str:
    """A booktabs table (needs ``\\usepackage{booktabs}``); best means in bold."""
    header, rows, groups = _display(table, metrics, extra)
    n_text = len(header) - 2 * len(metrics) - (header[-1] == COST_HEADER)
    lines = [r"\begin{table}[t]", r"\centering"]
    if caption:
        lines.append(r"\caption{" + tex_escape(caption) + "}")
    if label:
        lines.append(r"\label{" + label + "}")
    lines += [r"\begin{tabular}{" + "l" * (n_text - 1) + "r" + "r" * (len(header) - n_text) + "}", r"\toprule",
              " & ".join(tex_escape(h) for h in header) + r" \\", r"\midrule"]
    for r, new_group in zip(rows, groups):
        if new_group:
            lines.append(r"\midrule")
        lines.append(" & ".join(r"\textbf{" + tex_escape(t) + "}" if b and t != "-" else tex_escape(t)
                                for t, b in r) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def to_csv(table: pd.DataFrame, extra: Sequence[dict] = ()) -> str:
    """Raw numbers (fractions, not percent), fixed float format; a ``kind`` column tells
    level summaries from paired differences."""
    df = table.copy()
    df.insert(0, "kind", "level")
    if extra:
        ex = pd.DataFrame(list(extra))
        ex.insert(0, "kind", "paired difference")
        df = pd.concat([df, ex[[c for c in df.columns if c in ex.columns]]], ignore_index=True)
    for c in df.columns:
        if c.endswith("_best"):
            df[c] = df[c].fillna(False).astype(bool)
    return df.to_csv(index=False, float_format="%.6f", lineterminator="\n")
