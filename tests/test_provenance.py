"""Provenance and cost pieces without Ray: the dataset fingerprint, the study link, the cost meter."""

from __future__ import annotations

import json
import time

import pytest

from cluster.tune_run import CostMeter
from study.data.datasets import dataset_files, dataset_fingerprint
from study.provenance import code_version, package_versions, short_commit, study_link, ui_base

NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _fake_fashion(folder, payload: bytes = b"x"):
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(NAMES):
        (folder / name).write_bytes(payload + bytes([i]))
    return folder


def test_fingerprint_follows_files_and_subset_rule(tmp_path):
    a = _fake_fashion(tmp_path / "a")
    fp = dataset_fingerprint("fashion_mnist", str(a), 1024, 256, 16)
    assert [p.name for p in dataset_files("fashion_mnist", str(a))] == list(NAMES)
    assert fp["files"] == 4 and len(fp["digest"]) == 64 and fp["source"] == str(a)
    assert fp["rule"] == "train_subset=1024 test_subset=256 stratified seed=0; image_size=16"
    # the same bytes elsewhere: the same digest; another subset rule or one changed byte: another
    b = _fake_fashion(tmp_path / "b")
    assert dataset_fingerprint("fashion_mnist", str(b), 1024, 256, 16)["digest"] == fp["digest"]
    assert dataset_fingerprint("fashion_mnist", str(a), 2048, 256, 16)["digest"] != fp["digest"]
    time.sleep(0.01)
    (b / NAMES[0]).write_bytes(b"y\x00")
    assert dataset_fingerprint("fashion_mnist", str(b), 1024, 256, 16)["digest"] != fp["digest"]
    # no files: no digest (the loader will say what is missing)
    assert dataset_fingerprint("fashion_mnist", str(tmp_path / "none"))["digest"] == ""


def test_fingerprint_of_an_image_folder_uses_names_and_sizes(tmp_path):
    for split in ("train", "val"):
        (tmp_path / split / "cat").mkdir(parents=True)
        (tmp_path / split / "cat" / "1.png").write_bytes(b"abc")
    fp = dataset_fingerprint("imagefolder", str(tmp_path), None, None, 224)
    assert fp["files"] == 2 and not fp["content_hashed"]
    (tmp_path / "val" / "cat" / "1.png").write_bytes(b"xyz")  # same size: same digest (documented)
    assert dataset_fingerprint("imagefolder", str(tmp_path), None, None, 224)["digest"] == fp["digest"]
    (tmp_path / "val" / "cat" / "2.png").write_bytes(b"x")
    assert dataset_fingerprint("imagefolder", str(tmp_path), None, None, 224)["digest"] != fp["digest"]


def test_study_link_and_versions():
    assert study_link("7") == "http://127.0.0.1:5000/#/experiments/7?workflowType=machine_learning"
    assert ui_base("sqlite:////x/mlflow.db", 5123) == "http://127.0.0.1:5123"
    assert ui_base("http://10.0.0.1:5000/") == "http://10.0.0.1:5000"
    v = package_versions()
    assert set(v) >= {"torch", "torchvision", "ray", "mlflow", "python"} and "absent" not in v.values()
    code = code_version()
    assert len(code["commit"]) == 40 and code["dirty"] in ("true", "false")
    assert short_commit("a" * 40, "true") == "aaaaaaa+dirty" and short_commit("", "unknown") == "unknown"


def test_cost_meter_adds_up_attempts(tmp_path):
    m = CostMeter(tmp_path, gpus=0.5, on_gpu=False)
    t0 = time.process_time()
    while time.process_time() - t0 < 0.05:  # burn a little CPU
        pass
    first = m.save()
    assert first["cost_cpu_s"] >= 0.04 and first["cost_wall_s"] >= first["cost_cpu_s"] - 0.01
    assert "cost_gpu_s" not in first  # not on a GPU: no GPU seconds
    again = CostMeter(tmp_path, gpus=1.0, on_gpu=True).save()  # a resumed attempt, on a GPU
    assert again["cost_wall_s"] >= first["cost_wall_s"] and again["cost_cpu_s"] >= first["cost_cpu_s"]
    assert again["cost_gpu_s"] == pytest.approx(again["cost_wall_s"] - first["cost_wall_s"], abs=1e-3)
    assert json.loads((tmp_path / "cost.json").read_text()) == again


def test_ui_command_links_and_bad_port(tmp_path, monkeypatch, capsys):
    from study.cli import main

    db = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    assert main(["ui", "--links-only"]) == 0
    assert "no study in the store" in capsys.readouterr().out and not db.exists()  # nothing created
    assert main(["ui", "--port", "70000"]) == 2
    assert "--port: must be a port number 1-65535, got 70000" in capsys.readouterr().err
    assert main(["ui", "--workers", "0"]) == 2


def test_the_driver_side_never_imports_torch(tmp_path):
    """What a study's driver runs (the runner, the Tune glue, the tracker, each cell's data fingerprint for
    every registered dataset and Tune's callbacks) leaves torch unimported: torch costs each `python -m study`
    command ~2 CPU-s and ~500 MB. Only the trial processes train."""
    import subprocess
    import sys

    code = f"""
import os, sys
os.environ["MLFLOW_TRACKING_URI"] = "sqlite:///{tmp_path / 'm.db'}"
import cluster.local, cluster.slurm_submit, cluster.tune_run, study.runner, study.cli
from study.core import datasets as registry
from study.core.config import build_config
from study.data.fingerprint import dataset_fingerprint
from study.provenance import cell_fingerprint
cell_fingerprint(build_config("smoke"))
for name in registry.DATASETS:
    dataset_fingerprint(name, "{tmp_path}", 32, 32, 16)
from study.tracking import StudyTracker
StudyTracker("t")
from ray.tune.utils.callback import _create_default_callbacks
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
_create_default_callbacks([])
print(sorted(m for m in sys.modules if m == "torch" or m.startswith(("torch.", "tensorboardX"))))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().splitlines()[-1] == "[]", res.stdout[-2000:]
