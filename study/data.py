"""Datasets, subsets and deterministic batch order.

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

Where the data comes from (a missing or unreadable dataset raises
:class:`study.errors.DataError` naming the path and how to get it):

- ``fashion_mnist``: IDX files, gzipped or not, read directly with NumPy.
  Looked for in ``root`` when given, else in ``/usr/share/datasets/fashion-mnist``
  (Debian package ``dataset-fashion-mnist``), ``<repo>/data/fashion-mnist`` and
  ``<repo>/data/FashionMNIST/raw``; if none has them, torchvision downloads
  them into ``<repo>/data/`` (needs a network).
- ``cifar10``: ``<root>/cifar-10-batches-py`` (the python pickles of
  https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz), root defaults to
  ``<repo>/data``.
- ``stl10``: ``<root>/stl10_binary`` (train_X.bin, train_y.bin, test_X.bin,
  test_y.bin; unlabeled_X.bin only with ``unlabeled=True``), root defaults to
  ``<repo>/data``.
- ``imagefolder``: ``<root>/train/<class>/*.jpg`` and ``<root>/val/<class>/...``
  (or ``test/``), the ImageNet layout; loaded into memory at ``image_size``
  (required), refused above ``MAX_IN_MEMORY_BYTES`` in favour of streaming.

All randomness (subsets, batch order, per-sample crops of the streaming
source) comes from generators seeded by explicit integers, never from the
global RNG, so a resumed run sees exactly the same data.
"""

from __future__ import annotations

import gzip
import math
import pickle
import socket
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from study.augment import TwoViewAugment, sample_crop_boxes
from study.errors import DataError, UserError

__all__ = [
    "DATASETS",
    "FASHION_MNIST_DIRS",
    "IMAGE_EXTENSIONS",
    "MAX_IN_MEMORY_BYTES",
    "FolderTwoViewDataset",
    "ImageData",
    "TensorTwoViewDataset",
    "channel_stats",
    "epoch_batches",
    "load_dataset",
    "mix_seed",
    "read_idx",
    "resize_images",
    "scan_image_folder",
    "stratified_subset",
]

DATASETS = ("fashion_mnist", "cifar10", "stl10", "imagefolder")

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = REPO_ROOT / "data"
# Where Fashion-MNIST is looked for when no root is given, in order.
FASHION_MNIST_DIRS = (
    Path("/usr/share/datasets/fashion-mnist"),
    DATA_DIR / "fashion-mnist",
    DATA_DIR / "FashionMNIST" / "raw",  # where torchvision's download puts them
)
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
_FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_FASHION_HINT = (
    "install it with `sudo apt-get install dataset-fashion-mnist` (files under "
    "/usr/share/datasets/fashion-mnist), or put train-images-idx3-ubyte.gz, "
    "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
    f"t10k-labels-idx1-ubyte.gz in {DATA_DIR / 'fashion-mnist'} "
    "(from https://github.com/zalandoresearch/fashion-mnist)"
)
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
STL10_URL = "https://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
# Above this an ImageFolder split is not loaded into memory (use FolderTwoViewDataset).
MAX_IN_MEMORY_BYTES = 4 * 2**30
# Images per chunk when resizing or computing statistics (bounds the float copies).
_CHUNK = 4096


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

    name: one of ``DATASETS``. root: where the data lives (see the module
    docstring for defaults). train_subset / test_subset: a class-stratified
    subset of that many images drawn with ``seed`` (None = the whole split).
    image_size: resize the stored images once to this side (bilinear,
    antialiased), after subsetting. unlabeled: STL-10 only, add the 100k
    unlabelled images (label -1) to the train split; the kNN monitor and
    linear probe must then ignore label -1.

    mean/std are computed from the final train images.
    """
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}", key="dataset")
    for key, value in (("train_subset", train_subset), ("test_subset", test_subset), ("image_size", image_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise UserError(f"must be a positive integer or null, got {value!r}", key=key)
    if unlabeled and name != "stl10":
        raise UserError(f"only applies to stl10, not {name}", key="unlabeled")

    if name == "fashion_mnist":
        data = _load_fashion_mnist(root)
    elif name == "cifar10":
        data = _load_cifar10(root)
    elif name == "stl10":
        data = _load_stl10(root, unlabeled, image_size)
    else:
        data = _load_image_folder(root, image_size)

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
# Subsets, seeds, batch order
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
# Tensor helpers
# --------------------------------------------------------------------------


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, C, H, W) uint8 -> (N, C, size, size) uint8.

    Bilinear with antialiasing; the shorter side goes to ``size`` and the
    centre is kept (a no-op for images already ``size x size``). Done in
    chunks so the float copy stays small.
    """
    n, c, h, w = images.shape
    if (h, w) == (size, size):
        return images
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    top, left = (nh - size) // 2, (nw - size) // 2
    out = torch.empty(n, c, size, size, dtype=torch.uint8)
    for s in range(0, n, _CHUNK):
        x = images[s : s + _CHUNK].to(torch.float32)
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
        out[s : s + _CHUNK] = x[:, :, top : top + size, left : left + size].round_().clamp_(0, 255).to(torch.uint8)
    return out


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] units of (N, C, H, W) uint8 images.

    Sums in float64 by chunks, so 60k images cost one pass and little memory.
    """
    c = images.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    for s in range(0, images.shape[0], _CHUNK):
        x = images[s : s + _CHUNK].to(torch.float64)
        total += x.sum(dim=(0, 2, 3))
        total_sq += (x * x).sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    var = (total_sq / count - mean * mean).clamp(min=0.0)
    std = var.sqrt().clamp(min=1e-3)  # a constant channel must not divide by 0
    return tuple(float(m) / 255.0 for m in mean), tuple(float(v) / 255.0 for v in std)


def _to_tensor(array: np.ndarray) -> torch.Tensor:
    # np.frombuffer arrays are read-only; copy so torch owns writable memory.
    return torch.from_numpy(np.ascontiguousarray(array).copy())


# --------------------------------------------------------------------------
# Fashion-MNIST (IDX)
# --------------------------------------------------------------------------

# IDX type codes (third magic byte) -> big-endian NumPy dtypes.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_file_bytes(path: Path) -> bytes:
    """Whole file, gunzipped when it starts with the gzip magic; DataError on failure."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as exc:
            raise DataError(f"{path}: corrupt or truncated gzip file ({exc}); download it again") from None
    return raw


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or raw.

    Layout: two zero bytes, a type code, the number of dimensions d, then d
    big-endian uint32 sizes, then the data. Checks the magic and that the
    data has exactly the announced size. Returns an array of those sizes.
    """
    path = Path(path)
    raw = _read_file_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes); download it again")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = math.prod(dims) * dtype.itemsize
    got = len(raw) - header
    if got != expected:
        what = "truncated" if got < expected else "longer than its header says"
        raise DataError(
            f"{path}: {what}: dimensions {list(dims)} need {expected} data bytes, found {got}; download it again"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def _find_fashion_files(directory: Path) -> dict[str, Path] | None:
    """The four IDX files in a folder (gzipped or not), or None if any is missing."""
    found = {}
    for key, base in _FASHION_FILES.items():
        for candidate in (directory / f"{base}.gz", directory / base):
            if candidate.is_file():
                found[key] = candidate
                break
        else:
            return None
    return found


def _download_fashion_mnist() -> dict[str, Path] | None:
    """Try torchvision's download into <repo>/data; None when it fails (e.g. offline)."""
    try:
        from torchvision.datasets import FashionMNIST
    except ImportError:
        return None
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(30)  # an unreachable mirror must not hang setup
    try:
        for train in (True, False):
            FashionMNIST(str(DATA_DIR), train=train, download=True)
    except Exception:  # noqa: BLE001 - any failure means "not available", reported below
        return None
    finally:
        socket.setdefaulttimeout(previous)
    return _find_fashion_files(DATA_DIR / "FashionMNIST" / "raw")


def _load_fashion_mnist(root: str | None) -> ImageData:
    if root is not None:
        root_path = Path(root).expanduser()
        files = _find_fashion_files(root_path) or _find_fashion_files(root_path / "FashionMNIST" / "raw")
        if files is None:
            raise DataError(f"no Fashion-MNIST IDX files in {root_path}; {_FASHION_HINT}")
    else:
        files = next((f for d in FASHION_MNIST_DIRS if (f := _find_fashion_files(d))), None)
        if files is None:
            files = _download_fashion_mnist()
        if files is None:
            searched = ", ".join(str(d) for d in FASHION_MNIST_DIRS)
            raise DataError(f"Fashion-MNIST not found (looked in {searched}; download failed); {_FASHION_HINT}")

    arrays = {key: read_idx(path) for key, path in files.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise DataError(
                f"{files[f'{split}_images']} and {files[f'{split}_labels']}: expected (N, H, W) images and "
                f"(N,) labels, got {images.shape} and {labels.shape}"
            )
        if labels.size and int(labels.max()) >= len(FASHION_MNIST_CLASSES):
            raise DataError(f"{files[f'{split}_labels']}: label {int(labels.max())} out of range 0-9")
    return ImageData(
        name="fashion_mnist",
        train_images=_to_tensor(arrays["train_images"]).unsqueeze(1),  # (N, 1, 28, 28)
        train_labels=_to_tensor(arrays["train_labels"]).long(),
        test_images=_to_tensor(arrays["test_images"]).unsqueeze(1),
        test_labels=_to_tensor(arrays["test_labels"]).long(),
        num_classes=len(FASHION_MNIST_CLASSES),
        mean=(0.0,),
        std=(1.0,),  # replaced by load_dataset from the final train images
        classes=list(FASHION_MNIST_CLASSES),
    )


# --------------------------------------------------------------------------
# CIFAR-10 (python pickles)
# --------------------------------------------------------------------------


def _find_subdir(root: str | None, subdir: str, marker: str) -> Path | None:
    """``<root>/<subdir>``, or root itself when it already holds ``marker``."""
    base = Path(root).expanduser() if root is not None else DATA_DIR
    for candidate in (base / subdir, base):
        if (candidate / marker).is_file():
            return candidate
    return None


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


def _load_cifar10(root: str | None) -> ImageData:
    folder = _find_subdir(root, "cifar-10-batches-py", "data_batch_1")
    if folder is None:
        where = Path(root).expanduser() if root is not None else DATA_DIR
        raise DataError(
            f"CIFAR-10 not found in {where}: expected {where / 'cifar-10-batches-py'}/"
            "{data_batch_1..5, test_batch, batches.meta}; download "
            f"{CIFAR10_URL} and extract it there (tar xzf cifar-10-python.tar.gz -C {where})"
        )
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
        train_images=_to_tensor(np.concatenate([p[0] for p in parts])),  # (50000, 3, 32, 32)
        train_labels=_to_tensor(np.concatenate([p[1] for p in parts])).long(),
        test_images=_to_tensor(test_x),
        test_labels=_to_tensor(test_y).long(),
        num_classes=10,
        mean=(0.0,) * 3,
        std=(1.0,) * 3,
        classes=classes,
    )


# --------------------------------------------------------------------------
# STL-10 (binary)
# --------------------------------------------------------------------------

_STL_SIDE = 96
_STL_IMAGE_BYTES = 3 * _STL_SIDE * _STL_SIDE


def _stl_images(path: Path, resize_to: int | None = None) -> torch.Tensor:
    """An STL-10 *_X.bin file -> (N, 3, 96, 96) uint8 (or resized, chunk by chunk).

    Each image is stored channel by channel, each channel column-major, so a
    (N, 3, 96, 96) reshape yields [n, c, x, y] and needs an x/y transpose.
    Memory-mapped, so the 2.7 GB unlabelled file is resized without being
    held in memory at 96 px.
    """
    if not path.is_file():
        raise DataError(f"missing STL-10 file {path}; get {STL10_URL} and extract it again")
    size = path.stat().st_size
    if size == 0 or size % _STL_IMAGE_BYTES:
        raise DataError(f"{path}: {size} bytes is not a whole number of 96x96x3 images; download it again")
    raw = np.memmap(path, dtype=np.uint8, mode="r").reshape(-1, 3, _STL_SIDE, _STL_SIDE)
    side = resize_to or _STL_SIDE
    out = torch.empty(raw.shape[0], 3, side, side, dtype=torch.uint8)
    for s in range(0, raw.shape[0], _CHUNK):
        chunk = torch.from_numpy(np.ascontiguousarray(raw[s : s + _CHUNK].transpose(0, 1, 3, 2)))
        out[s : s + _CHUNK] = resize_images(chunk, side) if resize_to else chunk
    return out


def _stl_labels(path: Path, count: int) -> torch.Tensor:
    """An STL-10 *_y.bin file (labels 1..10) -> (N,) int64 in 0..9."""
    if not path.is_file():
        raise DataError(f"missing STL-10 file {path}; get {STL10_URL} and extract it again")
    labels = np.fromfile(path, dtype=np.uint8).astype(np.int64) - 1
    if labels.shape[0] != count:
        raise DataError(f"{path}: {labels.shape[0]} labels for {count} images")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{path}: labels must lie in 1..10")
    return torch.from_numpy(labels)


def _load_stl10(root: str | None, unlabeled: bool, image_size: int | None) -> ImageData:
    folder = _find_subdir(root, "stl10_binary", "train_X.bin")
    if folder is None:
        where = Path(root).expanduser() if root is not None else DATA_DIR
        raise DataError(
            f"STL-10 not found in {where}: expected {where / 'stl10_binary'}/"
            "{train_X.bin, train_y.bin, test_X.bin, test_y.bin, optionally unlabeled_X.bin, "
            f"class_names.txt}}; download {STL10_URL} and extract it there"
        )
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


# --------------------------------------------------------------------------
# ImageFolder (train/ and val/ or test/ of class folders)
# --------------------------------------------------------------------------


def _split_dirs(root: str | None) -> tuple[Path, Path]:
    if root is None:
        raise UserError("the imagefolder dataset needs a root (a folder with train/ and val/)", key="root")
    base = Path(root).expanduser()
    layout = f"expected {base}/train/<class>/<image> and {base}/val/<class>/<image> (or test/), the ImageNet layout"
    if not (base / "train").is_dir():
        raise DataError(f"no train/ folder in {base}: {layout}")
    for name in ("val", "test"):
        if (base / name).is_dir():
            return base / "train", base / name
    raise DataError(f"no val/ or test/ folder in {base}: {layout}")


def scan_image_folder(
    split_dir: str | Path, classes: list[str] | None = None
) -> tuple[list[Path], torch.Tensor, list[str]]:
    """List ``split_dir/<class>/<image>`` files, sorted.

    classes: the class names defining the labels (default: the sorted
    subfolders of split_dir); a subfolder not among them is a DataError.
    Returns (paths, (N,) int64 labels, classes).
    """
    split_dir = Path(split_dir)
    found = sorted(d.name for d in split_dir.iterdir() if d.is_dir())
    if classes is None:
        classes = found
    index = {name: i for i, name in enumerate(classes)}
    unknown = [name for name in found if name not in index]
    if unknown:
        raise DataError(f"{split_dir}: class folders {unknown[:5]} do not exist in the train split")
    paths: list[Path] = []
    labels: list[int] = []
    for name in found:
        files = sorted(
            p for p in (split_dir / name).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
        )
        paths.extend(files)
        labels.extend([index[name]] * len(files))
    if not paths:
        raise DataError(f"{split_dir}: no images ({', '.join(IMAGE_EXTENSIONS)}) in its class folders")
    return paths, torch.tensor(labels, dtype=torch.long), classes


def _open_rgb(path: Path):
    """Decode one image file to an RGB PIL image; DataError naming the file on failure."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"{path}: cannot decode image ({exc})") from None


def _decode_resized(path: Path, size: int) -> np.ndarray:
    """Decode, resize the shorter side to ``size`` (antialiased), centre crop -> (3, size, size) uint8."""
    from PIL import Image

    img = _open_rgb(path)
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    left, top = (nw - size) // 2, (nh - size) // 2
    # box= crops in source coordinates while resizing: one resampling pass.
    box = (left / scale, top / scale, (left + size) / scale, (top + size) / scale)
    img = img.resize((size, size), Image.Resampling.BILINEAR, box=box)
    # np.array copies: np.asarray of a PIL image is read-only, which torch warns about.
    return np.ascontiguousarray(np.array(img, dtype=np.uint8).transpose(2, 0, 1))


def _load_folder_split(paths: list[Path], size: int) -> torch.Tensor:
    """Decode a list of images into (N, 3, size, size) uint8, with threads (PIL releases the GIL)."""
    out = torch.empty(len(paths), 3, size, size, dtype=torch.uint8)

    def work(i: int) -> None:
        out[i] = torch.from_numpy(_decode_resized(paths[i], size))

    with ThreadPoolExecutor(max_workers=min(8, max(1, torch.get_num_threads()))) as pool:
        list(pool.map(work, range(len(paths))))
    return out


def _load_image_folder(root: str | None, image_size: int | None) -> ImageData:
    train_dir, test_dir = _split_dirs(root)
    if image_size is None:
        raise UserError("imagefolder images vary in size: set image_size (e.g. 64)", key="image_size")
    train_paths, train_labels, classes = scan_image_folder(train_dir)
    test_paths, test_labels, _ = scan_image_folder(test_dir, classes)
    need = (len(train_paths) + len(test_paths)) * 3 * image_size * image_size
    if need > MAX_IN_MEMORY_BYTES:
        raise UserError(
            f"{root}: {len(train_paths) + len(test_paths)} images at {image_size} px need "
            f"{need / 2**30:.1f} GiB in memory (limit {MAX_IN_MEMORY_BYTES / 2**30:.0f} GiB); "
            "stream it with FolderTwoViewDataset instead, or lower image_size",
            key="image_size",
        )
    return ImageData(
        name="imagefolder",
        train_images=_load_folder_split(train_paths, image_size),
        train_labels=train_labels,
        test_images=_load_folder_split(test_paths, image_size),
        test_labels=test_labels,
        num_classes=len(classes),
        mean=(0.0,) * 3,
        std=(1.0,) * 3,
        classes=classes,
    )


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
        img = _open_rgb(self.paths[i])
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
