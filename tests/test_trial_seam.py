"""The trial seam (cluster.tune_run.load_trial), the reporter every trial reports through, and the fake
trial's made-up metrics: without Ray (tune.report replaced by a recorder)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cluster import fake_trial, tune_run
from cluster.tune_run import TrialReporter, cell_trial, load_trial
from study.core.errors import UserError


def test_load_trial_default_env_and_errors(monkeypatch):
    monkeypatch.delenv("STUDY_TRIAL", raising=False)
    assert load_trial() is cell_trial
    monkeypatch.setenv("STUDY_TRIAL", "cluster.fake_trial:fake_trial")
    assert load_trial() is fake_trial.fake_trial
    for bad, why in (("cluster.fake_trial:nothing", "nothing"), ("no_such_module:f", "no_such_module"),
                     ("cluster.fake_trial", "':function' part is missing"), (":fake_trial", "module is missing"),
                     ("cluster.fake_trial:FAKE_ENV", "not a function")):
        with pytest.raises(UserError) as err:
            load_trial(bad)
        assert "$STUDY_TRIAL" in str(err.value) and bad in str(err.value) and why in str(err.value)


@pytest.fixture
def reports(monkeypatch):
    """What tune.report received: (metrics, checkpoint pointer or None)."""
    from ray import tune

    got: list[tuple[dict, dict | None]] = []

    def report(metrics, checkpoint=None):
        pointer = None
        if checkpoint is not None:
            with checkpoint.as_directory() as d:
                pointer = json.loads((Path(d) / "pointer.json").read_text())
        got.append((dict(metrics), pointer))

    monkeypatch.setattr(tune, "report", report)
    return got


def _payload(tmp_path, level="semi-hard", seed=0, epochs=3):
    return {"cell_id": "c" * 12, "config": {"epochs": epochs}, "run_dir": str(tmp_path / "run"), "threads": 1,
            "level": level, "seed": seed, "gpus": 0.0}


def test_replay_reports_every_stored_epoch_again(tmp_path, reports):
    rep = TrialReporter(_payload(tmp_path))
    assert rep.replay() == 0 and reports == []
    lines = [{"epoch": 0, "knn_top1": 0.5}, {"epoch": 1, "knn_top1": 0.6, "loss": 4.0, "note": "text"}]
    (rep.run_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    assert rep.replay() == 2
    assert [m["epoch"] for m, _ in reports] == [0, 1]
    assert reports[1][0]["loss"] == 4.0 and "note" not in reports[1][0]  # numbers only reach Tune
    assert all(m["final"] == 0 and p == {"run_dir": str(rep.run_dir), "epoch": m["epoch"]} for m, p in reports)
    assert json.loads((rep.run_dir / "cost.json").read_text())["cost_wall_s"] >= 0


def test_fake_trial_resumes_and_fails_as_told(tmp_path, reports, monkeypatch):
    payload = _payload(tmp_path, epochs=3)
    monkeypatch.setenv("STUDY_FAKE_TRIAL", json.dumps({"epoch_s": 0, "fail_once": ["semi-hard/0"], "fail_epoch": 2}))
    with pytest.raises(RuntimeError, match="told to fail at epoch 2"):
        fake_trial.fake_trial({"cell": payload})
    assert [m["epoch"] for m, _ in reports] == [0, 1]
    reports.clear()
    fake_trial.fake_trial({"cell": payload})  # the second attempt: replays 0 and 1, then trains 2 and 3
    assert [m["epoch"] for m, _ in reports if not m["final"]] == [0, 1, 2, 3]
    final = reports[-1][0]
    assert final["final"] == 1 and final["knn_top1"] == pytest.approx(fake_trial.fake_metric("semi-hard", 0))
    assert (tmp_path / "run" / "fake_attempts").read_text() == "2"
    # finished: a third attempt reports the stored history and final, trains nothing
    reports.clear()
    fake_trial.fake_trial({"cell": payload})
    assert (tmp_path / "run" / "fake_attempts").read_text() == "2"
    assert [m["epoch"] for m, _ in reports if not m["final"]] == [0, 1, 2, 3] and reports[-1][0]["final"] == 1


def test_fake_metric_is_a_fixed_function():
    a = fake_trial.fake_metric("hard", 3)
    assert a == fake_trial.fake_metric("hard", 3) and a != fake_trial.fake_metric("hard", 4)
    assert abs(fake_trial.fake_metric("x", 1, means={"x": 0.5}, noise=0.01) - 0.5) <= 0.02
    assert tune_run.METRICS_FILE == "metrics.jsonl"
