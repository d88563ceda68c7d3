"""What produced a cell run: code version, data, package versions; and the study's UI link.

Plain values only (dicts of strings); ``study.tracking`` turns them into MLflow
tags and a dataset input. The dataset digest comes from the data layer
(``study.data.dataset_fingerprint``: sha256 of the files read plus the subset
rule), computed on the driver, so the trainer stays free of MLflow.

Tags on every cell run:

- ``mlflow.source.git.commit`` (MLflow's own tag, shown in the UI's Source
  column), ``git_dirty`` ("true" when tracked files differed from the commit,
  "unknown" outside a git checkout), ``mlflow.source.name`` (the study file)
  and ``mlflow.source.type`` = LOCAL;
- ``dataset_digest`` (the full sha256), ``dataset`` (its name);
- ``version.<package>`` for torch, torchvision, ray, mlflow, numpy and
  python (read from the installed metadata, nothing imported).
"""

from __future__ import annotations

import functools
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from study.core.names import Tag
from study.core.paths import REPO_ROOT

PACKAGES = ("torch", "torchvision", "ray", "mlflow", "numpy")
# MLflow stores a dataset digest in a 36-character column (PostgreSQL enforces it)
DIGEST_CHARS = 16
# the UI's experiment page in model-training mode: the runs table, not the GenAI overview
UI_QUERY = "workflowType=machine_learning"
DEFAULT_UI = "http://127.0.0.1:5000"


def study_link(experiment_id: str, base_url: str = DEFAULT_UI) -> str:
    """The MLflow UI page that lists a study's runs (its parent and, expanded, its cells).

    ``base_url``: where ``mlflow ui``/``mlflow server`` answers (no trailing slash needed).
    """
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}?{UI_QUERY}"


def run_link(experiment_id: str, run_id: str, base_url: str = DEFAULT_UI) -> str:
    """A run's page in the MLflow UI (the parent run's: the study's conclusion in its description), in the
    model-training view like :func:`study_link` (the experiment's kind tag makes it the default too)."""
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?{UI_QUERY}"


def ui_base(tracking_uri: str, port: int | str = 5000) -> str:
    """The UI's address for a store: the server itself for an http(s) store, else ``make ui``'s."""
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/")
    return f"http://127.0.0.1:{port}"


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def code_version() -> dict[str, str]:
    """``{"commit": sha or "", "dirty": "true" | "false" | "unknown"}`` of this checkout.

    Dirty means tracked files differ from the commit (untracked files, e.g.
    results or the store, do not count). Cached: one driver, one checkout.
    """
    commit = _git("rev-parse", "HEAD")
    if not commit:
        return {"commit": "", "dirty": "unknown"}
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": "unknown" if status is None else str(bool(status)).lower()}


@functools.lru_cache(maxsize=1)
def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def source_name(study_file: Path | str | None) -> str:
    """The study file, relative to the repository when inside it."""
    if study_file is None:
        return "python -m study"
    path = Path(study_file).resolve()
    try:
        return str(path.relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def cell_fingerprint(cfg) -> dict:
    """The dataset fingerprint of a cell's resolved config (a ``TrainConfig``)."""
    from study.data.fingerprint import dataset_fingerprint

    return dataset_fingerprint(cfg.dataset, cfg.data_root, cfg.train_subset, cfg.test_subset, cfg.image_size,
                               bool(getattr(cfg, "unlabeled", False)))


def run_tags(study_file: Path | str | None, data: dict) -> dict[str, str]:
    """The provenance tags of one cell run (``data`` from :func:`cell_fingerprint`)."""
    code = code_version()
    tags = {Tag.GIT_COMMIT: code["commit"] or "unknown", Tag.GIT_DIRTY: code["dirty"],
            "mlflow.source.name": source_name(study_file), "mlflow.source.type": "LOCAL",
            Tag.DATASET: data["name"], Tag.DATASET_DIGEST: data["digest"] or "unknown"}
    tags.update({f"version.{k}": v for k, v in package_versions().items()})
    return tags


def short_commit(commit: str, dirty: str = "false") -> str:
    """``abc1234`` or ``abc1234+dirty``; "unknown" when there is no commit."""
    if not commit or commit == "unknown":
        return "unknown"
    return commit[:7] + ("+dirty" if dirty == "true" else "")
