"""Tests of the batched MoCo v2 augmentations (study.augment)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from study.data.augment import (
    AugmentConfig,
    TwoViewAugment,
    _axis_weights,
    _hue_matrix,
    _luma,
    blur_kernel_size,
    eval_preprocess,
    sample_crop_boxes,
)
from study.core.errors import UserError

GRAY = dict(mean=(0.5,), std=(0.25,))
RGB = dict(mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
# Every random op off: only the (possibly identity) crop and normalisation remain.
NO_PHOTO = dict(flip_p=0.0, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(n: int = 8, c: int = 1, size: int = 28, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, c, size, size), dtype=torch.uint8, generator=gen(seed))


# --- shapes, dtype, normalisation --------------------------------------------


@pytest.mark.parametrize("c, size, out", [(1, 28, 28), (1, 28, 16), (3, 32, 24), (3, 20, 32)])
def test_views_have_requested_shape_and_dtype(c, size, out):
    aug = TwoViewAugment(AugmentConfig(out_size=out, **(GRAY if c == 1 else RGB)))
    v1, v2 = aug(images(6, c, size), gen())
    for v in (v1, v2):
        assert v.shape == (6, c, out, out)
        assert v.dtype == torch.float32
        assert torch.isfinite(v).all()
    assert not torch.equal(v1, v2)  # the two views are drawn independently
    assert aug.one_view(images(6, c, size), gen()).shape == (6, c, out, out)


def test_uint8_and_unit_float_inputs_agree():
    aug = TwoViewAugment(AugmentConfig(out_size=20, **RGB))
    x = images(4, 3, 28)
    a1, a2 = aug(x, gen(3))
    b1, b2 = aug(x.float() / 255.0, gen(3))
    assert torch.allclose(a1, b1, atol=1e-5) and torch.allclose(a2, b2, atol=1e-5)


def test_normalisation_of_a_constant_image():
    cfg = AugmentConfig(out_size=16, **NO_PHOTO, **RGB)
    x = torch.full((3, 3, 28, 28), 51, dtype=torch.uint8)  # 51/255 = 0.2
    v1, _ = TwoViewAugment(cfg)(x, gen())
    expected = torch.tensor([(0.2 - m) / s for m, s in zip(RGB["mean"], RGB["std"])]).view(1, 3, 1, 1)
    assert torch.allclose(v1, expected.expand_as(v1), atol=1e-5)
    e = eval_preprocess(x, 16, RGB["mean"], RGB["std"])
    assert e.shape == (3, 3, 16, 16) and torch.allclose(e, expected.expand_as(e), atol=1e-5)


def test_eval_preprocess_resizes_and_is_deterministic():
    x = images(2, 1, 28)
    e = eval_preprocess(x, 14, (0.0,), (1.0,))
    ref = F.interpolate(x.float() / 255, size=(14, 14), mode="bilinear", antialias=True, align_corners=False)
    assert torch.allclose(e, ref.clamp(0, 1), atol=1e-6)
    assert torch.equal(eval_preprocess(x, 28, (0.0,), (1.0,)), x.float() / 255)  # no resize: exact
    wide = torch.zeros(1, 1, 10, 20, dtype=torch.uint8)
    assert eval_preprocess(wide, 8, (0.0,), (1.0,)).shape == (1, 1, 8, 8)  # shorter side + centre crop


# --- randomness comes only from the generator --------------------------------


def test_same_seed_same_views_other_seed_other_views():
    aug = TwoViewAugment(AugmentConfig(out_size=28, **RGB))
    x = images(8, 3, 28)
    torch.manual_seed(123)  # the global RNG must play no part
    a = aug(x, gen(7))
    torch.manual_seed(999)
    b = aug(x, gen(7))
    c = aug(x, gen(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_generator_consumption_does_not_depend_on_config_or_data():
    # A resumed run restores the generator state; the stream must advance by
    # the same amount whatever the probabilities or the pixel values.
    x = images(5, 3, 28)
    after = []
    for cfg, data in [
        (AugmentConfig(out_size=28, **RGB), x),
        (AugmentConfig(out_size=16, crop_scale=(1.0, 1.0), **NO_PHOTO, **RGB), x.flip(0)),
    ]:
        g = gen(11)
        TwoViewAugment(cfg)(data, g)
        after.append(torch.rand(4, generator=g))
    assert torch.equal(after[0], after[1])


def test_generator_is_required():
    aug = TwoViewAugment(AugmentConfig(out_size=8, **GRAY))
    with pytest.raises(TypeError):
        aug(images(2, 1, 8), None)


# --- crop ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "h, w, largest",
    # largest: the biggest box with a ratio in [3/4, 4/3] that fits the image.
    [(28, 28, 1.0), (32, 48, (4 / 3) / (48 / 32)), (60, 20, (20 * 20 / 0.75) / (60 * 20))],
)
def test_crop_boxes_respect_scale_ratio_and_bounds(h, w, largest):
    scale, ratio = (0.2, 1.0), (3 / 4, 4 / 3)
    boxes = sample_crop_boxes(4000, h, w, scale, ratio, gen(1))
    cy, cx, fh, fw = boxes.unbind(1)
    eps = 1e-5
    # Inside the image.
    assert (cy - fh / 2 >= -eps).all() and (cy + fh / 2 <= 1 + eps).all()
    assert (cx - fw / 2 >= -eps).all() and (cx + fw / 2 <= 1 + eps).all()
    area = fh * fw  # fraction of the image area
    box_ratio = (fw * w) / (fh * h)
    assert ((box_ratio >= ratio[0] - eps) & (box_ratio <= ratio[1] + eps)).all()
    assert (area >= scale[0] - eps).all() and (area <= largest + eps).all()
    # A box is either one of the 10 tries (area and ratio drawn in range) or,
    # when none fit, the centred fallback: the largest box in the ratio range.
    fallback = (area - largest).abs() < 1e-4
    assert torch.allclose(cy[fallback], torch.tensor(0.5)) and torch.allclose(cx[fallback], torch.tensor(0.5))
    if largest == 1.0:
        assert fallback.float().mean() < 0.05  # rare on a square image
    assert area.min() < scale[0] + 0.02 and area.max() > largest - 0.02  # the whole range is used


def test_crop_scale_is_respected_on_a_coordinate_ramp():
    # Pixel value = its column (x) or row (y) coordinate / (size - 1): a view
    # then shows which part of the image it sampled.
    size = 28
    ramp = torch.arange(size, dtype=torch.float32) / (size - 1)
    x_ramp = ramp.view(1, 1, 1, size).expand(64, 1, size, size)
    y_ramp = ramp.view(1, 1, size, 1).expand(64, 1, size, size)
    cfg = AugmentConfig(out_size=size, crop_scale=(0.3, 0.6), **NO_PHOTO, mean=(0.0,), std=(1.0,))
    aug = TwoViewAugment(cfg)
    params = aug.sample_params(64, size, size, gen(5))
    vx, vy = aug.apply(x_ramp, params), aug.apply(y_ramp, params)
    # Box size from the ramp's slope: one output pixel advances fw * size /
    # out source pixels, i.e. fw / (size - 1) in value (out = size here).
    # The median of the steps ignores the border, where sampling clamps.
    fw = (vx[:, 0, 0, 1:] - vx[:, 0, 0, :-1]).median(dim=1).values * (size - 1)  # (N,)
    fh = (vy[:, 0, 1:, 0] - vy[:, 0, :-1, 0]).median(dim=1).values * (size - 1)
    area = fw * fh  # fraction of the image area covered by the view
    assert (area > 0.3 - 1e-3).all() and (area < 0.6 + 1e-3).all()
    assert area.max() - area.min() > 0.15  # the range is used, not one value
    # Each output pixel samples where the box says (bilinear is exact on a ramp).
    cy, cx, fh, fw = params.crop.unbind(1)
    i = torch.arange(size, dtype=torch.float32) + 0.5
    expect_x = ((cx - fw / 2).unsqueeze(1) + i / size * fw.unsqueeze(1)) * size - 0.5  # (N, out) px
    assert torch.allclose(vx[:, 0, 0, :] * (size - 1), expect_x.clamp(0, size - 1), atol=1e-4)


def test_axis_weights_match_antialiased_interpolate_on_whole_image():
    # A whole-image "crop" is a plain resize: bilinear when enlarging,
    # antialiased when shrinking, like F.interpolate(antialias=True).
    x = torch.rand(2, 3, 28, 28, generator=gen(2))
    for out in (12, 14, 28, 40):
        w = _axis_weights(torch.zeros(2), torch.ones(2), 28, out)  # (2, out, 28)
        y = torch.matmul(w.unsqueeze(1), torch.matmul(x, w.transpose(1, 2).unsqueeze(1)))
        ref = F.interpolate(x, size=(out, out), mode="bilinear", antialias=True, align_corners=False)
        assert torch.allclose(y, ref, atol=1e-5), out
    eye = _axis_weights(torch.zeros(1), torch.ones(1), 9, 9)[0]
    assert torch.allclose(eye, torch.eye(9), atol=1e-6)


# --- flip, identity, grayscale, jitter, blur --------------------------------------


def test_flip_with_p1_mirrors_the_view():
    x = images(4, 3, 28)
    base = dict(out_size=20, **NO_PHOTO, **RGB)
    plain = TwoViewAugment(AugmentConfig(**base)).one_view(x, gen(4))
    flipped = TwoViewAugment(AugmentConfig(**{**base, "flip_p": 1.0})).one_view(x, gen(4))
    assert torch.allclose(flipped, plain.flip(-1), atol=1e-5)
    # Whole image at its own size: exactly the mirrored eval transform.
    cfg = AugmentConfig(out_size=28, crop_scale=(1.0, 1.0), **{**NO_PHOTO, "flip_p": 1.0}, **RGB)
    v = TwoViewAugment(cfg).one_view(x, gen(0))
    assert torch.equal(v, eval_preprocess(x, 28, RGB["mean"], RGB["std"]).flip(-1))


@pytest.mark.parametrize("c", [1, 3])
def test_identity_when_nothing_is_random(c):
    norm = GRAY if c == 1 else RGB
    x = images(5, c, 28)
    cfg = AugmentConfig(out_size=28, crop_scale=(1.0, 1.0), **NO_PHOTO, **norm)
    v1, v2 = TwoViewAugment(cfg)(x, gen(9))
    ref = eval_preprocess(x, 28, norm["mean"], norm["std"])
    assert torch.allclose(v1, ref, atol=1e-6) and torch.allclose(v2, ref, atol=1e-6)
    # Same when a resize is needed (the general resampling path, no fast path).
    cfg = dataclasses.replace(cfg, out_size=14)
    v1, _ = TwoViewAugment(cfg)(x, gen(9))
    assert torch.allclose(v1, eval_preprocess(x, 14, norm["mean"], norm["std"]), atol=1e-5)


def test_grayscale_with_p1_makes_channels_equal():
    cfg = AugmentConfig(out_size=16, **{**NO_PHOTO, "grayscale_p": 1.0}, mean=(0.0,), std=(1.0,))
    v = TwoViewAugment(cfg).one_view(images(4, 3, 28), gen())
    assert torch.allclose(v[:, 0], v[:, 1]) and torch.allclose(v[:, 1], v[:, 2])
    # One-channel images ignore grayscale (and saturation, hue).
    v1 = TwoViewAugment(dataclasses.replace(cfg, jitter_p=1.0)).one_view(images(4, 1, 16), gen())
    assert v1.shape == (4, 1, 16, 16)


def test_jitter_matches_a_sequential_reference():
    # The fused map equals brightness -> contrast -> saturation -> hue applied
    # one after another without intermediate clamps, then one clamp.
    x = torch.rand(6, 3, 10, 10, generator=gen(3)) * 0.6 + 0.2
    cfg = AugmentConfig(out_size=10, crop_scale=(1.0, 1.0), **{**NO_PHOTO, "jitter_p": 1.0}, mean=(0.0,), std=(1.0,))
    aug = TwoViewAugment(cfg)
    p = aug.sample_params(6, 10, 10, gen(4))
    got = aug._jitter(x, p)
    n = 6
    y = x * p.brightness.view(n, 1, 1, 1)
    m = _luma(y).mean(dim=(1, 2, 3)).view(n, 1, 1, 1)
    y = p.contrast.view(n, 1, 1, 1) * y + (1 - p.contrast.view(n, 1, 1, 1)) * m
    s = p.saturation.view(n, 1, 1, 1)
    y = s * y + (1 - s) * _luma(y)
    y = torch.einsum("nij,njhw->nihw", _hue_matrix(p.hue), y)
    assert torch.allclose(got, y.clamp(0, 1), atol=1e-5)
    # Gray-level images: brightness and contrast only.
    g = x[:, :1]
    got = aug._jitter(g, p)
    b, k = p.brightness.view(n, 1, 1, 1), p.contrast.view(n, 1, 1, 1)
    ref = k * b * g + (1 - k) * b * g.mean(dim=(1, 2, 3), keepdim=True)
    assert torch.allclose(got, ref.clamp(0, 1), atol=1e-5)


def test_hue_rotation_keeps_luma_and_full_turn_is_identity():
    h = torch.tensor([0.0, 0.1, -0.1, 1.0])
    mats = _hue_matrix(h)  # (4, 3, 3)
    assert torch.allclose(mats[0], torch.eye(3), atol=1e-5)
    assert torch.allclose(mats[3], torch.eye(3), atol=1e-5)
    luma = torch.tensor([0.299, 0.587, 0.114])
    assert torch.allclose(luma @ mats, luma.expand(4, 3), atol=1e-5)  # luma row is preserved
    grey = torch.ones(3)
    assert torch.allclose(mats @ grey, grey.expand(4, 3), atol=1e-5)  # grey stays grey


def test_blur_matches_torchvision_gaussian_blur():
    from torchvision.transforms.v2 import functional as TF

    cfg = AugmentConfig(out_size=28, crop_scale=(1.0, 1.0), **{**NO_PHOTO, "blur_p": 1.0}, mean=(0.0,), std=(1.0,))
    aug = TwoViewAugment(cfg)
    x = torch.rand(4, 3, 28, 28, generator=gen(6))
    p = aug.sample_params(4, 28, 28, gen(6))
    got = aug._blur(x, p)
    k = blur_kernel_size(28)
    for i in range(4):
        s = float(p.sigma[i])
        ref = TF.gaussian_blur(x[i], kernel_size=[k, k], sigma=[s, s])
        assert torch.allclose(got[i], ref, atol=1e-5)
    # Samples the gate leaves alone are untouched.
    p.blur[:] = torch.tensor([True, False, True, False])
    got = aug._blur(x, p)
    assert torch.equal(got[1], x[1]) and torch.equal(got[3], x[3])


def test_blur_kernel_scales_with_the_image():
    assert blur_kernel_size(224) == 23  # MoCo v2's kernel
    assert blur_kernel_size(28) == 3 and blur_kernel_size(16) == 3
    assert blur_kernel_size(96) % 2 == 1


# --- config validation and devices -------------------------------------------


@pytest.mark.parametrize(
    "field, value",
    [("crop_scale", (0.0, 1.0)), ("crop_scale", (0.8, 0.5)), ("flip_p", 1.5), ("hue", 0.7), ("out_size", 0),
     ("crop_ratio", (1.0,)), ("std", (0.0,))],
)  # fmt: skip
def test_bad_config_raises_user_error_naming_the_key(field, value):
    kwargs = dict(out_size=8, **GRAY)
    kwargs[field] = value
    with pytest.raises(UserError) as info:
        AugmentConfig(**kwargs)
    assert info.value.key == field


def test_lists_from_yaml_become_tuples():
    cfg = AugmentConfig(out_size=8, crop_scale=[0.5, 1], mean=[0.5], std=[0.5])
    assert cfg.crop_scale == (0.5, 1.0) and cfg.mean == (0.5,)
    hash(cfg)  # frozen and hashable


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_images_with_cpu_generator_match_cpu():
    aug = TwoViewAugment(AugmentConfig(out_size=24, **RGB))
    x = images(16, 3, 32)
    cpu = aug(x, gen(1))
    cuda = aug(x.cuda(), gen(1))
    for a, b in zip(cpu, cuda):
        assert b.is_cuda and torch.allclose(a, b.cpu(), atol=1e-4)
    g = torch.Generator(device="cuda").manual_seed(1)
    v1, v2 = aug(x.cuda(), g)
    assert v1.is_cuda and v1.shape == (16, 3, 24, 24) and math.isfinite(float(v2.sum()))
