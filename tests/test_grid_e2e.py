"""A crossed study through the real scheduler and MLflow (the fake trial's cells, whose metric has a known
interaction): ``--until-decided`` killed in the middle resumes with every cell once, and the report finds
the interaction (its hypothesis, the ANOVA, the simple effects, the interaction plot)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from conftest import fake_trial_env, store_client, store_env

REPO = Path(__file__).resolve().parents[1]
GRID = """name: fgrid
description: a 2 x 2 grid whose metric has a known interaction
fixed: {method: interclr, margin_type: cosine, margin: -0.5, epochs: 1, linear_epochs: 2}
factors:
  labels: [offline, online]
  sampling: [semi-hard, hard]
seeds: [0, 1, 2]
hypotheses:
  - {name: online-labels, claim: online beats offline, better: {labels: online}, worse: {labels: offline}}
  - {name: semi-hard-negatives, claim: semi-hard beats hard, better: {sampling: semi-hard},
     worse: {sampling: hard}}
  - {name: advantage-grows, claim: semi-hard's advantage grows with online labels, better: {sampling: semi-hard},
     worse: {sampling: hard}, trend: {setting: labels, order: [offline, online]}}
presets:
  smoke: {resources: {cpus: 1}, set: {recluster_every: 1}, max_failures: 1}
"""
# semi-hard beats hard by 3 points under online labels, by nothing under offline ones
MEANS = {"offline / semi-hard": 0.70, "offline / hard": 0.70, "online / semi-hard": 0.73, "online / hard": 0.70}


@pytest.mark.slow
def test_a_grid_with_an_interaction_killed_mid_loop_resumes_and_is_found(tmp_path):
    env = fake_trial_env(store_env(tmp_path, STUDY_NUM_CPUS="2"), epoch_s=0.05, means=MEANS, noise=0.001)
    path = tmp_path / "fgrid.yaml"
    path.write_text(GRID)
    args = [sys.executable, "-m", "study", "run", str(path), "--preset", "smoke", "--until-decided", "--max-seeds", "5"]
    proc = subprocess.Popen(args, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    out = []
    try:
        deadline = time.time() + 600
        while time.time() < deadline:  # the first look (3 seeds: open) is printed; the next batch starts
            line = proc.stdout.readline()
            out.append(line)
            if not line or line.startswith("[fgrid] look at n = 3"):
                break
        assert proc.poll() is None and out[-1].startswith("[fgrid] look at n = 3"), "".join(out)
        os.killpg(proc.pid, signal.SIGKILL)  # the whole driver and Ray, with no chance to mark anything
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    res = subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and "every hypothesis decided" in res.stdout, res.stdout + res.stderr
    client = store_client(tmp_path)
    exp = client.get_experiment_by_name("fgrid")
    cells = client.search_runs([exp.experiment_id], filter_string="tags.role = 'cell'", max_results=1000)
    ids = Counter(r.data.tags["cell_id"] for r in cells)
    assert len(ids) == 20 and max(ids.values()) == 1, ids  # 4 cells x 5 seeds (every cell gets each seed), once
    assert all(r.info.status == "FINISHED" for r in cells)
    for r in cells:
        assert [m.step for m in client.get_metric_history(r.info.run_id, "loss")] == [1]  # each epoch once
    a = subprocess.run([sys.executable, "-m", "analysis", "--study", "fgrid", "--out", str(tmp_path / "results")],
                       env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert a.returncode == 0, a.stdout + a.stderr
    rep = (tmp_path / "results" / "REPORT.md").read_text()
    assert "### Hypothesis `advantage-grows` (interaction)" in rep
    assert rep.split("### Hypothesis `advantage-grows`")[1].split("**Verdict: ")[1].startswith("holds"), rep
    assert "decided at n=" in rep and "seeds added until decided" in rep
    anova = rep.split("| source | df | SS | F | p | partial η² |")[1].split("\n\n")[0]
    row = next(ln for ln in anova.splitlines() if ln.startswith("| labels × sampling |"))
    assert float(row.split(" | ")[4]) < 0.05, row  # the interaction's p
    assert "Cell means, labels × sampling" in rep and "Simple effects" in rep
    assert "](fgrid/interaction_labels_x_sampling.png)" in rep
    assert (tmp_path / "results" / "fgrid" / "interaction_labels_x_sampling.png").stat().st_size > 5000
    parent = client.search_runs([exp.experiment_id], filter_string="tags.role = 'parent'")[0]
    assert parent.data.tags["verdict.advantage-grows"] == "holds"
