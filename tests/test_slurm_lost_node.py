"""A SLURM node lost mid-study: named by the head, and the study resumable, every cell once.

Helpers and fixtures come from tests/test_slurm.py. A file of its own so that pytest-xdist
(`make test`: one file per worker) runs it beside the other SLURM tests.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from test_slurm import (REPO, TWO_NODES, _cell_runs, _check_complete, _run, _slurm_env, _state,
                        _submit_until_mid_study, _wait_until, jobs, needs_two_nodes,  # noqa: F401 (jobs: a fixture)
                        partition)

# partition debug3 of CI's SLURM: the node this test kills runs no other test's job (see
# test_slurm.partition)
PARTITION, NODES = partition(3) if TWO_NODES else ([], [])


def _kill_node(node: str, job_id: str) -> None:
    """What a node crash does to the job: SIGKILL to the node's slurmd, to the job's processes on
    that node (its task, `ray start`, raylet, trial workers) and to the job step's slurmstepd there."""
    pidfile = Path(f"/run/slurm/slurmd-{node}.pid")
    victims = {int(pidfile.read_text())}
    for proc in Path("/proc").iterdir():
        try:
            env = dict(item.split("=", 1) for item in (proc / "environ").read_text().split("\0") if "=" in item)
        except (OSError, ValueError):
            continue
        if env.get("SLURM_JOB_ID") == job_id and env.get("SLURMD_NODENAME") == node:
            victims.add(int(proc.name))
            if env.get("SLURM_STEP_ID") == "0" and env.get("SLURM_PROCID"):  # the task: its parent is slurmstepd
                stat = (proc / "stat").read_text()
                parent = int(stat.rsplit(")", 1)[1].split()[1])
                if "slurmstepd" in Path(f"/proc/{parent}/cmdline").read_text():
                    victims.add(parent)
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@needs_two_nodes
@pytest.mark.slow
def test_node_lost_mid_study_is_named_and_resumable(tmp_path, jobs):
    """A 2-node study whose second node dies mid-study (slurmd and the job's processes there killed):
    once Ray declares the node dead the head names it and stops; with the node back, the same command
    finishes the study with every cell once.

    The cells are long (4 s an epoch) and Ray's health check short (a node is dead after 3 missed
    checks 1 s apart, instead of about 30 s), so Ray declares the node dead long before Tune's retry of
    the killed trial on the first node could finish the study: the head's naming path is the one taken."""
    name = "slurm-2n-lost"
    env = dict(_slurm_env(tmp_path, epoch_s=4.0), RAY_health_check_period_ms="1000",
               RAY_health_check_timeout_ms="1000", RAY_health_check_failure_threshold="3")
    client, job_id, folder = _submit_until_mid_study((tmp_path, env), jobs, name, "--nodes", "2", *PARTITION)
    log_path = folder / f"{job_id}_0_log.out"
    lost = NODES[1]  # the Ray head runs on the first node of the job's two
    try:
        _kill_node(lost, job_id)
        _wait_until(lambda: _state(job_id) != "RUNNING", 240, "the job to stop",
                    lambda: f"{_state(job_id)}; {log_path.read_text()[-2000:]}")
    finally:
        subprocess.run(["bash", str(REPO / "cluster" / "slurm_setup.sh"), "start-node", lost], check=True,
                       timeout=120)
    log = log_path.read_text()
    assert f"lost node {lost} mid-study" in log, log[-3000:]
    # SLURM has requeued the job after the node failure, or is about to. Its next attempt would reuse
    # the job id and step id on the lost node, whose restarted slurmd still cleans up the killed attempt's step
    # 0 and can kill the new one's task there: cancel it and run the same command again (what the
    # head's message tells the user), a new job
    subprocess.run(["scancel", job_id], capture_output=True, timeout=30)
    _wait_until(lambda: _state(job_id) not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING"), 120,
                "the job to be cancelled", lambda: f"job {job_id} state {_state(job_id)!r}")
    assert any(r.info.status != "FINISHED" for r in _cell_runs(client, name))
    res = _run(["run", str(tmp_path / f"{name}.yaml"), "--preset", "smoke", "--cluster", "slurm", "--wait",
                "--nodes", "2", "--cpus-per-task", "2", "--time", "15", *PARTITION], env, timeout=600)
    jobs.extend(re.findall(r"submitted SLURM job (\d+)", res.stdout))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "finished 4/4" in res.stdout, res.stdout
    _check_complete(client, name, 4)
