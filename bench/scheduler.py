"""Benchmark 5: what Ray Tune's scheduling costs a study.

A study of N trivial trials, each a fixed amount of work (sleeping, so the
trials do not compete with Ray's own processes for the two cores) reported
R times with a small checkpoint, like ``cluster.tune_run.cell_trial``:

- through Ray Tune as the local backend runs a study: ``ray.init(num_cpus=2,
  include_dashboard=False)``, a function trainable with 1 CPU per trial (2
  parallel slots), ``reuse_actors=True``, FIFO, ``tune.report`` with a
  checkpoint every report (the settings of ``cluster.tune_run.run_cells``);
- the same trial function in a plain loop (no Ray; a pool of as many
  threads as slots). Its trials only sleep, so it runs in a background
  thread while Tune runs: neither slows the other, and the benchmark takes
  one study's time instead of two.

Reported: the study's wall time (``Tuner.fit``) against the sum of its
trials' own times (measured inside each trial) divided by the parallel
slots, and ``ray.init`` separately; then where the difference goes (before
the first trials start, between consecutive trials of a slot, after the
last one), from which the same ratio is modelled for a real study's shape
(12 cells of about 2 minutes, the ``cpu`` preset's sampling study).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from bench.common import Check, Goal, Section

GOAL_OVERHEAD = 1.15
CPU_PRESET_TRIAL_S = 120.0  # about how long one `cpu` preset cell trains


@dataclass(frozen=True)
class SchedScale:
    trials: int
    reports: int
    seconds: float  # work per trial
    slots: int = 2


# 12 trials: the size of the sampling study (4 levels x 3 seeds)
FULL = SchedScale(trials=12, reports=4, seconds=5.0)
QUICK = SchedScale(trials=2, reports=2, seconds=0.2)


def trial_body(config: dict, report: Callable[[dict, Optional[Path]], None]) -> float:
    """The work of one trial: ``reports`` equal sleeps, each followed by a report with a checkpoint.

    Each report carries the trial's own time so far, its start and current
    wall-clock times and its process id (for the latency breakdown).
    """
    start, wall_start = time.perf_counter(), time.time()
    per = config["seconds"] / config["reports"]
    for i in range(config["reports"]):
        time.sleep(per)
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "pointer.json").write_text(json.dumps({"trial": config["trial"], "epoch": i + 1}))
            report({"epoch": i + 1, "trial_seconds": time.perf_counter() - start, "wall_start": wall_start,
                    "wall_now": time.time(), "pid": os.getpid()}, Path(tmp))
    return time.perf_counter() - start


def tune_trial(config: dict) -> None:
    """Function trainable: trial_body with tune.report.

    Imports what a real cell imports (torch and the trainer) first: a new
    worker process pays that, a reused one does not; the trial's own time
    (measured by trial_body) starts after it.
    """
    import study.train.trainer  # noqa: F401
    from ray import tune

    def report(metrics: dict, ckpt_dir: Optional[Path]) -> None:
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(ckpt_dir)) if ckpt_dir else None)

    trial_body(config, report)


def plain_loop(scale: SchedScale) -> tuple[float, list[float]]:
    """The same trials without Ray: a pool of ``slots`` threads, reports going nowhere.

    Returns (wall s, trial times).
    """
    from concurrent.futures import ThreadPoolExecutor

    configs = [{"trial": t, "reports": scale.reports, "seconds": scale.seconds} for t in range(scale.trials)]
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=scale.slots) as pool:
        times = list(pool.map(lambda c: trial_body(c, lambda m, d: None), configs))
    return time.perf_counter() - start, times


def tune_study(scale: SchedScale) -> dict:
    """The trials through Ray Tune (a fresh local Ray instance in a temporary directory)."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # no experiment banner on the console
    import ray
    from ray import tune

    tmp = Path(tempfile.mkdtemp(prefix="bench_tune_"))
    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=scale.slots, include_dashboard=False, log_to_driver=False,
             configure_logging=False, _temp_dir=str(tmp / "ray"))
    init_s = time.perf_counter() - t0
    try:
        trainable = tune.with_resources(tune_trial, {"cpu": 1})
        space = {"trial": tune.grid_search(list(range(scale.trials))), "reports": scale.reports,
                 "seconds": scale.seconds}
        tuner = tune.Tuner(
            trainable, param_space=space,
            # as cluster.tune_run.run_cells: actors reused, no checkpoint retention limit
            tune_config=tune.TuneConfig(max_concurrent_trials=scale.slots, reuse_actors=True),
            run_config=tune.RunConfig(name="bench", storage_path=str(tmp / "results"), verbose=0,
                                      failure_config=tune.FailureConfig(max_failures=0)))
        t1, w1 = time.perf_counter(), time.time()
        grid = tuner.fit()
        fit_s, w2 = time.perf_counter() - t1, time.time()
        done = [r.metrics for r in grid if r.metrics]
        trial_times = [float(m["trial_seconds"]) for m in done]
        reports = [int(m["epoch"]) for m in done]
        errors = sum(1 for r in grid if r.error)
        latency = _latencies(w1, w2, [(float(m["wall_start"]), float(m["wall_now"])) for m in done], scale.slots)
        pids = len({m["pid"] for m in done})
    finally:
        t2 = time.perf_counter()
        ray.shutdown()
        shutdown_s = time.perf_counter() - t2
        shutil.rmtree(tmp, ignore_errors=True)
    return {"init_s": init_s, "fit_s": fit_s, "shutdown_s": shutdown_s, "trial_times": trial_times,
            "reports": reports, "errors": errors, "processes": pids, **latency}


def _latencies(fit_start: float, fit_end: float, spans: list[tuple[float, float]], slots: int) -> dict:
    """Where Tune's time goes: before the first trials start, between a slot's trials, after the last.

    ``spans``: (start, end) wall times of each trial's own work. A trial that
    did not start in the first wave waited for the slot freed last before its
    start; its gap is the time from that end to its start.
    """
    if not spans:
        return {"first_start_s": float("nan"), "gap_s": float("nan"), "tail_s": float("nan")}
    spans = sorted(spans)
    first = [s for s, _ in spans[:slots]]
    gaps = []
    for start, _ in spans[slots:]:
        before = [e for _, e in spans if e <= start]
        if before:
            gaps.append(start - max(before))
    return {"first_start_s": sum(first) / len(first) - fit_start,
            "gap_s": sum(gaps) / len(gaps) if gaps else 0.0,
            "tail_s": fit_end - max(e for _, e in spans)}


def modelled_wall(trials: int, seconds: float, slots: int, lat: dict) -> float:
    """Study wall time from the measured latencies: first start + waves x trial + gaps + tail."""
    waves = -(-trials // slots)
    return lat["first_start_s"] + waves * seconds + (waves - 1) * lat["gap_s"] + lat["tail_s"]


def run(quick: bool = False, shared: Optional[dict] = None) -> Section:
    scale = QUICK if quick else FULL
    sec = Section("scheduler", "5. Scheduler overhead: Ray Tune vs a plain loop")
    start = time.perf_counter()
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as side:
        plain = side.submit(plain_loop, scale)  # sleeps only: overlaps Tune without competing for the cores
        res = tune_study(scale)
        plain_s, plain_times = plain.result()
    trial_sum = sum(res["trial_times"])
    ideal = trial_sum / scale.slots
    ratio = res["fit_s"] / ideal
    # the sampling study's shape: 4 levels x 3 seeds, each cell about 2 minutes
    cells = 12
    model = modelled_wall(cells, CPU_PRESET_TRIAL_S, scale.slots, res)
    extrapolated = model / (cells * CPU_PRESET_TRIAL_S / scale.slots)
    sec.table(f"{scale.trials} trials x {scale.seconds:g} s of work ({scale.reports} reports with a checkpoint), "
              f"{scale.slots} parallel slots (num_cpus={scale.slots}, 1 CPU per trial); seconds.",
              ["plain loop wall", "Tune: sum of trial times / slots", "Tune: Tuner.fit wall",
               "wall / (sum / slots)", "ray.init", "ray.shutdown"],
              [[plain_s, ideal, res["fit_s"], ratio, res["init_s"], res["shutdown_s"]]])
    sec.table("Where Tune's time goes (wall clock, from the trials' own start and end times).",
              ["fit() to first trials' start", "between trials of a slot (mean)", "last trial's end to fit() return",
               "worker processes", f"modelled wall / ideal, {cells} cells x {CPU_PRESET_TRIAL_S:.0f} s"],
              [[res["first_start_s"], res["gap_s"], res["tail_s"], res["processes"], extrapolated]])
    sec.goals.append(Goal(f"study wall / (sum of trial times / slots), {scale.trials} trials of {scale.seconds:g} s",
                          ratio, GOAL_OVERHEAD))
    sec.goals.append(Goal(f"the same, modelled from the measured latencies for {cells} cells of "
                          f"{CPU_PRESET_TRIAL_S:.0f} s (a `cpu` preset study)", extrapolated, GOAL_OVERHEAD))
    sec.data.update(res, plain_s=plain_s, ratio=ratio, modelled=extrapolated)
    sec.checks.append(check_study(res, plain_times, scale))
    sec.seconds = time.perf_counter() - start
    return sec


def check_study(res: dict, plain_times: list[float], scale: SchedScale) -> Check:
    """Every trial ran once, reported every time, without error, and did the same work as in the plain loop."""
    ok = (res["errors"] == 0 and len(res["trial_times"]) == scale.trials
          and all(r == scale.reports for r in res["reports"])
          and all(t >= scale.seconds * 0.99 for t in res["trial_times"] + plain_times))
    return Check("Tune ran every trial to its last report without error; trial work matches the plain loop", ok,
                 f"{len(res['trial_times'])} trials, reports {sorted(set(res['reports']))}, errors {res['errors']}")
