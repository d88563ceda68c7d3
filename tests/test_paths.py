"""Every root the toolkit writes to is defined once (study/core/paths.py) and lies where the README says.

A module moved one folder deeper once took its parent for the repository: a real study then wrote a
second store (study/mlflow.db), its runs and Ray's results under study/, and linked nothing it had
already trained. These tests pin the root to the repository and forbid a second definition.
"""

from __future__ import annotations

import ast
from pathlib import Path

from study.core import paths

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("study", "cluster", "analysis", "bench")


def test_the_root_is_the_repository():
    assert paths.REPO_ROOT == REPO
    assert (paths.REPO_ROOT / "pyproject.toml").is_file() and (paths.REPO_ROOT / "Makefile").is_file()


def test_default_roots_lie_at_the_top_of_the_repository(monkeypatch):
    for var in ("STUDY_RUN_ROOT", "STUDY_RAY_RESULTS", "STUDY_ARTIFACT_ROOT", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)
    assert paths.runs_base() == REPO / "runs"
    assert paths.run_root("sampling") == REPO / "runs" / "sampling"
    assert paths.ray_storage() == REPO / "ray_results"
    assert paths.artifact_root() == REPO / "mlartifacts"
    assert paths.default_tracking_uri() == f"sqlite:///{REPO / 'mlflow.db'}"
    assert paths.DATA_DIR == REPO / "data"


def test_settings_move_every_root_and_come_back_absolute(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STUDY_RUN_ROOT", "r")
    monkeypatch.setenv("STUDY_RAY_RESULTS", "t")
    monkeypatch.setenv("STUDY_ARTIFACT_ROOT", "a")
    assert paths.run_root("s") == tmp_path / "r" / "s"
    assert paths.ray_storage() == tmp_path / "t"
    assert paths.artifact_root() == tmp_path / "a"


def test_the_analysis_the_provenance_and_slurm_share_the_one_root(monkeypatch):
    import analysis.load
    import analysis.pipeline
    import study.provenance
    from cluster import slurm_options

    assert analysis.pipeline.REPO_ROOT is paths.REPO_ROOT
    assert study.provenance.REPO_ROOT is paths.REPO_ROOT
    assert slurm_options.REPO_ROOT is paths.REPO_ROOT
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert analysis.load.default_tracking_uri() == paths.default_tracking_uri()
    assert analysis.pipeline.default_out_dir() == REPO / "results"


def test_no_other_module_derives_a_root_from_its_own_file():
    """``Path(__file__).parents[...]`` appears once in the packages: in study/core/paths.py."""
    found = []
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.Attribute) and node.attr in ("parent", "parents"):
                    names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
                    if "__file__" in names:
                        found.append(str(path.relative_to(REPO)))
    assert sorted(set(found)) == ["study/core/paths.py"], found
