"""Where the toolkit keeps its files: the repository root and the roots under it.

Every root can be moved by an environment variable (the SLURM job passes them
on to its nodes); each function returns an absolute path and creates nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

# study/core/paths.py -> the repository (the one definition: every other module imports it)
REPO_ROOT = Path(__file__).resolve().parents[2]
# datasets found without a configured root (Fashion-MNIST, CIFAR-10, STL-10 files)
DATA_DIR = REPO_ROOT / "data"
# the files the analysis writes at the top of results/, beside one folder per study (so no study
# may take one of these names)
RESULTS_TOP_FILES = ("REPORT.md", "ablation.md", "ablation.tex", "ablation.csv")


def runs_base() -> Path:
    """Where every study's run directories live: ``$STUDY_RUN_ROOT``, else ``runs/``."""
    return Path(os.environ.get("STUDY_RUN_ROOT") or (REPO_ROOT / "runs")).resolve()


def run_root(study: str) -> Path:
    """A study's run directories (one per cell, for checkpoints): ``runs_base()/<study>``."""
    return runs_base() / study


def ray_storage() -> Path:
    """Ray Tune's storage (experiment state for restore): ``$STUDY_RAY_RESULTS``, else ``ray_results/``."""
    return Path(os.environ.get("STUDY_RAY_RESULTS") or (REPO_ROOT / "ray_results")).resolve()


def artifact_root() -> Path:
    """MLflow artifacts: ``$STUDY_ARTIFACT_ROOT``, else ``mlartifacts/``."""
    return Path(os.environ.get("STUDY_ARTIFACT_ROOT") or (REPO_ROOT / "mlartifacts")).resolve()


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI``, else sqlite at the repository root (absolute path)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{REPO_ROOT / 'mlflow.db'}"


def writable_dir_problem(path: Path) -> str | None:
    """Why the toolkit could not write in folder ``path`` (making it first where it does not exist), or
    None: ``path`` or the nearest folder above it that exists must be a directory this process may write
    in (a file there, or a read-only folder or file system, would fail at the first write, mid-study)."""
    path = Path(path)
    above = next(p for p in (path, *path.parents) if p.exists())
    if not above.is_dir():
        return f"{path} is a file, not a folder" if above == path else \
            f"{path} cannot be made: {above} is a file, not a folder"
    if not os.access(above, os.W_OK | os.X_OK):
        return f"{path} is not writable" if above == path else f"{path} cannot be made: {above} is not writable"
    return None


def check_locations(study_name: str, artifacts: bool = True) -> None:
    """Every folder a study's run writes to (its run directories, Ray Tune's storage and, for a local
    store, MLflow's artifact root) can be written, checked before anything is: else one UserError naming
    the setting that chose the folder (exit status 2)."""
    from study.core.errors import UserError

    places = [(run_root(study_name), "STUDY_RUN_ROOT", runs_base()), (ray_storage(), "STUDY_RAY_RESULTS", None)]
    if artifacts:
        places.append((artifact_root(), "STUDY_ARTIFACT_ROOT", None))
    for path, variable, shown in places:
        problem = writable_dir_problem(path)
        if problem:
            setting = f"${variable}" if os.environ.get(variable) else f"{variable} (unset: the default)"
            raise UserError(f"{problem}; set {variable} to a writable folder", source=setting)
