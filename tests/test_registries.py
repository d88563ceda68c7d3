"""The registries: every name resolves to a working unit, dispatch goes through them, and a new
sampler, margin, dataset or method is one module (or function) plus one registry line.

The newcomer's parts live in tests/registry_parts.py.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import study.core.datasets as data_registry
import study.method.registry as method_registry
from study.core.config import build_config
from study.data.datasets import dataset_files, dataset_fingerprint, load_dataset
from study.core.errors import DataError, UserError
from study.method.losses import MARGIN_FUNCTIONS as MARGINS, apply_margin, contrastive_loss
from study.method.model import Encoder, build_backbone
from study.method.registry import load
from study.method.cluster_index import cluster_index
from study.method.sampling import NEGATIVE_SAMPLERS as SAMPLERS, inter_sample
from study.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent

TOY_SAMPLER = method_registry.Sampler("registry_parts:neg_first", needs_similarity=False, uses_pool=False,
                                      global_topk=False)
TOY_MARGIN = method_registry.Margin("registry_parts:margin_double")
TOY_DATASET = data_registry.Dataset("registry_parts", train_size=64, hint="any folder")
TOY_METHOD = method_registry.Method("registry_parts:build_recorded", inter_branch=True)


# --- every entry resolves to a unit of the right kind ----------------------------------------


def _labelled_problem(n=6, s=48, k=4, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(n, d, generator=g), dim=1)  # (n, d)
    feats = F.normalize(torch.randn(s, d, generator=g), dim=1)  # (s, d)
    col_labels = torch.arange(s) % k  # (s,)
    q_labels = torch.arange(n) % k  # (n,)
    return q @ feats.T, col_labels, q_labels, g


@pytest.mark.parametrize("name", list(method_registry.SAMPLERS))
def test_every_sampler_draws_negatives_of_another_label(name):
    entry, sampler = method_registry.SAMPLERS[name], SAMPLERS[name]
    assert callable(sampler.fn) and sampler.uses_pool == entry.uses_pool
    sim, col_labels, q_labels, g = _labelled_problem()
    cols = sampler.fn(sim if entry.needs_similarity else None, col_labels, q_labels, 5, 20, g)
    assert cols.shape == (6, 5) and cols.dtype == torch.long
    assert bool((col_labels[cols] != q_labels.unsqueeze(1)).all())


@pytest.mark.parametrize("name", list(method_registry.MARGINS))
def test_every_margin_keeps_the_shape_and_uses_m_as_flagged(name):
    fn = MARGINS[name]
    cos = torch.linspace(-0.9, 0.9, 7)
    assert torch.equal(fn(cos, 0.0), cos)  # m = 0 is no margin, exactly
    moved = not torch.allclose(fn(cos, 0.3), cos)
    assert moved == method_registry.MARGINS[name].uses_margin


@pytest.mark.parametrize("name", list(data_registry.DATASETS))
def test_every_dataset_module_finds_nothing_in_an_empty_folder(name, tmp_path):
    fmt = load(data_registry.DATASETS[name].module + ":load"), load(data_registry.DATASETS[name].module + ":files")
    assert all(callable(f) for f in fmt)
    assert dataset_files(name, str(tmp_path)) == []
    with pytest.raises(DataError, match=str(tmp_path)):
        load_dataset(name, root=str(tmp_path), image_size=16)


@pytest.mark.parametrize("name", list(method_registry.METHODS))
def test_every_method_builds_a_unit_with_the_trainers_interface(name):
    cfg = build_config("smoke", {"method": name})
    encoder = Encoder(build_backbone("convnet", 1, [4, 8], 16), cfg.feat_dim, 16)
    # the bank the config was checked against (the unit checks its sampling settings once, when built)
    unit = load(method_registry.METHODS[name].build)(cfg, encoder, num_samples=cfg.bank_size, queue_generator=None,
                                                   device="cpu", gather=lambda x: x, rank=0)
    for attr in ("moco", "queue", "loss", "after_step", "init_state", "recluster", "state_dict", "load_state_dict"):
        assert hasattr(unit, attr), attr
    assert (unit.bank is not None) == method_registry.METHODS[name].inter_branch == cfg.inter_enabled
    assert (unit.plabels is not None) == cfg.inter_enabled


def test_a_bad_reference_names_itself():
    with pytest.raises(ValueError, match="study.method.sampling:nope"):
        load("study.method.sampling:nope")
    with pytest.raises(ValueError, match="no module 'study.method.nope'"):
        load("study.method.nope:f")
    with pytest.raises(ValueError, match="not 'package.module:attribute'"):
        load("study.method.sampling")


# --- dispatch reads the registries: a new entry is reached by name ---------------------------


def test_a_new_dataset_is_loaded_listed_and_fingerprinted_through_its_entry(tmp_path, monkeypatch):
    monkeypatch.setitem(data_registry.DATASETS, "toy", TOY_DATASET)
    data = load_dataset("toy", root=str(tmp_path), train_subset=32, image_size=16)
    assert data.name == "toy" and data.train_images.shape == (32, 1, 16, 16)
    assert torch.bincount(data.train_labels).tolist() == [8, 8, 8, 8]  # stratified by load_dataset
    assert data.mean[0] > 0.1  # channel stats computed by load_dataset from the final images
    assert dataset_files("toy", str(tmp_path)) == []
    (tmp_path / "toy.bin").write_bytes(b"toy")
    assert dataset_files("toy", str(tmp_path)) == [tmp_path / "toy.bin"]
    fp = dataset_fingerprint("toy", str(tmp_path), 32, None, 16)
    file_digest = hashlib.sha256(b"toy.bin\0" + hashlib.sha256(b"toy").hexdigest().encode() + b"\n").hexdigest()
    assert fp["content_hashed"] and fp["files"] == 1
    assert fp["digest"] == hashlib.sha256(file_digest.encode() + fp["rule"].encode()).hexdigest()
    with pytest.raises(UserError, match="only applies to stl10, not toy"):
        load_dataset("toy", root=str(tmp_path), unlabeled=True)
    with pytest.raises(UserError, match="unknown dataset 'toys'.*toy"):
        load_dataset("toys")


def test_a_new_sampler_and_margin_are_used_by_name(monkeypatch):
    monkeypatch.setitem(method_registry.SAMPLERS, "first", TOY_SAMPLER)
    monkeypatch.setitem(method_registry.MARGINS, "double", TOY_MARGIN)
    g = torch.Generator().manual_seed(0)
    bank = F.normalize(torch.randn(40, 8, generator=g), dim=1)  # (40, 8)
    labels = torch.arange(40) % 4  # (40,)
    q = F.normalize(torch.randn(3, 8, generator=g), dim=1)  # (3, 8)
    q_idx = torch.tensor([0, 1, 6])
    s = inter_sample(q, q_idx, bank, labels, cluster_index(labels, 4), "first", 3, 0, None, g)
    # the toy's choice: the three lowest-index entries of another label
    assert s.neg_idx.tolist() == [[1, 2, 3], [0, 2, 3], [0, 1, 3]]
    assert torch.allclose(s.neg_cos, (q.unsqueeze(1) * bank[s.neg_idx]).sum(2))
    cos = torch.tensor([0.5, -0.25])
    assert torch.allclose(apply_margin(cos, "double", 0.1), cos - 0.2)
    neg = torch.zeros(2, 3)
    assert torch.allclose(contrastive_loss(cos, neg, 1.0, "double", 0.1),
                          contrastive_loss(cos - 0.2, neg, 1.0, "none", 0.0))


def test_the_trainer_builds_the_method_its_entry_names(monkeypatch, smoke_data):
    monkeypatch.setitem(method_registry.METHODS, "interclr", TOY_METHOD)
    trainer = Trainer(build_config("smoke", {"threads": 1}), None, data=smoke_data, log=lambda s: None)
    assert trainer.method.built_by == "build_recorded" and trainer.bank is not None


# --- one registry line is all: the config accepts the names, torch-free, and a run trains ------

NEW_ENTRIES = textwrap.dedent("""\
    import sys
    import study.core.datasets as dr, study.method.registry as mr
    mr.SAMPLERS["first"] = mr.Sampler("registry_parts:neg_first", needs_similarity=False, uses_pool=False,
                                      global_topk=False)
    mr.SAMPLERS["semi-first"] = mr.Sampler("registry_parts:neg_first", needs_similarity=False, uses_pool=True,
                                           global_topk=False)
    mr.MARGINS["double"] = mr.Margin("registry_parts:margin_double")
    dr.DATASETS["toy"] = dr.Dataset("registry_parts", train_size=64, hint="any folder")
    mr.METHODS["recorded"] = mr.Method("registry_parts:build_recorded", inter_branch=True)
    from study.core.config import POOL_SAMPLINGS, TRAIN_SIZES, build_config
    from study.core.errors import UserError
    ov = dict(dataset="toy", sampling="first", margin_type="double", method="recorded", train_subset=None,
              test_subset=None, threads=1, epochs=1, batch_size=16, queue_size=32, num_clusters=4,
              min_cluster=2, neg_num=8, knn_k=5, linear_epochs=1)
    cfg = build_config("smoke", ov)
    assert cfg.inter_enabled and TRAIN_SIZES["toy"] == 64 and "semi-first" in POOL_SAMPLINGS
    try:
        build_config("smoke", dict(ov, train_subset=65))  # the entry's train_size is checked at load
        raise SystemExit("train_subset 65 accepted")
    except UserError as err:
        assert "must be <= 64" in str(err), err
    try:
        build_config("smoke", dict(ov, sampling="semi-first", pool=4))  # a pool strategy's checks apply
        raise SystemExit("pool 4 < neg_num 8 accepted")
    except UserError as err:
        assert "'pool'" in str(err), err
    assert "torch" not in sys.modules, "loading a config imported torch"
    """)


def _run(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)])}
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=False,
                          timeout=300)


def test_new_registry_lines_are_all_a_config_and_a_run_need():
    train = textwrap.dedent("""\
        from study.train.trainer import Trainer
        trainer = Trainer(cfg, None, log=lambda s: None)
        assert trainer.method.built_by == "build_recorded" and trainer.source.num_train == 64
        final = trainer.run()
        assert final["loss_inter"] > 0 and 0 <= final["knn_top1"] <= 1, final
        print("trained", final["loss"])
        """)
    done = _run(NEW_ENTRIES + train)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "trained" in done.stdout


def test_loading_a_study_file_imports_no_torch():
    code = textwrap.dedent("""\
        import sys
        from study.studyfile import load_study
        import study.core.canonical
        load_study("experiments/sampling.yaml", "cpu")
        assert "torch" not in sys.modules, sorted(m for m in sys.modules if m.startswith("torch"))[:5]
        """)
    done = _run(code)
    assert done.returncode == 0, done.stderr[-3000:]
