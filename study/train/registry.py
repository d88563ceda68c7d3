"""The methods, by name (standard library only).

This file is the one place where a method is named. Each entry is a
``"package.module:function"`` reference to the builder of the method's unit (imported on
first use, so the config derives its ``method`` choices from here without importing torch)
plus what the config needs at load.

A builder is called by :meth:`study.train.trainer.Trainer._build` as
``build(cfg, encoder, *, num_samples, queue_generator, device, gather, rank)`` and returns a
unit with :class:`study.method.interclr.InterCLR`'s interface: ``moco``, ``queue``, ``bank``,
``plabels``, ``loss``, ``after_step``, ``init_state`` and ``recluster`` (see
study/train/methods.py).

Adding a method: write its builder (and its unit, under study/method/) and add one line below.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    """One method: its builder and whether it has the inter-image branch."""

    build: str  # "module:function" (see above)
    # True: the inter-image keys (labels, sampling, margin, bank, clusters...) are checked at load and
    # count in a cell's identity; False: they are ignored (study.canonical.INTER_KEYS)
    inter_branch: bool


# method name -> method; the study file's `method` names one of these
METHODS: dict[str, Method] = {
    "interclr": Method("study.train.methods:build_interclr", inter_branch=True),
    "mocov2": Method("study.train.methods:build_mocov2", inter_branch=False),  # InterCLR with the inter branch off
}
