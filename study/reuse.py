"""Identical cells trained once: a cell FINISHED in any study of the store is linked, not retrained.

``cell_id`` hashes the canonical config (:mod:`study.core.canonical`), so the same
run asked for by two studies (the final recipe appears in the labels,
sampling, boundary and final studies) has one id. Before a study runs,
each of its cells that is not FINISHED in the study's own experiment but is
FINISHED in another experiment of the same store gets a child run in this
study that copies the source: every metric with its whole history (steps
and timestamps), the source's start and end times (so its cost is the
source's), its tags other than the study's own (``study``, ``level``,
``factor.*``, ...), its artifacts, and this cell's own params and
``config.json`` (they equal the source's on every key that can affect the
run). The link is tagged ``reused_from`` = the source run id (the original
training run, when the source is itself a link) and ``reused_from_study``.

A kill in the middle of a link leaves a RUNNING run in this study; the next
attempt soft-deletes it (``delete_run``, recoverable) and links again, so the
cell ends with one run. The same holds for an unfinished run of an earlier
attempt at training the cell here: the finished copy replaces it.
"""

from __future__ import annotations

import os

# linking copies artifacts: MLflow's download progress bars say nothing useful in a study's output
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import tempfile
from pathlib import Path

from study.core.listing import all_experiments, all_runs
from study.core.names import Tag, factor_tag, role_filter
from study.tracking import FINISHED, StudyTracker, trial_function

# tags that describe the cell's place in its own study: set for the link, never copied
_OWN_TAGS = (Tag.STUDY, Tag.ROLE, Tag.CELL_ID, Tag.PRESET, Tag.LEVEL, Tag.FACTORS, Tag.ERROR, Tag.REUSED_FROM,
             Tag.REUSED_FROM_STUDY, Tag.PARENT_RUN, Tag.RUN_NAME,
             Tag.FILLED, Tag.DRIVER, Tag.INTERRUPTED)  # the link's own state (study.tracking), not the source's
_METRICS_PER_BATCH = 1000  # MLflow's cap on metrics in one log_batch


def finished_elsewhere(tracker: StudyTracker, cell_ids) -> dict[str, object]:
    """cell_id -> a FINISHED cell run of another experiment of the store (the earliest finished)."""
    from mlflow.entities import ViewType

    wanted = set(cell_ids)
    if not wanted:
        return {}
    trial = trial_function()
    others = [e.experiment_id for e in all_experiments(tracker.client) if e.experiment_id != tracker.experiment_id]
    runs = all_runs(tracker.client, others, f"{role_filter(Tag.CELL)} and attributes.status = '{FINISHED}'",
                    run_view_type=ViewType.ACTIVE_ONLY)
    found: dict[str, object] = {}
    for run in sorted(runs, key=lambda r: r.info.end_time or 0):  # the earliest finished, over every page
        cid = run.data.tags.get(Tag.CELL_ID, "")
        # only a cell of the same trial function: a fake trial's made-up metrics never stand
        # in for a trained cell, nor the reverse
        if cid in wanted and cid not in found and run.data.tags.get(Tag.TRIAL, "") == trial:
            found[cid] = run
    return found


def _copy_metrics(client, src_id: str, dst_id: str, keys) -> None:
    from mlflow.entities import Metric

    batch = []
    for key in sorted(keys):
        for m in client.get_metric_history(src_id, key):
            batch.append(Metric(key, m.value, m.timestamp, m.step))
    for i in range(0, len(batch), _METRICS_PER_BATCH):
        client.log_batch(dst_id, metrics=batch[i:i + _METRICS_PER_BATCH])


def _copy_artifacts(client, src_id: str, dst_id: str) -> None:
    if not client.list_artifacts(src_id):
        return
    with tempfile.TemporaryDirectory() as tmp:
        local = client.download_artifacts(src_id, "", tmp)
        if any(Path(local).iterdir()):
            client.log_artifacts(dst_id, local)


def link_cell(tracker: StudyTracker, cell, parent_id: str, source) -> str:
    """Create this study's run of ``cell`` as a copy of the FINISHED ``source`` run; returns its id."""
    client = tracker.client
    src = source
    origin = src.data.tags.get(Tag.REUSED_FROM) or src.info.run_id
    origin_study = src.data.tags.get(Tag.REUSED_FROM_STUDY) or src.data.tags.get(Tag.STUDY, "")
    tags = {k: v for k, v in src.data.tags.items()
            if k not in _OWN_TAGS and not k.startswith("factor.")}
    tags.update({Tag.STUDY: tracker.study, Tag.ROLE: Tag.CELL, Tag.CELL_ID: cell.cell_id, Tag.PRESET: cell.preset,
                 Tag.LEVEL: cell.level, Tag.FACTORS: ",".join(cell.levels), Tag.VARIANT: cell.variant,
                 Tag.PARENT_RUN: parent_id,
                 Tag.REUSED_FROM: origin, Tag.REUSED_FROM_STUDY: origin_study})
    tags.update({factor_tag(f): lv for f, lv in cell.levels.items()})
    run = client.create_run(tracker.experiment_id, start_time=src.info.start_time, tags=tags, run_name=cell.name)
    rid = run.info.run_id
    _copy_metrics(client, src.info.run_id, rid, src.data.metrics)
    if src.inputs is not None and src.inputs.dataset_inputs:
        client.log_inputs(rid, datasets=list(src.inputs.dataset_inputs))
    _copy_artifacts(client, src.info.run_id, rid)
    tracker._log_params(rid, cell)  # this cell's own config and config.json (after the copied artifacts)
    client.set_terminated(rid, status=FINISHED, end_time=src.info.end_time)
    return rid


def link_finished_cells(study, tracker: StudyTracker, parent_id: str) -> list[tuple[object, str]]:
    """Link every cell of ``study`` that is FINISHED in another study and not here.

    Returns (cell, source run id) per link made. Unfinished runs of those cells in this
    study are soft-deleted first (a kill mid-link, or an earlier attempt to train it here).
    """
    runs = tracker.cell_runs()
    pending = [c for c in study.cells
               if not any(r.info.status == FINISHED for r in runs.get(c.cell_id, []))]
    sources = finished_elsewhere(tracker, [c.cell_id for c in pending])
    out = []
    for cell in pending:
        src = sources.get(cell.cell_id)
        if src is None:
            continue
        for stale in runs.get(cell.cell_id, []):
            tracker.client.delete_run(stale.info.run_id)
        link_cell(tracker, cell, parent_id, src)
        out.append((cell, src.data.tags.get(Tag.REUSED_FROM) or src.info.run_id))
    return out
