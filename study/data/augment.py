"""Batched MoCo v2 augmentations on tensors.

Per-image PIL transforms cost far more than a small ConvNet's training step on
a CPU, so every augmentation here works on a whole batch ``(N, C, H, W)`` at
once, on whatever device the images live on, with the random parameters of
all N samples drawn as tensors (no per-sample Python loop):

1. random resized crop + horizontal flip: crop boxes sampled like
   torchvision's RandomResizedCrop, then resampled separably as two batched
   matrix products ``Wy @ x @ Wx^T`` with per-sample interpolation matrices
   (bilinear; a widened triangle filter when a crop is shrunk, i.e.
   antialiased like PIL); a flip reverses the rows of ``Wx``. On a CPU this is
   several times faster than ``affine_grid``/``grid_sample`` and does not
   alias;
2. colour jitter with probability ``jitter_p``: brightness, contrast,
   saturation and hue fused into one affine colour map per sample;
3. random grayscale with probability ``grayscale_p`` (RGB only);
4. Gaussian blur with probability ``blur_p`` (separable, per-sample sigma,
   shifted multiply-adds);
5. normalisation by ``mean``/``std``.

This is the MoCo v2 recipe (RandomResizedCrop scale 0.2-1, ColorJitter
0.4/0.4/0.4/0.1 p=0.8, RandomGrayscale p=0.2, GaussianBlur sigma 0.1-2 p=0.5,
horizontal flip) scaled to small images. Where it departs from
torchvision's per-image transforms, the departure is named where it happens:

- crop boxes are continuous (not rounded to whole pixels);
- the jitter ops run in a fixed order with one clamp at the end instead of a
  random order with a clamp after each op. Unclamped, brightness, contrast
  and saturation are linear maps that commute with each other, so the
  order only mattered through the intermediate clamps;
- hue is a rotation of the chroma plane of YIQ space (a 3x3 matrix), not a
  shift of the HSV hue channel: cheap and close for small shifts;
- the blur kernel is about 10% of ``out_size`` (23 px at 224 like MoCo,
  3 px at 28-32) and ``blur_sigma`` is in output pixels, so at small sizes the
  kernel's truncation bounds the effective blur.

Randomness comes only from the ``torch.Generator`` passed in, and every call
draws the same amount of random numbers for a given N whatever the
probabilities or the data, so a saved generator state resumes bit for bit.
Parameters are drawn on the generator's device (a CPU generator is the usual
choice) and moved to the images' device; a CUDA generator with CUDA images
works as well and keeps everything on the GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from study.core.errors import UserError

__all__ = [
    "AugmentConfig",
    "ViewParams",
    "TwoViewAugment",
    "blur_kernel_size",
    "eval_preprocess",
    "sample_crop_boxes",
    "to_unit_float",
]

# ITU-R 601 luma weights: what torchvision's rgb_to_grayscale and PIL's "L" use.
_LUMA = (0.299, 0.587, 0.114)
# RGB -> YIQ (rows Y, I, Q). The I and Q rows sum to zero, so a grey pixel has
# no chroma and a hue rotation leaves it (and the luma) unchanged.
_RGB_TO_YIQ = (
    (0.299, 0.587, 0.114),
    (0.595716, -0.274453, -0.321263),
    (0.211456, -0.522591, 0.311135),
)
# Its inverse, computed once (in float64) rather than per call on the device.
_YIQ_TO_RGB = tuple(tuple(row) for row in torch.linalg.inv(torch.tensor(_RGB_TO_YIQ, dtype=torch.float64)).tolist())
# Attempts per sample to draw a crop box that fits, as in torchvision.
_CROP_TRIES = 10
# Uniform numbers per sample for everything except the crop: flip, jitter
# gate, brightness, contrast, saturation, hue, grayscale gate, blur gate,
# sigma.
_PHOTO_DRAWS = 9


@dataclass(frozen=True)
class AugmentConfig:
    """Settings of one MoCo v2 view; every probability is per sample.

    ``mean`` and ``std`` (per channel in [0, 1] units, or one value for all
    channels) are keyword-only and required: normalisation must match the
    dataset. ``saturation``, ``hue`` and ``grayscale_p`` act on RGB images
    only; on one-channel images they are ignored.
    """

    out_size: int
    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    mean: tuple[float, ...] = field(kw_only=True)
    std: tuple[float, ...] = field(kw_only=True)

    def __post_init__(self) -> None:
        # Frozen: coerce lists (e.g. from YAML) to tuples through object.__setattr__.
        for name in ("crop_scale", "crop_ratio", "blur_sigma", "mean", "std"):
            value = getattr(self, name)
            try:
                object.__setattr__(self, name, tuple(float(v) for v in value))
            except (TypeError, ValueError):
                raise UserError(f"must be a list of numbers, got {value!r}", key=name) from None
        if isinstance(self.out_size, bool) or not isinstance(self.out_size, int) or self.out_size < 1:
            raise UserError(f"must be a positive integer, got {self.out_size!r}", key="out_size")
        lo, hi = _pair(self.crop_scale, "crop_scale")
        if not 0.0 < lo <= hi <= 1.0:
            raise UserError(f"needs 0 < low <= high <= 1, got {self.crop_scale}", key="crop_scale")
        lo, hi = _pair(self.crop_ratio, "crop_ratio")
        if not 0.0 < lo <= hi:
            raise UserError(f"needs 0 < low <= high, got {self.crop_ratio}", key="crop_ratio")
        lo, hi = _pair(self.blur_sigma, "blur_sigma")
        if not 0.0 < lo <= hi:
            raise UserError(f"needs 0 < low <= high, got {self.blur_sigma}", key="blur_sigma")
        for name in ("flip_p", "jitter_p", "grayscale_p", "blur_p"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise UserError(f"is a probability, must lie in [0, 1], got {p!r}", key=name)
        for name in ("brightness", "contrast", "saturation"):
            v = getattr(self, name)
            if v < 0.0:
                raise UserError(f"must be >= 0, got {v!r}", key=name)
        if not 0.0 <= self.hue <= 0.5:
            raise UserError(f"must lie in [0, 0.5] (a fraction of the hue circle), got {self.hue!r}", key="hue")
        if len(self.mean) != len(self.std) or not self.mean:
            raise UserError(f"mean {self.mean} and std {self.std} need the same, non-zero length", key="std")
        if any(s <= 0.0 for s in self.std):
            raise UserError(f"must be positive, got {self.std}", key="std")


def _pair(value: tuple[float, ...], key: str) -> tuple[float, float]:
    if len(value) != 2:
        raise UserError(f"must be a pair [low, high], got {list(value)}", key=key)
    return value[0], value[1]


@dataclass
class ViewParams:
    """Random parameters of one view for a batch of N samples (all on one device).

    crop: (N, 4) float, (cy, cx, h, w) as fractions of the source height/width:
        the box centre and size; the box always lies inside the image.
    flip: (N,) bool.       jitter: (N,) bool, whether colour jitter applies.
    brightness, contrast, saturation: (N,) multiplicative factors (1 = no-op).
    hue: (N,) shift as a fraction of the hue circle (0 = no-op).
    gray: (N,) bool.       blur: (N,) bool.       sigma: (N,) blur sigma in px.
    """

    crop: torch.Tensor
    flip: torch.Tensor
    jitter: torch.Tensor
    brightness: torch.Tensor
    contrast: torch.Tensor
    saturation: torch.Tensor
    hue: torch.Tensor
    gray: torch.Tensor
    blur: torch.Tensor
    sigma: torch.Tensor

    def to(self, device: torch.device | str) -> "ViewParams":
        return ViewParams(**{k: v.to(device) for k, v in vars(self).items()})


def _check_generator(generator: torch.Generator) -> None:
    # Randomness must come only from an explicit generator (bitwise resume),
    # so the global RNG is never a silent fallback.
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"an explicit torch.Generator is required, got {type(generator).__name__}")


def sample_crop_boxes(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
) -> torch.Tensor:
    """Sample N RandomResizedCrop boxes for a ``height x width`` source.

    Like torchvision: area fraction ``s ~ U(scale)``, aspect ratio ``r`` log-
    uniform in ``ratio``, box ``w = sqrt(s*A*r)``, ``h = sqrt(s*A/r)``; up to 10
    tries per sample (all drawn at once, the first that fits wins), else a
    centred box of the whole image clipped to the ratio range. Boxes are
    continuous, not rounded to whole pixels. Always draws ``n * 22`` uniforms.

    Returns: (N, 4) float32 on the generator's device, (cy, cx, h, w) as
    fractions of the source height and width.
    """
    _check_generator(generator)
    u = torch.rand(n, 2 * _CROP_TRIES + 2, generator=generator, device=generator.device)
    area = float(height * width)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    s = scale[0] + (scale[1] - scale[0]) * u[:, :_CROP_TRIES]  # (N, T)
    r = torch.exp(log_lo + (log_hi - log_lo) * u[:, _CROP_TRIES : 2 * _CROP_TRIES])  # (N, T)
    fw = torch.sqrt(s * area * r) / width  # (N, T) width fraction
    fh = torch.sqrt(s * area / r) / height  # (N, T) height fraction
    fits = (fw <= 1.0) & (fh <= 1.0)  # (N, T)
    # argmax returns the first maximum, i.e. the first try that fits.
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # (N, 1)
    any_fit = fits.any(dim=1)  # (N,)
    fw = fw.gather(1, first).squeeze(1)  # (N,)
    fh = fh.gather(1, first).squeeze(1)  # (N,)

    # Fallback: the largest centred box of the image whose ratio is in range.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fb_w, fb_h = 1.0, (width / ratio[0]) / height
    elif in_ratio > ratio[1]:
        fb_w, fb_h = (height * ratio[1]) / width, 1.0
    else:
        fb_w, fb_h = 1.0, 1.0
    fw = torch.where(any_fit, fw, torch.full_like(fw, fb_w))
    fh = torch.where(any_fit, fh, torch.full_like(fh, fb_h))
    # The fallback is centred: its position draw is replaced by 0.5.
    uy = torch.where(any_fit, u[:, -2], torch.full_like(fw, 0.5))
    ux = torch.where(any_fit, u[:, -1], torch.full_like(fw, 0.5))
    cy = fh / 2 + uy * (1.0 - fh)  # box centre, box inside [0, 1]
    cx = fw / 2 + ux * (1.0 - fw)
    return torch.stack([cy, cx, fh, fw], dim=1)  # (N, 4)


def blur_kernel_size(out_size: int) -> int:
    """Odd blur kernel of about 10% of the image side (23 at 224, like MoCo v2), at least 3."""
    k = int(round(0.1 * out_size))
    if k % 2 == 0:
        k += 1
    return max(k, 3)


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) uint8 in [0, 255] or float in [0, 1] -> float32 in [0, 1] (a new tensor)."""
    if images.dim() != 4:
        raise ValueError(f"expected images of shape (N, C, H, W), got {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images.to(torch.float32).div_(255.0)  # same rounding as ToTensor
    if not images.is_floating_point():
        raise ValueError(f"expected uint8 or float images, got {images.dtype}")
    return images.to(torch.float32, copy=True)


def _normalise_(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """In place (x - mean) / std per channel; one value in mean/std applies to all channels."""
    c = x.shape[1]
    if len(mean) not in (1, c):
        raise ValueError(f"mean/std have {len(mean)} values but the images have {c} channels")
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return x.sub_(m).div_(s)


def eval_preprocess(
    images: torch.Tensor, out_size: int, mean: tuple[float, ...], std: tuple[float, ...]
) -> torch.Tensor:
    """Deterministic evaluation transform: resize + centre crop + normalise.

    images: (N, C, H, W) uint8 (or float in [0, 1]). The shorter side is
    resized to ``out_size`` (bilinear, antialiased) and the centre
    ``out_size x out_size`` is kept; images already at that size pass through.
    Returns (N, C, out_size, out_size) float32, normalised.
    """
    x = to_unit_float(images)
    h, w = x.shape[-2:]
    if (h, w) != (out_size, out_size):
        scale = out_size / min(h, w)
        nh, nw = max(out_size, round(h * scale)), max(out_size, round(w * scale))
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
        top, left = (nh - out_size) // 2, (nw - out_size) // 2
        x = x[:, :, top : top + out_size, left : left + out_size].contiguous()
        x.clamp_(0.0, 1.0)  # antialiased bilinear can overshoot slightly
    return _normalise_(x, mean, std)


class TwoViewAugment:
    """Two independent MoCo v2 views of a batch, drawn from one generator.

    ``aug(images, generator) -> (view1, view2)``: images (N, C, H, W) uint8 or
    float in [0, 1], C in {1, 3}; each view (N, C, out, out) float32,
    normalised, on the images' device. View 1's parameters are drawn before
    view 2's.
    """

    def __init__(self, cfg: AugmentConfig):
        self.cfg = cfg
        self.kernel_size = blur_kernel_size(cfg.out_size)

    def __repr__(self) -> str:
        return f"TwoViewAugment({self.cfg})"

    def __call__(
        self, images: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.one_view(images, generator), self.one_view(images, generator)

    def one_view(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One augmented view: (N, C, H, W) -> (N, C, out, out) float32, normalised."""
        if images.dim() != 4:
            raise ValueError(f"expected images of shape (N, C, H, W), got {tuple(images.shape)}")
        n, c, h, w = images.shape
        params = self.sample_params(n, h, w, generator).to(images.device)
        return self.apply(images, params)

    # --- parameters -------------------------------------------------------

    def sample_params(self, n: int, height: int, width: int, generator: torch.Generator) -> ViewParams:
        """Draw one view's parameters for N samples of a ``height x width`` source.

        Always consumes the same number of random values for a given N
        (22 for the crop + 9 others per sample), whatever the config, so the
        generator's stream does not depend on the probabilities or the data.
        """
        cfg = self.cfg
        crop = sample_crop_boxes(n, height, width, cfg.crop_scale, cfg.crop_ratio, generator)
        u = torch.rand(n, _PHOTO_DRAWS, generator=generator, device=generator.device)  # (N, 9)

        def factor(col: int, strength: float) -> torch.Tensor:
            # torchvision's range: U(max(0, 1 - strength), 1 + strength).
            lo = max(0.0, 1.0 - strength)
            return lo + (1.0 + strength - lo) * u[:, col]

        sig_lo, sig_hi = cfg.blur_sigma
        return ViewParams(
            crop=crop,
            flip=u[:, 0] < cfg.flip_p,
            jitter=u[:, 1] < cfg.jitter_p,
            brightness=factor(2, cfg.brightness),
            contrast=factor(3, cfg.contrast),
            saturation=factor(4, cfg.saturation),
            hue=(2.0 * u[:, 5] - 1.0) * cfg.hue,
            gray=u[:, 6] < cfg.grayscale_p,
            blur=u[:, 7] < cfg.blur_p,
            sigma=sig_lo + (sig_hi - sig_lo) * u[:, 8],
        )

    # --- the ops -----------------------------------------------------------

    def apply(self, images: torch.Tensor, params: ViewParams) -> torch.Tensor:
        """Apply drawn parameters: (N, C, H, W) -> (N, C, out, out) float32, normalised."""
        c = images.shape[1]
        if c not in (1, 3):
            raise ValueError(f"expected 1 or 3 channels, got {c}")
        x = to_unit_float(images)
        x = self._crop_flip(x, params)  # (N, C, out, out)
        if self.cfg.jitter_p > 0:
            x = self._jitter(x, params)
        if c == 3 and self.cfg.grayscale_p > 0:
            x = self._grayscale(x, params)
        if self.cfg.blur_p > 0 and bool(params.blur.any()):
            x = self._blur(x, params)
        return _normalise_(x, self.cfg.mean, self.cfg.std)

    def _crop_flip(self, x: torch.Tensor, p: ViewParams) -> torch.Tensor:
        """Random resized crop + horizontal flip: (N, C, H, W) -> (N, C, out, out).

        Separable resampling y = Wy @ x @ Wx^T with per-sample matrices Wy
        (N, out, H) and Wx (N, out, W); a flip reverses the rows of Wx.
        """
        n, c, h, w = x.shape
        out = self.cfg.out_size
        if self._is_identity_crop(h, w):
            # The whole image at its own size: skip the resampling (exact).
            return torch.where(p.flip.view(n, 1, 1, 1), x.flip(-1), x)
        cy, cx, fh, fw = p.crop.to(x.dtype).unbind(dim=1)  # each (N,)
        wy = _axis_weights(cy - fh / 2, fh, h, out)  # (N, out, H)
        wx = _axis_weights(cx - fw / 2, fw, w, out)  # (N, out, W)
        wx = torch.where(p.flip.view(n, 1, 1), wx.flip(1), wx)
        # Along W first as one bmm over the (C*H) rows of each sample, then
        # along H; this order avoids a transpose copy.
        t = torch.bmm(x.reshape(n, c * h, w), wx.transpose(1, 2)).view(n, c, h, out)  # (N, C, H, out)
        return torch.matmul(wy.unsqueeze(1), t)  # (N, C, out, out)

    def _is_identity_crop(self, h: int, w: int) -> bool:
        """True when every sampled box is the whole image and no resize is needed.

        With crop_scale (1, 1) on a square image, no try fits unless the ratio
        is exactly 1, and the fallback is then the whole image, since the
        ratio range contains 1 (see ``sample_crop_boxes``).
        """
        lo, hi = self.cfg.crop_ratio
        return self.cfg.crop_scale == (1.0, 1.0) and h == w == self.cfg.out_size and lo <= 1.0 <= hi

    def _jitter(self, x: torch.Tensor, p: ViewParams) -> torch.Tensor:
        """Brightness, contrast, saturation, hue fused into y = A x + t per sample.

        Order B -> C -> S -> H, unclamped: with m0 the mean luma of x,
        brightness gives b x, contrast blends with the mean luma b m0, and
        saturation and hue are 3x3 maps that keep grey (and thus the
        contrast term) fixed, so y = c b (H S) x + (1 - c) b m0. One clamp at
        the end. Samples without jitter get A = I, t = 0.
        """
        n, c = x.shape[:2]
        on = p.jitter.to(x.dtype)  # (N,)
        b = 1.0 + on * (p.brightness.to(x.dtype) - 1.0)  # (N,) 1 where jitter is off
        k = 1.0 + on * (p.contrast.to(x.dtype) - 1.0)  # (N,)
        luma = _luma(x) if c == 3 else x  # (N, 1, H, W)
        m0 = luma.mean(dim=(1, 2, 3))  # (N,)
        offset = (1.0 - k) * b * m0  # (N,)
        if c == 1:
            y = x * (k * b).view(n, 1, 1, 1) + offset.view(n, 1, 1, 1)
        else:
            s = 1.0 + on * (p.saturation.to(x.dtype) - 1.0)  # (N,)
            hue = on * p.hue.to(x.dtype)  # (N,)
            mat = _hue_matrix(hue) @ _saturation_matrix(s)  # (N, 3, 3)
            mat = mat * (k * b).view(n, 1, 1)
            flat = x.reshape(n, 3, -1)  # (N, 3, HW)
            y = torch.baddbmm(offset.view(n, 1, 1).expand(n, 3, 1), mat, flat).view_as(x)
        return y.clamp_(0.0, 1.0)

    def _grayscale(self, x: torch.Tensor, p: ViewParams) -> torch.Tensor:
        """Replace the chosen samples by their luma in all three channels (like torchvision)."""
        gray = _luma(x).expand_as(x)  # (N, 3, H, W)
        return torch.where(p.gray.view(-1, 1, 1, 1), gray, x)

    def _blur(self, x: torch.Tensor, p: ViewParams) -> torch.Tensor:
        """Separable Gaussian blur with a per-sample sigma, reflect padding.

        Samples without blur get a delta kernel (exactly the identity). Each
        pass is K shifted multiply-adds of the padded batch: on a CPU several
        times faster than a depthwise conv over N*C groups for small K.
        """
        n, c, h, w = x.shape
        k = self.kernel_size
        radius = k // 2
        offsets = torch.arange(k, dtype=x.dtype, device=x.device) - radius  # (K,)
        sigma = p.sigma.to(x.dtype).view(n, 1)  # (N, 1)
        kern = torch.exp(-(offsets.view(1, k) ** 2) / (2.0 * sigma**2))  # (N, K)
        kern = kern / kern.sum(dim=1, keepdim=True)
        delta = (offsets == 0).to(x.dtype).view(1, k).expand(n, k)
        kern = torch.where(p.blur.view(n, 1), kern, delta)  # (N, K)
        # Reflect padding needs radius < side; tiny outputs fall back to replicate.
        mode = "reflect" if radius < min(h, w) else "replicate"
        planes = x.reshape(n * c, 1, h, w)  # F.pad's reflect wants (B, 1, H, W)

        padded = F.pad(planes, (radius, radius, 0, 0), mode=mode).view(n, c, h, w + 2 * radius)
        kw = kern.view(n, 1, 1, k)
        y = padded[..., 0:w] * kw[..., 0:1]  # (N, C, H, W), along W
        for t in range(1, k):
            y.addcmul_(padded[..., t : t + w], kw[..., t : t + 1])

        padded = F.pad(y.view(n * c, 1, h, w), (0, 0, radius, radius), mode=mode).view(n, c, h + 2 * radius, w)
        kh = kern.view(n, 1, k, 1)
        y = padded[:, :, 0:h] * kh[:, :, 0:1]  # (N, C, H, W), along H
        for t in range(1, k):
            y.addcmul_(padded[:, :, t : t + h], kh[:, :, t : t + 1])
        return y


def _axis_weights(start: torch.Tensor, length: torch.Tensor, src_len: int, out: int) -> torch.Tensor:
    """Interpolation matrices resampling a span of one axis to ``out`` pixels.

    start, length: (N,) span start and length as fractions of the axis.
    Returns (N, out, src_len), rows summing to 1. Output pixel i samples the
    source at pixel coordinate ``(start + (i + 0.5) / out * length) * src_len
    - 0.5`` with a triangle (tent) filter of half-width ``max(1, step)``, where
    ``step`` is source pixels per output pixel: plain bilinear when
    enlarging, an antialiasing filter when shrinking (as PIL and
    torchvision's ``antialias=True`` do). Taps outside the image are dropped
    and the row renormalised, which equals border padding for bilinear.
    """
    dtype, device = start.dtype, start.device
    step = length * (src_len / out)  # (N,) source px per output px
    i = torch.arange(out, dtype=dtype, device=device) + 0.5  # (out,)
    centre = start.unsqueeze(1) * src_len + i.unsqueeze(0) * step.unsqueeze(1) - 0.5  # (N, out)
    support = step.clamp(min=1.0).view(-1, 1, 1)  # (N, 1, 1)
    j = torch.arange(src_len, dtype=dtype, device=device).view(1, 1, -1)  # (1, 1, L)
    wts = (1.0 - (j - centre.unsqueeze(2)).abs() / support).clamp_(min=0.0)  # (N, out, L)
    # The nearest source pixel is within 0.5 px of the centre and the
    # half-width is >= 1, so every row has a positive sum.
    return wts / wts.sum(dim=2, keepdim=True)


def _luma(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB -> (N, 1, H, W) luma (ITU-R 601)."""
    r, g, b = x.unbind(dim=1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def _saturation_matrix(s: torch.Tensor) -> torch.Tensor:
    """(N,) factors -> (N, 3, 3): blend each pixel with its luma, s x + (1 - s) luma(x)."""
    n = s.shape[0]
    eye = torch.eye(3, dtype=s.dtype, device=s.device).expand(n, 3, 3)
    luma_rows = torch.tensor(_LUMA, dtype=s.dtype, device=s.device).view(1, 1, 3).expand(n, 3, 3)
    sv = s.view(n, 1, 1)
    return sv * eye + (1.0 - sv) * luma_rows


def _hue_matrix(h: torch.Tensor) -> torch.Tensor:
    """(N,) hue shifts (fraction of a turn) -> (N, 3, 3) RGB maps.

    Approximation of torchvision's HSV hue shift: rotate the (I, Q) chroma
    plane of YIQ space by 2*pi*h and map back. Luma is unchanged.
    """
    n = h.shape[0]
    to_yiq = torch.tensor(_RGB_TO_YIQ, dtype=h.dtype, device=h.device)  # (3, 3)
    from_yiq = torch.tensor(_YIQ_TO_RGB, dtype=h.dtype, device=h.device)  # (3, 3)
    angle = 2.0 * math.pi * h
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.zeros(n, 3, 3, dtype=h.dtype, device=h.device)
    rot[:, 0, 0] = 1.0
    rot[:, 1, 1], rot[:, 1, 2] = cos, -sin
    rot[:, 2, 1], rot[:, 2, 2] = sin, cos
    return from_yiq @ rot @ to_yiq  # (N, 3, 3)
