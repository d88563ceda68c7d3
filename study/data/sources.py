"""Where the trainer's images come from: memory, or an ImageFolder streamed from disk.

Both sources give the trainer the same three things:
- ``train_labels`` / ``test_labels`` and the sizes,
- ``eval_batches(split, indices)``: uint8 images for feature extraction
  (kNN monitor, bank initialisation, offline re-clustering, linear probe),
- ``train_batches(batches, epoch)``: for each batch of training indices, the
  uint8 images for the two views.

The memory source (Fashion-MNIST, CIFAR-10, STL-10, small folders) returns
the stored images and leaves the crop to the batched augmentation. The folder
source (ImageNet-size roots, ``stream: true``) decodes and crops each view in
DataLoader workers (geometry per sample) and leaves the photometric ops,
batched on the device, to the trainer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch
from torch import Tensor

from study.data.datasets import FolderTwoViewDataset, ImageData
from study.data.formats.imagefolder import decode_resized, scan_image_folder, split_dirs


class MemorySource:
    """Images held in memory as uint8 tensors."""

    streaming = False

    def __init__(self, data: ImageData):
        self.data = data
        self.train_labels = data.train_labels
        self.test_labels = data.test_labels
        self.num_classes = data.num_classes
        self.mean, self.std = tuple(data.mean), tuple(data.std)
        self.channels = int(data.train_images.shape[1])
        self.native_size = int(data.train_images.shape[-1])

    @property
    def num_train(self) -> int:
        return int(self.train_labels.shape[0])

    @property
    def num_test(self) -> int:
        return int(self.test_labels.shape[0])

    def _images(self, split: str) -> Tensor:
        return self.data.train_images if split == "train" else self.data.test_images

    def eval_batches(self, split: str, indices: Tensor | None, batch_size: int) -> Iterator[Tensor]:
        images = self._images(split)
        n = images.shape[0] if indices is None else indices.shape[0]
        for i in range(0, n, batch_size):
            yield images[i:i + batch_size] if indices is None else images[indices[i:i + batch_size]]

    def train_batches(self, batches: list[Tensor], epoch: int) -> Iterator[Tensor]:
        """The raw images of each batch, (n, C, H, W) uint8: both views are cut from them."""
        for idx in batches:
            yield self.data.train_images[idx]


class _FolderEval(torch.utils.data.Dataset):
    """Decode, resize the shorter side, centre crop: (3, S, S) uint8, no randomness."""

    def __init__(self, paths: list[Path], size: int):
        self.paths, self.size = paths, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Tensor:
        return torch.from_numpy(decode_resized(self.paths[i], self.size))


class FolderSource:
    """An ImageFolder root (train/ and val/ or test/) streamed from disk."""

    streaming = True

    def __init__(self, root: str, image_size: int, crop_scale: tuple[float, float], seed: int, workers: int):
        train_dir, test_dir = split_dirs(root)
        self.train_set = FolderTwoViewDataset(root, "train", out_size=image_size, crop_scale=crop_scale, seed=seed)
        self.test_paths, self.test_labels, _ = scan_image_folder(test_dir, self.train_set.classes)
        self.train_labels = self.train_set.labels
        self.num_classes = len(self.train_set.classes)
        # ImageNet statistics: computing them would mean reading the whole root first
        self.mean, self.std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
        self.channels, self.native_size = 3, image_size
        self.image_size = image_size
        self.workers = workers

    @property
    def num_train(self) -> int:
        return len(self.train_set)

    @property
    def num_test(self) -> int:
        return len(self.test_paths)

    def _loader(self, dataset, **kw):
        return torch.utils.data.DataLoader(dataset, num_workers=self.workers, pin_memory=torch.cuda.is_available(),
                                           persistent_workers=False, **kw)

    def eval_batches(self, split: str, indices: Tensor | None, batch_size: int) -> Iterator[Tensor]:
        paths = self.train_set.paths if split == "train" else self.test_paths
        if indices is not None:
            paths = [paths[i] for i in indices.tolist()]
        yield from self._loader(_FolderEval(paths, self.image_size), batch_size=batch_size, shuffle=False)

    def train_batches(self, batches: list[Tensor], epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        """The two cropped views of each batch, each (n, 3, S, S) uint8, from the workers."""
        self.train_set.set_epoch(epoch)
        loader = self._loader(self.train_set, batch_sampler=[b.tolist() for b in batches])
        for (v1, v2), _idx, _labels in loader:
            yield v1, v2
