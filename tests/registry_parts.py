"""A newcomer's parts, for tests/test_registries.py: one sampler, one margin, one dataset format
(this module itself: ``load`` and ``files``) and one method builder, each added with one registry line."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from study.data.common import ImageData
from study.core.errors import DataError
from study.train.methods import build_interclr

TOY_TRAIN, TOY_TEST, TOY_CLASSES, TOY_SIDE = 64, 32, 4, 8
TOY_FILE = "toy.bin"


def neg_first(sim: Tensor | None, col_labels: Tensor, q_labels: Tensor, neg_num: int, pool: int,
              generator: torch.Generator) -> Tensor:
    """The ``neg_num`` lowest-index columns of another label (deterministic; ``sim`` unused)."""
    s = col_labels.shape[0]
    same = col_labels.unsqueeze(0) == q_labels.unsqueeze(1)  # (N, S)
    rank = same.long() * s + torch.arange(s, device=col_labels.device)  # (N, S) other labels first, by index
    return rank.topk(neg_num, dim=1, largest=False).indices  # (N, K), ascending


def margin_double(cos: Tensor, margin: float) -> Tensor:
    """``cos - 2 m``: a cosine margin twice as strong."""
    return cos - 2.0 * margin


def load(root: str | None, image_size: int | None = None, unlabeled: bool = False) -> ImageData:
    """64 train / 32 test 1x8x8 images in 4 classes, each class a brightness level (no file is read)."""
    if root is not None and not Path(root).is_dir():
        raise DataError(f"no toy folder {root}")
    g = torch.Generator().manual_seed(0)

    def split(n: int) -> tuple[Tensor, Tensor]:
        labels = torch.arange(n) % TOY_CLASSES  # (n,)
        noise = torch.randint(0, 30, (n, 1, TOY_SIDE, TOY_SIDE), generator=g)  # (n, 1, 8, 8)
        return (labels.view(n, 1, 1, 1) * 60 + noise).to(torch.uint8), labels

    train_x, train_y = split(TOY_TRAIN)
    test_x, test_y = split(TOY_TEST)
    return ImageData("toy", train_x, train_y, test_x, test_y, TOY_CLASSES, (0.0,), (1.0,))


def files(root: str | None, unlabeled: bool = False) -> list[Path]:
    """``<root>/toy.bin`` when it exists."""
    path = Path(root or ".") / TOY_FILE
    return [path] if path.is_file() else []


def build_recorded(cfg, encoder, **runtime):
    """InterCLR's unit, marked so a test can tell which builder made it."""
    unit = build_interclr(cfg, encoder, **runtime)
    unit.built_by = "build_recorded"
    return unit
