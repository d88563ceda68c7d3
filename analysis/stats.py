"""Pure statistics over seeds: summaries, one-sample contrasts, and the verdict rule.

Every function here takes plain sequences of numbers and returns plain
values; nothing reads the store or the file system, so each is tested on
tiny hand-computed arrays.

A verdict is a value of :class:`Verdict`; code reads the value, never its
wording (:func:`verdict_text` writes the words). The rule, stated once here
and in the report (``VERDICT_RULE`` of analysis.report):

Every hypothesis becomes units (one, or one per stratum with ``each``), and
a unit is a conjunction of parts; a part is a contrast whose per-seed value
``d`` is oriented so that a positive value is what the hypothesis claims (a
paired difference better - worse, a slope in the claimed direction, a
difference of slopes). With a study run at its fixed seeds:

- a part's *p* is the two-sided one-sample t-test of ``mean d = 0``, its
  *TOST p* the paired two one-sided tests of ``|mean d| >= delta``
  (statsmodels), and for an equivalence claim its *p against* the test that
  ``|mean d| > delta`` (the 95% t-interval lies outside ``(-delta, delta)``);
- a unit's evidence *for* its claim is the largest p of its parts when every
  part points the claimed way (an intersection-union test: all parts must
  hold, so they need no correction among themselves), its evidence *against*
  the smallest p of a part pointing the other way times the number of parts
  (Bonferroni: any such part refutes it);
- across the study's units (its family) the smaller of the two is adjusted
  by Holm's step-down procedure (statsmodels ``multipletests``): a unit whose
  adjusted p is below 0.05 *holds* (an equivalence claim: is *equivalent*) or
  is *contradicted*; the others are *equivalent within +-delta* when their
  Holm-adjusted TOST p (the largest of their parts') is below 0.05, and
  *inconclusive at n* otherwise (also with fewer than two seeds).

With one unit of one part this is the paired rule of a t-interval: *holds* if
the 95% t-interval of mean d lies above 0, *contradicted* below 0. A study run
with ``--until-decided`` is decided instead by the repeated confidence
intervals of a group-sequential design (analysis.decide), each at level
``0.05 / (parts in the family)``.
An interval that touches 0 exactly is inconclusive. When every value of ``d``
is identical the interval has zero width; it then decides by the sign alone.
"""
from __future__ import annotations

import enum
import gc
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats as sps

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE
WILCOXON_MIN_N = 6


class Verdict(str, enum.Enum):
    """The one enumeration of verdicts (a hypothesis, a unit, a part): read by the adaptive loop,
    the report and the parent run's tags (its value)."""

    HOLDS = "holds"
    CONTRADICTED = "contradicted"
    EQUIVALENT = "equivalent"
    INCONCLUSIVE = "inconclusive"
    NOT_RUN = "not run"

    @property
    def decided(self) -> bool:
        return self in (Verdict.HOLDS, Verdict.CONTRADICTED, Verdict.EQUIVALENT)


HOLDS, CONTRADICTED, EQUIVALENT, INCONCLUSIVE, NOT_RUN = (Verdict.HOLDS, Verdict.CONTRADICTED, Verdict.EQUIVALENT,
                                                          Verdict.INCONCLUSIVE, Verdict.NOT_RUN)


@dataclass(frozen=True)
class Summary:
    """Mean, sample std (ddof=1) and the t-interval of the mean over n values."""

    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class PairedComparison:
    """``a - b`` over seeds both levels share (``diffs`` in seed order)."""

    n: int
    mean_diff: float
    std_diff: float
    ci_low: float
    ci_high: float
    t_stat: float
    p_value: float
    wilcoxon_p: float | None
    diffs: tuple[float, ...]


def _finite(values: Sequence[float]) -> np.ndarray:
    arr = np.asarray(values, dtype=float).reshape(-1)
    return arr[np.isfinite(arr)]


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Two-sided t-interval of the mean; (nan, nan) with fewer than 2 values."""
    arr = _finite(values)
    n = arr.size
    if n < 2:
        return (math.nan, math.nan)
    mean = float(arr.mean())
    half = float(sps.t.ppf(0.5 + confidence / 2, df=n - 1)) * float(arr.std(ddof=1)) / math.sqrt(n)
    return (mean - half, mean + half)


def summarize(values: Sequence[float], confidence: float = CONFIDENCE) -> Summary:
    """Summary over the finite values (NaN = a metric the cell does not have)."""
    arr = _finite(values)
    n = int(arr.size)
    mean = float(arr.mean()) if n else math.nan
    std = float(arr.std(ddof=1)) if n >= 2 else math.nan
    low, high = t_interval(arr, confidence)
    return Summary(n=n, mean=mean, std=std, ci_low=low, ci_high=high)


def paired_compare(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> PairedComparison:
    """Paired comparison of ``a`` against ``b`` (same length, index i = same seed): the one-sample
    statistics of ``a - b`` (:func:`contrast_compare`). Pairs where either value is not finite are dropped."""
    xa = np.asarray(a, dtype=float).reshape(-1)
    xb = np.asarray(b, dtype=float).reshape(-1)
    if xa.shape != xb.shape:
        raise ValueError(f"paired_compare needs equal lengths, got {xa.size} and {xb.size}")
    keep = np.isfinite(xa) & np.isfinite(xb)
    return contrast_compare(xa[keep] - xb[keep], confidence)


def contrast_compare(d: Sequence[float], confidence: float = CONFIDENCE) -> PairedComparison:
    """One-sample statistics of the per-seed contrast values ``d`` (non-finite ones dropped).

    The p-value is the two-sided t-test of ``mean d = 0`` (scipy ``ttest_1samp``, the same as the
    paired ``ttest_rel`` of a difference); the Wilcoxon signed-rank p-value is added only from
    ``WILCOXON_MIN_N`` values on (below that its smallest attainable p-value is above 0.05, so it
    can never decide).
    """
    d = _finite(d)
    n = int(d.size)
    s = summarize(d, confidence)
    t_stat = p_value = math.nan
    if n >= 2 and s.std > 0:
        res = sps.ttest_1samp(d, 0.0)
        t_stat, p_value = float(res.statistic), float(res.pvalue)
    elif n >= 2:  # all values identical: the t statistic is infinite or undefined
        p_value = 0.0 if s.mean != 0 else 1.0
        t_stat = math.copysign(math.inf, s.mean) if s.mean != 0 else math.nan
    wilcoxon_p = None
    if n >= WILCOXON_MIN_N:
        wilcoxon_p = float(sps.wilcoxon(d).pvalue) if np.any(d != 0) else 1.0
    ci_low, ci_high = s.ci_low, s.ci_high
    if n >= 2 and s.std == 0:
        ci_low = ci_high = s.mean
    return PairedComparison(
        n=n, mean_diff=s.mean, std_diff=s.std, ci_low=ci_low, ci_high=ci_high,
        t_stat=t_stat, p_value=p_value, wilcoxon_p=wilcoxon_p, diffs=tuple(float(x) for x in d),
    )


def against_equivalence_p(c: PairedComparison, delta: float) -> float:
    """p of the test that ``|mean d| > delta``: twice the one-sided t-test p of ``mean d <= delta`` (or of
    ``mean d >= -delta``, whichever side the mean lies on), at most 1; below 0.05 exactly when the 95%
    t-interval lies outside ``(-delta, delta)``. nan with fewer than two values."""
    if c.n < 2:
        return math.nan
    edge = delta if c.mean_diff >= 0 else -delta
    if not c.std_diff > 0:
        return 0.0 if abs(c.mean_diff) > delta else 1.0
    t = (c.mean_diff - edge) / (c.std_diff / math.sqrt(c.n))
    one_sided = float(sps.t.sf(abs(t), df=c.n - 1)) if abs(c.mean_diff) > delta else 1.0 - float(
        sps.t.sf(abs(t), df=c.n - 1))
    return min(1.0, 2.0 * one_sided)


def part_verdict(c: PairedComparison, tost_p: float, equivalence: bool = False, delta: float = math.nan,
                 alpha: float = ALPHA) -> Verdict:
    """A part's own verdict at level ``alpha``, without the family's adjustment (what the report shows
    beside each part): the t-interval rule of the module docstring."""
    if c.n < 2 or not math.isfinite(c.p_value):
        return INCONCLUSIVE
    if equivalence:
        if math.isfinite(tost_p) and tost_p < alpha:
            return EQUIVALENT
        return CONTRADICTED if against_equivalence_p(c, delta) < alpha else INCONCLUSIVE
    if c.p_value < alpha:
        return HOLDS if c.mean_diff > 0 else CONTRADICTED
    if math.isfinite(tost_p) and tost_p < alpha:
        return EQUIVALENT
    return INCONCLUSIVE


@dataclass(frozen=True)
class UnitEvidence:
    """What the family procedure needs of a unit (module docstring): p for and against its claim, and
    (a claim of a difference only) the TOST p of its practical equivalence; nan = no evidence."""

    p_for: float
    p_against: float
    p_equiv: float
    equivalence: bool  # the unit claims equality (its p_for is a TOST p)
    n: int


def unit_evidence(parts: Sequence[tuple[PairedComparison, float, float]], equivalence: bool) -> UnitEvidence:
    """``parts``: (comparison, TOST p, p against equivalence) of each part of one unit."""
    k = len(parts)
    n = min((c.n for c, _, _ in parts), default=0)
    if not parts or any(c.n < 2 or not math.isfinite(c.p_value) for c, _, _ in parts):
        return UnitEvidence(math.nan, math.nan, math.nan, equivalence, n)
    if equivalence:
        p_for = max(t for _, t, _ in parts)
        p_against = min(1.0, k * min(a for _, _, a in parts))
        return UnitEvidence(p_for, p_against, math.nan, True, n)
    p_for = max(c.p_value for c, _, _ in parts) if all(c.mean_diff > 0 for c, _, _ in parts) else 1.0
    against = [c.p_value for c, _, _ in parts if c.mean_diff < 0]
    p_against = min(1.0, k * min(against)) if against else 1.0
    return UnitEvidence(p_for, p_against, max(t for _, t, _ in parts), False, n)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values (statsmodels ``multipletests``); a nan stays nan and takes no share."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, math.nan)
    ok = np.isfinite(p)
    if ok.any():
        # its Holm branch ends in gc.collect(), a scan of every object of the process (0.2 s with MLflow,
        # pandas and matplotlib loaded, per call): the objects of before the call are set aside for it
        gc.freeze()
        try:
            out[ok] = multipletests(p[ok], method="holm")[1]
        finally:
            gc.unfreeze()
    return out.tolist()


def family_verdicts(units: Sequence[UnitEvidence], alpha: float = ALPHA) -> list[tuple[Verdict, float]]:
    """(verdict, Holm-adjusted p of the deciding test) of each unit of a study's family (module docstring)."""
    q = [min(u.p_for, u.p_against) if math.isfinite(u.p_for) else math.nan for u in units]
    adj = holm(q)
    eq_adj = holm([u.p_equiv if not u.equivalence else math.nan for u in units])
    out = []
    for u, a, e in zip(units, adj, eq_adj):
        if math.isfinite(a) and a < alpha:
            claimed = EQUIVALENT if u.equivalence else HOLDS
            out.append((claimed if u.p_for <= u.p_against else CONTRADICTED, a))
        elif math.isfinite(e) and e < alpha:
            out.append((EQUIVALENT, e))
        else:
            out.append((INCONCLUSIVE, a))
    return out


def combine_parts(verdicts: Sequence[Verdict]) -> Verdict:
    """One verdict of a conjunction (a unit of several parts, a hypothesis of several strata): any part
    contradicted -> contradicted; every part holds -> holds; every part equivalent, or every part
    decided and some equivalent -> equivalent (the claimed difference is absent in practice somewhere);
    else inconclusive (none: not run)."""
    if not verdicts:
        return NOT_RUN
    if any(v is NOT_RUN for v in verdicts):
        return NOT_RUN if all(v is NOT_RUN for v in verdicts) else INCONCLUSIVE
    if CONTRADICTED in verdicts:
        return CONTRADICTED
    if all(v is HOLDS for v in verdicts):
        return HOLDS
    if all(v.decided for v in verdicts):
        return EQUIVALENT
    return INCONCLUSIVE


def verdict_text(verdict: Verdict, n: int = 0, delta_text: str = "±delta", why: str = "") -> str:
    """The words of a verdict: "holds", "contradicted", "equivalent within ±0.50 pts",
    "inconclusive at n=3 seeds", "not run" (+ why)."""
    if verdict is EQUIVALENT:
        return f"equivalent within {delta_text}"
    if verdict is INCONCLUSIVE:
        return f"inconclusive at n={n} seed{'s' if n != 1 else ''}"
    if verdict is NOT_RUN:
        return "not run" + (f": {why}" if why else "")
    return verdict.value
