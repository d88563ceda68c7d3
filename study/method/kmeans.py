"""Euclidean k-means (Lloyd) in torch, for pseudo-label initialisation.

The inter-image branch starts from k-means on the features of the whole
training set (reference: k = 10,000 on ImageNet, 20 iterations) and, in
offline mode, re-runs it every few epochs. This module is that k-means: it
runs on the device of its input, keeps the memory bounded by working on
``chunk_size`` rows at a time, and is deterministic given a generator.

Speed notes (why the code looks the way it does):

* squared distance ``||x||^2 - 2 x.c + ||c||^2``: the ``||x||^2`` term does
  not change the argmin, so the assignment only needs
  ``||c||^2 - 2 x.c``, one fused ``addmm`` per chunk (no ``cdist``);
  ``||x||^2`` is computed once and only added back for the inertia;
* the distance block of a chunk is written into one reused buffer; on a
  CPU, with many clusters, the block is kept cache-sized (a few hundred
  rows) and its row-wise argmin is taken in two levels: the vectorised
  ``amin`` of groups of ~512 columns, then ``argmin`` inside each row's
  best group. ``torch.min(dim=1)`` with indices is a scalar loop, 16 % of
  an assignment at k = 10,000 (bench/RESULTS.md, section 3); the two-level
  form gives the same labels (first index of the minimum) in about a
  quarter of that;
* the centroid update is one ``index_add_`` and one ``bincount``: no
  Python loop over points or clusters.

Initialisation choices ("k-means++", "random", "auto") and empty-cluster
handling are documented on :func:`kmeans`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor


INIT_METHODS = ("auto", "k-means++", "random")

# "auto" picks k-means++ up to this many clusters and random beyond: k-means++
# is sequential in k (one pass over its sample of 40 k points per centroid),
# so its cost grows as k^2 (about 1 s at k = 1000 on 2 CPU cores) and at
# k = 10,000 it would cost more than the whole Lloyd run. Random init is free
# and ended 2 % above k-means++ in inertia (200k points, k = 1000, 20 iters).
AUTO_KMEANSPP_MAX_K = 1024

# Two-level argmin (CPU): columns per group, used when k > 2 groups' worth.
ARGMIN_GROUP = 512
# ... with distance blocks of about this many floats (8 MB: in the last-level
# cache), and never fewer rows than this (fewer rows make the GEMM slower).
CPU_BLOCK_FLOATS = 1 << 21
CPU_MIN_ROWS = 256

# k-means++ runs on a random subsample of max(KMEANSPP_MIN_SAMPLE,
# KMEANSPP_POINTS_PER_CLUSTER * k) points (or all of them if fewer): enough
# points per cluster for D^2 sampling to find the modes, small enough that
# the k sequential passes stay cheap next to Lloyd on all N points. Measured
# on 60k normalised points in 200 blobs, k = 100, 20 iterations: seeding on
# all points ended at inertia 33,684, on 4,000 points at 33,889, random
# init at 34,463; the 4,000-point seeding costs ~15 ms, all points ~200 ms.
KMEANSPP_MIN_SAMPLE = 2_000
KMEANSPP_POINTS_PER_CLUSTER = 40


@dataclass
class KMeansResult:
    """Output of :func:`kmeans`.

    Attributes:
        centroids: (k, d) float32, the final centroids.
        labels: (N,) long, index of the nearest final centroid of each point.
        inertia: sum over points of the squared distance to the assigned
            centroid, for ``labels`` and ``centroids`` as returned.
        n_iter: number of centroid updates performed (<= ``iters``; fewer
            when the assignment stopped changing or ``tol`` was reached).
        history: inertia after each assignment step, starting with the
            assignment to the initial centroids (length ``n_iter + 1``);
            Lloyd guarantees it is non-increasing, up to float rounding.
    """

    centroids: Tensor
    labels: Tensor
    inertia: float
    n_iter: int
    history: list[float] = field(default_factory=list)


def kmeans(
    x: Tensor,
    k: int,
    iters: int = 20,
    init: str | Tensor = "auto",
    generator: torch.Generator | None = None,
    chunk_size: int = 8192,
    tol: float = 0.0,
) -> KMeansResult:
    """Cluster ``x`` into ``k`` groups with Lloyd's algorithm (squared L2).

    Args:
        x: (N, d) points, any float dtype; computed in float32 on x.device.
        k: number of clusters, 1 <= k <= N.
        iters: maximum number of Lloyd iterations (assign + update), >= 1.
        init: "k-means++" (greedy D^2 sampling, 2 + ln k candidates per
            step as in scikit-learn, on a random subsample of
            max(2,000, 40 k) points when N is larger),
            "random" (k distinct points drawn uniformly, as faiss does),
            "auto" (k-means++ for k <= 1024, random above), or a (k, d)
            tensor of initial centroids (used as given, e.g. to warm-start
            from the previous clustering).
        generator: CPU ``torch.Generator`` for every random draw (sampling
            is done on the CPU and the indices moved to x.device, so results
            do not depend on the device RNG). None uses the global CPU RNG.
        chunk_size: at most this many rows of ``x`` per distance block
            (``rows * k`` float32). On a GPU the block has ``chunk_size``
            rows (328 MB at k = 10,000 with the default); on a CPU with
            k > 1024 it has max(256, 2^21 / k) rows, so that it stays in
            the cache.
        tol: stop early when an iteration lowers the inertia by less than
            ``tol`` times its previous value. With 0.0 the run stops early
            only when no label changes (exact convergence).

    Returns:
        :class:`KMeansResult`; ``labels`` and ``inertia`` refer to the
        returned centroids (a final assignment follows the last update).

    Empty clusters: after each assignment, every cluster that received no
    point is re-seeded at one of the points farthest from their assigned
    centroid (distinct points, largest squared distance first), and those
    points are taken out of their old clusters' means. The re-seeded
    centroid sits on a data point, so with N >= k distinct points it owns
    at least that point at the next assignment and no cluster stays empty.
    (With duplicated points ties can still leave a cluster empty; argmin
    breaks ties towards the lower cluster index.)
    """
    _check_args(x, k, iters, init, chunk_size, tol)
    with torch.no_grad():
        x = x.detach().to(torch.float32).contiguous()  # (N, d)
        x_sq = (x * x).sum(dim=1)  # (N,), fixed for the whole run
        centroids = _initial_centroids(x, x_sq, k, init, generator)  # (k, d)
        assigner = _Assigner(x, x_sq, k, chunk_size)

        labels, dist = assigner(centroids)  # (N,), (N,)
        history = [_inertia(dist)]
        n_iter = 0
        for _ in range(iters):
            centroids = _update_centroids(x, labels, dist, centroids)
            new_labels, dist = assigner(centroids)
            history.append(_inertia(dist))
            n_iter += 1
            changed = bool((new_labels != labels).any())
            labels = new_labels
            if not changed:
                break  # same labels -> same means: a fixed point
            if tol > 0 and history[-2] - history[-1] <= tol * history[-2]:
                break
    return KMeansResult(
        centroids=centroids, labels=labels, inertia=history[-1], n_iter=n_iter, history=history
    )


def _check_args(x: Tensor, k: int, iters: int, init: str | Tensor, chunk_size: int, tol: float) -> None:
    """Raise ValueError for a bad argument or bad data (the config checks its keys at load)."""
    if x.dim() != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"kmeans expects a non-empty (N, d) tensor, got shape {tuple(x.shape)}")
    n = x.shape[0]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"kmeans: k must be an integer from 1 to the number of points ({n}), got {k!r}")
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise ValueError(f"kmeans: iters must be an integer >= 1, got {iters!r}")
    if isinstance(init, Tensor):
        if tuple(init.shape) != (k, x.shape[1]):
            raise ValueError(f"kmeans: initial centroids have shape {tuple(init.shape)}; need ({k}, {x.shape[1]})")
    elif init not in INIT_METHODS:
        raise ValueError(f"kmeans: init must be one of {', '.join(INIT_METHODS)} or a (k, d) tensor, got {init!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"kmeans: chunk_size must be an integer >= 1, got {chunk_size!r}")
    if not tol >= 0:  # also rejects NaN
        raise ValueError(f"kmeans: tol must be a number >= 0, got {tol!r}")
    # one reduction instead of isfinite's full-size temporaries (0.43 s -> 0.01 s at 1.28M x 128);
    # NaN and inf always reach the sum, and a finite input whose sum overflows is re-checked exactly
    if not bool(torch.isfinite(x.sum())) and not bool(torch.isfinite(x).all()):
        raise ValueError("kmeans input contains NaN or infinite values")


class _Assigner:
    """Nearest-centroid assignment of all points, one block of rows at a time.

    Holds the buffers so that repeated calls (one per Lloyd iteration)
    allocate nothing large. On a CPU with more than ``2 * ARGMIN_GROUP``
    clusters the centroids are padded to ``groups * group`` columns (the
    padding scores +inf, so it is never the minimum) and the argmin is
    two-level (module docstring).
    """

    def __init__(self, x: Tensor, x_sq: Tensor, k: int, chunk_size: int):
        self.x = x  # (N, d)
        self.x_sq = x_sq  # (N,)
        self.k = k
        two_level = x.device.type == "cpu" and k > 2 * ARGMIN_GROUP
        self.groups = math.ceil(k / ARGMIN_GROUP) if two_level else 1
        self.group = math.ceil(k / self.groups)  # columns per group
        self.k_pad = self.groups * self.group  # k <= k_pad < k + groups
        rows = max(CPU_MIN_ROWS, CPU_BLOCK_FLOATS // self.k_pad) if two_level else chunk_size
        self.chunk = max(1, min(chunk_size, rows, x.shape[0]))
        self.block = torch.empty(self.chunk, self.k_pad, dtype=x.dtype, device=x.device)  # (chunk, k_pad)

    def __call__(self, centroids: Tensor) -> tuple[Tensor, Tensor]:
        """centroids (k, d) -> labels (N,) long, squared distances (N,) float32."""
        x, n = self.x, self.x.shape[0]
        c_sq = torch.full((self.k_pad,), math.inf, dtype=x.dtype, device=x.device)  # (k_pad,)
        c_sq[: self.k] = (centroids * centroids).sum(dim=1)
        c_t = torch.zeros(x.shape[1], self.k_pad, dtype=x.dtype, device=x.device)  # (d, k_pad), contiguous
        c_t[:, : self.k] = centroids.t()
        labels = torch.empty(n, dtype=torch.long, device=x.device)
        partial = torch.empty(n, dtype=x.dtype, device=x.device)  # ||c||^2 - 2 x.c at the min
        for start in range(0, n, self.chunk):
            end = min(n, start + self.chunk)
            block = self.block[: end - start]  # (rows, k_pad)
            torch.addmm(c_sq, x[start:end], c_t, beta=1, alpha=-2, out=block)
            if self.groups == 1:
                torch.min(block, dim=1, out=(partial[start:end], labels[start:end]))
            else:
                partial[start:end], labels[start:end] = _two_level_argmin(block, self.groups)
        # add ||x||^2 back; clamp the tiny negatives left by cancellation
        dist = partial.add_(self.x_sq).clamp_(min=0)  # (N,)
        return labels, dist


def _two_level_argmin(block: Tensor, groups: int) -> tuple[Tensor, Tensor]:
    """Row-wise ``(min, first index of the min)`` of ``block`` (R, G * S), as ``torch.min(dim=1)``.

    Group minima come from the vectorised ``amin``; ``min`` over the (R, G)
    group minima picks the first best group, then ``argmin`` over that
    group's S columns the first best column in it: together the first
    index of the row's minimum.
    """
    rows = block.shape[0]
    grouped = block.view(rows, groups, -1)  # (R, G, S)
    best, group = grouped.amin(dim=2).min(dim=1)  # (R,), (R,)
    inside = grouped[torch.arange(rows, device=block.device), group]  # (R, S) the winning group's columns
    return best, group * grouped.shape[2] + inside.argmin(dim=1)


def _inertia(dist: Tensor) -> float:
    """Sum of squared distances (N,) in float64, so 1M terms lose no precision."""
    return float(dist.sum(dtype=torch.float64))


def _update_centroids(x: Tensor, labels: Tensor, dist: Tensor, old: Tensor) -> Tensor:
    """Member means, with empty clusters re-seeded at far points.

    Args:
        x: (N, d) points; labels: (N,) current assignment; dist: (N,)
            squared distance of each point to its assigned centroid;
        old: (k, d) centroids the assignment was made with.

    Returns:
        (k, d) new centroids.
    """
    k = old.shape[0]
    sums = torch.zeros_like(old).index_add_(0, labels, x)  # (k, d)
    counts = torch.bincount(labels, minlength=k)  # (k,)
    empty = torch.nonzero(counts == 0).flatten()  # (e,)
    seeds = None
    if empty.numel() > 0:
        # the points worst served by the current centroids become the new
        # centroids of the empty clusters; topk gives distinct indices
        seeds = torch.topk(dist, empty.numel()).indices  # (e,)
        donors = labels[seeds]  # (e,) clusters losing those points
        sums.index_add_(0, donors, x[seeds], alpha=-1)
        counts = counts.index_add(0, donors, torch.full_like(donors, -1))
    new = sums / counts.clamp(min=1).unsqueeze(1).to(sums.dtype)  # (k, d)
    # a donor that gave away all its points keeps its previous centroid
    new = torch.where((counts > 0).unsqueeze(1), new, old)
    if seeds is not None:
        new[empty] = x[seeds]
    return new


def _initial_centroids(
    x: Tensor, x_sq: Tensor, k: int, init: str | Tensor, generator: torch.Generator | None
) -> Tensor:
    """(k, d) float32 initial centroids on x.device, following ``init``."""
    if isinstance(init, Tensor):
        return init.detach().to(device=x.device, dtype=x.dtype).clone()
    method = init
    if method == "auto":
        method = "k-means++" if k <= AUTO_KMEANSPP_MAX_K else "random"
    if method == "random":
        idx = torch.randperm(x.shape[0], generator=generator)[:k].to(x.device)  # (k,) distinct
        return x[idx].clone()
    return _kmeanspp(x, x_sq, k, generator)


def _kmeanspp(x: Tensor, x_sq: Tensor, k: int, generator: torch.Generator | None) -> Tensor:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007) on a random subsample.

    The first centroid is uniform. At each next step ``trials`` candidates
    are drawn with probability proportional to D^2 (squared distance to the
    nearest centroid so far) and the one that most lowers the total D^2 is
    kept; ``trials = 2 + floor(ln k)`` as in scikit-learn. The greedy trials
    cost almost nothing here: a step is memory-bound (one read of the
    sample), and scoring several candidates is one thin matmul instead of a
    matrix-vector product. Plain D^2 sampling (one candidate) ended 20 Lloyd
    iterations 15-90 % above scikit-learn's inertia on separated blobs
    (30 blobs, 8 seeds); the greedy version lands within a few %.

    The draws are inverse-CDF lookups of uniforms taken up front from the
    CPU generator, so the loop has no host-device synchronisation and does
    not touch the device RNG.

    Args:
        x: (N, d) float32 points; x_sq: (N,) their squared norms.

    Returns:
        (k, d) centroids, rows of x.
    """
    n = x.shape[0]
    m = min(n, max(KMEANSPP_MIN_SAMPLE, KMEANSPP_POINTS_PER_CLUSTER * k))
    if m < n:
        sub = torch.randperm(n, generator=generator)[:m].to(x.device)  # (m,)
        xs, xs_sq = x[sub], x_sq[sub]  # (m, d), (m,)
    else:
        xs, xs_sq = x, x_sq
    trials = 2 + int(math.log(k))
    u = torch.rand(k, trials, generator=generator, dtype=torch.float64).to(x.device)  # (k, trials)
    # [x, ||x||^2, 1] . [-2c, 1, ||c||^2] = ||x - c||^2: one matmul gives D^2
    # to the candidates with no elementwise passes for the norms
    xs_aug = torch.cat([xs, xs_sq.unsqueeze(1), torch.ones_like(xs_sq).unsqueeze(1)], dim=1)  # (m, d + 2)

    def as_centroids(idx: Tensor) -> Tensor:
        """Sample rows idx (t,) -> (t, d + 2) rows [-2c, 1, ||c||^2]."""
        return torch.cat([-2 * xs[idx], torch.ones_like(xs_sq[idx]).unsqueeze(1), xs_sq[idx].unsqueeze(1)], dim=1)

    first = (u[0, :1] * m).long().clamp(max=m - 1)  # (1,)
    chosen = [first]
    min_d2 = (xs_aug @ as_centroids(first).t()).squeeze(1).clamp_(min=0)  # (m,) D^2 so far
    for j in range(1, k):
        # float64 CDF, exact enough for 400k terms. searchsorted(right=True)
        # never lands on a zero-weight point; if every weight is 0 (all
        # points duplicate a centroid) it returns m, clamped to the last point
        cdf = torch.cumsum(min_d2, dim=0, dtype=torch.float64)  # (m,)
        cand = torch.searchsorted(cdf, u[j] * cdf[-1], right=True).clamp_(max=m - 1)  # (trials,)
        d2 = xs_aug @ as_centroids(cand).t()  # (m, trials), one pass over the sample
        d2 = torch.minimum(d2, min_d2.unsqueeze(1), out=d2).clamp_(min=0)  # D^2 if the candidate is kept
        best = d2.sum(dim=0).argmin()  # candidate with the lowest total D^2
        min_d2 = d2[:, best]  # (m,)
        chosen.append(cand[best].reshape(1))
    return xs[torch.cat(chosen)].clone()  # (k, d)
