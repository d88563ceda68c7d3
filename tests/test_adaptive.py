"""Adaptive seeds (study.adaptive): seeds added only where a hypothesis is open, until decided or a limit;
a kill mid-way resumes with every cell once. Fast tests write runs with the real tracker into a temporary
MLflow store from a fake trial whose final kNN top-1 is drawn from a known distribution; one slow test goes
through the real command line, Ray Tune, MLflow and the analysis: a crossed study (the fake trial's cells,
whose metric has a known interaction) killed in the middle of the loop resumes with every cell once, and
the report finds the interaction (its hypothesis, the ANOVA, the simple effects, the interaction plot)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from conftest import fake_trial_env, store_client, store_env
from study.retry import RetryPolicy
from study import adaptive
from study.studyfile import load_study
from study.tracking import FINISHED, StudyTracker, tracking_uri

REPO = Path(__file__).resolve().parents[1]

STUDY = """
name: {name}
fixed: {{method: interclr, labels: online, margin_type: cosine, margin: -0.5, epochs: 1, linear_epochs: 2}}
factors:
  sampling: [random, semi-hard, hard]
seeds: {seeds}
equivalence_delta: 0.005
hypotheses:
  - {{name: semi-hard-negatives, claim: semi-hard beats hard, better: {{sampling: semi-hard}},
     worse: {{sampling: hard}}}}
presets:
  smoke: {{resources: {{cpus: 1}}}}
"""


@pytest.fixture
def store(isolated_store):
    return isolated_store


def _write(tmp_path, name="adapt", seeds="[0, 1, 2]"):
    p = tmp_path / f"{name}.yaml"
    p.write_text(STUDY.format(name=name, seeds=seeds))
    return p


class FakeTrial:
    """Runs a batch as the runner does (finished cells skipped, a cell's run reused), without training:
    final kNN top-1 = 0.70 + shift[level] + N(0, sd^2), drawn from the seed (a known distribution)."""

    def __init__(self, shift: dict[str, float], sd: float, die_after: int | None = None):
        self.shift, self.sd, self.die_after = shift, sd, die_after
        self.trained: list[tuple[str, int]] = []

    def value(self, level: str, seed: int) -> float:
        rng = np.random.default_rng([seed, sum(map(ord, level))])
        return 0.70 + self.shift.get(level, 0.0) + float(rng.normal(0.0, self.sd))

    def __call__(self, study) -> int:
        tracker = StudyTracker(study.name)
        parent = tracker.parent_run_id({"factors": ",".join(study.factors), "metric": "knn_top1"})
        status = tracker.cell_status()
        for cell in study.cells:
            if status.get(cell.cell_id) == FINISHED:
                continue
            tracker.open_cell(cell, parent)
            v = self.value(cell.level, cell.seed)
            tracker.log_epoch(cell.cell_id, 0, {"knn_top1": 0.6})
            if self.die_after is not None and len(self.trained) == self.die_after:
                raise KeyboardInterrupt("killed mid-batch")  # the run stays RUNNING, epoch 0 logged
            tracker.log_epoch(cell.cell_id, 1, {"knn_top1": v, "loss": 1.0})
            tracker.log_final(cell.cell_id, {"epochs": 1, "knn_top1": v, "linear_top1": v + 0.05})
            tracker.end_cell(cell.cell_id, FINISHED)
            self.trained.append((cell.level, cell.seed))
        return 0


def _limits(max_seeds=20):
    return adaptive.Limits(max_seeds=max_seeds, budget_hours=None, batch=2)


def _seeds(tmp_path, name="adapt"):
    client = store_client(tmp_path)
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], filter_string="tags.role = 'cell'", max_results=1000)
    cells = Counter(r.data.tags["cell_id"] for r in runs)
    assert max(cells.values()) == 1, "a cell has two runs"
    assert all(r.info.status == FINISHED for r in runs)
    out: dict[str, list[int]] = {}
    for r in runs:
        out.setdefault(r.data.tags["level"], []).append(int(r.data.params["seed"]))
    return {k: sorted(v) for k, v in out.items()}


def test_plan_adds_seeds_only_to_open_hypotheses():
    from types import SimpleNamespace as R

    open_, closed = (R(open=True, n=3, unit=R(levels=("a", "b"))), R(open=False, n=3, unit=R(levels=("a", "c"))))
    assert adaptive.plan_next([open_, closed], [0, 1, 2], _limits()) == {"a": [0, 1, 2, 3, 4], "b": [0, 1, 2, 3, 4]}
    assert adaptive.plan_next([closed], [0, 1, 2], _limits()) == {}
    at_limit = R(open=True, n=5, unit=R(levels=("a", "b")))
    assert adaptive.plan_next([at_limit], [0, 1, 2], _limits(5)) == {}
    # a crossed study: every cell of the grid gets the seeds an open unit asks for (complete blocks)
    grid = ["x / p", "x / q", "y / p", "y / q"]
    assert adaptive.plan_next([open_], [0, 1, 2], _limits(), all_levels=grid) == {lv: [0, 1, 2, 3, 4] for lv in grid}
    assert adaptive.seed_sequence([5, 2, 9], 5) == [5, 2, 9, 10, 11]


def test_a_clear_difference_is_decided_and_only_its_levels_get_seeds(store, capsys):
    # semi-hard beats hard by 1 point at a paired sd of about 0.5 points
    fake = FakeTrial({"semi-hard": 0.01}, sd=0.005 / np.sqrt(2))
    rc = adaptive.until_decided(str(_write(store)), preset="smoke", sets=None, limits=_limits(), run_batch=fake)
    out = capsys.readouterr().out
    assert rc == 0 and "every hypothesis decided" in out, out
    seeds = _seeds(store)
    assert seeds["random"] == [0, 1, 2]  # not in the finding's comparison: never more seeds
    assert seeds["semi-hard"] == seeds["hard"]
    n = len(seeds["hard"])
    assert n in (5, 7, 9, 11) and seeds["hard"] == list(range(n))  # 3, then 2 per look
    assert len(fake.trained) == len(set(fake.trained)) == 3 + 2 * n
    assert "semi-hard - hard (knn_top1): mean +" in out and ": holds" in out
    # the parent says how the study was decided; the report decides it the same way
    study = load_study(store / "adapt.yaml", "smoke")
    tracker = StudyTracker(study.name, tracking_uri())
    units, results = adaptive.evaluate(study, tracker)
    assert units[0].rule == "sequential" and units[0].verdict.value == "holds" and units[0].parts[0].cs_low > 0
    assert 2 <= units[0].decided_at <= n  # the first prefix whose running interval decides (a look, or before)
    # the command to resume runs the loop again, with its limits (the parent's tags)
    from study.runner import rerun_command

    assert rerun_command(study, tracker=tracker).endswith("--preset smoke --until-decided --max-seeds 20")
    # the same study with a --set is another config: none of these cells decides it
    other, _ = adaptive.evaluate(load_study(store / "adapt.yaml", "smoke", {"lr": 0.1}), tracker, {"lr": 0.1})
    assert all(u.n == 0 and u.verdict.value == "inconclusive" for u in other), other
    from analysis.load import load_study as load_data

    data = load_data("adapt")
    assert data.stopping == "sequential"
    # random kept the study's seeds 0-2: the seeds the loop gave semi-hard and hard are no gap of random's
    assert data.missing.empty, data.missing


def test_stops_at_the_seed_limit_and_says_what_is_left(store, capsys):
    fake = FakeTrial({}, sd=0.01)  # no difference, noisy: cannot be decided in 5 seeds
    path = _write(store)
    rc = adaptive.until_decided(str(path), preset="smoke", sets=None, limits=_limits(max_seeds=5), run_batch=fake)
    assert rc == 0 and "at 5 seeds" in capsys.readouterr().out
    assert _seeds(store)["hard"] == [0, 1, 2, 3, 4]
    # run again: nothing is trained twice
    fake.trained.clear()
    assert adaptive.until_decided(str(path), preset="smoke", sets=None, limits=_limits(5), run_batch=fake) == 0
    assert fake.trained == []
    # the design was planned with 5 seeds: another limit now is refused (it would move the boundaries of the
    # looks taken), nothing trained, nothing written; a limit nobody chose goes on with the plan's
    from study.core.errors import UserError

    with pytest.raises(UserError, match="planned with at most 5 seeds per level") as err:
        adaptive.until_decided(str(path), preset="smoke", sets=None, limits=_limits(7), run_batch=fake)
    assert err.value.source == "--max-seeds" and fake.trained == []
    default = adaptive.limits_for(load_study(path, "smoke"), None, None)
    assert default.max_seeds == 20 and not default.chosen
    assert adaptive.until_decided(str(path), preset="smoke", sets=None, limits=default, run_batch=fake) == 0
    assert fake.trained == []
    # status shows the comparison's interval and what --until-decided runs next: nothing, at the plan's limit
    study = load_study(path, "smoke")
    lines = adaptive.status_lines(study, StudyTracker("adapt", create=False))
    assert any("semi-hard - hard" in ln and "group-sequential 95.0% interval" in ln and "to run: nothing (at the limit)"
               in ln for ln in lines), lines
    # ... and lists every cell the store holds: 3 levels x seeds 0-2, and semi-hard, hard at seeds 3, 4
    from study.runner import study_status

    capsys.readouterr()
    assert study_status(str(path), preset="smoke") == 0
    out = capsys.readouterr().out
    assert "done 13, running 0, interrupted 0, failed 0, missing 0 (of 13)" in out, out
    assert "semi-hard  seed 4" in out and "random     seed 3" not in out, out


def test_kill_mid_batch_then_resume_runs_every_cell_once(store):
    path = _write(store)
    shift = {"semi-hard": 0.01}
    killer = FakeTrial(shift, sd=0.005 / np.sqrt(2), die_after=10)  # 9 base cells, then one cell into batch 2
    with pytest.raises(KeyboardInterrupt):
        adaptive.until_decided(str(path), preset="smoke", sets=None, limits=_limits(), run_batch=killer)
    assert "RUNNING" in StudyTracker("adapt").cell_status().values()
    resume = FakeTrial(shift, sd=0.005 / np.sqrt(2))
    assert adaptive.until_decided(str(path), preset="smoke", sets=None, limits=_limits(), run_batch=resume) == 0
    seeds = _seeds(store)  # asserts one run per cell, all FINISHED
    assert seeds["random"] == [0, 1, 2] and seeds["semi-hard"] == seeds["hard"]
    assert not set(killer.trained) & set(resume.trained)  # nothing trained twice
    assert len(killer.trained) + len(resume.trained) == sum(len(v) for v in seeds.values())


def test_bad_limits_are_one_clear_error(store):
    res = subprocess.run([sys.executable, "-m", "study", "run", str(_write(store)), "--until-decided",
                          "--max-seeds", "1"], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env=store_env(store))
    assert res.returncode == 2 and "--max-seeds" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (store / "mlflow.db").exists()
    # a dry run checks the limits too
    for flags, word in ((["--max-seeds", "0"], "--max-seeds"), (["--budget-hours", "-1"], "--budget-hours")):
        res = subprocess.run([sys.executable, "-m", "study", "run", str(_write(store)), "--until-decided", "--dry-run",
                              *flags], cwd=REPO, capture_output=True, text=True, timeout=120, env=store_env(store))
        assert res.returncode == 2 and word in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr


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
# semi-hard beats hard by 5 points under online labels, by nothing under offline ones; with the seeds' noise
# of the test below, online labels' main effect (3 points) is open at the first look (3 seeds), decided at 5
MEANS = {"offline / semi-hard": 0.70, "offline / hard": 0.70, "online / semi-hard": 0.76, "online / hard": 0.71}


@pytest.mark.slow
def test_a_grid_with_an_interaction_killed_mid_loop_resumes_and_is_found(tmp_path):
    env = fake_trial_env(store_env(tmp_path, STUDY_NUM_CPUS="2"), epoch_s=0.05, means=MEANS, noise=0.004)
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


def test_a_slurm_job_runs_exactly_its_batch(tmp_path):
    """The SLURM job of one batch (cluster.slurm_job.StudyJob, pickled to the job) expands the file at the
    batch's seeds and keeps only its cells."""
    import pickle

    from cluster.slurm_job import StudyJob

    path = _write(tmp_path)
    full = load_study(path, "smoke", seeds=[0, 1, 2, 3, 4])
    batch = [c for c in full.cells if c.seed in (3, 4) and c.level != "random"]
    job = StudyJob(str(path), "smoke", {}, retry=RetryPolicy(), env={}, options={},
                   seeds=[0, 1, 2, 3, 4], cell_ids=[c.cell_id for c in batch])
    job = pickle.loads(pickle.dumps(job))
    assert [(c.level, c.seed) for c in job.load().cells] == [(c.level, c.seed) for c in batch]
    plain = StudyJob(str(path), "smoke", {}, retry=RetryPolicy(), env={}, options={})
    assert len(plain.load().cells) == 9  # the file's cells


def test_seeds_go_on_from_zero_past_the_largest_seed():
    from study.core.config import MAX_SEED

    assert adaptive.seed_sequence([MAX_SEED - 1, MAX_SEED], 4) == [MAX_SEED - 1, MAX_SEED, 0, 1]
    assert adaptive.seed_sequence([MAX_SEED, 0], 3) == [MAX_SEED, 0, 1]


def test_a_level_without_the_metric_stops_the_loop_instead_of_spinning(store, capsys, monkeypatch):
    """Every planned cell finished, yet no seed pairs (as when one level's metric is missing or NaN):
    more looks cannot help, so the loop stops instead of looking again forever."""
    from dataclasses import replace

    real = adaptive.evaluate

    def no_pairs(*args, **kwargs):
        from analysis.stats import Verdict

        units, results = real(*args, **kwargs)
        return [replace(u, n=0, verdict=Verdict.INCONCLUSIVE) for u in units], results

    monkeypatch.setattr(adaptive, "evaluate", no_pairs)
    fake = FakeTrial({"semi-hard": 0.01}, sd=0.001)
    rc = adaptive.until_decided(str(_write(store)), preset="smoke", sets=None, limits=_limits(), run_batch=fake)
    out = capsys.readouterr().out
    assert rc == 1 and "stopped: the open hypotheses' cells have all finished" in out, out
    assert len(fake.trained) == 9  # the study's cells, once; no look ran another batch


def test_until_decided_refuses_what_it_cannot_decide_even_in_a_dry_run(tmp_path, monkeypatch, capsys):
    from study.cli import main

    for key, value in store_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    plain = tmp_path / "plain.yaml"
    plain.write_text("name: plain\nfactors: {temperature: [0.1, 0.2]}\nseeds: [0, 1, 2]\n")
    cases = ((plain, [], "--until-decided", "states no hypothesis"),
             (_write(tmp_path), ["--max-seeds", "2"], "--max-seeds", "at least the study's 3 seeds"))
    for path, extra, flag, words in cases:
        assert main(["run", str(path), "--preset", "smoke", "--until-decided", "--dry-run", *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {flag}: ") and words in err, err
    assert not (tmp_path / "mlflow.db").exists()
