"""Atomic checkpoints with a fallback to the previous one.

``save`` writes ``<dir>/checkpoint.pt`` through a temporary file, fsync and
rename, after moving the current one to ``checkpoint.prev.pt``; a crash at
any moment leaves at least one complete file. ``load_latest`` tries the
newest first and falls back to the previous one when the newest is
truncated or unreadable, after removing the temporary files a writer killed
mid-write left behind (``.<name>.tmp<pid>``: one trainer owns a run directory,
so such a file whose writer process is gone is stale).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch

LATEST = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def remove_stale_temp_files(directory: Path) -> list[Path]:
    """Remove the temporary files of interrupted atomic writes in ``directory``; returns them."""
    removed = []
    for tmp in Path(directory).glob(".*.tmp*"):
        pid = tmp.name.rsplit(".tmp", 1)[-1]
        # a writer that still runs (another rank of a distributed run) keeps its file
        if tmp.is_file() and pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def atomic_torch_save(obj: Any, path: Path) -> None:
    path = Path(path)
    tmp = _temp_name(path)
    with open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    tmp = _temp_name(path)
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def save(state: dict, directory: Path) -> Path:
    directory = Path(directory)
    latest, prev = directory / LATEST, directory / PREVIOUS
    if latest.exists():
        os.replace(latest, prev)
    atomic_torch_save(state, latest)
    return latest


def load_latest(directory: Path, map_location="cpu") -> dict | None:
    """The newest readable checkpoint in ``directory``, or None if there is none."""
    directory = Path(directory)
    if directory.is_dir():
        remove_stale_temp_files(directory)
    for name in (LATEST, PREVIOUS):
        path = directory / name
        if not path.exists():
            continue
        try:
            return torch.load(path, map_location=map_location, weights_only=False)
        except Exception as err:  # truncated or corrupt: try the previous one
            print(f"warning: checkpoint {path} is unreadable ({type(err).__name__}: {err}); "
                  "trying the previous one", file=sys.stderr)
    return None
