"""Helpers shared by the end-to-end tests: a study store isolated in a temp folder, and the
small InterCLR study they run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


# The test files that take minutes, heaviest first (their summed test times in one `make test`): they start
# first, each on its own pytest-xdist worker, and the quick files fill the gaps behind them. Without
# this, xdist orders files by their number of tests and the slowest (one or two tests each) start
# last, on workers that have already queued a second heavy file.
HEAVY_FILES = ("test_mlflow_server.py", "test_study_e2e.py", "test_disk_full.py", "test_slurm.py", "test_watchdog.py",
               "test_mlflow_ui.py", "test_adaptive.py", "test_interrupt_stress.py", "test_bench.py",
               "test_slurm_lost_node.py", "test_slurm_nodes.py", "test_interrupt_sigterm_e2e.py", "test_stale.py",
               "test_study_failures.py", "test_infra.py", "test_analysis.py", "test_listing.py", "test_interrupt.py",
               "test_study_resume.py", "test_interrupt_e2e.py", "test_hypotheses.py", "test_distributed.py",
               "test_cli_train.py", "test_fidelity.py", "test_backends.py", "test_fonts.py", "test_protocols.py")


def pytest_collection_modifyitems(config, items):
    """Heavy files first, in :data:`HEAVY_FILES` order; the rest keep their order."""
    rank = {name: k for k, name in enumerate(HEAVY_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's tests keep their order


def pytest_xdist_make_scheduler(config, log):
    """Files in collection order, each worker given its next file only once it has at most one test of
    its current file left (xdist's own scheduler hands out a file while two are left: a worker would
    hold two heavy files of one or two tests each while another idles)."""
    if config.getoption("dist") != "loadfile":
        return None  # xdist's own scheduler for the other modes
    from xdist.scheduler import LoadFileScheduling

    class OneFileAhead(LoadFileScheduling):
        def _reschedule(self, node):
            if node.shutting_down:
                return
            if not self.workqueue:
                node.shutdown()
                return
            if self._pending_of(self.assigned_work[node]) > 1:
                return
            self._assign_work_unit(node)

    config.option.loadscopereorder = False  # keep HEAVY_FILES' order
    return OneFileAhead(config, log)


def run_here(study, rerun_failed: bool = False) -> int:
    """Run ``study`` as ``python -m study run`` does with ``--cluster local``: the runner's driver in this
    process (under study.interrupt.drive), Ray on this machine."""
    from cluster.local import LocalBackend
    from study.retry import RetryPolicy
    from study.runner import launch

    return launch(study, LocalBackend({}), sets={}, retry=RetryPolicy(study.max_failures, rerun_failed))


def cells_frame(rows: list[dict]):
    """A cells frame (analysis.load.CELL_COLUMNS) from ``rows``: the columns the rows leave out are
    filled with their kind's empty value ("" for text, -1 for integers, NaN for numbers)."""
    import numpy as np
    import pandas as pd

    from analysis.load import CELL_COLUMNS

    df = pd.DataFrame(rows)
    for col, kind in CELL_COLUMNS.items():
        if col not in df:
            df[col] = "" if kind == "str" else (-1 if kind == "int" else np.nan)
    return df


def store_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a `python -m study` whose store, run dirs and Ray files live in tmp_path."""
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",
               STUDY_RUN_ROOT=str(tmp_path / "runs"), STUDY_RAY_RESULTS=str(tmp_path / "ray"),
               STUDY_ARTIFACT_ROOT=str(tmp_path / "artifacts"), PYTHONUNBUFFERED="1", **extra)
    return env


def fake_trial_env(env: dict[str, str], **behaviour) -> dict[str, str]:
    """``env`` with the cells run by :func:`cluster.fake_trial.fake_trial` (made-up metrics, in
    milliseconds) told ``behaviour`` (its keys: epoch_s, fail, fail_once, fail_epoch, hang, means, noise)."""
    import json

    return dict(env, STUDY_TRIAL="cluster.fake_trial:fake_trial", STUDY_FAKE_TRIAL=json.dumps(behaviour))


def store_client(tmp_path: Path):
    """A client of the store in tmp_path, made under the toolkit's store lock: a test that reads the store
    while a study's driver creates it would otherwise race it to create the tables (sqlite: "duplicate
    column name")."""
    from mlflow.tracking import MlflowClient

    from analysis.uri import use_sqlite_policy
    from study.tracking import store_lock

    use_sqlite_policy()  # the connections the toolkit's own readers open (busy timeout, WAL)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with store_lock(uri):
        client = MlflowClient(tracking_uri=uri)
        client.search_experiments(max_results=1)  # a new store's tables, made now, under the lock
    return client


# 2 sampling levels x the seeds: the study the end-to-end and SLURM tests run at the smoke preset
SMOKE_STUDY = """
name: {name}
fixed: {{method: interclr, labels: online, margin_type: cosine, margin: -0.5, epochs: {epochs},
        linear_epochs: 2}}
factors:
  sampling: [semi-hard, hard]
seeds: {seeds}
hypotheses:
  - {{name: semi-hard-negatives, claim: semi-hard negatives beat hard ones, better: {{sampling: semi-hard}},
     worse: {{sampling: hard}}}}
presets:
  smoke: {{resources: {{cpus: 1}}, max_failures: 1}}
"""


def write_smoke_study(tmp_path: Path, name: str, epochs: int = 2, seeds: str = "[0, 1]",
                      template: str = SMOKE_STUDY) -> Path:
    """``tmp_path/<name>.yaml`` from ``template`` (fields name, epochs, seeds)."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(template.format(name=name, epochs=epochs, seeds=seeds))
    return path


@pytest.fixture(scope="module")
def smoke_data():
    """The smoke preset's Fashion-MNIST subset, in memory (shared by the trainer-level tests)."""
    from study.core.config import build_config
    from study.data.datasets import load_dataset

    cfg = build_config("smoke")
    return load_dataset(cfg.dataset, train_subset=cfg.train_subset, test_subset=cfg.test_subset,
                        image_size=cfg.image_size, seed=0)


@pytest.fixture
def isolated_store(tmp_path, monkeypatch):
    """This process's MLflow store, run dirs, Ray files and artifacts in tmp_path (store_env's variables)."""
    env = store_env(tmp_path)
    for key in ("MLFLOW_TRACKING_URI", "STUDY_RUN_ROOT", "STUDY_RAY_RESULTS", "STUDY_ARTIFACT_ROOT"):
        monkeypatch.setenv(key, env[key])
    return tmp_path



def idle_cores(window: float = 0.5) -> float:
    """How many cores sat idle over the last ``window`` seconds (Linux /proc/stat; 0 where unreadable)."""
    import time

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
        return fields[3] + fields[4], sum(fields)  # idle + iowait, all

    try:
        idle0, all0 = sample()
        time.sleep(window)
        idle1, all1 = sample()
    except (OSError, ValueError, IndexError):
        return 0.0
    return (os.cpu_count() or 1) * (idle1 - idle0) / max(1, all1 - all0)


@pytest.fixture
def busy_cores():
    """Every core kept busy for the test's length: tests of signals, locks and timeouts must pass on a
    loaded machine, as a study leaves it. Run alone, starts one CPU-bound process (nice 0) per core found
    idle over half a second. Inside `make test` (a pytest-xdist worker) the suite's other workers already
    load the machine, and hogs at nice 0 would take their CPU for minutes: there it starts one hog per
    core at nice 19, which only fills the moments the suite leaves a core idle. Yields the number started."""
    import subprocess
    import sys

    in_suite = "PYTEST_XDIST_WORKER" in os.environ
    count = (os.cpu_count() or 1) if in_suite else round(idle_cores())
    niceness = "19" if in_suite else "0"
    hog = [sys.executable, "-c", "import os, sys; os.nice(int(sys.argv[1]))\nwhile True: pass", niceness]
    procs = [subprocess.Popen(hog) for _ in range(count)]
    try:
        yield len(procs)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def finish_by_hand(study, knn=(0.5, 0.6, 0.7)) -> None:
    """The study's cells written as the Tune callback writes them (open, epochs, final, end), and its
    parent finished, in this process's store: no Ray, for tests of what reads the store."""
    from study.tracking import StudyTracker

    tracker = StudyTracker(study.name)
    parent = tracker.parent_run_id(study.parent_params(), study.path)
    for key, value in study.parent_tags().items():
        tracker.client.set_tag(parent, key, value)
    write_cells_by_hand(tracker, study, parent, knn)
    tracker.finish_parent(parent)


def write_cells_by_hand(tracker, study, parent: str, knn=(0.5, 0.6, 0.7)) -> dict[str, str]:
    """Each of ``study``'s cells written under ``parent`` as the Tune callback writes it (open, epochs,
    final, end); cell_id -> its run id."""
    from study.tracking import FINISHED

    for i, cell in enumerate(study.cells):
        tracker.open_cell(cell, parent)
        for epoch, v in enumerate(knn):
            tracker.log_epoch(cell.cell_id, epoch, {"knn_top1": v + i / 100, "loss": 5.0 - epoch})
        tracker.log_final(cell.cell_id, {"epochs": 2, "knn_top1": knn[-1] + i / 100, "linear_top1": 0.8})
        tracker.end_cell(cell.cell_id, FINISHED)
    return {c.cell_id: tracker.cell_runs()[c.cell_id][0] for c in study.cells}


def clone_rows(db: Path, table: str, key: str, template, count: int, new_key, **changes) -> list:
    """``count`` copies of row ``template`` (its ``key`` value) of ``table`` in the sqlite store ``db``, in one
    transaction: the i-th gets key ``new_key(i)`` and ``changes[column](i)`` for the columns named; returns the
    new keys. The other columns are the template's, whatever MLflow's schema holds (its client makes ~20 such
    rows a second; the tests of reading past a page need a thousand, and test the reading)."""
    import sqlite3

    con = sqlite3.connect(db, timeout=60)
    try:
        with con:
            cols = [r[1] for r in con.execute(f"PRAGMA table_info({table})")]
            row = dict(zip(cols, con.execute(f"SELECT * FROM {table} WHERE {key} = ?", (template,)).fetchone()))
            keys = [new_key(i) for i in range(count)]
            rows = [tuple({**row, key: k, **{c: f(i) for c, f in changes.items()}}[c] for c in cols)
                    for i, k in enumerate(keys)]
            con.executemany(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", rows)
            if table == "runs":  # a run's tags go with it
                tag_cols = [r[1] for r in con.execute("PRAGMA table_info(tags)")]
                tags = [dict(zip(tag_cols, t)) for t in con.execute("SELECT * FROM tags WHERE run_uuid = ?", (template,))]
                con.executemany(f"INSERT INTO tags ({', '.join(tag_cols)}) VALUES ({', '.join('?' * len(tag_cols))})",
                                [tuple({**t, "run_uuid": k}[c] for c in tag_cols) for k in keys for t in tags])
        return keys
    finally:
        con.close()
