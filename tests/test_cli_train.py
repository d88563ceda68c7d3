"""`python -m study train`: one run from the command line, and its bad inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd=None, env=None):
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", "study", *args], cwd=cwd or REPO, env=full_env,
                          capture_output=True, text=True, timeout=300)


def test_train_smoke_writes_metrics_and_resumes(tmp_path):
    out = tmp_path / "run"
    res = run_cli("train", "--preset", "smoke", "--set", "threads=1", "--out", str(out))
    assert res.returncode == 0, res.stderr
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [0, 1, 2]
    for key in ("loss", "loss_intra", "loss_inter", "knn_top1", "nmi", "label_change_ratio", "neg_sim_mean"):
        assert key in lines[1], key
    final = json.loads((out / "final.json").read_text())
    assert {"knn_top1", "linear_top1"} <= final.keys()
    assert "knn_top1" in res.stdout and "final:" in res.stdout
    again = run_cli("train", "--preset", "smoke", "--set", "threads=1", "--out", str(out))
    assert again.returncode == 0 and "already finished" in again.stdout


@pytest.mark.parametrize(
    "sets, words",
    [
        (["sampling=hardest"], ["sampling", "semi-hard"]),
        (["labels=sometimes"], ["labels", "online", "offline"]),
        (["neg_num=0"], ["neg_num", "greater than or equal to 1"]),
        (["neg_num=300", "pool=200"], ["pool", ">= neg_num"]),
        (["num_clusters=5000"], ["num_clusters", "exceeds"]),
        (["data_root=/nonexistent/fm"], ["/nonexistent/fm", "apt-get install dataset-fashion-mnist"]),
        (["negnum=3"], ["negnum", "did you mean 'neg_num'"]),
        (["epochs=two"], ["epochs", "integer"]),
        (["margin=[1, 2]"], ["margin", "number"]),
        (["epochs"], ["key=value"]),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(tmp_path, sets, words):
    out = tmp_path / "run"
    args = ["train", "--preset", "smoke", "--out", str(out)]
    for s in sets:
        args += ["--set", s]
    res = run_cli(*args)
    assert res.returncode == 2, (res.stdout, res.stderr)
    err = res.stderr.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1, err
    for w in words:
        assert w in err, (w, err)
    assert not out.exists()


def test_unknown_preset_and_command(tmp_path):
    res = run_cli("train", "--preset", "huge", "--out", str(tmp_path / "x"))
    assert res.returncode == 2 and "unknown preset 'huge'" in res.stderr and "smoke" in res.stderr
    res = run_cli("frobnicate")
    assert res.returncode == 2 and "invalid choice" in res.stderr
