"""Studies against an MLflow tracking server on PostgreSQL (``cluster/mlflow_server.sh``).

The module starts one server (a fresh database, a free port on 127.0.0.1, an
artifact root in a temp dir) through the project's script, as ``make
mlflow-server`` does, and stops it and drops the database at the end. Needs
root and Debian's PostgreSQL (``.ci/run`` installs it); skipped with the reason
otherwise.

- The smoke study through SLURM: the same store checks as with sqlite (every
  cell once, FINISHED, each epoch's metrics once), and the cells' artifacts in
  the server's artifact root.
- A local study whose server is killed mid-study: one clear error naming the
  server, exit 1; the same command after the server is back finishes with
  nothing duplicated, the artifacts in the server's root, and `status` names
  the server.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import fake_trial_env, store_env, write_smoke_study
from test_slurm import (UNEVEN_STUDY, _cell_runs, _check_complete, _mid_study, _wait_until, jobs,  # noqa: F401
                        needs_slurm)

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "cluster" / "mlflow_server.sh"


def _server_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "the MLflow server script runs PostgreSQL as root; run the tests as root (CI does)"
    if shutil.which("pg_lsclusters") is None:
        return "no PostgreSQL here; `bash cluster/mlflow_server.sh prepare` as root installs it"
    return None


needs_server = pytest.mark.skipif(_server_unavailable() is not None, reason=str(_server_unavailable()))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One `cluster/mlflow_server.sh` process: its own database, port and artifact root."""

    def __init__(self, tmp_path: Path):
        self.port = _free_port()
        self.db = "test_" + secrets.token_hex(4)
        self.artifacts = tmp_path / "server-artifacts"
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / "mlflow-server.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = dict(os.environ, MLFLOW_PORT=str(self.port), MLFLOW_DB=self.db, MLFLOW_ARTIFACTS=str(self.artifacts),
                   MLFLOW_WORKERS="1")
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(["bash", str(SCRIPT)], env=env, cwd=REPO, stdout=log, stderr=log,
                                         start_new_session=True)
        # a new database's schema (MLflow's migrations) takes minutes on a busy 2-core machine
        _wait_until(self._healthy, 600, "the MLflow server to answer", lambda: self.log.read_text()[-2000:])

    def _healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"the server exited ({self.proc.returncode}): {self.log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(self.uri + "/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGKILL)  # a crash, not a clean stop
        self.proc.wait(timeout=30)

    def client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.uri)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the module (a new database's schema takes MLflow a while to create); each test
    runs a study of its own name, and the restart test leaves the server running again."""
    srv = Server(tmp_path_factory.mktemp("mlflow-server"))
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()
        subprocess.run(["bash", str(SCRIPT), "drop-db", srv.db], capture_output=True, timeout=60)


def _env(tmp_path, server, **extra):
    """The store is the server; the cells are the fake trial's (what is under test is the store's
    traffic, not what a cell trains), 2 s an epoch so a mid-study moment lasts seconds."""
    env = store_env(tmp_path, STUDY_SLURM_LOGS=str(tmp_path / "slurm_logs"), STUDY_SLURM_POLL="1", **extra)
    env["MLFLOW_TRACKING_URI"] = server.uri
    env.pop("STUDY_SLURM_CONFIG", None)
    return fake_trial_env(env, epoch_s=2.0)


def _study(args, env, timeout=400):
    return subprocess.run([sys.executable, "-m", "study", *args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def _check_artifacts(server, tmp_path, runs):
    """Each cell's config.json went through the server into its artifact root, none to a local folder."""
    for r in runs:
        assert r.info.artifact_uri.startswith("mlflow-artifacts:"), r.info.artifact_uri
        found = list(server.artifacts.rglob(f"{r.info.run_id}/artifacts/config.json"))
        assert len(found) == 1, (r.info.run_id, list(server.artifacts.rglob("*"))[:20])
    assert not (tmp_path / "artifacts").exists()
    assert not (tmp_path / "mlflow.db").exists()


@needs_server
@needs_slurm
@pytest.mark.slow
@pytest.mark.timeout(1200)  # a SLURM job (Ray start-up on the node) on top of the study
def test_smoke_study_against_the_server_through_slurm(tmp_path, server, jobs):
    path = write_smoke_study(tmp_path, "srv-slurm", epochs=1, seeds="[0]")
    res = _study(["run", str(path), "--preset", "smoke", "--cluster", "slurm", "--wait", "--cpus-per-task", "2",
                  "--time", "10"], _env(tmp_path, server))
    jobs.extend(re.findall(r"submitted SLURM job (\d+)", res.stdout))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "finished 2/2" in res.stdout
    runs = _check_complete(server.client(), "srv-slurm", 2, 1)
    _check_artifacts(server, tmp_path, runs)


@needs_server
@pytest.mark.slow
@pytest.mark.timeout(1200)  # may be the module's first test: it also waits for the server's new schema
def test_server_killed_mid_study_then_resumed(tmp_path, server):
    """The server crashes with one cell finished and another mid-training: the study stops with
    one message naming the server (exit 1, no traceback); once the server is back, the same
    command finishes the study: every cell once, each epoch once, the finished cell not redone."""
    name = "srv-restart"
    path = tmp_path / f"{name}.yaml"
    # one short cell, one long one (2 cells: a short test)
    path.write_text(UNEVEN_STUDY.format(name=name).replace("epochs: 6", "epochs: 3").replace("seeds: [0, 1]",
                                                                                          "seeds: [0]"))
    # fail fast instead of MLflow's default minutes of retries
    env = _env(tmp_path, server, MLFLOW_HTTP_REQUEST_MAX_RETRIES="1", MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1",
               MLFLOW_HTTP_REQUEST_TIMEOUT="10")
    out = tmp_path / "run1.log"
    with open(out, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "study", "run", str(path), "--preset", "smoke"], env=env,
                                cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        client = server.client()
        _wait_until(lambda: _mid_study(client, name, 1), 300, "a finished cell and a running one",
                    lambda: out.read_text()[-2000:])
        finished = {r.data.tags["cell_id"]: r.info.run_id for r in _cell_runs(client, name)
                    if r.info.status == "FINISHED"}
        server.stop()
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = out.read_text()
    assert proc.returncode == 1, text[-3000:]
    assert f"error: the MLflow tracking server at {server.uri} does not answer" in text, text[-3000:]
    assert "Traceback" not in text.split("does not answer")[-1], text[-3000:]
    server.start()
    res = _study(["run", str(path), "--preset", "smoke"], env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "finished 2/2" in res.stdout, res.stdout
    m = re.search(r"2 cells: (\d+) finished", res.stdout)
    assert m and int(m.group(1)) >= len(finished), res.stdout  # the finished cells were not run again
    runs = _check_complete(server.client(), name, 2)
    for r in runs:
        if r.data.tags["cell_id"] in finished:
            assert r.info.run_id == finished[r.data.tags["cell_id"]]
    _check_artifacts(server, tmp_path, runs)
    status = _study(["status", str(path), "--preset", "smoke"], env)
    assert status.returncode == 0 and "done 2" in status.stdout and server.uri in status.stdout, status.stdout
