"""The names of the store's contract, in one place: the metrics a cell run records (per epoch and final),
with their units and which runs record them, and what is named here as not logged on purpose.

The trainer produces the metrics (``metrics.jsonl``: one object per epoch; ``final.json``), the Tune
callback sends every per-epoch metric named here to MLflow (:func:`epoch_metrics`) and the final ones
under their MLflow names (:data:`FINAL_METRICS`), and a test checks that every key the trainer
writes is named here, logged or not (tests/test_names.py). Standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass

# MLflow's run statuses, as the store holds them (a cell's state: study.tracking.StudyTracker.cell_status)
FINISHED, RUNNING, FAILED, KILLED = "FINISHED", "RUNNING", "FAILED", "KILLED"

ALL, INTER, ONLINE, OFFLINE = "every run", "InterCLR runs", "InterCLR runs with online labels", \
    "InterCLR runs with offline labels"


@dataclass(frozen=True)
class MetricName:
    name: str
    unit: str  # "fraction" shows as % in the report
    runs: str  # which runs record it (ALL, INTER, ONLINE, OFFLINE)
    meaning: str
    table: bool = False  # a column of the report's summary tables (its last value per cell)
    better: str | None = None  # "higher" or "lower": which level's mean a table marks best; None: none


def metric_named(name: str) -> MetricName | None:
    """The per-epoch metric of that name (a family's member by its prefix), or None."""
    for m in EPOCH_METRICS:
        if m.name == name:
            return m
    return next((p for p in EPOCH_PREFIXES if name.startswith(p.name)), None)


def records(metric: MetricName, inter: bool, labels: str) -> bool:
    """Whether a run records ``metric``: ``inter`` its inter-image branch is on, ``labels`` its label mode."""
    if metric.runs == ALL:
        return True
    if metric.runs == INTER:
        return inter
    return inter and labels == ("online" if metric.runs == ONLINE else "offline")


EPOCH_METRICS: tuple[MetricName, ...] = (
    MetricName("loss", "nats", ALL, "the training loss, mean over the epoch's steps (epochs >= 1)"),
    MetricName("loss_intra", "nats", ALL, "the intra-image (MoCo v2) InfoNCE loss"),
    MetricName("loss_inter", "nats", INTER, "the inter-image InfoNCE loss"),
    MetricName("knn_top1", "fraction", ALL, "weighted kNN top-1 of the monitor's test images (epoch 0: untrained)",
               better="higher"),
    MetricName("nmi", "fraction", INTER, "NMI of the pseudo-labels against the true classes", better="higher"),
    MetricName("ari", "fraction", INTER, "adjusted Rand index of the pseudo-labels against the true classes",
               better="higher"),
    MetricName("label_change_ratio", "fraction", INTER,
               "pseudo-labels that changed over the epoch, by cluster assignment (permutation-free)"),
    MetricName("label_change_raw", "fraction", ONLINE, "pseudo-labels whose id changed over the epoch"),
    MetricName("batch_change_ratio", "fraction", INTER, "labels an online relabel changed, per batch, mean"),
    MetricName("clusters_nonempty", "clusters", INTER, "clusters holding at least one image"),
    MetricName("clusters_reseeded", "clusters", ONLINE, "small clusters re-seeded by splitting, over the epoch"),
    MetricName("starved_query_ratio", "fraction", INTER,
               "queries whose pool held fewer negatives of another label than neg_num"),
    MetricName("pos_sim_mean", "cosine", INTER, "cosine of the queries to their inter-image positives, mean"),
    MetricName("lr", "1", ALL, "the learning rate at the epoch's end"),
    MetricName("epoch_time", "s", ALL, "wall seconds of the epoch's training steps"),
    MetricName("pairs_per_s", "pairs/s", ALL, "image pairs trained per second"),
)
# families of per-epoch metrics: the sampled negatives' cosine to their query: mean, std and quantiles
EPOCH_PREFIXES: tuple[MetricName, ...] = (
    MetricName("neg_sim_", "cosine", INTER, "the sampled inter-image negatives' cosine: mean, std, q05 ... q95"),
)
# final.json key -> the metric's name on the run (logged once, at step = epochs)
FINAL_METRICS: dict[str, str] = {"linear_top1": "linear_top1", "knn_top1": "final_knn_top1", "nmi": "final_nmi"}
# what the trainer writes that is not a metric of the run, and why
NOT_LOGGED: dict[str, str] = {
    "epoch": "the step every per-epoch metric is logged at",
    "epochs": "a param of the run (its config)",
    "steps": "epochs x steps per epoch, from the config",
    "knn_top1_epoch0": "knn_top1 at step 0",
    "knn_top1_monitor": "knn_top1 at the last epoch's step",
}
# the cost of a cell, summed over its attempts (the Tune reporter's, not the trainer's)
COST_METRICS = ("cost_wall_s", "cost_cpu_s", "cost_gpu_s")


def is_epoch_metric(key: str) -> bool:
    return key in _EPOCH_NAMES or key.startswith(tuple(p.name for p in EPOCH_PREFIXES))


def epoch_metrics(result: dict) -> dict[str, float]:
    """The per-epoch metrics of a reported result (the names above; Tune's own keys left out)."""
    return {k: v for k, v in result.items() if is_epoch_metric(k)}


def named(key: str, final: bool = False) -> bool:
    """Whether the contract names ``key`` of the trainer's per-epoch (or, ``final``, final) output."""
    return is_epoch_metric(key) or key in NOT_LOGGED or (final and key in FINAL_METRICS)


_EPOCH_NAMES = frozenset(m.name for m in EPOCH_METRICS)
