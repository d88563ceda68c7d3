"""A crossed study's grid analysed whole: the table of cell means, main effects and interactions, simple effects.

Pure aggregators over the cells frame (analysis.load) and the study's design (analysis.hypotheses):

- :func:`blocks`: the metric per grid cell and seed, on the seeds where every cell of the grid has
  a value (complete blocks: the seed is the block, as the cells of one seed share their
  initialisation and data order); the adaptive loop adds seeds to every cell of a crossed study,
  so its blocks stay complete;
- :func:`anova`: a linear model with the seed as a block, ``metric ~ C(seed) + A * B (* C)``,
  fitted by statsmodels (OLS) and tested with its type-II ANOVA (``anova_lm``; in a complete
  balanced design types I, II and III agree): per source its df, sum of squares, F, p and partial
  eta squared ``SS / (SS + SS_residual)``;
- :func:`cell_means`: for two factors, the mean over seeds of each pair of levels (the other
  factors averaged within a seed), with its 95% t-interval over seeds;
- the simple effects of each pairwise hypothesis are its contrast within each stratum of the
  other factors, Holm-adjusted across the strata (:func:`simple_effects`).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from .hypotheses import Design, HypothesisError, HypothesisSpec, resolve
from .load import StudyData, metric_column
from .stats import ALPHA, holm, summarize


@dataclass(frozen=True)
class AnovaRow:
    source: str  # "labels", "labels × sampling", "seed (block)", "residual"
    df: float
    ss: float
    f: float
    p: float
    eta_p2: float  # partial eta squared (nan for the residual)


def blocks(cells: pd.DataFrame, design: Design, metric: str) -> pd.DataFrame:
    """Long frame ``seed, <factor>..., y``: one row per grid cell and complete seed (every cell has a
    finite value of ``metric`` at that seed)."""
    col = metric_column(metric)
    grid = {design.name(c): c for c in design.cells()}
    rows = []
    for level, seed, y in zip(cells["level"], cells["seed"], cells[col].to_numpy(dtype=float)
                              if col in cells.columns else np.full(len(cells), np.nan)):
        if level in grid and math.isfinite(y):
            rows.append({"seed": int(seed), **grid[level], "y": float(y)})
    frame = pd.DataFrame(rows, columns=["seed", *design.factors, "y"])
    if frame.empty:
        return frame
    complete = frame.groupby("seed")["y"].count()
    keep = complete[complete == len(grid)].index
    return frame[frame["seed"].isin(keep)].sort_values(["seed", *design.factors], kind="mergesort").reset_index(
        drop=True)


def anova(frame: pd.DataFrame, factors: Sequence[str]) -> list[AnovaRow]:
    """The ANOVA table of ``y ~ C(seed) + product of the factors`` (statsmodels OLS, type II); [] with fewer
    than two complete seeds (no residual)."""
    if frame.empty or frame["seed"].nunique() < 2:
        return []
    import statsmodels.api as sm
    from statsmodels.formula.api import ols

    safe = {f: f"f{i}" for i, f in enumerate(factors)}  # factor names may hold spaces or ':'
    data = frame.rename(columns=safe)
    formula = "y ~ C(seed) + " + " * ".join(f"C({safe[f]})" for f in factors)
    table = sm.stats.anova_lm(ols(formula, data=data).fit(), typ=2)
    back = {f"C({v})": k for k, v in safe.items()}
    resid = float(table.loc["Residual", "sum_sq"])
    out = []
    for source, row in table.iterrows():
        if source == "Residual":
            continue
        name = "seed (block)" if source == "C(seed)" else " × ".join(back[t] for t in source.split(":"))
        ss = float(row["sum_sq"])
        out.append(AnovaRow(name, float(row["df"]), ss, float(row["F"]), float(row["PR(>F)"]),
                            ss / (ss + resid) if ss + resid > 0 else math.nan))
    out.sort(key=lambda r: (r.source != "seed (block)", r.source.count("×"), factors.index(r.source.split(" × ")[0])
                            if r.source != "seed (block)" else 0))
    out.append(AnovaRow("residual", float(table.loc["Residual", "df"]), resid, math.nan, math.nan, math.nan))
    return out


@dataclass(frozen=True)
class MeanCell:
    mean: float
    ci_low: float
    ci_high: float
    n: int


def cell_means(frame: pd.DataFrame, a: str, b: str, design: Design) -> dict[tuple[str, str], MeanCell]:
    """(level of a, level of b) -> mean over seeds of the metric (the other factors averaged within a seed)."""
    out = {}
    for la, lb in itertools.product(design.levels[a], design.levels[b]):
        sel = frame[(frame[a] == la) & (frame[b] == lb)]
        per_seed = sel.groupby("seed")["y"].mean().to_numpy(dtype=float)
        s = summarize(per_seed)
        out[(la, lb)] = MeanCell(s.mean, s.ci_low, s.ci_high, s.n)
    return out


def interaction_series(frame: pd.DataFrame, x: str, line: str, design: Design) -> dict[str, pd.DataFrame]:
    """For the interaction plot: per level of ``line``, the frame ``x_level, mean, std, n`` over seeds."""
    out = {}
    for lb in design.levels[line]:
        rows = []
        for lx in design.levels[x]:
            sel = frame[(frame[x] == lx) & (frame[line] == lb)]
            per_seed = sel.groupby("seed")["y"].mean().to_numpy(dtype=float)
            s = summarize(per_seed)
            rows.append({"x": lx, "mean": s.mean, "std": s.std, "n": s.n})
        out[lb] = pd.DataFrame(rows, columns=["x", "mean", "std", "n"])
    return out


@dataclass(frozen=True)
class SimpleEffect:
    hypothesis: str
    stratum: str
    part: object  # analysis.evaluate.PartResult of the stratum's first part
    p_holm: float  # Holm-adjusted across the hypothesis's strata


def simple_effects(data: StudyData, specs: Sequence[HypothesisSpec]) -> list[SimpleEffect]:
    """Each pairwise (or equivalence) hypothesis that averages over other factors, taken within each stratum of
    them: its first part's contrast per stratum, with p-values Holm-adjusted across the strata."""
    from .evaluate import evaluate_part, seed_order

    if data.empty or data.design is None or not data.design.crossed:
        return []
    out = []
    order = seed_order(set(data.cells["seed"]), data.planned_seeds)
    for spec in specs:
        if spec.kind not in ("pairwise", "equivalent") or spec.each:
            continue
        try:
            resolved = resolve(spec.model_copy(update={"each": True}), data.design, data.metric,
                               data.equivalence_delta)
        except HypothesisError:  # nothing left to take strata of (within fixes every other factor)
            continue
        parts = [evaluate_part(u.parts[0], data.cells, order, u.delta, u.equivalence, ALPHA) for u in resolved.units]
        adjusted = holm([p.comparison.p_value for p in parts])
        out += [SimpleEffect(spec.name, u.stratum, p, a) for u, p, a in zip(resolved.units, parts, adjusted)]
    return out
