"""What runs on the nodes of the SLURM job: a Ray cluster over the job's nodes and the study's Tune driver.

Inside the job (one SLURM task per Ray node):

- SLURM task 0 (node 0) starts the Ray head with its own temp dir under /tmp
  (Ray picks free ports, no dashboard) and writes the head's address to the
  job's log folder; every other task starts a Ray node that joins it
  (``ray start --address ... --block``) and stops when the head says so.
- The Tune driver runs on node 0 through the same path as a local study: the runner
  (:func:`study.runner.execute_study`) with :class:`JobRay`, the executor of Ray in
  this allocation, as its executor: cells FINISHED in the MLflow store are
  skipped, the others resume from their run directories, and the job's Tune
  experiment (named after the job id) is restored when the job runs again.
- A node lost mid-study (its Ray node stops answering) stops the study with
  an error that names it; the study stays resumable.

Preemption and time-out: SLURM sends USR2 ``signal_delay_s`` before the end;
submitit calls :meth:`StudyJob.checkpoint` (which resubmits the same job
object) and requeues the job; a job requeued by an administrator
(``scontrol requeue``) simply runs again. Either way the new attempt starts
a fresh Ray and restores: nothing finished is retrained, nothing is logged
twice (the store-driven skip and the per-cell resume guarantee it).
``scancel`` leaves the study resumable by running the same command again.

submitit pickles the :class:`StudyJob` it runs; ray and submitit are imported
only inside the job.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from study.core.files import write_atomic

class StudyJob:
    """What the SLURM job runs: a Ray cluster over the job's nodes, and the study's Tune driver.

    Follows submitit's Checkpointable protocol: submitit requeues any job
    function that has a ``checkpoint`` method returning a DelayedSubmission
    (it tests ``hasattr(fn, "checkpoint")``). It is a plain class rather than a
    subclass of ``submitit.helpers.Checkpointable`` so that importing this
    module does not import submitit. Holds plain data only (it is pickled).
    """

    def __init__(self, study_path: str, preset: str, sets: dict, *, retry, env: dict[str, str],
                 options: dict, seeds: list[int] | None = None, cell_ids: list[str] | None = None):
        # seeds / cell_ids: run only these cells of the file expanded at these seeds (a batch of
        # the adaptive loop, study/adaptive.py); None: the study file's cells
        self.seeds = list(seeds) if seeds is not None else None
        self.cell_ids = list(cell_ids) if cell_ids is not None else None
        self.study_path = str(study_path)
        self.preset = preset
        self.sets = dict(sets)
        self.retry = retry  # the submitting command's study.retry.RetryPolicy, whole
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

        from cluster.tune_run import ray_node_env
        from study.runner import execute_study

        _remove_stale_temp_dirs(ctx.job_id)
        temp_dir = _ray_temp_dir(ctx)
        print(f"[slurm] job {ctx.job_id} attempt {ctx.attempt} on {ctx.hostname}: Ray head with {cpus} CPUs, "
              f"{gpus} GPUs, temp dir {temp_dir}; {ctx.ntasks} Ray node(s) expected", flush=True)
        try:
            if ray.is_initialized():
                ray.shutdown()
            ray_node_env()
            ray.init(num_cpus=cpus, num_gpus=gpus, include_dashboard=False, log_to_driver=False,
                     configure_logging=False, _temp_dir=temp_dir, _node_name=_slurm_node())
            # ray.init makes SIGTERM exit the driver; on preemption SLURM sends SIGTERM and then
            # submitit's USR2, whose handler requeues the job: see _drive_in_thread
            signal.signal(signal.SIGTERM, _on_sigterm)
            address = ray.get_runtime_context().gcs_address
            write_atomic(ctx.head_file, json.dumps({"address": address, "host": ctx.hostname}))
            if ctx.ntasks > 1:
                _wait_for_nodes(ctx, timeout=float(os.environ.get("STUDY_RAY_JOIN_TIMEOUT", "300")))
            print(f"[slurm] Ray cluster at {address}: {_cluster_line()}", flush=True)
            study = self.load()
            name, restore = _tune_experiment(ctx, study.name)
            print(f"[slurm] Tune experiment {name}: " + ("restoring it" if restore else "new"), flush=True)
            watch = _NodeWatch()
            executor = JobRay(name, restore)
            return _drive_in_thread(lambda: execute_study(study, executor=executor, retry=self.retry), watch)
        finally:
            from cluster.tune_run import STOPPING

            # the Tune thread may still run (a requeue's SystemExit): what Ray's shutdown does to
            # its trials is no cell failure
            STOPPING.set()
            write_atomic(ctx.done_file, "done")
            if _STOPPED_AT:
                # SLURM's SIGTERM stopped Ray's GCS: a clean ray.shutdown() would wait on it
                _kill_own_ray(temp_dir)
            else:
                ray.shutdown()
            shutil.rmtree(temp_dir, ignore_errors=True)

    def _run_worker(self, ctx: "_JobContext", cpus: int, gpus: int) -> None:
        from cluster.tune_run import RAY_NODE_ENV

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
               "--num-gpus", str(gpus), "--temp-dir", temp_dir, "--block", "--disable-usage-stats",
               "--node-name", _slurm_node()]  # (a hidden option of `ray start`: names the node in ray.nodes())
        print(f"[slurm] task {ctx.rank} on {ctx.hostname}: joining Ray at {address} ({cpus} CPUs, {gpus} GPUs)",
              flush=True)
        # the study is over when this node is stopped: nothing to drain (Ray would wait 30 s)
        env = {**RAY_NODE_ENV, **os.environ, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
        proc = subprocess.Popen(cmd, start_new_session=True, env=env)
        try:
            while proc.poll() is None and not ctx.done_file.exists():
                time.sleep(1.0)
            if proc.returncode and not ctx.done_file.exists():
                # tell the head not to wait for this node any longer
                write_atomic(ctx.folder / f"ray_join_failed.{ctx.attempt}.{ctx.rank}", str(proc.returncode))
                print(f"[slurm] task {ctx.rank}: `ray start` exited with {proc.returncode}; see this task's "
                      "log", flush=True)
        finally:
            _stop_group(proc)
            shutil.rmtree(temp_dir, ignore_errors=True)


# [the time the job got SIGTERM], empty until then; set by _on_sigterm in the main thread
_STOPPED_AT: list[float] = []


def _on_sigterm(signum, frame) -> None:
    """SIGTERM to the job: SLURM is stopping it (preemption, scancel, the end of a requeue).

    SLURM sends it to every process of the job step, Ray's GCS, raylet and trial
    workers included, so the trials now die with Ray. Mark the stop (the Tune
    callbacks then leave those cells RUNNING for the next attempt instead of
    failing them) and go on: on preemption submitit's USR2 handler follows and
    requeues the job; see :func:`_drive_in_thread`.
    """
    from cluster.tune_run import STOPPING

    if not _STOPPED_AT:
        _STOPPED_AT.append(time.time())
    STOPPING.set()
    print("[slurm] SIGTERM: SLURM is stopping this job (and Ray with it); waiting for its requeue signal",
          flush=True)


def _slurm_node() -> str:
    """This task's SLURM node name (the host name outside SLURM)."""
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


class _NodeWatch:
    """The Ray nodes alive when the study starts, by SLURM node name; :meth:`check` raises once one
    of them has died (its node's Ray stopped: the node crashed, lost its network, was killed)."""

    def __init__(self):
        import ray

        self.nodes = {n["NodeID"]: n.get("NodeName") or n.get("NodeManagerAddress", "?")
                      for n in ray.nodes() if n.get("Alive")}

    def check(self) -> None:
        import ray

        try:
            alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
        except Exception:  # the GCS is busy or going away: the next check decides
            return
        lost = sorted({name for nid, name in self.nodes.items() if nid not in alive})
        if lost:
            what = ", ".join(lost)
            print(f"[slurm] lost node {what} mid-study (its Ray node stopped answering); stopping", flush=True)
            job = os.environ.get("SLURM_JOB_ID", "JOBID")
            raise RuntimeError(f"lost node {what} mid-study (its Ray node stopped answering): the study stopped. "
                               "It is resumable: SLURM requeues a job after a node failure, and the job restores "
                               f"the study once enough nodes are up (squeue -j {job}); to go on with fewer nodes "
                               f"now, scancel {job} and run the same command again with a smaller --nodes")


def _drive_in_thread(run: Any, watch: "_NodeWatch | None" = None, period: float = 5.0) -> Any:
    """Run the Tune driver ``run()`` in a thread while the main thread only waits.

    Python runs signal handlers in the main thread only, between bytecodes. Were the
    Tune loop in the main thread, a preemption (SIGTERM to every process, then USR2)
    could find it inside a Ray call that waits up to 60 s for the GCS that SIGTERM
    just stopped; Ray then exits the process and submitit's USR2 handler, which
    requeues the job, never runs. Waiting here in short joins, the handlers run at
    once: USR2 requeues the job and exits (SystemExit from submitit's handler), the
    thread (a daemon) goes with the process.

    Every ``period`` seconds ``watch.check()`` looks for a lost node (and raises then).
    After a SIGTERM with no USR2 within ``STUDY_SIGTERM_GRACE_S`` seconds (default 30:
    a plain ``scancel``, whose SIGKILL comes after KillWait), raises a RuntimeError
    saying the study is resumable. Returns ``run()``'s value, or raises its exception.
    """
    import threading

    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["value"] = run()
        except BaseException as err:  # handed to the main thread
            out["error"] = err

    grace = float(os.environ.get("STUDY_SIGTERM_GRACE_S", "30"))
    thread = threading.Thread(target=target, name="tune-driver", daemon=True)
    thread.start()
    next_check = time.time() + period

    def waiting() -> bool:
        # after a SIGTERM: until the grace period ends, whether the driver returned or is stuck in a
        # call to the Ray that SIGTERM stopped (waiting for it would hang the job); else: the driver
        if _STOPPED_AT:
            return time.time() < _STOPPED_AT[0] + grace
        return thread.is_alive()

    while waiting():
        thread.join(0.2)
        if not thread.is_alive():
            time.sleep(0.2)
        elif watch is not None and not _STOPPED_AT and time.time() >= next_check:
            watch.check()
            next_check = time.time() + period
    if _STOPPED_AT:
        raise RuntimeError(f"the job got SIGTERM and no requeue signal within {grace:.0f}s: stopped; the study "
                           "is resumable: run the same command again")
    if "error" in out:
        from study.tracking import store_unreachable

        down = store_unreachable(out["error"])  # the tracking server went away: say so, resumable
        if down is not None:
            raise down from None
        raise out["error"]
    return out.get("value")


def _kill_own_ray(temp_dir: str) -> None:
    """Kill what is left of this job's Ray on this node: the processes whose command line names its
    temp dir (GCS, raylet, workers), so that nothing outlives the job."""
    me = os.getpid()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == me:
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if temp_dir in cmdline:
            try:
                os.kill(int(proc.name), signal.SIGKILL)
            except OSError:
                pass


class JobRay:
    """The executor of a SLURM job: Ray over the job's nodes, started (and stopped) by the job itself
    (:meth:`StudyJob._run_head`); the cells run as one Tune experiment, ``experiment_name``, restored
    from an earlier attempt of the job when ``restore``."""

    def __init__(self, experiment_name: str, restore: bool):
        self.experiment_name, self.restore = experiment_name, restore

    def check(self, study) -> None:
        return None  # the allocation was checked at submission (cluster/slurm_options.py)

    def slots(self, study) -> None:
        return None  # as many as the allocation's Ray places at once

    def run(self, study, cells, sink, retry) -> dict[str, str]:
        from cluster.tune_run import run_cells
        from study.core.paths import ray_storage, run_root

        return run_cells(study, cells, sink, run_root=run_root(study.name), storage_path=ray_storage(),
                         slots=len(cells), experiment_name=self.experiment_name, retry=retry,
                         restore=self.restore)

    def close(self) -> None:
        return None  # the job shuts its Ray down as it ends


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
    from study.core.paths import ray_storage

    record = ctx.folder / "tune_experiment"
    if record.exists():
        name = record.read_text().strip()
        path = ray_storage() / name
        if (path / "tuner.pkl").exists() and any(path.glob("experiment_state-*.json")):
            return name, True
    name = f"{study_name}-slurm-{ctx.job_id}" + (f".{ctx.attempt}" if ctx.attempt else "")
    write_atomic(record, name)
    return name, False


def _ray_temp_dir(ctx: _JobContext) -> str:
    # short: Ray's socket paths live under it and a Unix socket path has at most 107 bytes
    return tempfile.mkdtemp(prefix=f"ray{ctx.job_id}.{ctx.attempt}.{ctx.rank}-", dir="/tmp")


def _remove_stale_temp_dirs(job_id: str) -> None:
    """Temp dirs of an earlier attempt of this job on this node (killed without cleaning up)."""
    for path in Path("/tmp").glob(f"ray{job_id}.*"):
        shutil.rmtree(path, ignore_errors=True)


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
