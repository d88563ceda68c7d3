"""The resolved configuration of one training run, its presets and overrides.

One flat, strict, typed schema (pydantic): unknown keys are errors with a
"did you mean", values are checked for type and range at load, cross-field
invariants (``pool >= neg_num``, ...) are checked at load, not at step 800.
Flat on purpose: the study factors (``labels``, ``sampling``, ``margin_type``,
``margin``) are plain keys, so a study file, ``--set`` and the MLflow params
all use the same names.
"""

from __future__ import annotations

import difflib
import json
import os
from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from study.core.datasets import DATASETS
from study.core.errors import UserError
from study.core.names import LOWSHOT_SHOTS, SEMISUP_FRACTIONS, TRANSFER_DATASETS
from study.method.registry import MARGINS, METHODS, SAMPLERS
from study.method.sizes import scaled_pool

# The choices of the study's factors and of the data, derived from the registries, where each
# is named once (standard library only: loading a config imports no torch, so the CLI checks a
# study file in well under a second). Literal takes the names as a tuple at run time.
Method = Literal[tuple(METHODS)]  # study/method/registry.py
Sampling = Literal[tuple(SAMPLERS)]  # study/method/registry.py
MarginType = Literal[tuple(MARGINS)]  # study/method/registry.py
DatasetName = Literal[tuple(DATASETS)]  # study/core/datasets.py
POOL_SAMPLINGS = tuple(name for name, s in SAMPLERS.items() if s.uses_pool)  # the strategies that draw from a pool

# keys that change how a run is executed, not what it computes: they are not part of a
# study cell's identity (cell_id), and a run resumes whatever their values
EXECUTION_KEYS = ("progress", "threads", "device", "loader_workers")

# Training images of the built-in datasets (the memory bank's size without a subset),
# so that size invariants are checked at load; image folders are checked once scanned.
TRAIN_SIZES: dict[str, int] = {name: d.train_size for name, d in DATASETS.items() if d.train_size is not None}
LabelMode = Literal["online", "offline"]
# seeds are 0 .. 2^32 - 1: numpy's seed range, and an int64 in every store and table
MAX_SEED = 2**32 - 1
DEVICE_PATTERN = r"^(auto|cpu|cuda(:[0-9]+)?)$"


class TrainConfig(BaseModel):
    """Every setting of one run. Defaults are the paper's recipe where it applies."""

    # no inf/nan: `lr: .inf` or `margin: .nan` would pass every range check and fail at run time
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)

    # --- method: MoCo v2 is the same trainer with the inter branch off
    method: Method = "interclr"

    # --- data
    # the defaults are the paper's ImageNet recipe; the presets pick the data
    dataset: DatasetName = "imagefolder"
    data_root: Optional[str] = None
    train_subset: Optional[int] = Field(default=None, ge=1)
    test_subset: Optional[int] = Field(default=None, ge=1)  # test images loaded (final metrics); None: all
    # batch order: a permutation per epoch (every image once; our default, see README's
    # departures) or indices drawn with replacement (the reference's ImageNet sampler)
    data_order: Literal["permutation", "replacement"] = "permutation"
    image_size: Optional[int] = Field(default=None, ge=8)
    crop_scale_min: float = Field(default=0.2, gt=0.0, le=1.0)
    blur_p: float = Field(default=0.5, ge=0.0, le=1.0)
    jitter_p: float = Field(default=0.8, ge=0.0, le=1.0)
    loader_workers: int = Field(default=4, ge=0)
    # a streamable dataset (imagefolder) only: decode from disk in workers instead of loading into memory
    stream: bool = False

    # --- model (intra-image branch, MoCo v2)
    backbone: Literal["convnet", "resnet18", "resnet50"] = "resnet50"
    # the convnet's channels per stage (resnets ignore it): 1..4096 each
    widths: list[Annotated[int, Field(ge=1, le=4096)]] = Field(default_factory=lambda: [16, 32, 64], min_length=1,
                                                             max_length=16)
    feat_dim: int = Field(default=128, ge=1)
    hidden_dim: Optional[int] = Field(default=None, ge=1)  # None: the backbone's width
    queue_size: int = Field(default=65536, ge=1)
    key_momentum: float = Field(default=0.999, ge=0.0, le=1.0)
    temperature: float = Field(default=0.2, gt=0.0)
    bn_splits: int = Field(default=1, ge=1)  # emulate per-process BN of bn_splits processes
    intra_margin_type: MarginType = "none"
    intra_margin: float = 0.0

    # --- inter-image branch (the study's factors and their settings)
    labels: LabelMode = "online"
    sampling: Sampling = "semi-hard"
    neg_num: int = Field(default=16384, ge=1)
    pool: int = Field(default=128000, ge=1)
    neg_search: Literal["exact", "candidates"] = "exact"
    candidates: int = Field(default=65536, ge=1)
    margin_type: MarginType = "cosine"
    margin: float = -0.5
    num_clusters: int = Field(default=10000, ge=2)
    min_cluster: int = Field(default=20, ge=1)
    centroid_every: int = Field(default=10, ge=1)  # iterations (online)
    recluster_every: int = Field(default=10, ge=1)  # epochs (offline)
    kmeans_iters: int = Field(default=20, ge=1)
    bank_momentum: float = Field(default=1.0, gt=0.0, le=1.0)
    intra_weight: float = Field(default=0.75, ge=0.0)
    inter_weight: float = Field(default=0.25, ge=0.0)
    warmup_epochs: int = Field(default=0, ge=0)  # intra-only epochs

    # --- optimisation
    epochs: int = Field(default=200, ge=1)
    batch_size: int = Field(default=256, ge=2)
    lr: float = Field(default=0.03, gt=0.0)
    sgd_momentum: float = Field(default=0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(default=1e-4, ge=0.0)
    max_steps_per_epoch: Optional[int] = Field(default=None, ge=1)

    # --- evaluation
    eval_every: int = Field(default=1, ge=1)
    knn_k: int = Field(default=200, ge=1)
    knn_temperature: float = Field(default=0.07, gt=0.0)
    knn_train_subset: Optional[int] = Field(default=None, ge=1)
    # test images of the per-epoch kNN monitor (a fixed stratified subset; None: every
    # loaded test image). Final metrics always use every loaded test image.
    monitor_test_subset: Optional[int] = Field(default=None, ge=1)
    linear_epochs: int = Field(default=100, ge=0)  # 0: no linear probe
    # the paper's other protocols (study/train/protocols.py), as final metrics: low-shot probes with k
    # labelled images per class (each k of study.core.names.LOWSHOT_SHOTS), averaged over lowshot_draws
    # draws; fine-tuning on fractions of the labels (of SEMISUP_FRACTIONS) for semisup_steps steps
    lowshot_shots: list[int] = Field(default_factory=list)
    lowshot_draws: int = Field(default=3, ge=1)
    semisup_fractions: list[float] = Field(default_factory=list)
    semisup_steps: int = Field(default=100, ge=1)
    # the transfer protocol: a linear probe (linear_epochs, at least 1) on another dataset's frozen
    # features, transfer_subset of its training images (a stratified subset; null: all)
    transfer_dataset: Optional[Literal[TRANSFER_DATASETS]] = None
    transfer_subset: Optional[int] = Field(default=10000, ge=1)

    # --- runtime
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    # auto (a GPU when there is one), cpu, cuda or cuda:N
    device: str = Field(default="auto", pattern=DEVICE_PATTERN)
    threads: Optional[int] = Field(default=None, ge=1)
    amp: Literal["auto", "bf16", "off"] = "auto"
    channels_last: Literal["auto", "on", "off"] = "auto"
    progress: bool = True

    @model_validator(mode="after")
    def _check_invariants(self) -> "TrainConfig":
        if self.train_subset is not None and self.dataset in TRAIN_SIZES \
                and self.train_subset > TRAIN_SIZES[self.dataset]:
            raise ValueError(f"key 'train_subset': must be <= {TRAIN_SIZES[self.dataset]}, the size of "
                             f"{self.dataset}'s training split (got {self.train_subset})")
        bank = self.bank_size
        if bank is not None:  # the batch for every method; the bank's limits for the inter branch
            check_data_invariants(self, bank)
        if self.inter_enabled:
            if bank is None and self.sampling in POOL_SAMPLINGS and self.pool < self.neg_num:
                raise ValueError(
                    f"key 'pool': must be >= neg_num ({self.neg_num}) for sampling "
                    f"'{self.sampling}' (got {self.pool})"
                )
            if self.min_cluster * self.num_clusters > 10**9:
                raise ValueError("key 'min_cluster': min_cluster * num_clusters is absurdly large")
        if self.stream and (not DATASETS[self.dataset].streamable or self.image_size is None):
            streamable = " or ".join(repr(name) for name, d in DATASETS.items() if d.streamable)
            raise ValueError(f"key 'stream': needs dataset {streamable} and an image_size")
        for type_key, value_key in (("margin_type", "margin"), ("intra_margin_type", "intra_margin")):
            margin = MARGINS[getattr(self, type_key)]
            value = getattr(self, value_key)
            if margin.limit is not None and abs(value) > margin.limit:
                raise ValueError(f"key '{value_key}': must lie in {margin.limit_text} with {type_key} "
                                 f"{getattr(self, type_key)} (got {value})")
        if self.inter_enabled and self.inter_weight > 0 and self.warmup_epochs >= self.epochs:
            raise ValueError(f"key 'warmup_epochs': {self.warmup_epochs} intra-only epochs of {self.epochs} "
                             f"leave the inter-image branch no epoch to train (allowed: 0..{self.epochs - 1})")
        if self.lowshot_shots != sorted(set(self.lowshot_shots)) or not set(self.lowshot_shots) <= set(LOWSHOT_SHOTS):
            raise ValueError(f"key 'lowshot_shots': increasing values of {list(LOWSHOT_SHOTS)} (got {self.lowshot_shots})")
        if self.semisup_fractions != sorted(set(self.semisup_fractions)) \
                or not set(self.semisup_fractions) <= set(SEMISUP_FRACTIONS):
            raise ValueError(f"key 'semisup_fractions': increasing values of {list(SEMISUP_FRACTIONS)} "
                             f"(got {self.semisup_fractions})")
        if self.transfer_dataset is not None and self.linear_epochs == 0:
            raise ValueError("key 'transfer_dataset': the transfer probe trains for linear_epochs, which is 0")
        if self.transfer_dataset is not None and self.transfer_dataset == self.dataset:
            raise ValueError(f"key 'transfer_dataset': {self.transfer_dataset} is the training dataset (its probe is "
                             "linear_top1); transfer to another one")
        if self.batch_size % self.bn_splits:
            raise ValueError(f"key 'bn_splits': must divide batch_size {self.batch_size} (got {self.bn_splits})")
        if self.intra_weight == 0 and (not self.inter_enabled or self.inter_weight == 0):
            raise ValueError("key 'intra_weight': the loss would be zero")
        return self

    # ---- derived values, computed once
    @property
    def inter_enabled(self) -> bool:
        """Whether the method has the inter-image branch (MoCo v2 has not)."""
        return METHODS[self.method].inter_branch

    @property
    def bank_size(self) -> Optional[int]:
        """Training images (= memory-bank entries) when known without reading data, else None."""
        if self.train_subset is not None:
            return self.train_subset
        return TRAIN_SIZES.get(self.dataset)

    def search_size(self, bank_size: int) -> int:
        """Bank entries ranked per step: ``candidates`` in candidates mode (not for ``hard``), else the bank."""
        if self.neg_search == "candidates" and not SAMPLERS[self.sampling].global_topk:
            return min(self.candidates, bank_size)
        return bank_size

    def effective_pool(self, bank_size: int) -> int:
        """The semi-easy/semi-hard pool actually drawn from: ``pool`` scaled by search size / bank size.

        Candidates mode keeps the pool the same fraction of the searched entries
        (:func:`study.method.sizes.scaled_pool`); exact search uses ``pool`` itself.
        """
        size = self.search_size(bank_size)
        if size >= bank_size:
            return min(self.pool, bank_size)
        return scaled_pool(self.pool, size, bank_size)

    def flat(self) -> dict[str, Any]:
        """The resolved config as a flat dict of JSON-able values (for params)."""
        return json.loads(self.model_dump_json())


# ---------------------------------------------------------------------------
# Presets: the scale of a run. A preset only sets keys of TrainConfig.
# ---------------------------------------------------------------------------

_SMALL_DATA = dict(
    dataset="fashion_mnist",
    crop_scale_min=0.3,
    blur_p=0.0,  # 16-28 px images: blur destroys what little detail there is
    loader_workers=0,
    queue_size=4096,
    key_momentum=0.99,  # few iterations: a slower EMA never catches up
    lr=0.06,
    weight_decay=5e-4,
)

PRESETS: dict[str, dict[str, Any]] = {
    # seconds; for tests
    "smoke": dict(
        _SMALL_DATA,
        backbone="convnet",
        widths=[8, 16, 32],
        image_size=16,
        train_subset=1024,
        test_subset=256,
        batch_size=64,
        queue_size=256,
        epochs=2,
        num_clusters=32,
        min_cluster=4,
        neg_num=64,
        pool=384,
        candidates=512,
        knn_k=20,
        linear_epochs=5,
        progress=False,
    ),
    # the default scale of the studies: one cell in a few minutes on one core
    "cpu": dict(
        _SMALL_DATA,
        backbone="convnet",
        widths=[16, 32, 64],
        image_size=28,
        train_subset=20000,
        test_subset=None,  # final kNN and linear top-1 on all 10,000 test images
        monitor_test_subset=2000,  # the per-epoch kNN monitor stays cheap
        # batch 128 for 5 epochs beat batch 256 for 6 in the same time (kNN 0.733 vs 0.72)
        batch_size=128,
        epochs=5,
        num_clusters=100,
        min_cluster=20,
        # the reference's proportions of the bank (1.28M): 16,384 negatives = 1.28 %,
        # a semi-hard pool of 128,000 = 10 %; here 256 and 2,000 of 20,000. The pool
        # is 7.8x neg_num, as in the reference, which needs exact search: ranking a
        # candidate subset shrinks the pool with it (4,096 candidates: 410 entries)
        neg_num=256,
        pool=2000,
        neg_search="exact",
        knn_train_subset=10000,
        linear_epochs=30,
        # the paper's other protocols at this scale (study/train/protocols.py; their cost: make bench)
        lowshot_shots=[1, 2, 4, 8, 16, 32, 64],
        semisup_fractions=[0.01, 0.1],
        transfer_dataset="mnist",
    ),
    # the same data at a larger scale, for one GPU
    "gpu": dict(
        _SMALL_DATA,
        backbone="resnet18",
        image_size=28,
        train_subset=None,
        batch_size=256,
        epochs=100,
        queue_size=16384,
        num_clusters=600,
        # the reference's proportions of the bank (60,000 here): 1.28 % and 10 %
        neg_num=768,
        pool=6000,
        blur_p=0.0,
        linear_epochs=100,
    ),
    # the paper's recipe, for a SLURM cluster (data: an ImageFolder root)
    "imagenet": dict(
        dataset="imagefolder",
        backbone="resnet50",
        image_size=224,
        epochs=200,
        batch_size=256,
        lr=0.03,
        weight_decay=1e-4,
        queue_size=65536,
        key_momentum=0.999,
        num_clusters=10000,
        neg_num=16384,
        pool=128000,
        blur_p=0.5,
        crop_scale_min=0.2,
        knn_train_subset=100000,
        linear_epochs=100,
        stream=True,
        loader_workers=8,
    ),
}

CONFIG_KEYS: tuple[str, ...] = tuple(TrainConfig.model_fields)


def did_you_mean(word: str, options: list[str] | tuple[str, ...]) -> str:
    """"; did you mean 'x'?" for the closest option (case ignored: ``LR`` finds ``lr``), or ""."""
    by_lower = {o.lower(): o for o in reversed(list(options))}
    close = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.6)
    return f"; did you mean '{by_lower[close[0]]}'?" if close else ""


def unknown_key(key: str, allowed: list[str] | tuple[str, ...]) -> str:
    """The message for a key a schema does not have: a "did you mean" and the allowed keys."""
    return f"unknown key{did_you_mean(key, allowed)} (allowed: {', '.join(allowed)})"


def parse_value(text: str, source: str = "--set") -> Any:
    """A ``--set`` value, read by the study files' YAML 1.2 rules (:func:`study.core.files.parse_scalar`):
    ``3``, ``0.5``, ``1e-3``, ``-0.5``, ``true``, ``off`` (a string), ``[8, 16]``."""
    from study.core.files import parse_scalar

    return parse_scalar(text, source)


def parse_sets(items: list[str] | None, *, source: str = "--set") -> dict[str, Any]:
    """``["k=v", ...]`` -> ``{k: v}``; unknown keys and malformed items raise UserError."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"expected key=value, got '{item}'", source=source)
        check_keys([key], source=source)
        if key in out:
            raise UserError(f"is given twice ({key}={out[key]!r}, then {item.strip()}): give it once",
                            source=source, key=key)
        if not value.strip():
            raise UserError(f"expected a value after '=' (write {key}=null for none)", source=source, key=key)
        out[key] = parse_value(value, f"{source} {key}")
    return out


def check_keys(keys, *, source: str) -> None:
    for key in keys:
        if key not in CONFIG_KEYS:
            raise UserError(unknown_key(key, sorted(CONFIG_KEYS)), source=source, key=key)


# what a pattern-checked string may be, in words (pydantic would show the regex)
PATTERN_WORDS: dict[str, str] = {DEVICE_PATTERN: "must be auto, cpu, cuda or cuda:N"}


def pattern_message(error: dict, msg: str, words: dict[str, str] = PATTERN_WORDS) -> str:
    """A pydantic ``string_pattern_mismatch`` error in words (``words``: pattern -> text; by default
    :data:`PATTERN_WORDS`, the run config's), else ``msg``."""
    if error.get("type") != "string_pattern_mismatch":
        return msg
    return words.get((error.get("ctx") or {}).get("pattern", ""), msg)


def pydantic_message(err: ValidationError, allowed: list[str] | tuple[str, ...] = ()) -> tuple[str, str | None]:
    """The error of a pydantic ValidationError to report, as (message, key): an unknown key first
    (``allowed``: the schema's keys, for its "did you mean"), else the first error.

    The one message style of the toolkit's schemas (the run config, the SLURM options): the
    key, what is allowed or the range, and the value given.
    """
    errors = err.errors()
    first = next((e for e in errors if e.get("type") == "extra_forbidden"), errors[0])
    loc = [str(p) for p in first.get("loc", ()) if not isinstance(p, int)]
    key = loc[0] if loc else None
    if first.get("type") == "extra_forbidden" and key is not None:
        return unknown_key(key, allowed), key
    msg = first.get("msg", str(err))
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    ctx = first.get("ctx") or {}
    if first.get("type") == "literal_error" and "expected" in ctx:
        msg = f"must be one of {ctx['expected']}"
    msg = pattern_message(first, msg)
    got = first.get("input")
    if key is not None and not isinstance(got, dict):
        msg = f"{msg} (got {got!r})"
    return msg, key


def build_config(
    preset: str | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    source: str = "config",
) -> TrainConfig:
    """Defaults <- preset <- overrides, validated. Raises UserError on bad input."""
    values: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise UserError(
                f"unknown preset '{preset}'{did_you_mean(preset, tuple(PRESETS))} "
                f"(allowed: {', '.join(PRESETS)})",
                source="--preset",
            )
        values.update(PRESETS[preset])
    overrides = dict(overrides or {})
    check_keys(overrides, source=source)
    values.update(overrides)
    if isinstance(values.get("data_root"), str) and values["data_root"].strip():
        # absolute at load, relative to the command's working directory: Ray runs each trial in a
        # directory of its own, where a relative path would name nothing
        values["data_root"] = os.path.abspath(os.path.expanduser(values["data_root"]))
    # YAML gives ints for whole floats ("margin: 0"); accept them for float keys
    for key, field in TrainConfig.model_fields.items():
        if field.annotation is float and isinstance(values.get(key), int) and not isinstance(values.get(key), bool):
            values[key] = float(values[key])
    # YAML 1.1 reads a bare on / off as true / false: give "channels_last: off" its meaning
    if isinstance(values.get("channels_last"), bool):
        values["channels_last"] = "on" if values["channels_last"] else "off"
    try:
        cfg = TrainConfig(**values)
    except ValidationError as err:
        msg, key = pydantic_message(err, sorted(CONFIG_KEYS))
        if key and msg.startswith("key '"):
            # invariant errors already name their key
            raise UserError(msg, source=source) from None
        raise UserError(msg, source=source, key=key) from None
    check_without_data(cfg, source=source)
    return cfg


def check_without_data(cfg: TrainConfig, *, source: str = "config") -> None:
    """What the trainer would reject that can be told without reading the data: a ``data_root``
    that does not exist. (The size limits are checked by :class:`TrainConfig` when the bank size
    is known from the config.)"""
    if cfg.data_root is not None and not os.path.isdir(cfg.data_root):
        what = "is not a directory" if os.path.exists(cfg.data_root) else "does not exist"
        raise UserError(f"{cfg.data_root} {what}; {DATASETS[cfg.dataset].hint}", source=source, key="data_root")


def check_device(device: str, gpus: int, *, source: str) -> None:
    """A ``cuda`` or ``cuda:N`` device this machine has (``gpus``: how many torch sees); UserError otherwise."""
    if not device.startswith("cuda"):
        return
    index = int(device.partition(":")[2] or 0)
    if index >= gpus:
        allowed = "auto, cpu" + (f", cuda, cuda:0..{gpus - 1}" if gpus else "")
        have = f"{gpus} GPU{'s' if gpus != 1 else ''}" if gpus else "no GPU"
        raise UserError(f"device '{device}' but this machine has {have} "
                        f"(allowed: {allowed})", source=source, key="device")


def check_data_invariants(cfg: TrainConfig, num_train: int) -> None:
    """Invariants that need the number of training images; raises ValueError naming the keys.

    Called at load when the bank size is known from the config (``train_subset``
    or a built-in dataset's size), and again by :func:`validate_against_data`
    once an image folder has been scanned.
    """
    if cfg.batch_size > num_train:
        raise ValueError(f"key 'batch_size': {cfg.batch_size} exceeds the {num_train} training images")
    classes = DATASETS[cfg.dataset].classes if cfg.dataset in DATASETS else None
    if cfg.lowshot_shots and classes:
        # the draws come from the kNN's training images; a class holds about its share of them (stratified
        # subsets) or fewer (a random knn_train_subset): half its share keeps a margin
        pool = min(cfg.knn_train_subset or num_train, num_train)
        if max(cfg.lowshot_shots) > pool // classes // 2:
            raise ValueError(f"key 'lowshot_shots': {max(cfg.lowshot_shots)} labelled images per class, but the "
                             f"{pool} images they are drawn from (knn_train_subset) hold about {pool // classes} "
                             f"per class of {classes} (allowed: at most {pool // classes // 2}, half of that)")
    if cfg.semisup_fractions and classes and round(min(cfg.semisup_fractions) * num_train) < classes:
        raise ValueError(f"key 'semisup_fractions': {min(cfg.semisup_fractions):g} of {num_train} training images "
                         f"is fewer than one per class of {classes}")
    if not cfg.inter_enabled:
        return
    if cfg.num_clusters > num_train:
        raise ValueError(f"key 'num_clusters': {cfg.num_clusters} exceeds the {num_train} training images "
                         f"(allowed: 2..{num_train})")
    if cfg.min_cluster * cfg.num_clusters > num_train:
        raise ValueError(
            f"key 'min_cluster': min_cluster * num_clusters = {cfg.min_cluster * cfg.num_clusters} exceeds the "
            f"{num_train} training images (allowed: min_cluster <= {num_train // cfg.num_clusters})")
    if cfg.neg_num > num_train:
        raise ValueError(f"key 'neg_num': {cfg.neg_num} exceeds the bank size {num_train} "
                         f"(allowed: 1..{num_train})")
    if cfg.sampling in POOL_SAMPLINGS:
        if cfg.pool > num_train:
            raise ValueError(f"key 'pool': {cfg.pool} exceeds the bank size {num_train} "
                             f"(allowed: neg_num..{num_train})")
        eff = cfg.effective_pool(num_train)
        if eff < cfg.neg_num:
            how = (f"pool {cfg.pool} x candidates {cfg.search_size(num_train)} / bank {num_train} = {eff}"
                   if eff != cfg.pool else f"pool {cfg.pool}")
            raise ValueError(
                f"keys 'pool' and 'neg_num': the {cfg.sampling} pool actually drawn from ({how}) must be "
                f">= neg_num ({cfg.neg_num}); the reference draws 16,384 negatives from a pool of 128,000 "
                f"(allowed: raise 'pool' or 'candidates', use neg_search: exact, or lower 'neg_num')")


def validate_against_data(cfg: TrainConfig, num_train: int, *, source: str = "config") -> None:
    """:func:`check_data_invariants` as a UserError (checked before anything is written)."""
    try:
        check_data_invariants(cfg, num_train)
    except ValueError as err:
        raise UserError(str(err), source=source) from None
