"""What a study will cost, estimated from the cells already in the store (``run --dry-run``).

seconds per cell at this preset (the median wall time of the FINISHED cells of
that preset trained in any study of the store; links are not trainings) x
the cells this study would still train (not FINISHED here, not linkable from
another study) / the cells that run at once (the machine's CPUs over the
CPUs of one cell, as the local launcher schedules them). Reads the store
only when it exists: a dry run writes nothing.
"""

from __future__ import annotations

import math
import statistics

from study.core.listing import all_experiments, all_runs
from study.core.names import Tag, role_filter
from study.tracking import FINISHED, client, store_exists, tracking_uri


def finished_cells(uri: str, preset: str) -> list:
    """Every FINISHED cell run of ``preset`` in the store (all experiments)."""
    store = client(uri)
    return all_runs(store, [e.experiment_id for e in all_experiments(store)],
                    f"{role_filter(Tag.CELL)} and attributes.status = '{FINISHED}' and tags.{Tag.PRESET} = '{preset}'")


def estimate_lines(study, slots: int, uri: str | None = None) -> list[str]:
    """Lines for ``--dry-run``: cells left to train, seconds per cell, cell-hours and wall time."""
    from analysis.uri import shown_uri

    uri = uri or tracking_uri()
    if not store_exists(uri):
        return [f"cost: no store at {shown_uri(uri)} yet, so no measured seconds per cell at preset {study.preset}"]
    runs = finished_cells(uri, study.preset)
    done_here = {r.data.tags.get(Tag.CELL_ID) for r in runs if r.data.tags.get(Tag.STUDY) == study.name}
    done_anywhere = {r.data.tags.get(Tag.CELL_ID) for r in runs}
    trained = [(r.info.end_time - r.info.start_time) / 1000.0 for r in runs
               if not r.data.tags.get(Tag.REUSED_FROM) and r.info.end_time and r.info.start_time]
    left = [c for c in study.cells if c.cell_id not in done_anywhere]
    linkable = sum(1 for c in study.cells if c.cell_id in done_anywhere and c.cell_id not in done_here)
    head = (f"cost: {len(left)} cells to train, {linkable} to link from other studies, "
            f"{sum(1 for c in study.cells if c.cell_id in done_here)} finished here")
    if not trained:
        return [head + f"; no finished cell of preset {study.preset} in the store to time"]
    per_cell = statistics.median(trained)
    slots = max(1, min(slots, len(left))) if left else max(1, slots)
    waves = math.ceil(len(left) / slots) if left else 0
    return [head,
            f"      {per_cell:.0f} s per cell at preset {study.preset} (median of {len(trained)} cells in the store) "
            f"x {len(left)} cells = {per_cell * len(left) / 3600:.2f} cell-hours; {slots} at a time: "
            f"about {per_cell * waves / 60:.1f} min wall"]
