"""Evaluation metrics: kNN and linear-probe accuracy, clustering agreement, similarity statistics.

All functions are pure: they take tensors (or arrays) and return numbers;
none of them changes its inputs. Features are assumed frozen and
precomputed (by :class:`Evaluator`, which runs them for the trainer), so the
probes here cost seconds, not epochs.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from study.data.augment import eval_preprocess
from study.data.datasets import stratified_subset
from study.core.errors import UserError
from study.train import distributed as dist

# label_change_ratio(match=True) solves the exact one-to-one matching
# (Hungarian, O(n^3)) up to this many clusters and a greedy one above: at
# 10,000 clusters the dense cost matrix alone is 800 MB.
EXACT_MATCH_MAX_CLUSTERS = 2000

# torch.quantile refuses inputs above 2^24 elements; similarity_stats
# estimates the quantiles from at most this many values.
QUANTILE_MAX_VALUES = 1_000_000
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


# --------------------------------------------------------------------------- kNN


def weighted_knn_top1(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    test_labels: Tensor,
    k: int = 200,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> float:
    """Top-1 accuracy of the similarity-weighted kNN classifier (InstDisc, MoCo).

    Each test sample votes with its k most cosine-similar training samples;
    neighbour j adds ``exp(s_j / T)`` to the score of its class and the
    class with the largest score is predicted (ties: lowest class index).

    Args:
        train_feats: (N, d) features; L2-normalised here.
        train_labels: (N,) integer class labels in [0, num_classes).
        test_feats: (M, d) features; L2-normalised here.
        test_labels: (M,) integer class labels.
        k: neighbours per test sample; values above N use all N.
        temperature: T in exp(s / T), > 0.
        num_classes: number of classes; None infers max label + 1.
        chunk_size: test rows per similarity block ((chunk_size, N) floats).

    Returns:
        Fraction of test samples predicted correctly, in [0, 1].
    """
    _check_pairs(train_feats, train_labels, "train")
    _check_pairs(test_feats, test_labels, "test")
    if train_feats.shape[1] != test_feats.shape[1]:
        raise ValueError(f"train and test feature sizes differ: {train_feats.shape[1]} vs {test_feats.shape[1]}")
    _check_positive_int(k, "knn_k")
    _check_positive_int(chunk_size, "chunk_size")
    if not temperature > 0:
        raise UserError(f"got {temperature!r}; allowed: a number > 0", key="knn_temperature")
    train_labels = train_labels.to(train_feats.device, torch.long)
    test_labels = test_labels.to(train_feats.device, torch.long)
    if num_classes is None:
        num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    k = min(k, train_feats.shape[0])

    with torch.no_grad():
        train = torch.nn.functional.normalize(train_feats.detach().float(), dim=1)  # (N, d)
        train_t = train.t().contiguous()  # (d, N)
        correct = 0
        for start in range(0, test_feats.shape[0], chunk_size):
            test = torch.nn.functional.normalize(
                test_feats[start : start + chunk_size].detach().float().to(train.device), dim=1
            )  # (B, d)
            sims, idx = (test @ train_t).topk(k, dim=1)  # (B, k), (B, k)
            # subtracting the row maximum rescales a row's scores by one
            # positive factor: same argmax, and no overflow for small T
            weights = torch.exp((sims - sims[:, :1]) / temperature)  # (B, k)
            scores = torch.zeros(test.shape[0], num_classes, device=train.device)  # (B, C)
            scores.scatter_add_(1, train_labels[idx], weights)
            pred = scores.argmax(dim=1)  # (B,)
            correct += int((pred == test_labels[start : start + chunk_size]).sum())
    return correct / test_feats.shape[0]


# ------------------------------------------------------------------ clusterings


def nmi(labels_a: Tensor | np.ndarray, labels_b: Tensor | np.ndarray) -> float:
    """Normalised mutual information of two labelings of the same N samples.

    NMI = I(A; B) / ((H(A) + H(B)) / 2) (arithmetic mean, scikit-learn's
    default), natural log. 1 for identical labelings up to renaming; 1 when
    both are a single cluster; 0 when exactly one of them is.
    Computed from the non-empty cells of the contingency table only, so
    10,000 x 1,000 clusters cost O(N log N), not a dense table.

    Args:
        labels_a, labels_b: (N,) integer labels (tensors or arrays).
    """
    table = _Contingency(labels_a, labels_b)
    n = table.n
    h_a = _entropy(table.row_sums, n)
    h_b = _entropy(table.col_sums, n)
    if h_a == 0.0 and h_b == 0.0:
        return 1.0  # both labelings put everything in one cluster
    c = table.cell_counts  # (cells,)
    outer = table.row_sums[table.cell_rows] * table.col_sums[table.cell_cols]  # (cells,) a_i * b_j
    mutual = float((c / n * (torch.log(c) + math.log(n) - torch.log(outer))).sum())
    return max(0.0, mutual / ((h_a + h_b) / 2))


def cluster_recall(clusters: Tensor | np.ndarray, classes: Tensor | np.ndarray) -> float:
    """The share of an image's true-class images that its cluster holds, mean over the labelled images.

    With ``n[c, y]`` images of class y in cluster c and ``n[y]`` of class y, image i's recall is
    ``n[c_i, y_i] / n[y_i]`` (itself included), and the mean is ``sum_{c,y} n[c, y]**2 / n[y] / N``:
    1 when no class is split across clusters, ``1/k`` for a class split evenly over k clusters. The
    positive-side mechanism of Sec. 4.1 (how many true positives the pseudo-labels can offer).

    Args:
        clusters: (N,) cluster ids; classes: (N,) true classes, -1 for an unlabelled image (left out).
    Returns:
        A fraction in (0, 1]; NaN when no image is labelled.
    """
    c, y = _as_label_pair(clusters, classes)
    keep = y >= 0
    if not bool(keep.any()):
        return math.nan
    table = _Contingency(c[keep], y[keep])
    per_cell = table.cell_counts ** 2 / table.col_sums[table.cell_cols]  # (cells,)
    return float(per_cell.sum() / table.n)


def ari(labels_a: Tensor | np.ndarray, labels_b: Tensor | np.ndarray) -> float:
    """Adjusted Rand index (Hubert & Arabie) of two labelings of the same N samples.

    1 for identical partitions; about 0 for independent ones; can be
    negative. Identical degenerate partitions (both one cluster, or both
    all singletons) give 1, as in scikit-learn.

    Args:
        labels_a, labels_b: (N,) integer labels (tensors or arrays).
    """
    table = _Contingency(labels_a, labels_b)
    pairs = table.n * (table.n - 1) / 2
    sum_cells = float(_pairs(table.cell_counts).sum())
    sum_a = float(_pairs(table.row_sums).sum())
    sum_b = float(_pairs(table.col_sums).sum())
    expected = sum_a * (sum_b / pairs) if pairs > 0 else 0.0
    top = (sum_a + sum_b) / 2
    # top == expected only when both partitions are identical and degenerate
    # (sum_a = sum_b = 0 or = pairs); the tolerance absorbs float rounding
    if top - expected <= 1e-12 * max(top, 1.0):
        return 1.0
    return (sum_cells - expected) / (top - expected)


def label_change_ratio(prev: Tensor | np.ndarray, cur: Tensor | np.ndarray, match: bool = False) -> float:
    """Fraction of samples whose pseudo-label changed between two labelings.

    With ``match=False`` ids are compared as they are, which is right for
    online labels (cluster i stays cluster i). Offline k-means renumbers its
    clusters at each run, so with ``match=True`` every id of ``cur`` is first
    mapped to at most one id of ``prev`` so as to maximise the number of
    samples that agree, and the ratio is 1 - agreement / N. Up to
    ``EXACT_MATCH_MAX_CLUSTERS`` clusters (on either side) the matching is
    the optimal one (scipy's linear_sum_assignment on the contingency
    table); above, it is greedy: contingency cells in decreasing count, a
    cell is taken when neither of its ids is matched yet. Greedy is exact
    when each cluster has a clear majority partner, the usual case between
    successive clusterings, and never over-counts agreement.

    Args:
        prev, cur: (N,) integer labels (tensors or arrays).

    Returns:
        Ratio in [0, 1].
    """
    if not match:
        a, b = _as_label_pair(prev, cur)
        return float((a != b).sum()) / a.numel()
    table = _Contingency(prev, cur)
    if max(table.row_sums.numel(), table.col_sums.numel()) <= EXACT_MATCH_MAX_CLUSTERS:
        agreement = _matched_agreement_exact(table)
    else:
        agreement = _matched_agreement_greedy(table)
    return 1.0 - agreement / table.n


class _Contingency:
    """Sparse contingency table of two labelings: only the non-empty cells.

    Attributes:
        n: number of samples N.
        row_sums: (R,) float64 sizes of the clusters of the first labeling.
        col_sums: (S,) float64 sizes of the clusters of the second labeling.
        cell_rows, cell_cols: (cells,) long indices of the non-empty cells.
        cell_counts: (cells,) float64 samples in each non-empty cell.
    """

    def __init__(self, labels_a: Tensor | np.ndarray, labels_b: Tensor | np.ndarray):
        a, b = _as_label_pair(labels_a, labels_b)
        _, a = torch.unique(a, return_inverse=True)  # (N,) ids renumbered 0..R-1
        _, b = torch.unique(b, return_inverse=True)  # (N,) ids renumbered 0..S-1
        n_cols = int(b.max()) + 1
        cells, counts = torch.unique(a * n_cols + b, return_counts=True)  # (cells,)
        self.n = a.numel()
        self.cell_rows = cells // n_cols
        self.cell_cols = cells % n_cols
        self.cell_counts = counts.double()
        self.row_sums = torch.bincount(a).double()  # (R,)
        self.col_sums = torch.bincount(b).double()  # (S,)


def _matched_agreement_exact(table: _Contingency) -> float:
    """Samples agreeing under the optimal one-to-one id matching (Hungarian)."""
    from scipy.optimize import linear_sum_assignment

    dense = torch.zeros(table.row_sums.numel(), table.col_sums.numel(), dtype=torch.float64)  # (R, S)
    dense[table.cell_rows, table.cell_cols] = table.cell_counts
    rows, cols = linear_sum_assignment(dense.numpy(), maximize=True)
    return float(dense[torch.as_tensor(rows), torch.as_tensor(cols)].sum())


def _matched_agreement_greedy(table: _Contingency) -> float:
    """Samples agreeing under a greedy one-to-one matching, largest cells first."""
    order = torch.argsort(table.cell_counts, descending=True, stable=True)
    rows = table.cell_rows[order].tolist()
    cols = table.cell_cols[order].tolist()
    counts = table.cell_counts[order].tolist()
    used_rows, used_cols = set(), set()
    agreement = 0.0
    limit = min(table.row_sums.numel(), table.col_sums.numel())
    for r, c, count in zip(rows, cols, counts):
        if r in used_rows or c in used_cols:
            continue
        used_rows.add(r)
        used_cols.add(c)
        agreement += count
        if len(used_rows) == limit:
            break  # every id on the smaller side is matched
    return agreement


def _entropy(sizes: Tensor, n: int) -> float:
    """Shannon entropy (nats) of a partition with cluster sizes (R,) > 0."""
    p = sizes / n
    return float(-(p * torch.log(p)).sum())


def _pairs(counts: Tensor) -> Tensor:
    """n choose 2, elementwise, in float64."""
    return counts * (counts - 1) / 2


# ------------------------------------------------------------------ similarities


def similarity_stats(sims: Tensor, prefix: str = "neg_sim") -> dict[str, float]:
    """Mean, standard deviation and quantiles of a tensor of similarities.

    Mean and (population, ddof 0) std use every value. Quantiles use linear
    interpolation, as numpy's default, over every value when there are at
    most ``QUANTILE_MAX_VALUES`` of them, else over that many drawn
    uniformly with replacement by a fixed-seed generator (deterministic;
    the standard error of a quantile estimate is then below 0.001 in rank).

    Args:
        sims: any shape, at least one element.
        prefix: key prefix.

    Returns:
        {"<prefix>_mean", "<prefix>_std", "<prefix>_q05", "<prefix>_q25",
        "<prefix>_q50", "<prefix>_q75", "<prefix>_q95"} -> float.
    """
    flat = sims.detach().reshape(-1).float()  # (n,)
    if flat.numel() == 0:
        raise ValueError("similarity_stats needs at least one value")
    std, mean = torch.std_mean(flat, correction=0)
    stats = {f"{prefix}_mean": float(mean), f"{prefix}_std": float(std)}
    if flat.numel() > QUANTILE_MAX_VALUES:
        gen = torch.Generator().manual_seed(0)
        pick = torch.randint(flat.numel(), (QUANTILE_MAX_VALUES,), generator=gen).to(flat.device)
        flat = flat[pick]  # (QUANTILE_MAX_VALUES,)
    qs = torch.quantile(flat, torch.tensor(QUANTILES, device=flat.device))  # (5,)
    for q, value in zip(QUANTILES, qs.tolist()):
        stats[f"{prefix}_q{round(q * 100):02d}"] = value
    return stats


# ------------------------------------------------------------------ linear probe


def linear_probe_top1(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    test_labels: Tensor,
    num_classes: int,
    epochs: int = 100,
    lr: float = 3e-3,
    weight_decay: float = 1e-3,
    batch_size: int = 1024,
    generator: torch.Generator | None = None,
    standardise: bool = True,
) -> float:
    """Test top-1 accuracy of a linear softmax classifier on frozen features.

    Features are standardised with the training mean and std (so one lr
    suits any backbone's feature scale), then a zero-initialised linear
    layer is trained with Adam and a cosine learning-rate decay to 0 on
    shuffled mini-batches. Zero init plus a convex loss make the result
    depend only on the shuffling, which follows ``generator``. The defaults
    (lr 3e-3, weight decay 1e-3, 100 epochs) were the best of lr {1e-3,
    3e-3, 1e-2} x wd {0, 1e-4, 1e-3} on synthetic 20k-sample problems
    (d 128..2048, 10..100 classes); on an ill-conditioned one they ended
    3 points below scikit-learn's LogisticRegression solved to convergence
    with L-BFGS, so compare probe numbers across runs, not across probes.

    Args:
        train_feats: (N, d) frozen features; train_labels: (N,) in [0, C).
        test_feats: (M, d); test_labels: (M,).
        num_classes: C.
        epochs: passes over the training set.
        lr: Adam peak learning rate.
        weight_decay: L2 penalty (Adam's coupled form) on weights and bias.
        batch_size: training mini-batch size (also the evaluation chunk).
        generator: CPU generator for the shuffling; None uses the global RNG.
        standardise: standardise with the training features' mean and std (False: the caller did, e.g.
            with the statistics of more images than the labelled ones, study/train/protocols.py).

    Returns:
        Fraction of test samples predicted correctly, in [0, 1].
    """
    _check_pairs(train_feats, train_labels, "train")
    _check_pairs(test_feats, test_labels, "test")
    _check_positive_int(num_classes, "num_classes")
    _check_positive_int(epochs, "probe_epochs")
    _check_positive_int(batch_size, "batch_size")
    if not lr > 0:
        raise UserError(f"got {lr!r}; allowed: a number > 0", key="probe_lr")
    if not weight_decay >= 0:
        raise UserError(f"got {weight_decay!r}; allowed: a number >= 0", key="probe_weight_decay")

    device = train_feats.device
    train_x = train_feats.detach().float()  # (N, d)
    test_x = test_feats.detach().float().to(device)  # (M, d)
    if standardise:
        mean = train_x.mean(dim=0)  # (d,)
        std = train_x.std(dim=0, correction=0).clamp(min=1e-6)  # (d,): constant features stay 0, not NaN
        train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    train_y = train_labels.to(device, torch.long)
    test_y = test_labels.to(device, torch.long)

    head = _train_linear(train_x, train_y, num_classes, epochs, lr, weight_decay, batch_size, generator)
    with torch.no_grad():
        correct = 0
        for start in range(0, test_x.shape[0], batch_size):
            pred = head(test_x[start : start + batch_size]).argmax(dim=1)  # (B,)
            correct += int((pred == test_y[start : start + batch_size]).sum())
    return correct / test_x.shape[0]


def _train_linear(
    x: Tensor,
    y: Tensor,
    num_classes: int,
    epochs: int,
    lr: float,
    weight_decay: float,
    batch_size: int,
    generator: torch.Generator | None,
) -> torch.nn.Linear:
    """Fit a zero-initialised linear layer (d -> C) with Adam + cosine decay; x (N, d), y (N,)."""
    n = x.shape[0]
    head = torch.nn.Linear(x.shape[1], num_classes).to(x.device)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    opt = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(n / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    with torch.enable_grad():  # the caller may be inside no_grad
        for _ in range(epochs):
            order = torch.randperm(n, generator=generator).to(x.device)  # (N,)
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]  # (B,)
                loss = torch.nn.functional.cross_entropy(head(x[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    return head.eval()


# ------------------------------------------------------------------ the evaluator


class Evaluator:
    """One run's evaluation: feature extraction, the kNN monitor, NMI/ARI of the labels, the linear probe.

    Args:
        cfg: the run's config (``knn_*``, ``monitor_test_subset``, ``linear_epochs``, ``seed``, ...).
        source: the run's data source (:mod:`study.data.sources`): eval batches, labels, sizes.
        image_size: the side the encoder sees; device, use_amp: where and how it runs.
        world, rank: the DDP processes (1, 0 in one process); the ranks share every extraction.
    """

    def __init__(self, cfg, source, *, image_size: int, device: torch.device, use_amp: bool,
                 world: int = 1, rank: int = 0, channels_last: bool = False,
                 model_state: Callable[[], object] | None = None):
        self.cfg, self.source, self.image_size = cfg, source, image_size
        self.device, self.use_amp, self.world, self.rank = device, use_amp, world, rank
        self.channels_last = channels_last
        self._monitor_idx: Tensor | None = None
        # eval features of the current weights, handed out again (the final kNN and probe reuse
        # the last epoch's); ``model_state`` names the weights' state, None switches the memo off
        self.memo = FeatureMemo()
        self.model_state = model_state

    @torch.no_grad()
    def features(self, encoder, split: str, indices: Tensor | None, *, neck: bool) -> Tensor:
        """Eval-mode features of a split's images (``indices`` of it, or all), in batches. (N, D)

        Under DDP each rank extracts one contiguous share of the images and the
        shares are all-gathered: every rank ends with all N features in order, as
        one process would, at 1/W of the forward passes (the k-means at the start,
        each offline re-clustering and each kNN evaluation need the whole set).
        """
        if self.world == 1:
            return self._extract(encoder, split, indices, neck=neck)
        n = (self.source.num_train if split == "train" else self.source.num_test) if indices is None \
            else indices.shape[0]
        if n < self.world:  # too few to share
            return self._extract(encoder, split, indices, neck=neck)
        every = torch.arange(n) if indices is None else indices
        shares = torch.tensor_split(every, self.world)  # sizes differ by at most one, none empty
        mine = self._extract(encoder, split, shares[self.rank], neck=neck)  # (n_r, D)
        rows = shares[0].shape[0]  # the largest share: all_gather needs equal shapes
        padded = torch.cat([mine, mine.new_zeros(rows - mine.shape[0], mine.shape[1])])  # (rows, D)
        gathered = dist.all_gather_cat(padded).view(self.world, rows, -1)  # (W, rows, D)
        return torch.cat([gathered[r, :share.shape[0]] for r, share in enumerate(shares)])  # (N, D)

    @torch.no_grad()
    def _extract(self, encoder, split: str, indices: Tensor | None, *, neck: bool) -> Tensor:
        """Eval-mode features of a split's images (``indices`` of it, or all) in this process. (N, D)"""
        state = self.model_state() if self.model_state is not None else None
        if state is not None:
            memo = self.memo.get(state, encoder, split, indices, neck)
            if memo is not None:
                return memo
        was_training = encoder.training
        encoder.eval()
        out = []
        # 512 on a CPU: the 28 px activations of a batch stay in cache (1.3x faster than 1024);
        # per-image features do not depend on the batch size, for batches of 2 or more (tests/test_speed.py)
        bs = 512 if self.device.type == "cpu" else 2048
        for images in self.source.eval_batches(split, indices, bs):
            x = eval_preprocess(images.to(self.device), self.image_size, self.source.mean, self.source.std)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_amp):
                f = encoder(x) if neck else encoder.backbone(x)
            out.append(f.float())
        encoder.train(was_training)
        feats = torch.cat(out)
        if state is not None:
            self.memo.put(state, encoder, split, indices, neck, feats)
        return feats

    def knn_subset(self) -> Tensor:
        """Training images of the kNN (``knn_train_subset`` of them, fixed by the seed, or all). (n,)"""
        n = self.cfg.knn_train_subset
        if n is None or n >= self.source.num_train:
            return torch.arange(self.source.num_train)
        g = torch.Generator().manual_seed(self.cfg.seed + 4242)
        return torch.randperm(self.source.num_train, generator=g)[:n].sort().values

    def monitor_test_idx(self) -> Tensor | None:
        """Test images of the per-epoch kNN monitor: a fixed stratified subset (the same for every
        cell of a study), or None for every loaded test image."""
        n = self.cfg.monitor_test_subset
        if n is None or n >= self.source.num_test:
            return None
        if self._monitor_idx is None:
            self._monitor_idx = stratified_subset(self.source.test_labels, n, seed=0, key="monitor_test_subset")
        return self._monitor_idx

    def eval_features(self, encoder, test_idx: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Backbone features and labels: (train (n, D), train labels (n,), test (m, D), test labels (m,)).

        Train: the kNN train subset; test: ``test_idx`` of the test split, or all of it.
        """
        sub = self.knn_subset()
        train_f = self.features(encoder, "train", sub, neck=False)
        test_f = self.features(encoder, "test", test_idx, neck=False)
        test_y = self.source.test_labels if test_idx is None else self.source.test_labels[test_idx]
        return train_f, self.source.train_labels[sub].to(self.device), test_f, test_y.to(self.device)

    def knn(self, feats: tuple[Tensor, Tensor, Tensor, Tensor]) -> float:
        """Weighted kNN top-1 of :meth:`eval_features`'s output."""
        return weighted_knn_top1(*feats, k=self.cfg.knn_k, temperature=self.cfg.knn_temperature,
                                 num_classes=self.source.num_classes)

    def monitor_knn(self, encoder) -> float:
        """The per-epoch kNN monitor (on ``monitor_test_subset`` test images)."""
        return self.knn(self.eval_features(encoder, self.monitor_test_idx()))

    def label_metrics(self, labels: Tensor, prev: Tensor | None) -> dict:
        """NMI/ARI of pseudo-labels ``labels`` (N,) against the classes; with ``prev`` (N,), how much they moved."""
        truth = self.source.train_labels
        out = {"nmi": nmi(labels, truth), "ari": ari(labels, truth), "cluster_recall": cluster_recall(labels, truth),
               "clusters_nonempty": int((torch.bincount(labels, minlength=self.cfg.num_clusters) > 0).sum())}
        if prev is not None:
            # how much the partition moved, whatever the cluster ids: k-means renumbers its
            # clusters at each offline re-clustering, and online re-seeding reuses ids
            out["label_change_ratio"] = label_change_ratio(prev, labels, match=True)
            if self.cfg.labels == "online":
                # ids as they are (cluster i stays i between re-seedings)
                out["label_change_raw"] = label_change_ratio(prev, labels, match=False)
        return out

    def probe(self, encoder, feats: tuple[Tensor, Tensor, Tensor, Tensor]) -> float:
        """Linear-probe top-1 on frozen backbone features ``feats`` (:meth:`eval_features`)."""
        before = [p.detach().clone() for p in encoder.backbone.parameters()]
        top1 = linear_probe_top1(*feats, self.source.num_classes, epochs=self.cfg.linear_epochs,
                                 generator=torch.Generator(device=self.device).manual_seed(self.cfg.seed))
        # moco's sanity check: the probe must not have touched the frozen backbone
        after = list(encoder.backbone.parameters())
        if not all(torch.equal(a, b) for a, b in zip(before, after)):
            raise RuntimeError("linear probe changed the frozen backbone")
        return top1


class FeatureMemo:
    """The eval-mode features last extracted from a model state, to hand out again unchanged.

    The trainer extracts the same features more than once at one model state:
    the last epoch's kNN monitor and the final linear probe both need the
    train subset's and the test set's backbone features of the final weights.
    Extraction is deterministic, so handing the stored tensor back equals
    recomputing it bit for bit, at no cost.

    An entry is keyed by the encoder object, the split, the neck flag and the
    indices (compared by value), and belongs to one ``state``: any value that
    changes whenever the weights may have changed (the trainer gives its step
    count and the parameters' version counters, which every in-place update
    bumps). A lookup with another state drops every entry. Callers must not
    modify a tensor they get (the trainer's callers normalise into new ones).
    """

    def __init__(self) -> None:
        self.state: object = None
        self.entries: list[tuple[int, str, bool, Tensor | None, Tensor]] = []

    @staticmethod
    def model_state(step: int, module: torch.nn.Module) -> tuple[int, int]:
        """A state key for ``module`` after ``step`` iterations: (step, sum of parameter/buffer versions)."""
        versions = sum(t._version for t in module.parameters()) + sum(t._version for t in module.buffers())
        return step, versions

    def _sync(self, state: object) -> None:
        if state != self.state:
            self.entries.clear()
            self.state = state

    def get(self, state: object, encoder: torch.nn.Module, split: str, indices: Tensor | None,
            neck: bool) -> Tensor | None:
        """The stored features for these arguments at ``state``, or None."""
        self._sync(state)
        for enc_id, s, n, idx, feats in self.entries:
            if enc_id == id(encoder) and s == split and n == neck and (
                    (idx is None and indices is None)
                    or (idx is not None and indices is not None and idx.shape == indices.shape
                        and torch.equal(idx, indices.to(idx.device)))):
                return feats
        return None

    def put(self, state: object, encoder: torch.nn.Module, split: str, indices: Tensor | None, neck: bool,
            feats: Tensor) -> None:
        self._sync(state)
        self.entries.append((id(encoder), split, neck, None if indices is None else indices.clone(), feats))

    def clear(self) -> None:
        self.entries.clear()
        self.state = None


# ------------------------------------------------------------------ helpers


def _as_long_tensor(labels: Tensor | np.ndarray) -> Tensor:
    """Labels (N,) as a CPU long tensor."""
    if isinstance(labels, Tensor):
        return labels.detach().cpu().long()
    return torch.as_tensor(np.asarray(labels)).long()


def _as_label_pair(labels_a: Tensor | np.ndarray, labels_b: Tensor | np.ndarray) -> tuple[Tensor, Tensor]:
    """Two labelings as CPU long tensors (N,); ValueError unless both are (N,), N > 0."""
    a = _as_long_tensor(labels_a)
    b = _as_long_tensor(labels_b)
    if a.dim() != 1 or a.shape != b.shape or a.numel() == 0:
        raise ValueError(f"expected two non-empty (N,) labelings, got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    return a, b


def _check_pairs(feats: Tensor, labels: Tensor, name: str) -> None:
    """Raise ValueError unless feats (N, d) and labels (N,) match and N > 0."""
    if feats.dim() != 2 or feats.shape[0] == 0:
        raise ValueError(f"{name} features must be a non-empty (N, d) tensor, got shape {tuple(feats.shape)}")
    if labels.shape != (feats.shape[0],):
        raise ValueError(f"{name} labels must have shape ({feats.shape[0]},), got {tuple(labels.shape)}")


def _check_positive_int(value: int, key: str) -> None:
    """Raise UserError naming ``key`` unless value is an int >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"got {value!r}; allowed: an integer >= 1", key=key)
