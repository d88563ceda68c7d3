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


class Tag:
    """The tags of the store's runs. A cell run: STUDY, ROLE (CELL), CELL_ID, PRESET, LEVEL, FACTORS,
    VARIANT, one :func:`factor_tag` per factor, PARENT_RUN, TRIAL (a fake trial's only), DRIVER, FILLED;
    a cell linked from another study also REUSED_FROM and REUSED_FROM_STUDY. A parent run: STUDY, ROLE
    (PARENT), DRIVER, the study's design (study.studyfile: EQUIVALENCE_DELTA, STOPPING, SEEDS, LEVELS,
    DESCRIPTION, design.* and hypotheses.*) and its verdicts (analysis.publish: VERDICT, verdict.<name>)."""
    STUDY, ROLE, CELL_ID, PRESET, LEVEL, FACTORS, VARIANT = "study", "role", "cell_id", "preset", "level", \
        "factors", "variant"
    TRIAL, ERROR, DRIVER, FILLED = "trial", "error", "driver", "filled"
    INTERRUPTED = "interrupted"  # why a run was stopped (the signal, "driver gone"); gone once it runs again
    REUSED_FROM, REUSED_FROM_STUDY = "reused_from", "reused_from_study"
    EQUIVALENCE_DELTA, STOPPING, SEEDS, LEVELS, DESCRIPTION, FINDING = "equivalence_delta", "stopping", \
        "seeds", "levels", "description", "finding"
    MAX_SEEDS, BUDGET_HOURS = "max_seeds", "budget_hours"  # --until-decided's limits (STOPPING: "sequential")
    LAUNCH = "launch"  # the backend words of the last command that ran the study (--cluster serial, ...)
    VERDICT, HYPOTHESIS = "verdict", "hypothesis"
    # what the published verdicts were made from: "final" (every cell finished), "provisional" (cells
    # missing or running), "stale" (the study has finished cells since); and how many finished cells
    VERDICT_STATE, VERDICT_CELLS = "verdict_state", "verdict_cells"
    GIT_DIRTY, DATASET, DATASET_DIGEST = "git_dirty", "dataset", "dataset_digest"  # study.provenance
    # MLflow's own
    PARENT_RUN, NOTE, RUN_NAME, GIT_COMMIT = "mlflow.parentRunId", "mlflow.note.content", "mlflow.runName", \
        "mlflow.source.git.commit"
    CELL, PARENT = "cell", "parent"  # the values of ROLE


def factor_tag(factor: str) -> str:
    """The tag holding a cell's level of ``factor``."""
    return f"factor.{factor}"


def verdict_tag(hypothesis: str, stratum: str | None = None, text: bool = False) -> str:
    """The parent's tag holding a hypothesis's verdict (an analysis.stats.Verdict's value), or its
    sentence (``text``); ``stratum``: one stratum's verdict of an ``each:`` hypothesis."""
    return f"{'verdict_text' if text else Tag.VERDICT}.{hypothesis}" + (f"/{stratum}" if stratum else "")


def role_filter(role: str) -> str:
    """MLflow's filter string for the runs of one role (Tag.CELL or Tag.PARENT)."""
    return f"tags.{Tag.ROLE} = '{role}'"


@dataclass(frozen=True)
class MetricName:
    name: str
    unit: str  # "fraction" shows as % in the report
    runs: str  # which runs record it (ALL, INTER, ONLINE, OFFLINE)
    meaning: str
    table: bool = False  # a column of the report's summary tables (its last value per cell)
    better: str | None = None  # "higher" or "lower": which level's mean a table marks best; None: none
    mechanism: bool = False  # measured against the true classes: the report's table of mechanisms


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
    # the mechanisms, against the true classes (study/train/mechanism.py; none on a dataset without labels)
    MetricName("neg_false_ratio", "fraction", INTER, "sampled inter-image negatives of the query's true class "
               "(false negatives), over the epoch's steps", better="lower", mechanism=True),
    MetricName("neg_class_kl", "nats", INTER, "KL divergence of the sampled inter-image negatives' true classes "
               "from the class prior of the training set", better="lower", mechanism=True),
    MetricName("neg_class_kl_given_query", "nats", INTER, "KL divergence of the sampled inter-image negatives' true "
               "classes given the query's true class from the class prior, mean over the query classes (weighted "
               "by their pairs): a bias by query that the pooled divergence hides", better="lower", mechanism=True),
    MetricName("pos_precision", "fraction", INTER, "inter-image positives (same pseudo-label) of the query's true "
               "class", better="higher", mechanism=True),
    MetricName("cluster_recall", "fraction", INTER, "an image's true-class images that its cluster holds, mean over "
               "the images (at the epoch's end)", better="higher", mechanism=True),
    MetricName("queue_false_ratio", "fraction", ALL, "the queue's (intra-image) negatives of the query's true class: "
               "MoCo v2's baseline of neg_false_ratio", better="lower", mechanism=True),
    MetricName("queue_class_kl", "nats", ALL, "KL divergence of the queue's true classes from the class prior",
               better="lower", mechanism=True),
    MetricName("lr", "1", ALL, "the learning rate at the epoch's end"),
    MetricName("epoch_time", "s", ALL, "wall seconds of the epoch's training steps"),
    MetricName("pairs_per_s", "pairs/s", ALL, "image pairs trained per second"),
)
# families of per-epoch metrics: the sampled negatives' cosine to their query: mean, std and quantiles
EPOCH_PREFIXES: tuple[MetricName, ...] = (
    MetricName("neg_sim_", "cosine", INTER, "the sampled inter-image negatives' cosine: mean, std, q05 ... q95"),
)
# the paper's other protocols (study/train/protocols.py): low-shot probes with k labelled images per class,
# fine-tuning on a fraction of the labels; a run computes those its config names (lowshot_shots,
# semisup_fractions), from these
LOWSHOT_SHOTS = (1, 2, 4, 8, 16, 32, 64)
SEMISUP_FRACTIONS = (0.01, 0.1)


def lowshot_metric(shots: int) -> str:
    """The final metric of the low-shot probe with ``shots`` labelled images per class."""
    return f"lowshot_k{shots}_top1"


def semisup_metric(fraction: float) -> str:
    """The final metric of the fine-tune on ``fraction`` of the labels (0.01 -> semisup_1pct_top1)."""
    return f"semisup_{round(fraction * 100):d}pct_top1"


def transfer_metric(dataset: str) -> str:
    """The final metric of the linear probe on ``dataset``'s frozen features (the transfer protocol)."""
    return f"transfer_{dataset}_top1"


TRANSFER_DATASETS = ("mnist", "fashion_mnist", "cifar10", "stl10")  # of study.core.datasets.DATASETS
PROTOCOL_METRICS = (tuple(lowshot_metric(k) for k in LOWSHOT_SHOTS) + tuple(semisup_metric(f) for f in SEMISUP_FRACTIONS)
                    + tuple(transfer_metric(d) for d in TRANSFER_DATASETS))
# final.json key -> the metric's name on the run (logged once, at step = epochs)
# what the protocols cost a cell: wall seconds of the low-shot probes and of the fine-tunes
PROTOCOL_SECONDS = ("lowshot_seconds", "semisup_seconds", "transfer_seconds")
FINAL_METRICS: dict[str, str] = {"linear_top1": "linear_top1", "knn_top1": "final_knn_top1", "nmi": "final_nmi",
                                 **{m: m for m in PROTOCOL_METRICS + PROTOCOL_SECONDS}}
# the final metrics stored as a fraction in [0, 1] (accuracies, NMI; the report shows them in points): the
# unit of each final metric, as EPOCH_METRICS' MetricName.unit is of each per-epoch one
FRACTION_FINALS = ("linear_top1", "final_knn_top1", "final_nmi") + PROTOCOL_METRICS
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
