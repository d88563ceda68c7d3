"""InterCLR on one screen: MoCo v2's intra-image branch plus the inter-image branch.

:class:`InterCLR` owns the two encoders, the key queue and, with the inter
branch on, the memory bank and the pseudo-labels. It exposes the three things
the method does: the step's loss (:meth:`InterCLR.loss`), the update after
the optimizer step (:meth:`InterCLR.after_step`), and the clustering at the
start and at each offline re-clustering (:meth:`InterCLR.init_state`,
:meth:`InterCLR.recluster`). MoCo v2 is the same unit with ``inter=None``.

The training loop (schedule, optimizer, data, checkpoints) is the trainer's.
Under DDP the unit sees this rank's slice of the global batch; ``gather``
all-gathers a tensor over the ranks (the identity in one process), so every
rank keeps the same queue, bank and labels, and ``rank`` picks this rank's
slice of what is drawn for the global batch. Random draws come from the
generators handed to each call: ``shared`` (the same state on every rank)
and ``own`` (this rank's), in the order the reference's step makes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from study.method.bank import MemoryBank
from study.method.kmeans import kmeans
from study.method.labels import PseudoLabels
from study.method.losses import contrastive_loss
from study.method.model import Encoder, KeyQueue, MoCo
from study.method.sampling import InterSample, inter_sample, sample_positives, validate_sampling


@dataclass(frozen=True)
class InterSettings:
    """The inter-image branch's settings (see the config's keys of the same names)."""

    labels: str  # "online" (relabelled every iteration) or "offline" (k-means every few epochs)
    sampling: str  # a strategy of study.method.registry.SAMPLERS
    neg_num: int  # negatives per query
    pool: int  # pool size of the strategies that draw from one (registry flag uses_pool)
    candidates: Optional[int]  # bank entries searched per step; None: the whole bank
    margin_type: str  # a margin of study.method.registry.MARGINS
    margin: float
    num_clusters: int
    min_cluster: int
    centroid_every: int  # iterations between centroid recomputes (online)
    kmeans_iters: int
    bank_momentum: float
    intra_weight: float
    inter_weight: float


@dataclass
class StepLoss:
    """One step's losses (scalars) and, with the inter branch on, its sample (for statistics)."""

    loss: Tensor
    intra: Tensor
    inter: Optional[Tensor] = None
    sample: Optional[InterSample] = None


def _one_process(x: Tensor) -> Tensor:
    return x


class InterCLR:
    """Encoders, queue, bank and pseudo-labels of one run; ``inter=None`` is MoCo v2."""

    def __init__(self, encoder: Encoder, *, num_samples: int, feat_dim: int, queue_size: int,
                 key_momentum: float, temperature: float, intra_margin_type: str = "none",
                 intra_margin: float = 0.0, inter: Optional[InterSettings] = None,
                 queue_generator: Optional[torch.Generator] = None, device: torch.device | str = "cpu",
                 gather: Callable[[Tensor], Tensor] = _one_process, rank: int = 0):
        self.moco = MoCo(encoder, key_momentum).to(device)
        self.queue = KeyQueue(queue_size, feat_dim, generator=queue_generator, device=device)
        self.temperature, self.intra_margin = temperature, (intra_margin_type, intra_margin)
        self.inter, self.gather, self.rank = inter, gather, rank
        self.bank: Optional[MemoryBank] = None
        self.plabels: Optional[PseudoLabels] = None
        if inter is not None:
            validate_sampling(inter.sampling, inter.neg_num, inter.pool, num_samples, inter.candidates)
            self.bank = MemoryBank(num_samples, feat_dim, momentum=inter.bank_momentum, device=device)
            self.plabels = PseudoLabels(num_samples, inter.num_clusters, feat_dim,
                                        min_cluster=inter.min_cluster, device=device)

    def loss(self, q: Tensor, k: Tensor, idx: Tensor, *, inter_on: bool,
             shared: torch.Generator, own: torch.Generator) -> StepLoss:
        """The step's loss from normalised queries ``q`` and keys ``k`` (n, d) of images ``idx`` (n,)."""
        pos_intra = (q * k).sum(1)  # (n,) positive: the other view's key
        neg_intra = q @ self.queue.keys.T  # (n, K) negatives: the queue
        loss_intra = contrastive_loss(pos_intra, neg_intra, self.temperature, *self.intra_margin)  # ()
        if not inter_on:
            return StepLoss(loss_intra, loss_intra)
        s, labels, index = self.inter, self.plabels.labels, self.plabels.cluster_index()
        # positives for the global batch from the shared stream, this rank's slice kept
        all_idx = self.gather(idx)  # (B,)
        n = idx.shape[0]
        pos_idx = sample_positives(all_idx, labels, *index, generator=shared)[self.rank * n:(self.rank + 1) * n]  # (n,)
        sample = inter_sample(q, idx, self.bank.feats, labels, index, s.sampling, s.neg_num, s.pool,
                              s.candidates, own, pos_idx=pos_idx, shared_generator=shared)  # cos (n,), (n, neg_num)
        loss_inter = contrastive_loss(sample.pos_cos, sample.neg_cos, self.temperature,
                                      s.margin_type, s.margin)  # ()
        loss = s.intra_weight * loss_intra + s.inter_weight * loss_inter  # ()
        return StepLoss(loss, loss_intra, loss_inter, sample)

    def after_step(self, k: Tensor, idx: Tensor, iteration: int, shared: torch.Generator) -> tuple[float, int]:
        """Enqueue the global batch's keys; write them to the bank; online: relabel, recompute, re-seed.

        ``iteration`` counts from 1. Returns (share of the batch's labels that
        changed, clusters re-seeded); zeros without online labels.
        """
        k_all = self.gather(k)  # (B, d)
        idx_all = self.gather(idx)  # (B,)
        self.queue.enqueue(k_all, idx_all)
        if self.inter is None:
            return 0.0, 0
        self.bank.update(idx_all, k_all)
        if self.inter.labels != "online":
            return 0.0, 0
        return self.plabels.after_iteration(iteration, idx_all, self.bank.feats, shared, self.inter.centroid_every)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """Everything the method holds: encoders (``model``), ``queue``, and with the inter branch the
        ``bank`` and the pseudo-labels (``labels``); None for a part MoCo v2 has not."""
        return {"model": self.moco.state_dict(), "queue": self.queue.state_dict(),
                "bank": self.bank.state_dict() if self.bank is not None else None,
                "labels": self.plabels.state_dict() if self.plabels is not None else None}

    def load_state_dict(self, state: dict) -> None:
        self.moco.load_state_dict(state["model"])
        self.queue.load_state_dict(state["queue"])
        if self.bank is not None:
            self.bank.load_state_dict(state["bank"])
            self.plabels.load_state_dict(state["labels"])

    def install_bank(self, feats: Tensor, labels: Tensor, centroids: Tensor, **settings) -> None:
        """Replace the bank and pseudo-labels by ``feats`` (B, d), ``labels`` (B,) and ``centroids`` (k, d) of
        any size, and the inter settings by ``settings`` (``pool``, ``neg_num``, ...; ``num_clusters`` follows
        the centroids), as given (no check against a dataset): for benchmarks of a bank larger than the data."""
        if self.inter is None:
            raise ValueError("install_bank needs the inter-image branch (method interclr)")
        from dataclasses import replace

        device = self.bank.feats.device
        self.inter = replace(self.inter, num_clusters=int(centroids.shape[0]), **settings)
        validate_sampling(self.inter.sampling, self.inter.neg_num, self.inter.pool, int(feats.shape[0]),
                          self.inter.candidates)
        self.bank = MemoryBank(int(feats.shape[0]), int(feats.shape[1]), momentum=self.inter.bank_momentum,
                               device=device)
        self.bank.feats.copy_(feats)
        self.plabels = PseudoLabels(int(feats.shape[0]), self.inter.num_clusters, int(feats.shape[1]),
                                    min_cluster=self.inter.min_cluster, device=device)
        self.plabels.reset(labels, centroids)

    def init_state(self, feats: Tensor, shared: torch.Generator) -> None:
        """The reference's start: bank = ``feats`` (N, d) of every training image, labels = their k-means."""
        self.bank.fill(feats)
        self.recluster(feats, shared)

    def recluster(self, feats: Tensor, shared: torch.Generator) -> None:
        """k-means of ``feats`` (N, d) replaces the labels; centroids = the labels' member means over the bank."""
        res = kmeans(feats, self.inter.num_clusters, iters=self.inter.kmeans_iters, generator=shared)
        self.plabels.assign(res.labels, self.bank.feats, res.centroids)
