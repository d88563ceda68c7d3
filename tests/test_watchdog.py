"""A hung cell does not hold the study forever (issue 27, class 6): past its time limit or silent for too
long between epochs it is stopped and marked FAILED with the reason (cluster.tune_run.Watchdog); `status`
shows the age of a running cell's last epoch; a rerun finishes every cell exactly once."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from conftest import fake_trial_env, store_client, store_env
from study.core.paths import REPO_ROOT

STUDY = """
name: {name}
fixed: {{method: interclr, labels: online, margin_type: cosine, margin: -0.5, epochs: {epochs}}}
factors:
  sampling: [semi-hard, hard]
seeds: [0]
presets:
  smoke: {{resources: {{cpus: 1}}, max_failures: 0, {limits}}}
"""


def _runs(tmp_path, name):
    client = store_client(tmp_path)
    exp = client.get_experiment_by_name(name)
    return {r.data.tags["level"]: r for r in client.search_runs([exp.experiment_id], "tags.role = 'cell'")}


def _hung_after_epoch_0(tmp_path, name) -> bool:
    """The study's `hard` cell is running and has logged its epoch 0."""
    client = store_client(tmp_path)
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], "tags.role = 'cell' and tags.level = 'hard'") if exp else []
    return any(r.info.status == "RUNNING" and "knn_top1" in r.data.metrics for r in runs)


@pytest.mark.timeout(600)
def test_a_hung_cell_is_stopped_with_its_reason_and_status_shows_its_age(tmp_path):
    path = tmp_path / "hang.yaml"
    # 15 s without an epoch (then as long again before the stuck trial process is ended): time for one
    # `status` on a loaded machine to see the hung cell
    path.write_text(STUDY.format(name="hang", epochs=3, limits="max_epoch_minutes: 0.25"))
    env = fake_trial_env(store_env(tmp_path, STUDY_NUM_CPUS="2"), hang=["hard/0"], fail_epoch=1, epoch_s=0.05)
    log = tmp_path / "run.log"
    with open(log, "w") as fh:
        study = subprocess.Popen([sys.executable, "-m", "study", "run", str(path), "--preset", "smoke"],
                                 cwd=REPO_ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, text=True)
    try:
        # wait (cheaply, in this process) for the hung cell's epoch 0, then ask `status` once
        deadline = time.time() + 300
        while time.time() < deadline and study.poll() is None and not _hung_after_epoch_0(tmp_path, "hang"):
            time.sleep(0.5)
        res = subprocess.run([sys.executable, "-m", "study", "status", str(path), "--preset", "smoke"],
                             cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
        status_out = res.stdout
        study.wait(timeout=300)
    finally:
        study.kill()
    out = log.read_text()
    assert "running (last epoch 0" in status_out and "limit 0.25 min" in status_out, status_out
    assert study.returncode == 1, out  # a failed cell
    assert "a cell failed: stopped: no epoch for" in out, out[-3000:]  # the reason, not Ray's "worker died"
    runs = _runs(tmp_path, "hang")
    assert runs["semi-hard"].info.status == "FINISHED"
    assert runs["hard"].info.status == "FAILED"
    assert "no epoch for" in runs["hard"].data.tags["error"] and "max_epoch_minutes" in runs["hard"].data.tags["error"]
    # the same study, the cell no longer hanging: the failed cell is run again, and every cell is there once
    env = fake_trial_env(store_env(tmp_path, STUDY_NUM_CPUS="2"), epoch_s=0.05)
    res = subprocess.run([sys.executable, "-m", "study", "run", str(path), "--preset", "smoke", "--rerun-failed"],
                         cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    runs = store_client(tmp_path).search_runs(
        [store_client(tmp_path).get_experiment_by_name("hang").experiment_id], "tags.role = 'cell'")
    assert sorted(r.data.tags["level"] for r in runs) == ["hard", "semi-hard"]
    assert all(r.info.status == "FINISHED" for r in runs)


@pytest.mark.timeout(600)
def test_a_cell_past_its_time_limit_is_stopped(tmp_path):
    path = tmp_path / "slow.yaml"
    path.write_text(STUDY.format(name="slow", epochs=40, limits="max_cell_hours: 0.001"))  # 3.6 s
    env = fake_trial_env(store_env(tmp_path, STUDY_NUM_CPUS="2"), epoch_s=0.5)
    res = subprocess.run([sys.executable, "-m", "study", "run", str(path), "--preset", "smoke"], cwd=REPO_ROOT,
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 1, res.stdout + res.stderr
    runs = _runs(tmp_path, "slow")
    assert all(r.info.status == "FAILED" and "past its time limit of 0.001 h" in r.data.tags["error"]
               for r in runs.values()), {k: r.data.tags.get("error") for k, r in runs.items()}
