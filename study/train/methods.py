"""The methods' builders: a resolved config and an encoder -> the method's unit.

Each is named once, in study/method/registry.py, and called by the trainer as
``build(cfg, encoder, *, num_samples, queue_generator, device, gather, rank)``.
MoCo v2 is InterCLR's unit with the inter branch off.
"""

from __future__ import annotations

from typing import Any

from study.core.config import TrainConfig
from study.method.interclr import InterCLR, InterSettings
from study.method.model import Encoder


def inter_settings(cfg: TrainConfig) -> InterSettings | None:
    """The inter branch's settings of ``cfg``, or None for a method without it (MoCo v2)."""
    if not cfg.inter_enabled:
        return None
    return InterSettings(
        labels=cfg.labels, sampling=cfg.sampling, neg_num=cfg.neg_num, pool=cfg.pool,
        candidates=None if cfg.neg_search == "exact" else cfg.candidates, margin_type=cfg.margin_type,
        margin=cfg.margin, num_clusters=cfg.num_clusters, min_cluster=cfg.min_cluster,
        centroid_every=cfg.centroid_every, kmeans_iters=cfg.kmeans_iters, bank_momentum=cfg.bank_momentum,
        intra_weight=cfg.intra_weight, inter_weight=cfg.inter_weight)


def _interclr_unit(cfg: TrainConfig, encoder: Encoder, inter: InterSettings | None, **runtime: Any) -> InterCLR:
    return InterCLR(
        encoder, feat_dim=cfg.feat_dim, queue_size=cfg.queue_size, key_momentum=cfg.key_momentum,
        temperature=cfg.temperature, intra_margin_type=cfg.intra_margin_type, intra_margin=cfg.intra_margin,
        inter=inter, **runtime)


def build_interclr(cfg: TrainConfig, encoder: Encoder, **runtime: Any) -> InterCLR:
    """InterCLR: MoCo v2's intra-image branch plus the inter-image branch of ``cfg``."""
    return _interclr_unit(cfg, encoder, inter_settings(cfg), **runtime)


def build_mocov2(cfg: TrainConfig, encoder: Encoder, **runtime: Any) -> InterCLR:
    """MoCo v2: the same unit with the inter branch off (``cfg``'s inter keys are ignored)."""
    return _interclr_unit(cfg, encoder, None, **runtime)
