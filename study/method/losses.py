"""Contrastive losses and decision-boundary margins (pure functions of tensors).

Both branches of InterCLR use the same InfoNCE form: the positive logit at
index 0, the negatives after it, all divided by a temperature, and
cross-entropy with target 0. The paper's third finding is about the
decision boundary: a margin on the *positive* cosine changes how hard the
positive is. With the cosine margin ``phi = cos - m`` a negative ``m``
(reference default -0.5 on the inter branch) raises the positive logit, so
the boundary is "less stringent"; ``m > 0`` is more stringent.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from study.method import registry


def margin_none(cos: Tensor, margin: float) -> Tensor:
    """No margin: the cosine itself."""
    return cos


def margin_cosine(cos: Tensor, margin: float) -> Tensor:
    """Cosine margin ``cos - m`` (CosFace form)."""
    return cos - margin


def _safe_sin(cos: Tensor) -> Tensor:
    """``sqrt(clamp(1 - cos^2, 0, 1))`` with a finite gradient at ``|cos| = 1``.

    A plain ``sqrt`` has an infinite derivative at 0; even where a later
    ``torch.where`` discards that branch, ``0 * inf`` turns the gradient into
    NaN. Taking the root of 1 where the argument is 0 keeps the values
    identical and the gradient finite (zero) there.
    """
    sq = torch.clamp(1.0 - cos * cos, 0.0, 1.0)
    pos = sq > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, sq, torch.ones_like(sq))), torch.zeros_like(sq))


def margin_arc(cos: Tensor, margin: float) -> Tensor:
    """Additive angular margin ``cos(theta + m)`` (ArcFace form).

    ``cos(theta + m) = cos*cos(m) - sin*sin(m)``. It is monotonic in theta
    only while ``theta + m`` stays in ``[0, pi]``; outside that range the
    usual ArcFace fallback replaces it by a linear penalty so the logit still
    decreases with theta:

    - ``m < 0``: valid where ``cos < cos(m)`` (theta > -m), else ``cos + sin(m)*m``.
    - ``m >= 0``: valid where ``cos > cos(pi - m)`` (theta < pi - m), else
      ``cos - sin(pi - m)*m``.

    ``m = 0`` returns ``cos`` unchanged (exactly, not up to rounding).
    """
    if margin == 0.0:
        return cos
    cos_m, sin_m = math.cos(margin), math.sin(margin)
    phi = cos * cos_m - _safe_sin(cos) * sin_m
    if margin < 0:
        return torch.where(cos < cos_m, phi, cos + sin_m * margin)
    threshold = math.cos(math.pi - margin)
    return torch.where(cos > threshold, phi, cos - math.sin(math.pi - margin) * margin)


def _resolve_margin(entry: registry.Margin) -> Callable[[Tensor, float], Tensor]:
    return registry.load(entry.fn)


# margin name -> function(cos, m), resolved from study.method.registry.MARGINS (where a margin is named; the
# one registry of margins, this its view of their functions)
MARGIN_FUNCTIONS: Mapping[str, Callable[[Tensor, float], Tensor]] = registry.Resolved(registry.MARGINS,
                                                                                      _resolve_margin)
MARGIN_TYPES = tuple(registry.MARGINS)  # ("none", "cosine", "arc")


def apply_margin(cos: Tensor, margin_type: str, margin: float) -> Tensor:
    """Apply a decision-boundary margin to positive cosines.

    Args:
        cos: cosines of any shape, typically ``(N,)`` positive cosines.
        margin_type: one of :data:`MARGIN_TYPES`.
        margin: ``m``; negative is less stringent, positive more stringent.

    Returns:
        ``phi`` with the shape of ``cos``.
    """
    if margin_type not in MARGIN_FUNCTIONS:
        raise ValueError(f"unknown margin type {margin_type!r}; allowed: {', '.join(MARGIN_FUNCTIONS)}")
    fn = MARGIN_FUNCTIONS[margin_type]
    return fn(cos, float(margin))


def contrastive_loss(
    pos: Tensor,
    neg: Tensor,
    temperature: float,
    margin_type: str = "none",
    margin: float = 0.0,
) -> Tensor:
    """InfoNCE with the positive at index 0 and a margin on the positive.

    Args:
        pos: ``(N,)`` cosine of each query with its positive.
        neg: ``(N, K)`` cosines of each query with its K negatives.
        temperature: logits are divided by it (reference 0.2).
        margin_type, margin: see :func:`apply_margin`; applied to ``pos`` only.

    Returns:
        Scalar: mean over the batch of ``-log softmax(logits)[:, 0]``.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (got {temperature})")
    phi = apply_margin(pos, margin_type, margin)  # (N,)
    logits = torch.cat([phi.unsqueeze(1), neg], dim=1) / temperature  # logits: Nx(1+K)
    target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)  # positive at 0
    return F.cross_entropy(logits, target)
