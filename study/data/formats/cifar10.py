"""CIFAR-10: ``<root>/cifar-10-batches-py``, the python pickles of
https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz (root defaults to ``<repo>/data``)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from study.data.common import ImageData, find_subdir, present_files, require_subdir, to_tensor
from study.core.errors import DataError

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
_SUBDIR, _MARKER = "cifar-10-batches-py", "data_batch_1"
_BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 batch pickle -> (N, 3, 32, 32) uint8 images, (N,) labels."""
    try:
        with open(path, "rb") as fh:
            # The official format is a pickle; only load files you downloaded yourself.
            batch = pickle.load(fh, encoding="bytes")
    except FileNotFoundError:
        raise DataError(f"missing CIFAR-10 file {path}; get {CIFAR10_URL} and extract it again") from None
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise DataError(f"{path}: unreadable CIFAR-10 batch ({exc}); get {CIFAR10_URL} again") from None
    try:
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (KeyError, TypeError) as exc:
        raise DataError(f"{path}: not a CIFAR-10 batch (missing {exc})") from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != labels.shape[0]:
        raise DataError(f"{path}: expected (N, 3072) data and (N,) labels, got {data.shape} and {labels.shape}")
    # Rows are 1024 red, 1024 green, 1024 blue values, each plane row-major.
    return data.reshape(-1, 3, 32, 32), labels


def load(root: str | None, image_size: int | None = None, unlabeled: bool = False) -> ImageData:
    """Both splits as stored: (N, 3, 32, 32) uint8 images, labels 0-9."""
    folder = require_subdir(root, _SUBDIR, _MARKER, "CIFAR-10", "{data_batch_1..5, test_batch, batches.meta}",
                            CIFAR10_URL, " (tar xzf cifar-10-python.tar.gz -C {where})")
    parts = [_read_cifar_batch(folder / f"data_batch_{i}") for i in range(1, 6)]
    test_x, test_y = _read_cifar_batch(folder / "test_batch")
    classes = None
    meta = folder / "batches.meta"
    if meta.is_file():
        try:
            with open(meta, "rb") as fh:
                classes = [c.decode() for c in pickle.load(fh, encoding="bytes")[b"label_names"]]
        except (OSError, pickle.UnpicklingError, EOFError, KeyError, AttributeError):
            classes = None  # names are cosmetic; the labels are what matter
    return ImageData(
        name="cifar10",
        train_images=to_tensor(np.concatenate([p[0] for p in parts])),  # (50000, 3, 32, 32)
        train_labels=to_tensor(np.concatenate([p[1] for p in parts])).long(),
        test_images=to_tensor(test_x),
        test_labels=to_tensor(test_y).long(),
        num_classes=10,
        mean=(0.0,) * 3,
        std=(1.0,) * 3,
        classes=classes,
    )


def files(root: str | None, unlabeled: bool = False) -> list[Path]:
    """The six batch pickles that exist."""
    return present_files(find_subdir(root, _SUBDIR, _MARKER), _BATCHES)
