"""analysis/ on a store built with known values (tests/analysis_store.py)."""
import math
from pathlib import Path

import pytest

from analysis import build, build_all, load_study
from analysis import figures as F
from analysis.__main__ import main
from analysis.evaluate import evaluate_study
from analysis.stats import Verdict
from analysis.load import ContractError, StoreError, client_for, default_tracking_uri, list_studies
from analysis_store import EPOCHS, KNN, cell_id, shared_store

T2 = 4.302652729749464  # t_{0.975, df=2}


@pytest.fixture(scope="module")
def uri(tmp_path_factory):
    return shared_store(tmp_path_factory)


@pytest.fixture(scope="module")
def data(uri):
    client = client_for(uri)
    return {s: load_study(s, client=client) for s in ("labels", "sampling", "boundary", "final", "ghost", "nope")}


@pytest.fixture(scope="module")
def outputs(uri, tmp_path_factory):
    """A full build, then one study's build in place (over the full build's files) and into another
    folder: the same bytes each time (a full build costs tens of seconds of figures, one study's a few)."""
    a, b = tmp_path_factory.mktemp("out_a"), tmp_path_factory.mktemp("out_b")
    build_all(tracking_uri=uri, out_dir=a)
    first = {p.relative_to(a): p.read_bytes() for p in sorted(a.rglob("*")) if p.is_file()}
    build("sampling", tracking_uri=uri, out_dir=b)
    build("sampling", tracking_uri=uri, out_dir=a)
    return a, b, first


def test_top_of_results_holds_only_the_reserved_files_and_study_folders(outputs):
    """No study may be named like a file the analysis writes beside the study folders (study.core.paths)."""
    from study.core.paths import RESULTS_TOP_FILES

    a, _, _ = outputs
    files = {p.name for p in a.iterdir() if p.is_file()}
    assert files <= set(RESULTS_TOP_FILES) and "REPORT.md" in files, files


# --------------------------------------------------------------------------- load


def test_studies_found(uri):
    assert list_studies(uri) == ["boundary", "final", "ghost", "labels", "sampling"]


def test_load_excludes_duplicates_and_failed(data):
    s = data["sampling"]
    assert s.found and s.factors == ("sampling",) and s.metric == "knn_top1"
    assert s.levels == ("random", "semi-easy", "semi-hard", "hard")
    assert s.cells["cell_id"].is_unique
    counts = s.cells.groupby("level").size().to_dict()
    assert counts == {"random": 2, "semi-easy": 2, "semi-hard": 3, "hard": 3}
    semi_hard = s.cells[s.cells["level"] == "semi-hard"].sort_values("seed")
    assert list(semi_hard["knn_top1"]) == pytest.approx([0.70, 0.72, 0.74])  # the 0.10 duplicate is dropped
    hard2 = s.cells[(s.cells["level"] == "hard") & (s.cells["seed"] == 2)]
    assert list(hard2["cell_id"]) == [cell_id("sampling", "hard", 2)]  # failed first, then finished: counted


def test_an_int_column_beyond_int64_reads_as_missing():
    """One run with a seed no int64 holds (a hand-made store) must not stop the reading of the others."""
    from analysis.load import _typed

    df = _typed([{"seed": 10**20}, {"seed": 3}, {"seed": None}, {"seed": float("nan")}, {"seed": -(2**63)}],
                {"seed": "int"})
    assert df["seed"].dtype == "int64" and df["seed"].tolist() == [-1, 3, -1, -1, -(2**63)]


def test_missing_cells_reported(data):
    m = data["sampling"].missing
    got = {(r.level, r.seed, r.status) for r in m.itertuples()}
    assert got == {("random", 2, "FAILED"), ("semi-easy", 2, "NOT IN STORE")}
    assert data["labels"].missing.empty
    ghost = data["ghost"]
    assert ghost.found and ghost.empty and list(ghost.missing["status"]) == ["FAILED"]
    assert not data["nope"].found and data["nope"].empty


def test_seeds_the_adaptive_loop_added_are_gaps_only_for_the_levels_it_extended():
    """After --until-decided, random and semi-easy keep the study's seeds 0-2 while semi-hard and
    hard went on to seed 6: those seeds are not 'missing' for random and semi-easy, but a hole
    in an extended level (hard seed 5, never started) still is, and so is one among seeds 0-2."""
    import pandas as pd

    from analysis.load import find_missing

    have = [(lvl, s) for lvl in ("random", "semi-easy") for s in (0, 1, 2) if (lvl, s) != ("random", 1)]
    have += [(lvl, s) for lvl in ("semi-hard", "hard") for s in range(7) if (lvl, s) != ("hard", 5)]
    cells = pd.DataFrame({"level": [lvl for lvl, _ in have], "seed": [s for _, s in have]})
    runs = pd.DataFrame({"cell_id": [f"{lvl}-{s}" for lvl, s in have], "level": cells["level"],
                         "seed": cells["seed"], "status": "FINISHED", "run_id": "r", "end_time": 0.0})
    finished = set(runs["cell_id"])
    got = {(r.level, r.seed) for r in find_missing(runs, cells, finished, [0, 1, 2]).itertuples()}
    assert got == {("random", 1), ("hard", 5)}
    # without the parent's seeds (a store from before the tag): every seed is expected of every level
    assert len(find_missing(runs, cells, finished, None)) == 2 + 2 * 4
    # a level the study plans but no cell of which has started (an interrupted study): all its seeds
    got = {(r.level, r.seed) for r in find_missing(runs, cells, finished, [0, 1, 2],
                                                   ["random", "semi-easy", "semi-hard", "hard", "x"]).itertuples()}
    assert got == {("random", 1), ("hard", 5), ("x", 0), ("x", 1), ("x", 2)}


def test_level_with_only_failed_cells_keeps_its_place(data, outputs):
    b = data["boundary"]
    assert b.levels == ("cosine -1", "cosine -0.5", "cosine -0.25", "cosine 0", "cosine +0.5", "arc +0.3")
    assert set(b.missing["level"]) == {"cosine -0.25"} and len(b.missing) == 3
    assert "| cosine -0.25 | 0 | - | - | - | - | - | - |" in (outputs[0] / "boundary" / "summary.md").read_text()


def test_other_presets_and_superseded_runs_left_out(data):
    lab = data["labels"]
    assert lab.preset == "smoke" and set(lab.cells["preset"]) == {"smoke"}
    assert list(lab.excluded["cell_id"]) == ["cpu-online-0"] and "preset cpu" in lab.excluded["reason"].iloc[0]
    fin = data["final"]
    assert list(fin.excluded["cell_id"]) == ["old-interclr-1"]
    assert "superseded" in fin.excluded["reason"].iloc[0]
    assert fin.cells.groupby("level").size().to_dict() == {"InterCLR": 3, "MoCo v2": 3}
    assert fin.missing.empty and lab.missing.empty


def test_cells_contract_and_values(data):
    c = data["labels"].cells
    assert str(c["seed"].dtype) == "int64" and str(c["knn_top1"].dtype) == "float64"
    online = c[c["level"] == "online"].sort_values("seed")
    assert list(online["linear_top1"]) == pytest.approx([0.78, 0.80, 0.79])
    assert list(online["nmi"]) == pytest.approx([0.50, 0.51, 0.52])
    assert (online["epochs"] == EPOCHS).all() and (online["labels"] == "online").all()
    assert (online["factor.labels"] == "online").all()
    # knn_auc = mean of the linear curve over epochs 1..3: 0.6 + (knn - 0.6) * (1/3 + 2/3 + 1) / 3
    assert online["knn_auc"].iloc[0] == pytest.approx(0.6 + 0.13 * 2 / 3)
    b = data["boundary"].cells
    assert set(zip(b["margin_type"], b["margin"])) >= {("cosine", -0.5), ("arc", 0.3)}
    f = data["final"].cells
    assert f[f["method"] == "mocov2"]["nmi"].isna().all()
    # every other per-epoch metric of the contract is a column too: its last value per cell
    cur = data["labels"].curves
    for _, row in online.iterrows():
        last = cur[(cur["cell_id"] == row["cell_id"]) & (cur["metric"] == "label_change_ratio")]
        assert row["label_change_ratio"] == pytest.approx(last.sort_values("epoch")["value"].iloc[-1])
    assert f[f["method"] == "mocov2"]["label_change_ratio"].isna().all()


def test_curves_long_frame(data):
    cur = data["labels"].curves
    assert set(cur.columns) == {"cell_id", "run_id", "level", "seed", "metric", "epoch", "value"}
    knn = cur[(cur["metric"] == "knn_top1") & (cur["level"] == "online") & (cur["seed"] == 0)]
    assert list(knn["epoch"]) == list(range(EPOCHS + 1))
    assert knn["value"].iloc[-1] == pytest.approx(KNN["labels"]["online"][0])
    lcr = cur[cur["metric"] == "label_change_ratio"]
    assert lcr["epoch"].min() == 1
    assert "linear_top1" not in set(cur["metric"])
    assert "neg_sim_q05" not in set(data["final"].curves.query("level == 'MoCo v2'")["metric"])


def test_missing_store_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(StoreError, match="no MLflow store"):
        client_for(f"sqlite:///{tmp_path / 'absent.db'}")
    assert main(["--tracking-uri", f"sqlite:///{tmp_path / 'absent.db'}", "--out", str(tmp_path)]) == 2
    assert "no MLflow store" in capsys.readouterr().err
    assert not (tmp_path / "absent.db").exists()


def test_default_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert default_tracking_uri().startswith("sqlite:////") and default_tracking_uri().endswith("/mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////x/y.db")
    assert default_tracking_uri() == "sqlite:////x/y.db"


# --------------------------------------------------------------------------- findings


def _verdicts(d):
    (h,) = evaluate_study(d)
    return h.verdict, [p.verdict for u in h.units for p in u.parts], h


def _parts(h):
    return [p for u in h.units for p in u.parts]


def test_findings_on_the_known_store(data):
    """A store from before hypotheses were data: the paper's finding of the factor each study varies."""
    v, parts, h = _verdicts(data["labels"])
    assert v is Verdict.HOLDS and parts == [Verdict.HOLDS, Verdict.HOLDS]  # final metric and convergence
    assert [p.metric for p in _parts(h)] == ["knn_top1", "knn_auc"]
    c = _parts(h)[0].comparison
    assert (c.mean_diff, c.std_diff, c.n) == pytest.approx((0.03, 0.01, 3))
    assert c.ci_low == pytest.approx(0.03 - T2 * 0.01 / math.sqrt(3))
    v, parts, h = _verdicts(data["sampling"])
    assert v is Verdict.INCONCLUSIVE and h.text == "inconclusive at n=3 seeds"
    assert _parts(h)[0].label == "semi-hard - hard"
    v, parts, h = _verdicts(data["boundary"])
    assert v is Verdict.HOLDS and [p.label for p in _parts(h)] == ["cosine -0.5 - cosine 0", "cosine -0.5 - cosine +0.5"]
    v, parts, h = _verdicts(data["final"])
    assert v is Verdict.CONTRADICTED and _parts(h)[0].comparison.mean_diff == pytest.approx(-0.05)
    v, _, h = _verdicts(data["ghost"])
    assert v is Verdict.NOT_RUN and h.text == "not run: no finished cells"


# --------------------------------------------------------------------------- figures


def _labelled(ax):
    return [t for t in ax.get_legend_handles_labels()[1]]


def test_the_mechanisms_of_the_labels_study_get_a_figure_and_a_table(data):
    """Cells that logged positive precision and cluster recall: the labels study draws them against epoch
    (one line per label mode) and its report section tabulates them per level; a store without them has
    neither (test_figures_series)."""
    from dataclasses import replace

    import pandas as pd

    from analysis.report import mechanism_lines

    lab = data["labels"]
    assert "positive_quality" not in F.study_figures(lab) and mechanism_lines(lab) == []
    knn = lab.curves[lab.curves["metric"] == "knn_top1"]
    extra = pd.concat([knn.assign(metric=m, value=0.5 + 0.1 * (knn["level"] == "online")) for m in
                       ("pos_precision", "cluster_recall")], ignore_index=True)
    cells = lab.cells.assign(pos_precision=[0.6 if lv == "online" else 0.5 for lv in lab.cells["level"]],
                             cluster_recall=0.4)
    mech = replace(lab, curves=pd.concat([lab.curves, extra], ignore_index=True), cells=cells)
    fig = F.study_figures(mech)["positive_quality"]
    assert [a.get_ylabel() for a in fig.axes] == ["positive precision (%)", "cluster recall (%)"]
    assert [len(_labelled(a)) for a in fig.axes] == [2, 2]
    lines = "\n".join(mechanism_lines(mech))
    assert "| pos_precision (%) |" in lines and "| cluster_recall (%) |" in lines
    assert "**60.00" in lines  # online: the best precision, in bold
    assert "neg_false_ratio" not in lines.split("\n\n")[-1]  # columns only of what the cells logged


def test_the_protocols_get_a_low_shot_curve_and_one_table(data):
    """Cells with low-shot and fine-tune metrics: the low-shot curve (k on a log axis, a line per level)
    and one table of every protocol per level, with what they cost."""
    from dataclasses import replace

    from analysis.report import protocol_lines

    s = data["sampling"]
    assert "lowshot" not in F.study_figures(s) and protocol_lines(s) == []
    cells = s.cells.assign(lowshot_k1_top1=0.3, lowshot_k4_top1=0.5, semisup_1pct_top1=0.6, lowshot_seconds=1.0,
                           semisup_seconds=3.0, seconds=100.0)
    prot = replace(s, cells=cells)
    (ax,) = F.study_figures(prot)["lowshot"].axes
    assert ax.get_xscale() == "log" and [t.get_text() for t in ax.get_xticklabels()] == ["1", "4"]
    assert len(_labelled(ax)) == len(s.levels)
    text = "\n".join(protocol_lines(prot))
    assert "| low-shot k1 (%) |" in text and "| fine-tune 1% (%) |" in text and "Linear top-1" in text
    assert "median 4.0 s, 4% of a cell" in text
    assert "| semi-hard - hard (paired) |" in text  # the sampling study's hypothesis: semi-hard vs hard


def test_figures_series(data):
    s = data["sampling"]
    figs = F.study_figures(s)
    assert set(figs) == {"knn_convergence", "negatives_similarity"}
    (ax,) = figs["knn_convergence"].axes
    assert _labelled(ax) == ["random (n=2)", "semi-easy (n=2)", "semi-hard (n=3)", "hard (n=3)"]
    assert len(ax.collections) == 4  # one std band per level
    assert ax.get_xlabel() == "epoch" and "kNN" in ax.get_ylabel()
    ax0, ax1 = figs["negatives_similarity"].axes
    assert len(ax0.patches) == 4 and [t.get_text().split("\n")[0] for t in ax0.get_xticklabels()] == list(s.levels)
    assert _labelled(ax1) == list(s.levels) and len(ax1.collections) == 4
    lab = F.study_figures(data["labels"])["label_dynamics"]
    assert [len(_labelled(a)) for a in lab.axes] == [2, 2]
    assert [a.get_ylabel() for a in lab.axes] == ["NMI", "label change ratio"]
    margin = F.study_figures(data["boundary"])["margin_sweep"]
    cos, arc = margin.axes
    assert "cosine" in cos.get_xlabel() and "arc" in arc.get_xlabel()
    assert len(cos.lines[0].get_xdata()) == 4 and len(arc.lines[0].get_xdata()) == 1  # margins per panel
    (fin,) = F.study_figures(data["final"])["knn_convergence"].axes
    assert _labelled(fin) == ["InterCLR (n=3)", "MoCo v2 (n=3)"]
    assert F.study_figures(data["ghost"]) == {}
    # no legend over data: one legend per figure, outside (below) the panels
    for d in (data["labels"], data["sampling"], data["boundary"], data["final"]):
        for stem, fig in F.study_figures(d).items():
            assert all(a.get_legend() is None for a in fig.axes), stem
            assert len(fig.legends) == 1, stem
            fig.draw_without_rendering()  # runs the constrained layout
            box = fig.legends[0].get_window_extent()
            assert box.x0 >= 0 and box.x1 <= fig.bbox.width + 0.5, f"{stem}: legend clipped"
            assert all(box.y1 <= a.get_window_extent().y0 for a in fig.axes), f"{stem}: legend over a panel"


def test_figures_written(outputs):
    a, _, _ = outputs
    for study, stems in {"labels": ["knn_convergence", "label_dynamics"],
                         "sampling": ["knn_convergence", "negatives_similarity"],
                         "boundary": ["knn_convergence", "margin_sweep"], "final": ["knn_convergence"]}.items():
        for stem in stems:
            png, pdf = a / study / f"{stem}.png", a / study / f"{stem}.pdf"
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
            assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 5000
    assert not (a / "ghost").exists()


# --------------------------------------------------------------------------- tables and report


def test_tables_hold_hand_computed_numbers(outputs):
    a, _, _ = outputs
    half = T2 * 0.02 / math.sqrt(3)  # semi-hard: 0.70, 0.72, 0.74
    csv = (a / "sampling" / "summary.csv").read_text().splitlines()
    assert csv[0].startswith("kind,level,n,knn_top1_mean,knn_top1_std,knn_top1_ci_low,knn_top1_ci_high,knn_top1_n")
    row = next(r for r in csv if r.startswith("level,semi-hard,"))
    assert row.startswith(f"level,semi-hard,3,0.720000,0.020000,{0.72 - half:.6f},{0.72 + half:.6f},3,"
                          f"0.770000,0.020000,")
    md = (a / "sampling" / "summary.md").read_text()
    assert "| semi-hard | 3 | **72.00 ± 2.00** | [67.03, 76.97] | **77.00 ± 2.00** |" in md
    assert "| random | 2 | 67.00 ± 1.41 |" in md  # the failed seed is not counted
    tex = (a / "sampling" / "summary.tex").read_text()
    assert r"\textbf{72.00 $\pm$ 2.00} & [67.03, 76.97]" in tex and r"\toprule" in tex
    final = (a / "final" / "summary.md").read_text()
    assert "| InterCLR - MoCo v2 (paired) | 3 | -5.00 ± 1.00 | [-7.48, -2.52] |" in final
    abl = (a / "ablation.md").read_text()
    assert "Pseudo-labels (labels)" in abl and "Negative sampling (sampling)" in abl
    assert "Decision boundary (boundary)" in abl and "MoCo" not in abl


def test_report(outputs):
    a, _, _ = outputs
    rep = (a / "REPORT.md").read_text()
    assert ("| `semi-hard-negatives` | sampling | **inconclusive at n=3 seeds** | semi-hard - hard | "
            "final kNN top-1 (%) | +1.00 | [-3.97, +5.97] |") in rep
    assert "| `online-labels` | labels | **holds** | online - offline |" in rep
    assert "| `interclr-beats-mocov2` | final | **contradicted** |" in rep
    assert "Claim: semi-hard negatives are more reliable and less biased than hard negatives." in rep
    assert "random seed 2 (FAILED" in rep and "semi-easy seed 2 (not in the store)" in rep
    assert "](sampling/negatives_similarity.png)" in rep and "](boundary/margin_sweep.pdf)" in rep
    assert "## Study `ghost`" in rep and "No finished cells" in rep
    assert "Finished cells left out (1): online seed 0 (run " in rep and "preset cpu, not smoke" in rep
    # the verdict table: every row has the header's cells, the rows of findings with no comparison too
    table = rep.split("## Verdicts", 1)[1].split("\n\n")[1].splitlines()
    widths = {len(row.split(" | ")) for row in table if row.startswith("| ")}
    assert len(widths) == 1 and any("| **not run" in row for row in table), table


def test_builds_are_byte_identical(outputs):
    a, b, first = outputs
    assert {p.suffix for p in first} == {".md", ".tex", ".csv", ".png", ".pdf"}
    for folder, why in ((a, "changed on rebuild"), (b, "differs between folders")):
        files = {p.relative_to(folder): p.read_bytes() for p in sorted((folder / "sampling").rglob("*"))
                 if p.is_file()}
        assert files.keys() == {rel for rel in first if rel.parts[0] == "sampling"}
        for rel, data in files.items():
            assert data == first[rel], f"{rel} {why}"


def test_one_study_and_an_absent_one(uri, tmp_path):
    paths = build("nope", tracking_uri=uri, out_dir=tmp_path)
    assert paths == [tmp_path / "ablation.md", tmp_path / "ablation.tex", tmp_path / "ablation.csv",
                     tmp_path / "REPORT.md"]
    rep = (tmp_path / "REPORT.md").read_text()
    assert "No experiment named `nope` in the store" in rep
    assert "![" not in rep  # no figure was built here, so none is linked
    assert main(["--study", "nope", "--tracking-uri", uri, "--out", str(tmp_path), "--study", "ghost"]) == 0


def test_contract_error_exits_2(uri, tmp_path, monkeypatch, capsys):
    def broken(*_a, **_k):
        raise ContractError("study 'x': cell run r has no param 'seed'")
    monkeypatch.setattr("analysis.pipeline.load_study", broken)
    assert main(["--study", "x", "--tracking-uri", uri, "--out", str(tmp_path)]) == 2
    assert "no param 'seed'" in capsys.readouterr().err


def test_uri_never_defaults_to_repo_store(uri):
    assert Path(uri[len("sqlite:///"):]).parent != Path(__file__).resolve().parents[1]


def test_a_mistyped_study_is_refused_and_an_absent_one_reported_not_run(uri, tmp_path, capsys):
    name = list_studies(uri)[0]
    out = tmp_path / "o"
    assert main(["--study", name + "x", "--tracking-uri", uri, "--out", str(out), "--no-log"]) == 2
    err = capsys.readouterr().err
    assert f"--study {name}x: no study of that name" in err and f"did you mean '{name}'" in err, err
    assert len(err.strip().splitlines()) == 1 and not out.exists()  # one line, nothing written
    assert main(["--study", "zzzqqq", "--tracking-uri", uri, "--out", str(out), "--no-log"]) == 0
    assert "no study 'zzzqqq' in the store (reported as not run" in capsys.readouterr().err
    assert "not run" in (out / "REPORT.md").read_text()


@pytest.mark.parametrize("errno, words", [(28, "the disk is full"), (20, "a file stands where a folder should be")])
def test_a_machine_failure_mid_build_is_one_line_that_says_to_rebuild(uri, tmp_path, monkeypatch, capsys, errno,
                                                                       words):
    """A full disk (or a file where a folder should be) while the analysis writes: one line, exit 1, naming
    the file and saying to run the analysis again, not to resume a study."""
    import os

    def fails(*_a, **_k):
        raise OSError(errno, os.strerror(errno), str(tmp_path / "out" / "sampling" / "summary.csv"))
    monkeypatch.setattr("analysis.pipeline.build_all", fails)
    assert main(["--tracking-uri", uri, "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err and "summary.csv" in err, err
    assert "run it again" in err and "cells" not in err, err
