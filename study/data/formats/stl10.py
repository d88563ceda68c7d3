"""STL-10: ``<root>/stl10_binary`` (train_X.bin, train_y.bin, test_X.bin, test_y.bin;
unlabeled_X.bin only with ``unlabeled=True``), root defaults to ``<repo>/data``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from study.data.common import CHUNK, ImageData, find_subdir, present_files, require_subdir, resize_images
from study.core.errors import DataError

if TYPE_CHECKING:  # annotations only: torch is imported where it is used
    import torch

STL10_URL = "https://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz"
_SUBDIR, _MARKER = "stl10_binary", "train_X.bin"
_STL_SIDE = 96
_STL_IMAGE_BYTES = 3 * _STL_SIDE * _STL_SIDE


def _stl_images(path: Path, resize_to: int | None = None) -> torch.Tensor:
    """An STL-10 *_X.bin file -> (N, 3, 96, 96) uint8 (or resized, chunk by chunk).

    Each image is stored channel by channel, each channel column-major, so a
    (N, 3, 96, 96) reshape yields [n, c, x, y] and needs an x/y transpose.
    Memory-mapped, so the 2.7 GB unlabelled file is resized without being
    held in memory at 96 px.
    """
    import torch
    if not path.is_file():
        raise DataError(f"missing STL-10 file {path}; get {STL10_URL} and extract it again")
    size = path.stat().st_size
    if size == 0 or size % _STL_IMAGE_BYTES:
        raise DataError(f"{path}: {size} bytes is not a whole number of 96x96x3 images; download it again")
    raw = np.memmap(path, dtype=np.uint8, mode="r").reshape(-1, 3, _STL_SIDE, _STL_SIDE)
    side = resize_to or _STL_SIDE
    out = torch.empty(raw.shape[0], 3, side, side, dtype=torch.uint8)
    for s in range(0, raw.shape[0], CHUNK):
        chunk = torch.from_numpy(np.ascontiguousarray(raw[s : s + CHUNK].transpose(0, 1, 3, 2)))
        out[s : s + CHUNK] = resize_images(chunk, side) if resize_to else chunk
    return out


def _stl_labels(path: Path, count: int) -> torch.Tensor:
    """An STL-10 *_y.bin file (labels 1..10) -> (N,) int64 in 0..9."""
    import torch
    if not path.is_file():
        raise DataError(f"missing STL-10 file {path}; get {STL10_URL} and extract it again")
    labels = np.fromfile(path, dtype=np.uint8).astype(np.int64) - 1
    if labels.shape[0] != count:
        raise DataError(f"{path}: {labels.shape[0]} labels for {count} images")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{path}: labels must lie in 1..10")
    return torch.from_numpy(labels)


def load(root: str | None, image_size: int | None = None, unlabeled: bool = False) -> ImageData:
    """Both splits as stored, (N, 3, 96, 96) uint8; ``unlabeled`` adds the 100k unlabelled images
    (label -1) to train, resized to ``image_size`` while reading."""
    import torch
    folder = require_subdir(root, _SUBDIR, _MARKER, "STL-10", "{train_X.bin, train_y.bin, test_X.bin, test_y.bin, "
                            "optionally unlabeled_X.bin, class_names.txt}", STL10_URL)
    train_x = _stl_images(folder / "train_X.bin")
    train_y = _stl_labels(folder / "train_y.bin", train_x.shape[0])
    test_x = _stl_images(folder / "test_X.bin")
    test_y = _stl_labels(folder / "test_y.bin", test_x.shape[0])
    if unlabeled:
        # Resized while reading (the whole file at 96 px is 2.7 GB); the
        # labelled part is resized later by load_dataset like any dataset.
        extra = _stl_images(folder / "unlabeled_X.bin", resize_to=image_size)
        if image_size is not None:
            train_x = resize_images(train_x, image_size)
        train_x = torch.cat([train_x, extra])
        train_y = torch.cat([train_y, torch.full((extra.shape[0],), -1, dtype=torch.long)])
    names = folder / "class_names.txt"
    classes = names.read_text().split() if names.is_file() else None
    return ImageData(
        name="stl10",
        train_images=train_x,
        train_labels=train_y,
        test_images=test_x,
        test_labels=test_y,
        num_classes=10,
        mean=(0.0,) * 3,
        std=(1.0,) * 3,
        classes=classes if classes and len(classes) == 10 else None,
    )


def files(root: str | None, unlabeled: bool = False) -> list[Path]:
    """The four binaries (+ ``unlabeled_X.bin``) that exist."""
    names = ["train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin"] + (["unlabeled_X.bin"] if unlabeled else [])
    return present_files(find_subdir(root, _SUBDIR, _MARKER), names)
