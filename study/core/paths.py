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
