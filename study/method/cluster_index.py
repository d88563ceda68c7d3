"""The label-sorted index of the memory bank: each cluster's members contiguous (pure functions of tensors).

Positive sampling draws a query's positive among its cluster's members (study.method.sampling), and the
pseudo-label state keeps this index up to date as labels change (study.method.labels): rebuilt by a
stable sort, or, when a few labels changed on a CPU, merged (:func:`update_cluster_index`).
"""

from __future__ import annotations

import torch
from torch import Tensor

ClusterIndex = tuple[Tensor, Tensor, Tensor]  # (order (B,), starts (k,), counts (k,))


def cluster_index(labels: Tensor, num_clusters: int) -> ClusterIndex:
    """Label-sorted index of the bank, so cluster members are contiguous.

    Args:
        labels: ``(B,)`` long pseudo-labels in ``[0, num_clusters)``.
    Returns:
        ``order (B,)``: bank indices sorted by label (stable);
        ``starts (k,)``: offset of each cluster's first member in ``order``;
        ``counts (k,)``: members per cluster.
        Members of cluster ``c`` are ``order[starts[c] : starts[c] + counts[c]]``.
    """
    # int32 keys: the same stable order, ~40 % faster to sort on a CPU than int64
    order = torch.argsort(labels.to(torch.int32), stable=True)  # (B,)
    counts = torch.bincount(labels, minlength=num_clusters)  # (k,)
    starts = torch.cumsum(counts, 0) - counts  # (k,) exclusive prefix sum
    return order, starts, counts


# Keys of the label-sorted index: (label << 32) | bank index, ascending = the
# stable label order of cluster_index (bank indices < 2^32 fit below the label).
_INDEX_BITS = 32
_INDEX_MASK = (1 << _INDEX_BITS) - 1


def index_keys(labels: Tensor, order: Tensor) -> Tensor:
    """``(B,)`` int64 sorted keys ``labels[order] << 32 | order`` of a :func:`cluster_index` ``order``."""
    return (labels.index_select(0, order).long() << _INDEX_BITS) | order


def update_cluster_index(keys: Tensor, counts: Tensor, idx: Tensor, old: Tensor, new: Tensor
                         ) -> tuple[Tensor, ClusterIndex]:
    """The cluster index after a few labels changed, merged instead of re-sorted.

    Args:
        keys: ``(B,)`` :func:`index_keys` of the index before the change.
        counts: ``(k,)`` members per cluster before the change.
        idx: ``(U,)`` DISTINCT bank indices whose label changed from ``old``
            ``(U,)`` to ``new`` ``(U,)`` (``old != new``).
    Returns:
        ``(keys, (order, starts, counts))`` equal to :func:`index_keys` and
        :func:`cluster_index` of the new labels.

    One copy of ``keys`` (the runs between the U removed and U inserted keys,
    found by binary search) instead of a stable argsort of all B labels:
    ~2 ms against ~12 ms at B = 1.28M on one CPU thread. The events are
    walked in Python, which a GPU would have to synchronise for: on a GPU the
    argsort is cheap, so callers use this on a CPU only.
    """
    removed = torch.searchsorted(keys, (old << _INDEX_BITS) | idx).tolist()  # positions of the old keys
    added = ((new << _INDEX_BITS) | idx).sort().values  # (U,)
    before = torch.searchsorted(keys, added).tolist()  # each new key goes before this position
    # (position, 0 = insert added[j] / 1 = drop the key there, j): at one position the
    # insert comes first (the new key is smaller than the key it is placed before)
    events = sorted([(q, 0, j) for j, q in enumerate(before)] + [(p, 1, 0) for p in removed])
    pieces, cur = [], 0
    for pos, drop, j in events:
        if pos > cur:
            pieces.append(keys[cur:pos])
            cur = pos
        if drop:
            cur = pos + 1
        else:
            pieces.append(added[j:j + 1])
    pieces.append(keys[cur:])
    keys = torch.cat(pieces)  # (B,)
    ones = torch.ones_like(idx)
    counts = counts.clone().index_add_(0, old, -ones).index_add_(0, new, ones)  # (k,)
    starts = torch.cumsum(counts, 0) - counts  # (k,)
    return keys, (keys & _INDEX_MASK, starts, counts)
