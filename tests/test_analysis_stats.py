"""Pure aggregators of analysis/ on tiny hand-computed arrays (no store)."""
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from analysis import stats
from analysis.figures import curve_band, margin_points, quantile_boxes
from analysis.evaluate import contrast_values
from analysis.hypotheses import Part
from analysis.paper import _most_stringent_cosine
from analysis.hypotheses import Design
from analysis.load import ContractError, _cell_row, check_frame, dedupe_cells, order_levels
from conftest import cells_frame
from analysis.tables import difference_row, mark_best, mean_std, summary_table, tex_escape, to_latex, to_markdown

T2 = 4.302652729749464  # t_{0.975, df=2}


def test_summarize_three_seeds_by_hand():
    s = stats.summarize([0.70, 0.72, 0.74])
    assert s.n == 3
    assert s.mean == pytest.approx(0.72)
    assert s.std == pytest.approx(0.02)  # sqrt((0.02^2 + 0 + 0.02^2) / 2)
    half = T2 * 0.02 / math.sqrt(3)  # 0.0496827
    assert half == pytest.approx(0.0496827, abs=1e-7)
    assert (s.ci_low, s.ci_high) == pytest.approx((0.72 - half, 0.72 + half))


def test_summarize_degenerate_sizes():
    one = stats.summarize([0.5, float("nan")])
    assert one.n == 1 and one.mean == 0.5 and math.isnan(one.std) and math.isnan(one.ci_low)
    none = stats.summarize([])
    assert none.n == 0 and math.isnan(none.mean)


def test_paired_compare_matches_hand_and_scipy():
    c = stats.paired_compare([0.73, 0.75, 0.74], [0.70, 0.71, 0.72])  # d = .03 .04 .02
    assert c.n == 3 and c.diffs == pytest.approx((0.03, 0.04, 0.02))
    assert c.mean_diff == pytest.approx(0.03) and c.std_diff == pytest.approx(0.01)
    half = T2 * 0.01 / math.sqrt(3)
    assert (c.ci_low, c.ci_high) == pytest.approx((0.03 - half, 0.03 + half))
    # t = mean / (std / sqrt(n)) = 0.03 / (0.01 / sqrt 3) = 5.196; two-sided p with df=2
    assert c.t_stat == pytest.approx(3 * math.sqrt(3))
    assert c.p_value == pytest.approx(0.0351, abs=1e-4)
    assert c.wilcoxon_p is None  # n < 6


def test_paired_compare_drops_nan_pairs_and_checks_lengths():
    c = stats.paired_compare([1.0, float("nan"), 3.0], [0.0, 1.0, 1.0])
    assert c.n == 2 and c.diffs == (1.0, 2.0)
    with pytest.raises(ValueError, match="equal lengths"):
        stats.paired_compare([1.0], [1.0, 2.0])


def test_wilcoxon_from_six_pairs():
    a = np.array([0.71, 0.72, 0.73, 0.74, 0.75, 0.76])
    c = stats.paired_compare(a, a - np.array([0.01, 0.02, 0.03, 0.04, 0.05, 0.06]))
    assert c.wilcoxon_p == pytest.approx(0.03125)  # all 6 signs positive: 2 / 2^6


@pytest.mark.parametrize("better, worse, expected", [
    ([0.73, 0.75, 0.74], [0.70, 0.71, 0.72], "holds"),  # a clear win
    ([0.70, 0.71, 0.72], [0.75, 0.77, 0.76], "contradicted"),  # a clear loss
    ([0.70, 0.72, 0.74], [0.71, 0.69, 0.73], "inconclusive at n=3 seeds"),  # noise
    ([0.80], [0.70], "inconclusive at n=1 seed"),  # no interval from one pair
    ([0.72, 0.73], [0.70, 0.71], "holds"),  # identical differences: zero-width interval above 0
])
def test_verdict_cases(better, worse, expected):
    c = stats.paired_compare(better, worse)
    ev = stats.unit_evidence([(c, 1.0, 1.0)], equivalence=False)
    (verdict, _), = stats.family_verdicts([ev])
    assert stats.verdict_text(verdict, c.n) == expected
    assert stats.part_verdict(c, 1.0) is verdict  # one unit of one part: the part's own rule


def test_combine_parts():
    H, C, I = stats.HOLDS, stats.CONTRADICTED, stats.INCONCLUSIVE
    assert stats.combine_parts([H, H]) is H
    assert stats.combine_parts([H, I]) is I
    assert stats.combine_parts([C, I]) is C
    assert stats.combine_parts([H, C]) is C  # one part refutes a claim that every part must hold
    assert stats.combine_parts([]) is stats.NOT_RUN


def _cells(rows):
    return cells_frame(rows)


def test_summary_table_and_best_marker():
    cells = _cells([
        {"level": "a", "seed": 0, "knn_top1": 0.70, "linear_top1": 0.8, "nmi": np.nan},
        {"level": "a", "seed": 1, "knn_top1": 0.72, "linear_top1": 0.8, "nmi": np.nan},
        {"level": "a", "seed": 2, "knn_top1": 0.74, "linear_top1": 0.8, "nmi": np.nan},
        {"level": "b", "seed": 0, "knn_top1": 0.60, "linear_top1": 0.8, "nmi": 0.5},
    ])
    t = summary_table(cells, ["b", "a"])
    assert list(t["level"]) == ["b", "a"] and list(t["n"]) == [1, 3]
    a = t.iloc[1]
    assert a["knn_top1_mean"] == pytest.approx(0.72) and a["knn_top1_std"] == pytest.approx(0.02)
    assert a["knn_top1_ci_high"] == pytest.approx(0.72 + T2 * 0.02 / math.sqrt(3))
    assert list(t["knn_top1_best"]) == [False, True]
    assert list(t["linear_top1_best"]) == [False, False]  # all equal: nothing is best
    assert list(t["nmi_best"]) == [False, False] and list(t["nmi_n"]) == [1, 0]  # only one finite mean
    md = to_markdown(t)
    assert "| a | 3 | **72.00 ± 2.00** | [67.03, 76.97] |" in md
    assert "| b | 1 | 60.00 | - |" in md  # one seed: no std, no interval
    tex = to_latex(t, caption="x", label="tab:x")
    assert r"\toprule" in tex and r"\bottomrule" in tex and r"\textbf{72.00 $\pm$ 2.00}" in tex


def test_mark_best_ties_and_nan():
    assert list(mark_best(np.array([0.1, 0.3, 0.3, np.nan]))) == [False, True, True, False]
    assert list(mark_best(np.array([0.1, np.nan]))) == [False, False]


def test_difference_row_pairs_by_seed():
    cells = _cells([
        {"level": "x", "seed": 0, "knn_top1": 0.73}, {"level": "x", "seed": 1, "knn_top1": 0.75},
        {"level": "x", "seed": 2, "knn_top1": 0.74}, {"level": "y", "seed": 2, "knn_top1": 0.72},
        {"level": "y", "seed": 0, "knn_top1": 0.70}, {"level": "y", "seed": 1, "knn_top1": 0.71},
        {"level": "y", "seed": 9, "knn_top1": 0.10},  # unpaired: ignored
    ])
    row = difference_row(cells, "x", "y", ["knn_top1"])
    assert row["n"] == 3 and row["knn_top1_mean"] == pytest.approx(0.03) and row["knn_top1_std"] == pytest.approx(0.01)
    assert mean_std(row, "knn_top1", signed=True) == "+3.00 ± 1.00"
    from analysis.evaluate import _table

    part = Part("knn_top1", (("x", 1.0), ("y", -1.0)), "x - y", "difference")
    seeds, d = contrast_values(part, _table(cells, "knn_top1"), [0, 1, 2, 9])
    assert seeds == [0, 1, 2] and list(d) == pytest.approx([0.03, 0.04, 0.02])


def test_dedupe_keeps_latest_finished():
    runs = pd.DataFrame({"cell_id": ["c", "c", "c", "d"], "status": ["FINISHED", "FINISHED", "FAILED", "KILLED"],
                         "end_time": [1, 5, 9, 3], "run_id": ["r1", "r2", "r3", "r4"]})
    out = dedupe_cells(runs)
    assert list(out["run_id"]) == ["r2"]


def test_level_order_and_selection():
    cells = _cells([
        {"level": "hard", "seed": 0, "sampling": "hard"}, {"level": "random", "seed": 0, "sampling": "random"},
        {"level": "semi-hard", "seed": 0, "sampling": "semi-hard"},
    ])
    assert order_levels(cells, ("sampling",)) == ("random", "semi-hard", "hard")
    b = _cells([
        {"level": "arc +0.3", "seed": 0, "margin_type": "arc", "margin": 0.3},
        {"level": "cos 0.5", "seed": 0, "margin_type": "cosine", "margin": 0.5},
        {"level": "cos -0.5", "seed": 0, "margin_type": "cosine", "margin": -0.5},
        {"level": "cos 0.25", "seed": 0, "margin_type": "cosine", "margin": 0.25},
    ])
    assert order_levels(b, ("boundary",)) == ("cos -0.5", "cos 0.25", "cos 0.5", "arc +0.3")
    design = Design(("boundary",), {"boundary": {r["level"]: {"margin_type": r["margin_type"], "margin": r["margin"]}
                                                 for r in b.to_dict("records")}})
    assert _most_stringent_cosine(design) == {"margin_type": "cosine", "margin": 0.5}


def test_contract_checks():
    good = pd.DataFrame({"a": pd.Series(["x"], dtype=str), "n": pd.Series([1], dtype="int64")})
    check_frame(good, {"a": "str", "n": "int"}, "t")
    with pytest.raises(ContractError, match="column 'b' is missing"):
        check_frame(good, {"b": "str"}, "t")
    with pytest.raises(ContractError, match="'n' has dtype .* expected float"):
        check_frame(good, {"n": "float"}, "t")
    run = SimpleNamespace(info=SimpleNamespace(run_id="r1", status="FINISHED", end_time=1, start_time=0),
                          data=SimpleNamespace(tags={"cell_id": "c", "level": "x"}, params={}, metrics={}))
    with pytest.raises(ContractError, match="run r1 has no param 'seed'"):
        _cell_row(run, "s")
    run.data.params = {"seed": "1.5"}
    with pytest.raises(ContractError, match="'seed' = '1.5' is not an integer"):
        _cell_row(run, "s")


def test_curve_band_and_quantile_boxes():
    curves = pd.DataFrame({
        "cell_id": ["c0", "c0", "c1", "c1"], "level": ["a"] * 4, "seed": [0, 0, 1, 1],
        "metric": ["knn_top1"] * 4, "epoch": [0, 1, 0, 1], "value": [0.5, 0.6, 0.7, 0.8],
    })
    band = curve_band(curves, "knn_top1")
    assert list(band["mean"]) == pytest.approx([0.6, 0.7]) and list(band["n"]) == [2, 2]
    assert list(band["std"]) == pytest.approx([math.sqrt(0.02)] * 2)
    rows = []
    for cid, last, shift in (("c0", 2, 0.0), ("c1", 3, 0.2)):
        for e in range(1, last + 1):
            for k, q in zip(("q05", "q25", "q50", "q75", "q95"), (0.1, 0.2, 0.3, 0.4, 0.5)):
                rows.append({"cell_id": cid, "level": "hard", "metric": f"neg_sim_{k}", "epoch": e,
                             "value": q + shift + (0 if e == last else 9)})  # only the last epoch counts
    boxes = quantile_boxes(pd.DataFrame(rows), ["hard", "absent"])
    assert len(boxes) == 1 and boxes[0]["n"] == 2
    assert (boxes[0]["whislo"], boxes[0]["med"], boxes[0]["whishi"]) == pytest.approx((0.2, 0.4, 0.6))


def test_margin_points():
    cells = _cells([{"level": "c", "margin_type": "cosine", "margin": m, "seed": s, "knn_top1": v}
                    for m, s, v in ((0.0, 0, 0.5), (0.0, 1, 0.7), (-0.5, 0, 0.9))] +
                   [{"level": "a", "margin_type": "arc", "margin": 0.3, "seed": 0, "knn_top1": 0.1}])
    pts = margin_points(cells, "knn_top1", "cosine")
    assert list(pts["margin"]) == [-0.5, 0.0] and list(pts["mean"]) == pytest.approx([0.9, 0.6])
    assert list(pts["n"]) == [1, 2]


def test_tex_escape():
    assert tex_escape("a_b & 5% ± x") == r"a\_b \& 5\% $\pm$ x"
