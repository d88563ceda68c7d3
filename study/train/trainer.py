"""The training loop around the method (:class:`study.method.interclr.InterCLR`).

:class:`Trainer` runs one configuration end to end: it picks the data source,
builds the method unit through the method registry (study/method/registry.py; MoCo v2
is InterCLR's unit with its inter branch off), and
keeps the loop, the learning-rate schedule, the optimizer, the random streams,
the per-epoch evaluation, atomic checkpoints and resume. It imports neither Ray
nor MLflow: per-epoch metrics go to an optional callback, to which the
scheduler and the tracking plug in.

Randomness: one generator per purpose, each seeded from (seed, purpose)
(:class:`Generators`), so that
- common random numbers hold across a study's levels: for one seed, every
  level sees the same batch order, the same augmented views, the same
  shuffle-BN permutations and the same initial weights and queue, whatever
  its inter-branch settings (their draws come from other streams);
- a resumed run is bitwise equal to an uninterrupted one (on the CPU): every
  generator is saved in every checkpoint;
- DDP matches one process: the shared streams hold the same state on every
  rank and draw for the global batch.
The batch order comes from (seed, epoch) alone.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from study.core.canonical import canonical_config
from study.core.config import POOL_SAMPLINGS, TrainConfig, validate_against_data
from study.data.augment import AugmentConfig, TwoViewAugment
from study.data.datasets import ImageData, epoch_batches, load_dataset, mix_seed
from study.data.sources import FolderSource, MemorySource
from study.method.model import Encoder, build_backbone, split_batchnorm, use_channels_last
from study.method.registry import load
from study.train import checkpoint as ckpt
from study.train import distributed as dist
from study.train.evaluation import Evaluator, FeatureMemo, similarity_stats
from study.train.mechanism import MechanismCounts, class_histogram, classes_of
from study.train.protocols import lowshot_top1, semisup_top1, transfer_top1
from study.method.registry import METHODS

EpochCallback = Callable[[int, dict, Optional[Path]], None]

# negatives' cosines kept per iteration for the epoch's similarity statistics
_NEG_STATS_PER_STEP = 4096


class Generators:
    """The run's random streams, one per purpose, each seeded by ``mix_seed(seed, purpose)``.

    - ``views`` (shared by the ranks): augmentation parameters of the global
      batch, the shuffle-BN permutation and the queue's initial keys;
    - ``inter`` (shared): positives, candidate sets, k-means seeding and the
      small-cluster re-seeding;
    - ``negatives`` (per rank): the per-query negative draws and the sampled
      negatives kept for the similarity statistics.
    """

    PURPOSES = ("views", "inter", "negatives")

    def __init__(self, seed: int, rank: int, device: torch.device):
        self.views = torch.Generator().manual_seed(self.seed_of(seed, "views"))
        self.inter = torch.Generator().manual_seed(self.seed_of(seed, "inter"))
        self.negatives = torch.Generator(device=device).manual_seed(self.seed_of(seed, "negatives", rank))

    @staticmethod
    def seed_of(seed: int, purpose: str, rank: int = 0) -> int:
        """``mix_seed(seed, tag(purpose), rank)``; a tag (the name's bytes, > 2^32) never equals an epoch."""
        return mix_seed(seed, int.from_bytes(purpose.encode(), "big"), rank)

    def state_dict(self) -> dict:
        return {name: getattr(self, name).get_state() for name in self.PURPOSES}

    def load_state_dict(self, state: dict) -> None:
        for name in self.PURPOSES:
            getattr(self, name).set_state(state[name])


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def cosine_lr(base_lr: float, step: int, total_steps: int) -> float:
    """Cosine schedule from base_lr to 0 over total_steps (per iteration)."""
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(1, total_steps)))


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class EpochAccumulator:
    """Sums over one epoch's iterations, turned into metrics at its end."""

    loss: float = 0.0
    loss_intra: float = 0.0
    loss_inter: float = 0.0
    pos_sim: float = 0.0
    steps: int = 0
    inter_steps: int = 0
    pairs: int = 0
    neg_sims: list = field(default_factory=list)
    mechanism: MechanismCounts | None = None  # None: a dataset without labels
    change_ratio: float = 0.0
    reseeded: int = 0
    starved: int = 0
    queries: int = 0

    def metrics(self) -> dict:
        out = {
            "loss": self.loss / max(1, self.steps),
            "loss_intra": self.loss_intra / max(1, self.steps),
        }
        if self.inter_steps:
            out["loss_inter"] = self.loss_inter / self.inter_steps
            out["pos_sim_mean"] = self.pos_sim / self.inter_steps
            out["batch_change_ratio"] = self.change_ratio / self.inter_steps
            out["clusters_reseeded"] = self.reseeded
            # share of queries whose labels left too few different-label entries (degenerate data)
            out["starved_query_ratio"] = self.starved / max(1, self.queries)
        if self.neg_sims:
            out.update(similarity_stats(torch.cat(self.neg_sims), prefix="neg_sim"))
        if self.mechanism is not None:
            out.update(self.mechanism.metrics())
        return out


class Trainer:
    """Train one run. ``run()`` returns the final metrics (also in final.json)."""

    def __init__(
        self,
        cfg: TrainConfig,
        out_dir: str | Path | None = None,
        *,
        callback: EpochCallback | None = None,
        data: ImageData | None = None,
        log: Callable[[str], None] | None = None,
    ):
        self.cfg = cfg
        self.out_dir = Path(out_dir).resolve() if out_dir is not None else None
        self.callback = callback
        self.log = log or (lambda msg: print(msg, flush=True))
        self.device = resolve_device(cfg.device)
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        dist.init_from_env(self.device)
        self.rank, self.world = dist.rank(), dist.world_size()
        if cfg.batch_size % self.world:
            from study.core.errors import UserError

            raise UserError(f"batch_size {cfg.batch_size} must be divisible by the {self.world} processes",
                            key="batch_size")
        if data is not None:
            self.source = MemorySource(data)
        elif cfg.stream:
            self.source = FolderSource(cfg.data_root, cfg.image_size, (cfg.crop_scale_min, 1.0), cfg.seed,
                                       cfg.loader_workers)
        else:
            self.source = MemorySource(load_dataset(
                cfg.dataset, root=cfg.data_root, train_subset=cfg.train_subset,
                # the subsets are fixed (seed 0): every run of a study sees the same images, and
                # the run's seed is the training randomness alone
                test_subset=cfg.test_subset, image_size=cfg.image_size, seed=0))
        validate_against_data(cfg, self.num_train)
        self._build()

    # ------------------------------------------------------------------ setup
    @property
    def num_train(self) -> int:
        return self.source.num_train

    @property
    def image_size(self) -> int:
        return self.cfg.image_size or self.source.native_size

    @property
    def use_amp(self) -> bool:
        return self.device.type == "cuda" and self.cfg.amp in ("auto", "bf16")

    def _build(self) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)  # model initialisation
        in_ch = self.source.channels
        encoder = Encoder(build_backbone(cfg.backbone, in_ch, cfg.widths, self.image_size),
                          cfg.feat_dim, cfg.hidden_dim)
        split_batchnorm(encoder, cfg.bn_splits)
        self.gens = Generators(cfg.seed, self.rank, self.device)
        # the method's unit, from its builder in study/method/registry.py (MoCo v2: InterCLR, inter off)
        build = load(METHODS[cfg.method].build)
        self.method = build(cfg, encoder, num_samples=self.num_train, queue_generator=self.gens.views,
                            device=self.device, gather=dist.all_gather_cat, rank=self.rank)
        # the method's encoders by their name (evaluation, the optimizer); its queue, bank and labels are read
        # through it (properties below): the method owns its state, checkpoints take it whole
        self.moco = self.method.moco
        self.channels_last = use_channels_last(cfg.channels_last, self.device.type, cfg.backbone)
        if self.channels_last:
            self.moco.to(memory_format=torch.channels_last)
        self.train_model = self.moco.encoder_q
        if self.world > 1:
            self.train_model = torch.nn.parallel.DistributedDataParallel(
                self.moco.encoder_q, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.optimizer = torch.optim.SGD(self.moco.encoder_q.parameters(), lr=cfg.lr,
                                         momentum=cfg.sgd_momentum, weight_decay=cfg.weight_decay)
        aug_cfg = AugmentConfig(
            out_size=self.image_size, crop_scale=(cfg.crop_scale_min, 1.0), jitter_p=cfg.jitter_p,
            blur_p=cfg.blur_p, mean=self.source.mean, std=self.source.std)
        self.evaluator = Evaluator(cfg, self.source, image_size=self.image_size, device=self.device,
                                   use_amp=self.use_amp, world=self.world, rank=self.rank,
                                   channels_last=self.channels_last,
                                   model_state=lambda: FeatureMemo.model_state(self.step, self.moco))
        self.augment = TwoViewAugment(aug_cfg)
        # streamed views arrive cropped from the workers: only the photometric ops are left
        self.photometric = TwoViewAugment(replace(aug_cfg, crop_scale=(1.0, 1.0)))
        self.steps_per_epoch = self.num_train // cfg.batch_size
        if cfg.max_steps_per_epoch:
            self.steps_per_epoch = min(self.steps_per_epoch, cfg.max_steps_per_epoch)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.epoch = 0  # epochs completed
        self.step = 0  # iterations completed
        self.history: list[dict] = []
        self.prev_labels: Tensor | None = None
        self._warned_starved = False
        # the true classes, for the mechanism metrics only (study/train/mechanism.py): training never reads them
        truth = self.source.train_labels.long()
        self.truth = truth.to(self.device) if bool((truth >= 0).any()) else None  # (N,)
        self.class_prior = class_histogram(truth, self.source.num_classes) if self.truth is not None else None

    @property
    def queue(self):
        return self.method.queue

    @property
    def bank(self):
        return self.method.bank

    @property
    def plabels(self):
        return self.method.plabels

    def describe(self) -> str:
        """Derived numbers printed at start-up (nanoGPT-style)."""
        cfg = self.cfg
        n_params = sum(p.numel() for p in self.moco.encoder_q.parameters())
        parts = [
            f"device {self.device} x{self.world}", f"threads {torch.get_num_threads()}",
            f"{cfg.dataset}: {self.num_train} train / {self.source.num_test} test "
            f"at {self.image_size}px", f"{cfg.backbone} {n_params / 1e6:.2f}M params",
            f"{self.steps_per_epoch} steps/epoch x {cfg.epochs} epochs, global batch {cfg.batch_size}",
            f"intra negatives {cfg.queue_size}",
        ]
        if cfg.inter_enabled:
            size = cfg.search_size(self.num_train)
            search = "exact" if size >= self.num_train else f"{size} candidates"
            pool = (f", pool {cfg.effective_pool(self.num_train)} = "
                    f"{cfg.effective_pool(self.num_train) / cfg.neg_num:.1f}x neg_num"
                    if cfg.sampling in POOL_SAMPLINGS else "")
            parts.append(f"inter: {cfg.labels} labels k={cfg.num_clusters}, {cfg.sampling} "
                         f"{cfg.neg_num} negatives/query ({search}{pool}), "
                         f"{cfg.margin_type} margin {cfg.margin}, data order {cfg.data_order}")
        else:
            parts.append("inter branch off (MoCo v2)")
        if self.truth is None:
            parts.append("no class labels: the mechanism metrics (false negatives, positive precision) are skipped")
        return "; ".join(parts)

    # -------------------------------------------------------------- evaluation
    def _eval_features(self, test_idx: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The query backbone's kNN features (:meth:`Evaluator.eval_features`)."""
        return self.evaluator.eval_features(self.moco.encoder_q, test_idx)

    # ------------------------------------------------------- inter-image state
    def _train_features(self) -> Tensor:
        """``(B, d)`` L2-normalised eval-mode query-encoder features of the whole training set."""
        return F.normalize(self.evaluator.features(self.moco.encoder_q, "train", None, neck=True), dim=1)

    def init_inter_state(self) -> None:
        """Fill the bank with the training set's features and cluster them (both label modes).

        The reference's initialisation: bank = features, labels = k-means,
        centroids = member means of those labels over the bank. Small clusters
        are left to the first iteration's upkeep, as in the reference. The
        ranks share the feature extraction (:meth:`Evaluator.features`); every rank then
        runs the same k-means with the shared generator, so all hold one state.
        """
        self.method.init_state(self._train_features(), self.gens.inter)

    def recluster(self) -> None:
        """Offline re-clustering: k-means of freshly extracted features replaces the labels only.

        The reference's ``assign_label``: the bank keeps the features written
        during training; the centroids become the new labels' member means
        over that bank (offline sampling does not use them).
        """
        self.method.recluster(self._train_features(), self.gens.inter)

    def label_metrics(self) -> dict:
        if self.plabels is None:
            return {}
        labels = self.plabels.labels.cpu()
        out = self.evaluator.label_metrics(labels, self.prev_labels)
        self.prev_labels = labels.clone()
        return out

    # ------------------------------------------------------------- training
    def _batch_views(self, batch_idx: Tensor, data) -> tuple[Tensor, Tensor, Tensor]:
        """This rank's two views and indices for one global batch (indices on the CPU).

        In memory, ``data`` is the global batch's images: every rank augments all of
        them with the shared generator and keeps its slice, so W processes see exactly
        the views one process would. Streamed, ``data`` is this rank's two views,
        cropped by the workers; the photometric ops are applied here.
        """
        n = batch_idx.shape[0] // self.world
        lo, hi = self.rank * n, (self.rank + 1) * n
        if self.source.streaming:
            u1, u2 = data  # (n, C, S, S) uint8 each
            v1 = self.photometric.one_view(u1.to(self.device, non_blocking=True), self.gens.views)
            v2 = self.photometric.one_view(u2.to(self.device, non_blocking=True), self.gens.views)
        else:
            images = data.to(self.device, non_blocking=True)  # (B, C, H, W) uint8
            v1, v2 = self.augment(images, self.gens.views)  # (B, C, S, S) each
            v1, v2 = v1[lo:hi], v2[lo:hi]
        if self.channels_last:
            v1 = v1.contiguous(memory_format=torch.channels_last)
            v2 = v2.contiguous(memory_format=torch.channels_last)
        return v1, v2, batch_idx[lo:hi]

    @torch.no_grad()
    def _keys(self, v2: Tensor) -> Tensor:
        """Key features (n, d), normalised, through shuffle-BN when BN sees >1 group."""
        self.moco.momentum_update()
        shuffle = self.world > 1 or self.cfg.bn_splits > 1
        if shuffle:
            v2, inverse = dist.shuffle_batch(v2, self.gens.views)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_amp):
            k = self.moco.encoder_k(v2)
        k = F.normalize(k.float(), dim=1)
        if shuffle:
            k = dist.unshuffle_batch(k, inverse)
        return k

    def train_step(self, batch_idx: Tensor, data, acc: EpochAccumulator) -> None:
        cfg = self.cfg
        lr = cosine_lr(cfg.lr, self.step, self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        v1, v2, idx = self._batch_views(batch_idx, data)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_amp):
            q = self.train_model(v1)
        q = F.normalize(q.float(), dim=1)  # (n, d)
        k = self._keys(v2)  # (n, d)
        inter_on = cfg.inter_enabled and self.epoch >= cfg.warmup_epochs
        idx_dev = idx.to(self.device)
        out = self.method.loss(q, k, idx_dev, inter_on=inter_on, shared=self.gens.inter, own=self.gens.negatives)
        loss, loss_intra, sample = out.loss, out.intra, out.sample
        if acc.mechanism is not None:  # the negatives this step used: the queue before the enqueue
            query_cls = classes_of(self.truth, idx_dev)  # (n,)
            acc.mechanism.add_queue(query_cls, classes_of(self.truth, self.method.queue.ids))
            if inter_on:
                acc.mechanism.add_inter(query_cls, classes_of(self.truth, sample.neg_idx),
                                        classes_of(self.truth, sample.pos_idx))

        if not torch.isfinite(loss):
            raise TrainingDiverged(f"loss is {loss.item()} at epoch {self.epoch + 1}, step {self.step + 1}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

        # queue, bank and labels from the whole global batch's keys, identical on every rank
        changed, reseeded = self.method.after_step(k, idx_dev, self.step + 1, self.gens.inter)
        acc.change_ratio += changed
        acc.reseeded += reseeded

        self.step += 1
        acc.steps += 1
        acc.pairs += batch_idx.shape[0]
        # logged losses are global-batch means (one all-reduce; a no-op in one process)
        logged = torch.stack([loss.detach(), loss_intra.detach(),
                              out.inter.detach() if inter_on else torch.zeros((), device=loss.device)])
        logged = dist.all_reduce_mean(logged).tolist()
        acc.loss += logged[0]
        acc.loss_intra += logged[1]
        if inter_on:
            acc.inter_steps += 1
            acc.loss_inter += logged[2]
            acc.queries += idx.shape[0]
            acc.starved += sample.starved
            if sample.starved and not self._warned_starved and self.rank == 0:
                self._warned_starved = True
                self.log(f"warning: at epoch {self.epoch + 1}, step {self.step}, {sample.starved} of "
                         f"{idx.shape[0]} queries had fewer different-label bank entries than they need: "
                         "the pseudo-labels are degenerate (e.g. identical images). Their negatives are drawn "
                         "ignoring labels; metric 'starved_query_ratio' counts them.")
            acc.pos_sim += float(sample.pos_cos.detach().mean())
            neg = sample.neg_cos.detach().flatten()
            if neg.numel() > _NEG_STATS_PER_STEP:
                pick = torch.randint(neg.numel(), (_NEG_STATS_PER_STEP,), generator=self.gens.negatives,
                                     device=neg.device)
                neg = neg[pick]
            acc.neg_sims.append(neg.float().cpu())

    def train_epoch(self) -> dict:
        cfg = self.cfg
        self.evaluator.memo.clear()  # training changes the weights: free the last evaluation's features
        if cfg.inter_enabled and cfg.labels == "offline" and self.epoch > 0 \
                and self.epoch % cfg.recluster_every == 0:
            self.recluster()  # offline labels: fixed between re-clusterings
        self.moco.train()
        acc = EpochAccumulator(mechanism=MechanismCounts(self.class_prior) if self.truth is not None else None)
        batches = epoch_batches(self.num_train, cfg.batch_size, cfg.seed, self.epoch,
                                replacement=cfg.data_order == "replacement")[: self.steps_per_epoch]
        bar = None
        if cfg.progress and self.rank == 0 and sys.stderr.isatty():
            from tqdm import tqdm

            bar = tqdm(total=len(batches), desc=f"epoch {self.epoch + 1}/{cfg.epochs}", leave=False)
        start = time.perf_counter()
        if self.source.streaming:  # each rank reads only its slice of every global batch
            n = cfg.batch_size // self.world
            batch_data = self.source.train_batches([b[self.rank * n:(self.rank + 1) * n] for b in batches],
                                                   self.epoch)
        else:
            batch_data = self.source.train_batches(batches, self.epoch)
        for batch_idx, data in zip(batches, batch_data):
            self.train_step(batch_idx, data, acc)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{acc.loss / acc.steps:.3f}")
        if bar is not None:
            bar.close()
        elapsed = time.perf_counter() - start
        metrics = acc.metrics()
        metrics["lr"] = cosine_lr(cfg.lr, self.step, self.total_steps)
        metrics["epoch_time"] = elapsed
        metrics["pairs_per_s"] = acc.pairs / max(elapsed, 1e-9)
        return metrics

    def evaluate(self, epoch: int) -> dict:
        out: dict = {}
        if epoch % self.cfg.eval_every == 0 or epoch == self.cfg.epochs:
            out["knn_top1"] = self.evaluator.monitor_knn(self.moco.encoder_q)
        out.update(self.label_metrics())
        return out

    # ---------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        return {
            "config": self.cfg.flat(),
            "epoch": self.epoch,
            "step": self.step,
            **self.method.state_dict(),  # model, queue, bank, labels
            "optimizer": self.optimizer.state_dict(),
            "prev_labels": self.prev_labels,
            "generators": self.gens.state_dict(),
            "history": self.history,
        }

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.evaluator.memo.clear()
        self.method.load_state_dict(state)
        self.optimizer.load_state_dict(state["optimizer"])
        self.prev_labels = state["prev_labels"]
        self.gens.load_state_dict(state["generators"])
        self.history = list(state["history"])

    def _check_resumable(self, state: dict) -> None:
        from study.core.errors import UserError

        # keys that cannot affect the run (execution only, or unused by this method) may differ
        saved, now = canonical_config(state["config"]), canonical_config(self.cfg.flat())
        diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
        if diff:
            raise UserError(
                f"holds a run with a different config (differs in: {', '.join(diff)}); "
                "use another --out directory", source=str(self.out_dir))

    def save_checkpoint(self) -> None:
        if self.out_dir is None or self.rank != 0:
            return
        # the history first: metrics.jsonl always holds every epoch the checkpoint holds, so a
        # caller that reports it again on resume (cluster.tune_run.TrialReporter) misses none
        lines = "".join(json.dumps(m) + "\n" for m in self.history)
        ckpt.atomic_write_text(self.out_dir / "metrics.jsonl", lines)
        ckpt.save(self.state_dict(), self.out_dir)

    # ------------------------------------------------------------------ run
    def _final(self) -> dict:
        cfg = self.cfg
        final = {k: v for k, v in self.history[-1].items() if k != "epoch"}
        final["knn_top1_epoch0"] = self.history[0].get("knn_top1")
        final["knn_top1_monitor"] = final.pop("knn_top1", None)
        # final metrics on every loaded test image (the monitor may use a subset): at 73 %
        # a 2,000-image test set has a binomial standard error of 1.0 point, 10,000 of 0.44
        feats = self._eval_features(None)
        final["knn_top1"] = self.evaluator.knn(feats)
        if cfg.linear_epochs > 0:
            final["linear_top1"] = self.evaluator.probe(self.moco.encoder_q, feats)
        final.update(self._protocols(feats))
        final["epochs"] = self.epoch
        final["steps"] = self.step
        return final

    def _protocols(self, feats: tuple[Tensor, Tensor, Tensor, Tensor]) -> dict:
        """The paper's other protocols the config names (study/train/protocols.py), with their seconds."""
        cfg, out = self.cfg, {}
        if cfg.lowshot_shots:
            start = time.perf_counter()
            out.update(lowshot_top1(*feats, self.source.num_classes, cfg.lowshot_shots, cfg.lowshot_draws, cfg.seed))
            out["lowshot_seconds"] = time.perf_counter() - start
        if cfg.semisup_fractions:
            start = time.perf_counter()
            out.update(semisup_top1(self.moco.encoder_q.backbone, self.source, cfg.semisup_fractions,
                                    num_classes=self.source.num_classes, image_size=self.image_size, seed=cfg.seed,
                                    steps=cfg.semisup_steps, device=self.device))
            out["semisup_seconds"] = time.perf_counter() - start
        if cfg.transfer_dataset is not None:
            start = time.perf_counter()
            out.update(transfer_top1(self.moco.encoder_q.backbone, cfg, in_channels=self.source.channels,
                                     image_size=self.image_size, device=self.device))
            out["transfer_seconds"] = time.perf_counter() - start
        return out

    def run(self) -> dict:
        """Train (or resume) to the end; return the final metrics."""
        if self.out_dir is not None:
            final_path = self.out_dir / "final.json"
            state = ckpt.load_latest(self.out_dir, map_location=self.device)
            if state is not None:
                self._check_resumable(state)
                finished = final_path.exists() and state["epoch"] >= self.cfg.epochs
                if finished:
                    self.history = list(state["history"])
                else:
                    self.load_state_dict(state)
                if finished:
                    self.log(f"{self.out_dir}: already finished")
                    return json.loads(final_path.read_text())
                self.log(f"resuming from epoch {self.epoch} ({self.out_dir})")
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if self.rank == 0:
                ckpt.atomic_write_text(self.out_dir / "config.json", json.dumps(self.cfg.flat(), indent=2))
        if self.rank == 0:
            self.log(self.describe())
        if self.epoch == 0 and not self.history:
            if self.cfg.inter_enabled:
                self.init_inter_state()
            m = {"epoch": 0, **self.evaluate(0)}
            self._record(m)
        while self.epoch < self.cfg.epochs:
            m = self.train_epoch()
            self.epoch += 1
            m = {"epoch": self.epoch, **m, **self.evaluate(self.epoch)}
            self._record(m)
        final = self._final()
        if self.out_dir is not None and self.rank == 0:
            ckpt.atomic_write_text(self.out_dir / "final.json", json.dumps(final, indent=2))
        if self.rank == 0:
            self.log("final: " + _fmt(final))
        return final

    def _record(self, m: dict) -> None:
        self.history.append(m)
        self.save_checkpoint()
        if self.rank == 0:
            self.log(_fmt(m))
            if self.callback is not None:
                self.callback(m["epoch"], m, self.out_dir)


def _fmt(m: dict) -> str:
    # the console line: a few metrics for the eye (every metric reaches metrics.jsonl and MLflow)
    keys = ["epoch", "loss", "loss_intra", "loss_inter", "knn_top1", "linear_top1", "nmi",
            "label_change_ratio", "neg_sim_mean", "epoch_time", "pairs_per_s"]
    parts = []
    for key in keys:
        if key in m and m[key] is not None:
            v = m[key]
            parts.append(f"{key} {v:.4g}" if isinstance(v, float) else f"{key} {v}")
    return " | ".join(parts)

