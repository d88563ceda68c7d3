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

from study.errors import UserError
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


def store_unreachable(err: BaseException, uri: str | None = None) -> "StoreUnreachable | None":
    """A :class:`StoreUnreachable` when ``err`` (or an exception it was raised from) says that
    the MLflow tracking server at ``uri`` refused or dropped the connection, else None.

    MLflow's HTTP client retries first (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, default 7, with
    backoff: minutes), so a server restarted quickly is survived without an error.
    """
    uri = uri or tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return None
    marks = ("Max retries exceeded", "Connection refused", "Failed to establish a new connection",
             "Connection aborted", "RemoteDisconnected", "Read timed out")
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        text = str(err)
        if any(m in text for m in marks):
            reason = next(m for m in marks if m in text)
            return StoreUnreachable(f"the MLflow tracking server at {uri} does not answer ({reason}); the study "
                                    "stopped. Start the server again (make mlflow-server) and run the same "
                                    "command: finished cells are kept, the others resume")
        err = err.__cause__ or err.__context__
    return None


class StoreUnreachable(UserError):
    """The tracking server does not answer: one message, exit status 1 (not the user's input)."""

    exit_code = 1


def study_experiments(uri: str | None = None) -> list[tuple[str, str]]:
    """(study name, experiment id) of every experiment holding a study's parent run, by name.

    An sqlite store whose file does not exist yet has no studies (and is not created).
    """
    uri = uri or tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):].split("?")[0]).is_file():
        return []
    c = client(uri)
    out = []
    for exp in c.search_experiments():
        if c.search_runs([exp.experiment_id], filter_string="tags.role = 'parent'", max_results=1):
            out.append((exp.name, exp.experiment_id))
    return sorted(out)


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
            # a tracking server keeps artifacts in its own artifact root (mlflow server
            # --artifacts-destination); a file store gets STUDY_ARTIFACT_ROOT
            location = (None if self.uri.startswith(("http://", "https://"))
                        else (artifact_root() / study_name).as_uri())
            self.experiment_id = self.client.create_experiment(study_name, artifact_location=location)
        else:
            self.experiment_id = exp.experiment_id if exp is not None else None
        self._open: dict[str, CellRun] = {}
        self.study_file: Path | None = None

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
        self.study_file = study_file  # the cells' mlflow.source.name
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
        self.log_provenance(cr.run_id, cell)  # the code and data of this attempt
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

    # ------------------------------------------------------- provenance, cost
    def log_provenance(self, run_id: str, cell) -> None:
        """Commit, versions and source as tags; the dataset as an MLflow input (see study.provenance)."""
        from mlflow.entities import Dataset, DatasetInput, InputTag, RunTag

        from study import provenance

        data = provenance.cell_fingerprint(cell.config)
        tags = provenance.run_tags(self.study_file, data)
        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        if data["digest"]:
            profile = {k: data[k] for k in ("files", "rule", "content_hashed")}
            ds = Dataset(name=data["name"], digest=data["digest"][:provenance.DIGEST_CHARS], source_type="local",
                         source=json.dumps({"uri": data["source"]}), profile=json.dumps(profile))
            self.client.log_inputs(run_id, [DatasetInput(ds, [InputTag("mlflow.data.context", "train")])])

    def log_cost(self, cell_id: str, cost: dict) -> None:
        """The cell's cost so far (``cost_wall_s``, ``cost_cpu_s``, ``cost_gpu_s``), latest value wins."""
        from mlflow.entities import Metric

        cr = self._open.get(cell_id)
        if cr is None:
            return
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, 0) for k, v in sorted(cost.items()) if _finite(v)]
        if batch:
            self.client.log_batch(cr.run_id, metrics=batch)

    def log_study_cost(self, parent_id: str, wall_s: float) -> dict:
        """On the parent: the study's wall time (summed over invocations) and its cells' cost sums."""
        from mlflow.entities import Metric

        parent = self.client.get_run(parent_id)
        totals = {"study_wall_s": parent.data.metrics.get("study_wall_s", 0.0) + wall_s}
        for key in COST_METRICS:
            totals[f"{key}_total"] = 0.0
        for runs in self.cell_runs().values():
            run = next((r for r in runs if r.info.status == FINISHED), runs[0])
            for key in COST_METRICS:
                if _finite(run.data.metrics.get(key)):
                    totals[f"{key}_total"] += run.data.metrics[key]
        now = int(time.time() * 1000)
        self.client.log_batch(parent_id, metrics=[Metric(k, float(v), now, 0) for k, v in totals.items()])
        return totals


COST_METRICS = ("cost_wall_s", "cost_cpu_s", "cost_gpu_s")
