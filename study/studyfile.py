"""Study files: a strict schema, and their expansion into cells.

A study file (YAML, in ``experiments/``) names a base recipe, fixed
settings, factors with their levels, seeds, the metric and per-preset
overrides and resources. A cell is one (levels, seed) combination with its
fully resolved :class:`~study.core.config.TrainConfig` and a stable ``cell_id``.

Resolution order, later wins: preset defaults <- study ``fixed`` <- the
study's per-preset ``set`` <- the cell's levels <- ``seed`` <- command-line
``--set``. Every key is checked against the run schema when the file loads.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from study.core import names
from study.core.names import Tag
from study.core.canonical import canonical_config
from study.core.config import (CONFIG_KEYS, EXECUTION_KEYS, MAX_SEED, PATTERN_WORDS, PRESETS, TrainConfig, build_config,
                          did_you_mean, pattern_message, unknown_key)
from study.core.errors import UserError, key_path
from study.core.files import read_yaml
from study.core.paths import RESULTS_TOP_FILES
from study.retry import DEFAULT_MAX_FAILURES

from analysis.hypotheses import (Design, HypothesisError, HypothesisSpec, MetricName, check_delta, delta_problem, resolve,
                                 to_tags)

# ---- names that later stages take (checked at load, so a study that loads also runs)
# A study name is an MLflow experiment name and a path component (runs/<name>, mlartifacts/<name>,
# ray_results/<name>-<time>): letters, digits, '_', '.', '-', starting with a letter or digit.
# a cell's level name: its factors' labels joined by this (so no label may hold it)
LEVEL_SEPARATOR = " / "
STUDY_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
# the study file's patterns in words (with the run config's: a level's values are config values)
STUDY_PATTERN_WORDS = {**PATTERN_WORDS,
                       STUDY_NAME_RE: "must be 1-100 letters, digits, '_', '.' or '-', starting with a letter or "
                                      "digit (it names the MLflow experiment and the results folder)"}
# A factor name is an MLflow param key (and the tag key 'factor.<name>'): MLflow allows letters,
# digits, '_', '-', '.', ' ', ':', '/' (mlflow.utils.validation); '/' is left out here because
# MLflow treats keys as file paths in places, ',' because the tag 'factors' joins the names with it.
_FACTOR_NAME_RE = re.compile(r"^[\w.\- :]{1,200}$")
# MLflow's limits (mlflow.utils.validation and the runs table): run names 250 characters,
# param values 6,000, tag values 8,000
MAX_RUN_NAME = 250
MAX_PARAM_VALUE = 6000
# per preset: a cell's time limit (hours) and the longest silence between two of its epochs (minutes),
# generous for each preset's cells (cpu: about 2.5 min a cell, 30 s an epoch); a study file's
# max_cell_hours / max_epoch_minutes (or its preset's) override them
# the ranges a study file may give them: the watchdog looks once a second (so no limit under 3.6 s or 3 s),
# and a limit past a year or a week is no limit (say so by leaving the key out: the preset's default)
MAX_CELL_HOURS = (0.001, 8760.0)
MAX_EPOCH_MINUTES = (0.05, 10080.0)
TIME_LIMITS = {"smoke": (0.5, 10.0), "cpu": (3.0, 30.0), "gpu": (48.0, 60.0), "imagenet": (500.0, 360.0)}
MLFLOW_DEFAULT_EXPERIMENT = "Default"  # MLflow's experiment 0, created with every store
MAX_TAG_VALUE = 5000  # well under MLflow's limit on a tag's value
MAX_LABEL = 100
# a factor may not be named like what the cell run already records under that name
_RESERVED_FACTORS = ("seed",)
# the cell metrics the analysis can rank a study by and decide a hypothesis on (analysis.hypotheses, one home)
Metric = MetricName


class Level(BaseModel):
    """One level of a factor: a label and the config keys it sets."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
    label: str = Field(min_length=1)
    set: dict[str, Any] = Field(min_length=1)


class Resources(BaseModel):
    """What one trial asks of the scheduler."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
    cpus: int = Field(default=1, ge=1)
    gpus: float = Field(default=0.0, ge=0.0)


def check_seeds(seeds: list[int]) -> list[int]:
    """A seeds list: distinct integers in 0..MAX_SEED (the run config's range); ValueError otherwise."""
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"duplicate seeds in {seeds}")
    bad = [s for s in seeds if not 0 <= s <= MAX_SEED]
    if bad:
        raise ValueError(f"seeds must lie in 0..{MAX_SEED} (got {bad[0]})")
    return seeds


class PresetSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
    set: dict[str, Any] = Field(default_factory=dict)
    resources: Resources = Field(default_factory=Resources)
    seeds: Optional[list[int]] = Field(default=None, min_length=1)
    max_failures: Optional[int] = Field(default=None, ge=0)
    max_seeds: Optional[int] = Field(default=None, ge=2)
    max_cell_hours: Optional[float] = Field(default=None, ge=MAX_CELL_HOURS[0], le=MAX_CELL_HOURS[1])
    max_epoch_minutes: Optional[float] = Field(default=None, ge=MAX_EPOCH_MINUTES[0], le=MAX_EPOCH_MINUTES[1])

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, seeds: Optional[list[int]]) -> Optional[list[int]]:
        return None if seeds is None else check_seeds(seeds)


class StudySpec(BaseModel):
    """The schema of a study file. Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
    name: str = Field(min_length=1, pattern=STUDY_NAME_RE)
    description: str = Field(default="", max_length=2000)
    # the paper's finding (labels, sampling, boundary, method): shorthand for its hypotheses (analysis.paper)
    finding: Optional[str] = None
    hypotheses: list[HypothesisSpec] = Field(default_factory=list)
    fixed: dict[str, Any] = Field(default_factory=dict)
    factors: dict[str, list[Union[str, int, float, bool, Level]]] = Field(min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    metric: Metric = "knn_top1"
    presets: dict[str, PresetSpec] = Field(default_factory=dict)
    max_failures: int = Field(default=DEFAULT_MAX_FAILURES, ge=0)  # the retry policy: study/retry.py
    # a cell's time limit and the longest silence between two of its epochs (a hung cell is stopped and
    # marked FAILED with the reason: cluster.tune_run.Watchdog); default: the preset's TIME_LIMITS
    max_cell_hours: Optional[float] = Field(default=None, ge=MAX_CELL_HOURS[0], le=MAX_CELL_HOURS[1])
    max_epoch_minutes: Optional[float] = Field(default=None, ge=MAX_EPOCH_MINUTES[0], le=MAX_EPOCH_MINUTES[1])
    # --until-decided's limit on seeds per cell when the command gives none (default: analysis.decide.MAX_SEEDS)
    max_seeds: Optional[int] = Field(default=None, ge=2)
    # half-width of the region of practical equivalence of the finding's comparisons, in the
    # metric's units (accuracies are fractions: 0.005 = 0.5 points of kNN top-1)
    equivalence_delta: float = Field(default=0.005, gt=0)

    @field_validator("factors")
    @classmethod
    def _levels(cls, factors: dict) -> dict:
        for name, levels in factors.items():
            problem = factor_name_problem(name)
            if problem:
                raise ValueError(f"factor name {name!r} {problem}")
            if not levels:
                raise ValueError(f"factor '{name}' has no levels")
            labels = [_label(name, lv) for lv in levels]
            for lb in labels:
                problem = label_problem(lb)
                if problem:
                    raise ValueError(f"factor '{name}': level label {lb!r} {problem}")
            dup = sorted({lb for lb in labels if labels.count(lb) > 1})
            if dup:
                raise ValueError(f"factor '{name}' has duplicate levels: {', '.join(dup)}")
            if pair := look_alike(labels):
                raise ValueError(f"factor '{name}': levels {pair[0]!r} and {pair[1]!r} look alike (the same up to "
                                 "case, dashes and Unicode's compatibility forms, NFKC): the figures and tables would "
                                 "not tell them apart")
        if pair := look_alike(factors):
            raise ValueError(f"factors {pair[0]!r} and {pair[1]!r} look alike (the same up to case, dashes and "
                             "Unicode's compatibility forms, NFKC): the figures and tables would not tell them apart")
        return factors

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, seeds: list[int]) -> list[int]:
        return check_seeds(seeds)

    @field_validator("equivalence_delta")
    @classmethod
    def _delta(cls, value: float) -> float:
        return check_delta(value)

    @field_validator("name")
    @classmethod
    def _name_free(cls, name: str) -> str:
        if name.lower() in {f.lower() for f in RESULTS_TOP_FILES}:
            raise ValueError(f"'{name}' is taken: the analysis writes results/{name} "
                             f"(taken: {', '.join(RESULTS_TOP_FILES)})")
        if name == MLFLOW_DEFAULT_EXPERIMENT:
            raise ValueError(f"'{name}' is MLflow's built-in experiment 0, whose artifacts go to ./mlruns/0 of "
                             "whatever folder the store was first opened from, not to the toolkit's artifact root: "
                             "give the study another name")
        return name

    @field_validator("presets")
    @classmethod
    def _presets_known(cls, presets: dict) -> dict:
        for name in presets:
            if name not in PRESETS:
                raise ValueError(f"unknown preset '{name}'{did_you_mean(name, tuple(PRESETS))} "
                                 f"(allowed: {', '.join(PRESETS)})")
        return presets


def factor_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a factor (an MLflow param key), or None when it can."""
    if not _FACTOR_NAME_RE.match(name):
        return ("is not allowed: use 1-200 letters, digits, '_', '-', '.', ':' or spaces "
                "(it becomes an MLflow param key)")
    norm = posixpath.normpath(name)
    if norm != name or norm in (".", "..") or name.strip() != name:
        return "is not allowed: MLflow reads param keys as file paths (no leading/trailing '.', '..' or spaces)"
    if name in _RESERVED_FACTORS:
        return f"is taken: every cell run records its own '{name}' (set seeds with the top-level 'seeds')"
    return drawn_text_problem(name)


def _named(chars) -> str:
    """``'\\xa0' (U+00A0 NO-BREAK SPACE), ...``: characters as a message must show them (some do not show)."""
    import unicodedata

    seen = list(dict.fromkeys(chars))
    named = [f"{ch!r} (U+{ord(ch):04X} "
             f"{unicodedata.name(ch, 'a control character' if unicodedata.category(ch) == 'Cc' else 'unnamed')})"
             for ch in seen[:3]]
    return ", ".join(named) + (f" and {len(seen) - 3} more" if len(seen) > 3 else "")


# Unicode's Default_Ignorable_Code_Point (DerivedCoreProperties.txt, Unicode 15; fonts draw nothing for
# them) that Python's str.isprintable lets through, and characters whose glyph is blank
_BLANK_RANGES = ((0x034F, 0x034F), (0x115F, 0x1160), (0x17B4, 0x17B5), (0x180B, 0x180F), (0x2800, 0x2800),
                 (0x3164, 0x3164), (0xFE00, 0xFE0F), (0xFFA0, 0xFFA0), (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A),
                 (0xE0000, 0xE0FFF))


def _blank(ch: str) -> bool:
    """Whether ``ch`` shows nothing though Python calls it printable (a filler, a grapheme joiner, a
    variation selector, the blank Braille pattern)."""
    return any(lo <= ord(ch) <= hi for lo, hi in _BLANK_RANGES)


# dashes and minus signs a figure draws like the ASCII hyphen-minus
_DASHES = str.maketrans({c: "-" for c in "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63\uff0d"})
# scripts whose letters look like Latin ones (a label mixing them passes for another: 'соs' and 'cos')
_LOOKALIKE_SCRIPTS = ("LATIN", "CYRILLIC", "GREEK")


def look_alike(texts) -> tuple[str, str] | None:
    """The first two different ``texts`` that a figure or a table shows alike, or None: equal under
    Unicode's compatibility form (NFKC: a full-width 'ｈａｒｄ' and 'hard', a ligature and its letters),
    up to dashes ('semi‐hard' with U+2010 and 'semi-hard', '−0.5' with U+2212) and up to case (a
    case-insensitive store, as MySQL's usual collation, would take them for one)."""
    import unicodedata

    seen: dict[str, str] = {}
    for t in texts:
        key = unicodedata.normalize("NFKC", t).translate(_DASHES).casefold()
        if key in seen and seen[key] != t:
            return seen[key], t
        seen.setdefault(key, t)
    return None


def drawn_text_problem(text: str) -> str | None:
    """Why ``text`` (a level label or a factor name: the figures draw both) would not come out as written
    in a figure, a tag or a table, or None:

    - a character that does not show: a control character, a non-breaking or zero-width space, a
      direction mark (what Python's ``str.isprintable`` refuses, the ASCII space aside);
    - decomposed characters (a letter then its combining accent): another label may look the same and
      differ; the composed form (Unicode NFC) is the one to write;
    - a character no font of the figures has (:func:`analysis.fonts.missing_glyphs`), or a combining
      mark only a font without shaping tables has (:func:`analysis.fonts.unshaped_marks`): matplotlib
      shapes text (libraqm) only with the script's tables in the font.
    """
    import unicodedata

    if hidden := [ch for ch in text if not ch.isprintable() or _blank(ch)]:
        return (f"holds {_named(hidden)}, a character that does not show or controls the layout (use plain "
                "spaces and visible characters)")
    scripts = {unicodedata.name(ch, "").split(" ")[0] for ch in text if ch.isalpha()}
    if len(mixed := sorted(scripts & set(_LOOKALIKE_SCRIPTS))) > 1:
        return (f"mixes {' and '.join(m.title() for m in mixed)} letters, which look alike (e.g. Cyrillic 'с' and "
                "Latin 'c'): it would pass for another label; write it in one script")
    if text != text.strip(" ") or "  " in text:
        return ("has a space at its start or end, or two in a row: it would look like the label without them "
                "and be another level (write single spaces between words)")
    composed = unicodedata.normalize("NFC", text)
    if composed != text:
        return (f"is not in Unicode's composed form (NFC; e.g. a letter, then its combining accent): write it as "
                f"{composed!r}, or a label that looks the same would be another level")
    from analysis.fonts import FONT_PACKAGES, missing_glyphs, unshaped_marks

    if missing := missing_glyphs(text):
        return (f"holds {', '.join(repr(ch) for ch in missing)}, which no font of the figures can draw (installed "
                f"by make setup: Debian {FONT_PACKAGES}; the figures would show empty boxes)")
    if marks := unshaped_marks(text):
        return (f"holds {_named(marks)}, which the figures would not draw as written (a mark or joining letter "
                "only Unifont has, a font without shaping tables, or a part of an emoji sequence: drawn apart from "
                "its neighbours; the fonts of make setup shape Devanagari, Bengali, Tamil, Thai, Arabic, Hebrew and "
                "the other scripts of analysis/fonts.py)")
    return None


def label_problem(label: str) -> str | None:
    """Why ``label`` cannot be a level label (shown in run names and tags), or None when it can."""
    if not label.strip():
        return "is blank"
    if len(label) > MAX_LABEL:
        return f"is {len(label)} characters long (at most {MAX_LABEL})"
    if problem := drawn_text_problem(label):
        return problem
    if "|" in label:
        return "holds '|', which would split the cells of the report's Markdown tables"
    if LEVEL_SEPARATOR in label:
        return f"holds '{LEVEL_SEPARATOR}', which joins the labels of several factors into one level's name"
    return None


def _label(factor: str, level: Any) -> str:
    if isinstance(level, Level):
        return level.label
    return str(level).lower() if isinstance(level, bool) else str(level)


def _level_sets(factor: str, level: Any) -> dict[str, Any]:
    """A scalar level sets the config key named like its factor."""
    return dict(level.set) if isinstance(level, Level) else {factor: level}


@dataclass(frozen=True)
class Cell:
    """One run of a study: its levels, seed, resolved config and stable id."""

    study: str
    levels: dict[str, str]  # factor -> level label
    seed: int
    config: TrainConfig
    cell_id: str
    preset: str
    # the study's settings this cell ran under (fixed, preset, --set; not its levels or seed), as a
    # hash: the analysis compares only cells of one variant (tag ``variant``); "" when unknown
    variant: str = ""

    @property
    def level(self) -> str:
        """A human label of the cell's level(s), e.g. 'semi-hard' or 'online / hard'."""
        return LEVEL_SEPARATOR.join(self.levels.values())

    @property
    def name(self) -> str:
        return f"{self.level} seed={self.seed}"


@dataclass(frozen=True)
class Study:
    spec: StudySpec
    path: Path
    preset: str
    cells: tuple[Cell, ...]
    resources: Resources
    max_failures: int
    # seconds: a cell's time limit, the longest silence between two epochs (cluster.tune_run.Watchdog)
    time_limits: tuple[float, float] = (3 * 3600.0, 30 * 60.0)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def factors(self) -> list[str]:
        return list(self.spec.factors)

    @property
    def planned_seeds(self) -> list[int]:
        """The study file's seeds at this preset: every level runs them (the adaptive loop adds
        seeds to some levels only; those are not in this list)."""
        pspec = self.spec.presets.get(self.preset)
        return list((pspec.seeds if pspec is not None and pspec.seeds else None) or self.spec.seeds)

    @property
    def max_seeds(self) -> int | None:
        """The study file's limit on seeds for ``--until-decided`` at this preset (None: the toolkit's)."""
        pspec = self.spec.presets.get(self.preset)
        return pspec.max_seeds if pspec is not None and pspec.max_seeds is not None else self.spec.max_seeds

    @property
    def design(self) -> Design:
        return study_design(self.spec)

    @property
    def hypotheses(self) -> list[HypothesisSpec]:
        """The study's hypotheses: the ``finding`` shorthand's (analysis.paper), then the file's."""
        return study_hypotheses(self.spec)

    def parent_params(self) -> dict[str, str]:
        """The params of the study's parent run (its identity in the store)."""
        return {"factors": ",".join(self.factors), "metric": self.spec.metric, "preset": self.preset,
                "file": self.path.name}

    def parent_tags(self) -> dict[str, str]:
        """Tags the analysis reads from the parent run: the equivalence margin, the seeds every level
        runs (a level x seed gap is listed only among these, and among the seeds the adaptive loop
        gave the levels it extended), the design and the hypotheses (JSON over ``design.<i>`` and
        ``hypotheses.<i>``: the store is analysed without the file), and the file's description."""
        tags = {Tag.EQUIVALENCE_DELTA: repr(self.spec.equivalence_delta),
                # the settings of the latest command (its preset and variant): the cells the analysis counts
                Tag.PRESET: self.preset, Tag.VARIANT: self.cells[0].variant if self.cells else "",
                Tag.SEEDS: ",".join(map(str, self.planned_seeds)), Tag.DESCRIPTION: self.spec.description,
                **to_tags("design", self.design.dump()),
                **to_tags("hypotheses", [h.dump() for h in self.hypotheses])}
        # the levels every seed runs, so that the analysis lists a level no cell of which has started
        levels = json.dumps(list(dict.fromkeys(c.level for c in self.cells)))
        if len(levels) <= MAX_TAG_VALUE:
            tags[Tag.LEVELS] = levels
        return tags


def study_design(spec: StudySpec) -> Design:
    """The grid of a study file: per factor, each level's label and the settings it sets."""
    return Design(tuple(spec.factors), {f: {_label(f, lv): _level_sets(f, lv) for lv in levels}
                                        for f, levels in spec.factors.items()})


def study_hypotheses(spec: StudySpec) -> list[HypothesisSpec]:
    from analysis.paper import finding_hypotheses

    own = list(spec.hypotheses)
    if spec.finding is None:
        return own
    return finding_hypotheses(spec.finding, study_design(spec), spec.metric) + own


def cell_params(cell: Cell) -> dict[str, str]:
    """The MLflow params of a cell run: every key of its resolved config, and each factor
    named after no config key (e.g. 'boundary') with its level label; values as strings."""
    flat = cell.config.flat()
    params = {k: json.dumps(v) if isinstance(v, (list, dict)) else str(v) for k, v in flat.items()}
    for factor, label in cell.levels.items():
        params.setdefault(factor, label)
    return params


def _check_cell_for_store(cell: Cell, src: str) -> None:
    """What MLflow would refuse when the cell's run is created: the run name and param values."""
    if len(cell.name) > MAX_RUN_NAME:
        raise UserError(f"the run name '{cell.name[:60]}...' of a cell is {len(cell.name)} characters long "
                        f"(MLflow takes at most {MAX_RUN_NAME}); shorten the level labels", source=src,
                        key="factors")
    for key, value in cell_params(cell).items():
        if len(value) > MAX_PARAM_VALUE:
            raise UserError(f"the value is {len(value)} characters long (MLflow takes at most "
                            f"{MAX_PARAM_VALUE} in a param)", source=src, key=key)


def _digest(flat: dict[str, Any]) -> str:
    """12 hex digits of a flat config, stable across runs and machines (sorted JSON, SHA-256)."""
    blob = json.dumps(flat, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def variant_hash(config: TrainConfig, level_keys) -> str:
    """The settings a cell shares with the other cells of its study run: the resolved config less
    the seed, the keys the levels set (``level_keys``) and the execution-only keys, digested. Two
    runs of one study file with different ``--set`` (or an edited ``fixed``) get different variants.
    (Not the canonical config: which keys it drops depends on the level, e.g. ``pool``.)"""
    return _digest({k: v for k, v in config.flat().items()
                    if k != "seed" and k not in level_keys and k not in EXECUTION_KEYS})


def cell_hash(config: TrainConfig) -> str:
    """A stable hash of the canonical config (:mod:`study.core.canonical`: the resolved config, seed
    included, less the keys that cannot affect the run)."""
    return _digest(canonical_config(config.flat()))


# the members of the level union, as pydantic names them in an error's location
_LEVEL_UNION = ("str", "int", "float", "bool", "Level")


def _format_validation(err: ValidationError) -> tuple[str, str]:
    """(message, dotted key) of the first problem, in the study file's own terms.

    A factor's level is a union (a plain value or a ``{label, set}`` mapping),
    so pydantic reports one error per member; the member matching what was
    written is the one named: a mapping's own problems (an unknown key: with
    the allowed keys), anything else as "a level is a value or a mapping".
    """
    errors = err.errors()
    first = errors[0]
    if tuple(first.get("loc", ()))[:1] == ("hypotheses",):
        # a hypothesis's keys are unions too (a selection or a list of them, a metric or a list): name the
        # member that fits what was written (a type error only when no member's own check speaks), and drop
        # pydantic's member tags (``literal[...]``, ``list[...]``) from the key's place
        where = tuple(first["loc"])[:2]
        mine = [e for e in errors if tuple(e["loc"])[:2] == where]
        mine.sort(key=lambda e: (e["type"] in ("list_type", "dict_type", "model_type"), -len(e["loc"])))
        first = dict(mine[0], loc=tuple(part for part in mine[0]["loc"]
                                        if not (isinstance(part, str) and ("[" in part or part in _LEVEL_UNION))))
    loc = tuple(first.get("loc", ()))
    cut = next((n for n, part in enumerate(loc) if loc[:1] == ("factors",) and part in _LEVEL_UNION), None)
    if cut is not None:
        where = loc[:cut]
        mine = [e for e in errors if tuple(e["loc"])[:cut] == where and len(e["loc"]) > cut]
        level_errors = [e for e in mine if e["loc"][cut] == "Level" and len(e["loc"]) > cut + 1]
        if level_errors:  # a mapping: its own problem, unknown keys first
            level_errors.sort(key=lambda e: e["type"] != "extra_forbidden")
            first = level_errors[0]
            loc = where + tuple(first["loc"][cut + 1:])
        else:
            return (f"a level is a plain value (text, number, true/false) or a mapping "
                    f"{{label: ..., set: {{key: value}}}} (got {first.get('input')!r})",
                    key_path(where))
    msg = pattern_message(first, first.get("msg", str(err)), STUDY_PATTERN_WORDS)
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if first.get("type") == "extra_forbidden":
        options: tuple[str, ...] = tuple(StudySpec.model_fields)
        if cut is not None:
            options = tuple(Level.model_fields)
        elif "resources" in loc:
            options = tuple(Resources.model_fields)
        elif loc[:1] == ("presets",):
            options = tuple(PresetSpec.model_fields)
        elif loc[:1] == ("hypotheses",):
            from analysis.hypotheses import TrendSpec

            options = tuple(TrendSpec.model_fields) if "trend" in loc[:-1] else tuple(HypothesisSpec.model_fields)
        msg = unknown_key(str(loc[-1]), options)
    elif first.get("type") in ("model_type", "dict_type"):
        msg = f"expected a mapping of keys (got {first.get('input')!r})"
    elif first.get("type") == "too_short" and loc == ("factors",):
        msg = "needs at least one factor (factor name: [its levels])"
    elif first.get("type") == "missing" and cut is not None:
        msg = f"a level mapping needs the keys {', '.join(Level.model_fields)}; '{loc[-1]}' is missing"
    elif "input" in first and not isinstance(first["input"], (dict, list)):
        msg = f"{msg} (got {first['input']!r})"
    return msg, key_path(loc)


def read_study_file(path: str | Path) -> StudySpec:
    """Parse and validate a study file; every problem is one UserError naming file and key."""
    path = Path(path)
    src = str(path)
    raw = read_yaml(path, "study file")
    if raw is None:
        raise UserError("the file is empty (expected keys: name, factors, ...)", source=src)
    if not isinstance(raw, dict):
        raise UserError(f"expected a mapping of keys, got {type(raw).__name__}", source=src)
    try:
        spec = StudySpec.model_validate(raw)
    except ValidationError as err:
        msg, loc = _format_validation(err)
        raise UserError(msg, source=src, key=loc or None) from None
    # every config key named anywhere must exist in the run schema
    _check_config_keys(spec.fixed, src, "fixed")
    for fname, levels in spec.factors.items():
        for i, lv in enumerate(levels):
            keys = lv.set if isinstance(lv, Level) else {fname: lv}
            _check_config_keys(keys, src, f"factors.{fname}" + (f"[{i}].set" if isinstance(lv, Level) else ""))
    for pname, p in spec.presets.items():
        _check_config_keys(p.set, src, f"presets.{pname}.set")
    # a level overrides 'fixed' and a preset's 'set': a key given in both would be silently lost
    owned = factor_keys(spec)
    for where, values in [("fixed", spec.fixed)] + [(f"presets.{n}.set", p.set) for n, p in spec.presets.items()]:
        for key in values:
            if key in owned:
                raise UserError(f"is set by the levels of factor '{owned[key]}', which override {where}: "
                                f"remove it from {where}", source=src, key=f"{where}.{key}")
    if spec.finding is not None:
        _check_finding(spec, src)
    return spec


def factor_keys(spec: StudySpec) -> dict[str, str]:
    """Every config key some factor's levels set -> that factor."""
    return {key: fname for fname, levels in spec.factors.items() for lv in levels for key in _level_sets(fname, lv)}


def _check_finding(spec: StudySpec, src: str) -> None:
    """``finding`` names one of the paper's findings (analysis.paper) whose factor the study varies."""
    from analysis.paper import FINDING_FACTORS

    if spec.finding not in FINDING_FACTORS:
        raise UserError(f"unknown finding '{spec.finding}'{did_you_mean(spec.finding, tuple(FINDING_FACTORS))} "
                        f"(allowed: {', '.join(FINDING_FACTORS)})", source=src, key="finding")
    if FINDING_FACTORS[spec.finding] not in spec.factors:
        raise UserError(f"finding '{spec.finding}' compares levels of factor '{FINDING_FACTORS[spec.finding]}', "
                        f"which this study does not vary (its factors: {', '.join(spec.factors)})",
                        source=src, key="finding")


def metric_unrecorded(metric: str, cfg: TrainConfig) -> str | None:
    """Why a run of ``cfg`` records no ``metric`` (a study's primary metric), or None when it does:
    NMI and ARI score the pseudo-labels, which only the inter-image branch has; the linear
    probe runs only with ``linear_epochs`` > 0."""
    if metric in ("nmi", "final_nmi", "ari") and not cfg.inter_enabled:
        return f"method {cfg.method} has no pseudo-labels to score"
    if metric == "linear_top1" and cfg.linear_epochs == 0:
        return "linear_epochs is 0 (no linear probe)"
    low = {names.lowshot_metric(k): k for k in names.LOWSHOT_SHOTS}
    if metric in low and low[metric] not in cfg.lowshot_shots:
        return f"its lowshot_shots {cfg.lowshot_shots} leave out k = {low[metric]}"
    semi = {names.semisup_metric(f): f for f in names.SEMISUP_FRACTIONS}
    if metric in semi and semi[metric] not in cfg.semisup_fractions:
        return f"its semisup_fractions {cfg.semisup_fractions} leave out {semi[metric]:g}"
    transfer = {names.transfer_metric(d): d for d in names.TRANSFER_DATASETS}
    if metric in transfer and cfg.transfer_dataset != transfer[metric]:
        return f"its transfer_dataset is {cfg.transfer_dataset}"
    named = names.metric_named(metric)  # any other per-epoch metric: the runs the contract says record it
    if named is not None and not names.records(named, cfg.inter_enabled, cfg.labels):
        return f"only {named.runs} record it"
    return None


def _check_transfer_data(cells: list[Cell], src: str) -> None:
    """The transfer protocol's dataset is on disk (a cell would otherwise fail after its training)."""
    import importlib

    from study.core.datasets import DATASETS

    for name in sorted({c.config.transfer_dataset for c in cells} - {None}):
        entry = DATASETS[name]
        if not importlib.import_module(entry.module).files(None):
            raise UserError(f"the transfer protocol's dataset {name} is not on disk; {entry.hint}", source=src,
                            key="transfer_dataset")


def _check_metric_recorded(spec: StudySpec, cells: list[Cell], src: str) -> None:
    """Every cell records the study's metric: a level without it pairs no seed, and no amount of
    seeds would decide its comparison."""
    for cell in cells:
        why = metric_unrecorded(spec.metric, cell.config)
        if why:
            usable = [m for m in get_args(Metric) if metric_unrecorded(m, cell.config) is None]
            raise UserError(f"'{spec.metric}' is not recorded by level '{cell.level}' ({why}; allowed for it: "
                            f"{', '.join(usable)})", source=src, key="metric")


def _check_hypotheses(spec: StudySpec, cells: list[Cell], src: str) -> None:
    """Every hypothesis can be tested by the study's levels: its selections each pick one level of the
    factors they name, its trend follows an ordered setting, its metric is recorded by every level it
    compares, no two share a name (analysis.hypotheses.resolve; one UserError naming the key)."""
    design = study_design(spec)
    shorthand = len(study_hypotheses(spec)) - len(spec.hypotheses)
    by_level: dict[str, Cell] = {}
    for cell in cells:
        by_level.setdefault(cell.level, cell)
    if (why := delta_problem(spec.equivalence_delta, spec.metric)) is not None:
        raise UserError(why, source=src, key="equivalence_delta")
    seen: dict[str, str] = {}
    contrasts: dict[tuple, str] = {}
    for i, h in enumerate(study_hypotheses(spec)):
        where = "finding" if i < shorthand else f"hypotheses[{i - shorthand}]"
        if h.name in seen:
            raise UserError(f"two hypotheses are named '{h.name}' ({seen[h.name]} and {where}): names must differ "
                            "(they name the verdicts)", source=src, key=f"{where}.name")
        seen[h.name] = where
        for m in h.metrics(spec.metric):
            if h.delta is not None and (why := delta_problem(h.delta, m)) is not None:
                raise UserError(why, source=src, key=where if where == "finding" else f"{where}.delta")
            if h.delta is None and (why := delta_problem(spec.equivalence_delta, m)) is not None:
                raise UserError(f"{why} (the default of hypothesis {where}, metric {m})", source=src,
                                key="equivalence_delta")
        try:
            resolved = resolve(h, design, spec.metric, spec.equivalence_delta)
        except HypothesisError as err:
            key = where if where == "finding" else f"{where}.{err.key}" if err.key else where
            raise UserError(str(err), source=src, key=key) from None
        same = tuple(sorted((u.equivalence, p.metric, tuple(sorted(p.weights))) for u in resolved.units
                            for p in u.parts))
        if same in contrasts:
            raise UserError(f"tests the same contrasts as hypothesis '{contrasts[same]}' (it would count twice in "
                            "the study's multiplicity correction)", source=src, key=f"{where}")
        contrasts[same] = h.name
        for unit in resolved.units:
            for part in unit.parts:
                for level in part.levels:
                    why = metric_unrecorded(part.metric, by_level[level].config)
                    if why:
                        raise UserError(f"'{part.metric}' is not recorded by level '{level}' ({why}), which the "
                                        "hypothesis compares", source=src,
                                        key=where if where == "finding" else f"{where}.metric")


def _blame_sets(err: UserError, preset: str, values: dict[str, Any], sets: dict[str, Any], where: str
                ) -> UserError:
    """The error of a cell's config, naming the ``--set`` it comes from when the cell builds without them.

    A ``--set`` applies to every cell, so its mistake is not the first level's:
    ``--set margin=abc: key 'margin': ...`` rather than ``study.yaml (level
    cosine +0.5, seed 0): ...``, also when the error names another key (``--set
    train_subset=100`` makes ``min_cluster`` too large). The ``--set`` named are
    those that fail on their own, else all of them. A cell that fails without
    any ``--set`` is the study file's error, unchanged.
    """
    def fails(extra: dict[str, Any]) -> bool:
        try:
            build_config(preset, {**values, **extra}, source="")
        except UserError:
            return True
        return False

    if not sets or fails({}):
        return err
    blamed = [k for k in sets if fails({k: sets[k]})] or list(sets)
    given = " ".join(f"--set {k}={sets[k]}" for k in blamed)
    return UserError(f"{err.message} (first cell it fails: {where})", source=given, key=err.key)


def _check_config_keys(values: dict, src: str, where: str) -> None:
    for key in values:
        if key not in CONFIG_KEYS:
            raise UserError(f"unknown config key '{key}'{did_you_mean(key, CONFIG_KEYS)}",
                            source=src, key=where)
        if key == "seed":
            raise UserError("set seeds with the top-level 'seeds' list", source=src, key=f"{where}.seed")


def _check_sets(spec: StudySpec, sets: dict[str, Any]) -> None:
    """A ``--set`` applies to every cell: it may not set the seed or a key the levels vary
    (every cell would then run the same value under its level's label)."""
    owned = factor_keys(spec)
    for key, value in sets.items():
        if key == "seed":
            raise UserError("the seeds are the study file's 'seeds' list (or --until-decided's); a --set "
                            "cannot give one seed to every cell", source=f"--set {key}={value}", key=key)
        if key in owned:
            raise UserError(f"is what the levels of factor '{owned[key]}' vary: a --set would give every "
                            "level the same value under its own label; change the levels in the study "
                            "file instead", source=f"--set {key}={value}", key=key)


def load_study(path: str | Path, preset: str = "cpu", sets: dict[str, Any] | None = None,
               out_root: Path | None = None, seeds: list[int] | None = None) -> Study:
    """Read, validate and expand a study file into its cells (nothing is written).

    ``seeds``: expand these seeds instead of the file's (the adaptive loop adds seeds).
    """
    path = Path(path).resolve()
    spec = read_study_file(path)
    src = str(path)
    if preset not in PRESETS:
        raise UserError(f"unknown preset '{preset}'{did_you_mean(preset, tuple(PRESETS))} "
                        f"(allowed: {', '.join(PRESETS)})", source="--preset")
    _check_sets(spec, sets or {})
    pspec = spec.presets.get(preset, PresetSpec())
    seeds = list(seeds) if seeds is not None else (pspec.seeds or spec.seeds)
    factor_names = list(spec.factors)
    cells = []
    seen: dict[str, str] = {}
    owned = factor_keys(spec)
    for combo in itertools.product(*(spec.factors[f] for f in factor_names)):
        levels = {f: _label(f, lv) for f, lv in zip(factor_names, combo)}
        values: dict[str, Any] = dict(spec.fixed)
        values.update(pspec.set)
        for f, lv in zip(factor_names, combo):
            values.update(_level_sets(f, lv))
        for seed in seeds:
            cell_values = dict(values, seed=seed)
            cell_values.update(sets or {})
            cell_desc = f"level {LEVEL_SEPARATOR.join(levels.values())}, seed {seed}"
            try:
                cfg = build_config(preset, cell_values, source=f"{src} ({cell_desc})")
            except UserError as err:
                raise _blame_sets(err, preset, dict(values, seed=seed), sets or {},
                                  f"{cell_desc} of {path.name}") from None
            cid = cell_hash(cfg)
            if cid in seen:
                raise UserError(f"levels '{seen[cid]}' and '{LEVEL_SEPARATOR.join(levels.values())}' resolve to the "
                                "same config (once the keys that cannot affect a run are left out; see "
                                "study/core/canonical.py)", source=src, key="factors")
            seen[cid] = LEVEL_SEPARATOR.join(levels.values())
            cell = Cell(spec.name, levels, seed, cfg, cid, preset, variant_hash(cfg, owned))
            _check_cell_for_store(cell, src)
            cells.append(cell)
    _check_metric_recorded(spec, cells, src)
    _check_transfer_data(cells, src)
    _check_hypotheses(spec, cells, src)
    hours, minutes = TIME_LIMITS.get(preset, TIME_LIMITS["cpu"])
    hours = next(v for v in (pspec.max_cell_hours, spec.max_cell_hours, hours) if v is not None)
    minutes = next(v for v in (pspec.max_epoch_minutes, spec.max_epoch_minutes, minutes) if v is not None)
    return Study(spec, path, preset, tuple(cells), pspec.resources,
                 pspec.max_failures if pspec.max_failures is not None else spec.max_failures,
                 (hours * 3600.0, minutes * 60.0))
