"""The paper's findings as data: which factor tests each, and which levels each comparison pairs.

Light on purpose (numpy and pandas only): the study-file loader checks a
study's ``finding`` against these at load (:func:`unformable`), without the
statistics and plotting of :mod:`analysis.findings`, which evaluates them.

Levels are picked by their params (not by their labels, which studies may
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

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pandas as pd

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


@dataclass(frozen=True)
class _Where:
    """Selector of the first level with these param values; ``str()`` says which (for errors)."""

    params: tuple[tuple[str, Any], ...]

    def __call__(self, cells: pd.DataFrame) -> str | None:
        return level_where(cells, **dict(self.params))

    def __str__(self) -> str:
        return ", ".join(f"{k}: {v}" for k, v in self.params)


def _where(**params) -> Selector:
    return _Where(tuple(params.items()))


def most_stringent_cosine(cells: pd.DataFrame) -> str | None:
    """The cosine level with the largest positive margin (the hardest boundary)."""
    cos = cells[(cells["margin_type"] == "cosine") & (cells["margin"] > 0)]
    if cos.empty:
        return None
    return level_where(cells, margin_type="cosine", margin=float(cos["margin"].max()))


def selector_text(selector: Selector) -> str:
    """What a selector looks for, in study-file words."""
    if selector is most_stringent_cosine:
        return "margin_type: cosine, margin > 0 (the most stringent)"
    return str(selector)


def unformable(finding: FindingSpec, cells: pd.DataFrame) -> list[str]:
    """The comparisons of ``finding`` that the levels in ``cells`` (one row per level: its
    config params and ``level``) cannot form, each as "better vs worse: no level with X".

    A study that names a finding must vary what its comparisons compare: a sampling study
    of random and hard has no semi-hard level, so its finding could never be tested.
    """
    out = []
    for comp in finding.comparisons:
        better, worse = comp.better(cells), comp.worse(cells)
        lacking = [selector_text(sel) for sel, got in ((comp.better, better), (comp.worse, worse)) if got is None]
        if lacking:
            out.append(f"{selector_text(comp.better)} vs {selector_text(comp.worse)}: no level with "
                       + " nor ".join(lacking))
        elif better == worse:
            out.append(f"{selector_text(comp.better)} vs {selector_text(comp.worse)}: both are level '{better}'")
    return out


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
