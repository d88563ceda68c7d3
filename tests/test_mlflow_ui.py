"""MLflow as the study's window, on one smoke study (the serial backend: what is under test is the store,
not Ray; the fake trial's cells):

- provenance (commit, dirty flag, source, package versions, the dataset as an
  input with its digest) and cost metrics on every cell; the study's cost and
  wall time on the parent; the runner's link; ``status`` naming the commit;
- ``python -m analysis`` twice: one copy of each table, figure and the report
  section under the parent's ``results/``, and the verdict as tags and metrics;
- ``python -m study ui`` (what ``make ui`` runs) on a free 127.0.0.1 port and
  the printed link opened in a real headless Chromium (Debian's ``chromium``,
  installed by ``make browser`` / ``.ci/run``): the page lists the parent run,
  the API it calls lists the cells, and the parent run's page opens; with
  ``UPDATE_SCREENSHOT=1`` a screenshot is written to docs/mlflow_ui.png (the README's).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from importlib import metadata
from pathlib import Path

import pytest

from conftest import fake_trial_env, store_client, store_env, write_smoke_study

REPO = Path(__file__).resolve().parents[1]
NAME = "uistudy"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A finished 2-cell smoke study (the fake trial's cells: what is under test is what MLflow shows),
    and the analysis run twice over it."""
    tmp = tmp_path_factory.mktemp("ui_store")
    env = fake_trial_env(store_env(tmp, STUDY_NUM_CPUS="2"), epoch_s=0.05)
    path = write_smoke_study(tmp, NAME, epochs=1, seeds="[0]")
    res = subprocess.run([sys.executable, "-m", "study", "run", str(path), "--preset", "smoke",
                          "--cluster", "serial"], env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    out = tmp / "results"
    for _ in range(2):
        a = subprocess.run([sys.executable, "-m", "analysis", "--study", NAME, "--out", str(out)], env=env,
                           cwd=REPO, capture_output=True, text=True, timeout=300)
        assert a.returncode == 0, a.stdout + a.stderr
    client = store_client(tmp)
    exp = client.get_experiment_by_name(NAME)
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parent = next(r for r in runs if r.data.tags.get("role") == "parent")
    cells = [r for r in runs if r.data.tags.get("role") == "cell"]
    return {"tmp": tmp, "env": env, "path": path, "stdout": res.stdout, "client": client, "exp": exp,
            "parent": parent, "cells": cells, "out": out}


def _git(*args) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True).stdout.strip()


def test_provenance_and_cost_on_every_cell(study):
    from study.data.datasets import dataset_fingerprint

    client, cells = study["client"], study["cells"]
    assert len(cells) == 2
    head = _git("rev-parse", "HEAD")
    expect_data = dataset_fingerprint("fashion_mnist", None, 1024, 256, 16)  # the smoke preset's data
    assert expect_data["files"] == 4 and len(expect_data["digest"]) == 64
    for r in cells:
        tags, metrics = r.data.tags, r.data.metrics
        assert tags["mlflow.source.git.commit"] == head and tags["git_dirty"] in ("true", "false")
        assert tags["mlflow.source.name"].endswith(f"{NAME}.yaml") and tags["mlflow.source.type"] == "LOCAL"
        for pkg in ("torch", "torchvision", "ray", "mlflow"):
            assert tags[f"version.{pkg}"] == metadata.version(pkg)
        assert tags["dataset_digest"] == expect_data["digest"]
        inputs = client.get_run(r.info.run_id).inputs.dataset_inputs
        assert len(inputs) == 1  # logged once per attempt, never duplicated
        ds = inputs[0].dataset
        assert ds.name == "fashion_mnist" and ds.digest == expect_data["digest"][:16]
        assert json.loads(ds.profile)["rule"].startswith("train_subset=1024 test_subset=256")
        assert "fashion-mnist" in json.loads(ds.source)["uri"]
        # cost: positive, CPU time at most wall time x threads (1) plus slack; no GPU on this machine
        assert metrics["cost_wall_s"] > 0 and 0 < metrics["cost_cpu_s"]
        assert "cost_gpu_s" not in metrics
    pm = study["parent"].data.metrics
    assert pm["cost_cpu_s_total"] == pytest.approx(sum(r.data.metrics["cost_cpu_s"] for r in cells))
    assert pm["cost_wall_s_total"] == pytest.approx(sum(r.data.metrics["cost_wall_s"] for r in cells))
    assert pm["study_wall_s"] >= max(r.data.metrics["cost_wall_s"] for r in cells)
    link = f"http://127.0.0.1:5000/#/experiments/{study['exp'].experiment_id}?workflowType=machine_learning"
    assert link in study["stdout"] and "CPU-s" in study["stdout"]
    status = subprocess.run([sys.executable, "-m", "study", "status", str(study["path"]), "--preset", "smoke"],
                            env=study["env"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert f"code: 1 commit ({head[:7]}" in status.stdout, status.stdout


def test_status_and_report_name_two_commits(study, tmp_path):
    """A cell finished by another commit shows as 'cells from 2 commits' (store copied, one tag changed)."""
    tmp = study["tmp"]
    shutil.copyfile(tmp / "mlflow.db", tmp_path / "mlflow.db")
    env = dict(study["env"], MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = store_client(tmp_path)
    client.set_tag(study["cells"][0].info.run_id, "mlflow.source.git.commit", "f" * 40)
    status = subprocess.run([sys.executable, "-m", "study", "status", str(study["path"]), "--preset", "smoke"],
                            env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert "code: cells from 2 commits (" in status.stdout, status.stdout
    assert re.search(r"fffffff(\+dirty)?: 1", status.stdout), status.stdout
    from analysis import build

    build(NAME, tracking_uri=env["MLFLOW_TRACKING_URI"], out_dir=tmp_path / "out", log_to_store=False)
    report = (tmp_path / "out" / "REPORT.md").read_text()
    assert "Code: cells from 2 commits (" in report and re.search(r"`fffffff(\+dirty)?`: 1", report)


def test_parent_holds_the_outcome_once(study):
    client, parent = study["client"], study["parent"]
    rid = parent.info.run_id

    def walk(path=None):
        for a in client.list_artifacts(rid, path):
            yield from (walk(a.path) if a.is_dir else [a.path])

    files = sorted(walk("results"))
    stems = ["knn_convergence", "negatives_similarity"]
    expect = sorted([f"results/{NAME}/summary.{e}" for e in ("md", "csv", "tex")]
                    + [f"results/{NAME}/{s}.{e}" for s in stems for e in ("png", "pdf")] + ["results/REPORT.md"])
    assert files == expect  # after two builds: one copy of each, nothing else
    # the artifacts are the files on disk
    local = Path(client.download_artifacts(rid, f"results/{NAME}/summary.md"))
    assert local.read_text() == (study["out"] / NAME / "summary.md").read_text()
    assert "Cost (sum)" in local.read_text()
    section = Path(client.download_artifacts(rid, "results/REPORT.md")).read_text()
    assert f"## Study `{NAME}`" in section and "Compute: " in section and "CPU time over the 2 cells" in section
    assert f"({NAME}/knn_convergence.png)" in section
    run = client.get_run(rid)
    tags, metrics = run.data.tags, run.data.metrics
    name = "semi-hard-negatives"  # the smoke study's hypothesis (tests/conftest.py)
    assert tags["verdict"] in ("holds", "contradicted", "inconclusive", "equivalent", "not run")
    assert tags["hypothesis"] == name and tags[f"verdict.{name}"] == tags["verdict"]
    assert tags[f"verdict_text.{name}"] == "inconclusive at n=1 seed"
    # one paired seed: the mean is defined, the interval is not (and is not logged)
    assert metrics[f"{name}.n_seeds"] == 1 and f"{name}.diff_mean" in metrics
    assert f"{name}.ci_low" not in metrics
    # the conclusion on the page the UI opens: the parent's description, and the experiment's
    note = tags["mlflow.note.content"]
    assert f"**{name}**: semi-hard negatives beat hard ones. Verdict: **inconclusive at n=1 seed**" in note, note
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    report = (study["out"] / "REPORT.md").read_text()
    assert "Code: commit `" in report and "Compute: " in report


# --------------------------------------------------------------------------- the UI in a browser


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _chromium() -> str:
    path = shutil.which("chromium")
    assert path, "chromium is not installed: run `make browser` (as root: apt-get install -y chromium)"
    return path


def _browser(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start
    return subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           "--hide-scrollbars", "--window-size=1400,800", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_study_link_opens_on_its_runs(study, tmp_path):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "study", "ui", "--port", str(port)], env=study["env"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        first = proc.stdout.readline()
        exp_id = study["exp"].experiment_id
        link = f"http://127.0.0.1:{port}/#/experiments/{exp_id}?workflowType=machine_learning"
        assert first.split() == [NAME, link]
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
                break
            except OSError:
                assert proc.poll() is None and time.time() < deadline, "mlflow ui did not start"
                time.sleep(1)
        dom = _browser("--virtual-time-budget=20000", "--dump-dom", link).stdout
        parent_name = study["parent"].info.run_name
        assert parent_name == NAME and re.search(rf">\s*{NAME}\s*<", dom), dom[-3000:]
        assert "Model training" in dom and "Runs" in dom
        # the runs the page fetched: the parent and its two cells (the table shows the parent collapsed)
        assert re.search(r"<strong>\s*3\s*</strong>\s*matching runs", dom), dom[-3000:]
        # the children: what the page's runs search returns for this experiment (the parent's rows)
        req = urllib.request.Request(f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/runs/search", method="POST",
                                     data=json.dumps({"experiment_ids": [exp_id], "max_results": 100}).encode(),
                                     headers={"Content-Type": "application/json"})
        runs = json.loads(urllib.request.urlopen(req, timeout=30).read())["runs"]
        tags = [{t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs]
        children = {t["mlflow.runName"] for t in tags if t.get("mlflow.parentRunId") == study["parent"].info.run_id}
        assert children == {r.info.run_name for r in study["cells"]} and len(children) == 2
        # the parent run's page (the link the runner prints) opens in the model-training view, on its description
        run_page = f"http://127.0.0.1:{port}/#/experiments/{exp_id}/runs/{study['parent'].info.run_id}" \
                   "?workflowType=machine_learning"
        assert "/#/" + run_page.split("/#/", 1)[1] in study["stdout"]  # printed for make ui's port
        dom = _browser("--virtual-time-budget=20000", "--dump-dom", run_page).stdout
        assert "Model training" in dom and "semi-hard-negatives" in dom, dom[-3000:]
        if os.environ.get("UPDATE_SCREENSHOT") == "1":  # the README's picture (a third browser: only on demand)
            shot = tmp_path / "mlflow_ui.png"
            _browser("--virtual-time-budget=20000", f"--screenshot={shot}", link)
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
            shutil.copyfile(shot, REPO / "docs" / "mlflow_ui.png")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
