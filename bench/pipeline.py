"""Benchmark 4: the data pipeline against what the trainer consumes.

Delivered: image pairs per second of the batched pipeline alone, as the
trainer runs it at the ``cpu`` preset: ``epoch_batches`` (once per epoch,
amortised), the memory source's uint8 batches (``source.train_batches``),
``TwoViewAugment`` (the trainer's own instance) on one thread.

Consumed: pairs per second of the MoCo v2 training step (the fastest
consumer, so the strictest comparison) without its data part, i.e.
``B / (step - pipeline)``: what the model would take if the data were free.
The trainer runs the pipeline inline (no loader processes), so the ratio
delivered / consumed is also (step - pipeline) / pipeline: above 1 the
pipeline is the smaller part of a step, and a separate loader thread could
keep up with the model.

Correctness: :func:`check_pipeline` (shapes, dtype, determinism in the
generator, batch order a deterministic partition).
"""

from __future__ import annotations

import time
from typing import Optional

import torch

from bench import step as step_bench
from bench.common import Check, Goal, Section, interleaved_times, median, set_threads
from bench.states import Stepper, build_trainer, fashion_or_synthetic, synthetic_data
from study.data.augment import AugmentConfig, TwoViewAugment
from study.data.datasets import epoch_batches
from study.data.sources import MemorySource

GOAL_RATIO = 1.0


class Pipeline:
    """One batch of the trainer's data path per call: batch order -> the source's uint8 images -> two views.

    Mirrors ``Trainer.train_epoch`` (``epoch_batches``, ``source.train_batches``)
    and ``Trainer._batch_views`` (``augment`` with a CPU generator).
    """

    def __init__(self, source, augment: TwoViewAugment, batch_size: int, seed: int = 0):
        self.source, self.augment, self.batch_size, self.seed = source, augment, batch_size, seed
        self.gen = torch.Generator().manual_seed(seed)
        self.epoch = 0
        self.images = iter(())
        self.out: tuple[torch.Tensor, torch.Tensor] | None = None

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        images = next(self.images, None)
        if images is None:
            batches = epoch_batches(self.source.num_train, self.batch_size, self.seed, self.epoch)
            self.images = iter(self.source.train_batches(batches, self.epoch))
            self.epoch += 1
            images = next(self.images)
        self.out = self.augment(images, self.gen)
        return self.out


def run(quick: bool = False, shared: Optional[dict] = None) -> Section:
    scale = step_bench.QUICK if quick else step_bench.FULL
    sec = Section("pipeline", "4. Data pipeline: pairs/s delivered vs consumed by the trainer (one thread)")
    start = time.perf_counter()
    data, desc = fashion_or_synthetic(step_bench._image_size(scale), scale.synthetic_n)
    repeats = 3 if quick else 15
    with set_threads(1):
        moco = build_trainer(scale.preset, {**scale.overrides, "method": "mocov2"}, data)
        b = moco.cfg.batch_size
        batches = epoch_batches(int(data.train_images.shape[0]), b, moco.cfg.seed, 0)[: scale.batches]
        pipe = Pipeline(moco.source, moco.augment, b)
        pipe()  # warm-up and a first epoch order
        times = interleaved_times({"pipeline": pipe, "step": Stepper(moco, batches)}, repeats=repeats, warmup=1)
        # the per-epoch batch order (drawn inside a timed call once per epoch), amortised
        t0 = time.perf_counter()
        epoch_batches(int(data.train_images.shape[0]), b, 0, 99)
        order_s = (time.perf_counter() - t0) / max(1, data.train_images.shape[0] // b)
    t_pipe = median(times["pipeline"]) + order_s
    t_step = median(times["step"])
    delivered = b / t_pipe
    consumed_model = b / max(t_step - t_pipe, 1e-9)
    ratio = delivered / consumed_model
    sec.table(f"Data: {desc}; batch {b}; {moco.augment.cfg.out_size} px; blur_p {moco.augment.cfg.blur_p}, "
              f"jitter_p {moco.augment.cfg.jitter_p}; medians of {repeats} interleaved repeats.",
              ["pipeline ms/batch", "pipeline pairs/s (delivered)", "MoCo v2 step ms", "step pairs/s",
               "model-only pairs/s (consumed)", "delivered / consumed", "pipeline share of a step %"],
              [[t_pipe * 1e3, delivered, t_step * 1e3, b / t_step, consumed_model, ratio, t_pipe / t_step * 100]])
    sec.goals.append(Goal("pairs/s delivered / consumed (model-only MoCo v2 step)", ratio, GOAL_RATIO,
                          higher_is_better=True,
                          note=f"pipeline is {t_pipe / t_step * 100:.0f} % of an inline step"))
    sec.data.update(pipeline_s=t_pipe, step_s=t_step, ratio=ratio)
    sec.checks.append(check_pipeline())
    sec.seconds = time.perf_counter() - start
    return sec


def check_pipeline() -> Check:
    """Shapes, dtype and finiteness; same generator seed -> same views; batch order a fixed partition."""
    data = synthetic_data(256, 28)
    aug = TwoViewAugment(AugmentConfig(out_size=28, crop_scale=(0.3, 1.0), jitter_p=0.8, blur_p=0.0,
                                       mean=(0.5,), std=(0.29,)))
    problems = []
    with set_threads(1):
        a = Pipeline(MemorySource(data), aug, 64, seed=3)()
        b = Pipeline(MemorySource(data), aug, 64, seed=3)()
        p = Pipeline(MemorySource(data), aug, 64, seed=4)
        c = p()
    if a[0].shape != (64, 1, 28, 28) or a[0].dtype != torch.float32 or not bool(torch.isfinite(a[0]).all()):
        problems.append(f"view shape/dtype {tuple(a[0].shape)} {a[0].dtype}")
    if not (torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])):
        problems.append("same seed gave different views")
    if torch.equal(a[0], c[0]) or torch.equal(a[0], a[1]):
        problems.append("different draws gave identical views")
    e0 = epoch_batches(250, 64, 3, 0)
    flat = torch.cat(e0)
    if len(e0) != 3 or flat.unique().numel() != flat.numel() or int(flat.max()) >= 250:
        problems.append("epoch_batches is not a partition of a permutation")
    if not all(torch.equal(x, y) for x, y in zip(e0, epoch_batches(250, 64, 3, 0))):
        problems.append("epoch_batches is not deterministic")
    if torch.equal(torch.cat(e0), torch.cat(epoch_batches(250, 64, 3, 1))):
        problems.append("two epochs have the same order")
    return Check("pipeline: (B, 1, 28, 28) float32 views, deterministic in the seed, batch order a partition",
                 not problems, "; ".join(problems))
