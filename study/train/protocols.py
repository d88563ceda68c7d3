"""The paper's other benchmark protocols, scaled to a run's data (final metrics; Sec. 5 of the paper).

Besides kNN and the linear probe, the paper evaluates a representation by low-shot classification
(the VOC07 low-shot SVM, k = 1 ... 96 labelled images per class) and semi-supervised fine-tuning on 1 %
and 10 % of the ImageNet labels. Here, on the run's own dataset:

- **low-shot** (:func:`lowshot_top1`): a linear softmax probe (:func:`linear_probe_top1`) on the frozen
  backbone features of k labelled images per class, k in ``lowshot_shots``, mean top-1 over
  ``lowshot_draws`` draws of the labelled images. A departure from the paper's SVM, for one probe
  throughout; the features are standardised with the statistics of every training image (unlabelled
  images are what self-supervision has: only the labels are scarce). The draws come from the kNN's
  training images with a generator seeded by (seed, k, draw): every cell of a seed sees the same
  labelled images (common random numbers), so a paired comparison compares representations only.
- **transfer** (:func:`transfer_top1`): the linear probe on the frozen backbone features of another
  dataset (``transfer_dataset``, e.g. MNIST for a Fashion-MNIST run: the paper's transfer protocol at
  our scale), ``transfer_subset`` of its training images (stratified, seed 0: the same for every cell)
  and all its test images, each normalised by its own training statistics; a channel count other
  than the encoder's is matched by averaging the channels or repeating the one.
- **semi-supervised** (:func:`finetune_top1`): the whole backbone, copied (the trained encoder is never
  touched), fine-tuned with a linear head on a class-stratified ``fraction`` of the training images
  (seeded by the seed: the same images for every cell of a seed), then evaluated on every loaded test
  image. The recipe is fixed and small (:class:`FinetuneRecipe`): SGD with Nesterov momentum 0.9,
  learning rate 0.01 for the backbone and 0.1 for the head (the head starts at zero), cosine decay to 0,
  no weight decay, batches of 64 with replacement, ``semisup_steps`` steps, no augmentation.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from study.core.errors import UserError
from study.core.names import lowshot_metric, semisup_metric
from study.data.augment import eval_preprocess
from study.data.common import mix_seed, stratified_subset
from study.train.evaluation import linear_probe_top1


def shot_indices(labels: Tensor, shots: int, seed: int, draw: int) -> Tensor:
    """``shots`` indices of each class of ``labels`` (n,) (-1: unlabelled, never drawn), drawn uniformly
    without replacement by a generator seeded by (seed, shots, draw). (C * shots,) int64, sorted.

    Raises UserError (key ``lowshot_shots``) when a class holds fewer than ``shots`` images.
    """
    g = torch.Generator().manual_seed(mix_seed(seed, shots, draw))
    picked = []
    for c in torch.unique(labels[labels >= 0]).tolist():
        members = torch.nonzero(labels == c).flatten()  # (n_c,)
        if members.numel() < shots:
            raise UserError(f"{shots} labelled images per class, but class {c} has {members.numel()} among the "
                            "images of the low-shot draws (the kNN's training images: knn_train_subset)",
                            key="lowshot_shots")
        picked.append(members[torch.randperm(members.numel(), generator=g)[:shots]])
    return torch.cat(picked).sort().values


def lowshot_top1(train_feats: Tensor, train_labels: Tensor, test_feats: Tensor, test_labels: Tensor,
                 num_classes: int, shots, draws: int, seed: int, epochs: int = 100) -> dict[str, float]:
    """Low-shot linear top-1 per k of ``shots``: ``{lowshot_k{k}_top1: mean over draws}``.

    Args:
        train_feats: (n, D) frozen features of the images the labelled ones are drawn from; train_labels: (n,).
        test_feats: (m, D); test_labels: (m,).
        shots: the k's; draws: labelled subsets per k; seed: the run's seed (the draws depend on it alone).
    """
    mean = train_feats.float().mean(dim=0)  # (D,)
    std = train_feats.float().std(dim=0, correction=0).clamp(min=1e-6)  # (D,)
    x, t = (train_feats.float() - mean) / std, (test_feats.float() - mean) / std
    out = {}
    for k in shots:
        accs = []
        for d in range(draws):
            idx = shot_indices(train_labels.cpu(), k, seed, d).to(x.device)
            g = torch.Generator().manual_seed(mix_seed(seed, k, d, 1))
            accs.append(linear_probe_top1(x[idx], train_labels[idx], t, test_labels, num_classes, epochs=epochs,
                                          generator=g, standardise=False))
        out[lowshot_metric(k)] = sum(accs) / len(accs)
    return out


@dataclass(frozen=True)
class FinetuneRecipe:
    """The fixed recipe of the semi-supervised fine-tune (module docstring)."""

    steps: int = 100
    batch_size: int = 64
    backbone_lr: float = 0.01
    head_lr: float = 0.1
    momentum: float = 0.9


def finetune_top1(backbone: torch.nn.Module, images: Tensor, labels: Tensor, test_batches, num_classes: int,
                  *, image_size: int, mean, std, seed: int, device: torch.device,
                  recipe: FinetuneRecipe = FinetuneRecipe()) -> float:
    """Top-1 on the test images after fine-tuning a copy of ``backbone`` with a linear head on ``images``
    (n, C, H, W) uint8 with ``labels`` (n,). ``test_batches``: an iterable of (images uint8, labels) of the
    test split. ``backbone`` itself is left as it was (a copy is trained)."""
    net = copy.deepcopy(backbone).to(device)
    net.train()
    x = eval_preprocess(images.to(device), image_size, mean, std)  # (n, C, S, S)
    y = labels.to(device, torch.long)
    with torch.no_grad():
        dim = net(x[:2]).shape[1]
    head = torch.nn.Linear(dim, num_classes).to(device)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    opt = torch.optim.SGD([{"params": net.parameters(), "lr": recipe.backbone_lr},
                           {"params": head.parameters(), "lr": recipe.head_lr}],
                          momentum=recipe.momentum, nesterov=True)
    base = [recipe.backbone_lr, recipe.head_lr]
    g = torch.Generator().manual_seed(mix_seed(seed, 31))
    for step in range(recipe.steps):
        scale = 0.5 * (1.0 + math.cos(math.pi * step / recipe.steps))
        for group, lr in zip(opt.param_groups, base):
            group["lr"] = lr * scale
        pick = torch.randint(x.shape[0], (recipe.batch_size,), generator=g).to(device)  # (b,) with replacement
        loss = F.cross_entropy(head(net(x[pick])), y[pick])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    net.eval()
    correct = total = 0
    with torch.no_grad():
        for test_images, test_y in test_batches:
            pred = head(net(eval_preprocess(test_images.to(device), image_size, mean, std))).argmax(dim=1)
            correct += int((pred == test_y.to(device)).sum())
            total += int(test_y.numel())
    return correct / max(1, total)


def transfer_top1(backbone, cfg, *, in_channels: int, image_size: int, device: torch.device) -> dict[str, float]:
    """``{transfer_<dataset>_top1: top-1}`` of the linear probe on ``cfg.transfer_dataset``'s frozen
    ``backbone`` features (module docstring); ``in_channels``: the encoder's input channels."""
    from study.core.names import transfer_metric
    from study.data.datasets import load_dataset

    data = load_dataset(cfg.transfer_dataset, train_subset=cfg.transfer_subset, seed=0)
    was = backbone.training
    backbone.eval()

    def feats(images: Tensor) -> Tensor:  # (N, D)
        out = []
        with torch.no_grad():
            for chunk in images.split(512):
                x = eval_preprocess(chunk.to(device), image_size, data.mean, data.std)  # (b, C', S, S)
                if x.shape[1] != in_channels:
                    x = x.mean(dim=1, keepdim=True).expand(-1, in_channels, -1, -1)
                out.append(backbone(x).float())
        return torch.cat(out)

    try:
        train_f, test_f = feats(data.train_images), feats(data.test_images)
    finally:
        backbone.train(was)
    g = torch.Generator().manual_seed(mix_seed(cfg.seed, 53))
    top1 = linear_probe_top1(train_f, data.train_labels.to(device), test_f, data.test_labels.to(device),
                             data.num_classes, epochs=cfg.linear_epochs, generator=g)
    return {transfer_metric(cfg.transfer_dataset): top1}


def semisup_indices(labels: Tensor, fraction: float, seed: int) -> Tensor:
    """A class-stratified ``fraction`` of the labelled training images (at least one), seeded by ``seed``
    alone: the same images for every cell of a seed. (n,) int64."""
    labelled = torch.nonzero(labels >= 0).flatten()
    n = max(1, round(fraction * labelled.numel()))
    return labelled[stratified_subset(labels[labelled], n, seed + 9173, key="semisup_fractions")]


def semisup_top1(backbone, source, fractions, *, num_classes: int, image_size: int, seed: int, steps: int,
                 device: torch.device) -> dict[str, float]:
    """``{semisup_{p}pct_top1: top-1}`` per label fraction (:func:`finetune_top1` on the source's data)."""
    out = {}
    for frac in fractions:
        idx = semisup_indices(source.train_labels, frac, seed)
        images = torch.cat(list(source.eval_batches("train", idx, 1024)))
        test = zip(source.eval_batches("test", None, 1024), source.test_labels.split(1024))
        out[semisup_metric(frac)] = finetune_top1(
            backbone, images, source.train_labels[idx], test, num_classes, image_size=image_size,
            mean=source.mean, std=source.std, seed=seed, device=device, recipe=FinetuneRecipe(steps=steps))
    return out
