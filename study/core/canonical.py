"""The canonical config of a run: the resolved config less every key that cannot change what it computes.

``cell_id`` is a hash of this (see :func:`study.studyfile.cell_hash`), so two
cells that would train the same network and log the same metrics share an id,
within a study and across studies: a cell finished in one study is linked
into another instead of being trained again (:mod:`study.reuse`).

Which keys are dropped, and why (read off ``study/core/config.py`` and
``study/train/trainer.py``, and the registries' flags; keep this list in step with them):

- always (execution only): ``progress`` (a progress bar), ``threads`` (CPU
  threads of one process), ``device`` (where it runs), ``loader_workers``
  (DataLoader processes; every streamed sample is seeded by its index).
- a method without the inter branch (``inter_branch=False`` in
  study/method/registry.py: ``mocov2``): the inter-image branch is never built
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
  - a strategy without ``uses_pool`` (study/method/registry.py: ``random``,
    ``hard``): ``pool`` (only semi-easy and semi-hard draw from a pool);
  - a ``global_topk`` strategy (``hard``): ``neg_search`` and ``candidates``
    (hard negatives are a global top-k over the whole bank in either search mode);
  - ``neg_search: exact``: ``candidates``;
  - a margin without ``uses_margin`` (``none``): ``margin``.
- an intra margin without ``uses_margin`` (``none``): ``intra_margin``.
- no low-shot probe (``lowshot_shots: []``): ``lowshot_shots`` and ``lowshot_draws``; no fine-tune
  (``semisup_fractions: []``): ``semisup_fractions`` and ``semisup_steps``; no transfer probe
  (``transfer_dataset: null``): ``transfer_dataset`` and ``transfer_subset`` (a run without them hashes as
  before they existed).

Kept although they only matter on some hardware: ``amp`` and
``channels_last`` (they change the numbers on a GPU). Kept because they
change the logged metrics even when training is the same: ``eval_every``,
``knn_*``, ``linear_epochs``, ``test_subset``, ``monitor_test_subset``.
"""

from __future__ import annotations

from typing import Any

from study.core.config import EXECUTION_KEYS  # progress, threads, device, loader_workers: execution only
from study.method.registry import MARGINS, METHODS, SAMPLERS

# every key of the inter-image branch, and the loss weights that only mix it in
INTER_KEYS = ("labels", "sampling", "neg_num", "pool", "neg_search", "candidates", "margin_type", "margin",
              "num_clusters", "min_cluster", "centroid_every", "recluster_every", "kmeans_iters",
              "bank_momentum", "inter_weight", "intra_weight", "warmup_epochs")


def irrelevant_keys(flat: dict[str, Any]) -> set[str]:
    """The keys of a resolved flat config (``TrainConfig.flat()``) that cannot affect its run."""
    out = set(EXECUTION_KEYS)
    # the flags come from the registries (an unknown name drops nothing)
    method = METHODS.get(flat.get("method"))
    sampler = SAMPLERS.get(flat.get("sampling"))
    intra_margin, margin = MARGINS.get(flat.get("intra_margin_type")), MARGINS.get(flat.get("margin_type"))
    if intra_margin is not None and not intra_margin.uses_margin:
        out.add("intra_margin")
    if method is not None and not method.inter_branch:
        return out | set(INTER_KEYS)
    if flat.get("labels") == "online":
        out.add("recluster_every")
    elif flat.get("labels") == "offline":
        out |= {"centroid_every", "min_cluster"}
    if sampler is not None and not sampler.uses_pool:
        out.add("pool")
    if sampler is not None and sampler.global_topk:
        out |= {"neg_search", "candidates"}
    if flat.get("neg_search") == "exact":
        out.add("candidates")
    if margin is not None and not margin.uses_margin:
        out.add("margin")
    if not flat.get("lowshot_shots"):
        out |= {"lowshot_shots", "lowshot_draws"}
    if not flat.get("semisup_fractions"):
        out |= {"semisup_fractions", "semisup_steps"}
    if flat.get("transfer_dataset") is None:
        out |= {"transfer_dataset", "transfer_subset"}
    return out


def canonical_config(flat: dict[str, Any]) -> dict[str, Any]:
    """``flat`` less :func:`irrelevant_keys` (a new dict; ``flat`` is not changed)."""
    drop = irrelevant_keys(flat)
    return {k: v for k, v in flat.items() if k not in drop}
