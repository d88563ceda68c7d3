"""Helpers shared by the end-to-end tests: a study store isolated in a temp folder."""

from __future__ import annotations

import os
from pathlib import Path


def store_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a `python -m study` whose store, run dirs and Ray files live in tmp_path."""
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",
               STUDY_RUN_ROOT=str(tmp_path / "runs"), STUDY_RAY_RESULTS=str(tmp_path / "ray"),
               STUDY_ARTIFACT_ROOT=str(tmp_path / "artifacts"), PYTHONUNBUFFERED="1", **extra)
    return env


def store_client(tmp_path: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
