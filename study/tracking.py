"""MLflow tracking of studies: the names of the contract, one writer.

One experiment per study (named by the study), one parent run per study
(reused on resume), one child run per cell keyed by its ``cell_id`` tag.
A child run is opened once and reused by every later attempt, and metric
steps already in the store are never logged again, so a study killed at
any moment and run again ends with each cell once, each epoch once.

A run that exists is complete: a run is created with all its tags, then its
params and ``config.json`` are logged, then the tag ``filled`` is set. A run
found without ``filled`` (its driver was killed in between) is filled in by the
next command that opens or repairs it.

Every run the driver opens carries the tag ``driver`` (host:pid:process start
time). A run left RUNNING whose driver is provably gone (same host, that
process no longer exists) was interrupted: :meth:`StudyTracker.reconcile`
marks it KILLED, and ``status`` shows it as interrupted.

Only the driver process writes (the Tune callback in ``cluster/``); this
module knows nothing of Ray.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from study.core.errors import UserError
from study.core.names import COST_METRICS, FAILED, FINAL_METRICS, FINISHED, KILLED, RUNNING  # noqa: F401 (re-exported)
from study.core.listing import (all_experiments, all_runs, experiment_holding_study, foreign_study_text,
                                moved_study_text)
from study.core.names import Tag, factor_tag, role_filter
from study.core.paths import artifact_root, default_tracking_uri  # noqa: F401 (re-exported)

# MLflow's description of an experiment or a run (Markdown on its page in the UI)
NOTE_TAG = Tag.NOTE
# a study's experiment opens in the UI's model-training view, not MLflow 3's GenAI view (which it would
# otherwise infer for a parent run's page): MLflow's experiment kind
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI``, else sqlite at the repository root (absolute path); UserError for a URI
    this toolkit cannot use (:func:`analysis.uri.uri_problem`)."""
    from analysis.uri import uri_problem

    uri = default_tracking_uri()
    problem = uri_problem(uri)
    if problem:
        raise UserError(problem, source="MLFLOW_TRACKING_URI")
    return uri


def store_exists(uri: str) -> bool:
    """False for an sqlite store whose file does not exist yet (reading it would create it); True
    for any other store (a server answers for itself). UserError for a path that is no sqlite store (a
    folder, another kind of file): a command that only reads must not report such a store as empty."""
    if uri.startswith("sqlite:///"):
        from analysis.uri import store_problem

        _raise_store_problem(uri, store_problem(uri, write=False))
        db = Path(uri[len("sqlite:///"):].split("?")[0])
        return db.is_file() and db.stat().st_size > 0  # an empty file is no store yet: reading it would make one
    return not uri.startswith("sqlite:")


def _sqlite_file(uri: str) -> Path | None:
    prefix = "sqlite:///"
    return Path(uri[len(prefix):]).resolve() if uri.startswith(prefix) else None


@contextlib.contextmanager
def store_lock(uri: str):
    """Hold an exclusive lock (fcntl, ``<db>.lock`` beside a sqlite store) around a get-or-create.

    MLflow creates a new sqlite store's tables on first use without a lock of its own: two
    commands starting at once on a store that does not exist yet both try, and one dies with
    ``table ... already exists``. The same holds for a study's experiment and its parent run
    (the driver claims a study under this lock). Other stores (a server, PostgreSQL) get no lock.
    """
    db = _sqlite_file(uri)
    if db is None or not db.parent.is_dir():
        yield
        return
    import fcntl

    with open(db.with_name(db.name + ".lock"), "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def client(uri: str | None = None):
    """An MlflowClient on ``uri`` whose store is set up (its tables created once, under a lock)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from analysis.uri import use_sqlite_policy

    use_sqlite_policy()
    uri = uri or tracking_uri()
    _check_server_once(uri)
    mlflow.set_tracking_uri(uri)
    with store_lock(uri):
        c = MlflowClient(tracking_uri=uri)
        c.search_experiments(max_results=1)  # the first use creates a new store's tables
    return c


# ---------------------------------------------------------------- the driver of a run
DRIVER_TAG = Tag.DRIVER


def _process_start(pid: int) -> str:
    """The start time of process ``pid`` in clock ticks since boot (Linux /proc), or '' if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # the command name (field 2) may hold spaces and ')': fields after the last ')' are fixed
    return stat.rsplit(")", 1)[1].split()[19]


def driver_identity(pid: int | None = None) -> str:
    """``host:pid:start`` of this process (or ``pid``): what the ``driver`` tag of a run holds."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{_process_start(pid)}"


def driver_alive(identity: str | None) -> bool | None:
    """Whether the driver named by a ``driver`` tag still runs: True, False, or None when it ran
    on another host (a SLURM node) and cannot be checked from here. No tag: False (an old run)."""
    if not identity:
        return False
    host, _, rest = identity.partition(":")
    pid_text, _, start = rest.partition(":")
    if host != socket.gethostname():
        return None
    try:
        pid = int(pid_text)
    except ValueError:
        return False
    now = _process_start(pid)
    # a reused pid has another start time
    return bool(now) and (not start or now == start)


FILLED_TAG = Tag.FILLED  # set last when a run is created: without it the run is filled in again


def _orphaned(run) -> bool:
    """A RUNNING run whose driver is known to be gone."""
    return run.info.status == RUNNING and driver_alive(run.data.tags.get(DRIVER_TAG)) is False


@functools.lru_cache(maxsize=8)
def _check_server_once(uri: str) -> None:
    """:func:`check_store`, once per process and URI."""
    check_store(uri)


def check_store(uri: str) -> None:
    """A tracking server answers at ``uri`` (within 15 s), with MLflow's HTTP retries bounded, and a
    database store can be opened and written (analysis.uri.store_problem): else one message (exit 1, or 2
    for a URI naming something that is no store) before anything is written."""
    from analysis.uri import ServerProblem, bound_http_retries, check_server, store_problem

    bound_http_retries()
    try:
        check_server(uri)
    except ServerProblem as err:
        raise StoreUnreachable(str(err)) from None
    _raise_store_problem(uri, store_problem(uri))  # a database or sqlite file MLflow would retry on for minutes


def _raise_store_problem(uri: str, problem: "tuple[str, int] | None") -> None:
    """The error of :func:`analysis.uri.store_problem`'s answer: exit status 1 for the machine's or a
    service's fault (StoreUnreachable), 2 for the user's input (UserError)."""
    if problem:
        from analysis.uri import shown_uri

        message, code = problem
        where = f"MLFLOW_TRACKING_URI={shown_uri(uri)}"
        raise StoreUnreachable(f"{where}: {message}") if code == 1 else UserError(message, source=where)


def store_unreachable(err: BaseException, uri: str | None = None, *, stopped: bool = True) -> "StoreUnreachable | None":
    """A :class:`StoreUnreachable` when ``err`` (or an exception it was raised from) says that
    the MLflow tracking server at ``uri`` refused or dropped the connection, else None.

    MLflow's HTTP client retries first (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``: the toolkit bounds it to
    about 14 s, analysis.uri.HTTP_RETRY_DEFAULTS), so a server restarted quickly is survived without an
    error. ``stopped``: the command was running a study (else it only read: nothing stopped).
    """
    from analysis.uri import shown_uri

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
            if not stopped:
                return StoreUnreachable(f"the MLflow tracking server at {shown_uri(uri)} does not answer ({reason}); nothing "
                                        "was changed. Start it again (make mlflow-server) and run the same command")
            return StoreUnreachable(f"the MLflow tracking server at {shown_uri(uri)} does not answer ({reason}); the study "
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
    if not store_exists(uri):
        return []
    c = client(uri)
    out = []
    for exp in all_experiments(c):
        if c.search_runs([exp.experiment_id], filter_string=role_filter(Tag.PARENT), max_results=1):
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


# the trial function Tune runs for every cell, when it is not the trainer: "module:function"
# (cluster.tune_run.load_trial reads it; cell runs are tagged `trial` with it)
TRIAL_ENV = "STUDY_TRIAL"


def trial_function() -> str:
    """``$STUDY_TRIAL``, or "" for the trainer (``cluster.tune_run.cell_trial``)."""
    return os.environ.get(TRIAL_ENV, "").strip()


def check_artifact_location(exp, uri: str) -> None:
    """A study's experiment of a file store keeps its artifacts under the toolkit's artifact root
    (``STUDY_ARTIFACT_ROOT``): an experiment made another way (by hand, or MLflow's own ``Default``) whose
    artifacts would land elsewhere is refused before anything is written to it (UserError)."""
    from urllib.parse import unquote, urlparse

    if uri.startswith(("http://", "https://")):
        return  # a tracking server keeps artifacts where it is configured to
    loc = exp.artifact_location or ""
    parsed = urlparse(loc)
    if parsed.scheme not in ("", "file"):
        return  # an object store named on purpose (s3://, gs://, ...)
    path = Path(unquote(parsed.path) if parsed.scheme == "file" else loc).resolve()
    root = artifact_root()
    if path != root and root not in path.parents:
        raise UserError(f"the store's experiment '{exp.name}' keeps its artifacts in {path}, outside the toolkit's "
                        f"artifact root {root} (STUDY_ARTIFACT_ROOT): it was not made by this toolkit, or under "
                        "another artifact root; give the study another name, or set STUDY_ARTIFACT_ROOT to the "
                        "root it was made with", key="name")


class StudyTracker:
    """Reads and writes one study's runs in the store."""

    def __init__(self, study_name: str, uri: str | None = None, *, create: bool = True):
        self.uri = uri or tracking_uri()
        self.client = client(self.uri)
        self.study = study_name
        with store_lock(self.uri):  # two commands starting the same new study at once: one creates it
            exp = self.client.get_experiment_by_name(study_name)
            if exp is None and create:
                # a tracking server keeps artifacts in its own artifact root (mlflow server
                # --artifacts-destination); a file store gets STUDY_ARTIFACT_ROOT
                location = (None if self.uri.startswith(("http://", "https://"))
                            else (artifact_root() / study_name).as_uri())
                self.experiment_id = self.client.create_experiment(study_name, artifact_location=location,
                                                                   tags=EXPERIMENT_TAGS)
            else:
                if exp is not None and create:
                    check_artifact_location(exp, self.uri)
                self.experiment_id = exp.experiment_id if exp is not None else None
        self._open: dict[str, CellRun] = {}
        self.study_file: Path | None = None
        self.parent_id: str | None = None  # set by the driver once the parent run is open
        # cell_id -> [time the run was opened (None when closed), seconds open so far], this process only
        self._attempts: dict[str, list] = {}

    # ------------------------------------------------------------- reading
    def cell_runs(self) -> dict[str, list]:
        """cell_id -> its child runs (normally one), from the store."""
        if self.experiment_id is None:
            return {}
        from mlflow.entities import ViewType

        out: dict[str, list] = {}
        for run in all_runs(self.client, [self.experiment_id], role_filter(Tag.CELL),
                            run_view_type=ViewType.ACTIVE_ONLY):
            out.setdefault(run.data.tags.get(Tag.CELL_ID, ""), []).append(run)
        return out

    def cell_status(self, *, live: bool = False) -> dict[str, str]:
        """cell_id -> FINISHED / RUNNING / FAILED / KILLED (FINISHED wins if several).

        With ``live``, a run left RUNNING by a driver that is gone counts as KILLED (what
        :meth:`reconcile` would write), without writing anything."""
        status = {}
        for cid, runs in self.cell_runs().items():
            states = {KILLED if live and _orphaned(r) else r.info.status for r in runs}
            status[cid] = FINISHED if FINISHED in states else sorted(states)[0]
        return status

    def attempt_seconds(self, cell_ids) -> float:
        """Sum over these cells of the seconds their runs were open in this process (this attempt),
        from :meth:`open_cell` to :meth:`end_cell`. A run's own start time is its first attempt's,
        which a resumed study would count again."""
        return sum(self._attempts.get(c, (None, 0.0))[1] for c in cell_ids)

    def parent_run(self):
        """The study's parent run, or None."""
        if self.experiment_id is None:
            return None
        from mlflow.entities import ViewType

        runs = self.client.search_runs([self.experiment_id], filter_string=role_filter(Tag.PARENT),
                                       run_view_type=ViewType.ACTIVE_ONLY, max_results=1)
        return runs[0] if runs else None

    def live_driver(self) -> str | None:
        """The ``driver`` tag of the parent run when another process that still runs has it open
        (this process reopening its own study, as the adaptive loop does, is not another driver)."""
        parent = self.parent_run()
        if parent is None or parent.info.status != RUNNING:
            return None
        tag = parent.data.tags.get(DRIVER_TAG)
        return tag if tag != driver_identity() and driver_alive(tag) else None

    # ------------------------------------------------------------- repairs
    def reconcile(self) -> int:
        """Mark KILLED every run of the study left RUNNING by a driver that is gone (killed without
        a chance to mark its runs: SIGKILL, a crash, a lost node on this host); returns how many."""
        if self.experiment_id is None:
            return 0
        n = 0
        runs = [r for rs in self.cell_runs().values() for r in rs]
        parent = self.parent_run()
        for run in runs + ([parent] if parent is not None else []):
            if run.info.status == RUNNING and _orphaned(run):
                self.client.set_tag(run.info.run_id, Tag.INTERRUPTED, "driver gone")
                self.client.set_terminated(run.info.run_id, status=KILLED)
                n += 1
        return n

    def repair(self, cells) -> int:
        """Fill in every run of these cells created but not filled (params, tags, config.json);
        returns how many were repaired. Finished runs too: the analysis needs their params."""
        by_id = {c.cell_id: c for c in cells}
        n = 0
        for cid, runs in self.cell_runs().items():
            for run in runs:
                if cid in by_id and run.data.tags.get(FILLED_TAG) != "1":
                    self._fill_cell(run, by_id[cid])
                    n += 1
        return n

    def mark_interrupted(self, cell_ids, parent_id: str | None, why: str) -> int:
        """On the way out of an interrupted driver: its RUNNING cell runs (and the parent) become
        KILLED with the tag ``interrupted`` = ``why``; returns how many cell runs were marked."""
        wanted = set(cell_ids)
        me = driver_identity()
        n = 0
        for cid, runs in self.cell_runs().items():
            for run in runs:
                # only the runs this driver opened (another driver's are its own business)
                if cid in wanted and run.info.status == RUNNING and run.data.tags.get(DRIVER_TAG) == me:
                    self.client.set_tag(run.info.run_id, Tag.INTERRUPTED, why)
                    self.client.set_terminated(run.info.run_id, status=KILLED)
                    n += 1
        self._open.clear()
        if parent_id is not None and self.client.get_run(parent_id).data.tags.get(DRIVER_TAG) == me:
            self.client.set_tag(parent_id, Tag.INTERRUPTED, why)
            self.client.set_terminated(parent_id, status=KILLED)
        return n

    # ------------------------------------------------------------- writing
    def parent_run_id(self, spec_params: dict, study_file: Path | None = None) -> str:
        """The study's parent run, created once and reused on resume (filled in if a kill left it empty)."""
        self.study_file = study_file  # the cells' mlflow.source.name
        run = self.parent_run()
        if run is None:
            run = self.client.create_run(self.experiment_id, run_name=self.study,
                                         tags={Tag.STUDY: self.study, Tag.ROLE: Tag.PARENT,
                                               DRIVER_TAG: driver_identity()})
        run_id = run.info.run_id
        self.client.set_tag(run_id, DRIVER_TAG, driver_identity())
        if run.data.tags.get(FILLED_TAG) != "1":
            from mlflow.entities import Param

            have = self.client.get_run(run_id).data.params
            missing = [Param(k, str(v)) for k, v in spec_params.items() if k not in have]
            if missing:
                self.client.log_batch(run_id, params=missing)
            if study_file is not None and not self._has_artifact(run_id, study_file.name):
                self.client.log_artifact(run_id, str(study_file))
            self.client.set_tag(run_id, FILLED_TAG, "1")
        if run.info.status != RUNNING:
            self.client.update_run(run_id, status=RUNNING)
        return run_id

    def _has_artifact(self, run_id: str, name: str) -> bool:
        return any(a.path == name for a in self.client.list_artifacts(run_id))

    def describe_experiment(self, description: str) -> None:
        """The experiment's description (the study file's) and kind, where they differ from the store's."""
        exp = self.client.get_experiment(self.experiment_id)
        for key, value in {**EXPERIMENT_TAGS, **({NOTE_TAG: description} if description else {})}.items():
            if exp.tags.get(key) != value:
                self.client.set_experiment_tag(self.experiment_id, key, value)

    def heartbeat_text(self, cell_id: str, silence_s: float, cell_runs: dict | None = None) -> str:
        """`` (last epoch 3 (2.1 min ago), limit 30 min)`` for a running cell: the age of its last logged
        epoch (its start, before any), which the watchdog compares with the study's silence limit.
        ``cell_runs``: :meth:`cell_runs`, when the caller has it (one listing for all the running cells)."""
        runs = [r for r in (cell_runs if cell_runs is not None else self.cell_runs()).get(cell_id, [])
                if r.info.status == RUNNING]
        if not runs:
            return ""
        run = runs[0]
        history = self.client.get_metric_history(run.info.run_id, "knn_top1")
        last = max(history, key=lambda m: m.timestamp) if history else None
        since = (last.timestamp if last is not None else run.info.start_time) / 1000.0
        what = f"last epoch {last.step}" if last is not None else "no epoch yet"
        return f" ({what}, {max(0.0, time.time() - since) / 60:.1f} min ago; limit {silence_s / 60:.3g} min)"

    def mark_verdicts_stale(self, run_id: str, finished: int) -> bool:
        """When the parent's published verdicts (analysis.publish) were made from other cells than the
        ``finished`` ones the study now has, or while cells were missing: tag them ``stale`` and say so at
        the top of the run's description, so the UI shows no outdated conclusion as current. True if so."""
        tags = self.client.get_run(run_id).data.tags
        state = tags.get(Tag.VERDICT_STATE)
        if state is None or (state == "final" and tags.get(Tag.VERDICT_CELLS) == str(finished)):
            return False
        if state != "stale":
            note = tags.get(NOTE_TAG, "")
            head = (f"**Stale**: these verdicts were made from {tags.get(Tag.VERDICT_CELLS, '?')} finished cells; "
                    f"the study now has {finished}. Rebuild them: `python -m analysis --study {self.study}`.\n\n")
            self.client.set_tag(run_id, NOTE_TAG, (head + note)[:5000])
            self.client.set_tag(run_id, Tag.VERDICT_STATE, "stale")
        return True

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
            self.client.set_tag(run_id, DRIVER_TAG, driver_identity())
            if run.data.tags.get(FILLED_TAG) != "1":
                self._fill_cell(run, cell, parent_id)
            if run.info.status != RUNNING and run.info.status != FINISHED:
                self.client.update_run(run_id, status=RUNNING)
            if Tag.INTERRUPTED in run.data.tags:  # it runs again: the earlier stop is no longer its state
                self.client.delete_tag(run_id, Tag.INTERRUPTED)
            cr = CellRun(run_id, RUNNING, steps, final)
        else:
            tags = dict(self._cell_tags(cell, parent_id), **{DRIVER_TAG: driver_identity()})
            run = self.client.create_run(self.experiment_id, run_name=cell.name, tags=tags)
            cr = CellRun(run.info.run_id, RUNNING)
            self._fill_cell(run, cell, parent_id)
        self._open[cell.cell_id] = cr
        self.log_provenance(cr.run_id, cell)  # the code and data of this attempt
        # a retried trial opens its cell again: its seconds add up
        self._attempts[cell.cell_id] = [time.time(), self._attempts.get(cell.cell_id, (None, 0.0))[1]]
        return cr

    def _cell_tags(self, cell, parent_id: str | None) -> dict[str, str]:
        tags = {
            Tag.STUDY: self.study, Tag.ROLE: Tag.CELL, Tag.CELL_ID: cell.cell_id,
            Tag.PRESET: getattr(cell, "preset", ""), Tag.LEVEL: cell.level,
            Tag.FACTORS: ",".join(cell.levels), Tag.VARIANT: getattr(cell, "variant", ""),
        }
        if trial_function():  # not the trainer (the fake trial of the tests): never mistaken for a trained cell
            tags[Tag.TRIAL] = trial_function()
        if parent_id:
            tags[Tag.PARENT_RUN] = parent_id
        tags.update({factor_tag(f): lv for f, lv in cell.levels.items()})
        return tags

    def _log_params(self, run_id: str, cell) -> None:
        """Log this cell's params and its own ``config.json`` (replacing a copied one), then tag it
        ``filled`` (for a run made by copying another study's, study/reuse.py)."""
        self._fill_cell(self.client.get_run(run_id), cell, replace_config=True)

    def _fill_cell(self, run, cell, parent_id: str | None = None, *, replace_config: bool = False) -> None:
        """Log what ``run`` lacks of its cell's tags, params and ``config.json``, then tag it ``filled``.

        Idempotent, so a run created by a driver killed before it got here is completed by the
        next one: params already there are kept (MLflow params cannot change), missing ones logged.
        """
        from mlflow.entities import Param, RunTag

        from study.studyfile import cell_params

        run_id = run.info.run_id
        have_tags = run.data.tags
        parent_id = parent_id or have_tags.get(Tag.PARENT_RUN)
        tags = [RunTag(k, v) for k, v in self._cell_tags(cell, parent_id).items() if have_tags.get(k) != v]
        if tags:
            self.client.log_batch(run_id, tags=tags)
        have = self.client.get_run(run_id).data.params
        items = sorted((k, v) for k, v in cell_params(cell).items() if k not in have)
        for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
            self.client.log_batch(run_id, params=[Param(k, v) for k, v in items[i:i + 100]])
        if replace_config or not self._has_artifact(run_id, "config.json"):
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "config.json"
                path.write_text(json.dumps(cell.config.flat(), indent=2, sort_keys=True))
                self.client.log_artifact(run_id, str(path))
        self.client.set_tag(run_id, FILLED_TAG, "1")

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
        batch = [Metric(name, float(final[key]), now, step) for key, name in FINAL_METRICS.items()
                 if _finite(final.get(key))]
        if batch:
            self.client.log_batch(cr.run_id, metrics=batch)
        cr.final_logged = True

    def end_cell(self, cell_id: str, status: str, error: str | None = None) -> None:
        cr = self._open.pop(cell_id, None)
        if cr is None:
            return
        if cell_id in self._attempts and self._attempts[cell_id][0] is not None:
            opened, seconds = self._attempts[cell_id]
            self._attempts[cell_id] = [None, seconds + time.time() - opened]
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


def check_same_study(study) -> None:
    """What the store's own state refuses for ``study`` (a :class:`study.studyfile.Study`), as one
    UserError before anything is written:

    - its experiment deleted (MLflow keeps a deleted experiment's name, and would refuse every run);
    - its name held by a study of other factors: another file that kept the name (a copy being
      edited, say) would mix its cells into that study's tables and verdicts.
    """
    from analysis.uri import shown_uri

    uri = tracking_uri()
    if not store_exists(uri):
        return
    tracker = StudyTracker(study.name, uri, create=False)
    exp = tracker.client.get_experiment_by_name(study.name)
    if exp is not None and exp.lifecycle_stage == "deleted":
        raise UserError(f"the store holds study '{study.name}' as a deleted MLflow experiment (id {exp.experiment_id}): "
                        f"restore it (mlflow experiments restore --experiment-id {exp.experiment_id}) or remove it for "
                        f"good (mlflow gc --backend-store-uri {shown_uri(uri)} --experiment-ids {exp.experiment_id})",
                        source=str(study.path), key="name")
    if exp is None:
        moved = experiment_holding_study(tracker.client, study.name)
        if moved is not None:
            raise UserError(f"{moved_study_text(study.name, moved)}, or give this study another name",
                            source=str(study.path), key="name")
        return
    parent = tracker.parent_run()
    if parent is None:
        return
    held = parent.data.tags.get(Tag.STUDY)
    if held and held != study.name:
        raise UserError(f"{foreign_study_text(exp, held)}, or give this study another name",
                        source=str(study.path), key="name")
    theirs = parent.data.params.get("factors", "")
    ours = study.parent_params()["factors"]
    if theirs and theirs != ours:
        raise UserError(f"the store already holds a study '{study.name}' varying {theirs.replace(',', ', ')} (from "
                        f"{parent.data.params.get('file', 'another file')}); this file varies {ours.replace(',', ', ')}: "
                        f"give it another name", source=str(study.path), key="name")


def summarise(study, status: dict[str, str]) -> dict[str, int]:
    """Counts of the study's cells by status: FINISHED, RUNNING, FAILED, KILLED (interrupted), missing."""
    counts = {FINISHED: 0, RUNNING: 0, FAILED: 0, KILLED: 0, "missing": 0}
    for c in study.cells:
        s = status.get(c.cell_id)
        if s in (FINISHED, RUNNING, FAILED, KILLED):
            counts[s] += 1
        else:
            counts["missing"] += 1
    return counts
