"""The mechanism metrics (study/train/mechanism.py, evaluation.cluster_recall) against hand-computed
values on tiny cases, and a trained run that logs them (the queue's for MoCo v2 too)."""

from __future__ import annotations

import math

import pytest
import torch

from study.core import names
from study.core.config import build_config
from study.method.model import KeyQueue
from study.train.evaluation import cluster_recall
from study.train.mechanism import (MechanismCounts, class_histogram, class_pair_counts, classes_of,
                                   conditional_kl_from_prior, kl_from_prior,
                                   queue_false_counts, same_class_counts)
from study.train.trainer import Trainer

# 6 training images of 3 classes, the last one unlabelled
TRUTH = torch.tensor([0, 1, 2, 0, 1, -1])


def test_classes_of_marks_no_image_and_no_label():
    idx = torch.tensor([[0, 5, -1], [2, 6, 3]])  # 5: unlabelled; -1: a queue's random key; 6: past the data
    assert classes_of(TRUTH, idx).tolist() == [[0, -1, -1], [2, -1, 0]]


def test_false_negatives_and_class_divergence_of_four_queries():
    # queries of classes 0, 1, 2 and an unlabelled one, 3 drawn negatives each
    query = torch.tensor([0, 1, 2, -1])
    neg = torch.tensor([[0, 1, 1], [1, 1, 2], [0, 0, 0], [1, 2, 0]])
    # by hand: row 0 has 1 of class 0, row 1 has 2 of class 1, row 2 none; row 3 has no labelled query
    assert same_class_counts(query, neg) == (3, 9)
    hist = class_histogram(neg, 3)
    assert hist.tolist() == [5, 5, 2]  # every labelled negative, whatever its query
    # KL(p || uniform), p = (5, 5, 2) / 12: 2 * 5/12 ln(5/4) + 2/12 ln(1/2)
    expected = 2 * 5 / 12 * math.log(1.25) + 2 / 12 * math.log(0.5)
    assert kl_from_prior(hist, torch.tensor([1, 1, 1])) == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx(0.070428, abs=1e-6)
    assert kl_from_prior(torch.tensor([2, 2, 2]), torch.tensor([5, 5, 5])) == 0.0
    assert math.isnan(kl_from_prior(torch.zeros(3, dtype=torch.long), torch.tensor([1, 1, 1])))
    assert kl_from_prior(torch.tensor([1, 0, 1]), torch.tensor([1, 1, 0])) == math.inf


def test_queue_false_counts_equal_the_explicit_pairs():
    query = torch.tensor([0, 1, 2, -1])
    queue = torch.tensor([0, 0, 1, 2, -1])  # classes of the queue's keys (one random key)
    same, labelled = queue_false_counts(query, class_histogram(queue, 3))
    # by hand: class 0 meets 2 of 4 labelled keys, class 1 meets 1, class 2 meets 1: 4 of 3 x 4 pairs
    assert (same, labelled) == (4, 12)
    assert (same, labelled) == same_class_counts(query, queue.expand(4, -1))


def test_positive_precision_and_an_epoch_of_counts():
    counts = MechanismCounts(prior=torch.tensor([2, 2, 1]))
    counts.add_inter(torch.tensor([0, 1]), torch.tensor([[1, 2], [1, 1]]), torch.tensor([0, 2]))
    counts.add_inter(torch.tensor([2, -1]), torch.tensor([[0, 0], [2, 2]]), torch.tensor([2, 1]))
    counts.add_queue(torch.tensor([0, 1]), torch.tensor([0, 1, 1, -1]))
    m = counts.metrics()
    assert m["neg_false_ratio"] == pytest.approx(2 / 6)  # (1: 1, 1) of the 3 labelled queries' 6 negatives
    assert m["pos_precision"] == pytest.approx(2 / 3)  # query 0 -> 0, 1 -> 2, 2 -> 2
    assert m["queue_false_ratio"] == pytest.approx(3 / 6)  # query 0 meets 1 of 3, query 1 meets 2 of 3
    p = torch.tensor([2, 3, 3], dtype=torch.float64) / 8  # negatives' classes 1, 2, 1, 1, 0, 0, 2, 2
    q = torch.tensor([2, 2, 1], dtype=torch.float64) / 5
    assert m["neg_class_kl"] == pytest.approx(float((p * (p / q).log()).sum()), abs=1e-12)
    # given the query's class (query -1 left out): class 0 meets [1, 2], class 1 [1, 1], class 2 [0, 0],
    # each a third of the 6 pairs: KL([0, .5, .5] || q), KL([0, 1, 0] || q), KL([1, 0, 0] || q)
    by_hand = (0.5 * math.log(0.5 / 0.4) + 0.5 * math.log(0.5 / 0.2) + math.log(1 / 0.4) + math.log(1 / 0.4)) / 3
    assert m["neg_class_kl_given_query"] == pytest.approx(by_hand, abs=1e-12)
    assert set(m) <= {x.name for x in names.EPOCH_METRICS}
    assert MechanismCounts(prior=torch.tensor([1, 1])).metrics() == {}


def test_pair_counts_and_the_conditional_divergence_by_hand():
    pairs = class_pair_counts(torch.tensor([0, 1, -1]), torch.tensor([[1, 1, -1], [0, 1, 1], [0, 0, 0]]), 2)
    assert pairs.tolist() == [[0, 2], [1, 2]]  # query 0: two of class 1 (one unlabelled); query 1: 0, 1, 1
    prior = torch.tensor([1, 1])
    # row 0 (2 pairs): KL([0, 1] || [.5, .5]) = ln 2; row 1 (3 pairs): KL([1/3, 2/3] || [.5, .5])
    row1 = (1 / 3) * math.log((1 / 3) / 0.5) + (2 / 3) * math.log((2 / 3) / 0.5)
    assert conditional_kl_from_prior(pairs, prior) == pytest.approx(2 / 5 * math.log(2) + 3 / 5 * row1, abs=1e-12)
    # negatives drawn in proportion to the prior whatever the query: no divergence, pooled or given the query
    assert conditional_kl_from_prior(torch.tensor([[3, 3], [1, 1]]), prior) == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(conditional_kl_from_prior(torch.zeros(2, 2, dtype=torch.long), prior))


def test_cluster_recall_by_hand():
    clusters = torch.tensor([0, 0, 1, 1, 1, 0])
    classes = torch.tensor([0, 0, 0, 1, 1, -1])
    # images 0, 1: 2 of their class's 3 in their cluster; image 2: 1 of 3; images 3, 4: 2 of 2
    assert cluster_recall(clusters, classes) == pytest.approx((2 / 3 + 2 / 3 + 1 / 3 + 1 + 1) / 5)
    assert cluster_recall(torch.tensor([0, 1, 2]), torch.tensor([0, 0, 0])) == pytest.approx(1 / 3)
    assert cluster_recall(torch.tensor([3, 3]), torch.tensor([1, 1])) == 1.0
    assert math.isnan(cluster_recall(torch.tensor([0, 1]), torch.tensor([-1, -1])))


def test_the_queue_keeps_the_images_of_its_keys_and_old_checkpoints_load():
    q = KeyQueue(4, 2)
    assert q.ids.tolist() == [-1, -1, -1, -1]
    q.enqueue(torch.ones(3, 2), torch.tensor([7, 8, 9]))
    q.enqueue(torch.ones(2, 2), torch.tensor([1, 2]))  # wraps: row 3, then row 0
    assert q.ids.tolist() == [2, 8, 9, 1]
    old = {k: v for k, v in q.state_dict().items() if k != "ids"}
    fresh = KeyQueue(4, 2)
    fresh.load_state_dict(old)
    assert fresh.ids.tolist() == [-1, -1, -1, -1] and fresh.ptr == q.ptr


@pytest.mark.parametrize("method", ["interclr", "mocov2"])
def test_a_run_logs_its_mechanisms_every_epoch(method, smoke_data):
    cfg = build_config("smoke", {"threads": 1, "method": method})
    epochs = {}
    Trainer(cfg, None, data=smoke_data, callback=lambda e, m, d: epochs.setdefault(e, m), log=lambda s: None).run()
    last = epochs[max(epochs)]
    assert 0.0 <= last["queue_false_ratio"] <= 1.0 and last["queue_class_kl"] >= 0.0
    inter = {"neg_false_ratio", "neg_class_kl", "pos_precision", "cluster_recall"}
    if method == "interclr":
        assert inter <= set(last)
        assert all(0.0 <= last[k] <= 1.0 for k in ("neg_false_ratio", "pos_precision", "cluster_recall"))
    else:
        assert not inter & set(last)
