"""Tests for study.evaluation: hand-computed cases, slow references, and sklearn/numpy agreement."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from study.train import evaluation
from study.core.errors import UserError
from study.train.evaluation import (
    ari,
    label_change_ratio,
    linear_probe_top1,
    nmi,
    similarity_stats,
    weighted_knn_top1,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _on_circle(degrees: list[float], radius: float = 1.0) -> torch.Tensor:
    """Points (n, 2) at the given angles."""
    rad = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    return (radius * torch.stack([torch.cos(rad), torch.sin(rad)], dim=1)).float()


# ------------------------------------------------------------------ kNN

# class 0 at 0 deg and 180 deg, class 1 at +-60 deg; the test point sits at 0 deg.
# Its 3 nearest: class 0 with cosine 1, class 1 twice with cosine 0.5.
TRAIN = _on_circle([0.0, 180.0, 60.0, -60.0], radius=3.0)  # unnormalised on purpose
TRAIN_Y = torch.tensor([0, 0, 1, 1])
TEST = _on_circle([0.0], radius=0.2)


def test_knn_k1_is_nearest_neighbour():
    assert weighted_knn_top1(TRAIN, TRAIN_Y, TEST, torch.tensor([0]), k=1) == 1.0
    assert weighted_knn_top1(TRAIN, TRAIN_Y, TEST, torch.tensor([1]), k=1) == 0.0


def test_knn_weighting_beats_majority_at_low_temperature():
    # T = 0.1: class 0 scores exp(1/0.1) = 22026 > class 1 scores 2 exp(0.5/0.1) = 297
    assert weighted_knn_top1(TRAIN, TRAIN_Y, TEST, torch.tensor([0]), k=3, temperature=0.1) == 1.0


def test_knn_majority_wins_at_high_temperature():
    # T = 1: class 0 scores e = 2.718 < class 1 scores 2 exp(0.5) = 3.297
    assert math.e < 2 * math.exp(0.5)
    assert weighted_knn_top1(TRAIN, TRAIN_Y, TEST, torch.tensor([1]), k=3, temperature=1.0) == 1.0


def _knn_predict_slow(train, train_y, test, k, temperature, num_classes):
    """Obviously-correct per-sample loop: list of predicted classes."""
    preds = []
    for q in test.tolist():
        sims = []
        for j, t in enumerate(train.tolist()):
            dot = sum(a * b for a, b in zip(q, t))
            norm = math.sqrt(sum(a * a for a in q)) * math.sqrt(sum(b * b for b in t))
            sims.append((dot / norm, j))
        sims.sort(reverse=True)
        scores = [0.0] * num_classes
        for s, j in sims[:k]:
            scores[int(train_y[j])] += math.exp(s / temperature)
        preds.append(max(range(num_classes), key=lambda c: (scores[c], -c)))
    return preds


@pytest.mark.parametrize(("k", "chunk_size"), [(7, 1024), (7, 3), (1000, 4)])
def test_knn_matches_slow_reference(k, chunk_size):
    train = torch.randn(60, 5, generator=_gen(0))
    train_y = torch.randint(0, 4, (60,), generator=_gen(1))
    test = torch.randn(25, 5, generator=_gen(2))
    preds = _knn_predict_slow(train, train_y, test, min(k, 60), 0.5, 4)
    # with the reference's predictions as labels the accuracy must be exactly 1
    labels = torch.tensor(preds)
    acc = weighted_knn_top1(train, train_y, test, labels, k=k, temperature=0.5, num_classes=4, chunk_size=chunk_size)
    assert acc == 1.0
    wrong = (labels + 1) % 4
    assert weighted_knn_top1(train, train_y, test, wrong, k=k, temperature=0.5, num_classes=4) == 0.0


def test_knn_bad_arguments():
    y = torch.tensor([0])
    with pytest.raises(UserError) as info:
        weighted_knn_top1(TRAIN, TRAIN_Y, TEST, y, k=0)
    assert info.value.key == "knn_k"
    with pytest.raises(UserError) as info:
        weighted_knn_top1(TRAIN, TRAIN_Y, TEST, y, temperature=0.0)
    assert info.value.key == "knn_temperature"
    with pytest.raises(ValueError):
        weighted_knn_top1(TRAIN, TRAIN_Y[:3], TEST, y)


# ------------------------------------------------------------------ nmi / ari


def test_nmi_ari_identical_and_renamed():
    a = torch.tensor([0, 0, 1, 1, 2, 2, 2])
    renamed = torch.tensor([5, 5, 9, 9, 1, 1, 1])  # same partition, other ids
    for b in (a, renamed, renamed.numpy()):
        assert nmi(a, b) == pytest.approx(1.0)
        assert ari(a, b) == pytest.approx(1.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nmi_ari_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 7, size=500)
    b = np.where(rng.random(500) < 0.6, a, rng.integers(0, 11, size=500))  # correlated, more ids
    assert nmi(a, b) == pytest.approx(normalized_mutual_info_score(a, b), abs=1e-10)
    assert ari(a, b) == pytest.approx(adjusted_rand_score(a, b), abs=1e-10)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ([3, 3, 3, 3], [1, 1, 1, 1]),  # both one cluster
        ([0, 0, 0, 0], [0, 1, 2, 3]),  # one cluster vs all singletons
        ([0, 1, 2, 3], [3, 2, 1, 0]),  # both all singletons
        ([0, 0, 1, 1], [0, 1, 0, 1]),  # independent
        ([7], [2]),  # a single sample
    ],
)
def test_nmi_ari_degenerate_cases_match_sklearn(a, b):
    assert nmi(a, b) == pytest.approx(normalized_mutual_info_score(a, b), abs=1e-12)
    assert ari(a, b) == pytest.approx(adjusted_rand_score(a, b), abs=1e-12)


# ------------------------------------------------------------------ label change


def test_label_change_ratio_permuted_ids():
    prev = torch.tensor([0, 0, 1, 1, 2, 2])
    cur = torch.tensor([1, 1, 2, 2, 0, 0])  # same clusters, renumbered
    assert label_change_ratio(prev, cur) == 1.0
    assert label_change_ratio(prev, cur, match=True) == 0.0
    assert label_change_ratio(prev, prev) == 0.0


@pytest.mark.parametrize("exact_max", [2000, 0])  # 0 forces the greedy matching
def test_label_change_ratio_hand_computed(monkeypatch, exact_max):
    monkeypatch.setattr(evaluation, "EXACT_MATCH_MAX_CLUSTERS", exact_max)
    prev = np.array([0, 0, 0, 1, 1, 2])
    cur = np.array([5, 5, 7, 7, 7, 5])
    # contingency: prev0 = {5: 2, 7: 1}, prev1 = {7: 2}, prev2 = {5: 1};
    # best one-to-one: 5 -> 0 and 7 -> 1, agreeing on 4 of 6 samples
    assert label_change_ratio(prev, cur, match=True) == pytest.approx(2 / 6)
    assert label_change_ratio(prev, cur) == 1.0
    # unmatched extra ids count as changed: 3 ids in cur, 1 in prev
    assert label_change_ratio(np.zeros(4, dtype=int), np.array([0, 1, 1, 2]), match=True) == pytest.approx(2 / 4)


def test_label_change_greedy_equals_exact_with_clear_majorities(monkeypatch):
    g = _gen(3)
    prev = torch.randint(0, 50, (3000,), generator=g)
    perm = torch.randperm(50, generator=g)
    cur = perm[prev]
    noisy = torch.rand(3000, generator=g) < 0.2
    cur[noisy] = torch.randint(0, 50, (int(noisy.sum()),), generator=g)
    exact = label_change_ratio(prev, cur, match=True)
    monkeypatch.setattr(evaluation, "EXACT_MATCH_MAX_CLUSTERS", 0)
    assert label_change_ratio(prev, cur, match=True) == pytest.approx(exact)
    assert 0.1 < exact < 0.25  # about 20 % relabelled, minus those that hit their own id


# ------------------------------------------------------------------ similarity stats


def test_similarity_stats_match_numpy():
    sims = torch.rand(100, 37, generator=_gen(4)) * 2 - 1
    stats = similarity_stats(sims, prefix="neg")
    ref = sims.double().numpy().ravel()
    assert set(stats) == {"neg_mean", "neg_std", "neg_q05", "neg_q25", "neg_q50", "neg_q75", "neg_q95"}
    assert stats["neg_mean"] == pytest.approx(ref.mean(), abs=1e-6)
    assert stats["neg_std"] == pytest.approx(ref.std(), abs=1e-6)
    for q in (5, 25, 50, 75, 95):
        assert stats[f"neg_q{q:02d}"] == pytest.approx(np.quantile(ref, q / 100), abs=1e-6)


def test_similarity_stats_subsamples_deterministically(monkeypatch):
    monkeypatch.setattr(evaluation, "QUANTILE_MAX_VALUES", 5000)
    sims = torch.rand(200, 500, generator=_gen(5))  # 100k uniform values
    a = similarity_stats(sims)
    assert a == similarity_stats(sims)
    assert a["neg_sim_q50"] == pytest.approx(0.5, abs=0.03)
    assert a["neg_sim_q95"] == pytest.approx(0.95, abs=0.03)
    assert a["neg_sim_mean"] == pytest.approx(float(sims.mean()), abs=1e-6)  # mean uses every value


# ------------------------------------------------------------------ linear probe


def _gaussian_classes(n: int, d: int, num_classes: int, spread: float, seed: int):
    g = _gen(seed)
    means = spread * torch.randn(num_classes, d, generator=g)  # (C, d)
    y = torch.randint(0, num_classes, (n,), generator=g)
    x = means[y] + torch.randn(n, d, generator=g)
    return 10 * x + 3, y  # scaled and shifted: the probe standardises


def test_linear_probe_separable_data():
    x, y = _gaussian_classes(3000, 20, 4, spread=3.0, seed=6)
    acc = linear_probe_top1(x[:2000], y[:2000], x[2000:], y[2000:], num_classes=4, epochs=20, generator=_gen(0))
    assert acc > 0.95


def test_linear_probe_random_labels_near_chance():
    x, _ = _gaussian_classes(3000, 20, 4, spread=3.0, seed=7)
    y = torch.randint(0, 4, (3000,), generator=_gen(8))
    acc = linear_probe_top1(x[:2000], y[:2000], x[2000:], y[2000:], num_classes=4, epochs=20, generator=_gen(0))
    assert abs(acc - 0.25) < 0.06


def test_linear_probe_deterministic_and_leaves_inputs():
    x, y = _gaussian_classes(600, 8, 3, spread=1.0, seed=9)
    x_before = x.clone()
    args = (x[:400], y[:400], x[400:], y[400:])
    a = linear_probe_top1(*args, num_classes=3, epochs=5, batch_size=64, generator=_gen(1))
    with torch.no_grad():  # a caller inside no_grad still trains
        b = linear_probe_top1(*args, num_classes=3, epochs=5, batch_size=64, generator=_gen(1))
    assert a == b
    assert torch.equal(x, x_before)


def test_linear_probe_bad_arguments():
    x, y = torch.randn(10, 3), torch.zeros(10, dtype=torch.long)
    cases = [({"epochs": 0}, "probe_epochs"), ({"lr": 0.0}, "probe_lr"), ({"num_classes": 0}, "num_classes")]
    for kwargs, key in cases:
        args = {"num_classes": 2, **kwargs}
        with pytest.raises(UserError) as info:
            linear_probe_top1(x, y, x, y, **args)
        assert info.value.key == key
