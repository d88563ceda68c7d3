"""The paper's findings as paired comparisons with a verdict (rule: analysis.stats).

Each finding names the factor whose study tests it and the levels to
compare, picked by their params (not by their labels, which studies may
spell differently): the claimed-better level first, so a positive paired
difference is what the paper says.

1. labels:   online vs offline, on the study's metric and on the mean kNN
             top-1 over epochs ("converge faster").
2. sampling: semi-hard vs hard.
3. boundary: the reference margin cosine -0.5 vs cosine 0, and vs the most
             stringent positive cosine margin in the study.
4. method:   InterCLR vs MoCo v2.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from .load import StudyData
from .stats import PairedComparison, combine_verdicts, paired_compare, verdict

Selector = Callable[[pd.DataFrame], "str | None"]


@dataclass(frozen=True)
class ComparisonSpec:
    better: Selector  # cells -> the level claimed better (None if the study lacks it)
    worse: Selector
    metric: str | None = None  # None: the study's primary metric
    what: str = ""  # e.g. "convergence"


@dataclass(frozen=True)
class FindingSpec:
    key: str
    factor: str
    title: str
    claim: str
    comparisons: tuple[ComparisonSpec, ...]


@dataclass(frozen=True)
class ComparisonResult:
    better: str
    worse: str
    metric: str
    what: str
    seeds: tuple[int, ...]
    comparison: PairedComparison | None
    verdict: str


@dataclass(frozen=True)
class FindingResult:
    spec: FindingSpec
    study: str
    comparisons: tuple[ComparisonResult, ...]
    verdict: str


# --------------------------------------------------------------------------- level selection


def level_where(cells: pd.DataFrame, **params) -> str | None:
    """The first level (in frame order) whose cells have all these param values."""
    mask = pd.Series(True, index=cells.index)
    for key, value in params.items():
        if key not in cells.columns:
            return None
        if isinstance(value, float):
            mask &= np.isclose(cells[key].to_numpy(dtype=float), value)
        else:
            mask &= cells[key] == value
    hits = cells.loc[mask, "level"]
    return None if hits.empty else str(hits.iloc[0])


def _where(**params) -> Selector:
    return lambda cells: level_where(cells, **params)


def most_stringent_cosine(cells: pd.DataFrame) -> str | None:
    """The cosine level with the largest positive margin (the hardest boundary)."""
    cos = cells[(cells["margin_type"] == "cosine") & (cells["margin"] > 0)]
    if cos.empty:
        return None
    return level_where(cells, margin_type="cosine", margin=float(cos["margin"].max()))


FINDINGS: tuple[FindingSpec, ...] = (
    FindingSpec(
        "labels", "labels", "Pseudo-label maintenance",
        "online labels converge faster and perform better than offline labels",
        (ComparisonSpec(_where(labels="online"), _where(labels="offline")),
         ComparisonSpec(_where(labels="online"), _where(labels="offline"), metric="knn_auc", what="convergence")),
    ),
    FindingSpec(
        "sampling", "sampling", "Negative sampling",
        "semi-hard negatives are more reliable and less biased than hard negatives",
        (ComparisonSpec(_where(sampling="semi-hard"), _where(sampling="hard")),),
    ),
    FindingSpec(
        "boundary", "boundary", "Decision boundary",
        "a less stringent boundary (cosine margin -0.5) is better for inter-image learning",
        (ComparisonSpec(_where(margin_type="cosine", margin=-0.5), _where(margin_type="cosine", margin=0.0)),
         ComparisonSpec(_where(margin_type="cosine", margin=-0.5), most_stringent_cosine)),
    ),
    FindingSpec(
        "method", "method", "InterCLR vs MoCo v2",
        "InterCLR (online labels, semi-hard negatives, less stringent margin) improves over MoCo v2",
        (ComparisonSpec(_where(method="interclr"), _where(method="mocov2")),),
    ),
)


# --------------------------------------------------------------------------- evaluation


def paired_values(cells: pd.DataFrame, better: str, worse: str, metric: str
                  ) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """Values of ``metric`` for the two levels on the seeds both have a finite value for."""
    a = cells[cells["level"] == better].set_index("seed")[metric]
    b = cells[cells["level"] == worse].set_index("seed")[metric]
    seeds = tuple(int(s) for s in sorted(set(a.index) & set(b.index))
                  if math.isfinite(a.loc[s]) and math.isfinite(b.loc[s]))
    return a.loc[list(seeds)].to_numpy(dtype=float), b.loc[list(seeds)].to_numpy(dtype=float), seeds


def evaluate_comparison(cells: pd.DataFrame, cmp: ComparisonSpec, metric: str) -> ComparisonResult | None:
    """None when the study lacks one of the two levels (nothing to compare)."""
    better, worse = cmp.better(cells), cmp.worse(cells)
    metric = cmp.metric or metric
    if better is None or worse is None or better == worse:
        return None
    a, b, seeds = paired_values(cells, better, worse, metric)
    c = paired_compare(a, b)
    return ComparisonResult(better, worse, metric, cmp.what, seeds, c, verdict(c))


def findings_for(data: StudyData) -> list[FindingResult]:
    """Every finding whose factor this study varies (usually one)."""
    out = []
    for f in FINDINGS:
        if f.factor not in data.factors:
            continue
        results = []
        if not data.empty:
            results = [r for c in f.comparisons if (r := evaluate_comparison(data.cells, c, data.metric))]
        if not data.found:
            v = "not run"
        elif data.empty:
            v = "not run: no finished cells"
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
    return f"{r.better} - {r.worse}: {d}, {ci}, {p}, n={c.n} seed{'s' if c.n != 1 else ''}"


def finding_keys() -> Sequence[str]:
    return tuple(f.key for f in FINDINGS)
