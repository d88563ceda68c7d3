"""Data, trainers and inter-image states shared by the step and label benchmarks.

Two kinds of memory-bank state (features, pseudo-labels, centroids):

- from the data: the trainer's own initialisation, ``Trainer.init_inter_state()``
  (key features of the whole training set from the untrained key encoder,
  k-means, small clusters fixed), exactly what a run starts from;
- synthetic, for a bank larger than the dataset (ImageNet size, 1.28M rows):
  ``k`` random unit centres, each row a unit vector at cosine about 0.7 to
  its centre, labels = the generating centre, centroids = member means. The
  trainer is built on the small dataset and its :class:`MemoryBank` and
  :class:`PseudoLabels` are replaced by ones of the large size
  (:func:`inject_state`); batch indices still come from the dataset, so only
  its rows of the bank receive new keys, which changes no cost.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from study.core.config import TrainConfig, build_config
from study.data.datasets import ImageData, load_dataset
from study.core.errors import DataError
from study.train.trainer import EpochAccumulator, Trainer


@dataclass
class BankState:
    """A memory bank with its pseudo-labels: feats (B, d), labels (B,), centroids (k, d)."""

    name: str
    feats: Tensor
    labels: Tensor
    centroids: Tensor
    source: str
    build_seconds: float = 0.0

    @property
    def size(self) -> int:
        return int(self.feats.shape[0])

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def dim(self) -> int:
        return int(self.feats.shape[1])


def synthetic_data(n: int, size: int, seed: int = 0, channels: int = 1) -> ImageData:
    """Random uint8 images (n, C, size, size) with 10 random classes (for quick runs and no-data machines)."""
    g = torch.Generator().manual_seed(seed)
    train = torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8)
    test = torch.randint(0, 256, (max(16, n // 8), channels, size, size), generator=g, dtype=torch.uint8)
    return ImageData(
        name="synthetic", train_images=train, train_labels=torch.randint(10, (n,), generator=g),
        test_images=test, test_labels=torch.randint(10, (test.shape[0],), generator=g), num_classes=10,
        mean=(0.5,) * channels, std=(0.29,) * channels)


_DATA_CACHE: dict[Any, tuple[ImageData, str]] = {}


def fashion_or_synthetic(image_size: int, synthetic_n: Optional[int] = None) -> tuple[ImageData, str]:
    """The whole Fashion-MNIST train set at ``image_size`` (60k images), cached.

    ``synthetic_n`` (quick runs) or a machine without the dataset gives random
    images instead; the second value says which.
    """
    key = (image_size, synthetic_n)
    if key not in _DATA_CACHE:
        if synthetic_n is not None:
            _DATA_CACHE[key] = (synthetic_data(synthetic_n, image_size), f"synthetic {synthetic_n} images")
        else:
            try:
                data = load_dataset("fashion_mnist", image_size=image_size, seed=0)
                _DATA_CACHE[key] = (data, f"Fashion-MNIST train set ({data.train_images.shape[0]:,} images)")
            except DataError as err:
                data = synthetic_data(60000, image_size)
                _DATA_CACHE[key] = (data, f"synthetic 60,000 images (Fashion-MNIST missing: {err})")
    return _DATA_CACHE[key]


def synthetic_state(name: str, size: int, k: int, dim: int = 128, seed: int = 0, cos_to_centre: float = 0.7,
                    chunk: int = 262144) -> BankState:
    """A clustered, L2-normalised bank of ``size`` rows around ``k`` centres (see the module docstring)."""
    start = time.perf_counter()
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(k, dim, generator=g), dim=1)  # (k, d)
    labels = torch.randint(k, (size,), generator=g)  # (B,)
    # x = c + s z with z ~ N(0, I/d) (|z| ~ 1): cos(x, c) ~ 1 / sqrt(1 + s^2)
    s = (1.0 / cos_to_centre**2 - 1.0) ** 0.5
    feats = torch.empty(size, dim)
    for lo in range(0, size, chunk):
        hi = min(size, lo + chunk)
        z = torch.randn(hi - lo, dim, generator=g) / dim**0.5
        feats[lo:hi] = F.normalize(centres[labels[lo:hi]] + s * z, dim=1)
    sums = torch.zeros(k, dim).index_add_(0, labels, feats)
    counts = torch.bincount(labels, minlength=k).clamp(min=1).unsqueeze(1)
    return BankState(name, feats, labels, sums / counts, f"synthetic: {k:,} clusters, cos to centre ~{cos_to_centre}",
                     time.perf_counter() - start)


def quiet(_msg: str) -> None:
    pass


def bench_config(preset: str, overrides: dict, num_train: int) -> TrainConfig:
    """The config a benchmark trainer gets: ``preset`` + ``overrides``, one thread, no progress bar, none
    of the final protocols (a benchmark trainer times steps; ``overrides`` may name them again).

    ``train_subset`` is the number of images handed over, so the load-time
    size checks (``check_data_invariants``) see the real bank. Raises
    UserError where the config would reject the settings.
    """
    return build_config(preset, {"threads": 1, "progress": False, "train_subset": num_train, **NO_PROTOCOLS,
                                 **overrides})


# the final protocols (study/train/protocols.py) off: a bench of the steps, or data too small for them
NO_PROTOCOLS = {"lowshot_shots": [], "semisup_fractions": [], "transfer_dataset": None}


def build_trainer(preset: str, overrides: dict, data: ImageData) -> Trainer:
    """A Trainer on ``data`` with ``preset`` + ``overrides`` (one thread, no progress bar, no output dir)."""
    return Trainer(bench_config(preset, overrides, int(data.train_images.shape[0])), None, data=data, log=quiet)


def state_from_trainer(trainer: Trainer, name: str) -> BankState:
    """Run the trainer's own initialisation (feature extraction + k-means) and keep its state."""
    start = time.perf_counter()
    trainer.init_inter_state()
    seconds = time.perf_counter() - start
    return BankState(name, trainer.bank.feats.clone(), trainer.plabels.labels.clone(),
                     trainer.plabels.centroids.clone(),
                     f"Trainer.init_inter_state(): k-means (k={trainer.cfg.num_clusters}) on the untrained "
                     "key encoder's features", seconds)


def inject_state(trainer: Trainer, state: BankState, **cfg_updates: Any) -> None:
    """Give ``trainer``'s method a copy of ``state`` as its bank and pseudo-labels (:meth:`InterCLR.install_bank`),
    with ``cfg_updates`` (``pool``, ``neg_num``) as its inter settings.

    The method's step reads its own bank and settings, so that is where the state goes; the trainer's
    config gets the same values WITHOUT validation (``model_copy``, for what it prints): the dataset-size
    checks of the config do not apply to a swapped-in bank. :class:`Stepper` checks, at every timed step,
    that the method holds what the row names (:meth:`Stepper.expect`).
    """
    if trainer.method.inter is None:
        raise ValueError("inject_state needs an InterCLR trainer (method interclr)")
    trainer.method.install_bank(state.feats, state.labels, state.centroids, **cfg_updates)
    inter = trainer.method.inter
    EXPECT[trainer] = {"bank": state.size, "num_clusters": state.k, "pool": cfg_updates.get("pool", inter.pool),
                       "neg_num": cfg_updates.get("neg_num", inter.neg_num)}
    updates = {"num_clusters": state.k, **cfg_updates}
    if any(getattr(trainer.cfg, key) != value for key, value in updates.items()):
        trainer.cfg = trainer.cfg.model_copy(update=updates)


# trainer -> what its timed steps must run with (set by inject_state, checked by Stepper at every step)
EXPECT: "weakref.WeakKeyDictionary[Trainer, dict]" = weakref.WeakKeyDictionary()


def held(trainer: Trainer) -> dict:
    """What the method's step runs with: its bank's rows, clusters, pool and negatives per query."""
    m = trainer.method
    return {"bank": m.bank.size, "num_clusters": m.plabels.num_clusters, "pool": m.inter.pool,
            "neg_num": m.inter.neg_num}


@dataclass
class Stepper:
    """Calls ``trainer.train_step`` on fixed batches in turn.

    The step counter is pinned (``pin_step``) so that the every-``centroid_every``
    label maintenance never runs inside a timed step: it is measured on its
    own by the label benchmark and amortised there.
    """

    trainer: Trainer
    batches: list[Tensor]
    pin_step: Optional[int] = 0
    i: int = 0
    acc: EpochAccumulator = field(default_factory=EpochAccumulator)

    def __call__(self) -> None:
        expect = EXPECT.get(self.trainer)
        if expect is not None and held(self.trainer) != expect:  # the row would time another state
            raise AssertionError(f"the timed step runs with {held(self.trainer)}, not the row's {expect}")
        batch = self.batches[self.i % len(self.batches)]
        self.i += 1
        if self.pin_step is not None:
            self.trainer.step = self.pin_step
        # the body of Trainer.train_epoch's loop: the source's images of the batch, then the step
        images = next(iter(self.trainer.source.train_batches([batch], self.trainer.epoch)))
        self.trainer.train_step(batch, images, self.acc)
        if self.trainer.device.type == "cuda":
            torch.cuda.synchronize(self.trainer.device)
        if len(self.acc.neg_sims) > 64:
            self.acc.neg_sims.clear()
