"""Studies end to end through Ray Tune into a temporary MLflow store.

Ray starts for real in each. One smoke study trains real cells and is checked
with the MLflow client and the analysis. The scheduler's behaviours (a study
killed with SIGKILL mid-way and run again; failing cells and
``--rerun-failed``; a bad trial seam) run the fake trial
(:mod:`cluster.fake_trial`): what they test does not depend on what a cell
trains, and they take seconds instead of minutes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import fake_trial_env, store_client, store_env, write_smoke_study

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


FAILING = """
name: failing
fixed: {method: interclr, epochs: 2, linear_epochs: 2}
factors:
  case:
    - {label: ok, set: {lr: 0.06}}
    - {label: flaky, set: {lr: 0.03}}
    - {label: raises, set: {lr: 0.01}}
seeds: [0]
presets:
  smoke: {resources: {cpus: 1}, max_failures: 0}
"""


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
        for key in ("nmi", "label_change_ratio", "neg_sim_mean", "loss_inter", "loss_intra"):
            assert key in r.data.metrics, key
        assert "linear_top1" in r.data.metrics
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
    assert "e2e" in (out / "REPORT.md").read_text()
    # a second run finds everything finished and trains nothing
    again = _study(str(path), "--preset", "smoke", env=env)
    assert again.returncode == 0 and "4 finished, 0 to run" in again.stdout
    status = subprocess.run([sys.executable, "-m", "study", "status", str(path), "--preset", "smoke"],
                            env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert "done 4, running 0, interrupted 0, failed 0, missing 0" in status.stdout
    _check_complete(client, "e2e", 4, 2)


def test_sigkill_then_rerun_finishes_each_cell_once(store):
    tmp_path, env = store
    env = fake_trial_env(env, epoch_s=0.4)
    path = write_smoke_study(tmp_path, "killed", epochs=4, seeds="[0, 1, 2]")
    proc = subprocess.Popen([sys.executable, "-m", "study", "run", str(path), "--preset", "smoke"], env=env,
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    killed_with = None
    run_dirs = tmp_path / "runs" / "killed"
    try:
        # watch the run directories, not the store (a second client could race the
        # store's creation); kill once a cell has finished and another is mid-way
        while time.time() < deadline:
            time.sleep(0.1)
            dirs = list(run_dirs.iterdir()) if run_dirs.exists() else []
            finished = [d for d in dirs if (d / "final.json").exists()]
            midway = [d for d in dirs if (d / "metrics.jsonl").exists() and not (d / "final.json").exists()]
            if finished and midway:
                time.sleep(0.3)  # let the driver log the finished cell
                killed_with = (len(finished), len(midway))
                break
            if proc.poll() is not None:
                break
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    assert killed_with is not None, "the study ended before it could be killed mid-way"
    client = _client(tmp_path)
    finished_before = {r.data.tags["cell_id"]: r.info.run_id for r in _runs(client, "killed")
                       if r.info.status == "FINISHED"}
    attempts = {d.name: (d / "fake_attempts").read_text() for d in run_dirs.iterdir() if (d / "final.json").exists()}
    res = _study(str(path), "--preset", "smoke", env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    runs = _check_complete(client, "killed", 6, 4)
    for r in runs:
        cid = r.data.tags["cell_id"]
        if cid in finished_before:
            assert r.info.run_id == finished_before[cid]  # same run
        if cid in attempts:  # finished before the kill: not trained again
            assert (run_dirs / cid / "fake_attempts").read_text() == attempts[cid]
    # the cells cut mid-way resumed from their checkpoint rather than starting over
    resumed = [d for d in run_dirs.iterdir() if (d / "fake_attempts").read_text() == "2"]
    assert resumed, "no cell was resumed"


def test_failures_are_reported_and_rerun(store):
    tmp_path, env = store
    path = tmp_path / "f.yaml"
    path.write_text(FAILING)
    # 'raises' fails in every attempt, 'flaky' only in its first one
    env = fake_trial_env(env, fail=["raises/0"], fail_once=["flaky/0"])
    res = _study(str(path), "--preset", "smoke", env=env)
    assert res.returncode == 1, res.stdout + res.stderr
    client = _client(tmp_path)
    by_level = {r.data.tags["level"]: r for r in _runs(client, "failing")}
    assert by_level["ok"].info.status == "FINISHED"
    for level in ("flaky", "raises"):
        assert by_level[level].info.status == "FAILED"
        assert "told to fail at epoch 1" in by_level[level].data.tags["error"]  # the trial's own message
    # without --rerun-failed nothing runs; with it only the two failed cells run
    again = _study(str(path), "--preset", "smoke", env=env)
    assert "1 finished, 0 to run, 2 failed" in again.stdout
    rerun = _study(str(path), "--preset", "smoke", "--rerun-failed", env=env)
    assert "1 finished, 2 to run" in rerun.stdout
    runs = _runs(client, "failing")
    assert len(runs) == 3
    status = {r.data.tags["level"]: r.info.status for r in runs}
    assert status == {"ok": "FINISHED", "flaky": "FINISHED", "raises": "FAILED"}, status
    # the cell that failed and then finished resumed after its last epoch, and logged no step twice
    flaky = next(r for r in runs if r.data.tags["level"] == "flaky")
    assert sorted(m.step for m in client.get_metric_history(flaky.info.run_id, "knn_top1")) == [0, 1, 2]


def test_a_trial_seam_that_names_nothing_is_one_error(store):
    tmp_path, env = store
    path = write_smoke_study(tmp_path, "seam", epochs=1, seeds="[0]")
    res = _study(str(path), "--preset", "smoke", env=dict(env, STUDY_TRIAL="cluster.fake_trial:nothing"))
    assert res.returncode == 2, res.stdout + res.stderr
    assert "$STUDY_TRIAL" in res.stderr and "cluster.fake_trial:nothing" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "runs").exists()
