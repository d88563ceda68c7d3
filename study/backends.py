"""The cluster backend interface and its registry.

A backend runs a study's cells somewhere (this machine, a SLURM allocation).
The CLI picks one by name (``--cluster``) and hands it to the runner, which
calls only the methods below; nothing under ``study/`` imports a backend's
module. Backends register as entry points of the group :data:`GROUP` in
``pyproject.toml`` (one line each), so adding one is a new module plus that line.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Optional, Protocol

from study.core.errors import UserError

if TYPE_CHECKING:
    from study.studyfile import Cell, Study
    from study.tracking import StudyTracker

GROUP = "interclr_study.cluster"


class Backend(Protocol):
    """What the runner asks of a backend, built as ``factory(options)`` (the CLI's backend options)."""

    name: str

    def check(self, study: "Study") -> None:
        """Raise UserError on bad backend options; called before anything is written."""

    def describe(self, study: "Study") -> Optional[str]:
        """What ``--dry-run`` adds to the cell list (e.g. the job's resources), or None."""

    def launch(self, study: "Study", *, sets: dict, rerun_failed: bool, wait: bool) -> int:
        """Run (or submit) the study's unfinished cells; the exit status."""

    def run_batch(self, study: "Study", *, sets: dict, rerun_failed: bool) -> int:
        """Run exactly ``study.cells`` (a batch of ``--until-decided``) to their end; the exit status.
        Resources may be kept for the next batch (the adaptive loop releases Ray at its end)."""

    def run_cells(self, study: "Study", cells: "list[Cell]", tracker: "StudyTracker", parent_id: str, *,
                  done_before: int, experiment_name: Optional[str], restore: bool) -> Optional[int]:
        """Run ``cells`` on this backend's Ray; the number of parallel slots used, if known.
        Called in the driver thread (study.interrupt.drive): it sets no signal handler."""


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
