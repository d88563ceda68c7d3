"""The store stays truthful through interruptions and concurrent commands (issue 12, classes C-F).

- C: SIGINT/SIGTERM stop the driver cleanly (runs marked KILLED, exit 130/143, the
  toolkit's own resume command); runs a dead driver left RUNNING are reconciled;
  ``status`` says "interrupted" and what to run.
- D: two commands at once on a store that does not exist yet both succeed.
- E: the printed wall/ideal ratio comes from one attempt's times.
- F: a run created but not filled in is completed by the next command; stale
  temporary checkpoint files are removed.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import fake_trial_env, store_client, store_env, write_smoke_study
from study.core.errors import UserError
from study.interrupt import StopSignals, StudyInterrupted
from study.studyfile import cell_params, load_study
from study.tracking import FINISHED, KILLED, RUNNING, StudyTracker, driver_alive, driver_identity

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(tmp_path, monkeypatch):
    """An isolated store in tmp_path, set in this process's environment too."""
    env = store_env(tmp_path, STUDY_NUM_CPUS="2")
    for key in ("MLFLOW_TRACKING_URI", "STUDY_RUN_ROOT", "STUDY_RAY_RESULTS", "STUDY_ARTIFACT_ROOT"):
        monkeypatch.setenv(key, env[key])
    return tmp_path, env


def _dead_driver() -> str:
    proc = subprocess.Popen(["sleep", "30"])
    identity = driver_identity(proc.pid)
    proc.kill()
    proc.wait()
    return identity


def _new_run(client, exp_id, tags: dict, status=RUNNING, start_time=None):
    run = client.create_run(exp_id, tags=tags, start_time=start_time)
    if status != RUNNING:
        client.set_terminated(run.info.run_id, status=status)
    return run.info.run_id


# ---------------------------------------------------------------- C: signals and reconciling
def test_driver_alive():
    assert driver_alive(driver_identity()) is True
    assert driver_alive(_dead_driver()) is False
    host, pid, start = driver_identity().split(":")
    assert driver_alive(f"{host}:{pid}:{int(start) + 1}") is False  # same pid, another process
    assert driver_alive(f"not-{socket.gethostname()}:1:1") is None  # another host: cannot tell
    assert driver_alive(None) is False and driver_alive("") is False


def test_stop_signals_record_and_check_raises_at_the_safe_point():
    """The handler only records: no exception where the signal lands; check() raises where it is called."""
    from study import interrupt

    before = signal.getsignal(signal.SIGINT)
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)  # the handler has run (the main thread takes it between bytecodes) and raised nothing
        assert stop.received == signal.SIGTERM and interrupt.received() == signal.SIGTERM
        with pytest.raises(StudyInterrupted) as err:
            interrupt.check()
        assert err.value.exit_code == 143 and err.value.name == "SIGTERM"
    assert signal.getsignal(signal.SIGINT) is before
    assert interrupt.received() is None
    interrupt.check()  # outside a block: nothing to do
    assert StudyInterrupted(signal.SIGINT).exit_code == 130


def test_drive_runs_the_work_in_a_driver_thread_and_hands_back_its_result():
    import threading

    from study import interrupt

    assert interrupt.drive(lambda: threading.current_thread().name) == "study-driver"
    with pytest.raises(ValueError, match="boom"):
        interrupt.drive(lambda: (_ for _ in ()).throw(ValueError("boom")))

    def nested():  # a batch of the adaptive loop: already in the driver thread
        return interrupt.drive(lambda: threading.current_thread().name)

    assert interrupt.drive(nested) == "study-driver"


def _signal_then_reach_a_safe_point(sig) -> None:
    """Signal this process while "writing" (a sleep the handler must not interrupt), then reach safe points."""
    from study import interrupt

    os.kill(os.getpid(), sig)
    time.sleep(0.3)  # a write in flight: the handler raises nothing here
    deadline = time.time() + 10
    while time.time() < deadline:
        interrupt.check()
        time.sleep(0.02)
    raise AssertionError("the signal did not stop the driver")


SECOND_SIGNAL = """
import os, signal, subprocess, sys, time
from study import interrupt

def work():
    child = subprocess.Popen(["sleep", "300"])  # a process of the study (Ray's, a trial)
    print(child.pid, flush=True)
    while True:  # never reaches a safe point: only a second signal ends it
        time.sleep(0.05)

interrupt.drive(work)
"""


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_second_signal_stops_at_once_and_kills_the_children(sig, code):
    import sys

    proc = subprocess.Popen([sys.executable, "-c", SECOND_SIGNAL], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        child = int(proc.stdout.readline())
        proc.send_signal(sig)
        time.sleep(1.0)
        assert proc.poll() is None  # the first signal waits for a safe point
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    name = signal.Signals(sig).name
    assert proc.returncode == code, err
    assert f"{name}: stopping at the next safe point" in err and f"{name} again: stopping now" in err, err
    assert "Traceback" not in err, err
    deadline = time.time() + 10
    while time.time() < deadline and Path(f"/proc/{child}").exists() and "Z" not in _state(child):
        time.sleep(0.1)
    assert not Path(f"/proc/{child}").exists() or "Z" in _state(child), "the study's child process survived"


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def test_orphaned_runs_show_interrupted_and_are_reconciled(store, capsys):
    tmp_path, _ = store
    path = write_smoke_study(tmp_path, "orph")
    study = load_study(path, "smoke")
    tracker = StudyTracker("orph")
    client = store_client(tmp_path)
    dead, alive, elsewhere = _dead_driver(), driver_identity(), f"not-{socket.gethostname()}:1:1"
    c = study.cells
    ids = {}
    for cell, driver in ((c[0], dead), (c[1], alive), (c[2], elsewhere)):
        ids[cell.cell_id] = _new_run(client, tracker.experiment_id, {"role": "cell", "cell_id": cell.cell_id,
                                                                     "driver": driver, "filled": "1"})
    parent = _new_run(client, tracker.experiment_id, {"role": "parent", "driver": dead})
    from study.runner import study_status

    study_status(str(path), preset="smoke")
    out = capsys.readouterr().out
    assert f"{c[0].cell_id}  semi-hard  seed 0   interrupted" in out, out
    assert "done 0, running 2, interrupted 1, failed 0, missing 1 (of 4)" in out, out
    assert f"to resume, run the same command again: python -m study run {path} --preset smoke" in out
    assert client.get_run(ids[c[0].cell_id]).info.status == RUNNING  # status writes nothing
    assert tracker.reconcile() == 2  # the dead driver's cell run and the parent
    states = {cid: client.get_run(rid).info.status for cid, rid in ids.items()}
    assert states == {c[0].cell_id: KILLED, c[1].cell_id: RUNNING, c[2].cell_id: RUNNING}
    assert client.get_run(parent).info.status == KILLED


def test_status_of_a_study_never_run_says_start_not_resume(store, capsys):
    tmp_path, _ = store
    path = write_smoke_study(tmp_path, "fresh")
    from study.runner import study_status

    study_status(str(path), preset="smoke")
    out = capsys.readouterr().out
    assert "done 0, running 0, interrupted 0, failed 0, missing 4 (of 4)" in out, out
    assert f"no cell of this study has run at preset smoke; to start it: python -m study run {path} --preset smoke" \
        in out, out
    assert "resume" not in out, out
    assert not (tmp_path / "mlflow.db").exists()  # status writes nothing, not even a store


def test_second_driver_on_a_running_study_is_refused(store):
    tmp_path, _ = store
    study = load_study(write_smoke_study(tmp_path, "busy"), "smoke")
    tracker = StudyTracker("busy")
    other = subprocess.Popen(["sleep", "60"])  # a driver that still runs, in another process
    try:
        _new_run(store_client(tmp_path), tracker.experiment_id, {"role": "parent",
                                                                 "driver": driver_identity(other.pid)})
        from conftest import run_here

        with pytest.raises(UserError, match=f"is being run now by process {other.pid}"):
            run_here(study)
    finally:
        other.kill()
        other.wait()
    assert not (tmp_path / "runs").exists()


def _fake_run_local(then):
    """A stand-in for the local executor's run (cluster.local.LocalRay.run): opens the first cell,
    finishes the second, then ``then()``."""
    def run(self, study, cells, tracker, retry):
        tracker.open_cell(cells[0], tracker.parent_id)
        tracker.open_cell(cells[1], tracker.parent_id)
        tracker.log_final(cells[1].cell_id, {"epochs": 2, "knn_top1": 0.5})
        tracker.end_cell(cells[1].cell_id, FINISHED)
        then()
        return {cells[1].cell_id: FINISHED}
    return run


class _SignalsInDel:
    """Sends ``sig`` to this process from ``__del__``, where Python swallows any exception
    ("Exception ignored in ..."): how CI once lost a Ctrl-C inside SQLAlchemy's GC callback."""

    def __init__(self, sig):
        self.sig = sig

    def __del__(self):
        os.kill(os.getpid(), self.sig)
        time.sleep(0.5)  # the handler runs (and its raise is swallowed) before __del__ returns


def test_a_signal_whose_exception_was_swallowed_is_not_lost():
    from study import interrupt

    interrupt.check()  # outside a StopSignals block: nothing to do
    with StopSignals() as stop:
        obj = _SignalsInDel(signal.SIGINT)
        del obj  # the StudyInterrupted raised in __del__ goes nowhere
        assert stop.received == signal.SIGINT
        with pytest.raises(StudyInterrupted) as err:
            interrupt.check()
        assert err.value.exit_code == 130
    interrupt.check()  # the block is over


class _SignalOnFirstStep:
    """A Tune callback whose first loop step drops a :class:`_SignalsInDel` (made lazily: it must
    subclass ``ray.tune.Callback``, and this module does not import Ray at collection)."""

    @staticmethod
    def make():
        from ray import tune

        class SignalOnFirstStep(tune.Callback):
            def __init__(self):
                self.sent = False

            def on_step_begin(self, iteration, trials, **info):
                if not self.sent and any(t.status == "RUNNING" for t in trials):
                    self.sent = True
                    _SignalsInDel(signal.SIGINT)  # made and dropped at once: its __del__ signals

        return SignalOnFirstStep()


@pytest.mark.slow
def test_a_swallowed_signal_still_stops_the_study(store, monkeypatch, capsys, busy_cores):
    """The Tune loop's step callback ends a study whose SIGINT landed where Python swallows it."""
    tmp_path, _ = store
    path = write_smoke_study(tmp_path, "swallowed", epochs=3, seeds="[0]")
    study = load_study(path, "smoke")
    for key, value in fake_trial_env({}, epoch_s=0.5).items():
        monkeypatch.setenv(key, value)
    from cluster import tune_run
    from conftest import run_here

    real = tune_run._tune_callbacks
    monkeypatch.setattr(tune_run, "_tune_callbacks", lambda *a, **k: [_SignalOnFirstStep.make()] + real(*a, **k))
    assert run_here(study) == 130
    err = capsys.readouterr().err
    assert "interrupted (SIGINT)" in err, err
    runs = store_client(tmp_path).search_runs([StudyTracker("swallowed").experiment_id])
    parent = [r for r in runs if r.data.tags.get("role") == "parent"]
    assert parent and parent[0].info.status == KILLED
    assert all(r.info.status == KILLED for r in runs), [r.info.status for r in runs]


def test_a_signal_swallowed_after_the_loop_still_interrupts(store, monkeypatch, capsys):
    """The launch returns normally, but a SIGTERM landed in a __del__ on its way out (Ray's shutdown)."""
    tmp_path, _ = store
    path = write_smoke_study(tmp_path, "late", seeds="[0]")
    study = load_study(path, "smoke")
    import cluster.local

    monkeypatch.setattr(cluster.local.LocalRay, "run", _fake_run_local(lambda: _SignalsInDel(signal.SIGTERM)))
    from conftest import run_here

    assert run_here(study) == 143
    assert "interrupted (SIGTERM): finished 1/2; 1 unfinished cell run(s) marked KILLED" in capsys.readouterr().err


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_in_the_driver_marks_runs_and_says_what_to_run(store, monkeypatch, capsys, sig, code):
    tmp_path, _ = store
    path = write_smoke_study(tmp_path, "sig", seeds="[0]")
    study = load_study(path, "smoke")

    import cluster.local

    monkeypatch.setattr(cluster.local.LocalRay, "run", _fake_run_local(lambda: _signal_then_reach_a_safe_point(sig)))
    from conftest import run_here

    before = signal.getsignal(sig)
    assert run_here(study) == code
    assert signal.getsignal(sig) is before
    err = capsys.readouterr().err
    name = signal.Signals(sig).name
    assert f"interrupted ({name}): finished 1/2; 1 unfinished cell run(s) marked KILLED" in err, err
    assert f"to resume, run the same command again: python -m study run {path} --preset smoke" in err
    client = store_client(tmp_path)
    runs = {r.data.tags.get("cell_id", "parent"): r for r in client.search_runs([StudyTracker("sig").experiment_id])}
    assert runs[study.cells[0].cell_id].info.status == KILLED
    assert runs[study.cells[0].cell_id].data.tags["interrupted"] == name
    assert runs[study.cells[1].cell_id].info.status == FINISHED
    assert runs["parent"].info.status == KILLED and runs["parent"].data.tags["interrupted"] == name


def test_a_failing_driver_marks_its_runs(store, monkeypatch, capsys):
    tmp_path, _ = store
    path = write_smoke_study(tmp_path, "boom", seeds="[0]")
    study = load_study(path, "smoke")

    def fail():
        raise RuntimeError("Ray Tune failed: the GCS is gone")

    import cluster.local

    monkeypatch.setattr(cluster.local.LocalRay, "run", _fake_run_local(fail))
    from conftest import run_here

    with pytest.raises(RuntimeError, match="GCS is gone"):
        run_here(study)
    assert "To resume, run the same command again: python -m study run" in capsys.readouterr().err
    client = store_client(tmp_path)
    states = sorted(r.info.status for r in client.search_runs([StudyTracker("boom").experiment_id]))
    assert states == [FINISHED, KILLED, KILLED]  # the finished cell, the open cell, the parent


# ---------------------------------------------------------------- F: a run that exists is complete
def test_empty_runs_are_filled_in(store):
    tmp_path, _ = store
    path = write_smoke_study(tmp_path, "empty")
    study = load_study(path, "smoke")
    tracker = StudyTracker("empty")
    client = store_client(tmp_path)
    # what a driver killed right after create_run leaves: a run with its creation tags only
    cell, other = study.cells[0], study.cells[1]
    rid = _new_run(client, tracker.experiment_id, {"role": "cell", "cell_id": cell.cell_id, "study": "empty"},
                   status=FINISHED)
    rid2 = _new_run(client, tracker.experiment_id, {"role": "cell", "cell_id": other.cell_id, "study": "empty"})
    parent = _new_run(client, tracker.experiment_id, {"role": "parent", "study": "empty"}, status=KILLED)
    assert tracker.repair(study.cells) == 2
    for run_id, c in ((rid, cell), (rid2, other)):
        run = client.get_run(run_id)
        assert run.data.params == cell_params(c)
        assert run.data.tags["level"] == c.level and run.data.tags["factor.sampling"] == c.levels["sampling"]
        assert run.data.tags["filled"] == "1" and run.data.tags["preset"] == "smoke"
        assert [a.path for a in client.list_artifacts(run_id)] == ["config.json"]
    assert tracker.repair(study.cells) == 0  # filled runs are left alone
    # a reused run is filled the same way when the driver opens it
    assert tracker.parent_run_id({"factors": "sampling", "metric": "knn_top1"}, path) == parent
    prun = client.get_run(parent)
    assert prun.data.params == {"factors": "sampling", "metric": "knn_top1"} and prun.info.status == RUNNING
    assert [a.path for a in client.list_artifacts(parent)] == [path.name]
    assert prun.data.tags["driver"] == driver_identity()


def test_stale_checkpoint_temp_files_are_removed(tmp_path):
    import torch

    from study.train import checkpoint

    checkpoint.save({"epoch": 3, "w": torch.zeros(2)}, tmp_path)
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = [tmp_path / f".checkpoint.pt.tmp{dead.pid}", tmp_path / f".metrics.jsonl.tmp{dead.pid}"]
    for p in stale:
        p.write_bytes(b"half a checkpoint")
    keep = [tmp_path / ".hidden", tmp_path / f".config.json.tmp{os.getpid()}"]  # not ours; a live writer's
    for p in keep:
        p.write_text("keep")
    state = checkpoint.load_latest(tmp_path)
    assert state["epoch"] == 3
    assert not any(p.exists() for p in stale) and all(p.exists() for p in keep)


# ---------------------------------------------------------------- E: one attempt's times
def test_wall_ideal_uses_this_attempts_times(store):
    tmp_path, _ = store
    study = load_study(write_smoke_study(tmp_path, "eff"), "smoke")
    tracker = StudyTracker("eff")
    cell = study.cells[0]
    # the cell's run began an hour ago in an earlier attempt that was killed
    hour_ago = int((time.time() - 3600) * 1000)
    rid = _new_run(store_client(tmp_path), tracker.experiment_id,
                   {"role": "cell", "cell_id": cell.cell_id, "filled": "1"}, status=KILLED, start_time=hour_ago)
    assert tracker.open_cell(cell, "p").run_id == rid
    time.sleep(0.05)
    tracker.end_cell(cell.cell_id, FINISHED)
    assert 0.05 <= tracker.attempt_seconds([cell.cell_id]) < 60  # not the hour of the earlier attempt
    assert tracker.attempt_seconds([study.cells[1].cell_id]) == 0
    first = tracker.attempt_seconds([cell.cell_id])
    tracker.open_cell(cell, "p")  # a retried trial: its seconds add to the first try's
    time.sleep(0.05)
    tracker.end_cell(cell.cell_id, FINISHED)
    assert first + 0.05 <= tracker.attempt_seconds([cell.cell_id]) < 60
    from study.runner import efficiency_line

    # hand computed: 150 s of cells in 2 slots = 75 s ideal; 100 s of wall -> 1.333
    assert efficiency_line("eff", 100.0, 150.0, 2).endswith("ideal 75s; wall/ideal 1.333")
    assert efficiency_line("eff", 100.0, 0.0, 2) is None


def test_wall_ideal_is_never_below_one():
    """Cells run in at most `slots` lanes inside the wall time: the ratio cannot drop below 1."""
    import random

    from study.runner import efficiency_line

    rng = random.Random(0)
    for _ in range(200):
        slots = rng.randint(1, 4)
        lanes = [0.0] * slots
        busy = 0.0
        for _ in range(rng.randint(1, 12)):
            lane = min(range(slots), key=lanes.__getitem__)
            start = lanes[lane] + rng.uniform(0, 2)
            length = rng.uniform(0.1, 10)
            lanes[lane] = start + length
            busy += length
        wall = max(lanes) + rng.uniform(0, 3)
        ratio = float(efficiency_line("x", wall, busy, slots).rsplit(" ", 1)[1])
        assert ratio >= 0.9995, ratio


# ---------------------------------------------------------------- D: two commands at once
def _open_store(uri: str, name: str, queue, create: bool) -> None:
    try:
        tracker = StudyTracker(name, uri, create=create)
        queue.put(("ok", tracker.cell_status()))
    except BaseException as err:  # report anything, the parent asserts
        queue.put(("error", f"{type(err).__name__}: {err}"))


def test_two_commands_at_once_on_a_new_store(tmp_path):
    """What two `python -m study status` (or `run`) started together do first, in two processes
    forked at once (MLflow already imported, so they reach the store's creation together)."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    # without the store lock this failed 3 times out of 3 here (`duplicate column name`, `table ...
    # already exists`, alembic's `Online migration expected to match one row`)
    for attempt in range(3):
        uri = f"sqlite:///{tmp_path / f'try{attempt}.db'}"
        queue = ctx.Queue()
        # two studies, or twice the same new study (whose experiment one of them creates)
        names = ("a", "b") if attempt < 2 else ("a", "a")
        procs = [ctx.Process(target=_open_store, args=(uri, name, queue, attempt == 2)) for name in names]
        for p in procs:
            p.start()
        results = [queue.get(timeout=180) for _ in procs]
        for p in procs:
            p.join(timeout=60)
        assert results == [("ok", {}), ("ok", {})], (attempt, results)


# ---------------------------------------------------------------- the sqlite connection policy
def _pragma(db: Path, name: str):
    import sqlite3

    with sqlite3.connect(db) as conn:
        return conn.execute(f"PRAGMA {name}").fetchone()[0]


def test_sqlite_stores_wait_for_locks_and_use_wal_on_local_disks(tmp_path):
    from analysis.uri import SQLITE_BUSY_TIMEOUT_S, file_system
    from study.tracking import client

    c = client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert _pragma(tmp_path / "mlflow.db", "journal_mode") == "wal"  # persistent, seen by any connection
    with c._tracking_client.store.engine.connect() as conn:  # each connection of MLflow's engine waits
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == SQLITE_BUSY_TIMEOUT_S * 1000 > 5000
    assert file_system(str(tmp_path)) not in ("", "nfs")


def test_sqlite_stores_on_a_network_file_system_keep_the_rollback_journal(tmp_path, monkeypatch):
    import analysis.uri
    from study.tracking import client

    monkeypatch.setattr(analysis.uri, "file_system", lambda path: "nfs4")
    client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert _pragma(tmp_path / "mlflow.db", "journal_mode") == "delete"


def test_file_system_reads_the_longest_mount_point(tmp_path, monkeypatch):
    import builtins
    import io

    from analysis.uri import file_system

    mounts = "rootfs / ext4 rw 0 0\nserver:/home /home nfs4 rw 0 0\nx /home/a\\040b fuse.sshfs rw 0 0\n"
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda p, *a, **k: io.StringIO(mounts) if p == "/proc/mounts"
                        else real_open(p, *a, **k))
    monkeypatch.setattr("os.path.realpath", lambda p: p)
    assert file_system("/home/me/mlflow.db") == "nfs4"
    assert file_system("/home/a b/mlflow.db") == "fuse.sshfs"
    assert file_system("/homework/mlflow.db") == "ext4"  # /home is not a prefix of /homework


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_the_analysis_with_one_line(tmp_path, monkeypatch, capsys, sig, code):
    import analysis.pipeline
    from analysis.__main__ import main

    def build_all(*a, **k):
        os.kill(os.getpid(), sig)
        time.sleep(5)
        raise AssertionError("the signal did not stop the analysis")

    monkeypatch.setattr(analysis.pipeline, "build_all", build_all)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    before = signal.getsignal(sig)
    assert main(["--out", str(tmp_path / "results")]) == code
    assert signal.getsignal(sig) is before
    err = capsys.readouterr().err
    assert f"analysis: stopped by {signal.Signals(sig).name}" in err and "Traceback" not in err, err


def test_ctrl_c_while_following_a_slurm_job_stops_the_following_not_the_job(tmp_path, monkeypatch, capsys):
    """``run --cluster slurm --wait`` runs in the driver thread too: a signal stops the following at its next
    poll, with the job left running (no KeyboardInterrupt reaches that thread any more)."""
    from types import SimpleNamespace

    import cluster.slurm_submit as sub
    from study import interrupt

    polls = []

    def state(job_id):
        polls.append(job_id)
        if len(polls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return "RUNNING"

    monkeypatch.setattr(sub, "job_state", state)
    monkeypatch.setattr(sub, "_store_counts", lambda study: None)
    study = SimpleNamespace(name="s", cells=[1, 2])
    code = interrupt.drive(sub.follow_job, "42", tmp_path / "result.pkl", tmp_path / "log", study, poll=0.05)
    assert code == 130 and len(polls) == 2
    assert "stopped following job 42; it goes on (scancel 42 to stop it)" in capsys.readouterr().err
