"""Where cells run: the executor interface, the backends ``--cluster`` names, and their registry.

An **executor** only executes cells: given a study's cells, the tracker they report to and the retry
policy, it runs them to their end and says how each ended. Everything else of a study's lifecycle
(claiming the store, marking runs a dead driver left, linking cells finished elsewhere, choosing the
cells, summarising, the resume command) is the runner's (:mod:`study.runner`), for every backend.

A **backend** is what ``--cluster`` names. Most give the runner an executor for a driver in this
process (``local``: Ray on this machine; ``serial``: one cell at a time, no Ray). A backend whose driver must run elsewhere (``slurm``: inside
the job's allocation) gives none and *submits* the driver instead: the job then calls the runner
(:func:`study.runner.execute_study`) with its own executor.

Where backends are found: a module of the ``cluster`` package declares the ones it defines in a
top-level literal ``BACKENDS = {"name": "Factory"}`` (``Factory(options)`` builds the backend), read
from the module's source without importing it; adding one is that module alone. A package outside
this repository registers its backends as entry points of the group :data:`GROUP` instead. A name
declared twice is refused. Nothing under ``study/`` imports a backend's module until ``--cluster``
picks it.
"""

from __future__ import annotations

import ast
import importlib
import os
from functools import lru_cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Protocol

from study.core.errors import UserError
from study.core.paths import REPO_ROOT

if TYPE_CHECKING:
    from study.retry import RetryPolicy
    from study.studyfile import Cell, Study
    from study.tracking import StudyTracker

GROUP = "interclr_study.cluster"
# the package whose modules declare backends in a top-level ``BACKENDS = {name: factory}`` literal
BACKEND_PACKAGE = "cluster"
DECLARATION = "BACKENDS"


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


def _declared(path: Path) -> dict[str, str]:
    """``name -> factory`` from the module at ``path``'s top-level ``BACKENDS = {...}`` literal ({} without
    one); UserError where the declaration is not a literal dict of strings."""
    text = path.read_text(encoding="utf-8")
    if DECLARATION not in text:  # most modules: no parse
        return {}
    try:
        tree = ast.parse(text, filename=str(path))
    except SyntaxError as err:
        raise UserError(f"{path}:{err.lineno}: {err.msg} (a module of the backends; fix it or move it out of "
                        f"{BACKEND_PACKAGE}/)", source="--cluster") from None
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] \
            if isinstance(node, ast.AnnAssign) and node.value is not None else []  # `BACKENDS: dict = {...}` too
        if any(isinstance(t, ast.Name) and t.id == DECLARATION for t in targets):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                value = None
            if not (isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str)
                                                    for k, v in value.items())):
                raise UserError(f"{path}: {DECLARATION} must be a literal dict of backend name -> factory name "
                                '(e.g. {"serial": "SerialBackend"})', source="--cluster")
            return value
    return {}


def _factory(module: str, name: str) -> Callable[[dict], Backend]:
    """``module``'s attribute ``name`` (a declared factory); UserError where the module lacks it."""
    found = getattr(importlib.import_module(module), name, None)
    if not callable(found):
        raise UserError(f"{module} declares a backend built by {name!r} in {DECLARATION}, but has no such class or "
                        "function", source="--cluster")
    return found


@lru_cache(maxsize=None)
def _registry() -> dict[str, Callable[[], Callable[[dict], Backend]]]:
    """Backend name -> a loader of its factory: the ``cluster`` modules' declarations, then the entry
    points of :data:`GROUP`; UserError for a name declared twice."""
    found: dict[str, tuple[str, Callable]] = {}

    def add(name: str, target: str, loader: Callable) -> None:
        if name in found and found[name][0] != target:  # the same target twice (an old install's entry point) is one
            raise UserError(f"backend '{name}' is declared twice: {found[name][0]} and {target}", source="--cluster")
        found.setdefault(name, (target, loader))

    for path in sorted((REPO_ROOT / BACKEND_PACKAGE).glob("*.py")):
        module = f"{BACKEND_PACKAGE}.{path.stem}"
        for name, factory in _declared(path).items():
            add(name, f"{module}:{factory}", lambda module=module, factory=factory: _factory(module, factory))
    for ep in entry_points(group=GROUP):
        add(ep.name, ep.value, ep.load)
    return {name: loader for name, (_, loader) in found.items()}


def backend_names() -> tuple[str, ...]:
    """The backends' names, sorted."""
    return tuple(sorted(_registry()))


def load_backend(name: str, options: Optional[dict] = None) -> Backend:
    """The backend ``name``, built with ``options``; UserError naming --cluster otherwise."""
    registry = _registry()
    if name not in registry:
        raise UserError(f"unknown cluster '{name}' (allowed: {', '.join(sorted(registry))})", source="--cluster")
    return registry[name]()(options or {})
