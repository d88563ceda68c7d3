"""Helpers shared by the end-to-end tests: a study store isolated in a temp folder, and the
small InterCLR study they run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def store_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a `python -m study` whose store, run dirs and Ray files live in tmp_path."""
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",
               STUDY_RUN_ROOT=str(tmp_path / "runs"), STUDY_RAY_RESULTS=str(tmp_path / "ray"),
               STUDY_ARTIFACT_ROOT=str(tmp_path / "artifacts"), PYTHONUNBUFFERED="1", **extra)
    return env


def fake_trial_env(env: dict[str, str], **behaviour) -> dict[str, str]:
    """``env`` with the cells run by :func:`cluster.fake_trial.fake_trial` (made-up metrics, in
    milliseconds) told ``behaviour`` (its keys: epoch_s, fail, fail_once, fail_epoch, hang, means, noise)."""
    import json

    return dict(env, STUDY_TRIAL="cluster.fake_trial:fake_trial", STUDY_FAKE_TRIAL=json.dumps(behaviour))


def store_client(tmp_path: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")


# 2 sampling levels x the seeds: the study the end-to-end and SLURM tests run at the smoke preset
SMOKE_STUDY = """
name: {name}
fixed: {{method: interclr, labels: online, margin_type: cosine, margin: -0.5, epochs: {epochs},
        linear_epochs: 2}}
factors:
  sampling: [semi-hard, hard]
seeds: {seeds}
presets:
  smoke: {{resources: {{cpus: 1}}, max_failures: 1}}
"""


def write_smoke_study(tmp_path: Path, name: str, epochs: int = 2, seeds: str = "[0, 1]",
                      template: str = SMOKE_STUDY) -> Path:
    """``tmp_path/<name>.yaml`` from ``template`` (fields name, epochs, seeds)."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(template.format(name=name, epochs=epochs, seeds=seeds))
    return path


@pytest.fixture(scope="module")
def smoke_data():
    """The smoke preset's Fashion-MNIST subset, in memory (shared by the trainer-level tests)."""
    from study.config import build_config
    from study.data.datasets import load_dataset

    cfg = build_config("smoke")
    return load_dataset(cfg.dataset, train_subset=cfg.train_subset, test_subset=cfg.test_subset,
                        image_size=cfg.image_size, seed=0)


@pytest.fixture
def isolated_store(tmp_path, monkeypatch):
    """This process's MLflow store, run dirs, Ray files and artifacts in tmp_path (store_env's variables)."""
    env = store_env(tmp_path)
    for key in ("MLFLOW_TRACKING_URI", "STUDY_RUN_ROOT", "STUDY_RAY_RESULTS", "STUDY_ARTIFACT_ROOT"):
        monkeypatch.setenv(key, env[key])
    return tmp_path

