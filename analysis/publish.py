"""The study's outcome on its parent run: tables, figures and report section as artifacts,
the verdicts and their numbers as tags and metrics.

Idempotent: the ``results/`` artifact folder of the parent run is deleted and
written again, so rebuilding twice leaves one copy of each file (and a figure
no longer built does not linger). Verdict numbers are taken generically from
the comparison results of ``analysis.findings`` (every finite number of a
``ComparisonResult`` and of its ``PairedComparison``, nested dataclasses
flattened with dots), so fields added there show up here without a change.

Names on the parent run, for the study's first comparison (its headline):
tags ``verdict`` (the finding's verdict) and ``comparison``; metrics
``diff_mean``, ``ci_low``, ``ci_high``, ``p_value``, ``n_seeds``, ... Every
comparison ``j`` (1-based, across the study's findings) also under
``cmp<j>.<name>``, with tags ``cmp<j>`` (what is compared) and
``cmp<j>.verdict``. Metrics are logged at step 0 (a rebuild logs the value
again; the run shows the latest).
"""
from __future__ import annotations

import dataclasses
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Sequence

from .findings import ComparisonResult, FindingResult
from .load import StudyData
from .report import VERDICT_RULE, safe_name, study_section

ARTIFACT_DIR = "results"
# field names of the comparison results -> the names the issue and the UI use
RENAME = {"mean_diff": "diff_mean", "n": "n_seeds"}
SKIP = {"diffs", "seeds"}  # per-seed values: tags would be noise, metrics cannot hold them
_TAG_PREFIXES = ("verdict", "comparison", "cmp")


def _flatten(obj, prefix: str = "") -> dict:
    """Dataclass fields -> {dotted name: value}; nested dataclasses flattened."""
    out = {}
    for f in dataclasses.fields(obj):
        if f.name in SKIP:
            continue
        value = getattr(obj, f.name)
        name = prefix + RENAME.get(f.name, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            out.update(_flatten(value, "" if f.name == "comparison" else name + "."))
        else:
            out[name] = value
    return out


def comparison_values(r: ComparisonResult) -> tuple[dict[str, float], dict[str, str]]:
    """(metrics, tags) of one comparison: finite numbers -> metrics, strings -> tags."""
    metrics, tags = {}, {}
    for name, value in _flatten(r).items():
        if isinstance(value, bool):
            tags[name] = str(value).lower()
        elif isinstance(value, (int, float)):
            if math.isfinite(value):
                metrics[name] = float(value)
        elif isinstance(value, str) and value:
            tags[name] = value
    return metrics, tags


def comparison_label(r: ComparisonResult) -> str:
    return f"{r.better} - {r.worse} on {r.metric}" + (f" ({r.what})" if r.what else "")


def verdict_values(results: Sequence[FindingResult]) -> tuple[dict[str, float], dict[str, str]]:
    """All tags and metrics the findings of one study put on its parent run."""
    metrics: dict[str, float] = {}
    tags: dict[str, str] = {}
    if results:
        tags["verdict"] = results[0].verdict
    for f in results:
        tags[f"verdict.{f.spec.key}"] = f.verdict
    comparisons = [r for f in results for r in f.comparisons]
    for j, r in enumerate(comparisons, start=1):
        m, t = comparison_values(r)
        if j == 1:
            metrics.update(m)
            tags.update({k: v for k, v in t.items() if k not in ("verdict",)})
            tags["comparison"] = comparison_label(r)
        metrics.update({f"cmp{j}.{k}": v for k, v in m.items()})
        tags.update({f"cmp{j}.{k}": v for k, v in t.items()})
        tags[f"cmp{j}"] = comparison_label(r)
    return metrics, tags


def study_report(data: StudyData, results: Sequence[FindingResult], figures: Sequence[str]) -> str:
    """The study's part of REPORT.md, standalone (links relative to the artifact folder)."""
    lines = [f"# InterCLR study `{data.study}`", "", VERDICT_RULE, ""] + study_section(data, results, figures)
    return "\n".join(lines).rstrip("\n") + "\n"


def publish(client, data: StudyData, results: Sequence[FindingResult], files: Sequence[Path], out_dir: Path,
            figures: Sequence[str]) -> bool:
    """Replace the parent run's ``results/`` artifacts with ``files`` (under ``out_dir``) and the
    study's report section; set its verdict tags and metrics. False when the study has no parent run."""
    if not data.parent_run_id:
        return False
    import mlflow
    from mlflow.entities import Metric, RunTag
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    run_id = data.parent_run_id
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / ARTIFACT_DIR
        (root / safe_name(data.study)).mkdir(parents=True)
        for path in files:
            shutil.copyfile(path, root / path.relative_to(out_dir))
        (root / "REPORT.md").write_text(study_report(data, results, figures), encoding="utf-8")
        # an ``mlflow-artifacts:`` location (a tracking server's proxied store) resolves against
        # the global tracking URI, so point it at this client's store first
        mlflow.set_tracking_uri(client.tracking_uri)
        repo = get_artifact_repository(client.get_run(run_id).info.artifact_uri)
        if any(True for _ in client.list_artifacts(run_id, ARTIFACT_DIR)):
            repo.delete_artifacts(ARTIFACT_DIR)
        client.log_artifacts(run_id, str(root), ARTIFACT_DIR)
    metrics, tags = verdict_values(results)
    stale = [k for k in client.get_run(run_id).data.tags if k.startswith(_TAG_PREFIXES) and k not in tags]
    for key in stale:  # e.g. a comparison the study no longer has
        client.delete_tag(run_id, key)
    now = int(time.time() * 1000)
    batch_m = [Metric(k, v, now, 0) for k, v in sorted(metrics.items())]
    batch_t = [RunTag(k, v[:5000]) for k, v in sorted(tags.items())]
    for i in range(0, max(len(batch_m), len(batch_t)), 100):  # a batch holds at most 100 tags
        client.log_batch(run_id, metrics=batch_m[i:i + 100], tags=batch_t[i:i + 100])
    return True
