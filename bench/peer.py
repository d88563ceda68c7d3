"""Benchmark 8: our MoCo v2 step against a MoCo v2 loop written the way the lightly library documents it.

Side by side in one process, on the same data, backbone, batch and one thread:

- ours: the trainer's MoCo v2 step at the ``cpu`` preset (``method: mocov2``),
  as ``Trainer.train_epoch`` runs it: the batch's uint8 images from the memory
  source, the batched two-view augmentation, the step (query and key
  encoders, loss against the queue, SGD, momentum update, queue update);
- peer: the loop of lightly's MoCo example (``examples/pytorch/moco.py`` of
  lightly 1.6): a ``MoCo`` module of the backbone plus lightly's
  ``MoCoProjectionHead``, momentum copies updated with ``update_momentum``,
  ``NTXentLoss(memory_bank_size=(queue, 128))``, ``MoCoV2Transform`` applied
  per image (PIL) through a ``DataLoader`` (``shuffle=True, drop_last=True``,
  ``num_workers=0``: one thread), SGD with the same settings as ours.

The backbone is our ``ConvNet`` ([16, 32, 64], one input channel, 28 px) in
both, initialised from the same seed; the peer's transform gets the preset's
augmentation settings (crop scale 0.3-1, jitter p 0.8, no blur) and the
data's mean/std. Each timed call is one full training step including its data;
the peer's model-only step (the same fixed batch every time, no loading or
augmentation) is timed too, to say where a difference comes from. Calls are
interleaved (the order alternates each round); times are medians.

lightly is a benchmark-only dependency (the ``bench`` extra, installed by
``make bench``); without it this section says so and times ours only.
"""

from __future__ import annotations

import copy
import time
from typing import Optional

import torch
from torch import nn

from bench.common import Goal, Section, interleaved_times, median, set_threads
from bench.states import Stepper, build_trainer, fashion_or_synthetic
from study.data.datasets import epoch_batches
from study.method.model import ConvNet

GOAL_RATIO = 1.0  # peer step time / our step time: ours at least as fast


def lightly_version() -> Optional[str]:
    try:
        import lightly
    except ImportError:
        return None
    return getattr(lightly, "__version__", "?")


class _PeerDataset(torch.utils.data.Dataset):
    """(N, 1, H, W) uint8 images as PIL 'L' images through ``transform``, like torchvision's FashionMNIST."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int):
        from PIL import Image

        img = Image.fromarray(self.images[i, 0].numpy(), mode="L")
        return self.transform(img), int(self.labels[i])


class PeerMoCo(nn.Module):
    """The MoCo module of lightly's example: backbone + MoCoProjectionHead, and their momentum copies."""

    def __init__(self, backbone: nn.Module, width: int, feat_dim: int = 128):
        from lightly.models.modules import MoCoProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        super().__init__()
        self.backbone = backbone
        self.projection_head = MoCoProjectionHead(width, width, feat_dim)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_head(self.backbone(x).flatten(start_dim=1))

    def forward_momentum(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_head_momentum(self.backbone_momentum(x).flatten(start_dim=1)).detach()


class PeerLoop:
    """lightly's documented MoCo v2 training loop, one step per call (data included, or a fixed batch)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, *, widths: list[int], batch_size: int,
                 queue_size: int, temperature: float, lr: float, momentum: float, weight_decay: float,
                 key_momentum: float, crop_min: float, jitter_p: float, mean: float, std: float, seed: int = 0):
        from lightly.loss import NTXentLoss
        from lightly.transforms.moco_transform import MoCoV2Transform

        torch.manual_seed(seed)
        self.model = PeerMoCo(ConvNet(images.shape[1], widths), widths[-1])
        transform = MoCoV2Transform(input_size=int(images.shape[-1]), min_scale=crop_min, cj_prob=jitter_p,
                                    gaussian_blur=0.0, normalize={"mean": [mean], "std": [std]})
        self.loader = torch.utils.data.DataLoader(_PeerDataset(images, labels, transform), batch_size=batch_size,
                                                  shuffle=True, drop_last=True, num_workers=0,
                                                  generator=torch.Generator().manual_seed(seed))
        self.criterion = NTXentLoss(temperature=temperature, memory_bank_size=(queue_size, 128))
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=lr, momentum=momentum,
                                         weight_decay=weight_decay)
        self.key_momentum = key_momentum
        self.it = iter(self.loader)
        self.fixed = None
        self.last_loss = float("nan")

    def next_batch(self):
        batch = next(self.it, None)
        if batch is None:
            self.it = iter(self.loader)
            batch = next(self.it)
        return batch

    def step(self, x_query: torch.Tensor, x_key: torch.Tensor) -> None:
        from lightly.models.utils import update_momentum

        m = self.model
        update_momentum(m.backbone, m.backbone_momentum, m=self.key_momentum)
        update_momentum(m.projection_head, m.projection_head_momentum, m=self.key_momentum)
        query = m(x_query)
        key = m.forward_momentum(x_key)
        loss = self.criterion(query, key)
        self.last_loss = float(loss.detach())
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()

    def __call__(self) -> None:
        """One step of the documented loop: the next DataLoader batch, then the step."""
        (x_query, x_key), _labels = self.next_batch()
        self.step(x_query, x_key)

    def model_only(self) -> None:
        """The same step on one fixed, already augmented batch (no data cost)."""
        if self.fixed is None:
            self.fixed = self.next_batch()[0]
        self.step(*self.fixed)


def compare(images_data, desc: str, batch_size: Optional[int], repeats: int, warmup: int,
            overrides: Optional[dict] = None) -> dict:
    """Time ours and the peer's loop interleaved; {ours_s, peer_s, peer_model_s, batch, ...} (medians)."""
    ov = {"method": "mocov2", **(overrides or {})}
    if batch_size is not None:
        ov["batch_size"] = batch_size
    with set_threads(1):
        ours = build_trainer("cpu", ov, images_data)
        cfg = ours.cfg
        n = int(images_data.train_images.shape[0])
        batches = epoch_batches(n, cfg.batch_size, cfg.seed, 0)
        fns = {"ours": Stepper(ours, batches, pin_step=None)}
        version = lightly_version()
        if version is not None:
            size = cfg.image_size or images_data.image_size
            if images_data.image_size != size:
                raise ValueError(f"the peer needs images stored at the preset's size {size}")
            peer = PeerLoop(images_data.train_images, images_data.train_labels, widths=list(cfg.widths),
                            batch_size=cfg.batch_size, queue_size=cfg.queue_size, temperature=cfg.temperature,
                            lr=cfg.lr, momentum=cfg.sgd_momentum, weight_decay=cfg.weight_decay,
                            key_momentum=cfg.key_momentum, crop_min=cfg.crop_scale_min, jitter_p=cfg.jitter_p,
                            mean=images_data.mean[0], std=images_data.std[0], seed=cfg.seed)
            fns["peer"] = peer
            fns["peer model-only"] = peer.model_only
        times = interleaved_times(fns, repeats=repeats, warmup=warmup)
    out = {"batch": cfg.batch_size, "data": desc, "lightly": version, "repeats": repeats, "warmup": warmup,
           "ours_s": median(times["ours"]), "widths": list(cfg.widths), "image_size": cfg.image_size,
           "queue": cfg.queue_size}
    if version is not None:
        out["peer_s"] = median(times["peer"])
        out["peer_model_s"] = median(times["peer model-only"])
        out["ratio"] = out["peer_s"] / out["ours_s"]
        out["ratio_model_only"] = out["peer_model_s"] / out["ours_s"]
        out["peer_loss"] = peer.last_loss
    return out


def run(quick: bool = False, shared: Optional[dict] = None) -> Section:
    sec = Section("peer", "8. Our MoCo v2 step against lightly's documented MoCo v2 loop (one thread)")
    start = time.perf_counter()
    if quick:
        data, desc = fashion_or_synthetic(16, 512)
        res = compare(data, desc, 32, repeats=2, warmup=1,
                      overrides={"widths": [8, 16, 32], "image_size": 16, "queue_size": 256})
    else:
        data, desc = fashion_or_synthetic(28)
        res = compare(data, desc, None, repeats=25, warmup=2)
    _fill(sec, res)
    sec.seconds = time.perf_counter() - start
    return sec


def _fill(sec: Section, res: dict) -> None:
    b = res["batch"]
    caption = (f"Data: {res['data']}; convnet {res['widths']} at {res['image_size']} px, batch {b}, queue "
               f"{res['queue']}, one thread; medians of {res['repeats']} interleaved steps (warm-up "
               f"{res['warmup']}); each step includes its data unless marked model-only.")
    if res["lightly"] is None:
        sec.table(caption, ["loop", "ms per step", "pairs/s"], [["ours (trainer, mocov2)", res["ours_s"] * 1e3,
                                                                b / res["ours_s"]]])
        sec.notes.append("peer not run: lightly is not installed (it is the `bench` extra: "
                         "`pip install -e '.[bench]'`, which `make bench` does)")
        sec.goals.append(Goal("lightly MoCo v2 loop time / ours (same data, backbone, batch, one thread)", None,
                              GOAL_RATIO, higher_is_better=True))
        return
    rows = [["ours (trainer, mocov2)", res["ours_s"] * 1e3, b / res["ours_s"], 1.0],
            [f"lightly {res['lightly']} loop (DataLoader + MoCoV2Transform)", res["peer_s"] * 1e3,
             b / res["peer_s"], res["ratio"]],
            ["lightly loop, model-only (fixed batch)", res["peer_model_s"] * 1e3, b / res["peer_model_s"],
             res["ratio_model_only"]]]
    sec.table(caption, ["loop", "ms per step", "pairs/s", "time / ours"], rows)
    sec.goals.append(Goal("lightly MoCo v2 loop time / ours (same data, backbone, batch, one thread)", res["ratio"],
                          GOAL_RATIO, higher_is_better=True,
                          note=f"{b / res['ours_s']:.0f} vs {b / res['peer_s']:.0f} pairs/s"))
    sec.notes.append(f"without its data (a fixed batch) the peer's step takes {res['peer_model_s'] * 1e3:.1f} ms: "
                     f"{res['ratio_model_only']:.2f}x ours with our data included")
    sec.data.update(res)
