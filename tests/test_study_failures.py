"""Failing cells and ``--rerun-failed``, and a bad trial seam, end to end through Ray Tune (the fake trial).
A file of its own (beside tests/test_study_resume.py) so that pytest-xdist runs the slow tests side by side;
fixtures and helpers come from tests/test_study_e2e.py.
"""

from __future__ import annotations

import pytest
from conftest import fake_trial_env, write_smoke_study
from test_study_e2e import _client, _runs, _study, store  # noqa: F401 (store: a fixture)

pytestmark = pytest.mark.slow


FAILING = """
name: failing
fixed: {method: interclr, epochs: 2, linear_epochs: 2}
factors:
  case:
    - {label: ok, set: {lr: 0.06}}
    - {label: flaky, set: {lr: 0.03}}
    - {label: raises, set: {lr: 0.01}}
seeds: [0]
presets:
  smoke: {resources: {cpus: 1}, max_failures: 0}
"""


def test_failures_are_reported_and_rerun(store):
    tmp_path, env = store
    path = tmp_path / "f.yaml"
    path.write_text(FAILING)
    # 'raises' fails in every attempt, 'flaky' only in its first one
    env = fake_trial_env(env, fail=["raises/0"], fail_once=["flaky/0"])
    res = _study(str(path), "--preset", "smoke", env=env)
    assert res.returncode == 1, res.stdout + res.stderr
    client = _client(tmp_path)
    by_level = {r.data.tags["level"]: r for r in _runs(client, "failing")}
    assert by_level["ok"].info.status == "FINISHED"
    for level in ("flaky", "raises"):
        assert by_level[level].info.status == "FAILED"
        assert "told to fail at epoch 1" in by_level[level].data.tags["error"]  # the trial's own message
    # without --rerun-failed nothing runs; with it only the two failed cells run
    again = _study(str(path), "--preset", "smoke", "--no-rerun-failed", env=env)
    assert "1 finished, 0 to run, 2 failed" in again.stdout
    rerun = _study(str(path), "--preset", "smoke", "--rerun-failed", env=env)
    assert "1 finished, 2 to run" in rerun.stdout
    runs = _runs(client, "failing")
    assert len(runs) == 3
    status = {r.data.tags["level"]: r.info.status for r in runs}
    assert status == {"ok": "FINISHED", "flaky": "FINISHED", "raises": "FAILED"}, status
    # the cell that failed and then finished resumed after its last epoch, and logged no step twice
    flaky = next(r for r in runs if r.data.tags["level"] == "flaky")
    assert sorted(m.step for m in client.get_metric_history(flaky.info.run_id, "knn_top1")) == [0, 1, 2]


def test_a_trial_seam_that_names_nothing_is_one_error(store):
    tmp_path, env = store
    path = write_smoke_study(tmp_path, "seam", epochs=1, seeds="[0]")
    res = _study(str(path), "--preset", "smoke", env=dict(env, STUDY_TRIAL="cluster.fake_trial:nothing"))
    assert res.returncode == 2, res.stdout + res.stderr
    assert "$STUDY_TRIAL" in res.stderr and "cluster.fake_trial:nothing" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "runs").exists()
