"""Local backend: Ray Tune on this machine, as an executor the runner drives in this process.

Maps resources only: Ray gets the machine's CPUs (and GPUs), no dashboard,
and as many trials run at once as the per-trial resources allow.
"""

from __future__ import annotations

import glob
import logging
import os
import time

from study.backends import local_cpus
from study.core.errors import UserError
from study.retry import RetryPolicy
from study.studyfile import Cell, Study
from study.tracking import StudyTracker


def parallel_slots(study: Study, num_cpus: int, num_gpus: int) -> int:
    """How many cells fit at once on ``num_cpus`` CPUs and ``num_gpus`` GPUs."""
    slots = max(1, num_cpus // study.resources.cpus)
    if study.resources.gpus > 0:
        slots = min(slots, max(1, int(num_gpus / study.resources.gpus)))
    return slots


def check_local(study: Study, cpus: int | None = None, gpus: int | None = None) -> None:
    """What Ray on this machine could never run, as one UserError before anything is written: a cell
    asking more CPUs or GPUs than the machine has (its trial would wait forever), or a CUDA device
    on a machine without one."""
    from study.core.config import check_device

    cpus = cpus if cpus is not None else local_cpus()
    gpus = gpus if gpus is not None else _gpu_count()
    where = f"presets.{study.preset}.resources"
    if study.resources.cpus > cpus:
        raise UserError(f"a cell asks {study.resources.cpus} CPUs but this backend gives Ray {cpus} "
                        f"(allowed: 1..{cpus})", source=str(study.path), key=f"{where}.cpus")
    if study.resources.gpus > gpus:
        raise UserError(f"a cell asks {study.resources.gpus:g} GPUs but this machine has {gpus} "
                        f"(allowed: 0..{gpus})", source=str(study.path), key=f"{where}.gpus")
    for device in sorted({c.config.device for c in study.cells}):
        check_device(device, gpus, source=f"{study.path} (or its --set)")


class LocalRay:
    """The local executor: the study's cells as Ray Tune trials on this machine.

    Ray is started by the first :meth:`run` (a Ray already running in this process is used) and
    stays up until :meth:`close` (the runner closes it at the study's end, or after the adaptive
    loop's last batch: starting Ray again per batch costs tens of seconds).

    :meth:`run` is called in the driver thread of :func:`study.interrupt.drive`: signals stay with
    the main thread. ``ray.init`` outside the main thread sets no Python SIGTERM handler (it says so
    in a warning, filtered here); its core worker's C-level failure-signal handler is switched off,
    and the main thread installs the stop handlers again after Ray's start all the same
    (:func:`study.interrupt.reclaim`); Tune's own SIGINT handler, which ends in Ray's advice to call
    ``Tuner.restore``, is switched off.
    """

    def __init__(self, num_cpus: int | None = None, num_gpus: int | None = None):
        # what Ray gets: by default the machine's ($STUDY_NUM_CPUS caps the CPUs) and its GPUs
        self.num_cpus = num_cpus if num_cpus is not None else local_cpus()
        self.num_gpus = num_gpus if num_gpus is not None else _gpu_count()

    def check(self, study: Study) -> None:
        check_local(study, self.num_cpus, self.num_gpus)

    def slots(self, study: Study) -> int:
        return parallel_slots(study, self.num_cpus, self.num_gpus)

    def run(self, study: Study, cells: list[Cell], sink: StudyTracker, retry: RetryPolicy) -> dict[str, str]:
        import ray

        from cluster.tune_run import ray_node_env, run_cells
        from study import interrupt
        from study.core.paths import ray_storage, run_root

        num_cpus, num_gpus = self.num_cpus, self.num_gpus
        slots = self.slots(study)
        print(f"[{study.name}] local Ray: {num_cpus} CPUs, {num_gpus} GPUs, {slots} cells at a time, "
              f"{len(cells)} to run", flush=True)
        # per-epoch reports of many short trials trip this warning, which says nothing useful here
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        # Ray's C++ failure-signal handler (absl's) would take SIGTERM from the moment its core worker
        # starts in this process: it prints a stack, and once it has handled one signal a later Ray of
        # the same process may abort on the next. The stop handlers are the driver's (study.interrupt).
        os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
        ray_node_env()
        if not ray.is_initialized():
            with _no_thread_warning():
                ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, log_to_driver=False,
                         configure_logging=False)
            interrupt.reclaim()  # Ray's core worker took SIGTERM at the C level: the stop handlers again
        interrupt.check()  # Ray's start is the longest stretch without a safe point
        name = f"{study.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        return run_cells(study, cells, sink, run_root=run_root(study.name), storage_path=ray_storage(),
                         slots=slots, experiment_name=name, retry=retry)

    def close(self) -> None:
        import sys

        ray = sys.modules.get("ray")  # not imported: Ray never started here
        if ray is not None and ray.is_initialized():
            ray.shutdown()


class _no_thread_warning:
    """Hide ``ray.init``'s warning that it sets no SIGTERM handler outside the main thread (the driver
    thread wants none: signals are the main thread's, study.interrupt)."""

    class _Filter(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "SIGTERM handler is not set" not in record.getMessage()

    def __enter__(self):
        self.filter = self._Filter()
        self.logger = logging.getLogger("ray._private.worker")
        self.logger.addFilter(self.filter)

    def __exit__(self, *exc):
        self.logger.removeFilter(self.filter)


def _gpu_count() -> int:
    """GPUs torch would see here. Without a GPU driver (no /dev/nvidia*, no ROCm's /dev/kfd) that is 0,
    found without importing torch: the driver of a CPU study then starts ~2.5 CPU-s sooner."""
    if not (glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/dev/kfd")):
        return 0
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:
        return 0


def refuse_slurm_options(options: dict, backend: str) -> None:
    """UserError naming the first SLURM option of the command line given to ``--cluster backend`` (a
    backend without SLURM would ignore it)."""
    flags = ((["--slurm-config"] if options.get("config_file") else [])
             + ["--" + key.replace("_", "-") for key in options.get("overrides") or {}]
             + (["--slurm-opt"] if options.get("extra") else []))
    if flags:
        raise UserError(f"is a SLURM option: it needs --cluster slurm (this run is --cluster {backend})",
                        source=flags[0])


# the backends this module defines, for --cluster (study/backends.py reads this literal without importing)
BACKENDS = {"local": "LocalBackend"}


class LocalBackend:
    """``--cluster local``: the driver runs in this process, its executor is :class:`LocalRay`."""

    name = "local"

    def __init__(self, options: dict):
        self.options = options  # the SLURM flags of the command line: none may be given here

    def check(self, study: Study) -> None:
        from cluster.tune_run import load_trial

        refuse_slurm_options(self.options, self.name)
        self.executor().check(study)  # what would wait or fail forever on the executor's resources
        load_trial()  # a $STUDY_TRIAL that names nothing: an error now, not in every trial

    def describe(self, study: Study) -> None:
        return None

    def executor(self) -> LocalRay:
        return LocalRay()
