"""The method's named units, by name: methods, negative samplers and margins (standard library only).

This file is the one place where a method, a sampling strategy or a margin is named. Each entry
is a ``"package.module:attribute"`` reference to a function plus the flags that the config needs
at load; the reference is imported on first use, so the config (study/core/config.py) derives its
choices from here without importing torch. The heavy modules resolve their units from here
(:data:`study.method.sampling.NEGATIVE_SAMPLERS`, :data:`study.method.losses.MARGIN_FUNCTIONS`,
the trainer's method builders).

Adding a strategy or a margin: write the function (in sampling.py, losses.py or a new module)
and add one line below. Adding a method: write its builder (study/train/methods.py) and its unit
(under study/method/), and add one line to :data:`METHODS`.

:func:`load` and :class:`Resolved` are the registries' machinery, shared with the data
registry (study/core/datasets.py).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar


@dataclass(frozen=True)
class Sampler:
    """A negative sampling strategy.

    fn: ``(sim (N, S) | None, col_labels (S,), q_labels (N,), neg_num, pool, generator) -> (N, neg_num)``
    columns of ``sim`` never sharing the query's label (see study/method/sampling.py).
    """

    fn: str  # "module:function"
    needs_similarity: bool  # False: fn may be given sim=None (no similarity search)
    uses_pool: bool  # draws from a pool of `pool` entries: the load-time pool checks apply
    global_topk: bool  # always searches the whole bank (ignores neg_search/candidates)


@dataclass(frozen=True)
class Margin:
    """A decision-boundary margin on the positive cosine: fn ``(cos (any shape), m) -> phi (same shape)``."""

    fn: str  # "module:function"
    uses_margin: bool = True  # False: the value m is ignored (and is not part of a cell's identity)
    # the largest |m| with a meaning (checked at load), and that range in words
    limit: float | None = None
    limit_text: str = ""


# strategy name -> sampler; the study file's `sampling` names one of these
SAMPLERS: dict[str, Sampler] = {
    "random": Sampler("study.method.sampling:neg_random", needs_similarity=False, uses_pool=False, global_topk=False),
    "semi-easy": Sampler("study.method.sampling:neg_semi_easy", needs_similarity=True, uses_pool=True,
                         global_topk=False),
    "semi-hard": Sampler("study.method.sampling:neg_semi_hard", needs_similarity=True, uses_pool=True,
                         global_topk=False),
    "hard": Sampler("study.method.sampling:neg_hard", needs_similarity=True, uses_pool=False, global_topk=True),
}

# margin name -> margin; the study file's `margin_type` and `intra_margin_type` name one of these
MARGINS: dict[str, Margin] = {
    "none": Margin("study.method.losses:margin_none", uses_margin=False),
    # cos(theta) - m: past |m| = 2 the shifted positive lies beyond every cosine in [-1, 1]
    "cosine": Margin("study.method.losses:margin_cosine", limit=2.0, limit_text="[-2, 2]"),
    # cos(theta + m), m in radians: past |m| = pi the angle has gone round
    "arc": Margin("study.method.losses:margin_arc", limit=3.141592653589793,
                  limit_text="[-pi, pi] (radians)"),
}


# ---------------------------------------------------------------------------
# Machinery
# ---------------------------------------------------------------------------


def load(ref: str) -> Any:
    """The object a ``"package.module:attribute"`` reference names, its module imported now.

    Raises ValueError naming the reference when the module or the attribute does not exist
    (an import error inside an existing module propagates unchanged).
    """
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"registry reference {ref!r} is not 'package.module:attribute'")
    try:
        obj = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name is not None and (module_name == err.name or module_name.startswith(err.name + ".")):
            raise ValueError(f"registry reference {ref!r}: no module {err.name!r}") from None
        raise
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"registry reference {ref!r}: {module_name} has no attribute {attr!r}") from None
    return obj


E = TypeVar("E")
T = TypeVar("T")


# A method's builder is called by study.train.trainer.Trainer._build as
# ``build(cfg, encoder, *, num_samples, queue_generator, device, gather, rank)`` and returns a unit with
# study.method.interclr.InterCLR's interface: ``moco``, ``queue``, ``bank``, ``plabels``, ``loss``,
# ``after_step``, ``init_state``, ``recluster``, ``state_dict``, ``load_state_dict`` (study/train/methods.py).


@dataclass(frozen=True)
class Method:
    """One method: its builder and whether it has the inter-image branch."""

    build: str  # "module:function" (see above)
    # True: the inter-image keys (labels, sampling, margin, bank, clusters...) are checked at load and
    # count in a cell's identity; False: they are ignored (study.core.canonical.INTER_KEYS)
    inter_branch: bool


# method name -> method; the study file's `method` names one of these
METHODS: dict[str, Method] = {
    "interclr": Method("study.train.methods:build_interclr", inter_branch=True),
    "mocov2": Method("study.train.methods:build_mocov2", inter_branch=False),  # InterCLR with the inter branch off
}


class Resolved(Mapping[str, T], Generic[E, T]):
    """A read-only view of a registry whose values are ``make(entry)``, built on first use.

    It follows the registry it views: names, their order and a replaced entry (a test's
    ``monkeypatch.setitem``) are read from it at each access.
    """

    def __init__(self, entries: Mapping[str, E], make: Callable[[E], T]):
        self._entries = entries
        self._make = make
        self._cache: dict[str, tuple[E, T]] = {}

    def __getitem__(self, name: str) -> T:
        entry = self._entries[name]
        hit = self._cache.get(name)
        if hit is None or hit[0] is not entry:
            hit = (entry, self._make(entry))
            self._cache[name] = hit
        return hit[1]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Resolved({list(self._entries)})"
