"""``python -m study run`` and ``status``: from a study file to finished cells.

The store is the source of truth: a cell whose MLflow run is FINISHED is
never trained again; any other cell is (re)run in its own run directory,
from which the trainer resumes. Everything about the study file and the
arguments is checked before anything is written.
"""

from __future__ import annotations

import os
import time

from study.errors import UserError
from study.provenance import short_commit, study_link, ui_base
from study.backends import Backend, load_backend
from study.paths import ray_storage, run_root  # noqa: F401 (the launchers take them from here)
from study.studyfile import Cell, Study, load_study
from study.tracking import FAILED, FINISHED, RUNNING, StudyTracker


def local_cpus() -> int:
    return int(os.environ.get("STUDY_NUM_CPUS") or os.cpu_count() or 1)


def describe_cells(study: Study) -> str:
    r = study.resources
    lines = [f"study '{study.name}' ({study.path}), preset {study.preset}: {len(study.cells)} cells "
             f"= {' x '.join(str(len(v)) for v in study.spec.factors.values())} levels x "
             f"{len({c.seed for c in study.cells})} seeds; each asks {r.cpus} CPU"
             + (f" and {r.gpus:g} GPU" if r.gpus else "") + f"; metric {study.spec.metric}"]
    width = max(len(c.level) for c in study.cells)
    lines.append(f"  {'cell_id':12}  {'level':{width}}  seed  epochs")
    for c in study.cells:
        lines.append(f"  {c.cell_id:12}  {c.level:{width}}  {c.seed:4}  {c.config.epochs:6}")
    return "\n".join(lines)


def cells_to_run(study: Study, status: dict[str, str], rerun_failed: bool) -> tuple[list[Cell], int]:
    """(cells to run, number already finished). FAILED cells wait for --rerun-failed."""
    todo, done = [], 0
    for c in study.cells:
        s = status.get(c.cell_id)
        if s == FINISHED:
            done += 1
        elif s == FAILED and not rerun_failed:
            continue
        else:
            todo.append(c)
    return todo, done


def run_study(path: str, *, backend: Backend, preset: str = "cpu", sets: dict | None = None,
              dry_run: bool = False, rerun_failed: bool = False, wait: bool = False) -> int:
    """Load the study, check ``backend``'s options, then list (``dry_run``) or launch its cells."""
    study = load_study(path, preset, sets)
    backend.check(study)  # bad options fail here, before anything is written
    if dry_run:
        print(describe_cells(study))
        from study.cost import estimate_lines

        for line in estimate_lines(study, slots=max(1, local_cpus() // study.resources.cpus)):
            print(line)
        extra = backend.describe(study)
        if extra:
            print(extra)
        return 0
    return backend.launch(study, sets=sets or {}, rerun_failed=rerun_failed, wait=wait)


def execute_study(study: Study, *, rerun_failed: bool, backend: Backend | str, experiment_name: str | None = None,
                  restore: bool = False) -> int:
    """Run the study's unfinished cells on the Ray cluster of ``backend`` (or its registered name)."""
    if isinstance(backend, str):
        backend = load_backend(backend)
    tracker = StudyTracker(study.name)
    parent_id = tracker.parent_run_id({"factors": ",".join(study.factors), "metric": study.spec.metric,
                                       "preset": study.preset, "file": study.path.name}, study.path)
    tracker.client.set_tag(parent_id, "equivalence_delta", repr(study.spec.equivalence_delta))
    from study.reuse import link_finished_cells

    linked = link_finished_cells(study, tracker, parent_id)  # finished in another study: not trained again
    if linked:
        print(f"[{study.name}] linked {len(linked)} cells finished in other studies (tag reused_from), "
              "not trained again", flush=True)
    todo, done = cells_to_run(study, tracker.cell_status(), rerun_failed)
    skipped_failed = len(study.cells) - len(todo) - done
    print(f"[{study.name}] {len(study.cells)} cells: {done} finished, {len(todo)} to run"
          + (f", {skipped_failed} failed (rerun with --rerun-failed)" if skipped_failed else ""), flush=True)
    start = time.time()
    if todo:
        slots = backend.run_cells(study, todo, tracker, parent_id, done_before=done,
                                  experiment_name=experiment_name, restore=restore)
        if slots is not None:
            wall = time.time() - start
            slots = min(len(todo), slots)
            busy = tracker.cell_seconds(c.cell_id for c in todo)
            if busy > 0:
                # how well the slots were kept busy: 1.0 = no scheduling overhead at all
                print(f"[{study.name}] wall {wall:.0f}s; cells {busy:.0f}s in {slots} slots = ideal "
                      f"{busy / slots:.0f}s; wall/ideal {wall / (busy / slots):.3f}", flush=True)
    final = StudyTracker(study.name).cell_status()
    counts = summarise(study, final)
    all_done = counts[FINISHED] == len(study.cells)
    cost = tracker.log_study_cost(parent_id, time.time() - start)
    tracker.finish_parent(parent_id, FINISHED if all_done else FAILED)
    print(f"[{study.name}] finished {counts[FINISHED]}/{len(study.cells)}, failed {counts[FAILED]}, "
          f"missing {counts['missing']}; {cost_text(cost)}", flush=True)
    print(f"[{study.name}] runs in the MLflow UI (make ui): "
          f"{study_link(tracker.experiment_id, ui_base(tracker.uri))}", flush=True)
    return 0 if all_done else 1


def cost_text(totals: dict) -> str:
    """'cells 812 CPU-s (0.23 CPU-h), 430 s wall; study 460 s wall' from the parent's cost totals
    (CPU- and GPU-hours from 0.01 h on)."""
    cpu = totals.get("cost_cpu_s_total", 0.0)
    out = (f"cells {cpu:.0f} CPU-s" + (f" ({cpu / 3600:.2f} CPU-h)" if cpu >= 36 else "")
           + f", {totals.get('cost_wall_s_total', 0.0):.0f} s wall")
    if totals.get("cost_gpu_s_total"):
        out += f", {totals['cost_gpu_s_total'] / 3600:.2f} GPU-h"
    return out + f"; study {totals.get('study_wall_s', 0.0):.0f} s wall"


def summarise(study: Study, status: dict[str, str]) -> dict[str, int]:
    counts = {FINISHED: 0, RUNNING: 0, FAILED: 0, "missing": 0}
    for c in study.cells:
        s = status.get(c.cell_id)
        if s in (FINISHED, RUNNING, FAILED):
            counts[s] += 1
        else:
            counts["missing"] += 1
    return counts


def study_status(path: str, *, preset: str = "cpu", sets: dict | None = None) -> int:
    study = load_study(path, preset, sets)
    tracker = StudyTracker(study.name, create=False)
    status = tracker.cell_status()
    names = {FINISHED: "done", RUNNING: "running", FAILED: "failed"}
    width = max(len(c.level) for c in study.cells)
    print(f"study '{study.name}', preset {study.preset}, store {tracker.uri}")
    for c in study.cells:
        print(f"  {c.cell_id}  {c.level:{width}}  seed {c.seed:<3} {names.get(status.get(c.cell_id), 'missing')}")
    counts = summarise(study, status)
    print(f"done {counts[FINISHED]}, running {counts[RUNNING]}, failed {counts[FAILED]}, "
          f"missing {counts['missing']} (of {len(study.cells)})")
    prov = provenance_text(tracker, {c.cell_id for c in study.cells})
    if prov:
        print(prov)
    from study.adaptive import status_lines

    for line in status_lines(study, tracker, sets):
        print(line)
    return 0


def provenance_text(tracker: StudyTracker, cell_ids: set[str]) -> str:
    """'code: cells from 2 commits (abc1234: 3, def5678+dirty: 1); data: 1 dataset digest (...)' or ''."""
    commits: dict[str, int] = {}
    digests: dict[str, int] = {}
    for cid, runs in tracker.cell_runs().items():
        if cid not in cell_ids:
            continue
        run = next((r for r in runs if r.info.status == FINISHED), runs[0])
        t = run.data.tags
        c = short_commit(t.get("mlflow.source.git.commit", ""), t.get("git_dirty", "false"))
        commits[c] = commits.get(c, 0) + 1
        d = (t.get("dataset_digest") or "unknown")[:12]
        digests[d] = digests.get(d, 0) + 1
    if not commits:
        return ""

    def part(what: str, plural: str, counts: dict[str, int]) -> str:
        items = ", ".join(f"{k}: {n}" for k, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
        head = f"cells from {len(counts)} {plural}" if len(counts) > 1 else f"1 {what}"
        return f"{head} ({items})"

    return f"code: {part('commit', 'commits', commits)}; data: {part('dataset digest', 'dataset digests', digests)}"
