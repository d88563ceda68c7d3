"""Nothing derived in the store outlives what it derives from (issue 27, class 4): verdicts published while
cells are missing are provisional, and the runner marks them stale once the study has other cells; the
variant the analysis counts is the latest command's, even when its cells were linked from older runs."""

from __future__ import annotations

import subprocess
import sys

from conftest import fake_trial_env, store_client, store_env
from study.core.paths import REPO_ROOT

STUDY = """
name: {name}
fixed: {{method: interclr, labels: online, margin_type: cosine, margin: -0.5, epochs: 2}}
factors:
  sampling: [semi-hard, hard]
seeds: {seeds}
hypotheses:
  - {{name: sh, claim: semi-hard beats hard, better: {{sampling: semi-hard}}, worse: {{sampling: hard}}}}
presets:
  smoke: {{resources: {{cpus: 1}}}}
"""


def _cmd(args, env):
    res = subprocess.run([sys.executable, "-m", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def _parent(client, name):
    exp = client.get_experiment_by_name(name)
    (run,) = client.search_runs([exp.experiment_id], "tags.role = 'parent'")
    return run.data.tags


def test_a_verdict_made_mid_study_is_provisional_then_stale_then_final(tmp_path):
    import time

    # one slot, 4 s a cell: after the first cell, 20 s of cells are left for the analysis to start in,
    # on a loaded machine too (mostly sleep: little CPU)
    env = fake_trial_env(store_env(tmp_path, STUDY_NUM_CPUS="1"), epoch_s=2.0)
    path = tmp_path / "s.yaml"
    path.write_text(STUDY.format(name="s", seeds="[0, 1, 2]"))
    # the serial backend: what is under test is the runner's and the analysis's, not Ray's
    study = subprocess.Popen([sys.executable, "-m", "study", "run", str(path), "--preset", "smoke",
                              "--cluster", "serial"], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline:  # the analysis runs once some cells have finished and others not
            # (read off the run directories: a client of this process must not create the store's tables
            # while the study's driver does)
            finished = list((tmp_path / "runs" / "s").glob("*/final.json")) if (tmp_path / "runs").exists() else []
            if 1 <= len(finished) < 6:
                break
            time.sleep(0.2)
        _cmd(["analysis", "--study", "s", "--out", str(tmp_path / "r1")], env)
        out, _ = study.communicate(timeout=600)
    finally:
        study.kill()
    assert study.returncode == 0, out
    client = store_client(tmp_path)
    tags = _parent(client, "s")
    # stale whichever ended first: the study (its runner marks what the analysis had published) or the
    # analysis (it saw cells finish after it had read the store)
    assert tags["verdict_state"] == "stale" and tags["mlflow.note.content"].startswith("**Stale**"), tags
    assert "marked stale" in out or "while this analysis ran" in tags["mlflow.note.content"], out
    assert int(tags["verdict_cells"]) < 6
    assert "verdicts below are provisional" in (tmp_path / "r1" / "REPORT.md").read_text()
    assert "**Provisional**" in tags["mlflow.note.content"]  # the provisional note, now under the stale line
    _cmd(["analysis", "--study", "s", "--out", str(tmp_path / "r2")], env)
    tags = _parent(client, "s")
    assert tags["verdict_state"] == "final" and tags["verdict_cells"] == "6"
    assert "Stale" not in tags["mlflow.note.content"] and "Provisional" not in tags["mlflow.note.content"]


def test_the_latest_command_is_the_variant_counted_even_with_linked_cells(tmp_path, isolated_store, monkeypatch):
    from conftest import finish_by_hand
    from study.studyfile import load_study

    env = fake_trial_env(store_env(tmp_path, STUDY_NUM_CPUS="2"))
    monkeypatch.setenv("STUDY_TRIAL", env["STUDY_TRIAL"])  # cells by hand are the fake trial's, as the run's
    for name in ("src", "dst"):
        (tmp_path / f"{name}.yaml").write_text(STUDY.format(name=name, seeds="[0]"))
    # the two studies' earlier cells as the Tune callback writes them (what is under test is what the
    # runner links and the analysis counts): the plain cells first, then dst's lr=0.05 ones
    finish_by_hand(load_study(tmp_path / "src.yaml", "smoke"))
    finish_by_hand(load_study(tmp_path / "dst.yaml", "smoke", {"lr": 0.05}))
    out = _cmd(["study", "run", str(tmp_path / "dst.yaml"), "--preset", "smoke", "--cluster", "serial"], env)
    assert "linked 2 cells" in out  # the plain cells, finished before the lr=0.05 ones
    _cmd(["analysis", "--study", "dst", "--out", str(tmp_path / "r")], env)
    csv = (tmp_path / "r" / "dst" / "summary.csv").read_text()
    report = (tmp_path / "r" / "REPORT.md").read_text()
    client = store_client(tmp_path)
    exp = client.get_experiment_by_name("dst")
    runs = client.search_runs([exp.experiment_id], "tags.role = 'cell'")
    linked = [r.info.run_id[:8] for r in runs if r.data.tags.get("reused_from")]
    other = [r.info.run_id[:8] for r in runs if not r.data.tags.get("reused_from")]
    assert len(linked) == 2 and len(other) == 2 and "semi-hard" in csv
    # the cells counted are the latest command's (linked, plain) ones; the lr=0.05 cells are left out
    left_out = report.split("Finished cells left out (2): ", 1)[1].split("\n", 1)[0]
    assert all(f"run {rid}" in left_out for rid in other), left_out
    assert not any(f"run {rid}" in left_out for rid in linked), left_out


def test_a_study_whose_experiment_was_renamed_says_so(tmp_path, isolated_store, capsys):
    """The store changed by hand between two commands (issue 27, class 4): a study's experiment renamed in
    the MLflow UI, or another study's renamed to its name, is one error naming both and the way back; not
    a second copy of the study trained under the old name."""
    from study.studyfile import load_study
    from conftest import finish_by_hand

    for name in ("a", "b"):
        (tmp_path / f"{name}.yaml").write_text(STUDY.format(name=name, seeds="[0]"))
        finish_by_hand(load_study(tmp_path / f"{name}.yaml", "smoke"))
    client = store_client(tmp_path)
    a_id = client.get_experiment_by_name("a").experiment_id
    client.rename_experiment(a_id, "a-old")

    from study.cli import main

    def refused(name, *words):  # the commands' main in this process: what they print and return
        for cmd in (["run", str(tmp_path / f"{name}.yaml"), "--preset", "smoke", "--dry-run"],
                    ["status", str(tmp_path / f"{name}.yaml"), "--preset", "smoke"]):
            capsys.readouterr()
            code = main(cmd)
            err = capsys.readouterr().err.strip()
            assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, (cmd, err)
            assert all(w in err for w in words), (cmd, err)

    refused("a", "now named 'a-old'", f"--experiment-id {a_id} --new-name 'a'")
    from analysis.__main__ import main as analysis_main

    assert analysis_main(["--study", "a", "--out", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err.strip()
    assert "now named 'a-old'" in err and "--study 'a-old'" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "results").exists()
    client.rename_experiment(client.get_experiment_by_name("b").experiment_id, "a")  # b's runs under a's name
    refused("a", "holds the runs of study 'b'", "--new-name 'b'")
    assert analysis_main(["--study", "a", "--out", str(tmp_path / "results")]) == 2  # not b's runs as a's
    err = capsys.readouterr().err.strip()
    assert "holds the runs of study 'b'" in err and len(err.splitlines()) == 1, err
    client.rename_experiment(client.get_experiment_by_name("a").experiment_id, "b")
    client.rename_experiment(a_id, "a")  # both back: the same commands go on with the finished cells
    capsys.readouterr()
    assert main(["status", str(tmp_path / "a.yaml"), "--preset", "smoke"]) == 0
    out = capsys.readouterr().out
    assert "done 2" in out, out
    assert len(client.search_experiments()) == 3  # Default, a, b: no copy of the study was made


def test_a_decided_adaptive_study_run_again_keeps_its_final_verdicts(tmp_path, monkeypatch, capsys):
    """The verdicts count the cells at the seeds --until-decided added: running the finished study again
    (plain, or the loop again) changes no cell, so the published verdicts stay final (they were marked
    stale: the run compared the file's seeds' cells with the analysis's)."""
    from analysis.__main__ import main as analysis_main
    from study.cli import main

    # decided at the 7th seed (the fake metric is a fixed function of level and seed)
    env = fake_trial_env(store_env(tmp_path), epoch_s=0.01, means={"semi-hard": 0.72, "hard": 0.70}, noise=0.01)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    path = tmp_path / "ad.yaml"
    path.write_text(STUDY.format(name="ad", seeds="[0, 1, 2]"))
    run = ["run", str(path), "--preset", "smoke", "--cluster", "serial"]
    assert main(run + ["--until-decided", "--max-seeds", "7"]) == 0
    assert analysis_main(["--study", "ad", "--out", str(tmp_path / "r")]) == 0
    client = store_client(tmp_path)
    cells = _parent(client, "ad")["verdict_cells"]
    assert _parent(client, "ad")["verdict_state"] == "final" and int(cells) > 6  # seeds beyond the file's 3
    capsys.readouterr()
    for again in (run, run + ["--until-decided"]):
        assert main(again) == 0
        out = capsys.readouterr().out
        assert "marked stale" not in out, out
        assert _parent(client, "ad")["verdict_state"] == "final"


def test_a_cell_run_being_created_is_not_read_mid_write(tmp_path):
    """The analysis reads the store while a driver creates a cell's run (its tags first, its params and the
    `filled` tag last): that run is not there yet, where it was a contract error ('has no param seed'); a
    finished run without its params still is one."""
    import pytest

    from analysis.load import ContractError, client_for, load_study

    client = store_client(tmp_path)
    exp = client.create_experiment("mid")
    parent = client.create_run(exp, tags={"study": "mid", "role": "parent"})
    client.log_param(parent.info.run_id, "factors", "sampling")
    half = client.create_run(exp, tags={"study": "mid", "role": "cell", "cell_id": "c1", "level": "hard",
                                        "mlflow.parentRunId": parent.info.run_id})  # RUNNING, no params yet
    data = load_study("mid", client=client_for(f"sqlite:///{tmp_path / 'mlflow.db'}"))
    assert data.cells.empty
    client.set_terminated(half.info.run_id, "FINISHED")
    with pytest.raises(ContractError, match="has no param"):
        load_study("mid", client=client)
