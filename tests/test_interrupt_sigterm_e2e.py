"""SIGTERM to a study's driver (a batch system, kill PID), through `python -m study run` and Ray: the runs
are marked, the exit status is 143, runs a killed driver left empty are completed, and the same command
resumes. A file of its own (beside tests/test_interrupt_e2e.py's Ctrl-C) so that pytest-xdist runs the two
slow tests side by side; on a loaded machine (the busy_cores fixture), as a study leaves it.
"""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
from conftest import fake_trial_env, store_client, write_smoke_study
from test_interrupt import REPO, _dead_driver, _new_run, store  # noqa: F401 (store: a fixture)
from test_interrupt_e2e import _runs, _start_and_signal

from study.studyfile import load_study
from study.tracking import FINISHED, RUNNING, StudyTracker


@pytest.mark.slow
def test_sigterm_to_the_driver_is_graceful_and_empty_runs_are_completed(store, busy_cores):
    tmp_path, env = store
    env = fake_trial_env(env, epoch_s=0.5)
    path = write_smoke_study(tmp_path, "term", epochs=2, seeds="[0]")
    study = load_study(path, "smoke")
    # a driver killed right after creating runs left the parent and a cell run empty
    tracker = StudyTracker("term")
    client = store_client(tmp_path)
    empty = _new_run(client, tracker.experiment_id, {"role": "cell", "cell_id": study.cells[0].cell_id,
                                                     "study": "term", "driver": _dead_driver()})
    _new_run(client, tracker.experiment_id, {"role": "parent", "study": "term"})
    code, out = _start_and_signal(path, env, tmp_path, signal.SIGTERM, group=False)
    assert code == 143, out
    assert "interrupted (SIGTERM)" in out and "Tuner.restore" not in out, out
    assert all(r.info.status != RUNNING for r in _runs(client, "term")), out
    res = subprocess.run([sys.executable, "-m", "study", "run", str(path), "--preset", "smoke"], env=env,
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    runs = _runs(client, "term")
    assert len(runs) == 2 and all(r.info.status == FINISHED for r in runs)
    assert client.get_run(empty).data.params["seed"] == "0"
    res = subprocess.run([sys.executable, "-m", "analysis", "--study", "term", "--out", str(tmp_path / "results")],
                         env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
