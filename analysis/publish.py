"""The study's outcome on its parent run: tables, figures and report section as artifacts, the verdicts
and their numbers as tags and metrics, and the conclusion as the run's description.

Idempotent: the ``results/`` artifact folder of the parent run is deleted and
written again, so rebuilding twice leaves one copy of each file (and a figure
no longer built does not linger).

Names on the parent run, per hypothesis ``<name>`` (in file order): tag ``verdict.<name>`` (the
value of :class:`analysis.stats.Verdict`: holds, contradicted, equivalent, inconclusive, not run)
and ``verdict_text.<name>`` (its words); with ``each``, ``verdict.<name>/<stratum>`` too (as
``labels:online/sampling:hard``); metrics
``<name>.diff_mean``, ``<name>.ci_low``, ``<name>.ci_high``, ``<name>.p_value``, ``<name>.n_seeds``,
``<name>.cs_low``, ``<name>.cs_high``, ``<name>.tost_p``, ``<name>.mde``, ``<name>.p_holm`` of its
first part (with ``each``, per stratum: ``<name>/<stratum>.diff_mean``, ...); a number that is not finite
(an interval still unbounded) is not logged. The first hypothesis is also the headline: tag ``verdict`` and ``hypothesis``. Metrics are
logged at step 0 (a rebuild logs the value again; the run shows the latest).

The parent run's description (``mlflow.note.content``, Markdown on the run's Overview in the UI) holds
the study's hypotheses with their verdicts and intervals; the experiment's description holds the
study file's ``description``.
"""
from __future__ import annotations

import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Sequence

from study.core.names import Tag, verdict_tag

from .evaluate import HypothesisResult, delta_text
from .load import StudyData
from .report import VERDICT_RULE, _interval, _num, metric_label, safe_name, study_section
from .tables import spec

ARTIFACT_DIR = "results"
NOTE_TAG = Tag.NOTE  # MLflow's description of a run or an experiment (Markdown)
# tags the analysis owns on the parent run (``comparison`` and ``cmp<j>``: a store's from before hypotheses);
# not the runner's ``hypotheses.<i>``
_TAG_PREFIXES = (Tag.VERDICT, "comparison", "cmp")
_TAGS = (Tag.HYPOTHESIS,)


def tag_safe(text: str) -> str:
    """``text`` in the characters MLflow allows in a tag key (letters, digits, ``_ - . : /`` and spaces):
    a stratum ``labels=online, sampling=hard`` becomes ``labels:online/sampling:hard``."""
    text = text.replace(", ", "/").replace("=", ":")
    return "".join(ch if ch.isalnum() or ch in "_-.:/ " else "_" for ch in text)


def verdict_values(results: Sequence[HypothesisResult]) -> tuple[dict[str, float], dict[str, str]]:
    """All tags and metrics the hypotheses of one study put on its parent run."""
    metrics: dict[str, float] = {}
    tags: dict[str, str] = {}
    if results:
        tags[Tag.VERDICT] = results[0].verdict.value
        tags[Tag.HYPOTHESIS] = results[0].spec.name
    for h in results:
        tags[verdict_tag(h.spec.name)] = h.verdict.value
        tags[verdict_tag(h.spec.name, text=True)] = h.text
        if len(h.units) > 1:
            for u in h.units:
                tags[verdict_tag(h.spec.name, tag_safe(u.unit.stratum))] = u.verdict.value
        for u in h.units:
            if not u.parts:
                continue
            p = u.parts[0]
            c = p.comparison
            values = {"diff_mean": c.mean_diff, "ci_low": c.ci_low, "ci_high": c.ci_high, "p_value": c.p_value,
                      "n_seeds": float(c.n), "cs_low": p.cs_low, "cs_high": p.cs_high, "tost_p": p.tost_p,
                      "mde": p.mde, "p_holm": u.p_adjusted}
            name = h.spec.name + (f"/{tag_safe(u.unit.stratum)}" if u.unit.stratum else "")
            metrics.update({f"{name}.{k}": float(v) for k, v in values.items() if math.isfinite(v)})
    return metrics, tags


def description(data: StudyData, results: Sequence[HypothesisResult]) -> str:
    """The parent run's description: what the study claims and what its cells say (Markdown)."""
    lines = [f"**Study `{data.study}`**" + (f": {data.description}" if data.description else ""), ""]
    if not data.missing.empty:
        lines += [f"**Provisional**: written while {len(data.missing)} cells were missing, running or failed; "
                  "the analysis of the finished study replaces it.", ""]
    if not results:
        lines.append("No hypotheses stated: the report holds its tables and figures.")
    for h in results:
        lines.append(f"- **{h.spec.name}**: {h.spec.claim}. Verdict: **{h.text}**.")
        for u in h.units:
            for p in u.parts:
                c = p.comparison
                scale = spec(p.metric).scale
                if c.n == 0:
                    continue
                kind = "group-sequential" if u.rule == "sequential" else "anytime-valid"
                lines.append(f"  - {(u.unit.stratum + ': ') if u.unit.stratum else ''}{p.label} on "
                             f"{metric_label(p.metric)}: {_num(c.mean_diff, scale)} "
                             f"(95% CI {_interval(c.ci_low, c.ci_high, scale)}, {kind} "
                             f"{_interval(p.cs_low, p.cs_high, scale)}, n={c.n}; region "
                             f"{delta_text(u.unit.delta, p.metric)})")
    lines += ["", f"{len(data.cells)} finished cells at preset {data.preset or 'unknown'}; full report: the "
              f"artifact `{ARTIFACT_DIR}/REPORT.md` of this run."]
    return "\n".join(lines)


def finished_since(client, data: StudyData) -> int:
    """How many cell runs of the study are FINISHED in the store now that the analysis did not see."""
    from study.core.listing import all_runs
    from study.core.names import FINISHED, role_filter

    seen = set(data.cells["run_id"]) | (set(data.excluded["run_id"]) if data.excluded is not None else set())
    exp = client.get_run(data.parent_run_id).info.experiment_id
    now = all_runs(client, [exp], f"{role_filter(Tag.CELL)} and attributes.status = '{FINISHED}'")
    return sum(1 for r in now if r.info.run_id not in seen)


def study_report(data: StudyData, results: Sequence[HypothesisResult], figures: Sequence[str]) -> str:
    """The study's part of REPORT.md, standalone (links relative to the artifact folder)."""
    lines = [f"# InterCLR study `{data.study}`", "", VERDICT_RULE, ""] + study_section(data, results, figures)
    return "\n".join(lines).rstrip("\n") + "\n"


def publish(client, data: StudyData, results: Sequence[HypothesisResult], files: Sequence[Path], out_dir: Path,
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
    tags[Tag.VERDICT_STATE] = "provisional" if not data.missing.empty else "final"
    tags[Tag.VERDICT_CELLS] = str(len(data.cells))
    note = description(data, results)
    later = finished_since(client, data)
    if later:  # cells finished while this analysis ran (a study that ended before it publishes)
        tags[Tag.VERDICT_STATE] = "stale"
        note = (f"**Stale**: {later} cells finished while this analysis ran. Rebuild it: `python -m analysis "
                f"--study {data.study}`.\n\n" + note)
    tags[NOTE_TAG] = note if len(note) <= 5000 else note[:4900] + "\n\n(cut here: the whole text is REPORT.md)"
    stale = [k for k in client.get_run(run_id).data.tags
             if (k.startswith(_TAG_PREFIXES) or k in _TAGS) and k not in tags]
    for key in stale:  # e.g. a comparison the study no longer has
        client.delete_tag(run_id, key)
    now = int(time.time() * 1000)
    batch_m = [Metric(k, v, now, 0) for k, v in sorted(metrics.items())]
    batch_t = [RunTag(k, v[:5000]) for k, v in sorted(tags.items())]
    for i in range(0, max(len(batch_m), len(batch_t)), 100):  # a batch holds at most 100 tags
        client.log_batch(run_id, metrics=batch_m[i:i + 100], tags=batch_t[i:i + 100])
    if data.description:
        client.set_experiment_tag(client.get_run(run_id).info.experiment_id, NOTE_TAG, data.description)
    return True
