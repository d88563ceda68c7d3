"""The method as METHOD.md defines it, one test per point of the method-fidelity issue.

Each behaviour is checked on a small hand-made case written from METHOD.md's
description of the reference (mmselfsup 0.x InterCLR), not from our code:
the upkeep schedule, the offline re-clustering, the initial centroids, the
effective pool, common random numbers across levels, the final test set,
the permutation-invariant label change and degenerate labels.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from study.core.config import PRESETS, build_config
from study.data.datasets import epoch_batches
from study.core.errors import UserError
from study.method.kmeans import kmeans
from study.method.labels import PseudoLabels
from study.method.cluster_index import cluster_index
from study.method.sampling import STRATEGIES, inter_sample
from study.train.trainer import Trainer




def _cfg(**kw):
    return build_config("smoke", {"threads": 1, "progress": False, **kw})


def _groups(per_group: int = 10, k: int = 4, dim: int = 8) -> torch.Tensor:
    """``(k * per_group, dim)`` unit vectors in k tight, well-separated groups (fixed numbers).

    Group g sits on axis g, member i tilted by ``0.01 * i`` towards axis k: no
    random draw, so every CPU computes the same 2-means splits.
    """
    rows = []
    for g in range(k):
        for i in range(per_group):
            v = torch.zeros(dim)
            v[g], v[k] = 1.0, 0.01 * i
            rows.append(v)
    return F.normalize(torch.stack(rows), dim=1)


# ---------------------------------------------------------------- online upkeep schedule


class _Recorder(PseudoLabels):
    """PseudoLabels that logs which upkeep operation ran, in order."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.events: list[str] = []

    def relabel(self, idx, feats):
        self.events.append("relabel")
        return super().relabel(idx, feats)

    def recompute_centroids(self, bank_feats):
        self.events.append("recompute")
        return super().recompute_centroids(bank_feats)

    def fix_small_clusters(self, bank_feats, generator):
        self.events.append("fix")
        return super().fix_small_clusters(bank_feats, generator)


def _expected_schedule(iterations: int, every: int) -> list[str]:
    # METHOD.md: relabel after each bank write; recompute every `every` iterations; then the
    # small-cluster fix after EVERY iteration, after the recompute when both fall on one
    out = []
    for it in range(1, iterations + 1):
        out.append("relabel")
        if it % every == 0:
            out.append("recompute")
        out.append("fix")
    return out


def test_upkeep_schedule_over_25_iterations_unit():
    feats = _groups()
    pl = _Recorder(40, 4, feats.shape[1], min_cluster=5)
    pl.assign(torch.arange(40) // 10, feats, torch.zeros(4, feats.shape[1]))
    pl.events.clear()
    g = torch.Generator().manual_seed(0)
    for it in range(1, 26):
        pl.after_iteration(it, torch.tensor([it % 40, (it * 7) % 40]), feats, g, centroid_every=10)
    assert pl.events == _expected_schedule(25, 10)
    assert pl.events.count("fix") == 25 and pl.events.count("recompute") == 2


def test_trainer_runs_the_reference_upkeep_schedule(smoke_data, monkeypatch):
    # 25 iterations of the trainer itself, its pseudo-labels swapped for the recorder
    cfg = _cfg(labels="online", epochs=1, batch_size=32, max_steps_per_epoch=25, centroid_every=10,
               linear_epochs=0)
    monkeypatch.setattr("study.method.interclr.PseudoLabels", _Recorder)
    trainer = Trainer(cfg, None, data=smoke_data, log=lambda s: None)
    trainer.run()
    events = trainer.plabels.events
    # initialisation: k-means labels with member-mean centroids (one recompute), no fix
    assert events[0] == "recompute" and "fix" not in events[:1]
    assert events[1:] == _expected_schedule(25, 10)


def test_small_cluster_upkeep_prevents_collapse_fixed_numbers():
    # 4 groups of 10; the batch = every member of clusters 1..3, whose centroids all point
    # at group 0: the relabel empties clusters 1..3 into cluster 0 (the collapse that used
    # to crash sampling). The same iteration's fix re-seeds them by 2-means splits.
    feats = _groups()
    pl = PseudoLabels(40, 4, feats.shape[1], min_cluster=5)
    centroids = feats[torch.tensor([0, 0, 0, 0])].clone()
    centroids[1:] *= 0.5  # cluster 0 wins every argmax
    pl.reset(torch.arange(40) // 10, centroids)
    changed, reseeded = pl.after_iteration(1, torch.arange(10, 40), feats, torch.Generator().manual_seed(0),
                                           centroid_every=10)
    assert changed == 1.0 and reseeded == 3
    counts = pl.counts()
    assert int(counts.min()) >= 5 and int(counts.sum()) == 40  # every cluster >= min_cluster again
    # the 2-means splits recover the 4 groups exactly (well-separated groups)
    groups = torch.arange(40) // 10
    for c in range(4):
        members = groups[pl.labels == c]
        assert members.unique().numel() == 1
    # and every query finds different-label negatives: nothing starved
    q = feats[:8].clone().requires_grad_(True)
    for strategy in STRATEGIES:
        s = inter_sample(q, torch.arange(8), feats, pl.labels, pl.cluster_index(), strategy, 5, 20, None,
                         torch.Generator().manual_seed(1))
        assert s.starved == 0 and bool((pl.labels[s.neg_idx] != pl.labels[:8].unsqueeze(1)).all())


# ---------------------------------------------------------------- initial centroids, offline


def test_initial_centroids_are_member_means_over_the_bank():
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.8, 0.6], [-1.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 0, 2])
    kmeans_centroids = torch.full((4, 2), 9.0)  # what k-means' last update said; cluster 3 is empty
    pl = PseudoLabels(5, 4, 2, min_cluster=1)
    pl.assign(labels, bank, kmeans_centroids)
    expected = torch.tensor([[0.9, 0.3], [0.3, 0.9], [-1.0, 0.0], [9.0, 9.0]])  # by hand
    assert torch.allclose(pl.centroids, expected)


def test_trainer_initial_centroids_are_member_means(smoke_data):
    trainer = Trainer(_cfg(epochs=1), None, data=smoke_data, log=lambda s: None)
    trainer.init_inter_state()
    bank, lab = trainer.bank.feats, trainer.plabels
    for c in lab.labels.unique().tolist():
        assert torch.allclose(lab.centroids[c], bank[lab.labels == c].mean(0), atol=1e-6)


def test_offline_reclustering_keeps_the_bank_and_replaces_labels_only(smoke_data):
    trainer = Trainer(_cfg(labels="offline", epochs=1, recluster_every=1, linear_epochs=0), None,
                      data=smoke_data, log=lambda s: None)
    trainer.run()  # one epoch: the bank now holds keys written during training
    bank_before = trainer.bank.feats.clone()
    fresh = trainer._train_features()
    assert not torch.allclose(fresh, bank_before)  # training moved the encoder: they differ
    state = trainer.gens.inter.get_state()
    trainer.recluster()
    assert torch.equal(trainer.bank.feats, bank_before)  # the bank is untouched
    g = torch.Generator()
    g.set_state(state)
    expected = kmeans(fresh, trainer.cfg.num_clusters, iters=trainer.cfg.kmeans_iters, generator=g)
    assert torch.equal(trainer.plabels.labels, expected.labels)  # labels from the fresh features
    for c in expected.labels.unique().tolist():  # centroids: member means over the kept bank
        assert torch.allclose(trainer.plabels.centroids[c], bank_before[expected.labels == c].mean(0), atol=1e-6)


# ---------------------------------------------------------------- effective pool


def test_effective_pool_smaller_than_neg_num_is_one_error_at_load():
    with pytest.raises(UserError) as err:
        build_config("cpu", {"neg_search": "candidates", "candidates": 4096, "neg_num": 1024})
    msg = str(err.value)
    assert "'pool'" in msg and "'neg_num'" in msg and "410" in msg and "1024" in msg
    # the old cpu preset's numbers (pool 2,000 scaled to 410 < 1,024) fail the same way
    with pytest.raises(UserError, match="'neg_num'"):
        build_config("cpu", {"neg_search": "candidates", "candidates": 4096, "neg_num": 1024, "pool": 2000})
    # semi-easy too; random and hard have no pool
    with pytest.raises(UserError, match="'pool'"):
        build_config("cpu", {"sampling": "semi-easy", "neg_search": "candidates", "candidates": 1000})
    build_config("cpu", {"sampling": "hard", "neg_search": "candidates", "candidates": 1000})
    build_config("cpu", {"sampling": "random", "neg_search": "candidates", "candidates": 1000})


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_draw_semi_hard_from_a_pool_many_times_neg_num(preset):
    cfg = build_config(preset)
    bank = cfg.bank_size or 1_281_167  # ImageNet-1k's training set for the imagefolder preset
    assert cfg.effective_pool(bank) >= 5 * cfg.neg_num, (preset, cfg.effective_pool(bank), cfg.neg_num)


def test_effective_pool_error_through_the_command_line(tmp_path):
    # `--set` on a study file: exit 2, one message naming both keys, nothing written
    study = tmp_path / "s.yaml"
    study.write_text("name: pooltest\nfixed: {method: interclr}\nfactors:\n  sampling: [semi-hard, hard]\n"
                     "seeds: [0]\n")
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "STUDY_RUN_ROOT": str(tmp_path / "runs"),
           "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "study", "run", str(study), "--preset", "cpu", "--dry-run",
                           "--set", "neg_search=candidates", "--set", "candidates=4096", "--set", "neg_num=1024"],
                          capture_output=True, text=True, env=env, cwd=str(tmp_path))
    assert proc.returncode == 2, proc.stderr
    assert "'pool'" in proc.stderr and "'neg_num'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- common random numbers


def _recording_trainer(cfg, data):
    trainer = Trainer(cfg, None, data=data, log=lambda s: None)
    views, negs = [], []
    batch_views = trainer._batch_views

    def record(batch_idx, d):
        out = batch_views(batch_idx, d)
        views.append((out[0].clone(), out[1].clone(), out[2].clone()))
        return out

    trainer._batch_views = record
    import study.method.interclr as method_module  # the unit that draws the sample

    real = method_module.inter_sample

    def spy(*a, **kw):
        s = real(*a, **kw)
        negs.append(s.neg_idx.clone())
        return s

    return trainer, views, negs, spy, real


@pytest.mark.parametrize("other", [{"sampling": "random"}, {"sampling": "hard"}, {"labels": "offline"},
                                   {"method": "mocov2"}])
def test_levels_of_one_seed_see_the_same_views_and_weights(smoke_data, monkeypatch, other):
    import study.method.interclr as method_module  # the unit that draws the sample

    runs = []
    for level in ({"sampling": "semi-hard"}, other):
        cfg = _cfg(seed=3, epochs=2, linear_epochs=0, **level)
        trainer, views, negs, spy, real = _recording_trainer(cfg, smoke_data)
        w0 = [p.detach().clone() for p in trainer.moco.parameters()]
        q0 = trainer.queue.keys.clone()
        monkeypatch.setattr(method_module, "inter_sample", spy)
        trainer.run()
        monkeypatch.setattr(method_module, "inter_sample", real)
        runs.append((views, negs, w0, q0))
    (va, na, wa, qa), (vb, nb, wb, qb) = runs
    assert all(torch.equal(x, y) for x, y in zip(wa, wb)) and torch.equal(qa, qb)  # initial weights, queue
    assert len(va) == len(vb) == 2 * 16  # both epochs: batch order and augmented views bitwise equal
    for (a1, a2, ai), (b1, b2, bi) in zip(va, vb):
        assert torch.equal(ai, bi) and torch.equal(a1, b1) and torch.equal(a2, b2)
    if nb:  # inter branch on in both: their draws differ
        assert any(not torch.equal(x, y) for x, y in zip(na, nb))


def test_generators_are_distinct_streams_per_purpose():
    from study.train.trainer import Generators

    g = Generators(0, 0, torch.device("cpu"))
    draws = [torch.rand(4, generator=getattr(g, name)) for name in Generators.PURPOSES]
    assert all(not torch.equal(draws[i], draws[j]) for i in range(3) for j in range(i + 1, 3))
    # the data order's generator (seed, epoch) is another stream again
    assert all(Generators.seed_of(0, p) != Generators.seed_of(0, q) for p in Generators.PURPOSES
               for q in Generators.PURPOSES if p != q)
    assert Generators.seed_of(0, "negatives", 0) != Generators.seed_of(0, "negatives", 1)  # per rank


# ---------------------------------------------------------------- evaluation on the whole test set


def test_final_metrics_use_every_test_image_and_the_monitor_a_subset(smoke_data):
    # smoke: 256 test images loaded; the monitor uses 100 of them
    trainer = Trainer(_cfg(epochs=1, monitor_test_subset=100, linear_epochs=2), None, data=smoke_data,
                      log=lambda s: None)
    final = trainer.run()
    monitor = [m["knn_top1"] for m in trainer.history]
    assert all(abs(v * 100 - round(v * 100)) < 1e-9 for v in monitor)  # a multiple of 1/100
    assert abs(final["knn_top1"] * 256 - round(final["knn_top1"] * 256)) < 1e-9
    assert final["knn_top1_monitor"] == monitor[-1]
    # the final kNN equals a kNN over the 256 test images computed here
    feats = trainer._eval_features(None)
    assert feats[2].shape[0] == 256 and final["knn_top1"] == trainer.evaluator.knn(feats)


def test_cpu_preset_evaluates_on_the_whole_fashion_mnist_test_set():
    cfg = build_config("cpu")
    assert cfg.test_subset is None and cfg.monitor_test_subset == 2000


# ---------------------------------------------------------------- label change, data order


def test_label_change_ratio_ignores_renamed_clusters(smoke_data):
    trainer = Trainer(_cfg(epochs=1), None, data=smoke_data, log=lambda s: None)
    trainer.init_inter_state()
    labels = trainer.plabels.labels.clone()
    k = trainer.cfg.num_clusters
    trainer.prev_labels = (labels + 1) % k  # the same partition under other ids
    out = trainer.label_metrics()
    assert out["label_change_ratio"] == 0.0  # the partition did not move
    assert out["label_change_raw"] == 1.0  # every id differs


def test_data_order_with_replacement_is_the_reference_sampler():
    perm = torch.cat(epoch_batches(1000, 100, seed=1, epoch=0))
    assert perm.unique().numel() == 1000  # permutation: every image once
    rep = torch.cat(epoch_batches(10000, 100, seed=1, epoch=0, replacement=True))
    assert rep.numel() == 10000
    distinct = rep.unique().numel() / 10000
    assert abs(distinct - (1 - np.exp(-1))) < 0.02  # about 63 % distinct, as METHOD.md says
    assert torch.equal(rep, torch.cat(epoch_batches(10000, 100, seed=1, epoch=0, replacement=True)))
    assert build_config("smoke", {"data_order": "replacement"}).data_order == "replacement"
    with pytest.raises(UserError, match="data_order"):
        build_config("smoke", {"data_order": "shuffled"})


# ---------------------------------------------------------------- degenerate data


def test_semi_draws_are_distinct_before_same_label_redraws():
    # a pool of 50 of 60 entries without the query's own (its only same-label) entry 59: the
    # reference's draw takes 20 DISTINCT pool positions, then no redraw is needed
    bank = F.normalize(torch.randn(60, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    labels = torch.ones(60, dtype=torch.long)
    labels[59] = 0
    for strategy, sign in (("semi-hard", -1.0), ("semi-easy", 1.0)):
        q = (sign * bank[59:60]).expand(30, 4).clone().requires_grad_(True)  # entry 59 outside the pool
        s = inter_sample(q, torch.full((30,), 59), bank, labels, cluster_index(labels, 2), strategy, 20, 50,
                         None, torch.Generator().manual_seed(2))
        assert all(row.unique().numel() == 20 for row in s.neg_idx)
        assert not bool((s.neg_idx == 59).any())
    # random draws i.i.d. with replacement over the bank (the reference's alias method)
    q = bank[59:60].expand(30, 4).clone().requires_grad_(True)
    s = inter_sample(q, torch.full((30,), 59), bank, labels, cluster_index(labels, 2), "random", 40, 50, None,
                     torch.Generator().manual_seed(3))
    assert any(row.unique().numel() < 40 for row in s.neg_idx)  # 40 of 59 with replacement: repeats


def _identical_folder(root, n_train=32, n_test=8):
    from PIL import Image

    img = np.full((20, 20, 3), 120, dtype=np.uint8)
    for split, n in (("train", n_train), ("val", n_test)):
        for c in range(2):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(n // 2):
                Image.fromarray(img).save(d / f"{i}.png")
    return root


@pytest.mark.parametrize("labels", ["online", "offline"])
def test_identical_images_train_with_a_warning_not_a_traceback(tmp_path, labels):
    # every image the same: k-means puts every sample in one cluster, so the first batch's
    # queries have no different-label entry at all. Training goes on, says so once, and
    # logs the share of such queries.
    root = _identical_folder(tmp_path / "folder")
    cfg = build_config("smoke", {
        "dataset": "imagefolder", "data_root": str(root), "stream": True, "image_size": 16,
        "train_subset": None, "test_subset": None, "batch_size": 8, "num_clusters": 4, "min_cluster": 2,
        "neg_num": 4, "pool": 16, "queue_size": 16, "knn_k": 3, "threads": 1, "epochs": 2, "linear_epochs": 1,
        "labels": labels, "recluster_every": 1, "loader_workers": 0})
    lines = []
    trainer = Trainer(cfg, None, log=lines.append)
    trainer.init_inter_state()
    assert trainer.plabels.counts().max() == 32  # collapsed: one cluster holds every image
    final = trainer.run()
    warnings = [line for line in lines if line.startswith("warning:") and "degenerate" in line]
    assert len(warnings) == 1
    assert trainer.history[1]["starved_query_ratio"] > 0
    assert np.isfinite(final["loss"])
