"""Pseudo-label state of the inter-image branch: one label per image, k centroids.

Paper / reference (online maintenance, the paper's first finding):

- start from k-means on the whole training set (:meth:`PseudoLabels.reset`);
- after each iteration's bank write, relabel the batch's samples by argmax
  over centroids (:meth:`PseudoLabels.relabel`);
- recompute every centroid as the MEAN of its members' bank features (not
  renormalised) every few iterations (:meth:`PseudoLabels.recompute_centroids`);
- clusters with fewer than ``min_cluster`` members are emptied into the
  nearest large cluster and re-seeded by splitting the largest cluster in
  two (:meth:`PseudoLabels.fix_small_clusters`).

:meth:`PseudoLabels.after_iteration` runs these in the reference's order and
schedule: relabel; every ``centroid_every`` iterations the recompute; then,
after EVERY iteration, the small-cluster fix.

Initial centroids (both modes) and the centroids after an offline
re-clustering are the member means of the k-means labels over the bank
(:meth:`PseudoLabels.assign`), not k-means' last-update centroids. Offline
maintenance replaces the labels only (the reference's ``assign_label``): the
bank keeps the features written during training.

The label-sorted :meth:`PseudoLabels.cluster_index` (for positive sampling)
is cached and rebuilt only after the labels changed through this class; on
a CPU, the few labels a relabel changes are merged into it instead
(:func:`study.method.cluster_index.update_cluster_index`, the same index).
Writing ``labels`` directly bypasses that: call :meth:`PseudoLabels.reset`.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from study.method.bank import last_occurrence
from study.method.cluster_index import ClusterIndex, cluster_index, index_keys, update_cluster_index

# Lloyd iterations of the 2-means that splits the largest cluster; the split
# only has to seed a new cluster, later relabelling refines it.
TWO_MEANS_ITERS = 10

# A relabel that changed at most this fraction of the bank merges its changes
# into the cached cluster index (CPU); more changes, or a GPU, rebuild it.
# Measured on one CPU thread: the merge costs ~2 us per changed label (its
# Python walk) plus one copy of the index, the rebuild ~9 ns per bank entry:
# the merge wins below about one change per 500 entries (a 256-batch at
# 1.28M: ~2 ms against ~12 ms; at 60k the rebuild, 0.3 ms, wins).
MERGE_MAX_FRACTION = 1 / 512

# Rows per block when reassigning members of small clusters (bounds the
# (rows x clusters) score matrix).
_REASSIGN_CHUNK = 4096


def _two_means(x: Tensor, generator: torch.Generator, iters: int = TWO_MEANS_ITERS) -> Tensor:
    """Euclidean 2-means of ``x`` (M >= 2 rows), k-means++ seeded.

    The first seed is a uniform member, the second is drawn with probability
    proportional to the squared distance from the first (k-means++, as
    sklearn's KMeans in the reference): two seeds in the same mode would
    often leave Lloyd splitting along noise.

    Args:
        x: ``(M, d)`` features.
    Returns:
        ``(M,)`` bool: True for the second side. A side may be empty
        (e.g. all rows identical); the caller handles that.
    """
    m = x.shape[0]
    first = int(torch.randint(m, (1,), generator=generator, device=generator.device))
    d2 = ((x - x[first]) ** 2).sum(1)  # (M,)
    if not bool((d2 > 0).any()):
        return torch.zeros(m, dtype=torch.bool, device=x.device)  # all rows identical
    second = torch.multinomial(d2.to(generator.device), 1, generator=generator).to(x.device)  # (1,)
    centers = torch.cat([x[first:first + 1], x[second]])  # (2, d)
    side = torch.zeros(m, dtype=torch.bool, device=x.device)
    for _ in range(iters):
        # argmin ||x - c||^2 = argmin ||c||^2 - 2 x.c (||x||^2 is common to both)
        dist = (centers * centers).sum(1) - 2.0 * x @ centers.T  # (M, 2)
        new_side = dist[:, 1] < dist[:, 0]  # (M,) ties go to the first side
        n1 = int(new_side.sum())
        if n1 == 0 or n1 == m:
            return new_side
        if torch.equal(new_side, side):
            break
        side = new_side
        w = torch.stack([~side, side]).to(x.dtype)  # (2, M) membership
        centers = (w @ x) / w.sum(1, keepdim=True)  # (2, d) side means
    return side


def _random_half(m: int, generator: torch.Generator, device: torch.device) -> Tensor:
    """``(m,)`` bool with a uniformly random ``m - m // 2`` rows True."""
    perm = torch.randperm(m, generator=generator, device=generator.device).to(device)
    side = torch.zeros(m, dtype=torch.bool, device=device)
    side[perm[m // 2:]] = True
    return side


class PseudoLabels:
    """Pseudo-labels ``(B,)`` and centroids ``(k, d)`` of the memory bank.

    Attributes:
        labels: ``(B,)`` long, the cluster of each training image.
        centroids: ``(k, d)`` float, member means of bank features.
        num_clusters, min_cluster: the settings.
    """

    def __init__(self, num_samples: int, num_clusters: int, dim: int, min_cluster: int = 20,
                 device: Optional[torch.device | str] = None):
        if not 1 <= num_clusters <= num_samples:
            raise ValueError(f"pseudo-labels: num_clusters must be in 1..{num_samples}, the dataset size "
                             f"(got {num_clusters})")
        if min_cluster < 1 or min_cluster * num_clusters > num_samples:
            raise ValueError(
                f"pseudo-labels: min_cluster * num_clusters must not exceed the dataset size {num_samples} "
                f"(got {min_cluster} * {num_clusters}; min_cluster allowed: 1..{num_samples // num_clusters})")
        self.num_samples = int(num_samples)
        self.num_clusters = int(num_clusters)
        self.dim = int(dim)
        self.min_cluster = int(min_cluster)
        # Placeholder state until reset() gets k-means: round-robin labels, so
        # every cluster is non-empty and the cluster index is valid.
        self.labels = torch.arange(self.num_samples, device=device) % self.num_clusters  # (B,)
        self.centroids = torch.zeros(self.num_clusters, self.dim, device=device)  # (k, d)
        self._index: Optional[ClusterIndex] = None
        self._keys: Optional[Tensor] = None  # (B,) index_keys of _index (CPU only), for merging

    @property
    def device(self) -> torch.device:
        return self.labels.device

    def _labels_changed(self) -> None:
        self._index = None
        self._keys = None

    # ---- state from outside (k-means, checkpoints)

    @torch.no_grad()
    def reset(self, labels: Tensor, centroids: Tensor) -> None:
        """Replace labels ``(B,)`` and centroids ``(k, d)`` (e.g. a k-means result)."""
        if tuple(labels.shape) != (self.num_samples,):
            raise ValueError(f"pseudo-labels: labels must have shape ({self.num_samples},), got {tuple(labels.shape)}")
        if tuple(centroids.shape) != (self.num_clusters, self.dim):
            raise ValueError(f"pseudo-labels: centroids must have shape ({self.num_clusters}, {self.dim}), "
                             f"got {tuple(centroids.shape)}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_clusters):
            raise ValueError(f"pseudo-labels: labels must lie in 0..{self.num_clusters - 1}")
        self.labels = labels.to(device=self.device, dtype=torch.long).clone()
        self.centroids = centroids.to(device=self.device, dtype=self.centroids.dtype).clone()
        self._labels_changed()

    @torch.no_grad()
    def assign(self, labels: Tensor, bank_feats: Tensor, fallback_centroids: Tensor) -> None:
        """New labels ``(B,)``; centroids = their member means over ``bank_feats`` ``(B, d)``.

        The reference's initialisation and offline ``assign_label``: the bank is
        not touched. A cluster with no member keeps ``fallback_centroids[c]``
        (``(k, d)``, e.g. k-means' own centroids).
        """
        self.reset(labels, fallback_centroids)
        self.recompute_centroids(bank_feats)

    @torch.no_grad()
    def after_iteration(self, iteration: int, idx: Tensor, bank_feats: Tensor, generator: torch.Generator,
                        centroid_every: int) -> tuple[float, int]:
        """Online upkeep after iteration ``iteration`` (1-based) wrote its keys into the bank.

        The reference's order: relabel the batch ``idx`` ``(M,)`` with its new
        bank rows; if ``iteration % centroid_every == 0`` recompute every
        centroid; then, after every iteration, :meth:`fix_small_clusters`.

        Returns:
            (fraction of the batch relabelled, clusters re-seeded).
        """
        changed = self.relabel(idx, bank_feats[idx])
        if iteration % centroid_every == 0:
            self.recompute_centroids(bank_feats)
        return changed, self.fix_small_clusters(bank_feats, generator)

    def state_dict(self) -> dict[str, Any]:
        """Checkpoint state: labels, centroids and the settings."""
        return {"labels": self.labels, "centroids": self.centroids,
                "num_clusters": self.num_clusters, "min_cluster": self.min_cluster}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` (shapes must match this run)."""
        if state["centroids"].shape[0] != self.num_clusters or state["labels"].shape[0] != self.num_samples:
            raise ValueError(
                f"pseudo-labels: the checkpoint has {state['labels'].shape[0]} labels and "
                f"{state['centroids'].shape[0]} clusters, this run needs {self.num_samples} and "
                f"{self.num_clusters}; was it made with another dataset or num_clusters?"
            )
        self.reset(state["labels"], state["centroids"])

    # ---- queries

    def counts(self) -> Tensor:
        """``(k,)`` long, members per cluster."""
        return torch.bincount(self.labels, minlength=self.num_clusters)

    def cluster_index(self) -> ClusterIndex:
        """``(order, starts, counts)`` of :func:`study.method.cluster_index.cluster_index`, cached."""
        if self._index is None:
            self._index = cluster_index(self.labels, self.num_clusters)
            if self.device.type == "cpu":
                self._keys = index_keys(self.labels, self._index[0])
        return self._index

    # ---- online maintenance

    @torch.no_grad()
    def relabel(self, idx: Tensor, feats: Tensor) -> float:
        """Online relabel: ``labels[idx] = argmax_c centroids[c] . feats``.

        Args:
            idx: ``(M,)`` training-set indices.
            feats: ``(M, d)`` their features (normally their new bank rows).
        Returns:
            Fraction of the (distinct) samples whose label changed.
        Duplicated indices: the last occurrence wins, as in ``MemoryBank.update``.
        """
        idx = idx.to(self.device)
        keep = last_occurrence(idx)  # (U,)
        idx = idx[keep]
        feats = feats.detach()[keep.to(feats.device)].to(device=self.device, dtype=self.centroids.dtype)
        new = (feats @ self.centroids.T).argmax(1)  # (U,)
        moved = new != self.labels[idx]  # (U,)
        changed = int(moved.sum())
        if changed:
            if self._keys is not None and changed <= MERGE_MAX_FRACTION * self.num_samples:
                rows = idx[moved]  # (M,) distinct
                self._keys, self._index = update_cluster_index(self._keys, self._index[2], rows,
                                                               self.labels[rows], new[moved])
            else:
                self._labels_changed()
            self.labels[idx] = new
        return changed / max(1, idx.shape[0])

    @torch.no_grad()
    def recompute_centroids(self, bank_feats: Tensor) -> None:
        """Centroids = member means of ``bank_feats`` ``(B, d)``; empty clusters keep theirs."""
        # member sums through the (cached) label-sorted index: one embedding_bag reads each
        # member row once in cluster order; ~6x faster on a CPU than index_add_ at 1.28M rows
        # (the summation order, members in index order, is the same)
        order, starts, counts = self.cluster_index()
        sums = torch.nn.functional.embedding_bag(order, bank_feats.to(self.centroids), offsets=starts,
                                                 mode="sum")  # (k, d); empty clusters 0
        filled = counts > 0
        self.centroids[filled] = sums[filled] / counts[filled].unsqueeze(1).to(sums.dtype)

    @torch.no_grad()
    def _reassign_members(self, small: Tensor, bank_feats: Tensor) -> None:
        """Move every member of a ``small`` (k,) bool cluster to its nearest non-small cluster."""
        members = small[self.labels].nonzero().squeeze(1)  # (R,)
        large = (~small).nonzero().squeeze(1)  # (L,)
        cents = self.centroids[large]  # (L, d)
        for start in range(0, members.shape[0], _REASSIGN_CHUNK):
            rows = members[start:start + _REASSIGN_CHUNK]
            scores = bank_feats[rows].to(cents) @ cents.T  # (r, L) dot product, as in relabel
            self.labels[rows] = large[scores.argmax(1)]

    @torch.no_grad()
    def _split_largest(self, target: int, counts: Tensor, bank_feats: Tensor, generator: torch.Generator) -> None:
        """Split the largest cluster in two; its second half becomes cluster ``target``.

        ``counts`` ``(k,)`` is updated in place. Both centroids are recomputed
        as member means.
        """
        largest = int(counts.argmax())
        members = (self.labels == largest).nonzero().squeeze(1)  # (M,)
        m = members.shape[0]
        x = bank_feats[members].to(self.centroids)  # (M, d)
        side = _two_means(x, generator)  # (M,)
        n1 = int(side.sum())
        # Departure: the reference falls back to a random split only when
        # 2-means leaves a side empty. We also fall back when a side would be
        # below min_cluster (when the cluster is big enough for two such
        # sides): that side would only be emptied again at the next call.
        need = max(1, min(self.min_cluster, m // 2))
        if min(n1, m - n1) < need:
            side = _random_half(m, generator, x.device)
            n1 = int(side.sum())
        self.labels[members[side]] = target
        self.centroids[largest] = x[~side].mean(0)
        self.centroids[target] = x[side].mean(0)
        counts[largest] = m - n1
        counts[target] = n1

    @torch.no_grad()
    def fix_small_clusters(self, bank_feats: Tensor, generator: torch.Generator) -> int:
        """Empty clusters below ``min_cluster`` members and re-seed them by splitting.

        1. every member of a small cluster (fewer than ``min_cluster``
           members, empty ones included) moves to the nearest (max dot
           product with the centroid) NON-small cluster;
        2. each emptied cluster, in label order, is re-seeded by splitting
           the currently largest cluster in two with a 2-means on its bank
           features (random half split as fallback); the second half takes
           the emptied cluster's label, both centroids are recomputed.

        As in the reference, centroids of the clusters that received members
        in step 1 are not updated here (the periodic
        :meth:`recompute_centroids` does it). The total count is preserved.
        No loop over samples; one loop over the small clusters.

        Args:
            bank_feats: ``(B, d)`` memory bank features.
            generator: draws the 2-means seeds and fallback splits.
        Returns:
            Number of clusters re-seeded.
        """
        # the cached index holds the counts: no bincount of the bank on the usual no-op call
        counts = self._index[2] if self._index is not None else self.counts()  # (k,)
        small = counts < self.min_cluster  # (k,)
        targets = small.nonzero().squeeze(1).tolist()
        if not targets:
            return 0
        # min_cluster * k <= B guarantees some cluster has >= min_cluster members.
        self._reassign_members(small, bank_feats)
        counts = self.counts()
        for target in targets:
            self._split_largest(target, counts, bank_feats, generator)
        self._labels_changed()
        return len(targets)
