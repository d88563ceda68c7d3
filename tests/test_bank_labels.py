"""Memory bank and pseudo-label state."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from study.method.bank import MemoryBank, last_occurrence
from study.core.config import build_config
from study.core.errors import UserError
from study.method.labels import PseudoLabels, _two_means
from study.method.cluster_index import cluster_index


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- memory bank


def test_fill_normalises_and_checks_shape():
    bank = MemoryBank(5, 3)
    raw = torch.randn(5, 3, generator=_gen()) * 4
    bank.fill(raw)
    assert torch.allclose(bank.feats, F.normalize(raw, dim=1))
    with pytest.raises(ValueError):
        bank.fill(torch.randn(4, 3))


def test_update_full_replacement_normalises_and_leaves_other_rows():
    bank = MemoryBank(6, 4)
    bank.fill(torch.randn(6, 4, generator=_gen(1)))
    before = bank.feats.clone()
    new = torch.randn(2, 4, generator=_gen(2)) * 3
    bank.update(torch.tensor([4, 1]), new)
    assert torch.allclose(bank.feats[[4, 1]], F.normalize(new, dim=1))
    untouched = [0, 2, 3, 5]
    assert torch.equal(bank.feats[untouched], before[untouched])


def test_update_with_momentum():
    m = 0.3
    bank = MemoryBank(4, 3, momentum=m)
    bank.fill(torch.randn(4, 3, generator=_gen(3)))
    old = bank.feats[2].clone()
    f = torch.tensor([[2.0, 0.0, 0.0]])
    bank.update(torch.tensor([2]), f)
    expect = F.normalize((1 - m) * old + m * torch.tensor([1.0, 0.0, 0.0]), dim=0)
    assert torch.allclose(bank.feats[2], expect, atol=1e-6)
    assert bank.feats[2].norm().item() == pytest.approx(1.0, abs=1e-6)


def test_update_duplicates_last_write_wins():
    bank = MemoryBank(3, 2)
    bank.fill(torch.ones(3, 2))
    bank.update(torch.tensor([1, 0, 1]), torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
    assert torch.allclose(bank.feats[1], torch.tensor([-1.0, 0.0]))
    assert torch.allclose(bank.feats[0], torch.tensor([0.0, 1.0]))
    assert sorted(last_occurrence(torch.tensor([3, 1, 3, 3, 1])).tolist()) == [3, 4]


def test_bank_state_dict_round_trip():
    a = MemoryBank(5, 3, momentum=0.5)
    a.fill(torch.randn(5, 3, generator=_gen(4)))
    b = MemoryBank(5, 3, momentum=0.5)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.feats, b.feats)
    b.update(torch.tensor([0]), torch.ones(1, 3))  # a copy, not shared storage
    assert not torch.equal(a.feats, b.feats)
    with pytest.raises(ValueError, match="shape"):
        MemoryBank(6, 3).load_state_dict(a.state_dict())


def test_bank_bad_momentum_names_key():
    with pytest.raises(ValueError, match="momentum"):  # the method's own check
        MemoryBank(5, 3, momentum=0.0)
    with pytest.raises(UserError, match="bank_momentum"):  # the user's error, at load
        build_config("smoke", {"bank_momentum": 0.0})


# ---------------------------------------------------------------- pseudo-labels


def _labels_state(b=60, k=4, d=5, seed=0):
    g = _gen(seed)
    pl = PseudoLabels(b, k, d, min_cluster=2)
    feats = F.normalize(torch.randn(b, d, generator=g), dim=1)
    pl.reset(torch.randint(k, (b,), generator=g), torch.randn(k, d, generator=g))
    return pl, feats


def test_relabel_is_argmax_over_centroids_and_reports_change_ratio():
    pl, feats = _labels_state()
    idx = torch.arange(10, 40)
    old = pl.labels.clone()
    ratio = pl.relabel(idx, feats[idx])
    expect = (feats[idx] @ pl.centroids.T).argmax(1)
    assert torch.equal(pl.labels[idx], expect)
    assert ratio == pytest.approx(float((expect != old[idx]).float().mean()))
    rest = torch.cat([torch.arange(0, 10), torch.arange(40, 60)])
    assert torch.equal(pl.labels[rest], old[rest])
    assert pl.relabel(idx, feats[idx]) == 0.0  # idempotent


def test_cluster_index_cached_and_rebuilt_on_change():
    pl, feats = _labels_state()
    first = pl.cluster_index()
    assert pl.cluster_index() is first  # cached
    pl.relabel(torch.arange(60), feats)
    order, starts, counts = pl.cluster_index()
    ref = cluster_index(pl.labels, pl.num_clusters)
    assert torch.equal(counts, ref[2]) and torch.equal(starts, ref[1])
    for c in range(pl.num_clusters):
        members = order[starts[c]:starts[c] + counts[c]]
        assert bool((pl.labels[members] == c).all())
    assert torch.equal(pl.counts(), counts)


def test_relabel_merges_its_changes_into_the_cached_index(monkeypatch):
    # few changes: merged (the same index as a rebuild, a new object, no full sort);
    # more than MERGE_MAX_FRACTION of the bank: rebuilt on the next call
    import study.method.labels as labels_module

    pl, feats = _labels_state()
    pl.cluster_index()
    sorts = []
    real = labels_module.cluster_index
    monkeypatch.setattr(labels_module, "cluster_index", lambda *a: sorts.append(1) or real(*a))
    monkeypatch.setattr(labels_module, "MERGE_MAX_FRACTION", 0.5)
    g = _gen(4)
    for step in range(6):
        idx = torch.randint(60, (12,), generator=g)  # duplicates: the last occurrence wins
        ratio = pl.relabel(idx, F.normalize(torch.randn(12, 5, generator=g), dim=1))
        assert ratio > 0
        order, starts, counts = pl.cluster_index()
        ref = cluster_index(pl.labels, pl.num_clusters)
        assert torch.equal(order, ref[0]) and torch.equal(starts, ref[1]) and torch.equal(counts, ref[2])
    assert sorts == []
    monkeypatch.setattr(labels_module, "MERGE_MAX_FRACTION", 1 / 60)  # at most one change merges
    pl.relabel(torch.arange(60), feats.flip(0))
    assert pl._index is None
    assert torch.equal(pl.cluster_index()[0], cluster_index(pl.labels, pl.num_clusters)[0]) and sorts == [1]


def test_recompute_centroids_member_means_and_empty_keeps_old():
    pl, feats = _labels_state()
    labels = torch.arange(60) % 3  # cluster 3 is empty
    old3 = torch.full((5,), 7.0)
    cents = torch.zeros(4, 5)
    cents[3] = old3
    pl.reset(labels, cents)
    pl.recompute_centroids(feats)
    for c in range(3):
        assert torch.allclose(pl.centroids[c], feats[labels == c].mean(0), atol=1e-6)
    assert torch.equal(pl.centroids[3], old3)


def _small_cluster_world():
    """8 clusters: 0 and 1 are two-blob clusters, 6 has 3 members near 3, 7 is empty."""
    g = _gen(5)
    d = 8
    eye = torch.eye(d)
    sizes = {0: 120, 1: 80, 2: 60, 3: 60, 4: 50, 5: 27, 6: 3}
    means = {
        0: [F.normalize(eye[0] + 0.8 * eye[6], dim=0), F.normalize(eye[0] - 0.8 * eye[6], dim=0)],
        1: [F.normalize(eye[1] + 0.8 * eye[7], dim=0), F.normalize(eye[1] - 0.8 * eye[7], dim=0)],
        2: [eye[2]], 3: [eye[3]], 4: [eye[4]], 5: [eye[5]], 6: [eye[3]],
    }
    feats, labels = [], []
    for c, n in sizes.items():
        centers = torch.stack(means[c])
        pick = torch.arange(n) % len(centers)
        feats.append(centers[pick] + 0.05 * torch.randn(n, d, generator=g))
        labels.append(torch.full((n,), c))
    feats = F.normalize(torch.cat(feats), dim=1)  # (400, 8)
    labels = torch.cat(labels)
    pl = PseudoLabels(400, 8, d, min_cluster=20)
    pl.reset(labels, torch.zeros(8, d))
    pl.recompute_centroids(feats)
    return pl, feats


def test_fix_small_clusters_reassigns_and_reseeds():
    pl, feats = _small_cluster_world()
    tiny = (pl.labels == 6).nonzero().squeeze(1)
    n = pl.fix_small_clusters(feats, _gen(0))
    assert n == 2  # cluster 6 (3 members) and cluster 7 (empty)
    counts = pl.counts()
    assert int(counts.sum()) == 400
    assert int(counts.min()) >= 20
    assert bool((pl.labels[tiny] == 3).all())  # nearest non-small centroid
    # 2-means separated the two blobs of clusters 0 and 1: each side is one blob
    assert sorted(counts.tolist()) == [27, 40, 40, 50, 60, 60, 60, 63]
    for c in range(8):
        if c in (2, 3, 4, 5):
            continue  # not split: centroids are not updated here (as in the reference)
        assert torch.allclose(pl.centroids[c], feats[pl.labels == c].mean(0), atol=1e-5)
    # the index is rebuilt
    order, starts, counts_idx = pl.cluster_index()
    assert torch.equal(counts_idx, counts)
    assert pl.fix_small_clusters(feats, _gen(0)) == 0


def test_split_falls_back_to_random_half_when_two_means_degenerates():
    # the largest cluster has identical features: 2-means cannot split it
    d = 4
    feats = torch.zeros(100, d)
    feats[:60, 0] = 1.0  # cluster 0: 60 identical rows
    feats[60:, 1] = 1.0  # cluster 1: 40 identical rows
    labels = torch.cat([torch.zeros(60, dtype=torch.long), torch.ones(40, dtype=torch.long)])
    pl = PseudoLabels(100, 3, d, min_cluster=10)
    pl.reset(labels, torch.zeros(3, d))
    pl.recompute_centroids(feats)
    assert pl.fix_small_clusters(feats, _gen(1)) == 1
    assert sorted(pl.counts().tolist()) == [30, 30, 40]


def test_two_means_separates_blobs():
    g = _gen(9)
    x = torch.cat([torch.randn(30, 3, generator=g) * 0.1 + 2, torch.randn(50, 3, generator=g) * 0.1 - 2])
    for seed in range(5):
        side = _two_means(x, _gen(seed))
        assert side[:30].unique().numel() == 1 and side[30:].unique().numel() == 1
        assert side[0] != side[30]


def test_labels_state_dict_round_trip_and_mismatch():
    pl, feats = _labels_state()
    other = PseudoLabels(60, 4, 5, min_cluster=2)
    other.load_state_dict(pl.state_dict())
    assert torch.equal(other.labels, pl.labels) and torch.equal(other.centroids, pl.centroids)
    saved = pl.labels.clone()
    assert other.relabel(torch.arange(60), -feats) > 0
    assert torch.equal(pl.labels, saved)  # loading copied, it did not share storage
    with pytest.raises(ValueError, match="clusters"):
        PseudoLabels(60, 5, 5, min_cluster=2).load_state_dict(pl.state_dict())


def test_bad_cluster_settings_name_key_and_allowed():
    with pytest.raises(ValueError) as err:
        PseudoLabels(50, 51, 4)
    assert "num_clusters" in str(err.value) and "1..50" in str(err.value)
    with pytest.raises(ValueError) as err:
        PseudoLabels(100, 10, 4, min_cluster=11)
    assert "min_cluster" in str(err.value) and "allowed: 1..10" in str(err.value)
    PseudoLabels(100, 10, 4, min_cluster=10)  # exactly fits
    # the user's error for the same invariants, once, at load
    with pytest.raises(UserError) as err:
        build_config("smoke", {"train_subset": 50, "batch_size": 10, "num_clusters": 51})
    assert "num_clusters" in str(err.value) and "allowed" in str(err.value)
    with pytest.raises(UserError) as err:
        build_config("smoke", {"train_subset": 100, "batch_size": 10, "num_clusters": 10, "min_cluster": 11})
    assert "min_cluster" in str(err.value) and "allowed: min_cluster <= 10" in str(err.value)
