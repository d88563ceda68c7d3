"""Tests for study.kmeans: correctness against brute force and sklearn, determinism, edge cases."""

from __future__ import annotations

import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from study.method import kmeans as kmeans_module
from study.core.config import build_config
from study.core.errors import UserError
from study.method.kmeans import kmeans


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _blobs(n_per: int, centers: torch.Tensor, std: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian blobs around ``centers`` (c, d): points (c*n_per, d), true labels (c*n_per,)."""
    g = _gen(seed)
    truth = torch.arange(centers.shape[0]).repeat_interleave(n_per)  # (N,)
    x = centers[truth] + std * torch.randn(truth.shape[0], centers.shape[1], generator=g)  # (N, d)
    return x, truth


def _brute_force(x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Nearest centroid and inertia by the textbook formula, in float64."""
    d2 = ((x.double()[:, None, :] - c.double()[None, :, :]) ** 2).sum(-1)  # (N, k)
    best = d2.min(dim=1)
    return best.indices, float(best.values.sum())


@pytest.mark.parametrize("init", ["k-means++", "auto", "random"])
def test_recovers_separated_blobs(init):
    centers = 10.0 * torch.eye(6, 5)  # 6 centres in 5-d: 5 axis points and the origin
    x, truth = _blobs(50, centers, std=0.3, seed=0)
    perm = torch.randperm(x.shape[0], generator=_gen(1))  # shuffle so order gives no hint
    x, truth = x[perm], truth[perm]
    # random init can put two seeds in one blob; try seeds until a run is
    # good, which must happen quickly (k-means++ at the first one)
    seeds = [0] if init != "random" else range(5)
    runs = [kmeans(x, 6, init=init, generator=_gen(s)) for s in seeds]
    scores = [adjusted_rand_score(truth.numpy(), run.labels.numpy()) for run in runs]
    assert max(scores) == pytest.approx(1.0)


def test_result_consistent_with_brute_force():
    x = torch.randn(300, 7, generator=_gen(0))
    res = kmeans(x, 9, iters=5, generator=_gen(0), chunk_size=64)
    labels, inertia = _brute_force(x, res.centroids)
    assert res.centroids.shape == (9, 7) and res.centroids.dtype == torch.float32
    assert res.labels.shape == (300,) and res.labels.dtype == torch.long
    assert torch.equal(res.labels, labels)
    assert res.inertia == pytest.approx(inertia, rel=1e-5)
    assert len(res.history) == res.n_iter + 1
    assert res.history[-1] == res.inertia


def test_inertia_non_increasing():
    x = torch.nn.functional.normalize(torch.randn(2000, 16, generator=_gen(2)), dim=1)
    res = kmeans(x, 40, iters=15, init="random", generator=_gen(3))
    assert res.n_iter == 15  # random data: still moving after 15 iterations
    hist = torch.tensor(res.history, dtype=torch.float64)
    assert bool((hist[1:] <= hist[:-1] * (1 + 1e-6)).all()), res.history
    assert hist[-1] < hist[0]


def test_chunking_does_not_change_result():
    x = torch.randn(500, 6, generator=_gen(4))
    a = kmeans(x, 12, iters=6, generator=_gen(5), chunk_size=8192)
    b = kmeans(x, 12, iters=6, generator=_gen(5), chunk_size=7)  # many chunks, ragged last one
    assert torch.equal(a.labels, b.labels)
    assert torch.allclose(a.centroids, b.centroids, atol=1e-6)


@pytest.mark.parametrize("init", ["k-means++", "random"])
def test_deterministic_given_generator(init):
    x = torch.randn(800, 8, generator=_gen(6))
    a = kmeans(x, 15, iters=5, init=init, generator=_gen(7))
    b = kmeans(x, 15, iters=5, init=init, generator=_gen(7))
    c = kmeans(x, 15, iters=5, init=init, generator=_gen(8))
    assert torch.equal(a.centroids, b.centroids) and torch.equal(a.labels, b.labels)
    assert a.history == b.history
    assert not torch.equal(a.centroids, c.centroids)


def test_kmeanspp_subsample_path_is_deterministic(monkeypatch):
    # shrink the sample so that N > m and the subsampling branch runs
    monkeypatch.setattr(kmeans_module, "KMEANSPP_MIN_SAMPLE", 50)
    monkeypatch.setattr(kmeans_module, "KMEANSPP_POINTS_PER_CLUSTER", 5)
    centers = 8.0 * torch.eye(4)
    x, truth = _blobs(100, centers, std=0.2, seed=9)
    a = kmeans(x, 4, init="k-means++", generator=_gen(10))
    b = kmeans(x, 4, init="k-means++", generator=_gen(10))
    assert torch.equal(a.centroids, b.centroids)
    assert adjusted_rand_score(truth.numpy(), a.labels.numpy()) == pytest.approx(1.0)


def test_far_centroid_is_reseeded():
    centers = 6.0 * torch.eye(3)
    x, truth = _blobs(40, centers, std=0.2, seed=11)
    init = torch.cat([centers[:2], torch.full((1, 3), 1000.0)])  # third centroid far from every point
    res = kmeans(x, 3, iters=1, init=init)
    # the far centroid owns nothing at the first assignment; after one update
    # it must sit on a data point (the one farthest from its centroid)
    assert torch.isclose(x, res.centroids[2]).all(dim=1).any()
    assert bool((torch.bincount(res.labels, minlength=3) > 0).all())
    res = kmeans(x, 3, iters=10, init=init)
    assert adjusted_rand_score(truth.numpy(), res.labels.numpy()) == pytest.approx(1.0)


def test_duplicate_centroid_is_reseeded():
    x = torch.randn(200, 4, generator=_gen(12))
    init = x[:5].clone()
    init[1] = init[0]  # argmin ties go to cluster 0, so cluster 1 starts empty
    res = kmeans(x, 5, iters=1, init=init)
    assert bool((torch.bincount(res.labels, minlength=5) > 0).all())
    assert not torch.equal(res.centroids[0], res.centroids[1])


def test_k_equals_n_and_identical_points():
    x = torch.randn(10, 3, generator=_gen(13))
    res = kmeans(x, 10, generator=_gen(0))
    assert res.inertia == pytest.approx(0.0, abs=1e-5)
    assert sorted(res.labels.tolist()) == list(range(10))
    same = torch.ones(20, 3)  # every point identical: must not crash, inertia 0
    res = kmeans(same, 4, generator=_gen(0))
    assert res.inertia == pytest.approx(0.0, abs=1e-6)


def test_stops_early_at_convergence_and_with_tol():
    x, _ = _blobs(60, 10.0 * torch.eye(3), std=0.2, seed=14)
    res = kmeans(x, 3, iters=50, generator=_gen(0))
    assert res.n_iter < 50  # labels stop changing on separated blobs
    x = torch.randn(1000, 8, generator=_gen(15))
    loose = kmeans(x, 20, iters=50, tol=0.05, generator=_gen(0))
    assert 1 <= loose.n_iter < 50


def test_inertia_close_to_sklearn():
    centers = 3.0 * torch.randn(30, 16, generator=_gen(16))
    x, _ = _blobs(100, centers, std=1.0, seed=17)
    x = x[torch.randperm(x.shape[0], generator=_gen(18))]
    ours = kmeans(x, 30, iters=20, generator=_gen(0))
    ref = KMeans(30, n_init=1, max_iter=20, algorithm="lloyd", random_state=0).fit(x.numpy())
    assert ours.inertia <= 1.03 * ref.inertia_


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"k": 0}, "k must"),
        ({"k": 101}, "k must"),
        ({"k": 2.5}, "k must"),
        ({"iters": 0}, "iters must"),
        ({"init": "kmeans++"}, "init must"),
        ({"init": torch.zeros(3, 2)}, "initial centroids"),
        ({"chunk_size": 0}, "chunk_size must"),
        ({"tol": -0.1}, "tol must"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, key):
    """The method raises ValueError naming the argument; the config turns the user's keys into UserError."""
    x = torch.randn(100, 4, generator=_gen(19))
    args = {"k": 5, **kwargs}
    with pytest.raises(ValueError) as info:
        kmeans(x, **args)
    assert not isinstance(info.value, UserError) and key in str(info.value)


@pytest.mark.parametrize(("key", "value"), [("num_clusters", 1), ("kmeans_iters", 0)])
def test_bad_kmeans_keys_are_user_errors_at_load(key, value):
    with pytest.raises(UserError) as info:
        build_config("smoke", {key: value})
    assert info.value.key == key


def test_bad_data_raises_value_error():
    with pytest.raises(ValueError):
        kmeans(torch.randn(10), 2)
    x = torch.randn(10, 2)
    x[3, 1] = float("nan")
    with pytest.raises(ValueError):
        kmeans(x, 2)


def test_two_level_argmin_matches_torch_min_first_index():
    # hand-made (2, 6) block in 3 groups of 2: row 0's minimum -1 sits in groups 1 and 2 (first: column 2),
    # row 1's minimum 0 twice inside group 0 (first: column 0)
    block = torch.tensor([[3.0, 2.0, -1.0, 5.0, -1.0, 0.0],
                          [0.0, 0.0, 4.0, 1.0, 2.0, 0.5]])
    best, idx = kmeans_module._two_level_argmin(block, groups=3)
    assert best.tolist() == [-1.0, 0.0] and idx.tolist() == [2, 0]
    # random blocks with many exact ties: the same values and first indices as torch.min
    g = _gen(11)
    block = torch.randint(0, 5, (257, 40), generator=g).float()
    ref = block.min(dim=1)
    for groups in (1, 2, 4, 5, 8):
        best, idx = kmeans_module._two_level_argmin(block, groups)
        assert torch.equal(best, ref.values) and torch.equal(idx, ref.indices), groups


def test_many_clusters_use_padded_two_level_blocks_and_match_brute_force():
    # k = 1301 > 2 groups of 512: three groups of 434 columns, one padding column that must never win;
    # duplicated centroids make exact ties, broken towards the lower index like torch.min
    x = torch.randn(1500, 5, generator=_gen(12))
    init = torch.randn(1301, 5, generator=_gen(13))
    init[1000] = init[3]
    assigner = kmeans_module._Assigner(x, (x * x).sum(1), 1301, chunk_size=8192)
    assert (assigner.groups, assigner.group, assigner.k_pad) == (3, 434, 1302)
    assert assigner.chunk == 1500  # max(256, 2^21 / 1302) = 1610 rows, capped at N
    labels, dist = assigner(init)
    ref_labels, _ = _brute_force(x, init)
    assert torch.equal(labels, ref_labels)
    assert bool((labels < 1301).all()) and bool((labels != 1000).all())
    res = kmeans(x, 1301, iters=2, init=init, chunk_size=100)  # blocks of 100 rows, ragged last one
    labels, inertia = _brute_force(x, res.centroids)
    assert torch.equal(res.labels, labels)
    assert res.inertia == pytest.approx(inertia, rel=1e-5)
