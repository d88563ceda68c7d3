"""What every dataset format shares: the in-memory dataset, subsets and seeds, tensor helpers.

torch is imported inside the functions that use it, here and in the format modules: the study's driver
imports the formats to fingerprint a cell's files (study.data.fingerprint) and stays torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from study.core.errors import DataError, UserError
from study.core.paths import DATA_DIR

if TYPE_CHECKING:  # annotations only: torch is imported where it is used
    import torch

# Images per chunk when resizing or computing statistics (bounds the float copies).
CHUNK = 4096


@dataclass
class ImageData:
    """A labelled image dataset held in memory.

    train_images: (N, C, H, W) uint8.   train_labels: (N,) int64 (-1 = unlabelled).
    test_images:  (M, C, H, W) uint8.   test_labels:  (M,) int64.
    mean, std: per channel, in [0, 1] units, of the train images as stored.
    classes: class names indexed by label, or None when unknown.
    """

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: list[str] | None = None

    @property
    def channels(self) -> int:
        return int(self.train_images.shape[1])

    @property
    def image_size(self) -> int:
        """Side of the stored (square) images."""
        return int(self.train_images.shape[-1])

    def summary(self) -> str:
        """One line for logs: name, sizes, channels, image size."""
        return (
            f"{self.name}: {len(self.train_labels)} train / {len(self.test_labels)} test images, "
            f"{self.channels}x{self.image_size}x{self.image_size}, {self.num_classes} classes"
        )



# --------------------------------------------------------------------------
# Subsets and seeds
# --------------------------------------------------------------------------


def mix_seed(*values: int) -> int:
    """Hash integers (e.g. seed, epoch, index) into one 63-bit seed.

    Unlike ``seed * K + epoch``, distinct tuples cannot collide by arithmetic.
    """
    state = np.random.SeedSequence([int(v) & 0xFFFFFFFFFFFFFFFF for v in values]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def stratified_subset(labels: torch.Tensor, size: int, seed: int, key: str = "subset") -> torch.Tensor:
    """Indices of a class-stratified random subset, in increasing order.

    labels: (N,) int. Each class (label -1 counts as one) gets a share of
    ``size`` proportional to its frequency: the floors first, then the
    leftover images to the classes with the largest remainders (ties to the
    smaller label). Within a class, members are drawn uniformly with a
    generator seeded by ``seed``. Returns (size,) int64.
    """
    import torch
    n = labels.numel()
    if not 1 <= size <= n:
        raise UserError(f"must lie in [1, {n}] (the split's size), got {size}", key=key)
    _, counts = torch.unique(labels, return_counts=True)  # (K,) per class, in label order
    exact = counts.double() * size / n  # (K,) ideal share
    quota = exact.floor().long()
    leftover = size - int(quota.sum())
    # Stable sort on -remainder keeps ties in label order.
    order = torch.sort(-(exact - quota.double()), stable=True).indices
    quota[order[:leftover]] += 1

    g = torch.Generator().manual_seed(mix_seed(seed))
    # Group indices by class with one stable sort (classes come out in label order).
    by_class = torch.split(torch.argsort(labels, stable=True), counts.tolist())
    picked = []
    for members, q in zip(by_class, quota.tolist()):  # members: (n_c,) indices of one class
        perm = torch.randperm(members.numel(), generator=g)[:q]
        picked.append(members[perm])
    return torch.sort(torch.cat(picked)).values



# --------------------------------------------------------------------------
# Tensor helpers
# --------------------------------------------------------------------------


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, C, H, W) uint8 -> (N, C, size, size) uint8.

    Bilinear with antialiasing; the shorter side goes to ``size`` and the
    centre is kept (a no-op for images already ``size x size``). Done in
    chunks so the float copy stays small.
    """
    import torch
    import torch.nn.functional as F
    n, c, h, w = images.shape
    if (h, w) == (size, size):
        return images
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    top, left = (nh - size) // 2, (nw - size) // 2
    out = torch.empty(n, c, size, size, dtype=torch.uint8)
    for s in range(0, n, CHUNK):
        x = images[s : s + CHUNK].to(torch.float32)
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
        out[s : s + CHUNK] = x[:, :, top : top + size, left : left + size].round_().clamp_(0, 255).to(torch.uint8)
    return out


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] units of (N, C, H, W) uint8 images.

    Sums in float64 by chunks, so 60k images cost one pass and little memory.
    """
    import torch
    c = images.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    for s in range(0, images.shape[0], CHUNK):
        x = images[s : s + CHUNK].to(torch.float64)
        total += x.sum(dim=(0, 2, 3))
        total_sq += (x * x).sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    var = (total_sq / count - mean * mean).clamp(min=0.0)
    std = var.sqrt().clamp(min=1e-3)  # a constant channel must not divide by 0
    return tuple(float(m) / 255.0 for m in mean), tuple(float(v) / 255.0 for v in std)




def to_tensor(array: np.ndarray) -> torch.Tensor:
    """A NumPy array as a tensor that owns writable memory (np.frombuffer arrays are read-only)."""
    import torch
    return torch.from_numpy(np.ascontiguousarray(array).copy())


# --------------------------------------------------------------------------
# Finding files
# --------------------------------------------------------------------------


def find_subdir(root: str | None, subdir: str, marker: str) -> Path | None:
    """``<root>/<subdir>``, or root itself when it already holds ``marker`` (root defaults to ``<repo>/data``)."""
    base = Path(root).expanduser() if root is not None else DATA_DIR
    for candidate in (base / subdir, base):
        if (candidate / marker).is_file():
            return candidate
    return None


def require_subdir(root: str | None, subdir: str, marker: str, name: str, expected: str, url: str,
                   extract: str = "") -> Path:
    """:func:`find_subdir`, or a DataError saying where ``name`` was looked for, the files ``expected``
    under ``<root>/<subdir>``, and where to download it (``extract``: how, e.g. a tar command)."""
    folder = find_subdir(root, subdir, marker)
    if folder is None:
        where = Path(root).expanduser() if root is not None else DATA_DIR
        raise DataError(f"{name} not found in {where}: expected {where / subdir}/{expected}; download {url} "
                        f"and extract it there{extract.format(where=where)}")
    return folder


def present_files(folder: Path | None, names: list[str]) -> list[Path]:
    """``folder/name`` for each of ``names`` that is a file, in that order ([] without a folder)."""
    return [folder / n for n in names if (folder / n).is_file()] if folder is not None else []
