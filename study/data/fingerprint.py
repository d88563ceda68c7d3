"""Which files a dataset config reads, and their digest (a run's data provenance).

Torch-free on purpose: the study's driver fingerprints every cell's data when the cell
starts (study.provenance), and importing torch there would cost each `python -m study`
command ~2 CPU-s and ~500 MB (the format modules import torch only where they load).
"""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path
from types import ModuleType

from study.core import datasets as registry
from study.core.errors import UserError


def format_module(name: str) -> tuple[registry.Dataset, ModuleType]:
    """The registry entry of dataset ``name`` and its format module (imported on first use)."""
    entry = registry.DATASETS.get(name)
    if entry is None:
        raise UserError(f"unknown dataset {name!r}; allowed: {', '.join(registry.DATASETS)}", key="dataset")
    return entry, importlib.import_module(entry.module)


# --------------------------------------------------------------------------
# Dataset fingerprint (provenance): which files a config reads, and their digest
# --------------------------------------------------------------------------

# Files hashed per process, keyed by (path, size, mtime): a study's cells share one dataset.
_DIGEST_CACHE: dict[tuple[str, int, int], str] = {}

def dataset_files(name: str, root: str | None = None, unlabeled: bool = False) -> list[Path]:
    """The files ``load_dataset(name, root, unlabeled=...)`` reads, without reading them.

    Each format module's ``files``: Fashion-MNIST: the four IDX files found as the
    loader finds them (no download is tried: an absent dataset gives []); CIFAR-10:
    the six batch pickles; STL-10: the four binaries (+ ``unlabeled_X.bin``);
    imagefolder: every image under train/ and val/ (or test/), sorted.
    """
    _, fmt = format_module(name)
    return fmt.files(root, unlabeled=unlabeled)


def _file_sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _DIGEST_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        _DIGEST_CACHE[key] = h.hexdigest()
    return _DIGEST_CACHE[key]


def files_digest(files: list[Path], contents: bool = True, base: Path | None = None) -> str:
    """SHA-256 over each file's name and content (``contents=False``: name and size only).

    Names are relative to ``base`` (default: just the file name), so the same
    files in another folder give the same digest. An ImageNet-size folder is
    fingerprinted by names and sizes: hashing 150 GB before every study would
    cost more than the study's first epoch.
    """
    h = hashlib.sha256()
    for path in files:
        rel = str(path.relative_to(base)) if base is not None else path.name
        h.update(rel.encode() + b"\0")
        h.update((_file_sha256(path) if contents else str(path.stat().st_size)).encode() + b"\n")
    return h.hexdigest()


def dataset_fingerprint(name: str, root: str | None = None, train_subset: int | None = None,
                        test_subset: int | None = None, image_size: int | None = None,
                        unlabeled: bool = False) -> dict:
    """What a run's data is, as plain values: ``name``, ``source`` (folder read), ``files``
    (their count), ``digest`` (sha256 hex of the files plus the subset rule), ``rule`` (the
    subset and resize applied) and ``content_hashed``.

    The rule is part of the digest: a 1k subset of the same files is other data.
    Returns ``digest`` "" when no file is found (the run then fails in the loader,
    with the loader's message).
    """
    files = dataset_files(name, root, unlabeled)
    tree = registry.DATASETS[name].fingerprint == "tree"
    contents = not tree
    # the same fixed subsets load_dataset draws for every run (seed 0, see the trainer)
    rule = (f"train_subset={train_subset or 'all'} test_subset={test_subset or 'all'} stratified seed=0; "
            f"image_size={image_size or 'native'}" + ("; +unlabeled" if unlabeled else ""))
    if not files:
        return {"name": name, "source": str(root or ""), "files": 0, "digest": "", "rule": rule,
                "content_hashed": contents}
    base = Path(root).expanduser() if tree and root is not None else None
    h = hashlib.sha256(files_digest(files, contents, base).encode())
    h.update(rule.encode())
    source = str(base) if base is not None else str(files[0].parent)
    return {"name": name, "source": source, "files": len(files), "digest": h.hexdigest(), "rule": rule,
            "content_hashed": contents}
