"""Running a study's cells through Ray Tune: one trial per cell.

Shared by both launchers (local and SLURM): they only decide where Ray runs
and how many resources it has; this module builds the Tuner. Ray is imported
lazily, so parsing a study file never touches it.

- The trial function builds the cell's :class:`~study.trainer.Trainer` in
  the cell's own run directory (absolute: Ray changes each trial's working
  directory) and reports every epoch with ``tune.report`` and a checkpoint.
  The checkpoint Tune persists is a small pointer (run directory, epoch);
  the payload is the trainer's own atomic checkpoint in the run directory,
  which saves copying a whole memory bank every epoch. A restored or retried
  trial resumes from it. A trial first reports again the epochs its run
  directory's ``metrics.jsonl`` holds (:meth:`TrialReporter.replay`), so an
  epoch whose report was lost in a kill still reaches MLflow.
- The trial function is a seam (:func:`load_trial`): ``$STUDY_TRIAL`` names
  another one, such as the fake trial the scheduler tests run in seconds.
- The MLflow writer is a driver-side Tune callback keyed by ``cell_id``
  (Ray's stock ``MLflowLoggerCallback`` opens a new run for every restored
  trial); it skips steps already stored. It tags each cell's run with the
  node that trained it (``node``: the SLURM node name, else the host name).
- :data:`STOPPING` is set by a launcher that is being stopped from outside
  (SLURM's SIGTERM before a requeue): the trials that then fail because
  their Ray processes were killed are not recorded as failed cells; their
  runs stay RUNNING and the next attempt resumes them.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import threading
import time
import traceback
from pathlib import Path

from study import interrupt
from study.core import names
from study.core.files import write_atomic
from study.retry import RetryPolicy
from study.studyfile import Cell, Study
from study.core.errors import InfrastructureError, infrastructure_from_text, infrastructure_text
from study.tracking import COST_METRICS, FAILED, FINISHED, KILLED, TRIAL_ENV, StudyTracker, trial_function

# set while the job is being stopped from outside (see the module docstring)
STOPPING = threading.Event()


# the environment of a Ray node this toolkit starts (set before ray.init / `ray start`, where the user has
# not): Ray prestarts one idle worker per CPU for the driver's tasks, and a study has none (its trials are
# actors, each started with its trial): about 1 CPU-s and two processes less per start of Ray
RAY_NODE_ENV = {"RAY_prestart_worker_first_driver": "0"}


def ray_node_env() -> None:
    """Set :data:`RAY_NODE_ENV` in this process's environment where it is not set."""
    for key, value in RAY_NODE_ENV.items():
        os.environ.setdefault(key, value)


def stopping() -> bool:
    """Whether :data:`STOPPING` is set (callbacks call this: Tune pickles them, and a module-level
    function pickles by reference where an Event would not pickle at all)."""
    return STOPPING.is_set()


def node_name() -> str:
    """The node this process runs on: SLURM's node name inside a job, else the host name."""
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


def trial_payload(cell: Cell, run_dir: Path, threads: int, gpus: float = 0.0, limits: tuple = (None, None)) -> dict:
    """What a trial needs, as plain data (Ray pickles the trial config). ``limits``: the cell's time
    limit and the longest silence between two epochs, in seconds (None: none), for :class:`Watchdog`."""
    return {"cell_id": cell.cell_id, "config": cell.config.flat(), "run_dir": str(run_dir.resolve()),
            "threads": threads, "level": cell.level, "seed": cell.seed, "gpus": float(gpus),
            "max_cell_s": limits[0], "max_silence_s": limits[1]}


class CellTimeout(Exception):
    """Raised in a trial's thread by its :class:`Watchdog`."""


STOPPED_FILE = "stopped.txt"  # in the run directory: why the watchdog stopped the cell (the FAILED run's error)


class Watchdog:
    """Stops a trial that runs past its time limit or reports no epoch for too long (a hung cell).

    A thread of the trial's process checks every second. Past a limit it writes the reason to the run
    directory (:data:`STOPPED_FILE`), raises :class:`CellTimeout` in the trial's thread (the trainer is
    Python: it arrives at the next bytecode), and if the thread is stuck in native code (a deadlock)
    ends the process after a grace of 30 s (or the silence limit, when shorter): either way the trial
    errors and the cell is marked FAILED with the reason. Each attempt (a retry resumes from the last checkpoint) has the whole limit again."""

    GRACE_S = 30.0

    def __init__(self, run_dir: Path, max_cell_s: float | None, max_silence_s: float | None):
        import threading

        self.run_dir, self.limits = run_dir, (max_cell_s, max_silence_s)
        self.start = self.last = time.monotonic()
        self.target = threading.get_ident()
        self.done = threading.Event()
        self.reason: str | None = None
        (run_dir / STOPPED_FILE).unlink(missing_ok=True)
        if max_cell_s or max_silence_s:
            threading.Thread(target=self._watch, name="cell-watchdog", daemon=True).start()

    def beat(self) -> None:
        self.last = time.monotonic()

    def stop(self) -> None:
        self.done.set()

    def _why(self, now: float) -> str | None:
        total, silence = self.limits
        if total and now - self.start > total:
            return f"stopped: past its time limit of {total / 3600:.3g} h (max_cell_hours)"
        if silence and now - self.last > silence:
            return (f"stopped: no epoch for {(now - self.last) / 60:.1f} min, past the {silence / 60:.3g} min the "
                    "study allows (max_epoch_minutes): the cell hung")
        return None

    def _watch(self) -> None:
        import ctypes

        while not self.done.wait(1.0):
            why = self._why(time.monotonic())
            if why is None:
                continue
            self.reason = why
            write_atomic(self.run_dir / STOPPED_FILE, why)
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.target), ctypes.py_object(CellTimeout))
            if not self.done.wait(min(self.GRACE_S, self.limits[1] or self.GRACE_S)):
                os._exit(70)  # stuck in native code: the process goes, the trial errors
            return



class CostMeter:
    """A cell's cost, summed over its attempts: wall, CPU and GPU seconds.

    CPU seconds are this process's user + system time (all its threads) plus
    that of its reaped children (DataLoader workers), measured as differences,
    since Ray reuses the worker process for the next cell. GPU seconds are
    wall seconds x the GPUs the trial holds, counted only when the trial runs
    on CUDA. The running total is written to ``run_dir/cost.json`` at every
    report, so a resumed cell adds to what earlier attempts spent (up to
    their last report: the time between a kill and the last report is lost).
    """

    FILE = "cost.json"

    def __init__(self, run_dir: Path, gpus: float, on_gpu: bool):
        self.path = run_dir / self.FILE
        try:
            self.base = {k: float(v) for k, v in json.loads(self.path.read_text()).items()}
        except (OSError, ValueError):
            self.base = {}
        self.gpus = gpus if on_gpu else 0.0
        self.wall0, self.cpu0 = time.perf_counter(), self._cpu()

    @staticmethod
    def _cpu() -> float:
        import resource

        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return time.process_time() + kids.ru_utime + kids.ru_stime

    def total(self) -> dict[str, float]:
        wall = time.perf_counter() - self.wall0
        out = {"cost_wall_s": self.base.get("cost_wall_s", 0.0) + wall,
               "cost_cpu_s": self.base.get("cost_cpu_s", 0.0) + self._cpu() - self.cpu0}
        if self.gpus > 0 or "cost_gpu_s" in self.base:
            out["cost_gpu_s"] = self.base.get("cost_gpu_s", 0.0) + wall * self.gpus
        return out

    def save(self) -> dict[str, float]:
        out = self.total()
        write_atomic(self.path, json.dumps(out))
        return out


# Where a trial's reports go when no Ray Tune session runs it: a function of one record (dict), set in
# the trial's process by an executor without Ray (cluster/serial.py); None: ``ray.tune.report``
REPORT_SINK = None


class TrialReporter:
    """What every trial function reports through: one per trial attempt.

    ``epoch(e, metrics)`` sends an epoch's metrics to Tune with a pointer checkpoint (run
    directory, epoch), or to :data:`REPORT_SINK` where one is set, and saves the cost so far; ``final(metrics)`` sends the end result with
    the cell's cost. ``replay()`` sends again every epoch the run directory's ``metrics.jsonl``
    holds: an epoch whose report was lost when an earlier attempt was killed still reaches the
    MLflow callback, which skips the steps it already stored.
    """

    def __init__(self, payload: dict, on_gpu: bool = False):
        self.run_dir = Path(payload["run_dir"])
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.cost = CostMeter(self.run_dir, float(payload.get("gpus", 0.0)), on_gpu)
        self.node = node_name()
        self.watchdog = Watchdog(self.run_dir, payload.get("max_cell_s"), payload.get("max_silence_s"))

    def epoch(self, epoch: int, metrics: dict, _out=None) -> None:
        self.watchdog.beat()
        self.cost.save()
        record = {**_numeric(metrics), "epoch": epoch, "final": 0, "node": self.node}
        if REPORT_SINK is not None:  # an executor without Ray (cluster/serial.py): the run directory resumes
            REPORT_SINK(record)
            return
        from ray import tune

        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "pointer.json").write_text(json.dumps({"run_dir": str(self.run_dir), "epoch": epoch}))
            tune.report(record, checkpoint=tune.Checkpoint.from_directory(tmp))

    def replay(self) -> int:
        """Report the epochs of ``metrics.jsonl`` again; how many there were."""
        path = self.run_dir / METRICS_FILE
        lines = path.read_text().splitlines() if path.exists() else []
        for line in lines:
            m = json.loads(line)
            self.epoch(int(m["epoch"]), m)
        return len(lines)

    def final(self, metrics: dict) -> None:
        self.watchdog.stop()
        record = {**_numeric(metrics), **self.cost.save(), "final": 1, "node": self.node}
        if REPORT_SINK is not None:
            REPORT_SINK(record)
            return
        from ray import tune

        tune.report(record)


METRICS_FILE = "metrics.jsonl"  # the trainer's per-epoch history (study.train.trainer), one JSON per line


def cell_trial(config: dict) -> None:
    """The Tune function trainable: train one cell, reporting every epoch."""
    import torch

    from study.core.config import TrainConfig
    from study.train.trainer import Trainer

    payload = config["cell"]
    values = dict(payload["config"], threads=payload["threads"], progress=False)
    cfg = TrainConfig(**values)
    torch.set_num_threads(payload["threads"])
    on_gpu = payload.get("gpus", 0) > 0 and torch.cuda.is_available() and (cfg.device == "auto" or cfg.device.startswith("cuda"))
    reporter = TrialReporter(payload, on_gpu)
    reporter.replay()
    log_file = open(reporter.run_dir / "train.log", "a", buffering=1)

    def log(msg: str) -> None:
        log_file.write(f"{time.strftime('%H:%M:%S')} {msg}\n")

    try:
        final = Trainer(cfg, reporter.run_dir, callback=reporter.epoch, log=log).run()
    except CellTimeout:
        log(reporter.watchdog.reason or "stopped by the watchdog")
        raise RuntimeError(reporter.watchdog.reason or "stopped by the watchdog") from None
    except Exception:
        log(traceback.format_exc())
        raise
    finally:
        log_file.close()
    reporter.final(final)


def load_trial(spec: str | None = None):
    """The trial function Tune runs for every cell: :func:`cell_trial`, or ``spec`` / ``$STUDY_TRIAL``
    given as ``module:function`` (the seam the scheduler tests use with
    :func:`cluster.fake_trial.fake_trial`). The function takes the trial config ``{"cell": payload}``
    (:func:`trial_payload`) and reports through a :class:`TrialReporter`.

    Raises UserError naming ``$STUDY_TRIAL`` when the function cannot be imported."""
    spec = spec if spec is not None else trial_function()
    if not spec:
        return cell_trial
    import importlib

    from study.core.errors import UserError

    module, colon, name = spec.partition(":")
    try:
        if not (colon and module and name):
            raise ValueError("the ':function' part is missing" if not name else "the module is missing")
        fn = getattr(importlib.import_module(module), name)
        if not callable(fn):
            raise ValueError(f"{name} is a {type(fn).__name__}, not a function")
    except (ImportError, AttributeError, ValueError) as err:
        raise UserError(f"cannot load the trial function '{spec}' ({err}); expected module:function",
                        source=f"${TRIAL_ENV}") from None
    return fn


def _numeric(metrics: dict) -> dict:
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v}


def write_result(tracker: StudyTracker, cell_id: str, result: dict, run_id: str, nodes: dict[str, str]) -> None:
    """One report of a trial (:class:`TrialReporter`) into the store: the node it runs on (a tag, when it
    changes: ``nodes`` holds cell_id -> the node tag written), an epoch's metrics, or the final metrics
    and the cell's cost. ``run_id``: the cell's run (:meth:`StudyTracker.open_cell`)."""
    node = result.get("node")
    if isinstance(node, str) and nodes.get(cell_id) != node:
        tracker.client.set_tag(run_id, "node", node)
        nodes[cell_id] = node
    if result.get("final"):
        tracker.log_final(cell_id, result)
        tracker.log_cost(cell_id, {k: result[k] for k in COST_METRICS if k in result})
    elif "epoch" in result:
        tracker.log_epoch(cell_id, int(result["epoch"]), names.epoch_metrics(result))


def failure_status(error: str) -> str:
    """How a failed cell is marked: KILLED where the machine failed it (a full disk, a read-only folder:
    the same command resumes it), else FAILED."""
    return KILLED if infrastructure_text(error) else FAILED


def stopped_reason(run_dir: Path) -> str | None:
    """The watchdog's reason for stopping the cell of ``run_dir`` (the trial's own error may only say
    that its process died), or None."""
    stopped = Path(run_dir) / STOPPED_FILE
    return stopped.read_text() if stopped.exists() else None


def _tune_callbacks(study: Study, tracker: StudyTracker, parent_id: str, cells: dict[str, Cell],
                    total: int, done_before: int, machine_failures: list[str]):
    """The callbacks of one Tune run: the store's writer and the progress line. ``machine_failures``
    collects the errors of the cells the machine failed (a full disk, a read-only run folder)."""
    from ray import tune

    metric = study.spec.metric

    class MLflowCellCallback(tune.Callback):
        """The single MLflow writer: one child run per cell_id, reused on restore.

        Each method begins at a safe point (:func:`study.interrupt.check`, before any write): after
        a stop signal nothing more is written here, and a trial that fails because the signal
        reached it too (Ctrl-C goes to the whole process group) is not recorded as a failed cell.
        """

        def __init__(self):
            self.nodes: dict[str, str] = {}  # cell_id -> the node tag written

        def on_trial_start(self, iteration, trials, trial, **info):
            interrupt.check()
            cid = trial.config["cell"]["cell_id"]
            _ONE_LINE.run_dirs[str(trial)] = Path(trial.config["cell"]["run_dir"])
            tracker.open_cell(cells[cid], parent_id)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            interrupt.check()
            cid = trial.config["cell"]["cell_id"]
            run = tracker.open_cell(cells[cid], parent_id)
            write_result(tracker, cid, result, run.run_id, self.nodes)

        def on_trial_complete(self, iteration, trials, trial, **info):
            interrupt.check()
            tracker.end_cell(trial.config["cell"]["cell_id"], FINISHED)

        def on_trial_error(self, iteration, trials, trial, **info):
            interrupt.check()
            if stopping():  # killed with the job's Ray: resumed by the next attempt, not failed
                return
            error = _trial_error(trial)
            status = failure_status(error)
            tracker.end_cell(trial.config["cell"]["cell_id"], status, error=error)
            if status == KILLED:
                machine_failures.append(error)

    class ProgressCallback(tune.Callback):
        """One line per change: cells done / running / failed / pending, and the best so far."""

        def __init__(self):
            self.best: tuple[float, str] | None = None
            self.last = ""
            self.start = time.time()

        def _line(self, trials, note="", now: tuple | None = None):
            # Tune updates a trial's status after the callbacks: ``now`` = (trial, its new status)
            states = [now[1] if now is not None and t is now[0] else t.status for t in trials]
            done = done_before + states.count("TERMINATED")
            failed = states.count("ERROR")
            running = states.count("RUNNING")
            pending = states.count("PENDING")
            best = f" | best {metric} {self.best[0]:.4f} ({self.best[1]})" if self.best else ""
            line = (f"[{study.name}] {time.time() - self.start:6.0f}s  done {done}/{total}  running {running}  "
                    f"failed {failed}  pending {pending}{best}{note}")
            if line != self.last:
                print(line, flush=True)
                self.last = line

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if result.get("final") and metric in result:
                value = float(result[metric])
                if self.best is None or value > self.best[0]:
                    self.best = (value, trial.config["cell"]["level"] + f" seed={trial.config['cell']['seed']}")

        def on_trial_start(self, iteration, trials, trial, **info):
            self._line(trials, now=(trial, "RUNNING"))

        def on_step_begin(self, iteration, trials, **info):
            interrupt.check()  # a safe point of the Tune loop (it steps at least every second)

        def on_step_end(self, iteration, trials, **info):
            interrupt.check()

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._line(trials, now=(trial, "TERMINATED"))

        def on_trial_error(self, iteration, trials, trial, **info):
            self._line(trials, f"  ({trial.config['cell']['level']} seed={trial.config['cell']['seed']} failed)",
                       now=(trial, "ERROR"))

    return [MLflowCellCallback(), ProgressCallback()]


class OneLineTrialErrors(logging.Filter):
    """Tune logs a failed trial's whole chained traceback (hundreds of lines when the disk fills up,
    ray#32481): one line instead, naming the cell and the error's last line. The traceback stays in the
    cell run's ``error`` tag and its ``train.log``."""

    def __init__(self):
        super().__init__()
        self.run_dirs: dict[str, Path] = {}  # trial name -> its cell's run directory (run_cells fills it)
        self.causes: set[str] = set()  # the machine's failures said so far (run_cells empties it)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and str(record.msg).startswith("Trial task failed"):
            err = record.exc_info[1]
            last = (str(err).strip().splitlines() or [type(err).__name__])[-1]
            run_dir = self.run_dirs.get(str(record.msg).rsplit(" ", 1)[-1])
            if run_dir is not None and (run_dir / STOPPED_FILE).exists():
                # the watchdog ended a stuck trial's process: its reason, not Ray's "worker died"
                last = (run_dir / STOPPED_FILE).read_text().strip()
            cause = infrastructure_text(last)
            if cause is not None:  # every cell and retry meets the same full disk: said once
                if cause in self.causes:
                    return False
                self.causes.add(cause)
            record.msg, record.args, record.exc_info, record.exc_text = (
                f"a cell failed: {last[:300]} (the traceback: the cell run's error tag and train.log)", None, None, None)
        return True


_ONE_LINE = OneLineTrialErrors()


class _HideNotComplete(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Trials did not complete")


_NOT_COMPLETE = _HideNotComplete()


class OneLineSyncErrors(logging.Filter):
    """Ray's syncer (which copies a trial's files into Tune's storage, ``STUDY_RAY_RESULTS``) logs a
    whole traceback when a copy fails, a full disk's included: one line instead, naming the cause."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if "Traceback" in text or record.exc_info:
            from study.core.errors import infrastructure_text
            from study.core.paths import ray_storage

            last = (text.strip().splitlines() or [""])[-1].strip()
            cause = infrastructure_text(text)
            record.msg, record.args, record.exc_info, record.exc_text = (
                f"Ray Tune could not copy a trial's files into its storage ({ray_storage()}, STUDY_RAY_RESULTS): "
                f"{cause or last[:300]}", None, None, None)
        return True


_ONE_LINE_SYNC = OneLineSyncErrors()


def _trial_error(trial) -> str:
    stopped = stopped_reason(trial.config["cell"]["run_dir"])
    if stopped:
        return stopped
    for attr in ("error_msg",):
        msg = getattr(trial, attr, None)
        if msg:
            return str(msg)
    path = getattr(trial, "error_file", None) or getattr(getattr(trial, "run_metadata", None), "error_filename", None)
    if path and os.path.exists(path):
        return Path(path).read_text()[-4000:]
    return "trial failed (see its train.log)"


def run_cells(study: Study, cells: list[Cell], tracker: StudyTracker, *, run_root: Path, storage_path: Path,
              slots: int, experiment_name: str, retry: RetryPolicy, restore: bool = False) -> dict[str, str]:
    """Run ``cells`` as Tune trials on the Ray cluster already initialised: what both executors
    (cluster/local.py, cluster/slurm_job.py) do once Ray is up.

    Returns cell_id -> "FINISHED" / "FAILED". ``tracker``: the sink, its parent run open; a failed
    trial is started again up to ``retry.max_failures`` times (study/retry.py). With ``restore`` and a
    Tune experiment of that name on disk, the experiment is restored (finished trials kept,
    unfinished and errored ones resumed) instead of started anew.
    """
    from ray import tune

    parent_id = tracker.parent_id
    status = tracker.cell_status()
    done_before = sum(status.get(c.cell_id) == FINISHED for c in study.cells)  # for the progress line
    by_id = {c.cell_id: c for c in cells}
    threads = study.resources.cpus
    param_space = {"cell": tune.grid_search([trial_payload(c, run_root / c.cell_id, threads, study.resources.gpus,
                                                           study.time_limits)
                                               for c in cells])}
    resources = {"cpu": study.resources.cpus, "gpu": study.resources.gpus}
    trainable = tune.with_resources(load_trial(), resources)
    machine_failures: list[str] = []
    callbacks = _tune_callbacks(study, tracker, parent_id, by_id, len(study.cells), done_before, machine_failures)
    controller_log = logging.getLogger("ray.tune.execution.tune_controller")
    _ONE_LINE.run_dirs.clear()
    _ONE_LINE.causes.clear()
    # Tune's own console output (its configuration box, and a block per failed trial and per retry,
    # whatever the verbosity) gives way to the progress line and the one-line errors above
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if _ONE_LINE not in controller_log.filters:
        controller_log.addFilter(_ONE_LINE)
    tune_log = logging.getLogger("ray.tune.tune")  # "Trials did not complete: [...]": the summary says which
    if _NOT_COMPLETE not in tune_log.filters:
        tune_log.addFilter(_NOT_COMPLETE)
    sync_log = logging.getLogger("ray.train._internal.syncer")
    if _ONE_LINE_SYNC not in sync_log.filters:
        sync_log.addFilter(_ONE_LINE_SYNC)
    # Of Tune's default loggers only the JSON one (result.json, which Tune's result grid reads back): the
    # TensorBoard one imports torch into the driver (~2 CPU-s and ~500 MB a command), and MLflow is the record
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    callbacks.append(tune.logger.JsonLoggerCallback())
    exp_path = storage_path / experiment_name
    if restore and tune.Tuner.can_restore(str(exp_path)):
        tuner = tune.Tuner.restore(str(exp_path), trainable=trainable, resume_errored=True,
                                   param_space=param_space)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            # reusing the worker processes saves a process start and the torch import
            # (~10 s on 2 cores) between consecutive cells of a slot
            tune_config=tune.TuneConfig(max_concurrent_trials=max(1, slots), reuse_actors=True),
            run_config=tune.RunConfig(
                name=experiment_name,
                storage_path=str(storage_path),
                failure_config=tune.FailureConfig(max_failures=retry.max_failures),
                # no num_to_keep: it forces an experiment snapshot after every report;
                # the checkpoints Tune keeps are tiny pointers anyway
                callbacks=callbacks,
                verbose=0,
            ),
        )
    try:
        grid = tuner.fit()
    except tune.TuneError as err:
        # Tuner.fit wraps what went wrong in advice to call Tuner.restore(...); this toolkit
        # resumes a study by running the same command again (the runner says so)
        cause = err.__cause__ or err
        raise RuntimeError(f"Ray Tune failed: {type(cause).__name__}: {cause}") from cause
    if machine_failures:
        # the machine, not a cell, stopped these cells (marked KILLED): one message for the study
        raise infrastructure_from_text(machine_failures[0]) or InfrastructureError(machine_failures[0][-300:])
    out = {}
    for result in grid:
        cid = result.config["cell"]["cell_id"] if result.config else None
        if cid is not None:
            out[cid] = FAILED if result.error else FINISHED
    return out
