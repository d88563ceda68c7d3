"""Orchestration: load -> tables, figures, REPORT.md on disk.

`build(study)` is what `make study-<name>` calls after training;
`build_all()` is `make figures`. Both are deterministic: the same store
gives byte-identical tables, figures and report.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

from study.core.paths import REPO_ROOT

from . import figures as F
from .atomic import replacing
from .evaluate import evaluate_study
from .publish import publish
from .load import StudyData, client_for, list_studies, load_study
from .report import CANONICAL, existing_figures, render_report, safe_name
from .tables import TABLE_METRICS, ablation_table, difference_row, summary_table, to_csv, to_latex, to_markdown

ABLATION_FACTORS = {"labels": "Pseudo-labels", "sampling": "Negative sampling", "boundary": "Decision boundary"}


def default_out_dir() -> Path:
    return REPO_ROOT / "results"


def _write(path: Path, text: str) -> Path:
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="\n")
    return path


def paired_extra(data: StudyData) -> list[dict]:
    """The paired-difference row of a one-factor study's table comparing two methods (InterCLR - MoCo v2):
    its first hypothesis's first part, when that compares two single levels."""
    if "method" not in data.factors or data.design is None or data.design.crossed:
        return []
    for h in evaluate_study(data):
        for u in h.units:
            for p in u.parts:
                if p.part.shape == "difference" and len(p.part.weights) == 2:
                    (better, _), (worse, _) = sorted(p.part.weights, key=lambda t: -t[1])
                    return [difference_row(data.cells, better, worse, TABLE_METRICS)]
    return []


def write_tables(data: StudyData, out_dir: Path) -> list[Path]:
    d = out_dir / safe_name(data.study)
    table = summary_table(data.cells, data.levels, TABLE_METRICS)
    extra = paired_extra(data)
    caption = (f"Study {data.study}: final kNN top-1, linear top-1 and NMI per level, mean ± std over seeds "
               f"with 95% t-intervals; best mean in bold; cost: CPU (and GPU) time of the level's cells, summed.")
    return [
        _write(d / "summary.md", to_markdown(table, TABLE_METRICS, extra)),
        _write(d / "summary.tex", to_latex(table, TABLE_METRICS, caption, f"tab:{safe_name(data.study)}", extra)),
        _write(d / "summary.csv", to_csv(table, extra)),
    ]


def write_figures(data: StudyData, out_dir: Path) -> list[Path]:
    d = out_dir / safe_name(data.study)
    paths = []
    for stem, fig in F.study_figures(data).items():
        paths += F.save_figure(fig, d / stem)
    return paths


def write_study(data: StudyData, out_dir: Path) -> list[Path]:
    """Tables and figures of one study; nothing for a study without finished cells."""
    if data.empty:
        return []
    return write_tables(data, out_dir) + write_figures(data, out_dir)


def ablation_groups(studies: Iterable[StudyData]):
    return [(f"{ABLATION_FACTORS[f]} ({s.study})", s.cells, s.levels)
            for s in studies if not s.empty for f in s.factors if f in ABLATION_FACTORS]


def write_report(studies: Sequence[StudyData], out_dir: Path) -> list[Path]:
    paths = []
    groups = ablation_groups(studies)
    ablation_md = None
    if groups:
        table = ablation_table(groups, TABLE_METRICS)
        ablation_md = to_markdown(table, TABLE_METRICS)
        caption = ("Ablation of the inter-image branch: each block varies one factor; mean ± std over seeds, "
                   "95% t-intervals, best of each block in bold.")
        paths += [_write(out_dir / "ablation.md", ablation_md),
                  _write(out_dir / "ablation.tex", to_latex(table, TABLE_METRICS, caption, "tab:ablation")),
                  _write(out_dir / "ablation.csv", to_csv(table))]
    figs = {s.study: existing_figures(out_dir, s.study) for s in studies if not s.empty}
    tables = {s.study for s in studies if (out_dir / safe_name(s.study) / "summary.md").is_file()}
    paths.append(_write(out_dir / "REPORT.md", render_report(studies, figs, ablation_md, tables=tables)))
    return paths


def report_studies(names: Iterable[str], found: Iterable[str]) -> list[str]:
    """The canonical studies first, then every other study found or named, sorted."""
    rest = sorted((set(found) | set(names)) - set(CANONICAL))
    return list(CANONICAL) + rest


def build_all(studies: Sequence[str] | None = None, tracking_uri: str | None = None,
              out_dir: Path | str | None = None, report: bool = True, log_to_store: bool = True) -> list[Path]:
    """Rebuild the outputs of ``studies`` (default: every study in the store) and REPORT.md.

    With ``log_to_store``, each study's tables, figures, report section and verdicts also go
    on its parent run (``analysis.publish``), replacing what an earlier build put there.

    The report always covers the canonical studies and every study in the store, so
    rebuilding one study refreshes its section without dropping the others.
    Raises `StoreError` when there is no readable store.
    """
    out = Path(out_dir) if out_dir else default_out_dir()
    client = client_for(tracking_uri)
    found = list_studies(client=client)
    targets = list(studies) if studies else found
    cache: dict[str, StudyData] = {}
    paths: list[Path] = []
    written: dict[str, list[Path]] = {}
    for name in targets:
        cache[name] = load_study(name, client=client)
        written[name] = write_study(cache[name], out)
        paths += written[name]
    if report:
        names = report_studies(targets, found)
        data = [cache.get(n) or load_study(n, client=client) for n in names]
        paths += write_report(data, out)
    if log_to_store:
        for name in targets:
            d = cache[name]
            publish(client, d, evaluate_study(d), written[name], out, existing_figures(out, name))
    return paths


def build(study: str, tracking_uri: str | None = None, out_dir: Path | str | None = None,
          report: bool = True, log_to_store: bool = True) -> list[Path]:
    """Rebuild one study's tables and figures (and REPORT.md); returns the files written."""
    return build_all([study], tracking_uri, out_dir, report, log_to_store)
