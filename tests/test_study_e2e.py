"""A study end to end through Ray Tune into a temporary MLflow store: the one local study whose
cells train for real, checked with the MLflow client and the analysis.

The scheduler's behaviours (SIGKILL and a rerun, failing cells, the trial seam) are in
tests/test_study_resume.py, which uses this file's fixture and helpers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import store_client, store_env, write_smoke_study
from study.core import names

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.fixture
def store(tmp_path):
    env = store_env(tmp_path, STUDY_NUM_CPUS="2")
    return tmp_path, env


_client = store_client


def _runs(client, name, role="cell"):
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], filter_string=f"tags.role = '{role}'", max_results=1000)


def _study(*args, env, timeout=600, **kw):
    return subprocess.run([sys.executable, "-m", "study", "run", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, **kw)


def _check_complete(client, name, n_cells, epochs):
    runs = _runs(client, name)
    assert len(runs) == n_cells, [r.data.tags.get("cell_id") for r in runs]
    assert len({r.data.tags["cell_id"] for r in runs}) == n_cells
    for r in runs:
        assert r.info.status == "FINISHED", (r.data.tags, r.info.status)
        for key in ("knn_top1", "loss"):
            steps = [m.step for m in client.get_metric_history(r.info.run_id, key)]
            expect = list(range(epochs + 1)) if key == "knn_top1" else list(range(1, epochs + 1))
            assert sorted(steps) == expect, (key, steps)
    return runs


# four commands in a row, two of them training real cells: on a loaded machine (a study keeps every
# core busy) this takes several times its quiet ~2 minutes
@pytest.mark.timeout(1200)
def test_smoke_study_through_tune(store):
    tmp_path, env = store
    path = write_smoke_study(tmp_path, "e2e", epochs=2)
    res = _study(str(path), "--preset", "smoke", env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "done 4/4" in res.stdout
    client = _client(tmp_path)
    parents = _runs(client, "e2e", role="parent")
    assert len(parents) == 1 and parents[0].data.params["factors"] == "sampling"
    runs = _check_complete(client, "e2e", 4, 2)
    for r in runs:
        tags, params = r.data.tags, r.data.params
        assert tags["study"] == "e2e" and tags["preset"] == "smoke" and len(tags["cell_id"]) == 12
        assert tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert params["sampling"] == tags["factor.sampling"] == tags["level"]
        assert params["seed"] in ("0", "1") and params["margin"] == "-0.5" and params["epochs"] == "2"
        for key in ("nmi", "label_change_ratio", "neg_sim_mean", "loss_inter", "loss_intra",
                    # the mechanisms, against the true classes (issue 26)
                    "neg_false_ratio", "neg_class_kl", "pos_precision", "cluster_recall", "queue_false_ratio"):
            assert key in r.data.metrics, key
        assert "linear_top1" in r.data.metrics
        # every metric the trainer produced (its run directory's files) is in the contract, and in MLflow
        run_dir = tmp_path / "runs" / "e2e" / tags["cell_id"]
        produced = {k for line in (run_dir / "metrics.jsonl").read_text().splitlines() for k in json.loads(line)}
        final = json.loads((run_dir / "final.json").read_text())
        assert all(names.named(k) for k in produced) and all(names.named(k, final=True) for k in final), \
            sorted(k for k in set(produced) | set(final) if not names.named(k, final=True))
        logged = {k for k in produced if k not in names.NOT_LOGGED}
        assert {"label_change_raw", "starved_query_ratio", "clusters_reseeded"} <= logged  # once dropped
        assert logged <= set(r.data.metrics), sorted(logged - set(r.data.metrics))
        assert {names.FINAL_METRICS[k] for k in final if k in names.FINAL_METRICS} <= set(r.data.metrics)
        arts = [a.path for a in client.list_artifacts(r.info.run_id)]
        assert "config.json" in arts
    # the analysis rebuilds this real study's table and figures from the store alone
    out = tmp_path / "results"
    res = subprocess.run([sys.executable, "-m", "analysis", "--study", "e2e", "--out", str(out)], env=env,
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    table = (out / "e2e" / "summary.csv").read_text()
    assert "semi-hard" in table and "hard" in table
    assert (out / "e2e" / "knn_convergence.png").stat().st_size > 0
    report = (out / "REPORT.md").read_text()
    assert "e2e" in report
    # the sampling factor's mechanism: false negatives per strategy, a figure and a table
    assert (out / "e2e" / "false_negatives.png").stat().st_size > 0
    assert "](e2e/false_negatives.png)" in report and "| neg_false_ratio (%) |" in report
    # a second run finds everything finished and trains nothing
    again = _study(str(path), "--preset", "smoke", env=env)
    assert again.returncode == 0 and "4 finished, 0 to run" in again.stdout
    status = subprocess.run([sys.executable, "-m", "study", "status", str(path), "--preset", "smoke"],
                            env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert "done 4, running 0, interrupted 0, failed 0, missing 0" in status.stdout
    _check_complete(client, "e2e", 4, 2)
