"""A stand-in for the trainer: a trial that reports made-up metrics in milliseconds.

The scheduler's behaviours (skip, resume, requeue, failure, MLflow
de-duplication, the adaptive loop) do not depend on what a cell trains, so
their tests run this trial instead of :func:`cluster.tune_run.cell_trial`:

    STUDY_TRIAL=cluster.fake_trial:fake_trial python -m study run FILE ...

It behaves like a trained cell from the outside: it reports epochs 0..E
(E = the cell's ``epochs``) through the same :class:`~cluster.tune_run.TrialReporter`,
keeps ``metrics.jsonl`` and a checkpoint (``fake_state.json``, the next
epoch) in the run directory, resumes from it, and writes ``final.json``.
Its ``knn_top1`` is a fixed function of (level, seed), so an analysis of a
fake study is reproducible. ``$STUDY_FAKE_TRIAL`` (JSON, every key
optional) tells it what to do:

- ``epoch_s``: seconds an epoch takes (default 0.02);
- ``fail``: cells ("level/seed") that raise at epoch ``fail_epoch`` (default 1) in
  every attempt; ``fail_once``: cells that raise there in their first attempt only;
- ``hang``: cells that stop reporting at epoch ``fail_epoch`` and sleep until killed;
- ``means``: {level: knn_top1 mean} (default 0.70 + a small per-level offset);
  the per-seed noise has standard deviation ``noise`` (default 0.005).
"""

from __future__ import annotations

import json
import os
import time
import zlib

from study.core.files import write_atomic

FAKE_ENV = "STUDY_FAKE_TRIAL"
NEG_SIM_OFFSETS = {"mean": 0.0, "std": 0.1, "q05": -0.2, "q25": -0.1, "q50": 0.0, "q75": 0.1, "q95": 0.2}
STATE_FILE = "fake_state.json"


def fake_metric(level: str, seed: int, means: dict | None = None, noise: float = 0.005) -> float:
    """The made-up final ``knn_top1`` of one cell: the level's mean plus a seed's deviation in
    [-2*noise, 2*noise], both fixed functions of their inputs (crc32, not Python's salted hash)."""
    mean = (means or {}).get(level, 0.70 + (zlib.crc32(level.encode()) % 100) / 10_000)
    u = zlib.crc32(f"{level}/{seed}".encode()) / 2**32  # [0, 1)
    return mean + noise * 4 * (u - 0.5)


def fake_trial(config: dict) -> None:
    """Tune trial function: one cell's epochs, made up (see the module docstring)."""
    from cluster.tune_run import METRICS_FILE, TrialReporter

    opts = json.loads(os.environ.get(FAKE_ENV) or "{}")
    payload = config["cell"]
    name = f"{payload['level']}/{payload['seed']}"
    epochs = int(payload["config"]["epochs"])
    final_value = fake_metric(payload["level"], int(payload["seed"]), opts.get("means"), opts.get("noise", 0.005))
    reporter = TrialReporter(payload)
    run_dir = reporter.run_dir
    final_path = run_dir / "final.json"
    reporter.replay()
    if final_path.exists():
        reporter.final(json.loads(final_path.read_text()))
        return
    state_path = run_dir / STATE_FILE
    start = json.loads(state_path.read_text())["next_epoch"] if state_path.exists() else 0
    history_path = run_dir / METRICS_FILE
    history = history_path.read_text().splitlines() if history_path.exists() else []
    history = history[:start]
    attempts_path = run_dir / "fake_attempts"
    attempt = int(attempts_path.read_text()) + 1 if attempts_path.exists() else 1
    write_atomic(attempts_path, str(attempt))  # whole or absent, a full disk included (a rerun reads it)
    at = int(opts.get("fail_epoch", 1))
    for epoch in range(start, epochs + 1):
        if epoch == at and name in opts.get("hang", ()):
            while True:
                time.sleep(3600)
        if epoch == at and (name in opts.get("fail", ()) or (name in opts.get("fail_once", ()) and attempt == 1)):
            raise RuntimeError(f"fake trial {name}: told to fail at epoch {epoch} (attempt {attempt})")
        time.sleep(float(opts.get("epoch_s", 0.02)))
        m = {"epoch": epoch, "knn_top1": final_value * epoch / max(1, epochs)}
        if epoch > 0:  # as the trainer: epoch 0 is the untrained network, evaluated only
            m["loss"] = 5.0 / epoch
            # the sampled negatives' similarity statistics (the analysis draws them per level)
            m.update({f"neg_sim_{k}": 0.1 * epoch / epochs + off for k, off in NEG_SIM_OFFSETS.items()})
        history.append(json.dumps(m))
        write_atomic(history_path, "".join(line + "\n" for line in history))
        write_atomic(state_path, json.dumps({"next_epoch": epoch + 1}))
        reporter.epoch(epoch, m)
    final = {"knn_top1": final_value, "linear_top1": final_value + 0.02, "nmi": 0.4, "ari": 0.3,
             "epochs": epochs, "steps": 10 * epochs}
    write_atomic(final_path, json.dumps(final))
    reporter.final(final)
