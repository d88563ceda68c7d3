"""Pure statistics over seeds: summaries, paired comparisons and verdicts.

Every function here takes plain sequences of numbers and returns plain
values; nothing reads the store or the file system, so each is tested on
tiny hand-computed arrays.

Verdict rule (the one `verdict` applies, stated once here and in the report):
the two levels are paired by seed and the difference is oriented so that a
positive value is what the paper claims (``d = claimed_better - claimed_worse``).
With the 95% t-interval of the mean of ``d`` over the paired seeds,

- "holds"          when the whole interval lies above 0,
- "contradicted"   when the whole interval lies below 0,
- "equivalent within +-delta" when neither holds and the paired TOST
  (statsmodels ``ttost_paired``, see analysis.decide) rejects
  ``|mean d| >= delta`` at 0.05, i.e. the 90% t-interval lies inside
  (-delta, +delta);
- "inconclusive at n=<k> seeds" otherwise, including when fewer than two
  paired seeds exist (no interval can be formed); its report line adds the
  minimum detectable effect at n and the seeds needed to detect delta.

An interval that touches 0 exactly is inconclusive. When every paired
difference is identical the interval has zero width; it then decides by
the sign of the difference alone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats as sps

CONFIDENCE = 0.95
WILCOXON_MIN_N = 6

HOLDS = "holds"
CONTRADICTED = "contradicted"
EQUIVALENT = "equivalent"  # the verdict reads "equivalent within +-<delta>"


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
    """Paired comparison of ``a`` against ``b`` (same length, index i = same seed).

    Pairs where either value is not finite are dropped. The p-value is the
    two-sided paired t-test (scipy ``ttest_rel``); the Wilcoxon signed-rank
    p-value is added only from ``WILCOXON_MIN_N`` pairs on (below that its
    smallest attainable p-value is above 0.05, so it can never decide).
    """
    xa = np.asarray(a, dtype=float).reshape(-1)
    xb = np.asarray(b, dtype=float).reshape(-1)
    if xa.shape != xb.shape:
        raise ValueError(f"paired_compare needs equal lengths, got {xa.size} and {xb.size}")
    keep = np.isfinite(xa) & np.isfinite(xb)
    xa, xb = xa[keep], xb[keep]
    d = xa - xb
    n = int(d.size)
    s = summarize(d, confidence)
    t_stat = p_value = math.nan
    if n >= 2 and s.std > 0:
        res = sps.ttest_rel(xa, xb)
        t_stat, p_value = float(res.statistic), float(res.pvalue)
    elif n >= 2:  # all differences identical: the t statistic is infinite or undefined
        p_value = 0.0 if s.mean != 0 else 1.0
        t_stat = math.copysign(math.inf, s.mean) if s.mean != 0 else math.nan
    wilcoxon_p = None
    if n >= WILCOXON_MIN_N:
        if np.any(d != 0):
            wilcoxon_p = float(sps.wilcoxon(xa, xb).pvalue)
        else:
            wilcoxon_p = 1.0
    ci_low, ci_high = s.ci_low, s.ci_high
    if n >= 2 and s.std == 0:
        ci_low = ci_high = s.mean
    return PairedComparison(
        n=n, mean_diff=s.mean, std_diff=s.std, ci_low=ci_low, ci_high=ci_high,
        t_stat=t_stat, p_value=p_value, wilcoxon_p=wilcoxon_p, diffs=tuple(float(x) for x in d),
    )


def inconclusive(n: int) -> str:
    return f"inconclusive at n={n} seed{'s' if n != 1 else ''}"


def equivalent(delta_text: str) -> str:
    return f"{EQUIVALENT} within {delta_text}"


def verdict(comparison: PairedComparison, tost_p: float | None = None, delta_text: str = "±delta") -> str:
    """Apply the rule in the module docstring to a comparison oriented as the paper claims.

    ``tost_p``: the paired TOST p-value for the equivalence region (None: no equivalence
    verdict); ``delta_text``: how the region reads in the verdict, e.g. "±0.50 pts".
    """
    if comparison.n < 2 or not (math.isfinite(comparison.ci_low) and math.isfinite(comparison.ci_high)):
        return inconclusive(comparison.n)
    if comparison.ci_low > 0:
        return HOLDS
    if comparison.ci_high < 0:
        return CONTRADICTED
    if tost_p is not None and math.isfinite(tost_p) and tost_p < 1 - CONFIDENCE:
        return equivalent(delta_text)
    return inconclusive(comparison.n)


def is_equivalent(v: str) -> bool:
    return v.startswith(EQUIVALENT)


def combine_verdicts(verdicts: Sequence[str], ns: Sequence[int]) -> str:
    """One verdict for a finding tested by several comparisons.

    "holds" only if every comparison holds, "contradicted" if at least one is
    contradicted and none holds, "mixed" if some hold and others are
    contradicted or equivalent, "equivalent ..." if every comparison is
    equivalent (the first one's text), otherwise inconclusive at the smallest n.
    """
    if not verdicts:
        return "not tested"
    held = sum(v == HOLDS for v in verdicts)
    contra = sum(v == CONTRADICTED for v in verdicts)
    equiv = [v for v in verdicts if is_equivalent(v)]
    if held == len(verdicts):
        return HOLDS
    if held and (contra or equiv):
        return "mixed"
    if contra:
        return CONTRADICTED
    if len(equiv) == len(verdicts):
        return equiv[0]
    return inconclusive(min(ns) if ns else 0)
