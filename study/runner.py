"""``python -m study run`` and ``status``: from a study file to finished cells.

The store is the source of truth: a cell whose MLflow run is FINISHED is
never trained again; any other cell is (re)run in its own run directory,
from which the trainer resumes. Everything about the study file and the
arguments is checked before anything is written. The backend (where the
cells run) is chosen by the CLI and handed in: nothing here imports one.

Control flows one way: the runner owns the study's lifecycle (:func:`execute_study`) and hands
an executor the cells to run; an executor runs them and returns (study/backends.py). Which
failed cells run again, and from where, is the retry policy's (study/retry.py).
"""

from __future__ import annotations

import time

from study import interrupt
from study.backends import Backend, Executor, local_cpus
from study.core.errors import InfrastructureError, UserError
from study.core.paths import check_locations
from study.core.names import Tag
from study.interrupt import StudyInterrupted
from study.resume import abandoned, interrupted_exit, rerun_command, summarise  # noqa: F401 (re-exported)
from study.retry import RERUN_FAILED_FLAG, RetryPolicy, policy_for
from study.provenance import run_link, short_commit, study_link, ui_base
from study.studyfile import Cell, Study, load_study
from study.tracking import (FAILED, FINISHED, KILLED, RUNNING, StudyTracker, check_same_study, check_store, store_exists,
                            store_lock, tracking_uri)


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


def run_study(path: str, *, backend: Backend, preset: str = "cpu", sets: dict | None = None,
              dry_run: bool = False, rerun_failed: bool | None = None, wait: bool = False) -> int:
    """Load the study, check ``backend``'s options, then list (``dry_run``) or run its cells."""
    study = load_study(path, preset, sets)
    check_before_writing(study, backend)
    if dry_run:
        extra = backend.describe(study)  # first: what it refuses (a job SLURM cannot place) ends the plan unprinted
        print(describe_cells(study))
        from study.cost import estimate_lines

        executor = backend.executor()  # its slots; a backend that submits: this machine's, as a guide
        slots = executor.slots(study) if executor is not None else None
        for line in estimate_lines(study, slots=slots or max(1, local_cpus() // study.resources.cpus)):
            print(line)
        if extra:
            print(extra)
        return 0
    return launch(study, backend, sets=sets or {}, retry=policy_for(study, rerun_failed), wait=wait)


def check_before_writing(study: Study, backend: Backend) -> None:
    """What would refuse ``study`` once it runs, as one UserError before anything is written: the
    backend's options and what it could never run, the folders the run writes to (study.core.paths),
    and what the store's state refuses (tracking.check_same_study)."""
    backend.check(study)
    uri = tracking_uri()
    check_store(uri)  # the dry run too: a store the run could not make is refused with the plan
    check_locations(study.name, artifacts=not uri.startswith(("http://", "https://")))
    check_same_study(study)


def launch(study: Study, backend: Backend, *, sets: dict, retry: RetryPolicy, wait: bool = False,
           executor: Executor | None = None, batch: bool = False) -> int:
    """Run the study's driver: in this process with ``executor`` (default: the backend's), under
    :func:`study.interrupt.drive`, or, for a backend without one here, where the backend submits it.

    ``batch``: a batch of ``--until-decided`` (``study.cells`` exactly); the executor is kept for the
    next batch (the caller closes it). An interrupted batch raises SystemExit with 130 or 143, so
    that the adaptive loop stops too."""
    executor = executor or backend.executor()
    if executor is None:
        status = StudyTracker(study.name, create=False).cell_status()
        todo, done = retry.cells_to_run(study.cells, status)
        return backend.submit(study, todo, done, sets=sets, retry=retry, wait=wait, batch=batch)
    code = interrupt.drive(execute_study, study, executor=executor, retry=retry, sets=sets, keep=batch)
    if batch and code in interrupt.EXIT_CODES.values():
        raise SystemExit(code)
    return code


def run_until_decided(path: str, *, backend: Backend, preset: str, sets: dict | None, rerun_failed: bool | None,
                      max_seeds: int | None, budget_hours: float | None) -> int:
    """``run --until-decided`` on any backend: the adaptive loop (study/adaptive.py) runs one driver per
    batch (:func:`launch`: in this process with one executor kept for every batch, or one submitted
    job followed to its end)."""
    from study.adaptive import check_limits, limits_for, until_decided

    check_limits(max_seeds, budget_hours)
    study = load_study(path, preset, sets)
    check_before_writing(study, backend)
    limits = limits_for(study, max_seeds, budget_hours)
    retry = policy_for(study, rerun_failed)
    executor = backend.executor()  # None: each batch is a job the backend submits

    def run_batch(batch: Study) -> int:
        return launch(batch, backend, sets=sets or {}, retry=retry, wait=True, executor=executor, batch=True)

    try:
        return until_decided(path, preset=preset, sets=sets, limits=limits, run_batch=run_batch)
    finally:
        if executor is not None:
            executor.close()


def efficiency_line(name: str, wall: float, busy: float, slots: int) -> str | None:
    """How well the slots were kept busy, from one attempt's times: ``busy`` = the seconds the cells
    run in this attempt were open (:meth:`StudyTracker.attempt_seconds`), ``wall`` = this attempt's
    wall time. At most ``slots`` cells run at once inside ``wall``, so wall/ideal >= 1.0 (1.0 = no
    scheduling overhead at all). None when nothing ran."""
    if busy <= 0 or slots < 1:
        return None
    ideal = busy / slots
    return (f"[{name}] wall {wall:.0f}s; cells {busy:.0f}s in {slots} slots = ideal {ideal:.0f}s; "
            f"wall/ideal {wall / ideal:.3f}")


def execute_study(study: Study, *, executor: Executor, retry: RetryPolicy, sets: dict | None = None,
                  keep: bool = False) -> int:
    """The study's lifecycle, the same for every backend: claim the study in the store, mark the runs
    a dead driver left, link cells finished in other studies, choose the cells (``retry``), have
    ``executor`` run them, summarise, print where to look and how to resume; the exit status.

    ``keep``: leave the executor's resources for a next call (else :meth:`Executor.close` at the end).
    Runs where it is called: the local driver calls it under :func:`study.interrupt.drive`, so
    SIGINT (Ctrl-C) and SIGTERM stop it at its next safe point: the executor is closed, the runs it
    left unfinished (and the parent) are marked KILLED, the command to resume is printed, and the
    exit status is 130 (SIGINT) or 143 (SIGTERM). The SLURM job calls it in its own driver thread
    (cluster/slurm_job.py). Runs a killed driver left RUNNING are marked KILLED at the next start
    (:meth:`StudyTracker.reconcile`).
    """
    tracker_box: list[StudyTracker] = []
    try:
        return _claim_and_execute(study, executor=executor, retry=retry, keep=keep, tracker_box=tracker_box,
                                  sets=sets)
    except BaseException as err:
        # after a signal, whatever ended the run (StudyInterrupted at a safe point, or a trial's
        # Ray call failing as Ctrl-C reached it too) is the interruption
        signum = interrupt.received()
        tracker = tracker_box[0] if tracker_box else None
        if signum is not None:
            return interrupted_exit(study, tracker, study.cells, StudyInterrupted(signum), sets)
        if isinstance(err, Exception) and not isinstance(err, UserError):  # the driver itself failed
            abandoned(study, tracker or StudyTracker(study.name), study.cells, err, sets)
        raise


def _claim_and_execute(study: Study, *, executor: Executor, retry: RetryPolicy, keep: bool,
                       tracker_box: list, sets: dict | None) -> int:
    tracker = StudyTracker(study.name)
    tracker_box.append(tracker)
    interrupt.check()  # (not before: the way out marks the parent an adaptive loop may have opened)
    # claim the study under the store's lock: a second driver started at the same moment sees the
    # parent run this one opened, with its live driver, and is refused (a driver on another host,
    # whose liveness cannot be read from here, is not: tracking.driver_alive)
    with store_lock(tracker.uri):
        other = tracker.live_driver()
        if other:
            host, _, rest = other.partition(":")
            raise UserError(f"is being run now by process {rest.split(':')[0]} on {host}; wait for it to "
                            "end or stop it (Ctrl-C, or kill -INT PID), then run this again",
                            source=f"study '{study.name}'")
        tracker.reconcile()
        tracker.parent_id = tracker.parent_run_id(study.parent_params(), study.path)
    interrupt.check()
    have = tracker.client.get_run(tracker.parent_id).data.tags
    from study.resume import launch_tags

    for key, value in {**study.parent_tags(), **launch_tags()}.items():
        if have.get(key) != value:
            tracker.client.set_tag(tracker.parent_id, key, value)
    tracker.describe_experiment(study.spec.description)
    tracker.repair(study.cells)
    interrupt.check()
    from study.reuse import link_finished_cells

    linked = link_finished_cells(study, tracker, tracker.parent_id)  # finished in another study: not trained again
    if linked:
        print(f"[{study.name}] linked {len(linked)} cells finished in other studies (tag reused_from), "
              "not trained again", flush=True)
    interrupt.check()
    todo, done = retry.cells_to_run(study.cells, tracker.cell_status())
    return _execute(study, tracker, todo, done, executor=executor, retry=retry, keep=keep, sets=sets)


def _execute(study: Study, tracker: StudyTracker, todo: list[Cell], done: int, *, executor: Executor,
             retry: RetryPolicy, keep: bool, sets: dict | None) -> int:
    parent_id = tracker.parent_id
    skipped_failed = len(study.cells) - len(todo) - done
    print(f"[{study.name}] {len(study.cells)} cells: {done} finished, {len(todo)} to run"
          + (f", {retry.failed_hint(skipped_failed)}" if retry.failed_hint(skipped_failed) else ""), flush=True)
    start = time.time()
    if todo:
        slots = executor.slots(study)
        ended = False
        try:
            executor.run(study, todo, tracker, retry)
            ended = True
        except InfrastructureError:
            # the machine stopped the cells (marked KILLED, resumable): the study is interrupted, not failed
            tracker.finish_parent(parent_id, KILLED)
            raise
        finally:
            if not (keep and ended):  # a batch keeps Ray for the next one, unless it ended early
                executor.close()
        interrupt.check()  # a signal during the loop's last step or Ray's shutdown
        if slots is not None:
            line = efficiency_line(study.name, time.time() - start,
                                   tracker.attempt_seconds(c.cell_id for c in todo), min(len(todo), slots))
            if line:
                print(line, flush=True)
    final = StudyTracker(study.name).cell_status()
    counts = summarise(study, final)
    all_done = counts[FINISHED] == len(study.cells)
    cost = tracker.log_study_cost(parent_id, time.time() - start)
    tracker.finish_parent(parent_id, FINISHED if all_done else FAILED)
    from study.adaptive import with_added_seeds

    # the verdicts count every finished cell of this config, those at seeds the adaptive loop added too
    held = with_added_seeds(study, tracker, sets)
    if tracker.mark_verdicts_stale(parent_id, sum(final.get(c.cell_id) == FINISHED for c in held.cells)):
        print(f"[{study.name}] the verdicts on the parent run were made from other cells: marked stale until "
              f"`python -m analysis --study {study.name}` rebuilds them", flush=True)
    print(f"[{study.name}] finished {counts[FINISHED]}/{len(study.cells)}, failed {counts[FAILED]}, "
          f"missing {counts['missing'] + counts[KILLED]}; {cost_text(cost)}", flush=True)
    base = ui_base(tracker.uri)
    print(f"[{study.name}] runs in the MLflow UI (make ui): {study_link(tracker.experiment_id, base)}; the "
          f"study's parent run (its hypotheses and verdicts, once analysed): "
          f"{run_link(tracker.experiment_id, parent_id, base)}", flush=True)
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


def study_status(path: str, *, preset: str = "cpu", sets: dict | None = None) -> int:
    """Print each cell's state (done, running, interrupted, failed, missing) and what to run next.

    Writes nothing: a run left RUNNING by a driver that is gone shows as interrupted (the next
    ``run`` marks it KILLED in the store)."""
    study = load_study(path, preset, sets)
    check_same_study(study)  # a name the store holds for another study: its cells are not this one's
    uri = tracking_uri()
    tracker = StudyTracker(study.name, uri, create=False) if store_exists(uri) else None  # none: nothing ran
    status = tracker.cell_status(live=True) if tracker is not None else {}
    if tracker is not None:  # the seeds --until-decided added to some levels
        from study.adaptive import with_added_seeds

        study = with_added_seeds(study, tracker, sets)
    from analysis.uri import shown_uri

    names = {FINISHED: "done", RUNNING: "running", FAILED: "failed", KILLED: "interrupted"}
    # a missing cell finished in another study is linked, not trained, by the next run (as --dry-run counts)
    from study.reuse import finished_elsewhere

    elsewhere = (finished_elsewhere(tracker, [c.cell_id for c in study.cells if c.cell_id not in status])
                 if tracker is not None else {})
    width = max(len(c.level) for c in study.cells)
    runs = tracker.cell_runs() if RUNNING in status.values() else {}  # one listing for every running cell
    print(f"study '{study.name}', preset {study.preset}, store {shown_uri(uri)}")
    for c in study.cells:
        state = names.get(status.get(c.cell_id), "missing")
        if c.cell_id in elsewhere:
            state += f" (finished in study '{elsewhere[c.cell_id].data.tags.get(Tag.STUDY, '?')}': the next run links it)"
        if status.get(c.cell_id) == RUNNING:
            state += tracker.heartbeat_text(c.cell_id, study.time_limits[1], runs)
        print(f"  {c.cell_id}  {c.level:{width}}  seed {c.seed:<3} {state}")
    counts = summarise(study, status)
    print(f"done {counts[FINISHED]}, running {counts[RUNNING]}, interrupted {counts[KILLED]}, "
          f"failed {counts[FAILED]}, missing {counts['missing']}"
          + (f" ({len(elsewhere)} to link from other studies)" if elsewhere else "") + f" (of {len(study.cells)})")
    if tracker is not None and tracker.live_driver():
        print("a driver is running this study now")
    elif counts["missing"] == len(study.cells):  # nothing of this preset (and these --set) has run
        print(f"no cell of this study has run at preset {study.preset}; to start it: {rerun_command(study, sets)}")
    elif counts[KILLED] or counts["missing"] or counts[RUNNING]:
        what = "interrupted" if counts[KILLED] else "unfinished"
        print(f"the study was {what}; to resume, run the same command again: "
              f"{rerun_command(study, sets, tracker=tracker)}")
    elif counts[FAILED]:
        hint = policy_for(study).failed_hint(counts[FAILED])
        print(f"to rerun the failed cells: {rerun_command(study, sets, RERUN_FAILED_FLAG, tracker=tracker)}"
              if hint else f"the next run retries the {counts[FAILED]} failed cells: {rerun_command(study, sets)}")
    if tracker is None:
        return 0
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
        c = short_commit(t.get(Tag.GIT_COMMIT, ""), t.get(Tag.GIT_DIRTY, "false"))
        commits[c] = commits.get(c, 0) + 1
        d = (t.get(Tag.DATASET_DIGEST) or "unknown")[:12]
        digests[d] = digests.get(d, 0) + 1
    if not commits:
        return ""

    def part(what: str, plural: str, counts: dict[str, int]) -> str:
        items = ", ".join(f"{k}: {n}" for k, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
        head = f"cells from {len(counts)} {plural}" if len(counts) > 1 else f"1 {what}"
        return f"{head} ({items})"

    return f"code: {part('commit', 'commits', commits)}; data: {part('dataset digest', 'dataset digests', digests)}"
