"""Fashion-MNIST: IDX files, gzipped or not, read directly with NumPy.

Looked for in ``root`` when given (or its ``FashionMNIST/raw``), else in
``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``),
``<repo>/data/fashion-mnist`` and ``<repo>/data/FashionMNIST/raw``; if none has them,
torchvision downloads them into ``<repo>/data/`` (needs a network).
"""

from __future__ import annotations

import gzip
import math
import socket
import struct
import zlib
from pathlib import Path

import numpy as np

from study.data.common import ImageData, to_tensor
from study.core.errors import DataError
from study.core.paths import DATA_DIR

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


def load(root: str | None, image_size: int | None = None, unlabeled: bool = False) -> ImageData:
    """Both splits as stored: (N, 1, 28, 28) uint8 images, labels 0-9."""
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
        train_images=to_tensor(arrays["train_images"]).unsqueeze(1),  # (N, 1, 28, 28)
        train_labels=to_tensor(arrays["train_labels"]).long(),
        test_images=to_tensor(arrays["test_images"]).unsqueeze(1),
        test_labels=to_tensor(arrays["test_labels"]).long(),
        num_classes=len(FASHION_MNIST_CLASSES),
        mean=(0.0,),
        std=(1.0,),  # replaced by load_dataset from the final train images
        classes=list(FASHION_MNIST_CLASSES),
    )


def files(root: str | None, unlabeled: bool = False) -> list[Path]:
    """The four IDX files found as :func:`load` finds them (no download is tried: absent gives [])."""
    dirs = ([Path(root).expanduser(), Path(root).expanduser() / "FashionMNIST" / "raw"] if root is not None
            else list(FASHION_MNIST_DIRS))
    found = next((f for d in dirs if (f := _find_fashion_files(d))), None)
    return [found[k] for k in _FASHION_FILES] if found else []
