"""Output files replaced whole: a reader (or a run stopped half-way) sees the old file or the new one."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path


@contextlib.contextmanager
def replacing(path: Path):
    """Yield a temporary path beside ``path`` to write; when the block ends without an error it
    replaces ``path`` in one step (``os.replace``), else it is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
