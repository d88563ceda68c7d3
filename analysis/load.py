"""MLflow store -> tidy pandas frames, with the data contract checked.

The contract (what the training side writes, see DESIGN.md):

- one experiment per study, named by the study;
- one parent run (tags ``role=parent``, params ``factors`` and ``metric``);
- one child run per cell (tags ``role=cell``, ``cell_id``, ``level``,
  ``factors``, ``factor.<name>``, ``preset``; params ``seed`` and the
  resolved config; metrics per epoch with ``step`` = epoch, and
  ``linear_top1`` / ``final_knn_top1`` once at the end).

Only FINISHED cell runs count; a cell_id that appears twice keeps its latest
finished run. Only one preset counts (default: the preset of the latest
finished cell), and one cell per level and seed (the latest); finished cells
left out for either reason are returned as ``excluded``. Cells with no
finished run, and level x seed combinations that other levels have but this
one lacks, are returned as ``missing``.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from study.core import names
from study.core.listing import all_experiments, all_runs, foreign_study_text
from study.core.names import FINISHED, RUNNING, Tag, factor_tag, role_filter
from study.core.paths import default_tracking_uri  # noqa: F401 (re-exported)

from .hypotheses import Design, HypothesisSpec, from_tags

DEFAULT_METRIC = "knn_top1"
DEFAULT_DELTA = 0.005  # 0.5 points of an accuracy stored as a fraction (same as the study file's default)

# Columns of the cells frame: name -> kind ("str", "int", "float").
CELL_COLUMNS: dict[str, str] = {
    "study": "str",
    "cell_id": "str",
    "run_id": "str",
    "level": "str",
    "seed": "int",
    "preset": "str",
    "method": "str",
    "labels": "str",
    "sampling": "str",
    "margin_type": "str",
    "margin": "float",
    "epochs": "int",
    "end_time": "int",
    "knn_top1": "float",  # final kNN top-1 (``final_knn_top1``, else the last ``knn_top1``)
    "linear_top1": "float",
    "nmi": "float",  # last logged NMI of the pseudo-labels (NaN for MoCo v2)
    "ari": "float",
    "knn_auc": "float",  # mean kNN top-1 over epochs 1..E (convergence speed)
    "cost_wall_s": "float",  # the cell's cost over its attempts (NaN when not logged)
    "cost_cpu_s": "float",
    "cost_gpu_s": "float",
    "git_commit": "str",  # provenance of the attempt that finished the cell ("" when not logged)
    "git_dirty": "str",
    "dataset_digest": "str",
    "seconds": "float",  # the run's wall time, start to end (a linked cell: its source's)
    "reused_from": "str",  # the run a linked cell was copied from ("" if trained here)
}
# every other per-epoch metric of the store's contract (study/core/names.py): its last value per cell
EPOCH_CELL_METRICS = tuple(m.name for m in names.EPOCH_METRICS if m.name not in CELL_COLUMNS)
CELL_COLUMNS.update({m: "float" for m in EPOCH_CELL_METRICS})
# the paper's other protocols and their seconds (final metrics, study/train/protocols.py)
PROTOCOL_CELL_METRICS = names.PROTOCOL_METRICS + names.PROTOCOL_SECONDS
CELL_COLUMNS.update({m: "float" for m in PROTOCOL_CELL_METRICS})
CURVE_COLUMNS: dict[str, str] = {
    "cell_id": "str",
    "run_id": "str",
    "level": "str",
    "seed": "int",
    "metric": "str",
    "epoch": "int",
    "value": "float",
}
MISSING_COLUMNS: dict[str, str] = {"cell_id": "str", "level": "str", "seed": "int", "status": "str", "run_id": "str"}
EXCLUDED_COLUMNS: dict[str, str] = {"cell_id": "str", "level": "str", "seed": "int", "preset": "str",
                                    "run_id": "str", "reason": "str"}
FINAL_ONLY_METRICS = ("linear_top1", "final_knn_top1", "final_nmi", "cost_wall_s", "cost_cpu_s", "cost_gpu_s",
                      *PROTOCOL_CELL_METRICS)

# Natural order of known factor values (anything else sorts after, alphabetically).
_PARAM_ORDER = {
    "labels": ["offline", "online"],
    "sampling": ["random", "semi-easy", "semi-hard", "hard"],
    "method": ["interclr", "mocov2"],
    "margin_type": ["none", "cosine", "arc"],
}
# Which params identify a factor's level.
FACTOR_PARAMS = {
    "labels": ("labels",),
    "sampling": ("sampling",),
    "method": ("method",),
    "boundary": ("margin_type", "margin"),
}


class StoreError(RuntimeError):
    """The store cannot be read (missing sqlite file, unreachable server). ``exit_code``: 2 for what the
    user named wrongly, 1 for the machine or a service (a server down, another service at its address)."""

    exit_code = 2


class ServerError(StoreError):
    """The tracking server does not answer, or something else answers at its address."""

    exit_code = 1


class ContractError(ValueError):
    """What the store holds does not follow the data contract."""


@dataclass(frozen=True)
class StudyData:
    """Everything analysis needs about one study, read once from the store."""

    study: str
    found: bool  # an experiment of that name exists
    factors: tuple[str, ...]
    metric: str  # the study's primary metric (a column of ``cells``)
    cells: pd.DataFrame  # one row per counted finished cell, CELL_COLUMNS + ``factor.<name>``
    curves: pd.DataFrame  # long: CURVE_COLUMNS
    missing: pd.DataFrame  # MISSING_COLUMNS
    levels: tuple[str, ...] = field(default=())  # display order
    preset: str = ""  # the preset the numbers come from
    excluded: pd.DataFrame | None = None  # finished cells left out (EXCLUDED_COLUMNS)
    parent_run_id: str = ""  # the study's parent run ("" when there is none)
    study_wall_s: float = math.nan  # the study's wall time, summed over its invocations (parent metric)
    equivalence_delta: float = DEFAULT_DELTA  # half-width of the region of practical equivalence (metric units)
    stopping: str = "fixed"  # "fixed" (t-interval) or "sequential" (seeds added until decided)
    finding: str = ""  # a store from before hypotheses: the finding its study file named
    hypotheses: tuple = ()  # the study's hypotheses (analysis.hypotheses.HypothesisSpec), in file order
    design: "Design | None" = None  # the study's grid (analysis.hypotheses.Design)
    planned_seeds: tuple[int, ...] = ()  # the seeds every level runs (the order the loop adds seeds from)
    max_seeds: int | None = None  # --until-decided's plan: at most this many seeds per level (parent tag)
    description: str = ""  # the study file's description

    @property
    def empty(self) -> bool:
        return self.cells.empty


# --------------------------------------------------------------------------- store access




def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (``:memory:`` for an in-memory one); None otherwise."""
    if not uri.startswith("sqlite:"):
        return None
    rest = uri[len("sqlite:///"):].split("?")[0] if uri.startswith("sqlite:///") else ""
    return Path(rest) if rest else Path(":memory:")


def client_for(tracking_uri: str | None = None):
    """An MlflowClient on an existing store; StoreError if there is none."""
    uri = tracking_uri or default_tracking_uri()
    from .uri import uri_problem

    problem = uri_problem(uri)
    if problem:
        raise StoreError(f"MLFLOW_TRACKING_URI: {problem}")
    from .uri import ServerProblem, bound_http_retries, check_server, shown_uri, store_problem

    problem = store_problem(uri, write=False)
    if problem:
        raise (ServerError if problem[1] == 1 else StoreError)(f"MLFLOW_TRACKING_URI={shown_uri(uri)}: {problem[0]}")
    db = _sqlite_path(uri)
    if db is not None and (str(db) == ":memory:" or not db.is_file() or db.stat().st_size == 0):
        what = "is empty" if db.is_file() else "does not exist"
        raise StoreError(f"no MLflow store at {shown_uri(uri)} (file {db} {what}); run a study first")
    bound_http_retries()
    try:
        check_server(uri)
    except ServerProblem as err:
        raise ServerError(str(err)) from None
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    from mlflow import MlflowClient

    from .uri import use_sqlite_policy

    use_sqlite_policy()
    client = MlflowClient(tracking_uri=uri)
    try:
        client.search_experiments(max_results=1)
    except Exception as exc:  # noqa: BLE001 - any failure here means the store is unreadable
        raise StoreError(f"cannot read the MLflow store at {shown_uri(uri)}: {shown_uri(str(exc))}") from exc
    return client


def _all_runs(client, experiment_id: str, filter_string: str) -> list:
    return all_runs(client, [experiment_id], filter_string, order_by=["attributes.start_time ASC"])


def list_studies(tracking_uri: str | None = None, client=None) -> list[str]:
    """Names of the experiments that hold at least one cell or parent run, sorted."""
    client = client or client_for(tracking_uri)
    names = []
    for exp in all_experiments(client):
        hit = client.search_runs([exp.experiment_id], filter_string=role_filter(Tag.CELL), max_results=1)
        if not hit:
            hit = client.search_runs([exp.experiment_id], filter_string=role_filter(Tag.PARENT), max_results=1)
        if hit:
            names.append(exp.name)
    return sorted(names)


# --------------------------------------------------------------------------- parsing


def _num(value, kind: str, run_id: str, key: str):
    if value is None or str(value).strip().lower() in ("", "none", "null", "nan"):
        return None
    try:
        if kind == "int":
            f = float(value)
            if not f.is_integer():
                raise ValueError(value)
            return int(f)
        return float(value)
    except (TypeError, ValueError):
        what = "an integer" if kind == "int" else "a number"
        raise ContractError(f"run {run_id}: param {key!r} = {value!r} is not {what}") from None


def _cell_row(run, study: str) -> dict:
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    rid = run.info.run_id
    for key in ("cell_id",):
        if not tags.get(key):
            raise ContractError(f"study {study!r}: cell run {rid} has no tag {key!r}")
    if "seed" not in params:
        raise ContractError(f"study {study!r}: cell run {rid} has no param 'seed'")
    factors = [f for f in tags.get(Tag.FACTORS, "").split(",") if f]
    level = tags.get(Tag.LEVEL) or " / ".join(tags.get(factor_tag(f), "") for f in factors)
    if not level:
        raise ContractError(f"study {study!r}: cell run {rid} has neither a 'level' tag nor factor.<name> tags")
    knn = metrics.get("final_knn_top1", metrics.get("knn_top1"))
    row = {
        "study": study,
        "cell_id": tags[Tag.CELL_ID],
        "run_id": rid,
        "level": level,
        "seed": _num(params["seed"], "int", rid, "seed"),
        "preset": tags.get(Tag.PRESET, ""),
        "variant": tags.get(Tag.VARIANT, ""),
        "method": params.get("method", ""),
        "labels": params.get("labels", ""),
        "sampling": params.get("sampling", ""),
        "margin_type": params.get("margin_type", ""),
        "margin": _num(params.get("margin"), "float", rid, "margin"),
        "epochs": _num(params.get("epochs"), "int", rid, "epochs"),
        "end_time": int(run.info.end_time or run.info.start_time or 0),
        "knn_top1": knn,
        "linear_top1": metrics.get("linear_top1"),
        "nmi": metrics.get("final_nmi", metrics.get("nmi")),
        "ari": metrics.get("ari"),
        "knn_auc": None,
        "cost_wall_s": metrics.get("cost_wall_s"),
        "cost_cpu_s": metrics.get("cost_cpu_s"),
        "cost_gpu_s": metrics.get("cost_gpu_s"),
        "git_commit": tags.get(Tag.GIT_COMMIT, ""),
        "git_dirty": tags.get(Tag.GIT_DIRTY, ""),
        "dataset_digest": tags.get(Tag.DATASET_DIGEST, ""),
        "seconds": ((run.info.end_time - run.info.start_time) / 1000.0
                    if run.info.end_time and run.info.start_time else None),
        "reused_from": tags.get(Tag.REUSED_FROM, ""),
        "status": run.info.status,
        "_factors": tuple(factors),
        **{m: metrics.get(m) for m in EPOCH_CELL_METRICS + PROTOCOL_CELL_METRICS},
    }
    for f in factors:
        row[factor_tag(f)] = tags.get(factor_tag(f), "")
    return row


def _int64_or_missing(value) -> int:
    """An int column's value, or -1 (missing) for one that is absent, not a whole number or beyond
    int64: a run the toolkit could not have written (a hand-made or older store) must not stop
    the reading of every other run."""
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        return -1
    return number if -2**63 <= number < 2**63 else -1


def _typed(rows: list[dict], columns: dict[str, str]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    for col, kind in columns.items():
        if col not in df.columns:
            df[col] = pd.Series([None] * len(df), dtype=object)
        if kind == "str":
            df[col] = df[col].fillna("").astype(str)
        elif kind == "int":
            df[col] = df[col].map(_int64_or_missing).astype("int64")
        else:
            df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
    extra = [c for c in df.columns if c not in columns]
    return df[list(columns) + extra]


def check_frame(df: pd.DataFrame, columns: dict[str, str], what: str) -> pd.DataFrame:
    """Raise ContractError naming the first missing column or wrong dtype."""
    checks = {
        "str": pd.api.types.is_string_dtype,
        "int": pd.api.types.is_integer_dtype,
        "float": pd.api.types.is_float_dtype,
    }
    for col, kind in columns.items():
        if col not in df.columns:
            raise ContractError(f"{what}: column {col!r} is missing (required: {', '.join(columns)})")
        if not checks[kind](df[col].dtype):
            raise ContractError(f"{what}: column {col!r} has dtype {df[col].dtype}, expected {kind}")
    return df


def dedupe_cells(runs: pd.DataFrame) -> pd.DataFrame:
    """Finished runs only; per cell_id the latest finished (end_time, then run_id)."""
    fin = runs[runs["status"] == FINISHED]
    fin = fin.sort_values(["cell_id", "end_time", "run_id"], kind="mergesort")
    return fin.drop_duplicates("cell_id", keep="last").reset_index(drop=True)


def level_sort_key(row: pd.Series, factors: tuple[str, ...]) -> tuple:
    """Order of a level: known param values first in their natural order, then by label."""
    key: list = []
    for f in factors:
        params = FACTOR_PARAMS.get(f, ())
        for p in params:
            v = row.get(p)
            if p == "margin":
                key.append((0, float(v) if v is not None and not math.isnan(v) else math.inf, ""))
                continue
            order = _PARAM_ORDER.get(p, [])
            key.append((0, order.index(v), "") if v in order else (1, 0, str(v)))
    key.append((1, 0, str(row["level"])))
    return tuple(key)


def order_levels(cells: pd.DataFrame, factors: tuple[str, ...]) -> tuple[str, ...]:
    if cells.empty:
        return ()
    first = cells.sort_values(["level", "seed"], kind="mergesort").drop_duplicates("level")
    keyed = sorted((level_sort_key(r, factors), r["level"]) for _, r in first.iterrows())
    return tuple(level for _, level in keyed)


def choose_preset(cells: pd.DataFrame) -> str:
    """The preset of the most recently finished cell (what the user ran last); "" if none."""
    if cells.empty:
        return ""
    last = cells.sort_values(["end_time", "preset"], kind="mergesort").iloc[-1]
    return str(last["preset"])


def command_variant(parent, cells: pd.DataFrame, preset: str) -> str:
    """The variant of the study's latest command (the parent's ``variant`` tag, written by the runner at
    each run) when it ran this preset and some finished cell has it, else "". A cell linked from another
    study keeps its source's end time, so "the latest finished cell" can name an older command's variant."""
    tags = parent.data.tags if parent is not None else {}
    variant = tags.get(Tag.VARIANT, "")
    if not variant or tags.get(Tag.PRESET) != preset or "variant" not in cells.columns:
        return ""
    return variant if (cells["variant"] == variant).any() else ""


def latest_variant(cells: pd.DataFrame, preset: str) -> str:
    """The ``variant`` tag (the study's settings: fixed, preset, --set) of the latest finished cell
    of ``preset``; "" when the cells carry none (a store from before the tag)."""
    same = cells[cells["preset"] == preset]
    if "variant" not in same.columns or same.empty:
        return ""
    return str(same.sort_values(["end_time", "run_id"], kind="mergesort")["variant"].iloc[-1])


def select_cells(cells: pd.DataFrame, preset: str, variant: str = "") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Keep one preset, one variant and one cell per (level, seed); return (kept, excluded with a reason).

    A store can hold a study run under two presets (smoke, then cpu), under two settings at one
    preset (a run with ``--set epochs=3`` after the plain one: another ``variant``), or a level
    re-run with another config (a new cell_id) under the same seed; mixing them would pair
    unrelated runs, so only the latest run of each level and seed of the chosen preset and
    variant counts (``variant`` "": any).
    """
    other_variant = (cells["preset"] == preset) & (cells["variant"] != variant) if variant else None
    rows = [dict(r, reason=f"another variant of the study's settings ({r['variant'] or 'untagged'}, not {variant}: "
                           f"a --set or an edited file)")
            for r in cells[other_variant].to_dict("records")] if variant else []
    if variant:
        cells = cells[~other_variant]
    other = cells[cells["preset"] != preset]
    same = cells[cells["preset"] == preset].sort_values(["level", "seed", "end_time", "run_id"], kind="mergesort")
    superseded = same[same.duplicated(["level", "seed"], keep="last")]
    kept = same.drop_duplicates(["level", "seed"], keep="last")
    rows += [dict(r, reason=f"preset {r['preset'] or '(none)'}, not {preset or '(none)'}") for r in
             other.to_dict("records")]
    rows += [dict(r, reason="superseded by a later run of the same level and seed") for r in
             superseded.to_dict("records")]
    excluded = _typed(rows, EXCLUDED_COLUMNS)[list(EXCLUDED_COLUMNS)]
    excluded = excluded.sort_values(["level", "seed", "cell_id"], kind="mergesort").reset_index(drop=True)
    return kept.reset_index(drop=True), excluded


def find_missing(runs: pd.DataFrame, cells: pd.DataFrame, finished_ids: set[str],
                 planned_seeds: list[int] | None = None, planned_levels: list[str] | None = None) -> pd.DataFrame:
    """Cells with no finished run (their latest status), plus level x seed gaps among ``cells``.

    ``planned_seeds``: the seeds every level runs (the parent's ``seeds`` tag); None: every
    seed seen. A seed outside them was added by the adaptive loop to some levels only, so
    a gap there counts only for a level that has a run at such a seed (one it extended).
    ``planned_levels`` (the parent's ``levels`` tag): levels of the study that may have no run
    at all yet (an interrupted study); their planned seeds are gaps too.
    """
    rows = []
    unfinished = runs[~runs["cell_id"].isin(finished_ids)]
    unfinished = unfinished.sort_values(["cell_id", "end_time", "run_id"], kind="mergesort")
    for _, r in unfinished.drop_duplicates("cell_id", keep="last").iterrows():
        rows.append({"cell_id": r["cell_id"], "level": r["level"], "seed": r["seed"], "status": r["status"],
                     "run_id": r["run_id"]})
    have = set(zip(cells["level"], cells["seed"]))
    listed = {(r["level"], r["seed"]) for r in rows}
    seeds = sorted(set(cells["seed"]) | {r["seed"] for r in rows} | set(planned_seeds or ()))
    levels = sorted(set(cells["level"]) | {r["level"] for r in rows} | set(planned_levels or ()))
    grid = set(seeds) if planned_seeds is None else set(planned_seeds)
    extended = {level for level, seed in have | listed if seed not in grid}
    for level in levels:
        for seed in seeds:
            if seed not in grid and level not in extended:
                continue
            if (level, seed) not in have and (level, seed) not in listed:
                rows.append({"cell_id": "", "level": level, "seed": seed, "status": "NOT IN STORE", "run_id": ""})
    df = _typed(rows, MISSING_COLUMNS)
    return df.sort_values(["level", "seed", "cell_id"], kind="mergesort").reset_index(drop=True)


def _history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    """(epoch, value) per step; a step logged twice (a resumed trial) keeps its latest value."""
    latest: dict[int, tuple[int, float]] = {}
    for m in client.get_metric_history(run_id, key):
        prev = latest.get(m.step)
        if prev is None or m.timestamp >= prev[0]:
            latest[m.step] = (m.timestamp, m.value)
    return sorted((step, v) for step, (_, v) in latest.items())


def load_curves(client, cells: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for _, c in cells.iterrows():
        run = client.get_run(c["run_id"])
        for key in sorted(run.data.metrics):
            if key in FINAL_ONLY_METRICS:
                continue
            for epoch, value in _history(client, c["run_id"], key):
                rows.append({"cell_id": c["cell_id"], "run_id": c["run_id"], "level": c["level"], "seed": c["seed"],
                             "metric": key, "epoch": epoch, "value": value})
    df = _typed(rows, CURVE_COLUMNS)
    return df.sort_values(["level", "seed", "metric", "epoch"], kind="mergesort").reset_index(drop=True)


def curve_auc(curves: pd.DataFrame, metric: str = "knn_top1") -> pd.Series:
    """Per cell_id, the mean of ``metric`` over epochs >= 1 (area under the curve / epochs)."""
    sel = curves[(curves["metric"] == metric) & (curves["epoch"] >= 1)]
    return sel.groupby("cell_id")["value"].mean()


def metric_column(metric: str) -> str:
    """The cells column holding a study's primary metric (``final_knn_top1`` -> ``knn_top1``)."""
    return metric[len("final_"):] if metric.startswith("final_") else metric


def empty_study(study: str, found: bool) -> StudyData:
    return StudyData(study=study, found=found, factors=(), metric=DEFAULT_METRIC,
                     cells=_typed([], CELL_COLUMNS), curves=_typed([], CURVE_COLUMNS),
                     missing=_typed([], MISSING_COLUMNS), excluded=_typed([], EXCLUDED_COLUMNS))


def load_study(study: str, tracking_uri: str | None = None, client=None, preset: str | None = None) -> StudyData:
    """Read one study. A study with no experiment comes back with ``found=False`` and no cells.

    ``preset``: whose cells to use; default the preset of the latest finished cell
    (cells of other presets are listed in ``excluded``).
    """
    client = client or client_for(tracking_uri)
    exp = client.get_experiment_by_name(study)
    if exp is None:
        return empty_study(study, found=False)
    parents = _all_runs(client, exp.experiment_id, role_filter(Tag.PARENT))
    # a cell run its driver is still creating (tags first, its params and the `filled` tag last) is not
    # there yet: read mid-study, it would lack its seed; a finished one without them is the contract's breach
    runs = [r for r in _all_runs(client, exp.experiment_id, role_filter(Tag.CELL))
            if not (r.info.status == RUNNING and r.data.tags.get(Tag.FILLED) != "1")]
    parent = parents[-1] if parents else None
    held = parent.data.tags.get(Tag.STUDY) if parent is not None else None
    if held and held != study:  # the experiments renamed by hand: this name now holds another study's runs
        raise StoreError(foreign_study_text(exp, held))
    factors: tuple[str, ...] = ()
    metric = DEFAULT_METRIC
    decide: dict = {}
    if parent is not None:
        factors = tuple(f for f in parent.data.params.get("factors", "").split(",") if f)
        metric = parent.data.params.get("metric", DEFAULT_METRIC) or DEFAULT_METRIC
        decide = _decision_settings(parent, study)
    raw_rows = [_cell_row(r, study) for r in runs]
    if not factors and raw_rows:
        factors = raw_rows[0]["_factors"]
    for r in raw_rows:
        r.pop("_factors")
    if not raw_rows:
        base = replace(empty_study(study, found=True), factors=factors, metric=metric_column(metric),
                       **decide, **_parent_fields(parent))
        return replace(base, **_plan(parent, study, base, None))
    all_runs = _typed(raw_rows, {**CELL_COLUMNS, "status": "str"})
    finished = dedupe_cells(all_runs)
    if preset is None:  # the preset of the latest finished cell, else of the latest run
        preset = choose_preset(finished if not finished.empty else all_runs)
    variant = command_variant(parent, finished, preset) or latest_variant(finished, preset)
    cells, excluded = select_cells(finished, preset, variant)
    of_variant = (all_runs["preset"] == preset) & ((all_runs["variant"] == variant) if variant else True)
    missing = find_missing(all_runs[of_variant], cells, set(finished["cell_id"]),
                           _planned_seeds(parent, study), _planned_levels(parent, study))
    curves = load_curves(client, cells)
    auc = curve_auc(curves)
    cells["knn_auc"] = cells["cell_id"].map(auc).astype("float64")
    factor_cols = sorted(c for c in cells.columns if c.startswith("factor."))
    cells = cells[list(CELL_COLUMNS) + factor_cols]
    # levels with no finished cell (all failed) still get a row, in their natural place
    runs_of_preset = all_runs[all_runs["preset"] == preset]
    listed = set(cells["level"]) | set(missing["level"])
    levels = order_levels(pd.concat([cells, runs_of_preset[runs_of_preset["level"].isin(listed)]]), factors)
    rank = {lvl: i for i, lvl in enumerate(levels)}
    cells = cells.assign(_r=cells["level"].map(rank)).sort_values(["_r", "seed", "cell_id"], kind="mergesort")
    cells = cells.drop(columns="_r").reset_index(drop=True)
    check_frame(cells, CELL_COLUMNS, f"study {study!r} cells")
    check_frame(curves, CURVE_COLUMNS, f"study {study!r} curves")
    mcol = metric_column(metric)
    if mcol not in cells.columns:
        from .hypotheses import METRICS

        raise ContractError(f"study {study!r}: primary metric {metric!r} is not a cell metric "
                            f"(known: {', '.join(METRICS)})")
    data = StudyData(study=study, found=True, factors=factors, metric=mcol, cells=cells, curves=curves,
                     missing=missing, levels=levels, preset=preset, excluded=excluded, **decide,
                     **_parent_fields(parent))
    data = replace(data, **_plan(parent, study, data, all_runs[all_runs["preset"] == preset]))
    return _in_design_order(data)


def _in_design_order(data: StudyData) -> StudyData:
    """Levels (and the cells' rows) in the study file's order of its factors' levels, when the parent
    carries the design: a crossed study's levels read as its grid, not alphabetically."""
    if data.design is None or data.empty:
        return data
    grid = [Design.name(c) for c in data.design.cells()]
    levels = tuple(lv for lv in grid if lv in data.levels) + tuple(lv for lv in data.levels if lv not in grid)
    rank = {lv: i for i, lv in enumerate(levels)}
    cells = data.cells.assign(_r=data.cells["level"].map(rank)).sort_values(["_r", "seed", "cell_id"],
                                                                            kind="mergesort")
    return replace(data, levels=levels, cells=cells.drop(columns="_r").reset_index(drop=True))


def _plan(parent, study: str, data: StudyData, runs: pd.DataFrame | None) -> dict:
    """The study's design, hypotheses, planned seeds and description, from the parent run's tags (written
    by the runner from the study file). A store from before hypotheses were data: the design is read
    off the cells and the hypotheses are the paper's finding for the factor the study varies."""
    from .paper import FINDING_FACTORS, finding_hypotheses

    tags = parent.data.tags if parent is not None else {}
    try:
        raw_design = from_tags(tags, "design")
        raw_hyps = from_tags(tags, "hypotheses")
        design = Design.load(raw_design) if raw_design is not None else _design_from_runs(data.factors, runs)
        hyps = tuple(HypothesisSpec.model_validate(h) for h in raw_hyps) if raw_hyps is not None else None
    except (ValueError, KeyError, TypeError) as err:
        raise ContractError(f"study {study!r}: parent tags design.* / hypotheses.* are not what the runner "
                            f"writes ({str(err).splitlines()[0]})") from None
    if hyps is None:  # a store from before: the paper's finding of the one factor it varies
        keys = ([data.finding] if data.finding in FINDING_FACTORS else
                [k for k, f in FINDING_FACTORS.items() if (f,) == tuple(data.factors)])
        hyps = tuple(h for k in keys for h in finding_hypotheses(k, design, data.metric, formable_only=True))
    return {"design": design, "hypotheses": hyps, "planned_seeds": tuple(_planned_seeds(parent, study) or ()),
            "description": tags.get(Tag.DESCRIPTION, "")}


def _design_from_runs(factors: tuple[str, ...], runs: pd.DataFrame | None) -> Design:
    """A legacy store's design: each factor's level labels (tags ``factor.<name>``) and, for the paper's
    factors, the params that identify them (FACTOR_PARAMS)."""
    levels: dict[str, dict[str, dict]] = {f: {} for f in factors}
    if runs is not None and not runs.empty:
        for f in factors:
            col = factor_tag(f)
            if col not in runs.columns:
                continue
            rows = runs.drop_duplicates(col)
            order = order_levels(rows.assign(level=rows[col]), (f,))
            for label in order:
                r = rows[rows[col] == label].iloc[0]
                settings = {p: (r[p] if p != "margin" else float(r[p])) for p in FACTOR_PARAMS.get(f, ())
                            if p in r and str(r[p]) not in ("", "nan")}
                levels[f][label] = settings or {f: label}
    return Design(tuple(factors), levels)


def _decision_settings(parent, study: str) -> dict:
    """The parent's ``equivalence_delta``, ``stopping`` and ``finding`` tags (written by the runner) as StudyData
    fields."""
    out: dict = {}
    tags = parent.data.tags
    if tags.get(Tag.EQUIVALENCE_DELTA):
        delta = _num(tags[Tag.EQUIVALENCE_DELTA], "float", parent.info.run_id, "equivalence_delta")
        if delta is None or not delta > 0:
            raise ContractError(f"study {study!r}: parent tag equivalence_delta must be > 0, got "
                                f"{tags[Tag.EQUIVALENCE_DELTA]!r}")
        out["equivalence_delta"] = delta
    if tags.get(Tag.STOPPING):
        if tags[Tag.STOPPING] not in ("fixed", "sequential"):
            raise ContractError(f"study {study!r}: parent tag stopping must be 'fixed' or 'sequential', "
                                f"got {tags[Tag.STOPPING]!r}")
        out["stopping"] = tags[Tag.STOPPING]
    if tags.get(Tag.FINDING):
        out["finding"] = tags[Tag.FINDING]
    if tags.get(Tag.MAX_SEEDS):
        limit = _num(tags[Tag.MAX_SEEDS], "int", parent.info.run_id, "max_seeds")
        if limit is None or limit < 2:
            raise ContractError(f"study {study!r}: parent tag max_seeds must be an integer >= 2, got "
                                f"{tags[Tag.MAX_SEEDS]!r}")
        out["max_seeds"] = limit
    return out


def _planned_seeds(parent, study: str) -> list[int] | None:
    """The parent's ``seeds`` tag (the seeds every level runs, written by the runner); None if absent."""
    text = parent.data.tags.get(Tag.SEEDS, "") if parent is not None else ""
    if not text:
        return None
    try:
        return [int(s) for s in text.split(",")]
    except ValueError:
        raise ContractError(f"study {study!r}: parent tag seeds must be comma-separated integers, "
                            f"got {text!r}") from None


def _planned_levels(parent, study: str) -> list[str] | None:
    """The parent's ``levels`` tag (a JSON list of the study's level names, written by the runner); None if absent."""
    import json

    text = parent.data.tags.get(Tag.LEVELS, "") if parent is not None else ""
    if not text:
        return None
    try:
        levels = json.loads(text)
    except ValueError:
        levels = None
    if not isinstance(levels, list) or not all(isinstance(x, str) for x in levels):
        raise ContractError(f"study {study!r}: parent tag levels must be a JSON list of names, got {text[:80]!r}")
    return levels


def _parent_fields(parent) -> dict:
    if parent is None:
        return {}
    return {"parent_run_id": parent.info.run_id,
            "study_wall_s": float(parent.data.metrics.get("study_wall_s", math.nan))}
