"""SLURM backend: one submitit job runs Ray, and Ray Tune runs the study inside it.

``python -m study run STUDY.yaml --cluster slurm`` submits ONE job (through
submitit's SlurmExecutor) whose resources come from a cluster config file
(see ``cluster/slurm.example.yaml``) and the command line. Inside the job:

- SLURM task 0 (node 0) starts the Ray head with its own temp dir under /tmp
  (Ray picks free ports, no dashboard) and writes the head's address to the
  job's log folder; every other task starts a Ray node that joins it
  (``ray start --address ... --block``) and stops when the head says so.
- The Tune driver runs on node 0 through the same path as a local study
  (:func:`study.runner.execute_study`): cells FINISHED in the MLflow store are
  skipped, the others resume from their run directories, and the job's Tune
  experiment (named after the job id) is restored when the job runs again.
- The MLflow store, the run directories and Ray's storage are the submitting
  machine's absolute paths (a shared filesystem); the job gets them
  explicitly in its environment.

Preemption and time-out: SLURM sends USR2 ``signal_delay_s`` before the end;
submitit calls :meth:`StudyJob.checkpoint` (which resubmits the same job
object) and requeues the job; a job requeued by an administrator
(``scontrol requeue``) simply runs again. Either way the new attempt starts
a fresh Ray and restores: nothing finished is retrained, nothing is logged
twice (the store-driven skip and the per-cell resume guarantee it).
``scancel`` leaves the study resumable by running the same command again.

Nothing here imports submitit or ray at module level, and
:func:`check_options` neither imports them nor asks the cluster anything:
parsing a study file and its options stays free of SLURM.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from study.config import did_you_mean
from study.errors import UserError
from study.tracking import REPO_ROOT, artifact_root, tracking_uri

# ---------------------------------------------------------------- options
# key -> (kind, default, help). The cluster config file may hold these keys and `extra`;
# the command line overrides the first nine (--nodes, --gpus-per-node, ...).
OPTION_KEYS: dict[str, tuple[str, Any, str]] = {
    "nodes": ("int>=1", 1, "SLURM nodes; one Ray node each (node 0: head and Tune driver)"),
    "gpus_per_node": ("int>=0", 0, "GPUs per node (sbatch --gpus-per-node; 0: none asked)"),
    "cpus_per_task": ("int>=1", None, "CPUs per node given to Ray (default: max(2, CPUs of one cell))"),
    "mem": ("mem", None, "memory per node as sbatch --mem: 16G, 4000M, 0 = all (default: the cluster's)"),
    "partition": ("str", None, "sbatch --partition"),
    "account": ("str", None, "sbatch --account"),
    "qos": ("str", None, "sbatch --qos"),
    "time": ("time", 60, "time limit: minutes, or [D-]HH:MM[:SS]"),
    "constraint": ("str", None, "sbatch --constraint"),
    "setup": ("lines", [], "shell lines run in the job before Python starts (modules, environments)"),
    "signal_delay_s": ("int>=0", 90, "seconds before the time limit at which the job checkpoints and requeues"),
    "max_requeues": ("int>=0", 3, "how many time-outs the job may requeue itself after"),
    "tasks_per_node": ("int>=1", 1, "Ray nodes per SLURM node (1 on a real cluster; 2 exercises the join path "
                                    "on one machine)"),
    "extra": ("extra", {}, "any other sbatch option, passed through (KEY: VALUE; true = a bare flag)"),
}
# sbatch options that have a key of their own (or that submitit manages): not allowed in `extra`
_MANAGED = {
    "nodes": "nodes", "gpus-per-node": "gpus_per_node", "cpus-per-task": "cpus_per_task", "mem": "mem",
    "partition": "partition", "account": "account", "qos": "qos", "time": "time", "constraint": "constraint",
    "ntasks-per-node": "tasks_per_node", "signal": "signal_delay_s", "output": None, "error": None,
    "open-mode": None, "job-name": None, "array": None, "wckey": None,
}
_TIME_RE = re.compile(r"^(?:(?P<d>\d+)-)?(?P<rest>\d+(?::\d+){0,2})$")
_MEM_RE = re.compile(r"^\d+([KMGT]B?)?$", re.IGNORECASE)
_EXTRA_KEY_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


def config_file_of(options: dict) -> Path | None:
    """The cluster config file: --slurm-config, else $STUDY_SLURM_CONFIG, else none (built-in defaults)."""
    name = options.get("config_file") or os.environ.get("STUDY_SLURM_CONFIG")
    return Path(name).expanduser().resolve() if name else None


def check_options(options: dict) -> dict:
    """Validate the SLURM options (config file, overrides, pass-through) and return them resolved.

    ``options`` is what the command line parsed: ``{"config_file", "overrides", "extra"}``.
    Every problem is one :class:`UserError` naming the file or flag and the key. Imports
    neither submitit nor ray and does not contact the cluster.
    """
    path = config_file_of(options)
    values: dict[str, Any] = {k: spec[1] for k, spec in OPTION_KEYS.items()}
    values["setup"], values["extra"] = [], {}
    if path is not None:
        for key, value in _read_config(path).items():
            values[key] = _coerce(key, value, source=str(path), from_cli=False)
    for key, value in (options.get("overrides") or {}).items():
        if key not in OPTION_KEYS or key in ("extra", "setup"):
            raise UserError(f"unknown SLURM option{did_you_mean(key, tuple(OPTION_KEYS))}", source="--" + key)
        values[key] = _coerce(key, value, source="--" + key.replace("_", "-"), from_cli=True)
    extra = dict(values["extra"])
    extra.update(_coerce("extra", dict(options.get("extra") or {}), source="--slurm-opt", from_cli=True))
    values["extra"] = extra
    values["config_file"] = str(path) if path else None
    return values


def _read_config(path: Path) -> dict:
    from study.files import read_yaml

    src = str(path)
    raw = read_yaml(path, "cluster config file")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(f"expected a mapping of keys, got {type(raw).__name__}", source=src)
    for key in raw:
        if key not in OPTION_KEYS:
            raise UserError(f"unknown key{did_you_mean(str(key), tuple(OPTION_KEYS))} "
                            f"(allowed: {', '.join(OPTION_KEYS)})", source=src, key=str(key))
    return raw


def _coerce(key: str, value: Any, *, source: str, from_cli: bool) -> Any:
    """One option's value, checked and converted; ``from_cli`` values are strings."""
    kind = OPTION_KEYS[key][0]
    where = {"source": source} if from_cli else {"source": source, "key": key}
    if value is None:
        if OPTION_KEYS[key][1] is not None:
            raise UserError(f"needs a value ({OPTION_KEYS[key][2]})", **where)
        return None
    if kind.startswith("int"):
        low = int(kind[-1])
        if from_cli and isinstance(value, str) and re.fullmatch(r"\d+", value.strip()):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"expected a whole number >= {low}, got {value!r}", **where)
        if value < low:
            raise UserError(f"must be >= {low}, got {value}", **where)
        return value
    if kind == "str":
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise UserError(f"expected a string, got {value!r}", **where)
        value = str(value).strip()
        if not value or any(c.isspace() for c in value):
            raise UserError(f"expected a name without spaces, got {value!r}", **where)
        return value
    if kind == "mem":
        text = str(value).strip() if isinstance(value, (str, int)) and not isinstance(value, bool) else None
        if text is None or not _MEM_RE.match(text):
            raise UserError(f"expected memory as sbatch --mem takes it (16G, 4000M, 0), got {value!r}", **where)
        return text.upper()
    if kind == "time":
        return parse_time_minutes(value, where)
    if kind == "lines":
        if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
            raise UserError(f"expected a list of shell lines, got {value!r}", **where)
        return list(value)
    if kind == "extra":
        return _check_extra(value, where)
    raise AssertionError(kind)  # pragma: no cover - every kind is handled above


def parse_time_minutes(value: Any, where: dict | None = None) -> int:
    """A SLURM time limit (minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS) in whole minutes."""
    where = where or {"source": "time"}
    bad = UserError(f"expected minutes or [D-]HH:MM[:SS], got {value!r}", **where)
    if isinstance(value, bool):
        raise bad
    if isinstance(value, int):
        minutes = value
    else:
        m = _TIME_RE.match(str(value).strip())
        if not m:
            raise bad
        parts = [int(p) for p in m.group("rest").split(":")]
        days = int(m.group("d") or 0)
        with_hours = m.group("d") is not None or len(parts) == 3
        if m.group("d") is not None:  # D-HH, D-HH:MM, D-HH:MM:SS
            h, mi, s = parts + [0] * (3 - len(parts))
        elif len(parts) == 3:  # HH:MM:SS
            h, mi, s = parts
        else:  # MM or MM:SS
            h, mi, s = 0, parts[0], parts[1] if len(parts) == 2 else 0
        if s > 59 or (with_hours and mi > 59):
            raise bad
        minutes = days * 1440 + h * 60 + mi + math.ceil(s / 60)
    if minutes < 1:
        raise UserError(f"the time limit must be at least 1 minute, got {value!r}", **where)
    return minutes


def _check_extra(value: Any, where: dict) -> dict:
    if not isinstance(value, dict):
        raise UserError(f"expected a mapping of sbatch options, got {value!r}", **where)
    out = {}
    for key, v in value.items():
        key = str(key)
        flag = key.lstrip("-").replace("_", "-")
        if not _EXTRA_KEY_RE.match(flag):
            raise UserError(f"'{key}' is not an sbatch option name", **where)
        if flag in _MANAGED:
            own = _MANAGED[flag]
            hint = f"; use '{own}' (--{own.replace('_', '-')})" if own else " (set by submitit)"
            raise UserError(f"'{key}' cannot be passed through{hint}", **where)
        if isinstance(v, str) and v.strip().lower() in ("true", "false"):
            v = v.strip().lower() == "true"
        if not isinstance(v, (str, int, float, bool)):
            raise UserError(f"'{key}': expected a scalar value, got {v!r}", **where)
        out[flag] = v
    return out


def resolve_for_study(values: dict, study) -> dict:
    """Fill the defaults that depend on the study and check that one cell fits on a node."""
    values = dict(values)
    per_cell_cpus = study.resources.cpus
    if values["cpus_per_task"] is None:
        values["cpus_per_task"] = max(2, per_cell_cpus)
    if per_cell_cpus > values["cpus_per_task"]:
        raise UserError(f"a cell of '{study.name}' asks {per_cell_cpus} CPUs but a node gives Ray only "
                        f"{values['cpus_per_task']}; raise cpus_per_task or lower the study's "
                        f"presets.{study.preset}.resources.cpus", source="--cpus-per-task")
    gpus_per_task = values["gpus_per_node"] / values["tasks_per_node"]
    if study.resources.gpus > gpus_per_task:
        raise UserError(f"a cell of '{study.name}' asks {study.resources.gpus:g} GPU but a Ray node has "
                        f"{gpus_per_task:g}; raise gpus_per_node", source="--gpus-per-node")
    return values


def executor_parameters(values: dict, study_name: str) -> dict:
    """submitit SlurmExecutor parameters for the resolved options (a pure mapping)."""
    params: dict[str, Any] = {
        "job_name": f"study-{study_name}",
        "nodes": values["nodes"],
        "ntasks_per_node": values["tasks_per_node"],
        "cpus_per_task": values["cpus_per_task"],
        "time": values["time"],
        "signal_delay_s": values["signal_delay_s"],
        "stderr_to_stdout": True,
        "setup": list(values["setup"]),
    }
    if values["gpus_per_node"]:
        params["gpus_per_node"] = values["gpus_per_node"]
    for key in ("partition", "account", "qos", "constraint"):
        if values.get(key):
            params[key] = values[key]
    additional = {k: v for k, v in values["extra"].items() if v is not False}  # false: a flag switched off
    if values.get("mem"):
        # straight to sbatch: submitit's own `mem` expects gigabytes as a number
        additional["mem"] = values["mem"]
    if additional:
        params["additional_parameters"] = additional
    return params


def describe_submission(study, options: dict) -> str:
    """What --dry-run shows for --cluster slurm: the job's resolved resources (nothing submitted)."""
    values = resolve_for_study(check_options(options), study)
    params = executor_parameters(values, study.name)
    lines = [f"SLURM job (config file: {values['config_file'] or 'none, built-in defaults'}):"]
    lines += [f"  {k}: {v}" for k, v in params.items()]
    lines.append(f"  log folder: {slurm_log_root() / study.name}/<jobid>/")
    return "\n".join(lines)


# ---------------------------------------------------------------- paths and environment
def slurm_log_root() -> Path:
    """Where submitit's folders go: <repo>/slurm_logs (``STUDY_SLURM_LOGS`` overrides)."""
    return Path(os.environ.get("STUDY_SLURM_LOGS") or (REPO_ROOT / "slurm_logs")).resolve()


def absolute_tracking_uri(uri: str | None = None) -> str:
    """The tracking URI with a relative sqlite path made absolute (the job runs elsewhere)."""
    uri = uri or tracking_uri()
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


def job_environment() -> dict[str, str]:
    """The store and storage paths the job must use, all absolute, plus any other STUDY_* setting."""
    from study.runner import ray_storage

    env = {k: v for k, v in os.environ.items() if k.startswith("STUDY_")}
    run_base = os.environ.get("STUDY_RUN_ROOT") or str(REPO_ROOT / "runs")
    env.update({
        "MLFLOW_TRACKING_URI": absolute_tracking_uri(),
        "STUDY_RUN_ROOT": str(Path(run_base).resolve()),
        "STUDY_RAY_RESULTS": str(ray_storage()),
        "STUDY_ARTIFACT_ROOT": str(artifact_root()),
        "PYTHONUNBUFFERED": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
    })
    return env


def _sets_args(sets: dict) -> str:
    out = []
    for k, v in sets.items():
        text = json.dumps(v) if isinstance(v, (bool, list, dict)) or v is None else str(v)
        out.append(f"--set {shlex.quote(f'{k}={text}')}")
    return " ".join(out)


def _display_path(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# ---------------------------------------------------------------- the job
class StudyJob:
    """What the SLURM job runs: a Ray cluster over the job's nodes, and the study's Tune driver.

    Follows submitit's Checkpointable protocol: submitit requeues any job
    function that has a ``checkpoint`` method returning a DelayedSubmission
    (it tests ``hasattr(fn, "checkpoint")``). It is a plain class rather than a
    subclass of ``submitit.helpers.Checkpointable`` so that importing this
    module does not import submitit. Holds plain data only (it is pickled).
    """

    def __init__(self, study_path: str, preset: str, sets: dict, *, rerun_failed: bool, env: dict[str, str],
                 options: dict, seeds: list[int] | None = None, cell_ids: list[str] | None = None):
        # seeds / cell_ids: run only these cells of the file expanded at these seeds (a batch of
        # the adaptive loop, study/adaptive.py); None: the study file's cells
        self.seeds = list(seeds) if seeds is not None else None
        self.cell_ids = list(cell_ids) if cell_ids is not None else None
        self.study_path = str(study_path)
        self.preset = preset
        self.sets = dict(sets)
        self.rerun_failed = rerun_failed
        self.env = dict(env)
        self.options = dict(options)
        self.checkpoints = 0

    # submitit's checkpoint protocol ---------------------------------------
    def checkpoint(self, *args: Any, **kwargs: Any):
        """Called by submitit on preemption or time-out: resubmit this same job object.

        Nothing to save here: every cell checkpoints its trainer each epoch and the
        store knows which cells finished; the next attempt restores from those.
        """
        from submitit.helpers import DelayedSubmission

        self.checkpoints += 1
        print(f"[slurm] preempted or timing out: requeueing (checkpoint {self.checkpoints}); the next attempt "
              "restores the Tune experiment", flush=True)
        return DelayedSubmission(self, *args, **kwargs)

    def __call__(self) -> int | None:
        os.environ.update(self.env)
        os.environ.pop("RAY_ADDRESS", None)  # never attach to some other Ray cluster
        import submitit

        jenv = submitit.JobEnvironment()
        attempt = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
        ctx = _JobContext(job_id=str(jenv.job_id), attempt=attempt, rank=jenv.global_rank,
                          ntasks=jenv.num_tasks, folder=jenv.paths.folder, hostname=jenv.hostname)
        cpus, gpus = self._task_resources()
        if ctx.rank == 0:
            return self._run_head(ctx, cpus, gpus)
        self._run_worker(ctx, cpus, gpus)
        return None

    def load(self):
        """The job's study: the file's cells, or the adaptive batch's."""
        from dataclasses import replace

        from study.studyfile import load_study

        study = load_study(self.study_path, self.preset, self.sets, seeds=self.seeds)
        if self.cell_ids is not None:
            keep = set(self.cell_ids)
            study = replace(study, cells=tuple(c for c in study.cells if c.cell_id in keep))
        return study

    def _task_resources(self) -> tuple[int, int]:
        cpus = int(os.environ.get("SLURM_CPUS_PER_TASK") or self.options.get("cpus_per_task") or 1)
        gpus_node = int(self.options.get("gpus_per_node") or 0)
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if gpus_node and visible:
            gpus_node = len([d for d in visible.split(",") if d.strip()])
        return cpus, gpus_node // max(1, int(self.options.get("tasks_per_node") or 1))

    def _run_head(self, ctx: "_JobContext", cpus: int, gpus: int) -> int:
        _use_job_token(ctx, create=True)  # before Ray reads its configuration
        import ray

        from study.runner import execute_study

        _remove_stale_temp_dirs(ctx.job_id)
        temp_dir = _ray_temp_dir(ctx)
        print(f"[slurm] job {ctx.job_id} attempt {ctx.attempt} on {ctx.hostname}: Ray head with {cpus} CPUs, "
              f"{gpus} GPUs, temp dir {temp_dir}; {ctx.ntasks} Ray node(s) expected", flush=True)
        try:
            if ray.is_initialized():
                ray.shutdown()
            term_handler = signal.getsignal(signal.SIGTERM)  # submitit's: log and go on
            ray.init(num_cpus=cpus, num_gpus=gpus, include_dashboard=False, log_to_driver=False,
                     configure_logging=False, _temp_dir=temp_dir)
            # ray.init makes SIGTERM exit the driver; on preemption SLURM sends SIGTERM and then
            # submitit's USR2, whose handler requeues the job, so keep submitit's SIGTERM handler
            if callable(term_handler):
                signal.signal(signal.SIGTERM, term_handler)
            address = ray.get_runtime_context().gcs_address
            _atomic_write(ctx.head_file, json.dumps({"address": address, "host": ctx.hostname}))
            if ctx.ntasks > 1:
                _wait_for_nodes(ctx, timeout=float(os.environ.get("STUDY_RAY_JOIN_TIMEOUT", "300")))
            print(f"[slurm] Ray cluster at {address}: {_cluster_line()}", flush=True)
            study = self.load()
            name, restore = _tune_experiment(ctx, study.name)
            print(f"[slurm] Tune experiment {name}: " + ("restoring it" if restore else "new"), flush=True)
            return execute_study(study, rerun_failed=self.rerun_failed, backend="slurm", experiment_name=name,
                                 restore=restore)
        finally:
            _atomic_write(ctx.done_file, "done")
            ray.shutdown()
            shutil.rmtree(temp_dir, ignore_errors=True)

    def _run_worker(self, ctx: "_JobContext", cpus: int, gpus: int) -> None:
        deadline = time.time() + float(os.environ.get("STUDY_RAY_JOIN_TIMEOUT", "300"))
        while not ctx.head_file.exists():
            if ctx.done_file.exists() or time.time() > deadline:
                print(f"[slurm] task {ctx.rank}: no Ray head appeared; leaving", flush=True)
                return
            time.sleep(1.0)
        address = json.loads(ctx.head_file.read_text())["address"]
        _use_job_token(ctx, create=False)
        temp_dir = _ray_temp_dir(ctx)
        ray_bin = Path(sys.executable).with_name("ray")
        cmd = [str(ray_bin) if ray_bin.exists() else "ray", "start", "--address", address, "--num-cpus", str(cpus),
               "--num-gpus", str(gpus), "--temp-dir", temp_dir, "--block", "--disable-usage-stats"]
        print(f"[slurm] task {ctx.rank} on {ctx.hostname}: joining Ray at {address} ({cpus} CPUs, {gpus} GPUs)",
              flush=True)
        # the study is over when this node is stopped: nothing to drain (Ray would wait 30 s)
        env = dict(os.environ, RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0")
        proc = subprocess.Popen(cmd, start_new_session=True, env=env)
        try:
            while proc.poll() is None and not ctx.done_file.exists():
                time.sleep(1.0)
            if proc.returncode and not ctx.done_file.exists():
                # tell the head not to wait for this node any longer
                _atomic_write(ctx.folder / f"ray_join_failed.{ctx.attempt}.{ctx.rank}", str(proc.returncode))
                print(f"[slurm] task {ctx.rank}: `ray start` exited with {proc.returncode}; see this task's "
                      "log", flush=True)
        finally:
            _stop_group(proc)
            shutil.rmtree(temp_dir, ignore_errors=True)


class _JobContext:
    """Where one attempt of the job is: ids, rank, and its rendezvous files in the job folder."""

    def __init__(self, *, job_id: str, attempt: int, rank: int, ntasks: int, folder: Path, hostname: str):
        self.job_id, self.attempt, self.rank, self.ntasks = job_id, attempt, rank, ntasks
        self.folder, self.hostname = Path(folder), hostname
        self.head_file = self.folder / f"ray_head.{attempt}.json"
        self.done_file = self.folder / f"ray_done.{attempt}"


def _tune_experiment(ctx: _JobContext, study_name: str) -> tuple[str, bool]:
    """(name, restore): the Tune experiment of an earlier attempt of this job when Tune can restore it
    (it wrote its state; an attempt killed in its first seconds may not have), else a new one."""
    from study.runner import ray_storage

    record = ctx.folder / "tune_experiment"
    if record.exists():
        name = record.read_text().strip()
        path = ray_storage() / name
        if (path / "tuner.pkl").exists() and any(path.glob("experiment_state-*.json")):
            return name, True
    name = f"{study_name}-slurm-{ctx.job_id}" + (f".{ctx.attempt}" if ctx.attempt else "")
    _atomic_write(record, name)
    return name, False


def _ray_temp_dir(ctx: _JobContext) -> str:
    # short: Ray's socket paths live under it and a Unix socket path has at most 107 bytes
    return tempfile.mkdtemp(prefix=f"ray{ctx.job_id}.{ctx.attempt}.{ctx.rank}-", dir="/tmp")


def _remove_stale_temp_dirs(job_id: str) -> None:
    """Temp dirs of an earlier attempt of this job on this node (killed without cleaning up)."""
    for path in Path("/tmp").glob(f"ray{job_id}.*"):
        shutil.rmtree(path, ignore_errors=True)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _use_job_token(ctx: _JobContext, create: bool) -> None:
    """Token authentication for the job's Ray cluster, with a token of its own in the job folder.

    Ray 2.60 turns token auth on for a cluster that ``ray.init`` starts; a node that joins
    with ``ray start`` must present the same token. A per-job token (mode 0600, on the shared
    filesystem) keeps other users' and other jobs' Ray clusters apart from this one.
    """
    path = ctx.folder / "ray_auth_token"
    if create and not path.exists():
        import secrets

        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(path)
    if "ray._raylet" in sys.modules:  # Ray caches its configuration when imported: refresh it
        from ray._raylet import Config

        Config.initialize("")


def _wait_for_nodes(ctx: _JobContext, timeout: float) -> None:
    """Wait until every task's Ray node joined (or failed to, or the timeout passed)."""
    import ray

    deadline = time.time() + timeout
    while True:
        alive = len([n for n in ray.nodes() if n.get("Alive")])
        failed = len(list(ctx.folder.glob(f"ray_join_failed.{ctx.attempt}.*")))
        if alive >= ctx.ntasks:
            return
        if alive + failed >= ctx.ntasks or time.time() > deadline:
            why = f"{failed} failed to join" if failed else f"timed out after {timeout:.0f}s"
            print(f"[slurm] only {alive} of {ctx.ntasks} Ray nodes joined ({why}); going on with them", flush=True)
            return
        time.sleep(1.0)


def _cluster_line() -> str:
    import ray

    res = ray.cluster_resources()
    nodes = len([n for n in ray.nodes() if n.get("Alive")])
    return f"{nodes} node(s), {res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs"


def _stop_group(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


# ---------------------------------------------------------------- submitting and following
def submit_study(study, *, sets: dict, options: dict, wait: bool, rerun_failed: bool, subset: bool = False) -> int:
    """Submit the study as one SLURM job; print how to follow it; with ``wait``, follow it to the end.

    ``subset``: the job runs exactly ``study.cells`` (a batch of the adaptive loop), not the file's cells.
    """
    from study.runner import cells_to_run
    from study.tracking import StudyTracker

    values = resolve_for_study(check_options(options), study)
    status = StudyTracker(study.name, create=False).cell_status()
    todo, done = cells_to_run(study, status, rerun_failed)
    failed = len(study.cells) - len(todo) - done
    if not todo:
        print(f"[{study.name}] {len(study.cells)} cells: {done} finished, nothing to submit"
              + (f" ({failed} failed: rerun with --rerun-failed)" if failed else ""))
        return 0 if done == len(study.cells) else 1

    import submitit

    folder = slurm_log_root() / study.name / "%j"
    try:
        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=values["max_requeues"])
    except RuntimeError as err:
        raise UserError(f"{err} (run this on a SLURM login node, or use --cluster local)",
                        source="--cluster slurm") from None
    executor.update_parameters(**executor_parameters(values, study.name))
    job_fn = StudyJob(str(study.path), study.preset, sets, rerun_failed=rerun_failed, env=job_environment(),
                      options=values,
                      seeds=sorted({c.seed for c in study.cells}) if subset else None,
                      cell_ids=[c.cell_id for c in study.cells] if subset else None)
    try:
        job = executor.submit(job_fn)
    except submitit.core.utils.FailedSubmissionError as err:
        raise UserError(f"sbatch refused the job: {str(err).strip()}", source="--cluster slurm") from None
    log = job.paths.stdout
    status_cmd = " ".join(["python -m study status", shlex.quote(_display_path(study.path)), "--preset",
                           study.preset] + ([_sets_args(sets)] if sets else []))
    res = (f"{values['nodes']} node(s) x {values['cpus_per_task'] * values['tasks_per_node']} CPUs"
           + (f" x {values['gpus_per_node']} GPUs" if values["gpus_per_node"] else "")
           + f", time limit {values['time']} min")
    print(f"[{study.name}] submitted SLURM job {job.job_id}: {len(todo)} cells to run, {done} finished; {res}")
    print(f"  log:     {log}")
    print(f"  follow:  {status_cmd}")
    print(f"           tail -f {log}")
    print(f"  stop:    scancel {job.job_id}   (run the same command again to resume)", flush=True)
    if not wait:
        return 0
    return follow_job(job.job_id, job.paths.result_pickle, log, study)


_ENDED = ("BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
          "PREEMPTED", "TIMEOUT", "SPECIAL_EXIT", "REVOKED")


def job_state(job_id: str) -> str:
    """The job's SLURM state (RUNNING, PENDING, COMPLETED, ...), or '' once SLURM has forgotten it."""
    try:
        out = subprocess.run(["squeue", "-h", "-t", "all", "-j", str(job_id), "-o", "%T"], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "UNKNOWN"
    if out.returncode != 0:
        return "" if "Invalid job id" in out.stderr else "UNKNOWN"
    return out.stdout.strip().split("\n")[0].strip()


def _wait_for_end(job_id: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and job_state(job_id) not in _ENDED + ("",):
        time.sleep(1.0)


def _store_counts(study) -> dict | None:
    from study.runner import summarise
    from study.tracking import StudyTracker

    try:
        return summarise(study, StudyTracker(study.name, create=False).cell_status())
    except Exception:  # the store may be busy (sqlite on a shared filesystem); try at the next poll
        return None


def follow_job(job_id: str, result_path: Path, log: Path, study, poll: float | None = None) -> int:
    """Follow the job until it ends, one line per change; 0 if every cell of the study finished."""
    from submitit.core.utils import pickle_load

    poll = poll if poll is not None else float(os.environ.get("STUDY_SLURM_POLL", "5"))
    start, last, ended_at, state = time.time(), "", None, ""
    n = len(study.cells)
    try:
        while True:
            state = job_state(job_id)
            counts = _store_counts(study)
            cells = (f"done {counts['FINISHED']}/{n}  running {counts['RUNNING']}  failed {counts['FAILED']}"
                     if counts else "store busy")
            line = f"[{study.name}] job {job_id} {state or 'ended'}: {cells}"
            if line != last:
                print(f"{line}  ({time.time() - start:.0f}s)", flush=True)
                last = line
            if result_path.exists():
                _wait_for_end(job_id, timeout=60.0)  # the job still shuts Ray down and exits
                break
            if state in _ENDED or state == "":
                ended_at = ended_at or time.time()
                if time.time() - ended_at > 15:  # no result written: cancelled, failed or killed
                    break
            time.sleep(poll)
    except KeyboardInterrupt:
        print(f"\nstopped following job {job_id}; it goes on (scancel {job_id} to stop it)", file=sys.stderr)
        return 130
    outcome = None
    if result_path.exists():
        try:
            kind, value = pickle_load(result_path)
        except Exception as err:  # a truncated pickle: report it, the store still says what finished
            kind, value = "error", f"cannot read {result_path}: {err}"
        if kind == "success":
            outcome = value
        else:
            print(f"[{study.name}] job {job_id} failed:\n{str(value)[-3000:]}", file=sys.stderr)
    else:
        print(f"[{study.name}] job {job_id} ended ({state or 'gone'}) before the study finished; the study is "
              f"resumable: run the same command again. Log: {log}", file=sys.stderr)
    counts = _store_counts(study) or {"FINISHED": 0, "FAILED": 0, "missing": n}
    print(f"[{study.name}] finished {counts['FINISHED']}/{n}, failed {counts['FAILED']}, "
          f"missing {counts['missing']}", flush=True)
    return 0 if counts["FINISHED"] == n and outcome in (0, None) else 1


__all__ = ["OPTION_KEYS", "StudyJob", "check_options", "describe_submission", "executor_parameters", "follow_job",
           "job_state", "parse_time_minutes", "resolve_for_study", "submit_study"]
