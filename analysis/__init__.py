"""Analysis: MLflow store -> tables (md, tex, csv), figures (png, pdf) and results/REPORT.md.

Entry points: `build(study, tracking_uri=None, out_dir=None)` after a study,
`build_all(studies=None, ...)` for everything (`python -m analysis`).

The names below load on first use (PEP 562): importing a light submodule
(``analysis.claims``, which the study-file loader checks findings against)
does not pull in scipy, statsmodels and matplotlib.
"""
from __future__ import annotations

import importlib

_NAMES = {"build": "pipeline", "build_all": "pipeline", "ContractError": "load", "StoreError": "load",
          "StudyData": "load", "default_tracking_uri": "load", "list_studies": "load", "load_study": "load"}

__all__ = ["build", "build_all", "load_study", "list_studies", "default_tracking_uri", "StudyData",
           "StoreError", "ContractError"]


def __getattr__(name: str):
    if name in _NAMES:
        return getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")
