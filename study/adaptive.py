"""``python -m study run STUDY.yaml --until-decided``: add seeds where a hypothesis is still open.

The loop:

1. run the study's own cells (its seeds), as ``run`` does;
2. read the study back from the store and decide its hypotheses
   (:mod:`analysis.evaluate`) with the sequential rule: a group-sequential
   design (:mod:`analysis.decide`) planned over the looks at the file's
   seeds, then ``batch`` more per look, up to ``max_seeds``, its repeated
   confidence intervals each at level ``0.05 / (parts in the study)``, so
   that the study's family-wise error rate stays at 5% over all its looks;
   each interval is the running intersection over the looks, and a unit's
   first decision is kept. The plan is the first run's: a later run goes on
   with its ``max_seeds`` (another one chosen is refused, :func:`keep_plan`);
3. for each unit still open, give the levels it compares the next ``batch``
   seeds (the file's seeds, then max + 1, max + 2, ...), up to ``max_seeds``
   seeds; in a crossed study every cell of the grid gets them (its blocks stay
   complete, for the grid's ANOVA); levels of decided units get none;
4. run those cells through the same runner (local Ray or one SLURM job per
   batch) and go back to 2, until every unit is decided, at its limit, or the
   budget is spent.

The loop reads the verdicts' type (:class:`analysis.stats.Verdict`), never their wording.
Every step derives from the store: the next seeds are a function of the seeds already
FINISHED there, and the runner skips FINISHED cells, so a kill at any moment followed by
the same command resumes the loop without running any seed twice. The parent run is tagged
``stopping=sequential`` and ``max_seeds`` so that the report decides this study with the same design.

Batch size and first look (``analysis.decide.FIRST_LOOK``/``BATCH``): the file's seeds (3),
then 2 seeds per look (tests/test_decide.py simulates the error rates; bench/RESULTS.md section 9 the
seeds to a decision of each rule).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Sequence

from study.core.config import MAX_SEED
from study import interrupt
from study.core.errors import UserError
from study.core.names import Tag
from study.interrupt import StudyInterrupted
from study.resume import interrupted_exit
from study.studyfile import Study, load_study
from study.tracking import FINISHED, StudyTracker

BatchRunner = Callable[[Study], int]


@dataclass(frozen=True)
class Limits:
    max_seeds: int
    budget_hours: float | None
    batch: int
    flag: bool = True  # max_seeds came from --max-seeds (else the study file's, or the default)
    chosen: bool = True  # max_seeds came from --max-seeds or the study file (not the toolkit's default)


def seed_sequence(base: Sequence[int], length: int) -> list[int]:
    """The study's seeds in file order, then max + 1, max + 2, ... up to ``length`` seeds; past
    MAX_SEED (the largest seed a config takes) it goes on from 0, skipping the study's seeds."""
    out = list(dict.fromkeys(base))
    taken = set(out)
    nxt = max(out) + 1
    while len(out) < length:
        if nxt > MAX_SEED:
            nxt = 0
        if nxt not in taken:
            out.append(nxt)
            taken.add(nxt)
        nxt += 1
    return out[:max(length, 0)]


def plan_next(units, base: Sequence[int], limits: Limits, all_levels: Sequence[str] | None = None
              ) -> dict[str, list[int]]:
    """level -> the seeds it should have after the next batch, for the open units only.

    ``units``: :class:`analysis.evaluate.UnitResult` (their ``open``, ``n`` and levels). A unit at
    ``max_seeds`` seeds is at its limit and adds nothing. ``all_levels`` (a crossed study): every
    level gets the seeds an open unit asks for, so that every seed is a complete block.
    """
    plan: dict[str, list[int]] = {}
    for u in units:
        n = u.n
        if not u.open or n >= limits.max_seeds:
            continue
        target = min(max(n + limits.batch, len(base)), limits.max_seeds)
        seeds = seed_sequence(base, target)
        for level in (all_levels if all_levels is not None else u.unit.levels):
            plan[level] = sorted(set(plan.get(level, [])) | set(seeds))
    return plan


def evaluate(study: Study, tracker: StudyTracker, sets: dict | None = None, max_seeds: int | None = None):
    """The study's hypotheses from the store, decided by the sequential rule: (units, hypothesis results, data).
    ``max_seeds``: the design's planned maximum (default: the parent's tag, else the toolkit's).

    Only the cells of this config count (the study file with these ``--set``, at the file's seeds
    and the ones the loop added): a store holding the same study run with ``--set lr=0.1`` would
    otherwise decide this one with those cells.
    """
    from analysis.evaluate import evaluate_study
    from analysis.load import load_study as load_data

    data = load_data(study.name, tracking_uri=tracker.uri, preset=study.preset)
    ours = {c.cell_id for c in with_added_seeds(study, tracker, sets).cells}
    cells = data.cells[data.cells["cell_id"].isin(ours)].reset_index(drop=True)
    data = replace(data, cells=cells, stopping="sequential", hypotheses=tuple(study.hypotheses),
                   design=study.design, planned_seeds=tuple(study.planned_seeds),
                   max_seeds=max_seeds or data.max_seeds)
    results = evaluate_study(data)
    return [u for h in results for u in h.units], results


def unit_lines(units, todo: dict[str, list[int]] | None = None, done: dict | None = None) -> list[str]:
    """One line per unit and part: its estimate, group-sequential interval, state, and what is still to run."""
    from analysis.evaluate import delta_text
    from analysis.tables import spec

    lines = []
    for u in units:
        for j, p in enumerate(u.parts):
            s = spec(p.metric).scale
            iv = (f"[{p.cs_low * s:+.2f}, {p.cs_high * s:+.2f}]" if math.isfinite(p.cs_low) and math.isfinite(p.cs_high)
                  else "(-inf, +inf)")
            mean = p.comparison.mean_diff * s if p.comparison.n else math.nan
            head = f"  {u.unit.name}: " if j == 0 else "    "
            line = (f"{head}{p.label} ({p.metric}): mean {mean:+.2f}, group-sequential {1 - u.cs_alpha:.1%} interval "
                    f"{iv} at n={p.comparison.n}" + (f", region {delta_text(u.unit.delta, p.metric)}: {u.text}"
                                                      if j == len(u.parts) - 1 else ""))
            if todo is not None and u.open and j == len(u.parts) - 1:
                missing = {lv: [x for x in todo.get(lv, []) if x not in (done or {}).get(lv, set())]
                           for lv in u.unit.levels}
                left = "; ".join(f"{lv} seeds {', '.join(map(str, sd))}" for lv, sd in missing.items() if sd)
                line += f"; to run: {left or 'nothing (at the limit)'}"
            lines.append(line)
    return lines


def _finished_seeds(study: Study, status: dict[str, str], cells) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {}
    for c in cells:
        if status.get(c.cell_id) == FINISHED:
            out.setdefault(c.level, set()).add(c.seed)
    return out


def _spent_hours(tracker: StudyTracker) -> tuple[float, int]:
    """(cell-hours trained by this study, cells trained); cells linked from other studies cost nothing here."""
    total, n = 0.0, 0
    for runs in tracker.cell_runs().values():
        for r in runs:
            if r.data.tags.get(Tag.REUSED_FROM) or not (r.info.end_time and r.info.start_time):
                continue
            total += (r.info.end_time - r.info.start_time) / 3.6e6
            n += 1
    return total, n


def until_decided(path: str, *, preset: str, sets: dict | None, limits: Limits, run_batch: BatchRunner,
                  tracking_uri: str | None = None) -> int:
    """The loop in the module docstring. ``run_batch(study)`` runs a Study's unfinished cells
    (the real runner, or a fake in tests). Returns 0 when every hypothesis is decided or at a
    limit (seeds, budget), 1 when failed cells stop it."""
    study = load_study(path, preset, sets)
    check_study(study, limits.max_seeds, flag=limits.flag)
    base = list(dict.fromkeys(c.seed for c in study.cells))
    tracker = StudyTracker(study.name, tracking_uri)
    limits = keep_plan(study, tracker, limits)
    try:
        parent = tracker.parent_id = tracker.parent_run_id(study.parent_params(), study.path)
        limit_tags = {Tag.STOPPING: "sequential", Tag.MAX_SEEDS: str(limits.max_seeds),
                      Tag.BUDGET_HOURS: "none" if limits.budget_hours is None else f"{limits.budget_hours:g}"}
        for key, value in {**study.parent_tags(), **limit_tags}.items():
            tracker.client.set_tag(parent, key, value)
        print(f"[{study.name}] until decided: the study's {len(base)} seeds first, then {limits.batch} seeds per "
              f"look on the levels of open hypotheses (every level of a crossed study), at most {limits.max_seeds} seeds"
              + (f", budget {limits.budget_hours:g} cell-hours" if limits.budget_hours else ""), flush=True)
        return _loop(study, tracker, path, preset=preset, sets=sets, limits=limits, run_batch=run_batch, base=base)
    except StudyInterrupted as sig:  # at a safe point outside a batch (a batch's runner handles its own)
        return interrupted_exit(study, tracker, study.cells, sig, sets)


def _loop(study: Study, tracker: StudyTracker, path: str, *, preset: str, sets: dict | None, limits: Limits,
          run_batch: BatchRunner, base: list[int]) -> int:
    batch = study
    rc = 0
    tried: set[str] = set()
    while True:
        interrupt.check()
        before = sum(1 for s in tracker.cell_status().values() if s == FINISHED)
        if batch.cells:
            rc = run_batch(batch)
        interrupt.check()
        results, _ = evaluate(study, tracker, sets, limits.max_seeds)
        interrupt.check()
        if not results:
            print(f"[{study.name}] no hypothesis to decide in this study", flush=True)
            return rc
        plan = plan_next(results, base, limits, all_levels(study))
        longest = max((len(s) for s in plan.values()), default=0)
        full = load_study(path, preset, sets, seeds=seed_sequence(base, max(longest, len(base))))
        cells = [c for c in full.cells if c.seed in plan.get(c.level, ())]
        status = tracker.cell_status()
        done = _finished_seeds(full, status, cells)
        print(f"[{study.name}] look at n = {', '.join(str(u.n) for u in results)} seeds:", flush=True)
        for line in unit_lines(results, plan, done):
            print(line, flush=True)
        if not plan:
            decided = all(not u.open for u in results)
            print(f"[{study.name}] " + ("every hypothesis decided" if decided else
                                        f"stopped: the open hypotheses are at {limits.max_seeds} seeds"),
                  flush=True)
            return 0  # decided, or at the limit: both are outcomes (REPORT.md says which)
        todo = [c for c in cells if status.get(c.cell_id) != FINISHED]
        if not todo:  # every cell the plan asks for has finished, and still too few pairs
            print(f"[{study.name}] stopped: the open hypotheses' cells have all finished but give fewer "
                  f"values of the metric than seeds (a level that does not record it?)", flush=True)
            return 1
        after = sum(1 for s in status.values() if s == FINISHED)
        todo_ids = {c.cell_id for c in todo}
        if todo_ids and todo_ids <= tried and after == before:
            print(f"[{study.name}] stopped: the last batch finished no cell (its cells failed; "
                  f"`python -m study status` lists them)", flush=True)
            return 1
        tried = todo_ids
        if limits.budget_hours is not None:
            spent, trained = _spent_hours(tracker)
            per_cell = spent / max(1, trained)
            if spent + per_cell * len(todo) > limits.budget_hours:
                print(f"[{study.name}] stopped: {spent:.2f} cell-hours spent, the next {len(todo)} cells would "
                      f"pass the budget of {limits.budget_hours:g}", flush=True)
                return 0
        batch = replace(study, cells=tuple(cells))


def check_study(study: Study, max_seeds: int, flag: bool = True) -> None:
    """What ``--until-decided`` needs of a study, as one UserError (a dry run checks it too): a
    hypothesis to decide, and room for at least the study file's seeds (the group-sequential design can
    decide from its first look of 2 seeds or more on). ``flag``: the limit came from ``--max-seeds`` (else
    from the file's ``max_seeds``)."""
    where = {"source": "--max-seeds"} if flag else {"source": str(study.path), "key": "max_seeds"}
    if not study.hypotheses:
        raise UserError(f"study '{study.name}' states no hypothesis (hypotheses: in its file, or the finding: "
                        "shorthand): there is nothing to decide", source="--until-decided")
    base = study.planned_seeds
    if max_seeds < len(base):
        raise UserError(f"must be at least the study's {len(base)} seeds (got {max_seeds})", **where)


def all_levels(study: Study) -> list[str] | None:
    """Every level of a crossed study (each added seed goes to every cell), else None."""
    return list(dict.fromkeys(c.level for c in study.cells)) if len(study.factors) > 1 else None


def limits_for(study: Study, max_seeds: int | None, budget_hours: float | None) -> "Limits":
    """The loop's limits: ``--max-seeds`` or the study file's ``max_seeds`` (at this preset) or the toolkit's."""
    from analysis import decide

    return Limits(max_seeds=max_seeds or study.max_seeds or decide.MAX_SEEDS, budget_hours=budget_hours,
                  batch=decide.BATCH, flag=max_seeds is not None or study.max_seeds is None,
                  chosen=max_seeds is not None or study.max_seeds is not None)


def keep_plan(study: Study, tracker: StudyTracker, limits: Limits) -> Limits:
    """The limits of a study whose ``--until-decided`` has begun: its group-sequential design was planned
    with the ``max_seeds`` of its first run (parent tag), and spends its error over those looks; a
    limit not chosen now goes on with the plan's, and another chosen limit is one UserError (the
    boundaries of the looks already taken would change, and with them the decisions)."""
    parent = tracker.parent_run()
    tags = parent.data.tags if parent is not None else {}
    planned = tags.get(Tag.MAX_SEEDS, "") if tags.get(Tag.STOPPING) == "sequential" else ""
    if not planned.isdigit() or int(planned) == limits.max_seeds:
        return limits
    if not limits.chosen:
        return replace(limits, max_seeds=int(planned))
    where = {"source": "--max-seeds"} if limits.flag else {"source": str(study.path), "key": "max_seeds"}
    raise UserError(f"study '{study.name}' was planned with at most {planned} seeds per level when its "
                    f"--until-decided began (its group-sequential design spends the error over those looks; "
                    f"{limits.max_seeds} now would change the boundaries of the looks already taken): go on with "
                    f"--max-seeds {planned}, or give the study another name to plan it anew", **where)


def check_limits(max_seeds: int | None, budget_hours: float | None) -> None:
    """The limits of ``--until-decided``, as one UserError naming the flag (a dry run checks them too)."""
    if max_seeds is not None and max_seeds < 2:
        raise UserError(f"must be >= 2 (got {max_seeds})", source="--max-seeds")
    if budget_hours is not None and not budget_hours > 0:
        raise UserError(f"must be > 0 (got {budget_hours})", source="--budget-hours")


def with_added_seeds(study: Study, tracker: StudyTracker, sets: dict | None = None) -> Study:
    """``study`` plus the cells at seeds the adaptive loop added that the store holds (they are not
    in the study file's seeds, so ``status`` would not list them otherwise)."""
    runs = tracker.cell_runs()
    base = study.planned_seeds
    added = sorted({int(s) for rs in runs.values() for r in rs
                    if (s := r.data.params.get("seed", "")).isdigit() and int(s) <= MAX_SEED} - set(base))
    if not added:
        return study
    full = load_study(study.path, study.preset, sets, seeds=base + added)
    return replace(study, cells=tuple(c for c in full.cells if c.seed in base or c.cell_id in runs))


def status_lines(study: Study, tracker: StudyTracker, sets: dict | None = None,
                 max_seeds: int | None = None) -> list[str]:
    """For ``status``: each hypothesis unit's group-sequential interval and the cells ``--until-decided`` would
    run next; nothing when the study has no finished cells or no hypothesis."""
    from analysis.load import ContractError, StoreError

    if tracker.experiment_id is None or not study.hypotheses:
        return []
    try:
        results, _ = evaluate(study, tracker, sets)
    except (StoreError, ContractError):
        return []
    if not results:
        return []
    base = study.planned_seeds
    limits = limits_for(study, max_seeds, None)
    try:
        limits = keep_plan(study, tracker, limits)
    except UserError:
        pass  # a run with that limit would be refused; status shows what the plan asks
    plan = plan_next(results, base, limits, all_levels(study))
    longest = max([len(s) for s in plan.values()] + [len(base)])
    full = load_study(study.path, study.preset, sets, seeds=seed_sequence(base, longest))
    cells = [c for c in full.cells if c.seed in plan.get(c.level, ())]
    done = _finished_seeds(full, tracker.cell_status(), cells)
    return (["hypotheses (group-sequential intervals, in points; what --until-decided runs next):"]
            + unit_lines(results, plan, done))
