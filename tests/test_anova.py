"""A crossed study's statistics (analysis.anova, analysis.evaluate) on a tiny 2 x 2 x 3-seed array by hand,
against statsmodels' own repeated-measures ANOVA, and the trend's slope and interval by hand.

The array (A, B two factors, three seeds):

    a0 b0: 1, 2, 3     a0 b1: 2, 3, 7
    a1 b0: 4, 6, 5     a1 b1: 8, 9, 10

grand mean 5; cell means 2, 4, 5, 9; A means 3, 7; B means 3.5, 6.5; seed means 3.75, 5, 6.25.
SS_A = 6 (2^2 + 2^2) = 48, SS_B = 6 (1.5^2 + 1.5^2) = 27, SS_cells = 3 (9 + 1 + 0 + 16) = 78,
SS_AB = 78 - 48 - 27 = 3, SS_seed = 4 (1.25^2 + 0 + 1.25^2) = 12.5, SS_total = 98,
SS_residual = 98 - 48 - 27 - 3 - 12.5 = 7.5 on (3 - 1)(4 - 1) = 6 df, MS 1.25:
F_A = 38.4, F_B = 21.6, F_AB = 2.4, F_seed = 6.25 / 1.25 = 5; partial eta^2 = SS / (SS + 7.5).
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from scipy import stats as sps

from analysis.anova import anova, blocks, cell_means, simple_effects
from analysis.hypotheses import Design, HypothesisSpec
from analysis.load import empty_study
from conftest import cells_frame

Y = {("a0", "b0"): [1, 2, 3], ("a0", "b1"): [2, 3, 7], ("a1", "b0"): [4, 6, 5], ("a1", "b1"): [8, 9, 10]}
DESIGN = Design(("A", "B"), {"A": {"a0": {"A": "a0"}, "a1": {"A": "a1"}}, "B": {"b0": {"B": "b0"}, "b1": {"B": "b1"}}})


def _cells(values=Y, metric="knn_top1"):
    rows = [{"level": f"{a} / {b}", "seed": s, metric: float(v[s]), "seconds": 1.0, "reused_from": ""}
            for (a, b), v in values.items() for s in range(len(v))]
    return cells_frame(rows)


def _data(cells, hypotheses=(), design=DESIGN):
    return replace(empty_study("grid", True), factors=design.factors, cells=cells, design=design,
                   hypotheses=tuple(HypothesisSpec.model_validate(h) for h in hypotheses),
                   levels=tuple(Design.name(c) for c in design.cells()))


def test_anova_by_hand():
    frame = blocks(_cells(), DESIGN, "knn_top1")
    assert len(frame) == 12 and list(frame.columns) == ["seed", "A", "B", "y"]
    rows = {r.source: r for r in anova(frame, DESIGN.factors)}
    assert list(rows) == ["seed (block)", "A", "B", "A × B", "residual"]
    for source, ss, df, f in (("A", 48, 1, 38.4), ("B", 27, 1, 21.6), ("A × B", 3, 1, 2.4), ("seed (block)", 12.5, 2, 5)):
        r = rows[source]
        assert (r.ss, r.df, r.f) == pytest.approx((ss, df, f)), source
        assert r.eta_p2 == pytest.approx(ss / (ss + 7.5)), source
        assert r.p == pytest.approx(sps.f.sf(f, df, 6)), source
    assert (rows["residual"].ss, rows["residual"].df) == pytest.approx((7.5, 6))


def test_cell_means_and_complete_blocks():
    means = cell_means(blocks(_cells(), DESIGN, "knn_top1"), "A", "B", DESIGN)
    assert {k: m.mean for k, m in means.items()} == pytest.approx(
        {("a0", "b0"): 2, ("a0", "b1"): 4, ("a1", "b0"): 5, ("a1", "b1"): 9})
    half = sps.t.ppf(0.975, 2) * 1.0 / math.sqrt(3)  # a0 b0: 1, 2, 3 -> sd 1
    assert (means[("a0", "b0")].ci_low, means[("a0", "b0")].ci_high) == pytest.approx((2 - half, 2 + half))
    # a seed missing one cell is not a complete block
    partial = {k: v + ([11] if k != ("a1", "b1") else []) for k, v in Y.items()}
    assert sorted(set(blocks(_cells(partial), DESIGN, "knn_top1")["seed"])) == [0, 1, 2]


def test_main_effects_and_interaction_as_hypotheses_match_statsmodels_repeated_measures_anova():
    """Each 2-level effect's per-seed contrast (the hypotheses' rule: the seed's own error term) squares to
    the F of statsmodels' AnovaRM, which tests each effect against its interaction with the seed."""
    from statsmodels.stats.anova import AnovaRM

    from analysis.evaluate import evaluate_study

    hyps = [{"name": "a", "claim": "a1 beats a0", "better": {"A": "a1"}, "worse": {"A": "a0"}},
            {"name": "b", "claim": "b1 beats b0", "better": {"B": "b1"}, "worse": {"B": "b0"}},
            {"name": "ab", "claim": "b's effect grows with A", "better": {"B": "b1"}, "worse": {"B": "b0"},
             "trend": {"setting": "A", "order": ["a0", "a1"]}}]
    results = {h.spec.name: h.units[0].parts[0] for h in evaluate_study(_data(_cells(), hyps))}
    # by hand: A contrast per seed (a1 - a0, B averaged): 4.5, 5, 2.5 -> mean 4
    assert list(results["a"].comparison.diffs) == pytest.approx([4.5, 5.0, 2.5])
    # interaction per seed: (a1b1 - a1b0) - (a0b1 - a0b0) = 4 - 1, 3 - 1, 5 - 4 = 3, 2, 1
    assert list(results["ab"].comparison.diffs) == pytest.approx([3.0, 2.0, 1.0])
    frame = blocks(_cells(), DESIGN, "knn_top1")
    rm = AnovaRM(frame, "y", "seed", within=["A", "B"]).fit().anova_table
    for name, source in (("a", "A"), ("b", "B"), ("ab", "A:B")):
        assert results[name].comparison.t_stat ** 2 == pytest.approx(rm.loc[source, "F Value"]), name
        assert results[name].comparison.p_value == pytest.approx(rm.loc[source, "Pr > F"]), name


def test_simple_effects_by_hand_with_holm():
    hyps = [{"name": "b", "claim": "b1 beats b0", "better": {"B": "b1"}, "worse": {"B": "b0"}}]
    effects = simple_effects(_data(_cells(), hyps), [HypothesisSpec.model_validate(h) for h in hyps])
    assert [e.stratum for e in effects] == ["A=a0", "A=a1"]
    # within a0: 1, 1, 4 (mean 2); within a1: 4, 3, 5 (mean 4)
    assert [list(e.part.comparison.diffs) for e in effects] == [pytest.approx([1, 1, 4]), pytest.approx([4, 3, 5])]
    p = [e.part.comparison.p_value for e in effects]
    low, high = sorted(p)
    assert sorted(e.p_holm for e in effects) == pytest.approx(sorted([2 * low, max(2 * low, high)]))


def test_the_trend_slope_and_interval_by_hand():
    """x = 0, 1, 3 (mean 4/3, Sxx = 14/3); per seed y = (1, 2, 4), (0, 2, 3), (2, 2, 6) -> slopes 1, 13/14,
    20/14 (Sxy / Sxx); mean 47/42, its 95% t-interval over the three seeds."""
    from analysis.evaluate import evaluate_study

    design = Design(("x",), {"x": {"0": {"x": 0}, "1": {"x": 1}, "3": {"x": 3}}})
    values = {("0",): [1, 0, 2], ("1",): [2, 2, 2], ("3",): [4, 3, 6]}
    rows = [{"level": lv[0], "seed": s, "knn_top1": float(v[s]), "seconds": 1.0, "reused_from": ""}
            for lv, v in values.items() for s in range(3)]
    df = cells_frame(rows)
    hyp = [{"name": "t", "claim": "the higher x, the better", "trend": {"setting": "x", "better": "higher"}}]
    (h,) = evaluate_study(_data(df, hyp, design))
    p = h.units[0].parts[0]
    slopes = [1.0, 13 / 14, 20 / 14]
    assert list(p.comparison.diffs) == pytest.approx(slopes)
    mean, sd = 47 / 42, float(np.std(slopes, ddof=1))
    half = sps.t.ppf(0.975, 2) * sd / math.sqrt(3)
    assert (p.comparison.mean_diff, p.comparison.ci_low, p.comparison.ci_high) == pytest.approx(
        (mean, mean - half, mean + half))
    assert h.verdict.value == "holds"
    # the adjacent steps: 1 - 0 (per seed 1, 2, 0) and 3 - 1 (2, 1, 4)
    assert [list(s.comparison.diffs) for s in p.steps] == [pytest.approx([1, 2, 0]), pytest.approx([2, 1, 4])]


def test_a_slope_is_equivalent_only_when_its_change_over_the_range_is_within_delta():
    """x = 0, 10; per seed the change 10 - 0 is +0.4, -0.3, +0.2 points (slopes 0.04, -0.03, 0.02 points per
    unit, mean 0.01, sd 0.036): a TOST would find the slope within ±0.5 points per unit (t = 23.5), but
    delta bounds the change over the range, so the slope's region is ±0.05 per unit (t = 1.92 <
    t_0.95,2 = 2.92): inconclusive; with delta 2 points (±0.2 per unit, t = 9.1) it is equivalent."""
    from analysis.evaluate import evaluate_study

    design = Design(("x",), {"x": {"0": {"x": 0}, "10": {"x": 10}}})
    values = {"0": [0.7, 0.7, 0.7], "10": [0.704, 0.697, 0.702]}  # accuracies: fractions
    rows = [{"level": lv, "seed": s, "knn_top1": v[s], "seconds": 1.0, "reused_from": ""}
            for lv, v in values.items() for s in range(3)]
    df = cells_frame(rows)
    for delta, verdict in ((0.005, "inconclusive"), (0.02, "equivalent")):
        hyp = [{"name": "t", "claim": "x changes nothing", "trend": {"setting": "x", "better": "higher"},
                "delta": delta}]
        (h,) = evaluate_study(_data(df, hyp, design))
        part = h.units[0].parts[0]
        assert part.part.span == 10.0 and part.comparison.mean_diff == pytest.approx(0.0001)
        assert h.verdict.value == verdict, (delta, h.text)


@pytest.mark.parametrize("stopping", ["fixed", "sequential"])
def test_a_second_family_leaves_the_primary_verdicts_alone_and_never_adds_seeds(stopping):
    """A hypothesis of ``family: mechanism`` keeps its own error rate: the primary hypothesis's adjusted p
    and interval level are those of the study without it, and an undecided mechanism is not open (the
    adaptive loop adds no seed for it)."""
    from analysis.evaluate import evaluate_study

    main = {"name": "a", "claim": "a1 beats a0", "better": {"A": "a1"}, "worse": {"A": "a0"}}
    # B's effect in the metric's units: b1 - b0 = 3 per seed on average, ample at n=3 under the t-test
    mech = {"name": "m", "claim": "b1 beats b0", "better": {"B": "b1"}, "worse": {"B": "b0"}, "family": "mechanism"}
    odd = {"name": "n", "claim": "b0 beats b1", "better": {"B": "b0"}, "worse": {"B": "b1"}, "within": {"A": "a0"},
           "family": "mechanism"}
    alone = evaluate_study(replace(_data(_cells(), [main]), stopping=stopping))[0].units[0]
    both = evaluate_study(replace(_data(_cells(), [main, mech, odd]), stopping=stopping))
    first = both[0].units[0]
    assert first.verdict is alone.verdict and first.cs_alpha == alone.cs_alpha == pytest.approx(0.05)
    assert (math.isnan(first.p_adjusted) and math.isnan(alone.p_adjusted)) or first.p_adjusted == alone.p_adjusted
    assert [u.cs_alpha for h in both[1:] for u in h.units] == pytest.approx([0.025, 0.025])  # the mechanism family's two parts
    assert all(not u.open for h in both[1:] for u in h.units)
    undecided = [u for h in both[1:] for u in h.units if u.verdict.value == "inconclusive"]
    assert undecided, "the test needs an undecided mechanism unit"
