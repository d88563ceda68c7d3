"""The memory bank of the inter-image branch: one feature per training image.

Paper / reference: the bank holds one 128-d L2-normalised feature per
training image, the key feature of its latest view. Entry ``i`` belongs to
training-set index ``i`` for the whole run: there is no pointer and no
wrap-around (unlike the MoCo queue).

Update rule (reference momentum 1.0 = full replacement):
``new = normalize((1 - momentum) * old + momentum * normalize(feats))``.

Distributed training: the bank is NOT broadcast. The trainer all-gathers the
batch's ``(idx, feats)`` from every rank and every rank applies the same
:meth:`MemoryBank.update`; since the update is deterministic (duplicates
resolved as documented below), all ranks' banks stay identical. The
reference instead broadcasts the whole bank (656 MB at ImageNet scale).

Checkpoints: :meth:`state_dict` holds the features and the settings, so a
resumed run continues from the exact bank.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor



def last_occurrence(idx: Tensor) -> Tensor:
    """Positions of the last occurrence of each distinct value of ``idx``.

    Args:
        idx: ``(M,)`` long.
    Returns:
        ``(U,)`` positions into ``idx``, one per distinct value.
    """
    order = torch.argsort(idx, stable=True)  # (M,) equal values keep their order
    sorted_idx = idx[order]
    is_last = torch.ones_like(sorted_idx, dtype=torch.bool)  # (M,)
    is_last[:-1] = sorted_idx[1:] != sorted_idx[:-1]
    return order[is_last]


class MemoryBank:
    """One L2-normalised feature per training image.

    Attributes:
        feats: ``(size, dim)`` float tensor; zeros until :meth:`fill`.
        momentum: weight of the new feature in :meth:`update` (1.0 = replace).
    """

    def __init__(self, size: int, dim: int, momentum: float = 1.0, device: Optional[torch.device | str] = None):
        if size < 1:
            raise ValueError(f"memory bank: size must be >= 1 (got {size})")
        if dim < 1:
            raise ValueError(f"memory bank: dim must be >= 1 (got {dim})")
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"memory bank: momentum must be in (0, 1] (got {momentum})")
        self.size = int(size)
        self.dim = int(dim)
        self.momentum = float(momentum)
        self.feats = torch.zeros(self.size, self.dim, device=device)  # (B, d)

    @property
    def device(self) -> torch.device:
        return self.feats.device

    def to(self, device: torch.device | str) -> "MemoryBank":
        """Move the bank to ``device`` (in place); returns self."""
        self.feats = self.feats.to(device)
        return self

    def _check_feats(self, feats: Tensor, rows: Optional[int] = None) -> None:
        if feats.dim() != 2 or feats.shape[1] != self.dim or (rows is not None and feats.shape[0] != rows):
            want = f"({rows if rows is not None else 'M'}, {self.dim})"
            raise ValueError(f"memory bank: features must have shape {want}, got {tuple(feats.shape)}")

    @torch.no_grad()
    def fill(self, feats: Tensor) -> None:
        """Set every entry (e.g. from the initial feature extraction).

        Args:
            feats: ``(B, d)``; normalised here, so raw features are fine.
        """
        self._check_feats(feats, self.size)
        self.feats.copy_(F.normalize(feats.to(self.feats), dim=1))

    @torch.no_grad()
    def update(self, idx: Tensor, feats: Tensor) -> None:
        """Write the batch's features into the bank.

        ``new = normalize((1 - momentum) * old + momentum * normalize(feats))``.

        Args:
            idx: ``(M,)`` long training-set indices.
            feats: ``(M, d)`` features (any norm; gradient is ignored).

        Duplicated indices in one call (e.g. the padding a DistributedSampler
        adds, seen after the all-gather): the LAST occurrence wins, and its
        momentum blend uses the bank value from before this call. Resolved
        explicitly because an indexed write with duplicates is not
        deterministic on CUDA, and every rank must end with the same bank.
        """
        self._check_feats(feats)
        if idx.dim() != 1 or idx.shape[0] != feats.shape[0]:
            raise ValueError(f"memory bank: idx must have shape ({feats.shape[0]},), got {tuple(idx.shape)}")
        idx = idx.to(self.feats.device)
        keep = last_occurrence(idx)  # (U,)
        idx = idx[keep]
        new = F.normalize(feats.detach()[keep.to(feats.device)].to(self.feats), dim=1)  # (U, d)
        if self.momentum < 1.0:
            new = F.normalize((1.0 - self.momentum) * self.feats[idx] + self.momentum * new, dim=1)
        self.feats.index_copy_(0, idx, new)

    def state_dict(self) -> dict[str, Any]:
        """Checkpoint state: the features plus the settings they were made with."""
        return {"feats": self.feats, "size": self.size, "dim": self.dim, "momentum": self.momentum}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore features from :meth:`state_dict` (the bank's size and dim must match)."""
        feats = state["feats"]
        if tuple(feats.shape) != (self.size, self.dim):
            raise ValueError(
                f"memory bank: the checkpoint's bank has shape {tuple(feats.shape)}, this run needs "
                f"({self.size}, {self.dim}); was it made on another dataset or feat_dim?"
            )
        self.feats.copy_(feats.to(self.feats))
        # The momentum is a setting of this run (its config), not restored state.
