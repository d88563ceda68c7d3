"""A study's hypotheses decided from its cells: one typed verdict each, with the numbers behind it.

:func:`evaluate_study` resolves the study's hypotheses (:mod:`analysis.hypotheses`) on its design,
computes each part's per-seed contrast values from the finished cells, and decides the study's
family of units by the rule of :mod:`analysis.stats` (Holm across the family at fixed seeds) or,
for a study run with ``--until-decided``, by the running intersection of the repeated confidence
intervals of its group-sequential design (:mod:`analysis.decide`: looks at the file's seeds, then
2 more per look, up to the planned ``max_seeds``) at ``0.05 / (parts in the family)`` each, keeping
the first decision of each unit. Pure: a StudyData in, results out.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import pandas as pd

from . import decide
from .hypotheses import HypothesisError, HypothesisSpec, Part, Unit, resolve
from .load import StudyData, metric_column
from .stats import (ALPHA, CONFIDENCE, NOT_RUN, PairedComparison, Verdict, against_equivalence_p, combine_parts,
                    contrast_compare, family_verdicts, part_verdict, unit_evidence, verdict_text)
from .tables import metric_label, spec

_CODE_VERDICT = {decide.OPEN: Verdict.INCONCLUSIVE, decide.HOLDS_CODE: Verdict.HOLDS,
                 decide.CONTRADICTED_CODE: Verdict.CONTRADICTED, decide.EQUIVALENT_CODE: Verdict.EQUIVALENT}


@dataclass(frozen=True)
class PartResult:
    part: Part
    seeds: tuple[int, ...]  # the seeds with a value, in the order they were added
    comparison: PairedComparison
    tost_p: float  # paired TOST p for |mean d| >= delta
    against_p: float  # p of |mean d| > delta (a claim of equality)
    mde: float  # minimum detectable effect at n (80% power, observed sd)
    seeds_for_delta: int | None  # seeds a t-test needs to detect delta (80% power)
    improvement: decide.Improvement  # P(d > 0) over seeds, bootstrap interval
    cs_low: float  # running intersection of the sequential interval (the study's design), at the family's level
    cs_high: float
    verdict: Verdict  # the part's own verdict at 0.05, before the family's adjustment
    cell_seconds: float  # wall seconds of the cells it compares at those seeds
    reused: int  # of those cells, how many were linked from another study
    steps: tuple["PartResult", ...] = ()

    @property
    def metric(self) -> str:
        return self.part.metric

    @property
    def label(self) -> str:
        return self.part.label


@dataclass(frozen=True)
class UnitResult:
    unit: Unit
    parts: tuple[PartResult, ...]
    verdict: Verdict
    p_adjusted: float  # fixed rule: the Holm-adjusted p that decided (or failed to)
    decided_at: int | None  # sequential rule: the seeds at which the verdict was reached
    rule: str  # "fixed" or "sequential"
    n: int  # seeds every part has
    cs_alpha: float  # the level of each part's sequential interval (0.05 / parts in the family)
    cost_s: float = math.nan  # cell-seconds of its levels' cells at the seeds that decided it (all, when open)

    @property
    def open(self) -> bool:
        """Still undecided, in the primary family: the adaptive loop adds seeds to its levels."""
        return self.verdict is Verdict.INCONCLUSIVE and self.unit.primary

    @property
    def text(self) -> str:
        return verdict_text(self.verdict, self.n, delta_text(self.unit.delta, self.parts[0].metric)
                            if self.parts else "±delta")


@dataclass(frozen=True)
class HypothesisResult:
    spec: HypothesisSpec
    study: str
    units: tuple[UnitResult, ...]
    verdict: Verdict
    why: str = ""  # for a hypothesis not run: why

    @property
    def text(self) -> str:
        if self.verdict is NOT_RUN:
            return verdict_text(NOT_RUN, why=self.why)
        if len(self.units) == 1:
            return self.units[0].text
        n = min(u.n for u in self.units)
        delta = self.units[0].unit.delta
        return verdict_text(self.verdict, n, delta_text(delta, self.units[0].parts[0].metric))


def delta_text(delta: float, metric: str) -> str:
    """The equivalence region as it reads in a verdict: "±0.50 pts" for accuracies."""
    s = spec(metric)
    unit = " pts" if s.scale == 100.0 else ""
    return f"±{delta * s.scale:.{s.decimals}f}{unit}"


def seed_order(seeds, planned: Sequence[int] | None) -> list[int]:
    """``seeds`` in the order the adaptive loop adds them: the study's planned seeds in file order, then
    max + 1, max + 2, ... (study.adaptive.seed_sequence); every seed when nothing is planned: ascending."""
    seeds = list(seeds)
    if not planned:
        return sorted(seeds)
    top = max(planned)
    pos = {s: i for i, s in enumerate(planned)}
    return sorted(seeds, key=lambda s: (0, pos[s]) if s in pos else (1, (s - top - 1) % 2**32))


def _table(cells: pd.DataFrame, metric: str) -> dict[str, dict[int, float]]:
    col = metric_column(metric)
    if col not in cells.columns:
        return {}
    out: dict[str, dict[int, float]] = {}
    for level, seed, value in zip(cells["level"], cells["seed"], cells[col].to_numpy(dtype=float)):
        if math.isfinite(value):
            out.setdefault(level, {})[int(seed)] = float(value)
    return out


def contrast_values(part: Part, table: dict[str, dict[int, float]], order: Sequence[int]) -> tuple[list[int], np.ndarray]:
    """(seeds, values): per seed in ``order`` that has every level the part weighs, ``sum(w * metric)``."""
    seeds, values = [], []
    for s in order:
        ys = [table.get(level, {}).get(s) for level, _ in part.weights]
        if all(y is not None for y in ys):
            seeds.append(s)
            values.append(float(sum(w * y for (_, w), y in zip(part.weights, ys))))
    return seeds, np.asarray(values, dtype=float)


def _cost(cells: pd.DataFrame, levels: Sequence[str], seeds: Sequence[int]) -> tuple[float, int]:
    if "seconds" not in cells.columns:
        return math.nan, 0
    sel = cells[cells["level"].isin(list(levels)) & cells["seed"].isin(list(seeds))]
    reused = int((sel["reused_from"] != "").sum()) if "reused_from" in sel.columns else 0
    return float(sel["seconds"].fillna(0.0).sum()), reused


def evaluate_part(part: Part, cells: pd.DataFrame, order: Sequence[int], delta: float, equivalence: bool,
                  cs_alpha: float, tables: dict | None = None, design: decide.GroupSequential | None = None
                  ) -> PartResult:
    """One part at the study's seeds. Its sequential interval: ``design``'s repeated confidence intervals
    (a study run with ``--until-decided``), else the anytime-valid confidence sequence (for the record:
    a study at fixed seeds is decided by its t-tests)."""
    table = (tables or {}).get(part.metric) or _table(cells, part.metric)
    seeds, d = contrast_values(part, table, order)
    c = contrast_compare(d)
    tost = decide.tost_pvalue(d, np.zeros_like(d), delta) if d.size else math.nan
    low, high = (decide.running_intervals(d, cs_alpha, design=design) if d.size
                 else (np.array([-math.inf]), np.array([math.inf])))
    seconds, reused = _cost(cells, part.levels, seeds)
    steps = tuple(evaluate_part(s, cells, order, delta, False, cs_alpha, tables, design) for s in part.steps)
    return PartResult(
        part, tuple(seeds), c, tost, against_equivalence_p(c, delta),
        decide.minimum_detectable_effect(c.std_diff, c.n), decide.seeds_needed(delta, c.std_diff),
        decide.probability_of_improvement(d, np.zeros_like(d)), float(low[-1]), float(high[-1]),
        part_verdict(c, tost, equivalence, delta), seconds, reused, steps)


def _sequential(unit: Unit, parts: Sequence[PartResult], cells: pd.DataFrame, order: Sequence[int], cs_alpha: float,
                tables: dict, design: decide.GroupSequential) -> tuple[Verdict, int | None, int]:
    """The unit's verdict under the sequential rule: its parts' running intervals over the seeds every
    part has, in order; the first prefix at which the conjunction is decided fixes it."""
    common = [s for s in order if all(s in p.seeds for p in parts)]
    if len(common) < 2:
        return Verdict.INCONCLUSIVE, None, len(common)
    codes = []
    for p in unit.parts:
        _, d = contrast_values(p, tables.get(p.metric) or _table(cells, p.metric), common)
        low, high = decide.running_intervals(d, cs_alpha, design=design)
        codes.append(decide.interval_codes(low, high, p.region(unit.delta), unit.equivalence))
    code, at = decide.first_decision(decide.conjunction_codes(codes)[None, :])
    verdict = _CODE_VERDICT[int(code[0])]
    return verdict, (int(at[0]) if verdict.decided else None), len(common)


def _unit_cost(unit: Unit, parts: Sequence[PartResult], cells: pd.DataFrame, order: Sequence[int],
               at: int | None) -> float:
    """Cell-seconds of the unit's levels at the first ``at`` seeds every part has (all of them when None)."""
    common = [s for s in order if all(s in p.seeds for p in parts)]
    return _cost(cells, unit.levels, common[:at] if at else common)[0]


def sequential_design(data: StudyData) -> decide.GroupSequential:
    """The group-sequential design of a study run with ``--until-decided``: its first look at the study
    file's seeds, then ``decide.BATCH`` seeds per look, up to the ``max_seeds`` it was planned with."""
    return decide.GroupSequential.planned(len(data.planned_seeds) or decide.FIRST_LOOK,
                                          data.max_seeds or decide.MAX_SEEDS)


def evaluate_study(data: StudyData) -> list[HypothesisResult]:
    """Every hypothesis of the study with its verdict (NOT_RUN, with why, when it cannot be tested yet)."""
    specs = list(data.hypotheses)
    if not specs:
        return []
    why = ("no experiment of that name in the store" if not data.found else
           "no finished cells" if data.empty else "")
    resolved, errors = [], {}
    for h in specs:
        try:
            resolved.append(resolve(h, data.design, data.metric, data.equivalence_delta))
        except (HypothesisError, KeyError) as err:  # a store whose design lost a level the hypothesis names
            errors[h.name] = f"the study's levels cannot form it ({err})"
            resolved.append(None)
    units = [u for r in resolved if r is not None for u in r.units]
    # each family keeps its own family-wise error rate: its parts divide its alpha (Bonferroni, under
    # optional stopping) and Holm runs over its units
    families = {f: [u for u in units if u.family == f] for f in dict.fromkeys(u.family for u in units)}
    family_alpha = {f: ALPHA / (sum(len(u.parts) for u in us) or 1) for f, us in families.items()}
    order = seed_order(set(data.cells["seed"]) if not data.empty else (), data.planned_seeds)
    metrics = {p.metric for u in units for p in u.parts}
    tables = {m: _table(data.cells, m) for m in metrics} if not data.empty else {}
    design = sequential_design(data) if data.stopping == "sequential" else None
    part_results = {id(u): tuple(evaluate_part(p, data.cells, order, p.region(u.delta), u.equivalence,
                                               family_alpha[u.family], tables, design)
                                 for p in u.parts) for u in units} if not data.empty else {}
    unit_results: dict[int, UnitResult] = {}
    if not data.empty:
        if data.stopping == "sequential":
            for u in units:
                # a part's own verdict is its interval's here (the t-interval is not valid under optional stopping)
                part_results[id(u)] = tuple(replace(r, verdict=_CODE_VERDICT[int(decide.interval_codes(
                    r.cs_low, r.cs_high, part.region(u.delta), u.equivalence))])
                    for part, r in zip(u.parts, part_results[id(u)]))
                a = family_alpha[u.family]
                v, at, n = _sequential(u, part_results[id(u)], data.cells, order, a, tables, design)
                unit_results[id(u)] = UnitResult(u, part_results[id(u)], v, math.nan, at, "sequential", n, a,
                                                 _unit_cost(u, part_results[id(u)], data.cells, order, at))
        else:
            for f, us in families.items():
                evidence = [unit_evidence([(p.comparison, p.tost_p, p.against_p) for p in part_results[id(u)]],
                                          u.equivalence) for u in us]
                for u, ev, (v, adj) in zip(us, evidence, family_verdicts(evidence)):
                    unit_results[id(u)] = UnitResult(u, part_results[id(u)], v, adj, None, "fixed", ev.n,
                                                     family_alpha[f], _unit_cost(u, part_results[id(u)], data.cells,
                                                                                 order, None))
    out = []
    for h, r in zip(specs, resolved):
        if r is None or why:
            out.append(HypothesisResult(h, data.study, (), NOT_RUN, why or errors.get(h.name, "")))
            continue
        results = tuple(unit_results[id(u)] for u in r.units)
        if all(u.n == 0 for u in results):
            gap = (f"the study is incomplete ({len(data.missing)} cells missing)" if not data.missing.empty
                   else "no seed has every cell it compares")
            out.append(HypothesisResult(h, data.study, results, NOT_RUN, gap))
            continue
        out.append(HypothesisResult(h, data.study, results, combine_parts([u.verdict for u in results])))
    return out


def open_units(results: Sequence[HypothesisResult]) -> list[UnitResult]:
    """The units still undecided (what the adaptive loop adds seeds for)."""
    return [u for h in results for u in h.units if u.open]


# --------------------------------------------------------------------------- words


def _amount(x: float, scale: float, unit: str, signed: bool = False) -> str:
    if not math.isfinite(x):
        return "undefined" if not math.isinf(x) else ("+inf" if x > 0 else "-inf")
    return f"{x * scale:{'+' if signed else ''}.2f}{unit}"


def part_scale(p: PartResult) -> tuple[float, str]:
    s = spec(p.metric)
    return (s.scale, " pts") if s.scale == 100.0 else (1.0, "")


def describe(p: PartResult, unit: UnitResult | None = None) -> str:
    """One line a person can read: estimate, interval, p-value, n, and what else decides."""
    c = p.comparison
    scale, unit_s = part_scale(p)
    per = f" {p.part.per}" if p.part.per else ""
    if c.n == 0:
        return f"{p.label}: no seed has every cell it compares"
    d = f"{c.mean_diff * scale:+.2f}{unit_s}{per}"
    ci = (f"{CONFIDENCE:.0%} CI [{c.ci_low * scale:+.2f}, {c.ci_high * scale:+.2f}]"
          if math.isfinite(c.ci_low) else f"{CONFIDENCE:.0%} CI undefined")
    pv = f"t-test p={c.p_value:.3g}" if math.isfinite(c.p_value) else "t-test p undefined"
    if c.wilcoxon_p is not None:
        pv += f", Wilcoxon p={c.wilcoxon_p:.3g}"
    out = f"{p.label} on {metric_label(p.metric)}: {d}, {ci}, {pv}, n={c.n} seed{'s' if c.n != 1 else ''}"
    return out + "; " + "; ".join(decision_details(p, unit))


def decision_details(p: PartResult, unit: UnitResult | None = None) -> list[str]:
    """The numbers behind a verdict beyond the interval: the sequential interval (group-sequential where it
    decides, else anytime-valid), the equivalence test,
    the MDE and seeds needed, and P(d > 0) with its bootstrap interval."""
    c = p.comparison
    scale, unit_s = part_scale(p)
    delta = p.part.region(unit.unit.delta) if unit is not None else math.nan  # a slope's: per unit of its setting
    level = 1 - (unit.cs_alpha if unit is not None else ALPHA)
    out = []
    cs = (f"[{_amount(p.cs_low, scale, '', True)}, {_amount(p.cs_high, scale, '', True)}]"
          if math.isfinite(p.cs_low) or math.isfinite(p.cs_high) else "(-inf, +inf) (too few seeds to bound it)")
    decides = unit is not None and unit.rule == "sequential"
    kind = "group-sequential" if decides else "anytime-valid"
    out.append(f"{kind} {level:.1%} interval {cs}" + (" (decides)" if decides else ""))
    per = f" {p.part.per}" if p.part.per else ""
    if math.isfinite(p.tost_p) and math.isfinite(delta):
        out.append(f"TOST p={p.tost_p:.3g} for ±{_amount(delta, scale, unit_s)}{per}")
    if math.isfinite(p.mde):
        need = f"{p.seeds_for_delta} seeds" if p.seeds_for_delta is not None else "undefined"
        out.append(f"MDE at n={c.n}: {_amount(p.mde, scale, unit_s)}{per} (80% power)"
                   + (f"; to detect ±{_amount(delta, scale, unit_s)}{per}: {need}" if math.isfinite(delta) else ""))
    if math.isfinite(p.improvement.p):
        imp = p.improvement
        out.append(f"P(d > 0) = {imp.p:.2f} [{imp.ci_low:.2f}, {imp.ci_high:.2f}]")
    return out


def with_stopping(data: StudyData, stopping: str) -> StudyData:
    return replace(data, stopping=stopping)
