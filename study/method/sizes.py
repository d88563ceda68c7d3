"""Derived sizes of the sampler's settings (standard library only: the config computes them at load
without importing torch, the sampler at each step: one definition)."""

from __future__ import annotations


def scaled_pool(pool: int, candidates: int, bank_size: int) -> int:
    """Pool size within a candidate set: ``max(1, round(pool * C / B))``, at most ``C``.

    Keeps the pool the same FRACTION of the searched entries, so "the 10% most
    similar" means the same thing in both search modes.
    """
    return min(candidates, max(1, round(pool * candidates / bank_size)))
