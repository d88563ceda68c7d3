"""Hypotheses stated in a study file (analysis.hypotheses): each kind resolved into hand-computed contrast
weights, each bad hypothesis refused at load through the command line (exit 2, one line naming the file and
the key, nothing written), and the shipped studies' verdicts unchanged from the findings the analysis
hard-coded before (a stored fixture)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from analysis.hypotheses import Design, HypothesisError, HypothesisSpec, resolve
from conftest import store_env

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).with_name("fixtures")

GRID = Design(("labels", "sampling"), {
    "labels": {"offline": {"labels": "offline"}, "online": {"labels": "online"}},
    "sampling": {"semi-hard": {"sampling": "semi-hard"}, "hard": {"sampling": "hard"}}})
BOUNDARY = Design(("boundary",), {"boundary": {
    "cosine +0.5": {"margin_type": "cosine", "margin": 0.5}, "cosine 0": {"margin_type": "cosine", "margin": 0.0},
    "cosine -0.5": {"margin_type": "cosine", "margin": -0.5}, "arc -0.3": {"margin_type": "arc", "margin": -0.3}}})


def _h(**kw) -> HypothesisSpec:
    return HypothesisSpec.model_validate({"name": "h", "claim": "c", **kw})


def _weights(resolved, unit=0, part=0) -> dict[str, float]:
    return dict(resolved.units[unit].parts[part].weights)


# --------------------------------------------------------------------------- each kind, by hand


def test_a_main_effect_averages_the_other_factor():
    r = resolve(_h(better={"sampling": "semi-hard"}, worse={"sampling": "hard"}), GRID, "knn_top1", 0.005)
    (u,) = r.units
    assert u.stratum == "" and not u.equivalence and u.delta == 0.005 and r.compared == ("sampling",)
    assert _weights(r) == {"offline / semi-hard": 0.5, "online / semi-hard": 0.5,
                           "offline / hard": -0.5, "online / hard": -0.5}


def test_within_takes_one_stratum_and_each_takes_them_all():
    r = resolve(_h(better={"sampling": "semi-hard"}, worse={"sampling": "hard"}, within={"labels": "online"}),
                GRID, "knn_top1", 0.005)
    assert _weights(r) == {"online / semi-hard": 1.0, "online / hard": -1.0}
    r = resolve(_h(better={"sampling": "semi-hard"}, worse={"sampling": "hard"}, each=True), GRID, "knn_top1", 0.005)
    assert [u.stratum for u in r.units] == ["labels=offline", "labels=online"]
    assert _weights(r, 0) == {"offline / semi-hard": 1.0, "offline / hard": -1.0}


def test_a_trend_is_the_least_squares_slope_and_its_steps():
    # cosine margins 0.5, 0, -0.5 (arc left out by where); better: lower -> x = -m = -0.5, 0, 0.5;
    # slope weights (x - mean) / Sxx = (-0.5, 0, 0.5) / 0.5 = (-1, 0, 1)
    r = resolve(_h(trend={"setting": "margin", "better": "lower", "where": {"margin_type": "cosine"}}), BOUNDARY,
                "knn_top1", 0.005)
    (p,) = r.units[0].parts
    assert p.shape == "slope" and dict(p.weights) == {"cosine +0.5": -1.0, "cosine -0.5": 1.0}
    # delta bounds the change over the range of the setting (x from -0.5 to 0.5: span 1)
    assert p.span == 1.0 and p.region(0.005) == 0.005
    assert [dict(s.weights) for s in p.steps] == [{"cosine 0": 1.0, "cosine +0.5": -1.0},
                                                  {"cosine -0.5": 1.0, "cosine 0": -1.0}]
    # an order for a setting that is not numeric: positions 0, 1 from worst to best
    r = resolve(_h(trend={"setting": "labels", "order": ["offline", "online"]}), GRID, "knn_top1", 0.005)
    assert _weights(r) == {"offline / semi-hard": -0.5, "offline / hard": -0.5, "online / semi-hard": 0.5,
                           "online / hard": 0.5}


def test_an_interaction_is_the_trend_of_a_difference():
    # (semi-hard - hard) along labels offline -> online: the difference of differences
    r = resolve(_h(better={"sampling": "semi-hard"}, worse={"sampling": "hard"},
                   trend={"setting": "labels", "order": ["offline", "online"]}), GRID, "knn_top1", 0.005)
    assert r.spec.kind == "interaction" and r.compared == ("labels", "sampling")
    assert _weights(r) == {"online / semi-hard": 1.0, "online / hard": -1.0, "offline / semi-hard": -1.0,
                           "offline / hard": 1.0}


def test_equivalence_and_several_parts():
    r = resolve(_h(equivalent=[{"labels": "online"}, {"labels": "offline"}], delta=0.01), GRID, "knn_top1", 0.005)
    assert r.units[0].equivalence and r.units[0].delta == 0.01 and r.spec.kind == "equivalent"
    # two metrics x two worse levels: four parts, every one must hold
    r = resolve(_h(better={"margin": -0.5}, worse=[{"margin": 0.0}, {"margin": 0.5}],
                   metric=["knn_top1", "linear_top1"]), BOUNDARY, "knn_top1", 0.005)
    assert [(p.metric, p.label) for p in r.units[0].parts] == [
        ("knn_top1", "cosine -0.5 - cosine 0"), ("knn_top1", "cosine -0.5 - cosine +0.5"),
        ("linear_top1", "cosine -0.5 - cosine 0"), ("linear_top1", "cosine -0.5 - cosine +0.5")]
    # a level's label selects it too, and values compare as numbers (0 == 0.0 == "0.0")
    r = resolve(_h(better={"boundary": "cosine -0.5"}, worse={"margin": "0.0"}), BOUNDARY, "knn_top1", 0.005)
    assert _weights(r) == {"cosine -0.5": 1.0, "cosine 0": -1.0}


def test_a_contrast_on_cells_by_hand():
    """The per-seed values the statistics see: the 2x2 interaction on three seeds, by hand."""
    import pandas as pd

    from analysis.evaluate import _table, contrast_values

    y = {("offline", "semi-hard"): [70, 71, 72], ("offline", "hard"): [70, 70, 71],
         ("online", "semi-hard"): [74, 75, 75], ("online", "hard"): [70, 71, 70]}
    cells = pd.DataFrame([{"level": f"{a} / {b}", "seed": s, "knn_top1": v[s] / 100}
                          for (a, b), v in y.items() for s in range(3)])
    r = resolve(_h(better={"sampling": "semi-hard"}, worse={"sampling": "hard"},
                   trend={"setting": "labels", "order": ["offline", "online"]}), GRID, "knn_top1", 0.005)
    seeds, d = contrast_values(r.units[0].parts[0], _table(cells, "knn_top1"), [0, 1, 2])
    # seed 0: (74 - 70) - (70 - 70) = 4; seed 1: (75 - 71) - (71 - 70) = 3; seed 2: (75 - 70) - (72 - 71) = 4
    assert seeds == [0, 1, 2] and list(d * 100) == pytest.approx([4, 3, 4])


# --------------------------------------------------------------------------- bad hypotheses, at load

STUDY = """name: hyp
fixed: {{{fixed}}}
factors:
{factors}
seeds: [0, 1]
hypotheses:
{hypotheses}
"""
FIXED = {"method": "interclr", "labels": "online", "margin_type": "cosine", "margin": -0.5}


def _study(factors: str, hypotheses: str) -> str:
    """The study file: fixed settings less the ones the factors set."""
    owned = {"boundary": ("margin_type", "margin"), "labels": ("labels",), "method": ("method",)}
    drop = {k for f, keys in owned.items() if f"  {f}:" in factors for k in keys}
    fixed = ", ".join(f"{k}: {v}" for k, v in FIXED.items() if k not in drop)
    return STUDY.format(fixed=fixed, factors=factors, hypotheses=hypotheses)


ONE = "  sampling: [semi-hard, hard, random]"
TWO = "  labels: [offline, online]\n  sampling: [semi-hard, hard]"
BOUND = ("  boundary:\n    - {label: a, set: {margin_type: cosine, margin: -0.5}}\n"
         "    - {label: b, set: {margin_type: cosine, margin: -0.25}}\n"
         "    - {label: c, set: {margin_type: arc, margin: -0.25}}")
METHOD = "  method: [interclr, mocov2]"


def _one(body: str) -> str:
    return "  - {name: h, claim: c, " + body + "}"


BAD = [
    # a selection that matches no level, or several
    (ONE, _one("better: {sampling: semi-easy}, worse: {sampling: hard}"), "hypotheses[0].better",
     "{sampling: semi-easy} matches no level of factor 'sampling'"),
    (BOUND, _one("better: {margin: -0.25}, worse: {boundary: a}"), "hypotheses[0].better",
     "matches several levels of factor 'boundary' (b, c)"),
    # a setting the study never varies (set by fixed, or by nothing)
    (ONE, _one("better: {temperature: 0.1}, worse: {temperature: 0.2}"), "hypotheses[0].better",
     "'temperature' is not a setting this study varies"),
    (TWO.replace("labels: [offline, online]", "labels: [online]"),
     _one("better: {method: interclr}, worse: {sampling: hard}"), "hypotheses[0].better", "not a setting"),
    # within / each on a study that does not cross
    (ONE, _one("better: {sampling: semi-hard}, worse: {sampling: hard}, within: {labels: online}"),
     "hypotheses[0].within", "this study varies only 'sampling'"),
    (ONE, _one("better: {sampling: semi-hard}, worse: {sampling: hard}, each: true"), "hypotheses[0].each",
     "this study varies only 'sampling'"),
    # within that fixes the compared factor; each with nothing left to take strata of
    (TWO, _one("better: {sampling: semi-hard}, worse: {sampling: hard}, within: {sampling: hard}"),
     "hypotheses[0].within", "fixes factor 'sampling', which the hypothesis compares"),
    (TWO, _one("better: {sampling: semi-hard}, worse: {sampling: hard}, within: {labels: online}, each: true"),
     "hypotheses[0].each", "there are none"),
    # a trend on a non-numeric or unordered setting, an order that does not list the values, one value left
    (ONE, _one("trend: {setting: sampling, better: higher}"), "hypotheses[0].trend.setting",
     "is not numeric", ),
    (ONE, _one("trend: {setting: sampling, order: [hard, semi-hard]}"), "hypotheses[0].trend.order",
     "must list, once each, the values of 'sampling'"),
    (BOUND, _one("trend: {setting: margin, better: lower, where: {margin_type: arc}}"), "hypotheses[0].trend",
     "at least two values"),
    (BOUND, _one("trend: {setting: margin, better: lower, order: [-0.5, -0.25]}"), "hypotheses[0].trend",
     "not both"),
    # an interaction along the compared factor
    (TWO, _one("better: {sampling: semi-hard}, worse: {sampling: hard}, trend: {setting: sampling, order: "
               "[hard, semi-hard]}"), "hypotheses[0].trend.setting", "which better/worse compare"),
    # the two sides fix different factors, or select the same level
    (TWO, _one("better: {labels: online, sampling: semi-hard}, worse: {sampling: hard}"), "hypotheses[0].worse",
     "fix different factors"),
    (ONE, _one("better: {sampling: hard}, worse: {sampling: hard}"), "hypotheses[0].worse",
     "both sides select the same level (hard)"),
    # a metric some level never records
    (METHOD, _one("better: {method: interclr}, worse: {method: mocov2}, metric: nmi"), "hypotheses[0].metric",
     "'nmi' is not recorded by level 'mocov2'"),
    (ONE, _one("better: {sampling: semi-hard}, worse: {sampling: hard}, metric: accuracy"),
     "hypotheses[0].metric", "knn_top1"),
    # two hypotheses of one name
    (ONE, _one("better: {sampling: semi-hard}, worse: {sampling: hard}") + "\n"
     + _one("better: {sampling: random}, worse: {sampling: hard}"), "hypotheses[1].name", "two hypotheses are named"),
    # the schema: no claim, an unknown key (with a did-you-mean), better alone, a bad name, a bad delta
    (ONE, "  - {name: h, claim: c}", "hypotheses[0]", "states no claim"),
    (ONE, _one("better: {sampling: semi-hard}, worst: {sampling: hard}"), "hypotheses[0].worst", "did you mean 'worse'"),
    (ONE, _one("better: {sampling: semi-hard}"), "hypotheses[0]", "better and worse go together"),
    (ONE, "  - {name: 'a b', claim: c, better: {sampling: semi-hard}, worse: {sampling: hard}}",
     "hypotheses[0].name", "name"),
    (ONE, _one("better: {sampling: semi-hard}, worse: {sampling: hard}, delta: 5"), "hypotheses[0].delta", "1"),
    (ONE, _one("equivalent: [{sampling: semi-hard}]"), "hypotheses[0].equivalent", "two selections"),
    (ONE, "  - {name: h, better: {sampling: semi-hard}, worse: {sampling: hard}}", "hypotheses[0].claim", "claim"),
    # found by a new user: a typo'd setting gets a did-you-mean; a side naming one level twice; the same contrast
    # under two names (it would count twice in the multiplicity correction); delta in points, not a fraction
    (ONE, _one("better: {samplng: semi-hard}, worse: {sampling: hard}"), "hypotheses[0].better",
     "did you mean 'sampling'"),
    (ONE, _one("better: {sampling: semi-hard}, worse: [{sampling: hard}, {sampling: hard}]"), "hypotheses[0].worse",
     "selects the same level twice"),
    (ONE, _one("better: {sampling: semi-hard}, worse: {sampling: hard}") + "\n"
     + "  - {name: g, claim: c, better: {sampling: semi-hard}, worse: {sampling: hard}}", "hypotheses[1]",
     "the same contrasts as hypothesis 'h'"),
    (ONE, _one("equivalent: [{sampling: semi-hard}, {sampling: hard}], delta: 2"), "hypotheses[0].delta",
     "accuracies are fractions, so 0.005 is 0.5 points"),
    # found by a new user (round 4): a delta in points that lies in (0, 1) (0.5 = 50 points of an accuracy),
    # on the hypothesis or the study's default; the top-level shorthand written as a hypothesis
    (ONE, _one("equivalent: [{sampling: semi-hard}, {sampling: hard}], delta: 0.5"), "hypotheses[0].delta",
     "0.5 is 50 points of knn_top1"),
    (ONE, _one("better: {sampling: semi-hard}, worse: {sampling: hard}, metric: nmi, delta: 0.2"),
     "hypotheses[0].delta", "for 0.2 points write 0.002"),
    (ONE, _one("better: {sampling: semi-hard}, worse: {sampling: hard}") + "\nequivalence_delta: 0.5",
     "equivalence_delta", "0.5 is 50 points of knn_top1"),
    (ONE, "  - {finding: sampling}", "hypotheses[0]", "finding is a top-level key"),
]


@pytest.mark.parametrize("factors, hypotheses, key, words", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_a_bad_hypothesis_is_one_error_at_load(tmp_path, monkeypatch, capsys, factors, hypotheses, key, words):
    from study.cli import main

    for k, v in store_env(tmp_path).items():
        monkeypatch.setenv(k, v)
    path = tmp_path / "hyp.yaml"
    path.write_text(_study(factors, hypotheses))
    assert main(["run", str(path), "--preset", "smoke"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {path}: key '{key}'"), err
    assert words in err, (words, err)
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "runs").exists()


GOOD = [
    (ONE, _one("better: {sampling: semi-hard}, worse: [{sampling: hard}, {sampling: random}], "
               "metric: [knn_top1, linear_top1]")),
    (TWO, _one("better: {sampling: semi-hard}, worse: {sampling: hard}, each: true") + "\n"
     + "  - {name: g, claim: c, better: {labels: online}, worse: {labels: offline}, within: {sampling: hard}}\n"
     + "  - {name: i, claim: c, better: {sampling: semi-hard}, worse: {sampling: hard}, trend: {setting: labels, "
       "order: [offline, online]}}"),
    (BOUND, _one("trend: {setting: margin, better: lower, where: {margin_type: cosine}}")),
    (ONE, _one("equivalent: [{sampling: semi-hard}, {sampling: hard}], delta: 0.01")),
]


@pytest.mark.parametrize("factors, hypotheses", GOOD, ids=["pairwise", "crossed", "trend", "equivalent"])
def test_each_kind_loads_and_dry_runs(tmp_path, monkeypatch, capsys, factors, hypotheses):
    from study.cli import main

    for k, v in store_env(tmp_path).items():
        monkeypatch.setenv(k, v)
    path = tmp_path / "hyp.yaml"
    path.write_text(_study(factors, hypotheses))
    assert main(["run", str(path), "--preset", "smoke", "--dry-run"]) == 0, capsys.readouterr().err
    assert main(["run", str(path), "--preset", "smoke", "--dry-run", "--until-decided"]) == 0
    assert not (tmp_path / "mlflow.db").exists()


def test_trend_order_takes_a_level_label_or_its_setting_value():
    method = Design(("method",), {"method": {"MoCo v2": {"method": "mocov2"}, "InterCLR": {"method": "interclr"}}})
    for order in (["mocov2", "interclr"], ["MoCo v2", "InterCLR"]):
        r = resolve(_h(trend={"setting": "method", "order": order}), method, "knn_top1", 0.005)
        assert _weights(r) == {"MoCo v2": -1.0, "InterCLR": 1.0}, order


def test_max_seeds_below_the_studys_seeds_is_refused_naming_its_source(tmp_path, monkeypatch, capsys):
    """The group-sequential design decides from its first look (the file's seeds) on: any limit of at
    least the file's seeds is a design; fewer is one error naming the flag or the file's key."""
    from study.cli import main

    for k, v in store_env(tmp_path).items():
        monkeypatch.setenv(k, v)
    path = tmp_path / "hyp.yaml"
    text = _study(TWO, _one("better: {sampling: semi-hard}, worse: {sampling: hard}, each: true"))
    path.write_text(text.replace("seeds: [0, 1]", "seeds: [0, 1, 2]\nmax_seeds: 2"))
    assert main(["run", str(path), "--preset", "cpu", "--until-decided", "--dry-run"]) == 2
    assert f"{path}: key 'max_seeds': must be at least the study's 3 seeds (got 2)" in capsys.readouterr().err
    assert main(["run", str(path), "--preset", "cpu", "--until-decided", "--dry-run", "--max-seeds", "2"]) == 2
    assert "--max-seeds: must be at least the study's 3 seeds (got 2)" in capsys.readouterr().err
    assert main(["run", str(path), "--preset", "cpu", "--until-decided", "--dry-run", "--max-seeds", "3"]) == 0
    assert not (tmp_path / "mlflow.db").exists()


def test_resolution_errors_carry_their_key():
    with pytest.raises(HypothesisError) as err:
        resolve(_h(better={"sampling": "x"}, worse={"sampling": "hard"}), GRID, "knn_top1", 0.005)
    assert err.value.key == "better"


# --------------------------------------------------------------------------- the shipped studies, unchanged


def _fixture_store(tmp_path_factory, with_tags: bool):
    """The analysis tests' store; ``with_tags``: its parents carry the shipped study files' hypotheses and the
    store's design, as the runner writes them."""
    from analysis.hypotheses import to_tags
    from analysis.load import _design_from_runs, client_for, load_study as load_data
    from analysis_store import build_store
    from study.studyfile import read_study_file

    path = tmp_path_factory.mktemp("regression") / "mlflow.db"
    uri = f"sqlite:///{path}"
    build_store(uri)
    if with_tags:
        client = client_for(uri)
        for study in ("labels", "sampling", "boundary", "final"):
            data = load_data(study, client=client)
            spec = read_study_file(REPO / "experiments" / f"{study}.yaml")
            tags = {**to_tags("hypotheses", [h.dump() for h in spec.hypotheses]),
                    **to_tags("design", data.design.dump())}
            for k, v in tags.items():
                client.set_tag(data.parent_run_id, k, v)
            assert _design_from_runs(data.factors, None).factors == data.factors
    return uri


@pytest.mark.parametrize("with_tags", [False, True], ids=["legacy-store", "hypotheses-from-the-files"])
def test_the_shipped_studies_keep_the_verdicts_and_numbers_of_the_hard_coded_findings(tmp_path_factory, with_tags):
    """tests/fixtures/findings_53ae981.json: what analysis/findings.py (main at 53ae981) gave on this store,
    for each comparison of the four findings, at fixed seeds and under the sequential rule."""
    from analysis import decide
    from analysis.evaluate import _table, contrast_values, evaluate_study
    from analysis.load import client_for, load_study as load_data

    expected = json.loads((FIXTURES / "findings_53ae981.json").read_text())
    client = client_for(_fixture_store(tmp_path_factory, with_tags))

    def same(old, new) -> bool:
        if old is None:
            return new is None or not math.isfinite(new)
        return new is not None and math.isclose(old, new, rel_tol=1e-9, abs_tol=1e-12)

    for key, rows in expected.items():
        rule, study = key.split("/")
        results = evaluate_study(replace(load_data(study, client=client), stopping=rule))
        paper = results[0]  # the paper's finding (boundary adds its margin trend after it)
        parts = [p for u in paper.units for p in u.parts]
        assert len(parts) == len(rows), key
        for p, r in zip(parts, rows):
            if rule == "sequential" and paper.verdict.decided:  # decided at the design's first look now
                fixed = expected[f"fixed/{study}"][0]["finding_verdict"]
                assert paper.text == fixed and r["finding_verdict"].startswith("inconclusive"), (key, paper.text)
            else:
                assert paper.text == r["finding_verdict"], (key, paper.text, r["finding_verdict"])
            assert p.metric == r["metric"] and list(p.seeds) == r["seeds"]
            c = p.comparison
            got = {"mean_diff": c.mean_diff, "ci_low": c.ci_low, "ci_high": c.ci_high, "p_value": c.p_value,
                   "n": c.n, "tost_p": p.tost_p, "mde": p.mde, "p_improvement": p.improvement.p,
                   "pi_low": p.improvement.ci_low, "pi_high": p.improvement.ci_high, "cs_low": p.cs_low,
                   "cs_high": p.cs_high, "cell_seconds": p.cell_seconds}
            if rule == "sequential":
                # the rule changed since (issue 28): the confidence sequence the fixture holds (the whole line
                # at these 3 seeds) gave way to a group-sequential design, whose first look bounds the mean
                design = decide.GroupSequential.planned(3, decide.MAX_SEEDS)
                _, values = contrast_values(p.part, _table(load_data(study, client=client).cells, p.metric),
                                            list(p.seeds))
                low, high = decide.running_intervals(values, paper.units[0].cs_alpha, design=design)
                assert (got.pop("cs_low"), got.pop("cs_high")) == (low[-1], high[-1]) and low[-1] < high[-1]
            for name, value in got.items():
                assert same(r[name], value), (key, p.label, name, r[name], value)
            assert p.seeds_for_delta == r["seeds_for_delta"]
        if study == "boundary" and with_tags:  # the file's second hypothesis: the slope over the cosine margins
            trend = results[1]
            assert trend.spec.name == "margin-trend" and trend.verdict.value == ("holds" if rule == "fixed"
                                                                                  else "inconclusive")


def test_status_refuses_a_name_the_store_holds_for_other_factors(tmp_path, monkeypatch, capsys):
    """As run does: another study of the name would lend its cells to this one's status."""
    from study.cli import main
    from study.tracking import StudyTracker

    for k, v in store_env(tmp_path).items():
        monkeypatch.setenv(k, v)
    StudyTracker("hyp").parent_run_id({"factors": "labels", "metric": "knn_top1"})
    path = tmp_path / "hyp.yaml"
    path.write_text(_study(ONE, _one("better: {sampling: semi-hard}, worse: {sampling: hard}")))
    assert main(["status", str(path), "--preset", "smoke"]) == 2
    assert "already holds a study 'hyp' varying labels" in capsys.readouterr().err


def test_a_lower_is_better_metric_orients_its_contrasts_toward_the_claim():
    """``neg_false_ratio``: lower is better (study/core/names.py), so "semi-hard beats hard" on it is
    hard - semi-hard > 0; a trend with better: lower on it flips the slope's sign as well."""
    from analysis.hypotheses import Design, HypothesisSpec, resolve

    design = Design(("sampling",), {"sampling": {"semi-hard": {"sampling": "semi-hard"},
                                                 "hard": {"sampling": "hard"}}})
    spec = HypothesisSpec.model_validate({"name": "fewer-false-negatives", "claim": "c", "metric": "neg_false_ratio",
                                          "better": {"sampling": "semi-hard"}, "worse": {"sampling": "hard"}})
    (unit,) = resolve(spec, design, "knn_top1", 0.005).units
    (part,) = unit.parts
    assert dict(part.weights) == {"hard": 1.0, "semi-hard": -1.0}
    assert part.label.startswith("hard - semi-hard")
    knn = HypothesisSpec.model_validate({"name": "knn", "claim": "c", "better": {"sampling": "semi-hard"},
                                         "worse": {"sampling": "hard"}})
    assert dict(resolve(knn, design, "knn_top1", 0.005).units[0].parts[0].weights) == {"semi-hard": 1.0, "hard": -1.0}
    margins = Design(("boundary",), {"boundary": {"cosine 0": {"margin_type": "cosine", "margin": 0.0},
                                                  "cosine -0.5": {"margin_type": "cosine", "margin": -0.5}}})
    trend = {"trend": {"setting": "margin", "better": "lower"}}
    up = resolve(_h(**trend), margins, "knn_top1", 0.005).units[0].parts[0]
    down = resolve(_h(metric="neg_false_ratio", **trend), margins, "knn_top1", 0.005).units[0].parts[0]
    # knn: the slope on -margin, +1 per unit at -0.5 -> 0 is weight (cosine -0.5: +1, cosine 0: -1) / 0.5
    assert dict(up.weights) == pytest.approx({"cosine -0.5": 2.0, "cosine 0": -2.0})
    assert dict(down.weights) == pytest.approx({"cosine -0.5": -2.0, "cosine 0": 2.0})
    assert dict(down.steps[0].weights) == pytest.approx({"cosine -0.5": -1.0, "cosine 0": 1.0})
