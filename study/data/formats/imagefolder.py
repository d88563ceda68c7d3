"""ImageFolder: ``<root>/train/<class>/*.jpg`` and ``<root>/val/<class>/...`` (or ``test/``),
the ImageNet layout; loaded into memory at ``image_size`` (required), refused above
``MAX_IN_MEMORY_BYTES`` in favour of streaming (``stream: true``, study.data.sources)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from study.data.common import ImageData
from study.core.errors import DataError, UserError

if TYPE_CHECKING:  # annotations only: torch is imported where it is used
    import torch

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
# Above this an ImageFolder split is not loaded into memory (use FolderTwoViewDataset).
MAX_IN_MEMORY_BYTES = 4 * 2**30


def split_dirs(root: str | None) -> tuple[Path, Path]:
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
    import torch
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


def open_rgb(path: Path):
    """Decode one image file to an RGB PIL image; DataError naming the file on failure."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"{path}: cannot decode image ({exc})") from None


def decode_resized(path: Path, size: int) -> np.ndarray:
    """Decode, resize the shorter side to ``size`` (antialiased), centre crop -> (3, size, size) uint8."""
    from PIL import Image

    img = open_rgb(path)
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
    import torch
    out = torch.empty(len(paths), 3, size, size, dtype=torch.uint8)

    def work(i: int) -> None:
        out[i] = torch.from_numpy(decode_resized(paths[i], size))

    with ThreadPoolExecutor(max_workers=min(8, max(1, torch.get_num_threads()))) as pool:
        list(pool.map(work, range(len(paths))))
    return out


def load(root: str | None, image_size: int | None = None, unlabeled: bool = False) -> ImageData:
    """Both splits decoded at ``image_size`` (shorter side resized, centre crop), labels by class folder."""
    train_dir, test_dir = split_dirs(root)
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


def files(root: str | None, unlabeled: bool = False) -> list[Path]:
    """Every image under train/ and val/ (or test/), sorted; [] without the layout."""
    try:
        train_dir, test_dir = split_dirs(root)
    except (UserError, DataError):
        return []
    return sorted(p for d in (train_dir, test_dir) for p in d.rglob("*")
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
