"""The cluster backend seam: the registry the CLI picks from, and a runner that only calls the interface."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import write_smoke_study
from study.backends import backend_names, load_backend
from study.core.errors import UserError
from study.runner import execute_study, run_study
from study.studyfile import load_study


class FakeBackend:
    """Records what the runner asks; ``bad`` makes its option check fail; run_cells finishes nothing."""

    name = "fake"

    def __init__(self, bad: bool = False):
        self.bad, self.calls = bad, []

    def check(self, study):
        self.calls.append("check")
        if self.bad:
            raise UserError("bad option", source="--fake")

    def describe(self, study):
        self.calls.append("describe")
        return "fake: 1 machine"

    def launch(self, study, *, sets, rerun_failed, wait):
        self.calls.append(("launch", sets, rerun_failed, wait))
        return 7

    def run_cells(self, study, cells, tracker, parent_id, *, done_before, experiment_name, restore):
        self.calls.append(("run_cells", [c.cell_id for c in cells], done_before, experiment_name, restore))
        return None


def test_registry_names_the_backends_and_builds_them():
    assert backend_names() == ("local", "slurm")
    options = {"config_file": None, "overrides": {"nodes": "2"}, "extra": {}}
    for name in backend_names():
        backend = load_backend(name, options)
        assert backend.name == name and backend.options == options
    with pytest.raises(UserError) as err:
        load_backend("moon")
    assert "--cluster" in str(err.value) and "local, slurm" in str(err.value)


def test_runner_uses_the_backend_it_is_handed(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    path = write_smoke_study(tmp_path, "seam")
    bad = FakeBackend(bad=True)
    with pytest.raises(UserError, match="bad option"):
        run_study(str(path), backend=bad, preset="smoke", dry_run=True)
    assert bad.calls == ["check"] and not (tmp_path / "mlflow.db").exists()  # nothing written

    dry = FakeBackend()
    assert run_study(str(path), backend=dry, preset="smoke", dry_run=True) == 0
    assert dry.calls == ["check", "describe"] and "fake: 1 machine" in capsys.readouterr().out

    real = FakeBackend()
    assert run_study(str(path), backend=real, preset="smoke", sets={"epochs": 1}, rerun_failed=True, wait=True) == 7
    assert real.calls == ["check", ("launch", {"epochs": 1}, True, True)]


def test_execute_study_hands_the_unfinished_cells_to_the_backend(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("STUDY_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    study = load_study(write_smoke_study(tmp_path, "seam2"), "smoke")
    backend = FakeBackend()
    # nothing finished by the fake: every cell is missing and the study fails
    assert execute_study(study, rerun_failed=False, backend=backend, experiment_name="x", restore=True) == 1
    assert backend.calls == [("run_cells", [c.cell_id for c in study.cells], 0, "x", True)]


def test_slurm_flags_with_the_local_backend_are_one_error(tmp_path):
    """--nodes (or any SLURM flag) without --cluster slurm would be ignored: one error, exit 2, nothing written."""
    import subprocess
    import sys

    from conftest import store_env

    study = tmp_path / "s.yaml"
    study.write_text("name: s\nfixed: {method: interclr}\nfactors: {sampling: [hard, semi-hard]}\nseeds: [0]\n")
    for flags, word in ((["--nodes", "2"], "--nodes"), (["--time", "5"], "--time"),
                        (["--slurm-opt", "nice=1"], "--slurm-opt")):
        res = subprocess.run([sys.executable, "-m", "study", "run", str(study), "--preset", "smoke", "--dry-run",
                              *flags], capture_output=True, text=True, timeout=120, env=store_env(tmp_path),
                             cwd=Path(__file__).resolve().parents[1])
        assert res.returncode == 2 and word in res.stderr and "--cluster slurm" in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "runs").exists()
