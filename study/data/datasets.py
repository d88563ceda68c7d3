"""Datasets by name, subsets and deterministic batch order, the per-sample datasets, the digest.

Two ways to feed the trainer:

- In memory (the fast path): ``load_dataset`` returns an :class:`ImageData`
  holding uint8 tensors (N, C, H, W) of a whole split, optionally resized once
  at load (``image_size``). The trainer indexes batches from
  :func:`epoch_batches` and augments them batched on its device with
  :class:`study.augment.TwoViewAugment`. Used for Fashion-MNIST, CIFAR-10,
  STL-10 and small ImageFolder roots.
- Streaming (big ImageFolder roots such as ImageNet): :class:`FolderTwoViewDataset`
  decodes each image with PIL in DataLoader workers and does the geometric
  part (RandomResizedCrop to a fixed size) per sample, returning uint8 views;
  the photometric part (jitter, grayscale, blur, flip) stays batched on the
  device (TwoViewAugment with ``crop_scale=(1.0, 1.0)``, which skips the
  crop when the views are already ``out_size``).

Where the data comes from: each dataset is a format module under
study/data/formats/ (fashion_mnist, cifar10, stl10, imagefolder; their docstrings
say where they look), named once in study/core/datasets.py. ``load_dataset`` and
``dataset_files`` dispatch through that registry. A missing or unreadable dataset
raises :class:`study.core.errors.DataError` naming the path and how to get it.

All randomness (subsets, batch order, per-sample crops of the streaming
source) comes from generators seeded by explicit integers, never from the
global RNG, so a resumed run sees exactly the same data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from study.core import datasets as registry
from study.data.fingerprint import dataset_files, dataset_fingerprint, files_digest, format_module
from study.data.augment import TwoViewAugment, sample_crop_boxes

# the shared helpers and two formats' names, re-exported: the data layer's public names (see __all__)
from study.data.common import (
    ImageData,
    channel_stats,
    mix_seed,
    resize_images,
    stratified_subset,
)
from study.data.formats.fashion_mnist import FASHION_MNIST_DIRS, read_idx
from study.data.formats.imagefolder import (
    IMAGE_EXTENSIONS,
    MAX_IN_MEMORY_BYTES,
    open_rgb,
    scan_image_folder,
)
from study.core.errors import DataError, UserError

__all__ = [
    "DATASETS",
    "FASHION_MNIST_DIRS",
    "IMAGE_EXTENSIONS",
    "MAX_IN_MEMORY_BYTES",
    "FolderTwoViewDataset",
    "ImageData",
    "TensorTwoViewDataset",
    "channel_stats",
    "dataset_files",
    "dataset_fingerprint",
    "epoch_batches",
    "files_digest",
    "load_dataset",
    "mix_seed",
    "read_idx",
    "resize_images",
    "scan_image_folder",
    "stratified_subset",
]

DATASETS = tuple(registry.DATASETS)  # ("fashion_mnist", "cifar10", "stl10", "imagefolder")


# --------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------


def load_dataset(
    name: str,
    root: str | None = None,
    train_subset: int | None = None,
    test_subset: int | None = None,
    image_size: int | None = None,
    seed: int = 0,
    unlabeled: bool = False,
) -> ImageData:
    """Load a dataset into memory as uint8 tensors.

    name: one of ``DATASETS`` (study/core/datasets.py). root: where the data lives (see the module
    docstring for defaults). train_subset / test_subset: a class-stratified
    subset of that many images drawn with ``seed`` (None = the whole split).
    image_size: resize the stored images once to this side (bilinear,
    antialiased), after subsetting. unlabeled: STL-10 only, add the 100k
    unlabelled images (label -1) to the train split; the kNN monitor and
    linear probe must then ignore label -1.

    mean/std are computed from the final train images.
    """
    entry, fmt = format_module(name)
    for key, value in (("train_subset", train_subset), ("test_subset", test_subset), ("image_size", image_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise UserError(f"must be a positive integer or null, got {value!r}", key=key)
    if unlabeled and not entry.unlabeled_split:
        having = ", ".join(n for n, e in registry.DATASETS.items() if e.unlabeled_split)
        raise UserError(f"only applies to {having}, not {name}", key="unlabeled")

    data = fmt.load(root, image_size=image_size, unlabeled=unlabeled)

    if train_subset is not None:
        idx = stratified_subset(data.train_labels, train_subset, seed, key="train_subset")
        data.train_images, data.train_labels = data.train_images[idx], data.train_labels[idx]
    if test_subset is not None:
        # A different stream than the train subset's, still a function of seed.
        idx = stratified_subset(data.test_labels, test_subset, mix_seed(seed, 1), key="test_subset")
        data.test_images, data.test_labels = data.test_images[idx], data.test_labels[idx]
    if image_size is not None:
        data.train_images = resize_images(data.train_images, image_size)
        data.test_images = resize_images(data.test_images, image_size)
    data.mean, data.std = channel_stats(data.train_images)
    return data


# --------------------------------------------------------------------------
# Batch order
# --------------------------------------------------------------------------


def epoch_batches(
    num_samples: int,
    batch_size: int,
    seed: int,
    epoch: int,
    drop_last: bool = True,
    rank: int = 0,
    world_size: int = 1,
    replacement: bool = False,
) -> list[torch.Tensor]:
    """This rank's batches of one epoch: a deterministic function of (seed, epoch).

    A permutation of ``range(num_samples)`` from a generator seeded by
    ``mix_seed(seed, epoch)`` (or, with ``replacement``, ``num_samples``
    indices drawn uniformly WITH replacement, as the reference's ImageNet
    sampler does: about 63 % distinct images per epoch) is cut into global
    batches of ``batch_size``;
    rank r gets the contiguous slice ``[r*b, (r+1)*b)`` of each global batch,
    b = batch_size // world_size, so the ranks' slices concatenate to the
    global batch. With ``drop_last=False`` the last, short global batch is
    split into world_size near-equal parts (later ranks may get fewer).

    Returns a list of (batch_size // world_size,) int64 tensors.
    """
    if batch_size < 1:
        raise UserError(f"must be a positive integer, got {batch_size}", key="batch_size")
    if world_size < 1 or not 0 <= rank < world_size:
        raise UserError(f"rank {rank} is not in [0, world_size={world_size})", key="world_size")
    if batch_size % world_size:
        raise UserError(
            f"batch_size {batch_size} must be divisible by the number of processes {world_size}",
            key="batch_size",
        )
    if drop_last and num_samples < batch_size:
        # Zero steps per epoch would train nothing without saying so.
        raise UserError(
            f"batch_size {batch_size} exceeds the {num_samples} training images (no full batch)",
            key="batch_size",
        )
    g = torch.Generator().manual_seed(mix_seed(seed, epoch))
    if replacement:
        perm = torch.randint(num_samples, (num_samples,), generator=g)  # (num_samples,)
    else:
        perm = torch.randperm(num_samples, generator=g)  # (num_samples,)
    full = num_samples // batch_size
    per_rank = batch_size // world_size
    grid = perm[: full * batch_size].view(full, batch_size)  # (B, batch_size)
    mine = grid[:, rank * per_rank : (rank + 1) * per_rank]  # (B, per_rank)
    batches = [row.clone() for row in mine]
    rest = perm[full * batch_size :]
    if not drop_last and rest.numel():
        part = torch.tensor_split(rest, world_size)[rank]
        if part.numel():
            batches.append(part.clone())
    return batches



# --------------------------------------------------------------------------
# Per-sample datasets (DataLoader API)
# --------------------------------------------------------------------------


def _epoch_and_index(item: int | tuple[int, int], default_epoch: int) -> tuple[int, int]:
    """Accept ``i`` (uses the dataset's current epoch) or ``(epoch, i)``.

    ``(epoch, i)`` lets a sampler carry the epoch to persistent DataLoader
    workers, whose dataset copies never see a later ``set_epoch``.
    """
    if isinstance(item, tuple):
        return int(item[0]), int(item[1])
    return default_epoch, int(item)


class FolderTwoViewDataset(torch.utils.data.Dataset):
    """Streaming two-view source for big ImageFolder roots (ImageNet layout).

    ``ds[i] -> ((view1, view2), i, label)``: each view (3, out_size, out_size)
    uint8. Per sample, in the DataLoader worker: PIL decode, then a
    RandomResizedCrop (scale, ratio as torchvision) of each view resized to
    out_size in one antialiased PIL resampling. That is all the geometry
    except the flip; the photometric ops and the flip run batched on the
    device: ``TwoViewAugment(replace(cfg, crop_scale=(1.0, 1.0)))`` applied to
    each view batch (``one_view``), which skips the crop at out_size.

    The crops of sample i in epoch e come from a generator seeded by
    ``mix_seed(seed, e, i)``: independent of worker count and order, so a
    resumed run crops identically. Call ``set_epoch(e)`` each epoch (or index
    with ``(e, i)`` when workers are persistent).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        out_size: int = 224,
        crop_scale: tuple[float, float] = (0.2, 1.0),
        crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        seed: int = 0,
    ):
        base = Path(root).expanduser()
        split_dir = base / split
        if not split_dir.is_dir():
            raise DataError(
                f"no {split}/ folder in {base}: expected {base}/{split}/<class>/<image> (the ImageNet layout)"
            )
        classes = None
        if split != "train" and (base / "train").is_dir():
            # Labels must mean the same class in every split.
            classes = sorted(d.name for d in (base / "train").iterdir() if d.is_dir())
        self.paths, self.labels, self.classes = scan_image_folder(split_dir, classes)
        self.out_size = int(out_size)
        self.crop_scale = (float(crop_scale[0]), float(crop_scale[1]))
        self.crop_ratio = (float(crop_ratio[0]), float(crop_ratio[1]))
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[tuple[torch.Tensor, torch.Tensor], int, int]:
        from PIL import Image

        epoch, i = _epoch_and_index(item, self.epoch)
        img = open_rgb(self.paths[i])
        w, h = img.size
        g = torch.Generator().manual_seed(mix_seed(self.seed, epoch, i))
        boxes = sample_crop_boxes(2, h, w, self.crop_scale, self.crop_ratio, g)  # (2, 4) (cy, cx, h, w)
        views = []
        for cy, cx, fh, fw in boxes.tolist():
            box = ((cx - fw / 2) * w, (cy - fh / 2) * h, (cx + fw / 2) * w, (cy + fh / 2) * h)
            crop = img.resize((self.out_size, self.out_size), Image.Resampling.BILINEAR, box=box)
            views.append(torch.from_numpy(np.ascontiguousarray(np.array(crop, dtype=np.uint8).transpose(2, 0, 1))))
        return (views[0], views[1]), i, int(self.labels[i])


class TensorTwoViewDataset(torch.utils.data.Dataset):
    """Per-sample two views of in-memory images, for API completeness.

    ``ds[i] -> ((view1, view2), i, label)``: views (C, out, out) float32,
    normalised, from ``augment`` on the single image with a generator seeded
    by ``mix_seed(seed, epoch, i)``. The training fast path does not use
    this: it indexes whole batches from :func:`epoch_batches` and augments
    them in one call.
    """

    def __init__(
        self,
        data: ImageData,
        augment: TwoViewAugment | Callable[..., tuple[torch.Tensor, torch.Tensor]],
        seed: int = 0,
    ):
        self.images = data.train_images
        self.labels = data.train_labels
        self.augment = augment
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[tuple[torch.Tensor, torch.Tensor], int, int]:
        epoch, i = _epoch_and_index(item, self.epoch)
        g = torch.Generator().manual_seed(mix_seed(self.seed, epoch, i))
        v1, v2 = self.augment(self.images[i : i + 1], g)  # each (1, C, out, out)
        return (v1[0], v2[0]), i, int(self.labels[i])
