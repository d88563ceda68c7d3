"""How a study is resumed: the command to run again, and the way out of a driver that stops early.

Shared by the runner and the adaptive loop (each may be where a signal lands, :mod:`study.interrupt`):
the runs this driver left open are marked KILLED (or, after a failure, as abandoned), and the
command that resumes the study is printed, with the adaptive loop's flags when it ran with them.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from study.core.names import Tag
from study.interrupt import StudyInterrupted
from study.studyfile import Cell, Study
from study.tracking import FINISHED, RUNNING, StudyTracker, summarise  # noqa: F401 (summarise: re-exported)


def adaptive_flags(tracker: StudyTracker | None) -> list[str]:
    """``--until-decided`` and its limits when the study was last run with them (the parent's tags,
    written by the adaptive loop), so that the command to resume runs the loop again; else []."""
    try:
        parent = tracker.parent_run() if tracker is not None else None
    except Exception:  # the store may be what failed: the plain command is still right for the cells
        return []
    tags = parent.data.tags if parent is not None else {}
    if tags.get(Tag.STOPPING) != "sequential":
        return []
    flags = ["--until-decided"]
    for flag, tag in (("--max-seeds", Tag.MAX_SEEDS), ("--budget-hours", Tag.BUDGET_HOURS)):
        if tags.get(tag, "none") != "none":
            flags += [flag, tags[tag]]
    return flags


# the command line's backend words (``--cluster slurm --nodes 2 ...``; none for the default local
# backend), set once by the CLI (study/cli.py): the command to resume runs on the same backend
LAUNCH_FLAGS: list[str] = []
_REMEMBERED: list[bool] = []  # [True] once this process's command line said its backend words


def remember_launch(flags: list[str]) -> None:
    """Record the backend words of this command for :func:`rerun_command` (the CLI calls it once)."""
    LAUNCH_FLAGS[:] = list(flags)
    _REMEMBERED[:] = [True]


def rerun_command(study: Study, sets: dict | None = None, *extra: str, tracker: StudyTracker | None = None) -> str:
    """The command that resumes ``study``: ``python -m study run FILE --preset P [--set k=v ...]``, with
    this command's backend words (:data:`LAUNCH_FLAGS`) and the adaptive loop's flags when
    ``tracker``'s study was run with them (:func:`adaptive_flags`)."""
    try:
        path = str(study.path.relative_to(Path.cwd()))
    except ValueError:
        path = str(study.path)
    words = ["python -m study run", shlex.quote(path), "--preset", study.preset]
    from study.core.config import parse_value

    for key, value in (sets or {}).items():
        text = value if isinstance(value, str) else json.dumps(value)
        if isinstance(value, str) and parse_value(value, "") != value:  # "2024", "true": quoted, to stay strings
            text = json.dumps(value)
        words += ["--set", shlex.quote(f"{key}={text}")]
    launch = LAUNCH_FLAGS if _REMEMBERED else stored_launch(tracker)
    return " ".join(words + [shlex.quote(w) for w in launch]
                    + adaptive_flags(tracker) + list(extra))


def launch_tags() -> dict[str, str]:
    """The parent's tag of the backend words this command ran the study with ("" for the default
    backend); none where no command line said them (the SLURM job's driver: the submitting command's
    tag stays)."""
    return {Tag.LAUNCH: shlex.join(LAUNCH_FLAGS)} if _REMEMBERED else {}


def stored_launch(tracker: StudyTracker | None) -> list[str]:
    """The backend words of the last command that ran ``tracker``'s study (its parent's tag), for a
    command that has none of its own (``status``); [] when unknown."""
    try:
        parent = tracker.parent_run() if tracker is not None else None
    except Exception:  # the store may be what failed: the plain command is still right for the cells
        return []
    return shlex.split(parent.data.tags.get(Tag.LAUNCH, "")) if parent is not None else []


def abandoned(study: Study, tracker: StudyTracker, todo: list[Cell], err: Exception, sets: dict | None) -> None:
    """The driver failed: mark what it left RUNNING (best effort: the store may be what failed), with the
    reason when it is the machine's (a full disk: study.core.errors.infrastructure_error)."""
    from study.core.errors import infrastructure_error

    infra = infrastructure_error(err)
    why = f"driver error: {infra.message if infra is not None else type(err).__name__}"
    try:
        tracker.mark_interrupted([c.cell_id for c in todo], tracker.parent_id, why)
    except Exception:  # the reconcile at the next start marks them instead
        pass
    if infra is None:  # the machine's failures are one line (study.cli); anything else comes with details
        print(f"\n[{study.name}] the driver failed ({type(err).__name__}; details below); finished cells are kept. "
              f"To resume, run the same command again: {rerun_command(study, sets, tracker=tracker)}",
              file=sys.stderr, flush=True)


def interrupted_exit(study: Study, tracker: StudyTracker | None, todo: list[Cell], sig: StudyInterrupted,
                 sets: dict | None) -> int:
    """The way out of an interrupted driver: mark its unfinished runs, say how to resume.
    ``tracker`` None: stopped before the store was opened (nothing was written)."""
    if tracker is None:
        print(f"\n[{study.name}] interrupted ({sig.name}) before any cell ran; to run the study: "
              f"{rerun_command(study, sets)}", file=sys.stderr, flush=True)
        return sig.exit_code
    parent_id = tracker.parent_id
    if parent_id is None:  # interrupted while opening it
        parent = tracker.parent_run()
        parent_id = parent.info.run_id if parent is not None and parent.info.status == RUNNING else None
    marked = tracker.mark_interrupted([c.cell_id for c in todo], parent_id, sig.name)
    counts = summarise(study, tracker.cell_status())
    print(f"\n[{study.name}] interrupted ({sig.name}): finished {counts[FINISHED]}/{len(study.cells)}; "
          f"{marked} unfinished cell run(s) marked KILLED; their checkpoints are kept.\n"
          f"[{study.name}] to resume, run the same command again: {rerun_command(study, sets, tracker=tracker)}",
          file=sys.stderr, flush=True)
    return sig.exit_code
