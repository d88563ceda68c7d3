"""Distributed helpers that are no-ops in a single process.

The maths never depends on DDP: with one process (no process group) every
helper returns its input, so the whole method runs on one CPU.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def init_from_env(device: torch.device) -> bool:
    """Join the process group torchrun describes (WORLD_SIZE > 1); False otherwise."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_dist():
        return is_dist()
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return True


@torch.no_grad()
def all_gather_cat(x: Tensor) -> Tensor:
    """Concatenate ``x`` (same shape on every rank) over ranks along dim 0; no gradient."""
    if not is_dist():
        return x
    out = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out, dim=0)


def all_reduce_mean(x: Tensor) -> Tensor:
    if not is_dist():
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x / world_size()


@torch.no_grad()
def shuffle_batch(x: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Shuffle-BN, step 1: gather the key batch, permute it, keep this rank's slice.

    The permutation is drawn from ``generator``, which every rank holds in the
    same state, so no broadcast of the permutation is needed. Returns the local
    slice of the shuffled global batch and the inverse permutation.
    With one process this shuffles the batch in place order (BN statistics are
    then over the same samples, so it only costs the permutation).
    """
    global_x = all_gather_cat(x)  # (W*n, ...)
    total = global_x.shape[0]
    perm = torch.randperm(total, generator=generator).to(x.device)  # (W*n,)
    inverse = torch.argsort(perm)
    n = x.shape[0]
    r = rank()
    return global_x[perm[r * n:(r + 1) * n]], inverse


@torch.no_grad()
def unshuffle_batch(x: Tensor, inverse: Tensor) -> Tensor:
    """Shuffle-BN, step 2: gather the shuffled outputs and undo the permutation."""
    global_x = all_gather_cat(x)  # (W*n, d), in shuffled order
    n = x.shape[0]
    r = rank()
    return global_x[inverse[r * n:(r + 1) * n]]
