"""SIGINT and SIGTERM at seeded moments of a study, on a loaded machine (issue 23).

A fake-trial study run with ``--until-decided`` (batches, and looks of the analysis between them)
is started again and again through ``python -m study``'s ``main`` in this process, each attempt
stopped by one signal at one moment chosen by a seeded generator:

- ``sql``: inside the k-th INSERT/UPDATE/DELETE the driver sends to the store (after the statement
  ran, before its transaction commits: the database lock is held);
- ``log_batch``: inside the k-th ``MlflowClient.log_batch`` call;
- ``analysis``: inside the k-th look of the adaptive loop (``study.adaptive.evaluate``);
- ``ray_init`` / ``ray_shutdown``: inside Ray's start / shutdown;
- ``timer``: k hundredths of a second after the start, wherever the driver then is.

Each hook sends the signal once, then goes on after 0.2 s: the signal lands while the call is in
flight. Every attempt must exit with 130 (SIGINT) or 143 (SIGTERM), print no traceback and leave no
run RUNNING; the same command then finishes every cell exactly once, each epoch logged once.
In this process (not one per attempt) to keep it to about a minute: starting Python and importing
MLflow would cost seconds per attempt.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time

import pytest

from conftest import fake_trial_env, store_client, store_env, write_smoke_study
from study.tracking import FINISHED, RUNNING

# The attempts, in three phases, so that most signals cost no start of Ray (an attempt that needs none
# takes about a second here; one that starts Ray, ten or more on a loaded machine):
# 1. while the first batch has work left: inside Ray's start, inside the Tune loop's writes; the last
#    attempt of the phase stops at the first look of the analysis, after the batch;
# 2. between the batches: inside the store writes of the claim and of the batch's summary, inside the
#    look, at random times (tenths of a second);
# 3. inside Ray's shutdown, which the adaptive loop reaches at its end (the second batch trained).
PHASES = (("ray_init", "log_batch_tune", "analysis"),
          ("sql",) * 6 + ("log_batch",) * 4 + ("analysis",) * 3 + ("timer",) * 5,
          ("ray_shutdown",))
AT_LEAST = 20


def moments(seed: int = 23) -> list[tuple[str, int, int]]:
    """(kind, k, signal) for each attempt: the phases in order, each shuffled by a seeded generator.
    ``k``: the call that is hit (``sql``: one of the first 3 statements, which an attempt with nothing
    left to train sends too; ``log_batch``: the first, the batch's cost on the parent; in the Tune loop
    one of the 4th to 10th), or the timer's delay in hundredths of a second."""
    rng = random.Random(seed)
    out = []
    for phase in PHASES:
        kinds = list(phase)
        last = [kinds.pop()] if kinds[-1] == "analysis" and len(set(kinds)) > 1 else []  # phase 1 ends there
        rng.shuffle(kinds)
        kinds += last
        for kind in kinds:
            k = {"sql": rng.randint(1, 3), "log_batch": 1, "log_batch_tune": rng.randint(4, 10),
                 "timer": rng.randint(5, 40)}.get(kind, 1)
            out.append((kind.replace("_tune", ""), k, rng.choice((signal.SIGINT, signal.SIGTERM))))
    return out


class Moment:
    """One attempt's hook: ``install`` it (under ``monkeypatch``), then ``fired`` says whether it came."""

    def __init__(self, kind: str, k: int, sig: int):
        self.kind, self.k, self.sig = kind, k, sig
        self.calls = 0
        self.fired = False
        self.lock = threading.Lock()  # the timer checks and signals under it; the block's exit waits for it

    def _fire(self) -> None:
        if not self.fired:
            self.fired = True
            os.kill(os.getpid(), self.sig)
            time.sleep(0.2)  # the call is in flight while the handler runs

    def hit(self) -> None:
        self.calls += 1
        if self.calls == self.k:
            self._fire()

    def install(self, monkeypatch) -> None:
        import mlflow.tracking
        import ray

        import study.adaptive
        from study import interrupt

        if self.kind == "sql":
            from sqlalchemy import event
            from sqlalchemy.engine import Engine

            def after(conn, cursor, statement, *rest):
                if threading.current_thread().name == "study-driver" and statement.lstrip().upper().startswith(
                        ("INSERT", "UPDATE", "DELETE")):
                    self.hit()
            event.listen(Engine, "after_cursor_execute", after)
            self.undo = lambda: event.remove(Engine, "after_cursor_execute", after)
        elif self.kind == "timer":
            def later():
                time.sleep(self.k / 100)
                with self.lock:  # only while the command's handlers are installed (never pytest's)
                    if interrupt._active is not None and interrupt.received() is None:
                        self._fire()
            threading.Thread(target=later, daemon=True).start()
            real_exit = interrupt.StopSignals.__exit__

            def exit_(stop, *exc):
                with self.lock:
                    return real_exit(stop, *exc)
            monkeypatch.setattr(interrupt.StopSignals, "__exit__", exit_)
        else:
            owner, name, after_call = {"log_batch": (mlflow.tracking.MlflowClient, "log_batch", False),
                                       "analysis": (study.adaptive, "evaluate", True),
                                       "ray_init": (ray, "init", False),
                                       "ray_shutdown": (ray, "shutdown", False)}[self.kind]
            real = getattr(owner, name)

            def wrapped(*a, **kw):
                if not after_call:
                    self.hit()
                out = real(*a, **kw)
                if after_call:
                    self.hit()
                return out
            monkeypatch.setattr(owner, name, wrapped)

    def uninstall(self) -> None:
        getattr(self, "undo", lambda: None)()


def _runs(client, name: str) -> list:
    exp = client.get_experiment_by_name(name)
    return client.search_runs([exp.experiment_id], max_results=1000) if exp is not None else []


def _main(argv: list[str]) -> int:
    from study.cli import main

    try:
        return main(argv)
    except SystemExit as err:  # a batch of the adaptive loop that was interrupted ends the command so
        return int(err.code)


@pytest.mark.slow
def test_signals_at_seeded_moments_leave_a_resumable_study(tmp_path, monkeypatch, capfd, busy_cores):
    env = fake_trial_env(store_env(tmp_path, STUDY_NUM_CPUS="2"), epoch_s=0.1, means={"semi-hard": 0.7, "hard": 0.7})
    for key in ("MLFLOW_TRACKING_URI", "STUDY_RUN_ROOT", "STUDY_RAY_RESULTS", "STUDY_ARTIFACT_ROOT", "STUDY_NUM_CPUS",
                "STUDY_TRIAL", "STUDY_FAKE_TRIAL"):
        monkeypatch.setenv(key, env[key])
    path = write_smoke_study(tmp_path, "stress", epochs=2, seeds="[0]")
    args = ["run", str(path), "--preset", "smoke", "--until-decided", "--max-seeds", "4"]
    client = store_client(tmp_path)
    fired = []
    for kind, k, sig in moments():
        moment = Moment(kind, k, sig)
        with monkeypatch.context() as patch:
            moment.install(patch)
            try:
                code = _main(args)
            finally:
                moment.uninstall()
        out = capfd.readouterr()
        text = out.out + out.err
        what = (kind, k, signal.Signals(sig).name)
        assert "Traceback" not in text, (what, text)
        if moment.fired:
            fired.append(what)
            assert code == (130 if sig == signal.SIGINT else 143), (what, code, text)
        else:  # the moment never came: nothing was left that reaches it
            assert code == 0, (what, code, text)
        running = [(r.data.tags.get("role"), r.data.tags.get("cell_id")) for r in _runs(client, "stress")
                   if r.info.status == RUNNING]
        assert not running, (what, running, text)
    assert len(fired) >= AT_LEAST, fired
    assert _main(args) == 0, capfd.readouterr()
    cells = [r for r in _runs(client, "stress") if r.data.tags.get("role") == "cell"]
    ids = [r.data.tags["cell_id"] for r in cells]
    assert len(ids) == 8 and len(set(ids)) == 8, ids  # 2 levels x 4 seeds (the file's, the loop's), each once
    for r in cells:
        assert r.info.status == FINISHED
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "loss")]
        assert sorted(steps) == [1, 2], steps  # each epoch logged once
    parents = [r for r in _runs(client, "stress") if r.data.tags.get("role") == "parent"]
    assert len(parents) == 1 and parents[0].info.status == FINISHED
