"""Analysis: MLflow store -> tables (md, tex, csv), figures (png, pdf) and results/REPORT.md.

Entry points: `build(study, tracking_uri=None, out_dir=None)` after a study,
`build_all(studies=None, ...)` for everything (`python -m analysis`).
"""
from .pipeline import build, build_all
from .load import ContractError, StoreError, StudyData, default_tracking_uri, list_studies, load_study

__all__ = ["build", "build_all", "load_study", "list_studies", "default_tracking_uri", "StudyData",
           "StoreError", "ContractError"]
