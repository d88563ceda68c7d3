"""The canonical config of a run: the resolved config less every key that cannot change what it computes.

``cell_id`` is a hash of this (see :func:`study.studyfile.cell_hash`), so two
cells that would train the same network and log the same metrics share an id,
within a study and across studies: a cell finished in one study is linked
into another instead of being trained again (:mod:`study.reuse`).

Which keys are dropped, and why (read off ``study/config.py`` and
``study/trainer.py``; keep this list in step with them):

- always (execution only): ``progress`` (a progress bar), ``threads`` (CPU
  threads of one process), ``device`` (where it runs), ``loader_workers``
  (DataLoader processes; every streamed sample is seeded by its index).
- ``method: mocov2``: the inter-image branch is never built
  (``cfg.inter_enabled`` is False) and the loss is the intra loss alone, so
  every inter-branch key and both loss weights are dropped: ``labels``,
  ``sampling``, ``neg_num``, ``pool``, ``neg_search``, ``candidates``,
  ``margin_type``, ``margin``, ``num_clusters``, ``min_cluster``,
  ``centroid_every``, ``recluster_every``, ``kmeans_iters``,
  ``bank_momentum``, ``inter_weight``, ``intra_weight``, ``warmup_epochs``.
- ``method: interclr``:
  - ``labels: online``: ``recluster_every`` (only offline labels re-cluster);
  - ``labels: offline``: ``centroid_every`` and ``min_cluster`` (centroid
    updates and small-cluster splitting run only for online labels);
  - ``sampling: random`` or ``hard``: ``pool`` (only semi-easy and
    semi-hard draw from a pool);
  - ``sampling: hard``: ``neg_search`` and ``candidates`` (hard negatives are
    a global top-k over the whole bank in either search mode);
  - ``neg_search: exact``: ``candidates``;
  - ``margin_type: none``: ``margin``.
- ``intra_margin_type: none``: ``intra_margin``.

Kept although they only matter on some hardware: ``amp`` and
``channels_last`` (they change the numbers on a GPU). Kept because they
change the logged metrics even when training is the same: ``eval_every``,
``knn_*``, ``linear_epochs``, ``test_subset``, ``monitor_test_subset``.
"""

from __future__ import annotations

from typing import Any

# keys that change how a run is executed, not what it computes
EXECUTION_KEYS = ("progress", "threads", "device", "loader_workers")

# every key of the inter-image branch, and the loss weights that only mix it in
INTER_KEYS = ("labels", "sampling", "neg_num", "pool", "neg_search", "candidates", "margin_type", "margin",
              "num_clusters", "min_cluster", "centroid_every", "recluster_every", "kmeans_iters",
              "bank_momentum", "inter_weight", "intra_weight", "warmup_epochs")


def irrelevant_keys(flat: dict[str, Any]) -> set[str]:
    """The keys of a resolved flat config (``TrainConfig.flat()``) that cannot affect its run."""
    out = set(EXECUTION_KEYS)
    if flat.get("intra_margin_type") == "none":
        out.add("intra_margin")
    if flat.get("method") == "mocov2":
        return out | set(INTER_KEYS)
    if flat.get("labels") == "online":
        out.add("recluster_every")
    elif flat.get("labels") == "offline":
        out |= {"centroid_every", "min_cluster"}
    if flat.get("sampling") in ("random", "hard"):
        out.add("pool")
    if flat.get("sampling") == "hard":
        out |= {"neg_search", "candidates"}
    if flat.get("neg_search") == "exact":
        out.add("candidates")
    if flat.get("margin_type") == "none":
        out.add("margin")
    return out


def canonical_config(flat: dict[str, Any]) -> dict[str, Any]:
    """``flat`` less :func:`irrelevant_keys` (a new dict; ``flat`` is not changed)."""
    drop = irrelevant_keys(flat)
    return {k: v for k, v in flat.items() if k not in drop}
