"""Benchmark 6: the training step on a GPU (runs only where CUDA is available).

ResNet-50 at 224 px, batch 256, bf16 autocast and channels_last (the
trainer's ``amp="bf16"``, ``channels_last="on"``), synthetic uint8 images
(the step's cost does not depend on their content): image pairs per second
of MoCo v2 and of InterCLR (semi-hard, online) with the paper's inter-image
sizes (bank 1.28M rows, k = 10,000, 16,384 negatives, pool 128,000; exact
search and 65,536 candidates), the bank synthetic as in the CPU step
benchmark. Interleaved medians after warm-up, stopped early by a time limit.

As a script for a lent GPU machine (one command, bounded time)::

    python -m bench.gpu --time-limit 480 --out "$OUT/RESULTS-gpu.md"

(``make bench-gpu`` runs the same, writing ``bench/RESULTS-gpu.md``.)

Then, in the time left, a `gpu`-preset cell end to end (Fashion-MNIST,
ResNet-18, the preset's sizes) cut to ``CELL_EPOCHS`` epochs of
``CELL_STEPS`` steps, timed by phase like :mod:`bench.cell`.

Without CUDA, :func:`run` (a section of ``make bench``) records "not run: no
GPU", and the script says so on stderr and exits 1 without writing ``--out``;
``--tiny`` runs both parts on whatever device there is at tiny sizes (the
tests do, on the CPU).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from typing import Optional

import torch

from bench import cell as cell_bench
from bench.common import Section, interleaved_times, machine_info, markdown_table, median
from bench.states import NO_PROTOCOLS, Stepper, build_trainer, inject_state, synthetic_data, synthetic_state
from study.core.config import PRESETS
from study.data.datasets import epoch_batches


@dataclass(frozen=True)
class GpuScale:
    backbone: str = "resnet50"
    image_size: int = 224
    batch_size: int = 256
    images: int = 512
    bank: int = 1_280_000
    k: int = 10_000
    neg_num: int = 16_384
    pool: int = 128_000
    candidates: int = 65_536
    queue_size: int = 65_536
    warmup: int = 3
    repeats: int = 10


FULL = GpuScale()
# exercises the same code on a CPU in the tests (no autocast / channels_last there)
TINY = GpuScale(backbone="convnet", image_size=16, batch_size=8, images=64, bank=4096, k=32, neg_num=64,
                pool=512, candidates=256, queue_size=64, warmup=1, repeats=1)


def step_throughput(device: str, scale: GpuScale = FULL, time_limit: float = 300.0) -> dict:
    """Pairs/s of MoCo v2 and InterCLR cells on ``device``; cells not started within ``time_limit`` are skipped."""
    start = time.perf_counter()
    data = synthetic_data(scale.images, scale.image_size, channels=3)
    base = {"backbone": scale.backbone, "image_size": scale.image_size, "batch_size": scale.batch_size,
            "queue_size": scale.queue_size, "device": device, "amp": "bf16", "channels_last": "on",
            "threads": None, "min_cluster": 1, "num_clusters": 8, "neg_num": 64, "pool": 64}
    moco = build_trainer("gpu", {**base, "method": "mocov2"}, data)
    batches = epoch_batches(scale.images, scale.batch_size, 0, 0)
    moco_step = Stepper(moco, batches)
    state = synthetic_state("gpu", scale.bank, scale.k, seed=1)
    out = {"device": str(moco.device), "name": torch.cuda.get_device_name(moco.device)
           if moco.device.type == "cuda" else "cpu", "cells": {}, "skipped": []}
    for search in ("exact", "candidates"):
        if time.perf_counter() - start > time_limit:
            out["skipped"].append(search)
            continue
        inter = build_trainer("gpu", {**base, "method": "interclr", "sampling": "semi-hard", "labels": "online",
                                      "neg_search": search, "candidates": scale.candidates}, data)
        inject_state(inter, state, pool=scale.pool, neg_num=scale.neg_num)
        times = interleaved_times({"moco": moco_step, "inter": Stepper(inter, batches)}, repeats=scale.repeats,
                                  warmup=scale.warmup)
        m, i = median(times["moco"]), median(times["inter"])
        # a pair is two images through the encoders (query and key)
        out["cells"][search] = {"moco_pairs_s": scale.batch_size / m, "inter_pairs_s": scale.batch_size / i,
                                "moco_images_s": 2 * scale.batch_size / m, "inter_images_s": 2 * scale.batch_size / i,
                                "ratio": i / m}
        del inter
    out["seconds"] = time.perf_counter() - start
    return out


CELL_EPOCHS, CELL_STEPS = 2, 60
# the gpu preset's cell at tiny sizes (a CPU in the tests)
TINY_CELL = {"backbone": "convnet", "widths": [8, 16, 32], "image_size": 16, "train_subset": 512,
             "test_subset": 128, "batch_size": 32, "queue_size": 128, "num_clusters": 8, "min_cluster": 4,
             "neg_num": 32, "pool": 128, "knn_train_subset": 256, "linear_epochs": 2, **NO_PROTOCOLS}


def gpu_cell(device: str, tiny: bool = False) -> dict:
    """A `gpu`-preset cell end to end, cut to CELL_EPOCHS x CELL_STEPS (tiny: a few steps at tiny sizes)."""
    ov = {"device": device, "epochs": CELL_EPOCHS, "max_steps_per_epoch": 3 if tiny else CELL_STEPS,
          **(TINY_CELL if tiny else {})}
    return cell_bench.time_cell("gpu", ov, out_dir=None, threads=None)


GPU_COMMAND = "`make bench-gpu` (python -m bench.gpu --time-limit 480 --out bench/RESULTS-gpu.md)"


def run(quick: bool = False, shared: Optional[dict] = None, time_limit: float = 300.0) -> Section:
    sec = Section("gpu", "6. GPU step: ResNet-50, 224 px, batch 256, bf16 autocast + channels_last")
    start = time.perf_counter()
    if not torch.cuda.is_available():
        sec.notes.append("not run: no GPU (torch.cuda.is_available() is False on this machine). "
                         f"On a GPU machine: {GPU_COMMAND}.")
        sec.seconds = time.perf_counter() - start
        return sec
    res = step_throughput("cuda", TINY if quick else FULL, time_limit=time_limit)
    _fill(sec, res, TINY if quick else FULL)
    _cell_part(sec, "cuda", quick, time_limit - (time.perf_counter() - start))
    sec.seconds = time.perf_counter() - start
    return sec


def _cell_part(sec: Section, device: str, tiny: bool, time_left: float) -> None:
    if time_left < 60 and not tiny:
        sec.notes.append(f"gpu-preset cell skipped: {time_left:.0f} s left of the time limit")
        return
    res = gpu_cell(device, tiny)
    cfg = res["config"]
    sec.table(f"A `gpu`-preset cell end to end on {device}{' (tiny sizes)' if tiny else ''}: {cfg.backbone} at "
              f"{cfg.image_size} px, batch {cfg.batch_size}, {res['epochs']} epochs x "
              f"{res['steps'] // max(1, res['epochs'])} steps (cut from the preset's {PRESETS['gpu']['epochs']} "
              f"epochs); seconds.",
              ["phase", "wall s", "% of wall", "CPU s"], cell_bench.breakdown_rows(res))
    if res["wall"]["train"] > 0:
        sec.notes.append(f"gpu cell: {res['steps'] * cfg.batch_size / res['wall']['train']:.0f} pairs/s in training "
                         f"(data and augmentation included); final kNN {res['final'].get('knn_top1', 0):.4f}")
    sec.data["cell"] = {k: v for k, v in res.items() if k != "config"}


def _fill(sec: Section, res: dict, scale: GpuScale) -> None:
    rows = [[res["name"], search, c["moco_pairs_s"], c["inter_pairs_s"], c["moco_images_s"], c["inter_images_s"],
             c["ratio"]]
            for search, c in res["cells"].items()]
    sec.table(f"{scale.backbone} at {scale.image_size} px, batch {scale.batch_size}; InterCLR semi-hard online, bank "
              f"{scale.bank:,} (k={scale.k:,}), {scale.neg_num:,} negatives, pool {scale.pool:,}, candidates "
              f"{scale.candidates:,}; image pairs per second (medians of {scale.repeats}).",
              ["device", "search", "MoCo v2 pairs/s", "InterCLR pairs/s", "MoCo v2 images/s", "InterCLR images/s",
               "InterCLR / MoCo v2 time"], rows)
    for s in res["skipped"]:
        sec.notes.append(f"{s} search skipped: time limit reached")
    sec.data.update(res)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--time-limit", type=float, default=480.0,
                        help="seconds; cells not started by then are skipped")
    parser.add_argument("--out", default=None, help="write the section (markdown) here")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (also runs on a CPU)")
    args = parser.parse_args(argv)
    # checked before the benchmark: a bad --out or limit found after it would waste the GPU's time
    if not args.time_limit > 0:
        parser.error(f"--time-limit must be a number of seconds > 0 (got {args.time_limit:g})")
    if args.out:
        out = os.path.abspath(args.out)
        if os.path.isdir(out) or not os.path.isdir(os.path.dirname(out)):
            parser.error(f"--out {args.out}: " + ("is a directory" if os.path.isdir(out) else
                                                  f"no directory {os.path.dirname(out)}") + " (give a file path)")
    sec = Section("gpu", "6. GPU step")
    if args.tiny:
        start = time.perf_counter()
        device = "cuda" if torch.cuda.is_available() else "cpu"
        res = step_throughput(device, TINY, args.time_limit)
        _fill(sec, res, TINY)
        _cell_part(sec, device, True, args.time_limit - (time.perf_counter() - start))
        sec.seconds = time.perf_counter() - start
    elif not torch.cuda.is_available():
        print(f"bench.gpu: no GPU here (torch.cuda.is_available() is False); nothing written. "
              f"Run it on a GPU machine ({GPU_COMMAND}), or with --tiny to try it on the CPU.", file=sys.stderr)
        return 1
    else:
        sec = run(time_limit=args.time_limit)
    text = "\n".join([markdown_table(["", ""], [[k, v] for k, v in machine_info().items()]), "", sec.markdown()])
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
