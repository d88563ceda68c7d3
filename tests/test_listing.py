"""Listings page through to the end (study/core/listing.py; mlflow#3881): a study older than 1,000
newer experiments of a shared store still reaches the report, `status`, the UI links and the linking
of its finished cells; a study's experiment of more than 1,000 runs is read whole."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest

from conftest import clone_rows, finish_by_hand, run_here, store_client, store_env
from study.core import listing
from study.core.paths import REPO_ROOT
from study.studyfile import load_study
from study.tracking import StudyTracker

STUDY = """
name: {name}
fixed: {{method: interclr, labels: online, margin_type: cosine, margin: -0.5, epochs: 2, recluster_every: 1}}
factors:
  sampling: [semi-hard, hard]
seeds: [0]
presets:
  smoke: {{resources: {{cpus: 1}}}}
"""


class _Page(list):
    def __init__(self, items, token):
        super().__init__(items)
        self.token = token


class _Client:
    """search_experiments / search_runs in pages of ``size``, as MLflow answers them."""

    def __init__(self, experiments, runs_per_experiment, size):
        self.exps, self.per, self.size, self.calls = experiments, runs_per_experiment, size, []

    def _page(self, items, token):
        start = int(token or 0)
        end = start + self.size
        return _Page(items[start:end], str(end) if end < len(items) else None)

    def search_experiments(self, max_results, page_token=None):
        return self._page(self.exps, page_token)

    def search_runs(self, ids, filter_string, max_results, page_token=None):
        self.calls.append(len(ids))
        return self._page([f"{i}/{r}" for i in ids for r in range(self.per)], page_token)


def test_every_page_and_every_group_of_experiments():
    c = _Client([f"e{i}" for i in range(2501)], 3, size=1000)
    assert len(listing.all_experiments(c)) == 2501
    runs = listing.all_runs(c, [f"e{i}" for i in range(250)], "")
    assert len(runs) == 750 and len(set(runs)) == 750
    assert max(c.calls) == listing.EXPERIMENTS_PER_SEARCH


@pytest.mark.timeout(900)
def test_an_old_study_behind_a_thousand_newer_experiments(isolated_store, capsys):
    tmp = isolated_store
    (tmp / "old.yaml").write_text(STUDY.format(name="old"))
    old = load_study(tmp / "old.yaml", "smoke")
    finish_by_hand(old)
    client = store_client(tmp)
    # a team's store: 1,001 newer experiments (search_experiments' first page: 1,000), the first made by MLflow
    first = int(client.create_experiment("team-0000"))
    clone_rows(tmp / "mlflow.db", "experiments", "experiment_id", first, 1000, lambda i: first + 1 + i,
               name=lambda i: f"team-{i + 1:04d}", artifact_location=lambda i: (tmp / "artifacts" / f"t{i}").as_uri())
    assert len(client.search_experiments(max_results=50_000)) >= 1002
    env = store_env(tmp)
    # the analysis finds it among the studies, and by name
    res = subprocess.run([sys.executable, "-m", "analysis", "--out", str(tmp / "results")], cwd=REPO_ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert "Study `old`" in (tmp / "results" / "REPORT.md").read_text()
    res = subprocess.run([sys.executable, "-m", "study", "ui", "--links-only"], cwd=REPO_ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "old" in res.stdout, res.stdout + res.stderr
    # a second study of the same cells: status says the next run links them, and the run does
    (tmp / "new.yaml").write_text(STUDY.format(name="new"))
    new = load_study(tmp / "new.yaml", "smoke")
    from study.runner import study_status

    study_status(str(new.path), preset="smoke")
    assert capsys.readouterr().out.count("the next run links it") == 2
    assert run_here(new) == 0
    exp = client.get_experiment_by_name("new")
    runs = client.search_runs([exp.experiment_id], "tags.role = 'cell'")
    assert len(runs) == 2 and all(r.data.tags.get("reused_from") for r in runs)


@pytest.mark.timeout(900)
def test_a_study_of_more_than_a_thousand_runs_is_read_whole(isolated_store):
    (isolated_store / "big.yaml").write_text(STUDY.format(name="big"))
    study = load_study(isolated_store / "big.yaml", "smoke")
    tracker = StudyTracker(study.name)
    tracker.parent_run_id({"factors": "sampling", "metric": "knn_top1"})
    client = store_client(isolated_store)
    # attempts of one cell (a study's experiment past one page of runs), the first made by MLflow
    first = client.create_run(tracker.experiment_id, tags={"role": "cell", "cell_id": study.cells[0].cell_id})
    clone_rows(isolated_store / "mlflow.db", "runs", "run_uuid", first.info.run_id, 1000, lambda i: uuid.uuid4().hex,
               name=lambda i: f"attempt-{i}")
    assert len(client.search_runs([tracker.experiment_id], max_results=50_000)) == 1002  # with the parent
    assert len(tracker.cell_runs()[study.cells[0].cell_id]) == 1001


def test_a_study_whose_experiment_keeps_artifacts_elsewhere_is_refused(isolated_store, capsys):
    """Files land only where configured (mlflow#5655): the name Default (MLflow's experiment 0, artifacts
    in ./mlruns/0) is refused at load; an experiment made by hand with its artifacts outside the
    toolkit's artifact root is refused before any run is written to it."""
    from study.cli import main

    (isolated_store / "d.yaml").write_text(STUDY.format(name="Default"))
    assert main(["run", str(isolated_store / "d.yaml"), "--preset", "smoke"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "key 'name'" in err and "experiment 0" in err, err
    assert not (isolated_store / "mlflow.db").exists() and not (REPO_ROOT / "mlruns").exists()
    client = store_client(isolated_store)
    client.create_experiment("handmade", artifact_location=(isolated_store / "elsewhere").as_uri())
    (isolated_store / "h.yaml").write_text(STUDY.format(name="handmade"))
    assert main(["run", str(isolated_store / "h.yaml"), "--preset", "smoke"]) == 2
    err = capsys.readouterr().err.strip()  # (this process's own client logged MLflow's table creation)
    assert "Traceback" not in err and [ln for ln in err.splitlines() if ln.startswith("error")] == [
        err.splitlines()[-1]] and "outside the toolkit's artifact root" in err, err
    exp = client.get_experiment_by_name("handmade")
    assert client.search_runs([exp.experiment_id]) == [] and not (isolated_store / "elsewhere").exists()
