"""Positive and negative sampling: pools recomputed by full sorts, labels, gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from study.core.config import build_config
from study.core.errors import UserError
from study.method.cluster_index import cluster_index, index_keys, update_cluster_index
from study.method.sampling import STRATEGIES, inter_sample, sample_positives, scaled_pool, validate_sampling

B, D, K_CLUSTERS, N = 600, 16, 12, 24


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def world():
    """A clustered bank, its labels, and queries close to some bank entries.

    Queries are noisy copies of bank entries, so their most similar entries
    include many of their own label: the same-label rejection is exercised.
    """
    g = _gen(1)
    centers = F.normalize(torch.randn(K_CLUSTERS, D, generator=g), dim=1)
    bank = F.normalize(centers[torch.randint(K_CLUSTERS, (B,), generator=g)]
                       + 0.6 * torch.randn(B, D, generator=g), dim=1)  # (B, D)
    labels = (bank @ centers.T).argmax(1)  # (B,)
    q_idx = torch.randperm(B, generator=g)[:N]  # (N,)
    q = F.normalize(bank[q_idx] + 0.3 * torch.randn(N, D, generator=g), dim=1)  # (N, D)
    index = cluster_index(labels, K_CLUSTERS)
    return bank, labels, q_idx, q, index


def _run(world, strategy, neg_num=30, pool=120, candidates=None, seed=0, q=None):
    bank, labels, q_idx, q0, index = world
    q = (q0 if q is None else q).clone().requires_grad_(True)
    s = inter_sample(q, q_idx, bank, labels, index, strategy, neg_num, pool, candidates, _gen(seed))
    return q, s


def _neg_labels_ok(world, s):
    _, labels, q_idx, _, _ = world
    assert bool((labels[s.neg_idx] != labels[q_idx].unsqueeze(1)).all())


# ---------------------------------------------------------------- positives


def test_cluster_index_consistent_with_labels(world):
    _, labels, _, _, (order, starts, counts) = world
    assert int(counts.sum()) == B
    for c in range(K_CLUSTERS):
        members = order[starts[c]:starts[c] + counts[c]]
        assert set(members.tolist()) == set((labels == c).nonzero().squeeze(1).tolist())


def test_update_cluster_index_hand_computed():
    # labels [1, 0, 1, 2, 0]: order [1, 4, 0, 2, 3]; then 0: 1 -> 2 and 4: 0 -> 1
    # give labels [2, 0, 1, 2, 1]: order [1, 2, 4, 0, 3], counts [1, 2, 2], starts [0, 1, 3]
    labels = torch.tensor([1, 0, 1, 2, 0])
    order, starts, counts = cluster_index(labels, 3)
    assert order.tolist() == [1, 4, 0, 2, 3]
    keys = index_keys(labels, order)
    assert keys.tolist() == [(0 << 32) | 1, (0 << 32) | 4, (1 << 32) | 0, (1 << 32) | 2, (2 << 32) | 3]
    keys, (order, starts, counts) = update_cluster_index(keys, counts, torch.tensor([0, 4]), torch.tensor([1, 0]),
                                                         torch.tensor([2, 1]))
    assert order.tolist() == [1, 2, 4, 0, 3]
    assert counts.tolist() == [1, 2, 2] and starts.tolist() == [0, 1, 3]
    assert keys.tolist() == index_keys(torch.tensor([2, 0, 1, 2, 1]), order).tolist()


@pytest.mark.parametrize("changes", [1, 7, 64, 300])
def test_update_cluster_index_equals_a_full_rebuild(changes):
    # merges at the ends, into empty clusters, out of clusters it empties, several into one position
    g = _gen(changes)
    k, b = 9, 400
    labels = torch.randint(k - 2, (b,), generator=g)  # clusters 7 and 8 start empty
    order, _, counts = cluster_index(labels, k)
    keys = index_keys(labels, order)
    for _ in range(3):
        idx = torch.randperm(b, generator=g)[:changes]
        new = torch.randint(k, (changes,), generator=g)
        moved = new != labels[idx]
        idx, new = idx[moved], new[moved]
        keys, (order, starts, counts) = update_cluster_index(keys, counts, idx, labels[idx], new)
        labels[idx] = new
        ref = cluster_index(labels, k)
        assert torch.equal(order, ref[0]) and torch.equal(starts, ref[1]) and torch.equal(counts, ref[2])
        assert torch.equal(keys, index_keys(labels, ref[0]))


def test_positives_share_label_and_are_uniform(world):
    _, labels, q_idx, _, index = world
    # one query repeated many times: its positives must cover its cluster uniformly
    i = int(q_idx[0])
    members = (labels == labels[i]).nonzero().squeeze(1)
    draws = 200 * members.numel()
    pos = sample_positives(torch.full((draws,), i), labels, *index, _gen(3))
    assert bool((labels[pos] == labels[i]).all())
    freq = torch.bincount(pos, minlength=B)[members].float()  # (n,)
    assert bool((freq > 0).all())  # every member, the query's own entry included
    assert float((freq / 200 - 1).abs().max()) < 0.45  # ~200 each; 0.45 is > 6 sigma


def test_positives_of_batch(world):
    _, labels, q_idx, _, index = world
    pos = sample_positives(q_idx, labels, *index, _gen(4))
    assert pos.shape == q_idx.shape
    assert torch.equal(labels[pos], labels[q_idx])


# ---------------------------------------------------------------- negatives


def _full_sort_pools(world, pool, largest, cols=None):
    """Per query, the set of bank indices in the pool, by a full sort."""
    bank, _, _, q, _ = world
    feats = bank if cols is None else bank[cols]
    sim = q @ feats.T
    order = sim.argsort(dim=1, descending=largest)[:, :pool]
    if cols is not None:
        order = cols[order]
    return [set(row.tolist()) for row in order]


@pytest.mark.parametrize("strategy,largest", [("semi-hard", True), ("semi-easy", False)])
def test_semi_negatives_lie_in_pool_and_differ_in_label(world, strategy, largest):
    _, s = _run(world, strategy, neg_num=30, pool=120)
    assert s.neg_idx.shape == (N, 30)
    _neg_labels_ok(world, s)
    pools = _full_sort_pools(world, 120, largest)
    for row, pool in zip(s.neg_idx.tolist(), pools):
        assert set(row) <= pool


def test_random_negatives_differ_in_label_and_spread(world):
    _, s = _run(world, "random", neg_num=200)
    _neg_labels_ok(world, s)
    assert s.neg_idx.unique().numel() > B // 2  # spread over the bank, not a pool


def test_random_small_k_gather_path(world):
    # K * 100 < S takes the row-gather path instead of the full matmul
    q, s = _run(world, "random", neg_num=3)
    _neg_labels_ok(world, s)
    bank = world[0]
    assert torch.allclose(s.neg_cos, (bank[s.neg_idx] * q.detach().unsqueeze(1)).sum(2), atol=1e-6)


def test_hard_is_exact_top_different_label(world):
    bank, labels, q_idx, q, _ = world
    _, s = _run(world, "hard", neg_num=25)
    _neg_labels_ok(world, s)
    sim = q @ bank.T
    for n in range(N):
        other = (labels != labels[q_idx[n]]).nonzero().squeeze(1)
        best = other[sim[n, other].argsort(descending=True)[:25]]
        assert set(s.neg_idx[n].tolist()) == set(best.tolist())


def test_hard_ignores_candidates(world):
    _, exact = _run(world, "hard", neg_num=25)
    _, cand = _run(world, "hard", neg_num=25, candidates=50)
    assert cand.candidates is None
    assert torch.equal(exact.neg_idx.sort(1).values, cand.neg_idx.sort(1).values)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_candidates_at_least_bank_equals_exact(world, strategy):
    _, exact = _run(world, strategy, seed=7)
    _, cand = _run(world, strategy, candidates=B, seed=7)
    _, more = _run(world, strategy, candidates=10 * B, seed=7)
    assert cand.candidates is None and more.candidates is None
    for other in (cand, more):
        assert torch.equal(exact.pos_idx, other.pos_idx)
        assert torch.equal(exact.neg_idx.sort(1).values, other.neg_idx.sort(1).values)


@pytest.mark.parametrize("strategy,largest", [("semi-hard", True), ("semi-easy", False)])
def test_candidates_semi_negatives_in_candidate_top_pool(world, strategy, largest):
    c, pool = 200, 120
    _, s = _run(world, strategy, neg_num=10, pool=pool, candidates=c)
    assert s.candidates is not None and s.candidates.numel() == c
    assert s.candidates.unique().numel() == c  # a subset: no repeats
    pool_c = scaled_pool(pool, c, B)
    assert pool_c == 40
    _neg_labels_ok(world, s)
    pools = _full_sort_pools(world, pool_c, largest, cols=s.candidates)
    for row, p in zip(s.neg_idx.tolist(), pools):
        assert set(row) <= p


def test_candidates_random_draws_from_candidates(world):
    _, s = _run(world, "random", neg_num=40, candidates=100)
    _neg_labels_ok(world, s)
    assert set(s.neg_idx.flatten().tolist()) <= set(s.candidates.tolist())


@pytest.mark.parametrize("strategy,kw", [
    ("semi-hard", {}), ("semi-easy", {}), ("hard", {}), ("random", {"neg_num": 3}), ("random", {}),
    ("semi-hard", {"candidates": 200}),
])
def test_cosines_and_gradients_reach_query(world, strategy, kw):
    bank = world[0]
    q, s = _run(world, strategy, **kw)
    qd = q.detach()
    assert torch.allclose(s.pos_cos, (qd * bank[s.pos_idx]).sum(1), atol=1e-6)
    assert torch.allclose(s.neg_cos, (bank[s.neg_idx] * qd.unsqueeze(1)).sum(2), atol=1e-6)
    (s.pos_cos.sum() + s.neg_cos.sum()).backward()
    # d/dq of sum of dot products: the positive row plus all negative rows
    expect = bank[s.pos_idx] + bank[s.neg_idx].sum(1)
    assert torch.allclose(q.grad, expect, atol=1e-5)


def test_same_seed_same_sample(world):
    _, a = _run(world, "semi-hard", seed=11, candidates=300)
    _, b = _run(world, "semi-hard", seed=11, candidates=300)
    assert torch.equal(a.neg_idx, b.neg_idx) and torch.equal(a.pos_idx, b.pos_idx)


def test_given_positives_are_used(world):
    bank, labels, q_idx, q, index = world
    pos = sample_positives(q_idx, labels, *index, _gen(5))
    s = inter_sample(q, q_idx, bank, labels, index, "semi-hard", 10, 100, None, _gen(0), pos_idx=pos)
    assert torch.equal(s.pos_idx, pos)


# ------------------------------------------------- rejection and its fallback


def _tiny_world(pool_labels):
    """One query whose P most similar entries carry ``pool_labels`` (query label 0)."""
    p = len(pool_labels)
    b = p + 50
    sims = torch.cat([torch.linspace(0.99, 0.9, p), torch.linspace(0.5, -0.5, 50)])  # (b,)
    # bank rows with a chosen cosine to e0: [s, sqrt(1-s^2), 0...]
    bank = torch.zeros(b, 3)
    bank[:, 0] = sims
    bank[:, 1] = (1 - sims ** 2).sqrt()
    labels = torch.cat([torch.tensor(pool_labels), torch.zeros(50, dtype=torch.long)])
    q = torch.tensor([[1.0, 0.0, 0.0]], requires_grad=True)
    q_idx = torch.tensor([0])
    return q, q_idx, bank, labels, cluster_index(labels, 3)


def test_semi_hard_uniform_over_valid_pool_entries_with_fallback():
    # 6 of the 10 pool entries share the query's label 0: many draws need more
    # than the rejection rounds, so the exact fallback runs too.
    pool_labels = [0, 1, 0, 0, 2, 0, 1, 0, 0, 2]
    q, q_idx, bank, labels, index = _tiny_world(pool_labels)
    reps = 800  # the same query 800 times, 10 negatives each: 8000 draws
    qs = q.detach().expand(reps, 3).clone().requires_grad_(True)
    s = inter_sample(qs, q_idx.expand(reps), bank, labels, index, "semi-hard", 10, 10, None, _gen(2))
    assert bool((labels[s.neg_idx] != 0).all())
    valid = [i for i, lab in enumerate(pool_labels) if lab != 0]
    freq = torch.bincount(s.neg_idx.flatten(), minlength=bank.shape[0]).float()
    assert set(s.neg_idx.flatten().tolist()) == set(valid)
    assert float((freq[valid] / 2000 - 1).abs().max()) < 0.1  # 2000 each expected


def test_pool_without_other_label_falls_back_to_the_whole_bank():
    # the 10 most similar entries all share the query's label 0; the only other
    # labels lie outside the pool: the row draws from every different-label entry
    q, q_idx, bank, labels, index = _tiny_world([0] * 10)
    labels[-5:] = 1
    index = cluster_index(labels, 3)
    s = inter_sample(q, q_idx, bank, labels, index, "semi-hard", 8, 10, None, _gen(0))
    assert bool((labels[s.neg_idx] == 1).all())
    assert set(s.neg_idx.flatten().tolist()) <= set(range(bank.shape[0] - 5, bank.shape[0]))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_collapsed_labels_are_counted_not_fatal(strategy):
    # every bank entry shares the query's label (labels collapsed, or identical images):
    # the reference would loop forever; the query is counted as starved and draws
    # its negatives ignoring labels, so training goes on
    q, q_idx, bank, labels, index = _tiny_world([0] * 10)
    s = inter_sample(q, q_idx, bank, labels, index, strategy, 5, 10, None, _gen(0))
    assert s.starved == 1
    assert s.neg_idx.shape == (1, 5) and bool(torch.isfinite(s.neg_cos).all())
    assert set(s.neg_idx.flatten().tolist()) <= set(range(bank.shape[0]))


def test_hard_with_too_few_other_labels_is_starved():
    # 3 entries carry another label, hard needs 5: the query ranks every entry instead
    g = _gen(0)
    bank = F.normalize(torch.randn(30, 4, generator=g), dim=1)
    labels = torch.zeros(30, dtype=torch.long)
    labels[:3] = 1
    q = bank[5:6].clone().requires_grad_(True)
    s = inter_sample(q, torch.tensor([5]), bank, labels, cluster_index(labels, 2), "hard", 5, 5, None, g)
    assert s.starved == 1
    expected = (bank[5] @ bank.T).topk(5).indices  # the 5 most similar of all, labels ignored
    assert set(s.neg_idx.flatten().tolist()) == set(expected.tolist())
    # a query of the small cluster has 27 others: not starved, and never a same-label negative
    q1 = bank[1:2].clone().requires_grad_(True)
    s1 = inter_sample(q1, torch.tensor([1]), bank, labels, cluster_index(labels, 2), "hard", 5, 5, None, g)
    assert s1.starved == 0 and bool((labels[s1.neg_idx] == 0).all())


# ---------------------------------------------------------------- validation


def test_validate_unknown_strategy_names_key_and_allowed():
    with pytest.raises(ValueError) as err:
        validate_sampling("semihard", 10, 100, 1000)
    msg = str(err.value)
    assert "sampling" in msg and "allowed" in msg and all(name in msg for name in STRATEGIES)
    with pytest.raises(UserError) as err:  # the user's error, at load
        build_config("smoke", {"sampling": "semihard"})
    msg = str(err.value)
    assert "sampling" in msg and all(name in msg for name in STRATEGIES)


@pytest.mark.parametrize("args,key", [
    (("semi-hard", 0, 100, 1000), "neg_num"),
    (("random", 2000, 100, 1000), "neg_num"),
    (("semi-hard", 100, 50, 1000), "pool"),
    (("semi-easy", 100, 2000, 1000), "pool"),
])
def test_validate_bad_numbers_name_key(args, key):
    with pytest.raises(ValueError, match=f"{key} must"):
        validate_sampling(*args)
    strategy, neg_num, pool, bank = args
    with pytest.raises(UserError, match=f"'{key}'"):  # the user's error, at load
        build_config("smoke", {"sampling": strategy, "neg_num": neg_num, "pool": pool, "train_subset": bank})


def test_validate_pool_ignored_where_unused_and_candidates_checked():
    validate_sampling("hard", 10, 1, 1000)
    validate_sampling("random", 10, 1, 1000)
    with pytest.raises(ValueError, match="candidates must"):
        validate_sampling("semi-hard", 10, 100, 1000, candidates=0)
    with pytest.raises(UserError, match="candidates"):  # the user's error, at load
        build_config("smoke", {"candidates": 0})


def test_inter_sample_rejects_unknown_strategy(world):
    with pytest.raises(ValueError, match="sampling"):
        _run(world, "hardest")


def test_scaled_pool():
    assert scaled_pool(6000, 8192, 60000) == 819
    assert scaled_pool(1, 10, 60000) == 1  # never empty
    assert scaled_pool(500, 100, 600) == 83


def test_settings_are_checked_once_when_the_method_is_built_not_at_each_step(world, monkeypatch):
    """The config checks them at load (the user's error); the unit once more when built (ValueError for a direct
    caller); the step itself does not re-check them (issue 25: no per-step re-validation)."""
    import study.method.sampling as sampling
    from study.method.interclr import InterCLR, InterSettings
    from study.method.model import Encoder, build_backbone

    calls = []
    monkeypatch.setattr(sampling, "validate_sampling", lambda *a, **k: calls.append(a))
    bank, labels = world[0], world[1]
    q = F.normalize(torch.randn(4, bank.shape[1]), dim=1)
    inter_sample(q, torch.arange(4), bank, labels, cluster_index(labels, K_CLUSTERS), "semi-hard", 8, 64, None, _gen())
    assert calls == []
    settings = InterSettings(labels="online", sampling="semi-hard", neg_num=8, pool=4, candidates=None,
                             margin_type="cosine", margin=-0.5, num_clusters=4, min_cluster=2, centroid_every=10,
                             kmeans_iters=2, bank_momentum=1.0, intra_weight=0.75, inter_weight=0.25)
    monkeypatch.undo()
    encoder = Encoder(build_backbone("convnet", 1, [4, 8], 16), 16, 16)
    with pytest.raises(ValueError, match="pool must be >= neg_num"):
        InterCLR(encoder, num_samples=100, feat_dim=16, queue_size=32, key_momentum=0.99, temperature=0.2,
                 inter=settings)
