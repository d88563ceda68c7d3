"""MLflow tracking of studies: the names of the contract, one writer.

One experiment per study (named by the study), one parent run per study
(reused on resume), one child run per cell keyed by its ``cell_id`` tag.
A child run is opened once and reused by every later attempt, and metric
steps already in the store are never logged again, so a study killed at
any moment and run again ends with each cell once, each epoch once.

Only the driver process writes (the Tune callback in ``cluster/``); this
module knows nothing of Ray.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from study.paths import REPO_ROOT, artifact_root, default_tracking_uri  # noqa: F401 (re-exported)

# MLflow run statuses
FINISHED, RUNNING, FAILED, KILLED = "FINISHED", "RUNNING", "FAILED", "KILLED"


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI``, else sqlite at the repository root (absolute path)."""
    return default_tracking_uri()


def client(uri: str | None = None):
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = uri or tracking_uri()
    mlflow.set_tracking_uri(uri)
    return MlflowClient(tracking_uri=uri)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class CellRun:
    run_id: str
    status: str
    logged_steps: set[int] = field(default_factory=set)
    final_logged: bool = False


class StudyTracker:
    """Reads and writes one study's runs in the store."""

    def __init__(self, study_name: str, uri: str | None = None, *, create: bool = True):
        self.uri = uri or tracking_uri()
        self.client = client(self.uri)
        self.study = study_name
        exp = self.client.get_experiment_by_name(study_name)
        if exp is None and create:
            location = (artifact_root() / study_name).as_uri()
            self.experiment_id = self.client.create_experiment(study_name, artifact_location=location)
        else:
            self.experiment_id = exp.experiment_id if exp is not None else None
        self._open: dict[str, CellRun] = {}

    # ------------------------------------------------------------- reading
    def cell_runs(self) -> dict[str, list]:
        """cell_id -> its child runs (normally one), from the store."""
        if self.experiment_id is None:
            return {}
        from mlflow.entities import ViewType

        out: dict[str, list] = {}
        token = None
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string="tags.role = 'cell'",
                                           run_view_type=ViewType.ACTIVE_ONLY, max_results=1000,
                                           page_token=token)
            for run in page:
                out.setdefault(run.data.tags.get("cell_id", ""), []).append(run)
            token = page.token
            if not token:
                return out

    def cell_status(self) -> dict[str, str]:
        """cell_id -> FINISHED / RUNNING / FAILED / KILLED (FINISHED wins if several)."""
        status = {}
        for cid, runs in self.cell_runs().items():
            states = {r.info.status for r in runs}
            status[cid] = FINISHED if FINISHED in states else sorted(states)[0]
        return status

    def cell_seconds(self, cell_ids) -> float:
        """Sum of the wall times of these cells' runs (start to end), in seconds."""
        total = 0.0
        wanted = set(cell_ids)
        for cid, runs in self.cell_runs().items():
            if cid in wanted:
                for r in runs:
                    if r.info.end_time and r.info.start_time:
                        total += (r.info.end_time - r.info.start_time) / 1000.0
        return total

    # ------------------------------------------------------------- writing
    def parent_run_id(self, spec_params: dict, study_file: Path | None = None) -> str:
        """The study's parent run, created once and reused on resume."""
        runs = self.client.search_runs([self.experiment_id], filter_string="tags.role = 'parent'",
                                       max_results=1)
        if runs:
            run_id = runs[0].info.run_id
            if runs[0].info.status != RUNNING:
                self.client.update_run(run_id, status=RUNNING)
            return run_id
        run = self.client.create_run(self.experiment_id, run_name=self.study,
                                     tags={"study": self.study, "role": "parent"})
        from mlflow.entities import Param

        self.client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in spec_params.items()])
        if study_file is not None:
            self.client.log_artifact(run.info.run_id, str(study_file))
        return run.info.run_id

    def finish_parent(self, run_id: str, status: str = FINISHED) -> None:
        self.client.set_terminated(run_id, status=status)

    def open_cell(self, cell, parent_id: str) -> CellRun:
        """The cell's child run: the existing one (status set to RUNNING) or a new one."""
        if cell.cell_id in self._open:
            return self._open[cell.cell_id]
        existing = self.cell_runs().get(cell.cell_id, [])
        if existing:
            # keep the finished one if any; never open a second run for a cell
            run = next((r for r in existing if r.info.status == FINISHED), existing[0])
            run_id = run.info.run_id
            steps = {m.step for m in self.client.get_metric_history(run_id, "knn_top1")}
            steps |= {m.step for m in self.client.get_metric_history(run_id, "loss")}
            final = "linear_top1" in run.data.metrics or "final_knn_top1" in run.data.metrics
            if run.info.status != RUNNING and run.info.status != FINISHED:
                self.client.update_run(run_id, status=RUNNING)
            cr = CellRun(run_id, RUNNING, steps, final)
        else:
            tags = {
                "study": self.study, "role": "cell", "cell_id": cell.cell_id,
                "preset": getattr(cell, "preset", ""), "level": cell.level,
                "factors": ",".join(cell.levels), "mlflow.parentRunId": parent_id,
            }
            tags.update({f"factor.{f}": lv for f, lv in cell.levels.items()})
            run = self.client.create_run(self.experiment_id, run_name=cell.name, tags=tags)
            cr = CellRun(run.info.run_id, RUNNING)
            self._log_params(cr.run_id, cell)
        self._open[cell.cell_id] = cr
        return cr

    def _log_params(self, run_id: str, cell) -> None:
        from mlflow.entities import Param

        flat = cell.config.flat()
        params = {k: json.dumps(v) if isinstance(v, (list, dict)) else str(v) for k, v in flat.items()}
        for factor in cell.levels:  # a factor named after no config key (e.g. 'boundary')
            params.setdefault(factor, cell.levels[factor])
        items = sorted(params.items())
        for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
            self.client.log_batch(run_id, params=[Param(k, v) for k, v in items[i:i + 100]])
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "config.json"
            path.write_text(json.dumps(flat, indent=2, sort_keys=True))
            self.client.log_artifact(run_id, str(path))

    def log_epoch(self, cell_id: str, epoch: int, metrics: dict) -> bool:
        """Log one epoch's metrics at step=epoch, unless that step is already stored."""
        from mlflow.entities import Metric

        cr = self._open[cell_id]
        if epoch in cr.logged_steps:
            return False
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, epoch) for k, v in sorted(metrics.items())
                 if k != "epoch" and _finite(v)]
        if batch:
            self.client.log_batch(cr.run_id, metrics=batch)
        cr.logged_steps.add(epoch)
        return True

    def log_final(self, cell_id: str, final: dict) -> None:
        """Final metrics (``linear_top1``, ``final_knn_top1``, ...) once, at step = epochs."""
        from mlflow.entities import Metric

        cr = self._open[cell_id]
        if cr.final_logged:
            return
        step = int(final.get("epochs", 0))
        now = int(time.time() * 1000)
        keys = {"linear_top1": final.get("linear_top1"), "final_knn_top1": final.get("knn_top1"),
                "final_nmi": final.get("nmi")}
        batch = [Metric(k, float(v), now, step) for k, v in keys.items() if _finite(v)]
        if batch:
            self.client.log_batch(cr.run_id, metrics=batch)
        cr.final_logged = True

    def end_cell(self, cell_id: str, status: str, error: str | None = None) -> None:
        cr = self._open.pop(cell_id, None)
        if cr is None:
            return
        if error:
            self.client.set_tag(cr.run_id, "error", error[:4000])
        elif status == FINISHED:
            self.client.set_tag(cr.run_id, "error", "")
        self.client.set_terminated(cr.run_id, status=status)
