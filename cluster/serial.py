"""Serial backend: the cells one after another, each in a child process of the driver; no Ray.

``--cluster serial`` runs a study where Ray is not wanted: a machine where it does not start, a
debugger on the trial (set ``STUDY_SERIAL_INLINE=1`` to run each trial in the driver's own process,
where ``breakpoint()`` works: reports are written as they come, a stop signal takes effect at the
next one, and no time limit applies), or a study of a few cells on a laptop. Everything else is the
runner's, as for every backend: the store, resume, linked cells, the summary. A cell's trial is the
same function Tune runs (:func:`cluster.tune_run.load_trial`: the trainer, or ``$STUDY_TRIAL``), in
a fresh process (``multiprocessing`` spawn) whose reports (:class:`cluster.tune_run.TrialReporter`)
come back through a queue; the driver writes them to the store as they come. A failed trial starts
again up to ``retry.max_failures`` times from its run directory's last checkpoint (the trial
resumes from it by itself), then the cell is FAILED with the trial's error (or KILLED, where the
machine failed it). A stop signal ends the running child and leaves its cell to the runner (KILLED).

Also the model of a backend in one module: this file alone (its ``BACKENDS`` line declares it to
``--cluster``; study/backends.py).
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import traceback

from cluster.local import check_local
from study.core.errors import InfrastructureError, infrastructure_from_text
from study.retry import RetryPolicy
from study.studyfile import Cell, Study
from study.tracking import FAILED, FINISHED, StudyTracker

POLL_S = 0.5  # how often the driver looks at its signals while a child trains


def _child(spec: str | None, payload: dict, reports) -> None:
    """A cell's trial in its own process: its reports, then ``{"exit": error or None}``, to ``reports``."""
    from cluster import tune_run

    before, tune_run.REPORT_SINK = tune_run.REPORT_SINK, reports.put
    try:
        tune_run.load_trial(spec)({"cell": payload})
        reports.put({"exit": None})
    except BaseException:  # the trial's error is the cell's: the driver records it
        reports.put({"exit": traceback.format_exc()[-4000:]})
        raise SystemExit(1) from None
    finally:
        tune_run.REPORT_SINK = before  # the driver's own process (inline): as it was


class SerialExecutor:
    """Runs cells one at a time, each trial in a child process; writes the store from this process.

    A backend built on it may subclass it: :meth:`run_cell` runs one cell to its end (wrap it to do
    something around each cell); ``name`` is what the start line calls it."""

    name = "serial"

    def check(self, study: Study) -> None:
        check_local(study)

    def slots(self, study: Study) -> int:
        return 1

    def run(self, study: Study, cells: list[Cell], sink: StudyTracker, retry: RetryPolicy) -> dict[str, str]:
        from cluster.tune_run import trial_payload
        from study.core.paths import run_root
        from study.tracking import TRIAL_ENV

        print(f"[{study.name}] {self.name}: one cell at a time, no Ray, {len(cells)} to run", flush=True)
        spec = os.environ.get(TRIAL_ENV) or None
        out: dict[str, str] = {}
        for cell in cells:
            payload = trial_payload(cell, run_root(study.name) / cell.cell_id, study.resources.cpus,
                                    study.resources.gpus, study.time_limits)
            out[cell.cell_id] = self.run_cell(cell, payload, spec, sink, retry)
        return out

    def run_cell(self, cell: Cell, payload: dict, spec: str | None, sink: StudyTracker, retry: RetryPolicy) -> str:
        """One cell to its end, retried as ``retry`` says: FINISHED or FAILED (``payload``: the trial's,
        cluster.tune_run.trial_payload; ``spec``: ``$STUDY_TRIAL`` or None)."""
        from cluster.tune_run import failure_status, stopped_reason
        from study import interrupt

        interrupt.check()
        run_id = sink.open_cell(cell, sink.parent_id).run_id
        nodes: dict[str, str] = {}
        error = ""
        for _attempt in range(retry.max_failures + 1):
            error = self._attempt(cell, payload, spec, sink, run_id, nodes)
            if not error:
                interrupt.check()
                sink.end_cell(cell.cell_id, FINISHED)
                return FINISHED
            interrupt.check()
            error = stopped_reason(payload["run_dir"]) or error
            if failure_status(error) != FAILED:
                break  # the machine failed it: another attempt would fail alike
            print(f"[{cell.cell_id}] a cell failed ({error.strip().splitlines()[-1][:200]})", flush=True)
        interrupt.check()
        status = failure_status(error)
        sink.end_cell(cell.cell_id, status, error=error)
        if status != FAILED:  # KILLED by the machine: one message for the study, the same command resumes
            raise infrastructure_from_text(error) or InfrastructureError(error[-300:])
        return FAILED

    def _attempt(self, cell: Cell, payload: dict, spec: str | None, sink: StudyTracker, run_id: str,
                 nodes: dict[str, str]) -> str:
        """One run of the cell's trial; "" when it finished, else its error."""
        from cluster.tune_run import write_result
        from study import interrupt

        interrupt.check()  # a Ctrl-C reaches the child too: its error then is the signal's, not the cell's
        if os.environ.get("STUDY_SERIAL_INLINE") == "1":
            return self._inline(cell, payload, spec, sink, run_id, nodes)
        ctx = multiprocessing.get_context("spawn")
        reports = ctx.Queue()
        proc = ctx.Process(target=_child, args=(spec, payload, reports), name=f"cell-{cell.cell_id}")
        proc.start()
        try:
            while True:
                try:
                    record = reports.get(timeout=POLL_S)
                except queue.Empty:
                    interrupt.check()
                    if not proc.is_alive():  # ended without a word: killed, or exited in native code
                        return f"the trial's process ended with exit status {proc.exitcode}"
                    continue
                interrupt.check()
                if "exit" in record:
                    return record["exit"] or ""
                write_result(sink, cell.cell_id, record, run_id, nodes)
        finally:
            if proc.is_alive():  # a stop signal, or the store failed: the child goes too
                proc.terminate()
                proc.join(10)
                if proc.is_alive():
                    proc.kill()
            proc.join(10)

    @staticmethod
    def _inline(cell: Cell, payload: dict, spec: str | None, sink: StudyTracker, run_id: str,
                nodes: dict[str, str]) -> str:
        """The trial in this process and thread (a debugger's mode): each report written as it comes, a
        stop signal taking effect at the next one, and no watchdog (its last resort ends the process,
        which here is the command, and a debugger's pause is no hung cell)."""
        from cluster import tune_run
        from study import interrupt

        def report(record: dict) -> None:
            interrupt.check()
            tune_run.write_result(sink, cell.cell_id, record, run_id, nodes)

        before, tune_run.REPORT_SINK = tune_run.REPORT_SINK, report
        try:
            tune_run.load_trial(spec)({"cell": dict(payload, max_cell_s=None, max_silence_s=None)})
            return ""
        except interrupt.StudyInterrupted:
            raise
        except Exception:  # the trial's error is the cell's
            return traceback.format_exc()[-4000:]
        finally:
            tune_run.REPORT_SINK = before

    def close(self) -> None:
        pass


# the backends this module defines, for --cluster (study/backends.py reads this literal without importing)
BACKENDS = {"serial": "SerialBackend"}


class SerialBackend:
    """``--cluster serial``: the driver runs in this process, its executor is :class:`SerialExecutor`."""

    name = "serial"

    def __init__(self, options: dict):
        self.options = options

    def check(self, study: Study) -> None:
        from cluster.local import refuse_slurm_options
        from cluster.tune_run import load_trial

        refuse_slurm_options(self.options, self.name)
        self.executor().check(study)
        load_trial()  # a $STUDY_TRIAL that names nothing: an error now, not in every cell

    def describe(self, study: Study) -> None:
        return None

    def executor(self) -> SerialExecutor:
        return SerialExecutor()

