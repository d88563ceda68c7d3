"""The paper's findings as paired comparisons with a verdict (rule: analysis.stats).

Each finding names the factor whose study tests it and the levels to
compare, picked by their params (not by their labels, which studies may
spell differently): the claimed-better level first, so a positive paired
difference is what the paper says.

The findings themselves (factor, compared levels) are :mod:`analysis.claims`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from . import decide
from .load import DEFAULT_DELTA, StudyData
from .stats import (CONFIDENCE, HOLDS, CONTRADICTED, PairedComparison, combine_verdicts, equivalent, inconclusive,
                    paired_compare, verdict)
from .claims import (FINDINGS, ComparisonSpec, FindingSpec, Selector, level_where, most_stringent_cosine,  # noqa: F401
                     selector_text, unformable)
from .tables import spec

@dataclass(frozen=True)
class ComparisonResult:
    better: str
    worse: str
    metric: str
    what: str
    seeds: tuple[int, ...]
    comparison: PairedComparison | None
    verdict: str
    delta: float = DEFAULT_DELTA  # equivalence region +-delta, metric units
    tost_p: float = math.nan  # paired TOST p-value for |d| >= delta
    mde: float = math.nan  # minimum detectable effect at n (80% power, observed paired sd)
    seeds_for_delta: int | None = None  # seeds a paired t-test needs to detect delta (80% power)
    improvement: decide.Improvement | None = None  # P(better > worse) over seeds, bootstrap interval
    cs_low: float = -math.inf  # anytime-valid 95% confidence sequence of mean d
    cs_high: float = math.inf
    rule: str = "fixed"  # "fixed": the verdict comes from the t-interval; "sequential": from the sequence
    cell_seconds: float = math.nan  # wall seconds of the cells compared (both levels, paired seeds)
    reused: int = 0  # of those cells, how many were linked from another study

    @property
    def open(self) -> bool:
        """Still undecided (the adaptive loop adds seeds to its levels)."""
        return self.verdict.startswith("inconclusive")


@dataclass(frozen=True)
class FindingResult:
    spec: FindingSpec
    study: str
    comparisons: tuple[ComparisonResult, ...]
    verdict: str


# --------------------------------------------------------------------------- evaluation


def paired_values(cells: pd.DataFrame, better: str, worse: str, metric: str
                  ) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """Values of ``metric`` for the two levels on the seeds both have a finite value for."""
    a = cells[cells["level"] == better].set_index("seed")[metric]
    b = cells[cells["level"] == worse].set_index("seed")[metric]
    seeds = tuple(int(s) for s in sorted(set(a.index) & set(b.index))
                  if math.isfinite(a.loc[s]) and math.isfinite(b.loc[s]))
    return a.loc[list(seeds)].to_numpy(dtype=float), b.loc[list(seeds)].to_numpy(dtype=float), seeds


def delta_text(delta: float, metric: str) -> str:
    """The equivalence region as it reads in a verdict: "±0.50 pts" for accuracies."""
    s = spec(metric)
    unit = " pts" if s.scale == 100.0 else ""
    return f"±{delta * s.scale:.{s.decimals}f}{unit}"


def sequential_verdict(low: float, high: float, n: int, delta: float, metric: str) -> str:
    """The verdict of the anytime-valid interval (same words as the fixed-n rule)."""
    d = decide.interval_decision(low, high, delta)
    if d == "holds":
        return HOLDS
    if d == "contradicted":
        return CONTRADICTED
    if d == "equivalent":
        return equivalent(delta_text(delta, metric))
    return inconclusive(n)


def _cost(cells: pd.DataFrame, levels: Sequence[str], seeds: Sequence[int]) -> tuple[float, int]:
    if "seconds" not in cells.columns:
        return math.nan, 0
    sel = cells[cells["level"].isin(list(levels)) & cells["seed"].isin(list(seeds))]
    reused = int((sel["reused_from"] != "").sum()) if "reused_from" in sel.columns else 0
    return float(sel["seconds"].fillna(0.0).sum()), reused


def evaluate_comparison(cells: pd.DataFrame, cmp: ComparisonSpec, metric: str, delta: float = DEFAULT_DELTA,
                        rule: str = "fixed") -> ComparisonResult | None:
    """None when the study lacks one of the two levels (nothing to compare).

    ``rule``: "fixed" decides by the t-interval and the TOST (a study run at its
    fixed seeds); "sequential" by the anytime-valid confidence sequence (a study
    whose seeds were added until decided, where a fixed-n interval is not valid).
    """
    better, worse = cmp.better(cells), cmp.worse(cells)
    metric = cmp.metric or metric
    if better is None or worse is None or better == worse:
        return None
    a, b, seeds = paired_values(cells, better, worse, metric)
    c = paired_compare(a, b)
    tost = decide.tost_pvalue(a, b, delta)
    cs_low, cs_high = decide.confidence_sequence(np.asarray(c.diffs))
    if rule == "sequential":
        v = sequential_verdict(cs_low, cs_high, c.n, delta, metric)
    else:
        v = verdict(c, tost, delta_text(delta, metric))
    seconds, reused = _cost(cells, (better, worse), seeds)
    return ComparisonResult(
        better, worse, metric, cmp.what, seeds, c, v, delta=delta, tost_p=tost,
        mde=decide.minimum_detectable_effect(c.std_diff, c.n), seeds_for_delta=decide.seeds_needed(delta, c.std_diff),
        improvement=decide.probability_of_improvement(a, b), cs_low=cs_low, cs_high=cs_high, rule=rule,
        cell_seconds=seconds, reused=reused)


def findings_for(data: StudyData) -> list[FindingResult]:
    """The finding the study file names, else every finding whose factor this study varies (usually one)."""
    out = []
    for f in FINDINGS:
        if f.factor not in data.factors or (data.finding and f.key != data.finding):
            continue
        results = []
        crossed = len(data.factors) > 1  # level_where would take one stratum of the other factors
        if not data.empty and not crossed:
            results = [r for c in f.comparisons
                       if (r := evaluate_comparison(data.cells, c, data.metric, data.equivalence_delta,
                                                    data.stopping))]
        if not data.found:
            v = "not run"
        elif data.empty:
            v = "not run: no finished cells"
        elif crossed:
            v = (f"not tested: the study crosses {', '.join(data.factors)}, and a comparison of one factor's "
                 f"levels would take one stratum of the others (run one factor per study)")
        elif not results and not data.missing.empty:
            v = f"not tested yet: the study is incomplete ({len(data.missing)} cells missing)"
        elif not results:
            v = "not tested: the study lacks the levels to compare"
        else:
            v = combine_verdicts([r.verdict for r in results], [r.comparison.n for r in results])
        out.append(FindingResult(f, data.study, tuple(results), v))
    return out


def describe(r: ComparisonResult, scale: float = 100.0, unit: str = " pts") -> str:
    """One line a person can read: difference, interval, p-value, n."""
    c = r.comparison
    if c is None or c.n == 0:
        return f"{r.better} vs {r.worse}: no paired seeds"
    if r.metric in ("nmi", "ari"):
        scale, unit = 1.0, ""
    d = f"{c.mean_diff * scale:+.2f}{unit}"
    ci = (f"95% CI [{c.ci_low * scale:+.2f}, {c.ci_high * scale:+.2f}]"
          if math.isfinite(c.ci_low) else "95% CI undefined")
    p = f"paired t p={c.p_value:.3g}" if math.isfinite(c.p_value) else "paired t p undefined"
    if c.wilcoxon_p is not None:
        p += f", Wilcoxon p={c.wilcoxon_p:.3g}"
    out = f"{r.better} - {r.worse}: {d}, {ci}, {p}, n={c.n} seed{'s' if c.n != 1 else ''}"
    return out + "; " + "; ".join(decision_details(r, scale, unit))


def _amount(x: float, scale: float, unit: str, signed: bool = False) -> str:
    if not math.isfinite(x):
        return "undefined" if not math.isinf(x) else ("+inf" if x > 0 else "-inf")
    return f"{x * scale:{'+' if signed else ''}.2f}{unit}"


def decision_details(r: ComparisonResult, scale: float = 100.0, unit: str = " pts") -> list[str]:
    """The numbers behind a verdict beyond the interval: the anytime-valid interval, the equivalence
    test, the MDE and seeds needed, and P(A > B) with its bootstrap interval."""
    c = r.comparison
    out = []
    cs = (f"[{_amount(r.cs_low, scale, '', True)}, {_amount(r.cs_high, scale, '', True)}]"
          if math.isfinite(r.cs_low) else "the whole line")
    out.append(f"anytime-valid {CONFIDENCE:.0%} interval {cs}" + (" (decides)" if r.rule == "sequential" else ""))
    if math.isfinite(r.tost_p):
        out.append(f"TOST p={r.tost_p:.3g} for ±{_amount(r.delta, scale, unit)}")
    if math.isfinite(r.mde):
        need = f"{r.seeds_for_delta} seeds" if r.seeds_for_delta is not None else "undefined"
        out.append(f"MDE at n={c.n}: {_amount(r.mde, scale, unit)} (80% power); "
                   f"to detect ±{_amount(r.delta, scale, unit)}: {need}")
    if r.improvement is not None and math.isfinite(r.improvement.p):
        imp = r.improvement
        out.append(f"P({r.better} > {r.worse}) = {imp.p:.2f} [{imp.ci_low:.2f}, {imp.ci_high:.2f}]")
    return out


def finding_keys() -> Sequence[str]:
    return tuple(f.key for f in FINDINGS)
