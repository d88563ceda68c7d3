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
  trial resumes from it, and a resumed trainer first replays its history,
  so an epoch whose report was lost in a kill is reported again.
- The MLflow writer is a driver-side Tune callback keyed by ``cell_id``
  (Ray's stock ``MLflowLoggerCallback`` opens a new run for every restored
  trial); it skips steps already stored.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

from study.studyfile import Cell, Study
from study.tracking import FAILED, FINISHED, StudyTracker


def trial_payload(cell: Cell, run_dir: Path, threads: int) -> dict:
    """What a trial needs, as plain data (Ray pickles the trial config)."""
    return {"cell_id": cell.cell_id, "config": cell.config.flat(), "run_dir": str(run_dir.resolve()),
            "threads": threads, "level": cell.level, "seed": cell.seed}


def cell_trial(config: dict) -> None:
    """The Tune function trainable: train one cell, reporting every epoch."""
    import torch
    from ray import tune

    from study.config import TrainConfig
    from study.trainer import Trainer

    payload = config["cell"]
    run_dir = Path(payload["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    values = dict(payload["config"], threads=payload["threads"], progress=False)
    cfg = TrainConfig(**values)
    torch.set_num_threads(payload["threads"])
    log_file = open(run_dir / "train.log", "a", buffering=1)

    def log(msg: str) -> None:
        log_file.write(f"{time.strftime('%H:%M:%S')} {msg}\n")

    def report(epoch: int, metrics: dict, _out) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "pointer.json").write_text(json.dumps({"run_dir": str(run_dir), "epoch": epoch}))
            tune.report({**_numeric(metrics), "epoch": epoch, "final": 0},
                        checkpoint=tune.Checkpoint.from_directory(tmp))

    try:
        final = Trainer(cfg, run_dir, callback=report, log=log, replay=True).run()
    except Exception:
        log(traceback.format_exc())
        raise
    finally:
        log_file.close()
    tune.report({**_numeric(final), "final": 1})


def _numeric(metrics: dict) -> dict:
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v}


def _tune_callbacks(study: Study, tracker: StudyTracker, parent_id: str, cells: dict[str, Cell],
                    total: int, done_before: int):
    from ray import tune

    metric = study.spec.metric

    class MLflowCellCallback(tune.Callback):
        """The single MLflow writer: one child run per cell_id, reused on restore."""

        def on_trial_start(self, iteration, trials, trial, **info):
            cid = trial.config["cell"]["cell_id"]
            tracker.open_cell(cells[cid], parent_id)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            cid = trial.config["cell"]["cell_id"]
            tracker.open_cell(cells[cid], parent_id)
            if result.get("final"):
                tracker.log_final(cid, result)
            elif "epoch" in result:
                keep = {k: v for k, v in result.items() if k in _METRIC_KEYS or k.startswith("neg_sim_")}
                tracker.log_epoch(cid, int(result["epoch"]), keep)

        def on_trial_complete(self, iteration, trials, trial, **info):
            tracker.end_cell(trial.config["cell"]["cell_id"], FINISHED)

        def on_trial_error(self, iteration, trials, trial, **info):
            tracker.end_cell(trial.config["cell"]["cell_id"], FAILED, error=_trial_error(trial))

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

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._line(trials, now=(trial, "TERMINATED"))

        def on_trial_error(self, iteration, trials, trial, **info):
            self._line(trials, f"  ({trial.config['cell']['level']} seed={trial.config['cell']['seed']} failed)",
                       now=(trial, "ERROR"))

    return [MLflowCellCallback(), ProgressCallback()]


_METRIC_KEYS = {"loss", "loss_intra", "loss_inter", "knn_top1", "nmi", "ari", "label_change_ratio",
                "batch_change_ratio", "pos_sim_mean", "lr", "epoch_time", "pairs_per_s", "clusters_nonempty"}


def _trial_error(trial) -> str:
    for attr in ("error_msg",):
        msg = getattr(trial, attr, None)
        if msg:
            return str(msg)
    path = getattr(trial, "error_file", None) or getattr(getattr(trial, "run_metadata", None), "error_filename", None)
    if path and os.path.exists(path):
        return Path(path).read_text()[-4000:]
    return "trial failed (see its train.log)"


def run_cells(study: Study, cells: list[Cell], tracker: StudyTracker, parent_id: str, *,
              run_root: Path, storage_path: Path, slots: int, experiment_name: str,
              done_before: int = 0, restore: bool = False) -> dict[str, str]:
    """Run ``cells`` as Tune trials on the Ray cluster already initialised.

    Returns cell_id -> "FINISHED" / "FAILED". With ``restore`` and a Tune
    experiment of that name on disk, the experiment is restored (finished trials
    kept, unfinished and errored ones resumed) instead of started anew.
    """
    from ray import tune

    by_id = {c.cell_id: c for c in cells}
    threads = study.resources.cpus
    param_space = {"cell": tune.grid_search([trial_payload(c, run_root / c.cell_id, threads) for c in cells])}
    resources = {"cpu": study.resources.cpus, "gpu": study.resources.gpus}
    trainable = tune.with_resources(cell_trial, resources)
    callbacks = _tune_callbacks(study, tracker, parent_id, by_id, len(study.cells), done_before)
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
                failure_config=tune.FailureConfig(max_failures=study.max_failures),
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
    out = {}
    for result in grid:
        cid = result.config["cell"]["cell_id"] if result.config else None
        if cid is not None:
            out[cid] = FAILED if result.error else FINISHED
    return out
