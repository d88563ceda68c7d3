"""Inter-image positive and negative sampling (pure functions of tensors).

For each query (training image ``i`` with pseudo-label ``l = labels[i]``):

- positive: one memory-bank entry drawn uniformly among all entries with
  label ``l`` (the query's own entry included, as in the reference);
- negatives, ``neg_num`` per query, by one of the study's strategies
  (the paper's second finding is that semi-hard beats hard):

  ``random``     uniform over the bank, same-label entries excluded;
  ``semi-easy``  uniform over the ``pool`` LEAST similar entries, same-label excluded;
  ``semi-hard``  uniform over the ``pool`` MOST similar entries, same-label excluded;
  ``hard``       the ``neg_num`` most similar entries that do not share the label.

Draws follow the reference: ``random`` draws i.i.d. WITH replacement over
the bank (the reference's alias method), redrawing same-label hits;
``semi-easy`` and ``semi-hard`` draw ``neg_num`` distinct positions of the
pool (WITHOUT replacement), then redraw the same-label ones uniformly from
the pool, so a few duplicates occur. ``hard`` is deterministic and has no draw.

Two search modes (performance; see :func:`inter_sample`):

- exact: similarity of the batch against the whole bank (reference).
- candidates: similarity only against one uniformly random subset of ``C``
  bank entries drawn per call and shared by the batch; pools are scaled by
  ``C / B`` (:func:`scaled_pool`). ``hard`` always searches the whole bank,
  because its definition is a global top-k. With ``C >= B`` candidates mode
  is exact mode.

Similarity is computed once as ``sim = q @ feats.T`` without gradient; indices
are chosen on it and the chosen cosines gathered from it, and their gradient
reaches the query through ``_GatheredCosine`` (an ``embedding_bag`` backward):
no dense ``(N, S)`` gradient, no second ``N x S x d`` matmul, no forward
``N x K x d`` gather.
``random`` needs no similarity: it gathers its K rows per query (``N x K x d``)
when ``K * 100 < S`` and uses the ``N x S`` matmul otherwise (the measured
CPU crossover; at K = 4096 the matmul is several times cheaper).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional

import torch
from torch import Tensor

from study.method import registry
from study.method.cluster_index import ClusterIndex
from study.method.sizes import scaled_pool  # noqa: F401 (the pool within a candidate set; re-exported)



# Rejection rounds before the exact (cumsum + searchsorted) fallback. Each round
# only redraws the rejected positions, so rounds are cheap; the fallback bounds
# the cost when a pool is mostly same-label.
_REJECTION_ROUNDS = 8

# Random negatives need no similarity search. Gathering the K drawn rows per
# query (an N x K x d copy + bmm) beats one N x S matmul only while K is small:
# measured on one CPU thread (N=256, d=128, S=60000) gather costs about 100x
# more per (query, entry) pair than the matmul, so gather iff K * 100 < S.
_GATHER_COST_RATIO = 100


# ---------------------------------------------------------------------------
# Random numbers (all draws come from the caller's generator: reproducible)
# ---------------------------------------------------------------------------


def _rand(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> Tensor:
    """Uniform [0, 1) floats drawn on the generator's device, moved to ``device``."""
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def _randint(high: int, shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> Tensor:
    """Uniform integers in [0, high) drawn on the generator's device, moved to ``device``."""
    return torch.randint(high, shape, generator=generator, device=generator.device).to(device)


def _uniform_below(n: Tensor, num: int, generator: torch.Generator) -> Tensor:
    """Per row, ``num`` uniform integers in ``[0, n[r])``.

    Args:
        n: ``(R,)`` positive counts.
    Returns:
        ``(R, num)`` long. (``torch.randint`` takes one scalar bound only.)
    """
    u = _rand((n.shape[0], num), generator, n.device)  # (R, num)
    # float32 rounding can give exactly n for large n: clamp back into range.
    return torch.minimum((u * n.unsqueeze(1)).long(), (n - 1).unsqueeze(1))


def _lookup(values: Tensor, index: Tensor) -> Tensor:
    """``values[index]`` for a 1-D ``values`` and an index of any shape.

    ``index_select`` on the flattened index: several times faster on CPU than
    advanced indexing for the ``N x K`` (~1M) lookups of each draw.
    """
    return values.index_select(0, index.reshape(-1)).view(index.shape)


# ---------------------------------------------------------------------------
# Positives
# ---------------------------------------------------------------------------


def sample_positives(
    idx: Tensor,
    labels: Tensor,
    order: Tensor,
    starts: Tensor,
    counts: Tensor,
    generator: torch.Generator,
) -> Tensor:
    """One uniform same-label bank entry per query (the query's own entry included).

    Args:
        idx: ``(N,)`` training-set indices of the queries.
        labels: ``(B,)`` pseudo-labels; ``order, starts, counts`` from
            :func:`cluster_index` of these labels.
    Returns:
        ``(N,)`` long bank indices of the positives.
    """
    lab = labels[idx]  # (N,)
    n = counts[lab]  # (N,) members of each query's cluster
    if bool((n == 0).any()):
        # The query itself carries its label, so an empty cluster means the
        # index was built from other labels than ``labels``.
        raise RuntimeError("cluster index is stale: a query's cluster has no members; rebuild it")
    offset = _uniform_below(n, 1, generator).squeeze(1)  # (N,)
    return order[starts[lab] + offset]  # (N,)


# ---------------------------------------------------------------------------
# Negatives: drawing with same-label rejection
# ---------------------------------------------------------------------------


def _pool_labels(pool_cols: Optional[Tensor], col_labels: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
    """Columns and labels of the pools of some rows.

    Returns ``(cols (R, P), labels (R, P))``; ``pool_cols=None`` means the pool is
    every column (expanded view, no copy).
    """
    if pool_cols is None:
        size = col_labels.shape[0]
        cols = torch.arange(size, device=col_labels.device).expand(rows.shape[0], size)  # (R, S)
    else:
        cols = pool_cols[rows]  # (R, P)
    return cols, _lookup(col_labels, cols)


def _draw_exact_rows(
    pool_cols: Optional[Tensor],
    col_labels: Tensor,
    q_labels: Tensor,
    rows: Tensor,
    num: int,
    generator: torch.Generator,
) -> Tensor:
    """Uniform draws over the different-label entries of each row's pool, without rejection.

    The r-th valid entry of a row is found with a cumulative count and
    ``searchsorted``; O(R * P), used only for the rows rejection left unfinished.

    Returns:
        ``(R, num)`` columns.
    """
    cols, labs = _pool_labels(pool_cols, col_labels, rows)  # (R, P), (R, P)
    valid = labs != q_labels[rows].unsqueeze(1)  # (R, P)
    n_valid = valid.sum(1)  # (R,)
    empty = n_valid == 0  # (R,)
    if bool(empty.any()):
        if pool_cols is None:
            bad = rows[empty][:5].tolist()
            raise RuntimeError(
                f"every bank entry shares the query's pseudo-label (batch rows {bad}): "
                "the pseudo-labels collapsed to one cluster"
            )
        # A pool made only of the query's own (giant) cluster: such a row falls back
        # to uniform draws over every different-label column rather than stopping a
        # long run (the reference would loop forever here). Rare with pool >> cluster size.
        out = torch.empty(rows.shape[0], num, dtype=torch.long, device=col_labels.device)  # (R, num)
        out[empty] = _draw_exact_rows(None, col_labels, q_labels, rows[empty], num, generator)
        if bool((~empty).any()):
            out[~empty] = _draw_exact_rows(pool_cols, col_labels, q_labels, rows[~empty], num, generator)
        return out
    rank = _uniform_below(n_valid, num, generator) + 1  # (R, num) 1-based rank among valid entries
    cum = valid.cumsum(1)  # (R, P) valid entries up to each position
    pos = torch.searchsorted(cum, rank)  # (R, num) first position with cum == rank
    return cols.gather(1, pos)  # (R, num)


def _distinct_positions(n_rows: int, size: int, num: int, generator: torch.Generator,
                        device: torch.device) -> Tensor:
    """``(n_rows, num)`` positions in ``[0, size)``, distinct within a row, each row a uniform ``num``-subset.

    The ``num`` smallest of ``size`` i.i.d. uniform keys (``topk`` of random
    keys): one vectorised call instead of a per-row ``randperm``.
    """
    keys = _rand((n_rows, size), generator, device)  # (N, size)
    return keys.topk(num, dim=1, largest=False, sorted=False).indices  # (N, num)


def _draw_excluding(
    pool_cols: Optional[Tensor],
    col_labels: Tensor,
    q_labels: Tensor,
    num: int,
    generator: torch.Generator,
    distinct: bool = False,
) -> Tensor:
    """Draw ``num`` pool entries per query uniformly, same-label excluded.

    Args:
        pool_cols: ``(N, P)`` columns forming each query's pool, or None for
            "all ``S`` columns".
        col_labels: ``(S,)`` pseudo-label of each column.
        q_labels: ``(N,)`` pseudo-label of each query (-1: exclude nothing).
        distinct: the first draw takes ``num`` DISTINCT pool positions (the
            reference's semi-hard / semi-easy draw; needs ``P >= num``); else
            i.i.d. with replacement (the reference's random draw). Same-label
            hits are then redrawn with replacement in both cases.
    Returns:
        ``(N, num)`` columns, none with the query's label.
    """
    n_rows = q_labels.shape[0]
    size = col_labels.shape[0] if pool_cols is None else pool_cols.shape[1]
    if distinct and size >= num:
        pos = _distinct_positions(n_rows, size, num, generator, q_labels.device)  # (N, num)
    else:
        pos = _randint(size, (n_rows, num), generator, q_labels.device)  # (N, num) pool positions
    cols = pos if pool_cols is None else pool_cols.gather(1, pos)  # (N, num)
    bad = _lookup(col_labels, cols) == q_labels.unsqueeze(1)  # (N, num)
    # Vectorised rejection: each round redraws only the rejected positions.
    for _ in range(_REJECTION_ROUNDS):
        if not bool(bad.any()):
            return cols
        r, c = bad.nonzero(as_tuple=True)  # (M,), (M,)
        p = _randint(size, (r.shape[0],), generator, q_labels.device)  # (M,)
        new = p if pool_cols is None else pool_cols[r, p]  # (M,)
        cols[r, c] = new
        bad[r, c] = col_labels[new] == q_labels[r]
    if bool(bad.any()):
        # A mostly same-label pool: finish these rows exactly (bounded cost, and
        # it detects a pool with no valid entry instead of looping forever).
        rows = bad.any(1).nonzero().squeeze(1)  # (R,)
        fresh = _draw_exact_rows(pool_cols, col_labels, q_labels, rows, num, generator)  # (R, num)
        cols[rows] = torch.where(bad[rows], fresh, cols[rows])
    return cols


# ---------------------------------------------------------------------------
# Negative strategies: each maps (sim, labels) -> chosen columns. Each is named once,
# in study.method.registry.SAMPLERS, with its flags.
# ---------------------------------------------------------------------------


def neg_random(sim: Optional[Tensor], col_labels: Tensor, q_labels: Tensor, neg_num: int, pool: int,
               generator: torch.Generator) -> Tensor:
    """Uniform over all columns, same-label excluded. ``sim`` and ``pool`` unused."""
    return _draw_excluding(None, col_labels, q_labels, neg_num, generator)


def _neg_semi(largest: bool) -> Callable[..., Tensor]:
    """Semi-hard (``largest``) or semi-easy: uniform over the ``pool`` most/least similar."""

    def sample(sim: Tensor, col_labels: Tensor, q_labels: Tensor, neg_num: int, pool: int,
               generator: torch.Generator) -> Tensor:
        pool = min(pool, sim.shape[1])
        # The pool is a set (draws are uniform over it): no need to sort it.
        pool_cols = sim.topk(pool, dim=1, largest=largest, sorted=False).indices  # (N, P)
        return _draw_excluding(pool_cols, col_labels, q_labels, neg_num, generator, distinct=True)

    return sample


neg_semi_easy = _neg_semi(largest=False)
neg_semi_hard = _neg_semi(largest=True)


def neg_hard(sim: Tensor, col_labels: Tensor, q_labels: Tensor, neg_num: int, pool: int,
             generator: torch.Generator) -> Tensor:
    """The ``neg_num`` most similar different-label columns (exact: mask, then top-k)."""
    same = col_labels.unsqueeze(0) == q_labels.unsqueeze(1)  # (N, S)
    masked = sim.masked_fill(same, float("-inf"))  # (N, S) copy; sim itself is untouched
    top = masked.topk(neg_num, dim=1, sorted=False)  # (N, K)
    if bool(torch.isinf(top.values).any()):
        raise RuntimeError(
            f"fewer than neg_num={neg_num} bank entries have a label other than the query's; "
            "lower 'neg_num' or use more clusters"
        )
    return top.indices


class NegativeSampler(NamedTuple):
    """One named negative strategy: its function and the flags of its registry entry."""

    fn: Callable[..., Tensor]  # (sim (N,S) | None, col_labels (S,), q_labels (N,), neg_num, pool, gen) -> (N,K)
    needs_similarity: bool  # False: may be given sim=None
    uses_pool: bool
    global_topk: bool  # True: always searches the whole bank (ignores candidates)


def _resolve_sampler(entry: registry.Sampler) -> NegativeSampler:
    return NegativeSampler(registry.load(entry.fn), entry.needs_similarity, entry.uses_pool, entry.global_topk)


# strategy name -> its function and flags, resolved from study.method.registry.SAMPLERS (where a strategy is
# named; the one registry of strategies, this its view of their functions)
NEGATIVE_SAMPLERS: Mapping[str, NegativeSampler] = registry.Resolved(registry.SAMPLERS, _resolve_sampler)
STRATEGIES = tuple(registry.SAMPLERS)  # the paper's four, then any added in study/method/registry.py


# ---------------------------------------------------------------------------
# Validation and derived sizes
# ---------------------------------------------------------------------------


def validate_sampling(strategy: str, neg_num: int, pool: int, bank_size: int,
                      candidates: Optional[int] = None) -> None:
    """Check sampling settings against each other and the bank size; raise ValueError.

    ``pool`` is checked only for the strategies that use it (semi-easy,
    semi-hard); ``candidates`` (None = exact search) must be >= 1.
    """
    if strategy not in NEGATIVE_SAMPLERS:
        raise ValueError(f"unknown sampling strategy {strategy!r}; allowed: {', '.join(NEGATIVE_SAMPLERS)}")
    if neg_num < 1:
        raise ValueError(f"neg_num must be >= 1 (got {neg_num})")
    if neg_num > bank_size:
        raise ValueError(f"neg_num must be <= the bank size {bank_size} (got {neg_num})")
    if NEGATIVE_SAMPLERS[strategy].uses_pool:
        if pool < neg_num:
            raise ValueError(f"pool must be >= neg_num ({neg_num}) for sampling {strategy!r} (got {pool})")
        if pool > bank_size:
            raise ValueError(f"pool must be <= the bank size {bank_size} (got {pool})")
    if candidates is not None and candidates < 1:
        raise ValueError(f"candidates must be >= 1 or None for exact search (got {candidates})")


# ---------------------------------------------------------------------------
# The inter-image sample
# ---------------------------------------------------------------------------


@dataclass
class InterSample:
    """Positives and negatives of one batch.

    pos_idx: ``(N,)`` bank indices of the positives.
    neg_idx: ``(N, K)`` bank indices of the negatives.
    pos_cos: ``(N,)`` cosine query-positive, with gradient to the query.
    neg_cos: ``(N, K)`` cosines query-negatives, with gradient to the query.
    candidates: ``(C,)`` bank indices searched in candidates mode, None when exact.
    starved: queries whose searched entries held fewer different-label entries
        than they need (1, or ``neg_num`` for ``hard``): degenerate labels. Their
        negatives were drawn ignoring labels (see :func:`inter_sample`).
    """

    pos_idx: Tensor
    neg_idx: Tensor
    pos_cos: Tensor
    neg_cos: Tensor
    candidates: Optional[Tensor] = None
    starved: int = 0


def _draw_candidates(bank_size: int, candidates: int, generator: torch.Generator,
                     device: torch.device) -> Tensor:
    """``(C,)`` distinct bank indices, a uniformly random C-subset in random order.

    For ``C`` much smaller than ``B``: draw a few more than ``C`` indices with
    replacement and drop duplicates (the distinct values of i.i.d. uniform
    draws are, given their number, a uniform subset), then keep a uniformly
    random ``C`` of them: O(C log C) instead of an O(B) randperm (~8 ms at 1.28M).
    """
    if 4 * candidates > bank_size:
        perm = torch.randperm(bank_size, generator=generator, device=generator.device)
        return perm[:candidates].to(device)
    extra = max(16, int(3 * candidates * candidates / bank_size) + 16)  # >> expected duplicates C^2 / 2B
    while True:
        draws = torch.randint(bank_size, (candidates + extra,), generator=generator, device=generator.device)
        distinct = torch.unique(draws)  # sorted
        if distinct.shape[0] >= candidates:
            pick = torch.randperm(distinct.shape[0], generator=generator, device=generator.device)[:candidates]
            return distinct[pick].to(device)
        extra *= 2


class _GatheredCosine(torch.autograd.Function):
    """``cos[n, k] = q[n] . feats[cols[n, k]]`` from precomputed values, with a sparse backward.

    Forward returns the given values (gathered from a no-grad ``q @ feats.T``);
    backward is ``grad_q[n] = sum_k grad[n, k] feats[cols[n, k]]``, one
    ``embedding_bag``: O(N K d) reads instead of the dense ``(N, S)``
    gradient and a second ``N x S x d`` matmul.
    """

    @staticmethod
    def forward(ctx, q: Tensor, values: Tensor, feats: Tensor, cols: Tensor) -> Tensor:
        ctx.save_for_backward(feats, cols)
        return values.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):
        feats, cols = ctx.saved_tensors
        grad_q = torch.nn.functional.embedding_bag(cols, feats, per_sample_weights=grad.to(feats.dtype),
                                                   mode="sum")
        return grad_q.to(grad.dtype), None, None, None


def _negatives(q: Tensor, feats: Tensor, col_labels: Tensor, q_labels: Tensor, sampler: NegativeSampler,
               neg_num: int, pool: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Choose negatives among ``feats`` and return ``(cols (N,K), cos (N,K) with grad)``."""
    size = feats.shape[0]
    if sampler.needs_similarity or neg_num * _GATHER_COST_RATIO >= size:
        with torch.no_grad():
            sim = q @ feats.T  # (N, S): selection and forward values, no (N, S) gradient
        cols = sampler.fn(sim, col_labels, q_labels, neg_num, pool, generator)  # (N, K)
        values = sim.gather(1, cols)  # (N, K)
        del sim
        return cols, _GatheredCosine.apply(q, values, feats, cols)  # (N, K)
    # Few random negatives: cheaper to gather their rows than to score all S.
    cols = sampler.fn(None, col_labels, q_labels, neg_num, pool, generator)  # (N, K)
    cos = torch.bmm(feats[cols], q.unsqueeze(2)).squeeze(2)  # (N,K,d) @ (N,d,1) -> (N, K)
    return cols, cos


def inter_sample(
    q: Tensor,
    q_idx: Tensor,
    bank_feats: Tensor,
    labels: Tensor,
    index: ClusterIndex,
    strategy: str,
    neg_num: int,
    pool: int,
    candidates: Optional[int],
    generator: torch.Generator,
    *,
    pos_idx: Optional[Tensor] = None,
    shared_generator: Optional[torch.Generator] = None,
) -> InterSample:
    """Positives and negatives for the inter-image branch.

    Args:
        q: ``(N, d)`` L2-normalised query features, with gradient.
        q_idx: ``(N,)`` training-set indices of the queries.
        bank_feats: ``(B, d)`` L2-normalised memory bank (no gradient).
        labels: ``(B,)`` pseudo-labels; ``index`` = :func:`cluster_index` of them.
        strategy: one of :data:`STRATEGIES`.
        neg_num: ``K`` negatives per query.
        pool: pool size in the whole bank (semi-easy / semi-hard only).
        candidates: None for exact search; else ``C``: search one random subset
            of ``C`` entries (shared by the batch) with the pool scaled to
            :func:`scaled_pool`. Ignored by ``hard`` (a global top-k, always
            exact) and when ``C >= B``. ``random`` then draws from the subset
            (each draw is still marginally uniform over the bank).
        generator: source of the random draws (on the device it draws on).
        pos_idx: ``(N,)`` positives chosen by the caller (e.g. drawn for the
            global batch under DDP); None draws them here with ``generator``.
        shared_generator: draws the candidate set when given (a generator in
            the same state on every rank gives every rank the same subset);
            None uses ``generator``.

    Returns:
        :class:`InterSample`; negatives never share the query's label.

    Departures from the reference: the optional candidates mode is ours (the
    reference always searches the whole bank); starved queries (see
    :class:`InterSample`) draw ignoring labels where the reference never returns.
    """
    bank_size = bank_feats.shape[0]
    # the settings are checked once, when the method is built (InterCLR; the config at load): not per step
    sampler = NEGATIVE_SAMPLERS.get(strategy)
    if sampler is None:
        raise ValueError(f"unknown sampling strategy {strategy!r}; allowed: {', '.join(NEGATIVE_SAMPLERS)}")
    q_labels = labels[q_idx]  # (N,)

    if pos_idx is None:
        pos_idx = sample_positives(q_idx, labels, *index, generator)  # (N,)
    elif pos_idx.shape != q_idx.shape:
        raise ValueError(f"pos_idx must have shape {tuple(q_idx.shape)}, got {tuple(pos_idx.shape)}")
    pos_cos = (q * bank_feats[pos_idx]).sum(1)  # (N,)

    cand = None
    feats, col_labels, pool_s = bank_feats, labels, pool  # exact: search the whole bank
    if candidates is not None and candidates < bank_size and not sampler.global_topk:
        cand_gen = generator if shared_generator is None else shared_generator
        cand = _draw_candidates(bank_size, candidates, cand_gen, bank_feats.device)  # (C,)
        feats = bank_feats.index_select(0, cand)  # (C, d): C rows, not a bank copy
        col_labels = labels.index_select(0, cand)  # (C,)
        pool_s = scaled_pool(pool, candidates, bank_size)

    # Starved queries: their label covers so much of the searched entries that fewer than
    # `need` others are left (all images identical, or labels collapsed). The reference
    # loops forever there; we draw their negatives ignoring labels (label -1 matches no
    # column) and report how many, so degenerate data cannot stop a run.
    need = neg_num if sampler.global_topk else 1
    counts = index[2] if cand is None else torch.bincount(col_labels, minlength=index[2].shape[0])  # (k,)
    starved = counts.index_select(0, q_labels) > col_labels.shape[0] - need  # (N,)
    n_starved = int(starved.sum())
    if n_starved:
        q_labels = q_labels.masked_fill(starved, -1)

    cols, neg_cos = _negatives(q, feats, col_labels, q_labels, sampler, neg_num, pool_s, generator)
    neg_idx = cols if cand is None else _lookup(cand, cols)  # (N, K) bank indices
    return InterSample(pos_idx=pos_idx, neg_idx=neg_idx, pos_cos=pos_cos, neg_cos=neg_cos, candidates=cand,
                       starved=n_starved)
