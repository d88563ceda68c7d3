"""The scheduler's behaviours end to end through Ray Tune: a study killed with SIGKILL mid-way and
run again, failing cells and ``--rerun-failed``, a bad trial seam.

They run the fake trial (:mod:`cluster.fake_trial`): what they test does not depend on what a cell
trains. Fixtures and helpers come from tests/test_study_e2e.py; a file of its own so that
pytest-xdist (`make test`: one file per worker) runs it beside that file's real study.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import fake_trial_env, write_smoke_study
from test_study_e2e import REPO, _check_complete, _client, _runs, _study, store  # noqa: F401 (store: a fixture)

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
