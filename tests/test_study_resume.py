"""The scheduler's behaviours end to end through Ray Tune: a study killed with SIGKILL mid-way and
run again (failing cells, ``--rerun-failed`` and a bad trial seam: tests/test_study_failures.py).

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
