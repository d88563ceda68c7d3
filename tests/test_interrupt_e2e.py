"""A study's driver stopped by Ctrl-C (SIGINT) or SIGTERM, through `python -m study run` and Ray:
the runs are marked, the exit status is 130 or 143, and the same command resumes. On a loaded
machine (the busy_cores fixture), as a study leaves it.

Fixtures and helpers come from tests/test_interrupt.py. A file of its own so that pytest-xdist
(`make test`: one file per worker) runs these two slow tests beside that file's fast ones.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import fake_trial_env, store_client, write_smoke_study
from test_interrupt import REPO, store  # noqa: F401 (store: a fixture)

from study.tracking import FINISHED, KILLED


def _runs(client, name, role="cell"):
    exp = client.get_experiment_by_name(name)
    return client.search_runs([exp.experiment_id], filter_string=f"tags.role = '{role}'", max_results=100)


def _start_and_signal(path: Path, env: dict, tmp_path: Path, sig: int, group: bool):
    """Start a study, send ``sig`` once a cell is mid-way; returns (exit status, output)."""
    proc = subprocess.Popen([sys.executable, "-m", "study", "run", str(path), "--preset", "smoke"], env=env,
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    run_dirs = tmp_path / "runs" / path.stem
    deadline = time.time() + 900  # generous: a loaded machine starts Ray slowly
    started = False
    try:
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.3)
            if run_dirs.exists() and any((d / "metrics.jsonl").exists() for d in run_dirs.iterdir()):
                started = True
                break
        assert started and proc.poll() is None, "the study ended (or never reached a cell) before the signal"
        if group:
            os.killpg(proc.pid, sig)  # what Ctrl-C does: the whole process group
        else:
            os.kill(proc.pid, sig)  # the driver alone (kill PID, a batch system)
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, out


@pytest.mark.slow
def test_ctrl_c_marks_runs_and_the_same_command_resumes(store, busy_cores):
    tmp_path, env = store
    env = fake_trial_env(env, epoch_s=0.5)  # the driver's side is under test, not what a cell trains
    path = write_smoke_study(tmp_path, "ctrlc", epochs=3, seeds="[0]")
    code, out = _start_and_signal(path, env, tmp_path, signal.SIGINT, group=True)
    assert code == 130, out
    assert "interrupted (SIGINT)" in out and f"run the same command again: python -m study run {path}" in out
    assert "Tuner.restore" not in out and "Traceback" not in out, out
    client = store_client(tmp_path)
    runs = _runs(client, "ctrlc")
    assert runs and all(r.info.status in (FINISHED, KILLED) for r in runs), [r.info.status for r in runs]
    assert all(r.data.tags.get("interrupted") == "SIGINT" for r in runs if r.info.status == KILLED)
    assert _runs(client, "ctrlc", "parent")[0].info.status == KILLED
    status = subprocess.run([sys.executable, "-m", "study", "status", str(path), "--preset", "smoke"], env=env,
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert "interrupted" in status.stdout and "run the same command again" in status.stdout, status.stdout
    res = subprocess.run([sys.executable, "-m", "study", "run", str(path), "--preset", "smoke"], env=env,
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    runs = _runs(client, "ctrlc")
    assert len(runs) == 2 and len({r.data.tags["cell_id"] for r in runs}) == 2
    for r in runs:
        assert r.info.status == FINISHED and "interrupted" not in r.data.tags  # the stop is history now
        steps = sorted(m.step for m in client.get_metric_history(r.info.run_id, "loss"))
        assert steps == [1, 2, 3], steps  # no epoch logged twice
    assert "wall/ideal" in res.stdout
    ratio = float(res.stdout.split("wall/ideal ")[1].split()[0])
    assert ratio >= 1.0, res.stdout
