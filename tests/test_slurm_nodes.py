"""Two SLURM nodes on this machine: a study whose cells train on both (the real trainer), and a
requeue of a 2-node job mid-study.

Helpers and fixtures come from tests/test_slurm.py. A file of its own so that pytest-xdist
(`make test`: one file per worker) runs it beside the other SLURM tests.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from test_slurm import (TWO_NODES, _cell_runs, _check_complete, _client, _release_and_finish, _run, _state,
                        _submit_until_mid_study, _trained_state, _wait_until, _write_study, jobs,  # noqa: F401 (fixture)
                        needs_two_nodes, partition, store)  # noqa: F401 (fixture)

# partition debug2 of CI's SLURM: this file's jobs take both its nodes (see test_slurm.partition)
PARTITION, NODES = partition(2) if TWO_NODES else ([], [])


@needs_two_nodes
@pytest.mark.slow
def test_two_node_study_uses_both_nodes(store, jobs):
    """``--nodes 2``: the Ray head on the first node, the second node's Ray joins it; the four
    one-CPU cells fill both nodes' CPUs, so each node trains some (the `node` tag), every cell once.
    The one SLURM study whose cells train for real (the trainer on SLURM, end to end)."""
    tmp_path, env = store
    env = {k: v for k, v in env.items() if k not in ("STUDY_TRIAL", "STUDY_FAKE_TRIAL")}
    path = _write_study(tmp_path, "slurm-2n", epochs=1, seeds="[0, 1]")
    res = _run(["run", str(path), "--preset", "smoke", "--cluster", "slurm", "--nodes", "2", "--wait",
                "--cpus-per-task", "2", "--time", "10", *PARTITION], env)
    jobs.extend(re.findall(r"submitted SLURM job (\d+)", res.stdout))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "2 node(s) x 2 CPUs" in res.stdout and "finished 4/4" in res.stdout, res.stdout
    assert "log:" in res.stdout and "python -m study status" in res.stdout
    log_path = Path(re.search(r"log:\s+(\S+)", res.stdout).group(1))
    assert log_path.is_file() and str(log_path).startswith(str(tmp_path / "slurm_logs" / "slurm-2n"))
    log = log_path.read_text()
    assert "Ray head with 2 CPUs" in log
    assert "2 node(s), 4 CPUs" in log, log[-3000:]  # both Ray nodes joined before the study started
    tokens = list((tmp_path / "slurm_logs").rglob("ray_auth_token"))  # the cluster's token: its owner's only
    assert tokens and all(oct(t.stat().st_mode & 0o777) == "0o600" for t in tokens), tokens
    runs = _check_complete(_client(tmp_path), "slurm-2n", 4, 1)
    assert {r.data.tags.get("node") for r in runs} == set(NODES[:2]), [r.data.tags for r in runs]
    # the same command again finds every cell finished and submits nothing
    again = _run(["run", str(path), "--preset", "smoke", "--cluster", "slurm", "--nodes", "2", "--wait", *PARTITION], env)
    assert again.returncode == 0 and "4 finished, nothing to submit" in again.stdout, again.stdout


@needs_two_nodes
@pytest.mark.slow
def test_two_node_requeue_mid_study_finishes_each_cell_once(store, jobs):
    name = "slurm-2n-requeue"
    tmp_path = store[0]
    client, job_id, folder = _submit_until_mid_study(store, jobs, name, "--nodes", "2", *PARTITION)
    finished_before = {r.data.tags["cell_id"]: r.info.run_id for r in _cell_runs(client, name)
                       if r.info.status == "FINISHED"}
    trained_before = _trained_state(tmp_path, name, finished_before)
    subprocess.run(["scontrol", "requeue", job_id], check=True, timeout=30)
    _wait_until(lambda: _state(job_id) == "PENDING", 60, "the requeued job to be pending")
    log = _release_and_finish(job_id, folder)
    assert f"job {job_id} attempt 0" in log and f"job {job_id} attempt 1" in log, log[-3000:]
    assert "restoring it" in log and "2 node(s), 4 CPUs" in log, log[-3000:]
    runs = _check_complete(client, name, 4)
    for r in runs:
        if r.data.tags["cell_id"] in finished_before:
            assert r.info.run_id == finished_before[r.data.tags["cell_id"]]
    assert _trained_state(tmp_path, name, finished_before) == trained_before
    assert {r.data.tags.get("node") for r in runs} <= set(NODES[:2])


