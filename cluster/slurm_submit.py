"""Submitting a study as one SLURM job (submitit) and following it to its end.

:func:`submit_study` submits ONE job whose resources come from the checked
options (:mod:`cluster.slurm_options`) and whose function is a
:class:`cluster.slurm_job.StudyJob`; it prints how to follow and stop the job
and, with ``--wait``, :func:`follow_job` follows it (SLURM's state through
``squeue``, the cells through the store) and returns the study's outcome.

The MLflow store, the run directories and Ray's storage are the submitting
machine's absolute paths (a shared filesystem); the job gets them explicitly
in its environment (:func:`job_environment`). submitit is imported only when
a job is submitted or followed.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from cluster.slurm_job import StudyJob
from cluster.slurm_options import check_options, executor_parameters, resolve_for_study, slurm_log_root
from study import interrupt
from study.core.errors import UserError
from study.retry import RetryPolicy
from study.tracking import artifact_root, tracking_uri


# ---------------------------------------------------------------- the job's environment
def absolute_tracking_uri(uri: str | None = None) -> str:
    """The tracking URI with a relative sqlite path made absolute (the job runs elsewhere)."""
    uri = uri or tracking_uri()
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


def job_environment() -> dict[str, str]:
    """The store and storage paths the job must use, all absolute, plus any other STUDY_* setting."""
    from study.core.paths import ray_storage, runs_base

    env = {k: v for k, v in os.environ.items() if k.startswith("STUDY_")}
    env.update({
        "MLFLOW_TRACKING_URI": absolute_tracking_uri(),
        "STUDY_RUN_ROOT": str(runs_base()),
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



# ---------------------------------------------------------------- submitting and following
def submit_study(study, todo: list, done: int, *, sets: dict, options: dict, wait: bool, retry: RetryPolicy,
                 subset: bool = False) -> int:
    """Submit the study's driver as one SLURM job; print how to follow it; with ``wait``, follow it to
    the end. ``todo``, ``done``: the cells to run and the number finished (the runner's choice, by
    ``retry``; the job chooses again from the store when it starts).

    ``subset``: the job runs exactly ``study.cells`` (a batch of the adaptive loop), not the file's cells.
    """
    values = resolve_for_study(check_options(options), study)
    failed = len(study.cells) - len(todo) - done
    if not todo:
        print(f"[{study.name}] {len(study.cells)} cells: {done} finished, nothing to submit"
              + (f" ({retry.failed_hint(failed)})" if retry.failed_hint(failed) else ""))
        return 0 if done == len(study.cells) else 1

    import submitit

    folder = slurm_log_root() / study.name / "%j"
    try:
        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=values["max_requeues"])
    except RuntimeError as err:
        raise UserError(f"{err} (run this on a SLURM login node, or use --cluster local)",
                        source="--cluster slurm") from None
    executor.update_parameters(**executor_parameters(values, study.name))
    job_fn = StudyJob(str(study.path), study.preset, sets, retry=retry, env=job_environment(),
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
    from study.tracking import StudyTracker, summarise

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
            interrupt.check()  # a safe point: Ctrl-C stops the following, not the job
    except (KeyboardInterrupt, interrupt.StudyInterrupted) as err:
        print(f"\nstopped following job {job_id}; it goes on (scancel {job_id} to stop it)", file=sys.stderr)
        return getattr(err, "exit_code", 130)
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
