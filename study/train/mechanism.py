"""The mechanisms behind the paper's findings, measured against the true classes (never used by training).

Section 4 of the paper explains its findings by mechanisms: semi-hard negatives are "more reliable
and unbiased" than hard ones (Sec. 4.2), online labels converge faster because their positives are
better (Sec. 4.1). Each statistic here turns one of these words into a count on the training set's
ground-truth classes (``-1``: an unlabelled image, left out of every count):

- *reliable*: the share of the sampled negatives whose true class is the query's (false negatives);
- *unbiased*: the KL divergence (nats) of the sampled negatives' class distribution from the class
  prior of the training set; 0 when the negatives are drawn in proportion to the classes. Pooled over
  the queries this hides a bias that differs by query (hard negatives of a shirt are T-shirts, of a
  sneaker sandals): the conditional divergence, of the negatives' classes given the query's class,
  averaged over the query classes, shows it;
- *positive quality*: the share of the inter-image positives (same pseudo-label) of the query's true
  class (precision), and the share of the query's true-class images its cluster holds (recall,
  :func:`study.train.evaluation.cluster_recall`).

Pure functions of small tensors, summed over an epoch by :class:`MechanismCounts`; one gather of
labels and one ``bincount`` per step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor


def classes_of(truth: Tensor, idx: Tensor) -> Tensor:
    """The true classes of images ``idx`` (any shape) from ``truth`` (N,); -1 where there is no label or
    no training image (-1, as a queue's initial random keys, or past N, as a benchmark's larger bank).
    Same shape as ``idx``."""
    image = (idx >= 0) & (idx < truth.numel())
    return torch.where(image, truth[idx.clamp(0, truth.numel() - 1)], torch.full_like(idx, -1))


def same_class_counts(query_cls: Tensor, other_cls: Tensor) -> tuple[int, int]:
    """(same, labelled): of the pairs (query i, entry j) of ``query_cls`` (n,) and ``other_cls`` (n, K)
    (or (n,) for one entry per query) where both are labelled, how many share the class."""
    q = query_cls.reshape(-1, 1)  # (n, 1)
    o = other_cls.reshape(q.shape[0], -1)  # (n, K)
    both = (q >= 0) & (o >= 0)  # (n, K)
    return int(((q == o) & both).sum()), int(both.sum())


def class_histogram(cls: Tensor, num_classes: int) -> Tensor:
    """(C,) int64 counts of the labelled entries of ``cls`` (any shape; -1 left out)."""
    flat = cls.reshape(-1)
    return torch.bincount(flat[flat >= 0], minlength=num_classes)[:num_classes].to(torch.int64)


def queue_false_counts(query_cls: Tensor, queue_hist: Tensor) -> tuple[int, int]:
    """(same, labelled) over every (query, queue key) pair, from the queue's class histogram ``queue_hist``
    (C,): the queue's negatives of the query's class, without the (n, K) gather of its classes."""
    q = query_cls[query_cls >= 0]  # (n',)
    return int(queue_hist[q].sum()), int(q.numel() * int(queue_hist.sum()))


def kl_from_prior(counts: Tensor, prior: Tensor) -> float:
    """KL(p || q) in nats of the distribution ``p`` = counts / sum (C,) from the prior ``q`` = prior / sum
    (C,); NaN when ``counts`` is all zeros. Classes with ``p`` = 0 add nothing; a class the prior never
    holds but ``p`` does gives +inf (it cannot happen for classes drawn from the same training set)."""
    total = float(counts.sum())
    if total == 0:
        return math.nan
    p = counts.double() / total
    q = prior.double() / float(prior.sum())
    held = p > 0
    if bool((q[held] == 0).any()):
        return math.inf
    return float((p[held] * (p[held] / q[held]).log()).sum())


def class_pair_counts(query_cls: Tensor, other_cls: Tensor, num_classes: int) -> Tensor:
    """(C, C) int64 counts of the pairs (query i, entry j) of ``query_cls`` (n,) and ``other_cls`` (n, K) where
    both are labelled, by [query's class, entry's class]."""
    q = query_cls.reshape(-1, 1).expand(-1, other_cls.reshape(query_cls.numel(), -1).shape[1])  # (n, K)
    o = other_cls.reshape(q.shape)  # (n, K)
    both = (q >= 0) & (o >= 0)
    pair = q[both] * num_classes + o[both]  # (pairs,) flat index into the (C, C) table
    return torch.bincount(pair, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def conditional_kl_from_prior(pairs: Tensor, prior: Tensor) -> float:
    """sum_c w_c KL(p(. | c) || q) in nats: ``pairs`` (C, C) counts [query class c, entry class], p(. | c)
    its row c normalised, w_c the row's share of all pairs, q = prior / sum (C,). NaN without a pair."""
    total = float(pairs.sum())
    if total == 0:
        return math.nan
    rows = pairs.sum(dim=1)  # (C,)
    return sum(float(rows[c]) / total * kl_from_prior(pairs[c], prior) for c in range(pairs.shape[0]) if rows[c] > 0)


@dataclass
class MechanismCounts:
    """One epoch's sums of the mechanism counts (this process's queries), turned into metrics at its end.

    ``prior``: (C,) class counts of the labelled training images.
    """

    prior: Tensor
    neg_same: int = 0
    neg_labelled: int = 0
    neg_hist: Tensor | None = None  # (C,)
    neg_pairs: Tensor | None = None  # (C, C) [query class, negative class]
    pos_same: int = 0
    pos_labelled: int = 0
    queue_same: int = 0
    queue_labelled: int = 0
    queue_hist: Tensor | None = None  # (C,)
    _steps: int = field(default=0, repr=False)

    def _add_hist(self, have: Tensor | None, new: Tensor) -> Tensor:
        return new.cpu() if have is None else have + new.cpu()

    def add_queue(self, query_cls: Tensor, queue_cls: Tensor) -> None:
        """The intra-image negatives of one step: queries' classes (n,), the queue's (K,)."""
        hist = class_histogram(queue_cls, self.prior.numel())  # (C,)
        same, labelled = queue_false_counts(query_cls, hist)
        self.queue_same += same
        self.queue_labelled += labelled
        self.queue_hist = self._add_hist(self.queue_hist, hist)

    def add_inter(self, query_cls: Tensor, neg_cls: Tensor, pos_cls: Tensor) -> None:
        """The inter-image sample of one step: queries' classes (n,), negatives' (n, K), positives' (n,)."""
        same, labelled = same_class_counts(query_cls, neg_cls)
        self.neg_same += same
        self.neg_labelled += labelled
        self.neg_hist = self._add_hist(self.neg_hist, class_histogram(neg_cls, self.prior.numel()))
        self.neg_pairs = self._add_hist(self.neg_pairs, class_pair_counts(query_cls, neg_cls, self.prior.numel()))
        same, labelled = same_class_counts(query_cls, pos_cls)
        self.pos_same += same
        self.pos_labelled += labelled

    def metrics(self) -> dict[str, float]:
        """The epoch's metrics (names of study/core/names.py); a statistic without a labelled pair is left out."""
        out = {}
        if self.queue_labelled:
            out["queue_false_ratio"] = self.queue_same / self.queue_labelled
            out["queue_class_kl"] = kl_from_prior(self.queue_hist, self.prior)
        if self.neg_labelled:
            out["neg_false_ratio"] = self.neg_same / self.neg_labelled
            out["neg_class_kl"] = kl_from_prior(self.neg_hist, self.prior)
            out["neg_class_kl_given_query"] = conditional_kl_from_prior(self.neg_pairs, self.prior)
        if self.pos_labelled:
            out["pos_precision"] = self.pos_same / self.pos_labelled
        return out
