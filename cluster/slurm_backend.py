"""``--cluster slurm`` as a :class:`study.backends.Backend`: one submitit job runs Ray, and Ray Tune
runs the study inside it (``python -m study run STUDY.yaml --cluster slurm``).

The entry point of the SLURM backend; its parts, by concern:

- :mod:`cluster.slurm_options`: the cluster config file and the flags (a strict pydantic
  schema), checked without importing submitit or ray, and their mapping to sbatch;
- :mod:`cluster.slurm_submit`: submitting the one job and following it (``--wait``);
- :mod:`cluster.slurm_job`: what runs on the job's nodes (the Ray head and workers, the Tune
  driver, preemption and requeue, lost nodes).
"""

from __future__ import annotations

from study.studyfile import Cell, Study
from study.tracking import StudyTracker


class SlurmBackend:
    """One submitit job runs Ray; Ray Tune runs the cells inside it (see :mod:`cluster.slurm_job`)."""

    name = "slurm"

    def __init__(self, options: dict):
        self.options = options  # {"config_file", "overrides", "extra"} from the command line

    def check(self, study: Study) -> None:
        from cluster.slurm_options import check_options
        from cluster.tune_run import load_trial

        check_options(self.options)
        load_trial()  # a $STUDY_TRIAL that names nothing: an error now, not in the job

    def describe(self, study: Study) -> str:
        from cluster.slurm_options import describe_submission

        return describe_submission(study, self.options)

    def launch(self, study: Study, *, sets: dict, rerun_failed: bool, wait: bool) -> int:
        from cluster.slurm_submit import submit_study

        return submit_study(study, sets=sets, options=self.options, wait=wait, rerun_failed=rerun_failed)

    def run_batch(self, study: Study, *, sets: dict, rerun_failed: bool) -> int:
        from cluster.slurm_submit import submit_study

        return submit_study(study, sets=sets, options=self.options, wait=True, rerun_failed=rerun_failed,
                            subset=True)

    def run_cells(self, study: Study, cells: list[Cell], tracker: StudyTracker, parent_id: str, *,
                  done_before: int, experiment_name: str | None, restore: bool) -> None:
        """On the job's node 0, with Ray already started across the allocation."""
        from cluster.tune_run import run_cells
        from study.core.paths import ray_storage, run_root

        run_cells(study, cells, tracker, parent_id, run_root=run_root(study.name), storage_path=ray_storage(),
                  slots=len(cells), experiment_name=experiment_name or study.name, done_before=done_before,
                  restore=restore)
        return None
