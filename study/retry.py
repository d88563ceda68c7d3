"""The retry policy of a study: the one place that says which failed cells run again, and from where.

Two levels, both here:

- **Within a run** (``max_failures``): a cell whose trial fails (an exception in training, a worker
  process that died) is started again up to ``max_failures`` times by the executor (Ray Tune's
  ``FailureConfig``). A retry resumes from the cell's last epoch checkpoint in its run directory
  (the trainer saves one atomically every epoch), not from epoch 0, and first reports again the
  epochs its ``metrics.jsonl`` holds, so MLflow loses none. The study file sets it (``max_failures:``,
  top level or per preset; default :data:`DEFAULT_MAX_FAILURES`).
- **Across runs** (``rerun_failed``): whether a cell whose run is FAILED in the store is run again
  (from its checkpoint) by the next command: :data:`RERUN_FAILED_BY_DEFAULT` (off as shipped: a
  failure is deterministic more often than not, and a study should not loop on it), which
  ``--rerun-failed`` / ``--no-rerun-failed`` override (and the printed resume command repeats,
  :func:`flag_words`). Cells that were interrupted (KILLED), left RUNNING by a driver that is gone, or
  never started are always run by the next command; FINISHED cells never are.

Every part of the toolkit takes the policy from here: the runner builds it with :func:`policy_for`
(the SLURM job receives the same object), applies :meth:`RetryPolicy.cells_to_run`, and says what a
FAILED cell needs with :meth:`RetryPolicy.failed_hint`; executors apply ``max_failures`` (the Ray
executors through ``tune.FailureConfig`` in cluster/tune_run.py; an executor without Ray retries a
failed cell itself, from its checkpoint). To change the policy, change this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence, TypeVar

from study.core.names import FAILED, FINISHED

DEFAULT_MAX_FAILURES = 1  # the study file's default: one more attempt of a failed trial per run
RERUN_FAILED_BY_DEFAULT = False  # True: every run also retries the cells that FAILED before
RERUN_FAILED_FLAG = "--rerun-failed"  # the command line's switch (study/cli.py)

C = TypeVar("C")


@dataclass(frozen=True)
class RetryPolicy:
    """``max_failures``: retries of a failed trial within one run (>= 0); ``rerun_failed``: whether
    this run also runs the cells whose runs FAILED in an earlier one."""

    max_failures: int = DEFAULT_MAX_FAILURES
    rerun_failed: bool = RERUN_FAILED_BY_DEFAULT

    def failed_hint(self, failed: int) -> str:
        """What the ``failed`` FAILED cells this run leaves out need ('' when it runs them, or none)."""
        if not failed or self.rerun_failed:
            return ""
        return f"{failed} failed (rerun with {RERUN_FAILED_FLAG})"

    def cells_to_run(self, cells: Sequence[C], status: Mapping[str, str]) -> tuple[list[C], int]:
        """(the cells this run trains, in study order; how many are FINISHED already), from each
        cell's status in the store (``status``: cell_id -> FINISHED, FAILED, KILLED, RUNNING; a cell
        absent never ran). A FAILED cell is run only with ``rerun_failed``."""
        todo, done = [], 0
        for c in cells:
            s = status.get(c.cell_id)
            if s == FINISHED:
                done += 1
            elif s != FAILED or self.rerun_failed:
                todo.append(c)
        return todo, done


def policy_for(study, rerun_failed: bool | None = None) -> RetryPolicy:
    """The policy of a run of ``study`` (its study file's ``max_failures``, per preset); ``rerun_failed``:
    the command line's ``--rerun-failed`` (True) or ``--no-rerun-failed`` (False), None when neither
    was given (then :data:`RERUN_FAILED_BY_DEFAULT`)."""
    return RetryPolicy(study.max_failures, RERUN_FAILED_BY_DEFAULT if rerun_failed is None else rerun_failed)


def flag_words(rerun_failed: bool | None) -> list[str]:
    """The command line's words for ``rerun_failed`` as given (none when not given): what a printed
    resume command repeats."""
    if rerun_failed is None:
        return []
    return [RERUN_FAILED_FLAG if rerun_failed else "--no-" + RERUN_FAILED_FLAG[2:]]


def flag_help() -> str:
    """The command line's help for --rerun-failed, from this policy's default."""
    return (f"also run the cells whose runs FAILED before (default: {'yes' if RERUN_FAILED_BY_DEFAULT else 'no'}; "
            f"the retry policy: study/retry.py)")
