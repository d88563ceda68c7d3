"""Benchmark 7: where one study cell's time goes (start-up, training, evaluation, probe).

One whole run of the trainer at a preset (``cpu`` by default, one thread, as a
study's cell runs), with each phase timed from the outside: the trainer is a
subclass whose phase methods add their wall and CPU time to a named bucket
(a phase called inside another is counted in the inner one only):

- ``start-up: data + model``: ``Trainer(...)``: the dataset loaded (or read
  from the decoded cache), the model, optimizer and state built;
- ``start-up: bank init``: ``init_inter_state`` at epoch 0 (features of the
  training set + k-means); offline re-clusterings (``recluster``) are
  counted here too;
- ``train``: ``train_epoch`` (every step, data and augmentation included);
- ``eval``: ``evaluate`` (kNN monitor: features of the train subset and the
  test set, the kNN itself, label metrics), epoch 0 included;
- ``probe``: ``_final`` (features + linear probe);
- ``checkpoints``: ``save_checkpoint`` (only with an output folder);
- ``other``: the rest of ``run()``.

The CPU time (``time.process_time``) is given beside the wall time: on a
shared machine the wall time of a one-thread run grows with the load, its
CPU time much less.
"""

from __future__ import annotations

import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

import torch

from bench.common import Check, Section, set_threads
from bench.states import NO_PROTOCOLS, Stepper, build_trainer, synthetic_data
from study.data.augment import eval_preprocess
from study.core.config import build_config
from study.data.datasets import epoch_batches
from study.train.trainer import Trainer

PHASES = ("start-up: data + model", "start-up: bank init", "train", "eval", "probe", "checkpoints", "other")


class PhaseClock:
    """Wall and CPU seconds per named phase; nested phases count only in the innermost one."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {p: 0.0 for p in PHASES}
        self.cpu: dict[str, float] = {p: 0.0 for p in PHASES}
        self._stack: list[list] = []  # [name, wall start, cpu start, wall of inner phases, cpu of inner phases]

    @contextmanager
    def phase(self, name: str):
        frame = [name, time.perf_counter(), time.process_time(), 0.0, 0.0]
        self._stack.append(frame)
        try:
            yield
        finally:
            self._stack.pop()
            wall = time.perf_counter() - frame[1]
            cpu = time.process_time() - frame[2]
            self.wall[name] = self.wall.get(name, 0.0) + wall - frame[3]
            self.cpu[name] = self.cpu.get(name, 0.0) + cpu - frame[4]
            if self._stack:
                self._stack[-1][3] += wall
                self._stack[-1][4] += cpu


def _timed_trainer_class(clock: PhaseClock) -> type:
    class TimedTrainer(Trainer):
        def init_inter_state(self) -> None:
            with clock.phase("start-up: bank init"):
                super().init_inter_state()

        def recluster(self) -> None:
            with clock.phase("start-up: bank init"):
                super().recluster()

        def train_epoch(self) -> dict:
            with clock.phase("train"):
                return super().train_epoch()

        def evaluate(self, epoch: int) -> dict:
            with clock.phase("eval"):
                return super().evaluate(epoch)

        def _final(self) -> dict:
            with clock.phase("probe"):
                return super()._final()

        def save_checkpoint(self) -> None:
            with clock.phase("checkpoints"):
                super().save_checkpoint()

    return TimedTrainer


def time_cell(preset: str = "cpu", overrides: Optional[dict] = None, out_dir: str | Path | None = None,
              threads: Optional[int] = 1) -> dict[str, Any]:
    """Run one cell of ``preset`` (+ ``overrides``) and time its phases.

    Returns {"wall": {phase: s}, "cpu": {phase: s}, "total_wall", "total_cpu",
    "final": the run's final metrics, "steps", "epochs", "config": the resolved config}.
    """
    clock = PhaseClock()
    cfg = build_config(preset, {"threads": threads, "progress": False, **(overrides or {})})
    if cfg.device != "cpu" and torch.cuda.is_available():
        torch.cuda.synchronize()
    cls = _timed_trainer_class(clock)
    with set_threads(threads if threads is not None else torch.get_num_threads()):
        w0, c0 = time.perf_counter(), time.process_time()
        with clock.phase("other"):
            with clock.phase("start-up: data + model"):
                trainer = cls(cfg, out_dir, log=lambda _msg: None)
            final = trainer.run()
        total_wall, total_cpu = time.perf_counter() - w0, time.process_time() - c0
    return {"wall": dict(clock.wall), "cpu": dict(clock.cpu), "total_wall": total_wall, "total_cpu": total_cpu,
            "final": final, "steps": trainer.step, "epochs": trainer.epoch, "config": cfg}


QUICK_OVERRIDES = {"epochs": 2, "max_steps_per_epoch": 3, "train_subset": 1024, "test_subset": 256,
                   "knn_train_subset": 512, "num_clusters": 16, "min_cluster": 4, "neg_num": 64, "pool": 256,
                   "candidates": 512, "linear_epochs": 2,
                   # the protocols at a size the tiny data holds (a quick cell still times each)
                   "lowshot_shots": [1, 2, 4], "semisup_steps": 2, "transfer_subset": 500}


def run(quick: bool = False, shared: Optional[dict] = None) -> Section:
    sec = Section("cell", "7. One `cpu` cell end to end: start-up, training, evaluation, probe (one thread)")
    start = time.perf_counter()
    overrides = QUICK_OVERRIDES if quick else {}
    with tempfile.TemporaryDirectory(prefix="bench-cell-") as tmp:
        res = time_cell("cpu", overrides, out_dir=Path(tmp) / "run")
    _fill(sec, res, "cpu", quick)
    if shared is not None and not quick:
        shared["cell_s"] = res["total_wall"]  # the cost model of the sequential rules (bench/sequential.py)
    if not quick:  # the tests run them on their own (tests/test_speed.py)
        sec.checks += [check_channels_last_equivalent(), check_eval_batch_invariance(), check_feature_memo()]
    sec.seconds = time.perf_counter() - start
    return sec


def breakdown_rows(res: dict) -> list[list]:
    """[[phase, wall s, % of wall, CPU s]] plus a total row."""
    total = res["total_wall"]
    rows = [[p, res["wall"][p], res["wall"][p] / total * 100, res["cpu"][p]] for p in PHASES]
    rows.append(["total", total, 100.0, res["total_cpu"]])
    return rows


def _fill(sec: Section, res: dict, preset: str, quick: bool) -> None:
    cfg = res["config"]
    steps_per_epoch = res["steps"] // max(1, res["epochs"])
    sec.table(
        f"Preset `{preset}`{' (quick: tiny sizes)' if quick else ''}: {cfg.dataset}, {cfg.train_subset or 'all'} "
        f"train images, {cfg.backbone} {cfg.widths}, batch {cfg.batch_size}, {res['epochs']} epochs x "
        f"{steps_per_epoch} steps, {cfg.method} ({cfg.sampling}, {cfg.labels}, {cfg.neg_search}); kNN train "
        f"subset {cfg.knn_train_subset}, probe {cfg.linear_epochs} epochs; one thread; seconds.",
        ["phase", "wall s", "% of wall", "CPU s"], breakdown_rows(res))
    train = res["wall"]["train"]
    if train > 0 and res["steps"]:
        sec.notes.append(f"training: {train / res['steps'] * 1e3:.1f} ms per step, "
                         f"{res['steps'] * cfg.batch_size / train:.0f} pairs/s (data and augmentation included)")
    sec.notes.append(f"final kNN top-1 {res['final'].get('knn_top1', float('nan')):.4f}, "
                     f"linear top-1 {res['final'].get('linear_top1', float('nan')):.4f}")
    sec.data.update({k: v for k, v in res.items() if k != "config"})


def main(argv: Optional[list[str]] = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Time the phases of one study cell.")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    from study.core.config import parse_sets

    with tempfile.TemporaryDirectory(prefix="bench-cell-") as tmp:
        res = time_cell(args.preset, parse_sets(args.sets), out_dir=Path(tmp) / "run", threads=args.threads)
    sec = Section("cell", f"One `{args.preset}` cell")
    _fill(sec, res, args.preset, False)
    print(sec.text())
    for n in sec.notes:
        print(n)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


# ---------------------------------------------------------------------------
# Correctness checks of the speed-ups (also run by tests/test_speed.py)
# ---------------------------------------------------------------------------

_TINY = {"widths": [8, 16, 32], "image_size": 16, "batch_size": 32, "queue_size": 64, "min_cluster": 2,
         "num_clusters": 8, "neg_num": 16, "pool": 64, "candidates": 128, "knn_k": 10, "knn_train_subset": 200,
         **NO_PROTOCOLS}


def check_channels_last_equivalent() -> Check:
    """channels_last computes what NCHW computes, to float rounding (same maths, another summation order).

    Same seed, same batch, ``channels_last`` "on" and "off": the eval-mode
    features of the initial weights agree to 1e-5, and after one MoCo v2
    training step the loss agrees to 1e-6 relative and every weight to 1e-5.
    Beyond one step the two runs drift apart as any change of summation order
    makes SGD runs drift (a different thread count does the same): a run in
    either layout is deterministic and resumes bit for bit
    (tests/test_trainer.py::test_resume_is_bitwise_equal runs in channels_last).
    """
    data = synthetic_data(256, 16)
    problems = []
    with set_threads(1):
        runs = {}
        for layout in ("on", "off"):
            t = build_trainer("cpu", {**_TINY, "method": "mocov2", "channels_last": layout}, data)
            feats = t.evaluator._extract(t.moco.encoder_q, "train", None, neck=True)
            stepper = Stepper(t, epoch_batches(256, 32, 0, 0)[:1], pin_step=None)
            stepper()
            runs[layout] = (t, feats, stepper.acc.loss)
    (a, fa, la), (b, fb, lb) = runs["on"], runs["off"]
    if not (a.channels_last and not b.channels_last):
        problems.append("the layouts were not applied")
    if not torch.allclose(fa, fb, rtol=1e-5, atol=1e-5):
        problems.append(f"eval features differ by {float((fa - fb).abs().max()):.2e}")
    if abs(la - lb) > 1e-6 * abs(lb):
        problems.append(f"loss {la:.8f} vs {lb:.8f}")
    sa, sb = a.moco.state_dict(), b.moco.state_dict()
    for key in sb:
        if sb[key].is_floating_point() and not torch.allclose(sa[key], sb[key], rtol=1e-5, atol=1e-5):
            problems.append(f"{key} differs by {float((sa[key] - sb[key]).abs().max()):.2e}")
    return Check("channels_last equals NCHW to float rounding (eval features; one MoCo v2 step's loss and "
                 "weights)", not problems, "; ".join(problems[:3]))


def check_eval_batch_invariance() -> Check:
    """Each image's eval features are the same, bit for bit, whatever the extraction batch size.

    So the trainer's eval batch size (512 on a CPU) is a speed setting only;
    checked in both memory layouts, on batch sizes 512 and 1024 against 9
    (uneven last batches included). A batch of ONE image takes another
    kernel path and can differ in the last bits; batches of 2 or more agree.
    """
    data = synthetic_data(1100, 16)
    problems = []
    with set_threads(1), torch.no_grad():
        for layout in ("on", "off"):
            t = build_trainer("cpu", {**_TINY, "channels_last": layout}, data)
            enc = t.moco.encoder_q.eval()

            def feats(bs: int) -> torch.Tensor:
                out = []
                for i in range(0, 1100, bs):
                    x = eval_preprocess(data.train_images[i:i + bs], 16, data.mean, data.std)
                    if t.channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    out.append(enc.backbone(x))
                return torch.cat(out)

            ref = feats(9)  # 1100 = 122 x 9 + 2: no batch of one
            for bs in (512, 1024):
                if not torch.equal(feats(bs), ref):
                    problems.append(f"channels_last {layout}, batch {bs}")
    return Check("eval features per image do not depend on the batch size (512, 1024 vs 9; both layouts)",
                 not problems, ", ".join(problems))


def check_feature_memo() -> Check:
    """The feature memo hands out exactly what a fresh extraction gives, and only for the same weights.

    A whole short run with the memo equals one with it disabled (every
    metric, bit for bit; the probe then re-extracts the last epoch's
    features); a second extraction at the same state is the stored tensor;
    after a weight update the memo is not used.
    """
    data = synthetic_data(256, 16)
    ov = {**_TINY, "epochs": 2, "linear_epochs": 2, "max_steps_per_epoch": 3}
    problems = []
    with set_threads(1):
        t = build_trainer("cpu", ov, data)
        with_memo = t.run()
        off = build_trainer("cpu", ov, data)
        off.evaluator.memo.get = lambda *a, **k: None  # every extraction computed afresh
        without = off.run()
        timing = ("epoch_time", "pairs_per_s")
        if {k: v for k, v in with_memo.items() if k not in timing} != \
                {k: v for k, v in without.items() if k not in timing}:
            problems.append("final metrics differ with the memo")
        enc = t.moco.encoder_q
        a = t.evaluator._extract(enc, "test", None, neck=False)
        if t.evaluator._extract(enc, "test", None, neck=False) is not a:
            problems.append("no memo hit at the same state")
        t.evaluator.memo.clear()
        if not torch.equal(t.evaluator._extract(enc, "test", None, neck=False), a):
            problems.append("a fresh extraction differs from the stored one")
        with torch.no_grad():
            next(enc.backbone.parameters()).add_(0.5)
        after = t.evaluator._extract(enc, "test", None, neck=False)
        if after is a or torch.equal(after, a):
            problems.append("the memo served features of other weights")
    return Check("feature memo: a run's metrics equal a run without it; served only for the same weights",
                 not problems, "; ".join(problems))
