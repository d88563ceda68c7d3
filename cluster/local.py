"""Local backend: Ray Tune on this machine.

Maps resources only: Ray gets the machine's CPUs (and GPUs), no dashboard,
and as many trials run at once as the per-trial resources allow.
"""

from __future__ import annotations

import glob
import logging
import os
import time
from pathlib import Path

from study.core.errors import UserError
from study.studyfile import Cell, Study
from study.tracking import StudyTracker


def parallel_slots(study: Study, num_cpus: int, num_gpus: int) -> int:
    """How many cells fit at once on ``num_cpus`` CPUs and ``num_gpus`` GPUs."""
    slots = max(1, num_cpus // study.resources.cpus)
    if study.resources.gpus > 0:
        slots = min(slots, max(1, int(num_gpus / study.resources.gpus)))
    return slots


def check_local(study: Study) -> None:
    """What Ray on this machine could never run, as one UserError before anything is written: a cell
    asking more CPUs or GPUs than the machine has (its trial would wait forever), or a CUDA device
    on a machine without one."""
    from study.core.config import check_device
    from study.core.errors import UserError
    from study.runner import local_cpus

    cpus, gpus = local_cpus(), _gpu_count()
    where = f"presets.{study.preset}.resources"
    if study.resources.cpus > cpus:
        raise UserError(f"a cell asks {study.resources.cpus} CPUs but this machine gives Ray {cpus} "
                        f"(allowed: 1..{cpus})", source=str(study.path), key=f"{where}.cpus")
    if study.resources.gpus > gpus:
        raise UserError(f"a cell asks {study.resources.gpus:g} GPUs but this machine has {gpus} "
                        f"(allowed: 0..{gpus})", source=str(study.path), key=f"{where}.gpus")
    for device in sorted({c.config.device for c in study.cells}):
        check_device(device, gpus, source=f"{study.path} (or its --set)")


def run_local(study: Study, cells: list[Cell], tracker: StudyTracker, parent_id: str, *,
              run_root: Path, storage_path: Path, done_before: int, keep_ray: bool = False) -> int:
    """Run ``cells`` on a local Ray; returns the number of parallel slots used.

    ``keep_ray``: leave Ray running for the next call (the adaptive loop runs one batch per
    call; it shuts Ray down at its end); a Ray already running is reused. Ray is shut down
    whenever this ends in an exception (an interruption included).

    Runs in the driver thread of :func:`study.interrupt.drive`: signals stay with the main thread.
    ``ray.init`` outside the main thread sets no Python SIGTERM handler (it says so in a warning,
    filtered here); its core worker's C-level failure-signal handler is switched off, and the main
    thread installs the stop handlers again after Ray's start all the same
    (:func:`study.interrupt.reclaim`); Tune's own SIGINT handler, which ends in Ray's advice to
    call ``Tuner.restore``, is switched off.
    """
    import ray

    from cluster.tune_run import run_cells

    from study import interrupt
    from study.runner import local_cpus

    num_cpus = local_cpus()
    num_gpus = _gpu_count()
    slots = parallel_slots(study, num_cpus, num_gpus)
    print(f"[{study.name}] local Ray: {num_cpus} CPUs, {num_gpus} GPUs, {slots} cells at a time, "
          f"{len(cells)} to run", flush=True)
    # per-epoch reports of many short trials trip this warning, which says nothing useful here
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    # Ray's C++ failure-signal handler (absl's) would take SIGTERM from the moment its core worker
    # starts in this process: it prints a stack, and once it has handled one signal a later Ray of
    # the same process may abort on the next. The stop handlers are the driver's (study.interrupt).
    os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
    ended = False
    try:
        if not ray.is_initialized():
            with _no_thread_warning():
                ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, log_to_driver=False,
                         configure_logging=False)
            interrupt.reclaim()  # Ray's core worker took SIGTERM at the C level: the stop handlers again
        interrupt.check()  # Ray's start is the longest stretch without a safe point
        name = f"{study.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_cells(study, cells, tracker, parent_id, run_root=run_root, storage_path=storage_path,
                  slots=slots, experiment_name=name, done_before=done_before)
        ended = True
        return slots
    finally:
        if not keep_ray or not ended:
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


class LocalBackend:
    """``--cluster local``: Ray Tune on this machine, driven from this process."""

    name = "local"

    def __init__(self, options: dict):
        self.options = options  # the SLURM flags of the command line: none may be given here
        self.keep_ray = False  # True once a batch ran: one local Ray for every batch

    def check(self, study: Study) -> None:
        from cluster.tune_run import load_trial

        flags = ((["--slurm-config"] if self.options.get("config_file") else [])
                 + ["--" + key.replace("_", "-") for key in self.options.get("overrides") or {}]
                 + (["--slurm-opt"] if self.options.get("extra") else []))
        if flags:  # SLURM options would be ignored here
            raise UserError("is a SLURM option: it needs --cluster slurm (this run is --cluster local)",
                            source=flags[0])
        check_local(study)  # what would wait or fail forever on this machine
        load_trial()  # a $STUDY_TRIAL that names nothing: an error now, not in every trial

    def describe(self, study: Study) -> None:
        return None

    def launch(self, study: Study, *, sets: dict, rerun_failed: bool, wait: bool) -> int:
        from study.runner import execute_study

        return execute_study(study, rerun_failed=rerun_failed, backend=self, sets=sets)

    def run_batch(self, study: Study, *, sets: dict, rerun_failed: bool) -> int:
        from study.interrupt import EXIT_CODES
        from study.runner import execute_study

        self.keep_ray = True  # starting Ray again per batch costs tens of seconds
        code = execute_study(study, rerun_failed=rerun_failed, backend=self, sets=sets)
        if code in EXIT_CODES.values():  # interrupted (Ctrl-C, SIGTERM): the adaptive loop stops too
            raise SystemExit(code)
        return code

    def run_cells(self, study: Study, cells: list[Cell], tracker: StudyTracker, parent_id: str, *,
                  done_before: int, experiment_name: str | None, restore: bool) -> int:
        from study.core.paths import ray_storage, run_root

        return run_local(study, cells, tracker, parent_id, run_root=run_root(study.name),
                         storage_path=ray_storage(), done_before=done_before, keep_ray=self.keep_ray)
