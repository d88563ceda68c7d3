"""Canonical cell ids (study.core.canonical) and cells linked across studies instead of retrained (study.reuse)."""

from __future__ import annotations

import glob

import pytest

from conftest import run_here, store_client, write_cells_by_hand
from study.core.canonical import EXECUTION_KEYS, INTER_KEYS, canonical_config
from study.core.config import build_config
from study.studyfile import cell_hash, load_study
from study.tracking import FINISHED, StudyTracker

BASE = dict(method="interclr", labels="online", sampling="semi-hard", margin_type="cosine", margin=-0.5,
            neg_search="candidates", candidates=4096)


def _id(**over):
    return cell_hash(build_config("cpu", {**BASE, **over}))


@pytest.mark.parametrize("irrelevant", [
    {"threads": 3}, {"progress": False}, {"device": "cpu"}, {"loader_workers": 7},
    {"recluster_every": 7},  # online labels never re-cluster
])
def test_irrelevant_key_keeps_the_id(irrelevant):
    assert _id(**irrelevant) == _id()


@pytest.mark.parametrize("relevant", [
    {"lr": 0.1}, {"seed": 1}, {"sampling": "hard"}, {"margin": 0.0}, {"labels": "offline"},
    {"centroid_every": 5}, {"candidates": 8192}, {"pool": 3000}, {"epochs": 4}, {"eval_every": 2},
])
def test_relevant_key_changes_the_id(relevant):
    assert _id(**relevant) != _id()


def test_conditional_keys():
    # MoCo v2 builds no inter-image branch: every inter key (and both loss weights) is irrelevant
    moco = dict(method="mocov2")
    assert _id(**moco, sampling="hard", margin=0.3, labels="offline", num_clusters=50, inter_weight=0.5,
               intra_weight=0.5) == _id(**moco)
    assert _id(**moco, lr=0.1) != _id(**moco)
    # offline labels: online upkeep keys are irrelevant, re-clustering is not
    off = dict(labels="offline")
    assert _id(**off, centroid_every=3, min_cluster=5) == _id(**off)
    assert _id(**off, recluster_every=3) != _id(**off)
    # hard negatives: a global top-k, whatever the search mode and pool
    hard = dict(sampling="hard")
    assert _id(**hard, neg_search="exact", candidates=7, pool=5000) == _id(**hard)
    assert _id(**hard, neg_num=512) != _id(**hard)
    # random negatives draw no pool, but do draw from the candidates
    rnd = dict(sampling="random")
    assert _id(**rnd, pool=5000) == _id(**rnd) and _id(**rnd, candidates=8192) != _id(**rnd)
    # exact search ignores the number of candidates
    assert _id(neg_search="exact", candidates=7) == _id(neg_search="exact")
    assert _id(margin_type="none", margin=0.3) == _id(margin_type="none")
    assert _id(intra_margin_type="none", intra_margin=0.3) == _id()
    flat = build_config("cpu", {**BASE, "method": "mocov2"}).flat()
    assert not (set(INTER_KEYS) | set(EXECUTION_KEYS)) & set(canonical_config(flat))


def test_study_all_trains_fewer_cells():
    """The final recipe (online, semi-hard, cosine -0.5) appears in four studies: one id now."""
    every = {s.name: s for s in (load_study(f, "cpu") for f in sorted(glob.glob("experiments/*.yaml")))}
    assert set(every) == {"labels", "sampling", "boundary", "final", "grid", "scale"}
    studies = [every[n] for n in ("labels", "sampling", "boundary", "final")]
    total = sum(len(s.cells) for s in studies)
    distinct = {c.cell_id for s in studies for c in s.cells}
    assert (total, len(distinct)) == (42, 33)
    recipe = {c.cell_id for s in studies for c in s.cells
              if c.config.method == "interclr" and c.config.labels == "online" and c.config.sampling == "semi-hard"
              and c.config.margin_type == "cosine" and c.config.margin == -0.5}
    assert len(recipe) == 3  # one per seed, shared by all four studies
    # the crossed studies link half their base cells from the four: the grid its online / semi-hard / cosine -0.5
    # (every study's recipe), online / hard (sampling's), online / semi-hard / cosine 0 (boundary's) and
    # offline / semi-hard / cosine -0.5 (labels'); scale its 5-epoch cells (final's)
    for name, shared in (("grid", {"offline / semi-hard / cosine -0.5", "online / hard / cosine -0.5",
                                   "online / semi-hard / cosine -0.5", "online / semi-hard / cosine 0"}),
                         ("scale", {"InterCLR / 5", "MoCo v2 / 5"})):
        linked = {c.level for c in every[name].cells if c.cell_id in distinct}
        assert linked == shared, (name, linked)


# --------------------------------------------------------------------------- linking through the runner

STUDY = """
name: {name}
fixed: {{method: interclr, labels: online, margin_type: cosine, margin: -0.5, epochs: 2, {extra}}}
factors:
  sampling: [semi-hard, hard]
seeds: [0]
presets:
  smoke: {{resources: {{cpus: 1}}}}
"""


@pytest.fixture
def store(isolated_store):
    return isolated_store


def _write(tmp_path, name, extra="recluster_every: 1"):
    p = tmp_path / f"{name}.yaml"
    p.write_text(STUDY.format(name=name, extra=extra))
    return p


def _finish_by_hand(study, knn=(0.5, 0.6, 0.7)):
    """Write each cell's run exactly as the Tune callback does (open, epochs, final, end)."""
    tracker = StudyTracker(study.name)
    parent = tracker.parent_run_id({"factors": "sampling", "metric": "knn_top1"})
    return write_cells_by_hand(tracker, study, parent, knn)


def _cells(client, name):
    exp = client.get_experiment_by_name(name)
    return client.search_runs([exp.experiment_id], filter_string="tags.role = 'cell'")


def test_finished_cells_are_linked_once_not_retrained(store, capsys):
    a = load_study(_write(store, "first"), "smoke")
    sources = _finish_by_hand(a)
    # differs only in recluster_every, which online labels never use: the same cells
    b = load_study(_write(store, "second", extra="recluster_every: 3"), "smoke")
    assert [c.cell_id for c in b.cells] == [c.cell_id for c in a.cells]
    # before it runs, status says so (as --dry-run's cost does), not just "missing"
    from study.runner import study_status

    study_status(str(b.path), preset="smoke")
    out = capsys.readouterr().out
    assert out.count("missing (finished in study 'first': the next run links it)") == 2, out
    assert "missing 2 (2 to link from other studies)" in out, out
    # every cell is linked, so nothing is left to train (no Ray starts) and the study finishes
    assert run_here(b) == 0
    out = capsys.readouterr().out
    assert "linked 2 cells" in out and "2 finished, 0 to run" in out
    client = store_client(store)
    runs = _cells(client, "second")
    assert len(runs) == 2
    for run in runs:
        src = sources[run.data.tags["cell_id"]]
        assert run.info.status == FINISHED
        assert run.data.tags["reused_from"] == src.info.run_id and run.data.tags["reused_from_study"] == "first"
        assert run.data.tags["study"] == "second" and run.data.tags["level"] == src.data.tags["level"]
        assert run.data.params["recluster_every"] == "3"  # this study's own config
        assert run.data.params["sampling"] == src.data.params["sampling"]
        assert run.data.metrics == src.data.metrics
        for key in ("knn_top1", "loss"):
            got = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
            want = [(m.step, m.value) for m in client.get_metric_history(src.info.run_id, key)]
            assert sorted(got) == sorted(want) and len(got) == len(want)
        assert (run.info.start_time, run.info.end_time) == (src.info.start_time, src.info.end_time)
        assert [f.path for f in client.list_artifacts(run.info.run_id)] == ["config.json"]
    # run again: nothing new is linked or trained
    assert run_here(b) == 0
    assert "linked" not in capsys.readouterr().out
    assert len(_cells(client, "second")) == 2
    # a link of a link names the original training run
    c = load_study(_write(store, "third"), "smoke")
    run_here(c)
    assert {r.data.tags["reused_from"] for r in _cells(client, "third")} == {s.info.run_id for s in sources.values()}


def test_a_half_made_link_is_replaced(store):
    a = load_study(_write(store, "first"), "smoke")
    _finish_by_hand(a)
    b = load_study(_write(store, "second"), "smoke")
    # a kill mid-link (or an earlier attempt to train here) left a RUNNING run of the first cell
    tracker = StudyTracker("second")
    parent = tracker.parent_run_id({"factors": "sampling", "metric": "knn_top1"})
    stale = tracker.open_cell(b.cells[0], parent).run_id
    tracker.log_epoch(b.cells[0].cell_id, 0, {"knn_top1": 0.1})
    assert run_here(b) == 0
    runs = _cells(store_client(store), "second")
    assert len(runs) == 2 and stale not in {r.info.run_id for r in runs}
    assert all(r.info.status == FINISHED and r.data.tags.get("reused_from") for r in runs)


def test_dry_run_estimates_cost_from_the_store(store):
    from study.cost import estimate_lines

    a = load_study(_write(store, "first"), "smoke")
    assert "no store" in estimate_lines(a, slots=2)[0]
    sources = _finish_by_hand(a)
    secs = sorted((r.info.end_time - r.info.start_time) / 1000.0 for r in sources.values())
    # a study sharing one level with the first: one cell to link, one to train
    other = STUDY.replace("sampling: [semi-hard, hard]", "sampling: [semi-hard, random]")
    path = store / "mixed.yaml"
    path.write_text(other.format(name="mixed", extra="recluster_every: 1"))
    lines = estimate_lines(load_study(path, "smoke"), slots=2)
    assert lines[0] == "cost: 1 cells to train, 1 to link from other studies, 0 finished here"
    median = (secs[0] + secs[1]) / 2
    assert f"{median:.0f} s per cell at preset smoke (median of 2 cells in the store) x 1 cells" in lines[1]
    assert "1 at a time" in lines[1]
    # nothing left to train
    assert estimate_lines(a, slots=2)[0] == "cost: 0 cells to train, 0 to link from other studies, 2 finished here"


def test_cells_of_another_trial_function_are_never_linked(store, monkeypatch, capsys):
    """Cells run by the fake trial (tag `trial`) never stand in for trained ones, nor the reverse."""
    a = load_study(_write(store, "first"), "smoke")
    _finish_by_hand(a)  # trained cells (no `trial` tag)
    monkeypatch.setenv("STUDY_TRIAL", "cluster.fake_trial:fake_trial")
    from study.reuse import finished_elsewhere

    b = load_study(_write(store, "second", extra="recluster_every: 3"), "smoke")
    tracker = StudyTracker("second")
    assert finished_elsewhere(tracker, [c.cell_id for c in b.cells]) == {}
    _finish_by_hand(b)  # now fake cells, tagged
    runs = _cells(store_client(store), "second")
    assert {r.data.tags.get("trial") for r in runs} == {"cluster.fake_trial:fake_trial"}
    monkeypatch.delenv("STUDY_TRIAL")
    c = load_study(_write(store, "third"), "smoke")
    linked = finished_elsewhere(StudyTracker("third"), [cell.cell_id for cell in c.cells])
    assert {r.data.tags["study"] for r in linked.values()} == {"first"}  # the trained ones only


def test_a_file_that_kept_another_studys_name_is_refused(store):
    """Two files named alike but varying other factors would mix their cells: refused before anything is written."""
    from study.core.errors import UserError
    from study.runner import run_study
    from study.backends import load_backend

    a = load_study(_write(store, "first"), "smoke")
    _finish_by_hand(a)
    other = store / "copy.yaml"
    other.write_text("name: first\nfactors: {temperature: [0.1, 0.3]}\nseeds: [0]\n")
    before = len(_cells(store_client(store), "first"))
    with pytest.raises(UserError, match="already holds a study 'first' varying sampling .*this file varies temperature"):
        run_study(str(other), backend=load_backend("local"), preset="smoke", dry_run=True)
    assert len(_cells(store_client(store), "first")) == before


def test_a_deleted_experiment_is_one_error_before_anything_runs(store):
    from study.backends import load_backend
    from study.core.errors import UserError
    from study.runner import run_study

    a = load_study(_write(store, "first"), "smoke")
    _finish_by_hand(a)
    client = store_client(store)
    exp = client.get_experiment_by_name("first")
    client.delete_experiment(exp.experiment_id)
    for dry in (True, False):
        with pytest.raises(UserError, match=f"deleted MLflow experiment .id {exp.experiment_id}.: restore it"):
            run_study(str(a.path), backend=load_backend("local"), preset="smoke", dry_run=dry)


def test_the_analysis_counts_one_variant_of_the_study_settings(store):
    """The same study run again with a --set at the same preset is another variant: its cells and the
    earlier ones are never mixed in one table or verdict (the latest variant counts; the other is listed
    as excluded with why), and the missing list is that variant's."""
    from analysis.load import load_study as load_data

    path = _write(store, "first")
    plain = load_study(path, "smoke")
    _finish_by_hand(plain)
    other = load_study(path, "smoke", {"lr": 0.1})
    assert {c.variant for c in plain.cells} != {c.variant for c in other.cells}
    assert len({c.variant for c in plain.cells}) == 1  # one variant across the levels (pool etc. included)
    tracker = StudyTracker("first")
    parent = tracker.parent_run_id({"factors": "sampling", "metric": "knn_top1"})
    cell = other.cells[0]
    tracker.open_cell(cell, parent)
    tracker.log_final(cell.cell_id, {"epochs": 2, "knn_top1": 0.9})
    tracker.end_cell(cell.cell_id, FINISHED)
    data = load_data("first")
    assert list(data.cells["cell_id"]) == [cell.cell_id]
    assert len(data.excluded) == 2 and data.excluded["reason"].str.startswith("another variant").all()
    assert cell.cell_id not in set(data.missing["cell_id"]) and (data.missing["level"] != cell.level).all()
