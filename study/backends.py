"""Where cells run: the executor interface, the backends ``--cluster`` names, and their registry.

An **executor** only executes cells: given a study's cells, the tracker they report to and the retry
policy, it runs them to their end and says how each ended. Everything else of a study's lifecycle
(claiming the store, marking runs a dead driver left, linking cells finished elsewhere, choosing the
cells, summarising, the resume command) is the runner's (:mod:`study.runner`), for every backend.

A **backend** is what ``--cluster`` names. Most give the runner an executor for a driver in this
process (``local``: Ray on this machine; ``serial``: one cell at a time, no Ray). A backend whose driver must run elsewhere (``slurm``: inside
the job's allocation) gives none and *submits* the driver instead: the job then calls the runner
(:func:`study.runner.execute_study`) with its own executor. Backends register as entry points of the
group :data:`GROUP` in ``pyproject.toml`` (one line each): adding one is a module plus that line.
Nothing under ``study/`` imports a backend's module.
"""

from __future__ import annotations

import os
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Optional, Protocol

from study.core.errors import UserError

if TYPE_CHECKING:
    from study.retry import RetryPolicy
    from study.studyfile import Cell, Study
    from study.tracking import StudyTracker

GROUP = "interclr_study.cluster"


class Executor(Protocol):
    """Runs cells, and nothing else."""

    def check(self, study: "Study") -> None:
        """UserError for what this executor could never run (a cell asking more CPUs or GPUs than it
        has, a device it lacks); called before anything is written."""

    def slots(self, study: "Study") -> Optional[int]:
        """How many of ``study``'s cells run at once, if known (the efficiency line, the cost estimate)."""

    def run(self, study: "Study", cells: "list[Cell]", sink: "StudyTracker", retry: "RetryPolicy") -> dict[str, str]:
        """Run ``cells`` to their end; cell_id -> FINISHED or FAILED.

        ``sink``: the study's tracker (study/tracking.py), its parent run open (``sink.parent_id``).
        The executor is the store's only writer while it runs, and writes each cell, in the driver's
        process, as the cell goes (the Ray executors do it in cluster/tune_run.py's callback, the serial
        one in its loop, both through ``cluster.tune_run.write_result``):

        - ``sink.open_cell(cell, sink.parent_id)`` when the cell starts (idempotent: a resumed cell
          gets its run back);
        - ``sink.log_epoch(cell_id, epoch, names.epoch_metrics(result))`` for every epoch the trial
          reports (a retried trial first reports again the epochs its run directory holds: steps
          already stored are skipped);
        - at the end, ``sink.log_final(cell_id, result)`` and ``sink.log_cost(cell_id, costs)``, then
          ``sink.end_cell(cell_id, FINISHED)``, or ``sink.end_cell(cell_id, FAILED, error=text)``
          once ``retry.max_failures`` retries (each from the cell's last checkpoint) are spent.

        The trial itself is the trial function (``cluster.tune_run.cell_trial``, or ``$STUDY_TRIAL``); it
        reports through ``cluster.tune_run.TrialReporter``: to Ray Tune, or to ``REPORT_SINK`` where an
        executor without Ray sets one in the trial's process (cluster/serial.py).
        Called in the driver thread (:func:`study.interrupt.drive`): it sets no signal handler, calls
        :func:`study.interrupt.check` before each write, and stops at the first one that raises."""

    def close(self) -> None:
        """Release what :meth:`run` kept for a next call (the adaptive loop runs one call per batch)."""


class Backend(Protocol):
    """What ``--cluster NAME`` builds, as ``factory(options)`` (the command line's backend options)."""

    name: str

    def check(self, study: "Study") -> None:
        """UserError on bad options or what the backend could never run; before anything is written."""

    def describe(self, study: "Study") -> Optional[str]:
        """What ``--dry-run`` adds to the cell list (e.g. the job's resources), or None."""

    def executor(self) -> Optional[Executor]:
        """The executor of a driver in this process; None when the driver runs where :meth:`submit`
        places it."""

    def submit(self, study: "Study", todo: "list[Cell]", done: int, *, sets: dict, retry: "RetryPolicy",
               wait: bool, batch: bool) -> int:
        """Only for a backend without an executor here: start the study's driver elsewhere, for
        ``todo`` (the cells to run; ``done`` are finished); with ``wait``, follow it to its end. ``batch``:
        the driver runs exactly ``study.cells`` (a batch of ``--until-decided``). The exit status."""


def local_cpus() -> int:
    """The CPUs a driver on this machine gives its executor: ``$STUDY_NUM_CPUS``, else all of them."""
    return int(os.environ.get("STUDY_NUM_CPUS") or os.cpu_count() or 1)


def backend_names() -> tuple[str, ...]:
    """The registered backends' names, sorted."""
    return tuple(sorted(ep.name for ep in entry_points(group=GROUP)))


def load_backend(name: str, options: Optional[dict] = None) -> Backend:
    """The backend registered as ``name``, built with ``options``; UserError naming --cluster otherwise."""
    found = [ep for ep in entry_points(group=GROUP) if ep.name == name]
    if not found:
        names = backend_names()
        hint = "" if names else " (none registered: run `make setup` to install the package's entry points)"
        raise UserError(f"unknown cluster '{name}' (allowed: {', '.join(names)}){hint}", source="--cluster")
    return found[0].load()(options or {})
