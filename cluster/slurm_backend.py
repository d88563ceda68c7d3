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

from study.retry import RetryPolicy
from study.studyfile import Cell, Study


# the backends this module defines, for --cluster (study/backends.py reads this literal without importing)
BACKENDS = {"slurm": "SlurmBackend"}


class SlurmBackend:
    """One submitit job runs the study's driver: Ray over the job's nodes, and the runner with
    :class:`cluster.slurm_job.JobRay` as its executor (see :mod:`cluster.slurm_job`)."""

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

    def executor(self) -> None:
        return None  # the driver runs in the job, which builds its own executor

    def submit(self, study: Study, todo: list[Cell], done: int, *, sets: dict, retry: RetryPolicy, wait: bool,
               batch: bool) -> int:
        from cluster.slurm_submit import submit_study

        return submit_study(study, todo, done, sets=sets, options=self.options, wait=wait, retry=retry,
                            subset=batch)
