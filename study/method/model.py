"""Encoders and the MoCo v2 key queue.

Query encoder = backbone + projection neck; key encoder = its momentum copy
(no gradient). The queue is an explicit state object with a documented
pointer and wrap-around.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SplitBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose training statistics are computed over ``splits`` equal
    groups of the batch, as ``splits`` processes of DDP would each compute them.

    One process with ``bn_splits=W`` then trains exactly like W processes with
    per-process BN (what shuffle-BN relies on). Running statistics are the mean
    over the groups.
    """

    def __init__(self, num_features: int, splits: int):
        super().__init__(num_features)
        self.splits = splits

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.splits == 1:
            return super().forward(x)
        n, c, h, w = x.shape
        g = self.splits
        mean_before = self.running_mean.repeat(g)
        var_before = self.running_var.repeat(g)
        # contiguous chunks of the batch are the groups (as rank slices are)
        grouped = x.view(g, n // g, c, h, w).transpose(0, 1).reshape(n // g, g * c, h, w)
        y = F.batch_norm(
            grouped, mean_before, var_before,
            self.weight.repeat(g), self.bias.repeat(g), True, self.momentum, self.eps,
        )  # (n/g, g*C, H, W): each group normalised with its own statistics
        self.running_mean.copy_(mean_before.view(g, c).mean(0))
        self.running_var.copy_(var_before.view(g, c).mean(0))
        self.num_batches_tracked += 1
        return y.view(n // g, g, c, h, w).transpose(0, 1).reshape(n, c, h, w)


def split_batchnorm(module: nn.Module, splits: int) -> nn.Module:
    """Replace every BatchNorm2d in ``module`` by a SplitBatchNorm (weights kept)."""
    if splits == 1:
        return module
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, SplitBatchNorm):
            new = SplitBatchNorm(child.num_features, splits)
            new.load_state_dict(child.state_dict())
            setattr(module, name, new)
        else:
            split_batchnorm(child, splits)
    return module


class ConvNet(nn.Module):
    """A small VGG-like backbone for the ``cpu`` and ``smoke`` presets.

    One stride-1 stage, then a stride-2 conv per further width, each
    conv-BN-ReLU, then global average pooling. Output: (N, widths[-1]).
    """

    def __init__(self, in_channels: int, widths: list[int]):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            layers += [nn.Conv2d(c, w, 3, stride, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            if i > 0:
                # a second conv per downsampled stage: more capacity at small cost
                layers += [nn.Conv2d(w, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            c = w
        self.features = nn.Sequential(*layers)
        self.out_dim = c

    def forward(self, x: Tensor) -> Tensor:
        return F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)  # (N, C)


def use_channels_last(setting: str, device_type: str, backbone: str) -> bool:
    """Whether the model and its image batches use the channels_last memory format.

    ``setting`` is the config's ``channels_last`` ("auto", "on", "off"). "auto"
    means on a GPU (bf16 tensor-core convolutions want NHWC) and off on a CPU.

    On a CPU, "on" makes the small ``convnet``'s training step 1.25-1.3x and
    its eval feature extraction about 1.6x faster (oneDNN's NHWC kernels, one
    thread, `cpu` preset); for the ResNets it was mixed (0.93x at 28 px, 1.2x
    at 64 px). It changes no maths, only the order of the floating-point sums
    inside a convolution: outputs agree with NCHW to float rounding
    (tests/test_speed.py), not bit for bit, and a run's trajectory then drifts
    like any change of summation order. "auto" keeps NCHW on a CPU so that the
    default changes no result of the studies measured so far; set
    ``channels_last: on`` for the speed.
    """
    if setting == "off":
        return False
    if setting == "on":
        return True
    return device_type == "cuda"


def _torchvision_resnet(name: str, in_channels: int, small_images: bool) -> nn.Module:
    import torchvision

    net = getattr(torchvision.models, name)(weights=None)
    if small_images:
        # CIFAR-style stem: 3x3 stride-1 conv, no max-pool (32 px inputs keep their detail)
        net.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
    elif in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    net.out_dim = net.fc.in_features
    net.fc = nn.Identity()
    return net


def build_backbone(name: str, in_channels: int, widths: list[int], image_size: int) -> nn.Module:
    if name == "convnet":
        return ConvNet(in_channels, widths)
    if name == "resnet18":
        return _torchvision_resnet("resnet18", in_channels, small_images=image_size <= 64)
    if name == "resnet50":
        return _torchvision_resnet("resnet50", in_channels, small_images=image_size <= 64)
    raise ValueError(f"unknown backbone {name!r}")  # the config schema rejects it first


class Encoder(nn.Module):
    """Backbone + MoCo v2 neck (Linear-ReLU-Linear to ``feat_dim``)."""

    def __init__(self, backbone: nn.Module, feat_dim: int, hidden_dim: int | None):
        super().__init__()
        self.backbone = backbone
        dim = backbone.out_dim
        hidden = hidden_dim or dim
        self.neck = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, feat_dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.neck(self.backbone(x))  # (N, feat_dim), not normalised


class MoCo(nn.Module):
    """Query encoder and its momentum (key) encoder."""

    def __init__(self, encoder: Encoder, momentum: float):
        super().__init__()
        self.encoder_q = encoder
        self.encoder_k = copy.deepcopy(encoder)
        for p in self.encoder_k.parameters():
            p.requires_grad_(False)
        self.momentum = momentum

    @torch.no_grad()
    def momentum_update(self) -> None:
        """k <- m k + (1 - m) q, on parameters (buffers are the key's own BN stats)."""
        q_params = list(self.encoder_q.parameters())
        k_params = list(self.encoder_k.parameters())
        torch._foreach_mul_(k_params, self.momentum)
        torch._foreach_add_(k_params, q_params, alpha=1.0 - self.momentum)


class KeyQueue:
    """FIFO queue of L2-normalised keys: the intra branch's negatives.

    ``keys``: (size, dim). ``ptr`` is the next row to overwrite. A batch that
    runs past the end wraps around to row 0 (no need for size % batch == 0,
    unlike the reference). Initialised with random unit vectors, as MoCo does.
    ``ids``: (size,) the image index of each key (-1: an initial random key),
    read only by the measurements of study/train/mechanism.py. Saved in
    checkpoints through ``state_dict``.
    """

    def __init__(self, size: int, dim: int, generator: torch.Generator | None = None, device=None):
        self.size = size
        self.keys = F.normalize(torch.randn(size, dim, generator=generator), dim=1).to(device)  # (K, d)
        self.ids = torch.full((size,), -1, dtype=torch.long, device=device)  # (K,)
        self.ptr = 0

    @torch.no_grad()
    def enqueue(self, keys: Tensor, ids: Tensor | None = None) -> None:
        """keys: (M, d), normalised; ids: (M,) their images (None: -1). If M > size only the last
        ``size`` are kept."""
        keys = keys.detach()[-self.size:]
        ids = (torch.full((keys.shape[0],), -1, dtype=torch.long, device=self.ids.device) if ids is None
               else ids[-self.size:].to(self.ids.device, torch.long))
        m = keys.shape[0]
        end = self.ptr + m
        if end <= self.size:
            self.keys[self.ptr:end] = keys
            self.ids[self.ptr:end] = ids
        else:
            first = self.size - self.ptr
            self.keys[self.ptr:] = keys[:first]
            self.keys[: m - first] = keys[first:]
            self.ids[self.ptr:] = ids[:first]
            self.ids[: m - first] = ids[first:]
        self.ptr = end % self.size

    def state_dict(self) -> dict:
        return {"keys": self.keys.clone(), "ptr": self.ptr, "ids": self.ids.clone()}

    def load_state_dict(self, sd: dict) -> None:
        self.keys.copy_(sd["keys"])
        self.ptr = int(sd["ptr"])
        # a checkpoint of before the ids were kept: unknown images (the measurements skip them)
        if "ids" in sd:
            self.ids.copy_(sd["ids"])
        else:
            self.ids.fill_(-1)
