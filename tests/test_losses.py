"""Margins and the contrastive loss: hand-computed values and a slow reference."""

from __future__ import annotations

import math

import pytest
import torch

from study.core.config import build_config
from study.core.errors import UserError
from study.method.losses import MARGIN_TYPES, apply_margin, contrastive_loss


def test_margin_types_contract():
    assert MARGIN_TYPES[:3] == ("none", "cosine", "arc")  # the paper's three first; new ones may follow


def test_none_margin_is_identity():
    cos = torch.tensor([-0.3, 0.5, 0.99])
    assert torch.equal(apply_margin(cos, "none", 0.7), cos)


def test_cosine_margin_hand_values():
    cos = torch.tensor([0.5, -0.2])
    assert torch.allclose(apply_margin(cos, "cosine", -0.5), torch.tensor([1.0, 0.3]))
    assert torch.allclose(apply_margin(cos, "cosine", 0.25), torch.tensor([0.25, -0.45]))


def test_arc_margin_hand_values():
    out = apply_margin(torch.tensor([0.5]), "arc", 0.1)
    assert out.item() == pytest.approx(math.cos(math.acos(0.5) + 0.1), abs=1e-6)
    # negative margin, theta > |m|: the plain cos(theta + m)
    out = apply_margin(torch.tensor([0.5]), "arc", -0.3)
    assert out.item() == pytest.approx(math.cos(math.acos(0.5) - 0.3), abs=1e-6)


def test_arc_margin_zero_is_exact_identity():
    cos = torch.tensor([-1.0, -0.4, 0.0, 0.3, 1.0])
    assert torch.equal(apply_margin(cos, "arc", 0.0), cos)


def test_arc_fallback_negative_margin_near_one():
    # m = -0.5: theta = acos(0.99) ~ 0.14 < 0.5, so the fallback cos + sin(m)*m applies
    m = -0.5
    out = apply_margin(torch.tensor([0.99, 1.0]), "arc", m)
    expect = [0.99 + math.sin(m) * m, 1.0 + math.sin(m) * m]
    assert out.tolist() == pytest.approx(expect, abs=1e-6)
    # and it is not the (non-monotonic) cos(theta + m)
    assert out[0].item() != pytest.approx(math.cos(math.acos(0.99) + m), abs=1e-3)


def test_arc_fallback_positive_margin_near_minus_one():
    # m = 0.5: theta = acos(-0.99) > pi - 0.5, so cos - sin(pi - m)*m applies
    m = 0.5
    out = apply_margin(torch.tensor([-0.99]), "arc", m)
    assert out.item() == pytest.approx(-0.99 - math.sin(math.pi - m) * m, abs=1e-6)


def test_arc_is_monotonic_and_has_finite_gradient():
    cos = torch.linspace(-1.0, 1.0, 401, requires_grad=True)
    for m in (-0.5, 0.3):
        phi = apply_margin(cos, "arc", m)
        assert bool((phi[1:] >= phi[:-1] - 1e-6).all())
        (grad,) = torch.autograd.grad(phi.sum(), cos)
        assert bool(torch.isfinite(grad).all())


def test_unknown_margin_type_names_key_and_allowed():
    with pytest.raises(ValueError) as err:
        apply_margin(torch.zeros(2), "sphere", 0.1)
    msg = str(err.value)
    assert "margin type" in msg and "allowed" in msg and "cosine" in msg and "arc" in msg
    with pytest.raises(UserError) as err:  # the user's error, at load
        build_config("smoke", {"margin_type": "sphere"})
    msg = str(err.value)
    assert "margin_type" in msg and "cosine" in msg and "arc" in msg


def _slow_loss(pos, neg, t, margin_type="none", m=0.0):
    """Obviously-correct reference: explicit loop of -log softmax at index 0."""
    total = 0.0
    for i in range(pos.shape[0]):
        phi = float(apply_margin(pos[i:i + 1], margin_type, m))
        logits = [phi / t] + [float(v) / t for v in neg[i]]
        top = max(logits)
        log_z = top + math.log(sum(math.exp(v - top) for v in logits))
        total += log_z - logits[0]
    return total / pos.shape[0]


@pytest.mark.parametrize("margin_type,m", [("none", 0.0), ("cosine", -0.5), ("cosine", 0.3), ("arc", 0.2)])
def test_loss_matches_slow_reference(margin_type, m):
    g = torch.Generator().manual_seed(0)
    pos = torch.rand(5, generator=g) * 2 - 1
    neg = torch.rand(5, 7, generator=g) * 2 - 1
    got = contrastive_loss(pos, neg, 0.2, margin_type, m).item()
    assert got == pytest.approx(_slow_loss(pos, neg, 0.2, margin_type, m), rel=1e-5)


def test_loss_degenerate_equal_cosines_is_log_k_plus_one():
    k = 9
    pos = torch.full((4,), 0.3)
    neg = torch.full((4, k), 0.3)
    assert contrastive_loss(pos, neg, 0.2).item() == pytest.approx(math.log(k + 1), rel=1e-6)


def test_temperature_scales_logits():
    pos = torch.tensor([0.6])
    neg = torch.tensor([[0.1, -0.2]])
    for t in (0.1, 0.5):
        expect = -math.log(math.exp(0.6 / t) / (math.exp(0.6 / t) + math.exp(0.1 / t) + math.exp(-0.2 / t)))
        assert contrastive_loss(pos, neg, t).item() == pytest.approx(expect, rel=1e-5)


def test_negative_cosine_margin_lowers_loss():
    pos = torch.tensor([0.2, 0.4])
    neg = torch.tensor([[0.3, 0.1], [0.5, 0.0]])
    base = contrastive_loss(pos, neg, 0.2)
    easier = contrastive_loss(pos, neg, 0.2, "cosine", -0.5)
    harder = contrastive_loss(pos, neg, 0.2, "cosine", 0.5)
    assert easier < base < harder


def test_bad_temperature_is_user_error():
    with pytest.raises(ValueError, match="temperature"):
        contrastive_loss(torch.zeros(2), torch.zeros(2, 3), 0.0)
    with pytest.raises(UserError, match="temperature"):  # the user's error, at load
        build_config("smoke", {"temperature": 0.0})
