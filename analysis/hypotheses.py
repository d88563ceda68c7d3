"""Hypotheses a study states, as data: their schema, and their resolution into contrasts over the study's grid.

A study file's ``hypotheses:`` list (DESIGN.md) says what the study is for, in its own settings,
without any Python. Each entry has a ``name`` and a ``claim`` (its words head the report's
section) and one kind:

- *pairwise*: ``better:`` and ``worse:`` select levels by their settings (``{sampling: semi-hard}``,
  or a factor's level label, ``{boundary: "cosine -0.5"}``); in a crossed study the other factors
  are averaged (a main effect), or fixed by ``within:`` (one stratum), or taken one stratum at a
  time by ``each: true`` (a simple effect per stratum, adjusted for multiplicity with the rest of
  the study's family);
- *trend*: ``trend: {setting: margin, better: lower}``: the slope of the metric on an ordered
  numeric setting (``order: [a, b, c]``, worst to best, orders a non-numeric one; ``where:``
  keeps some of the factor's levels, e.g. ``{margin_type: cosine}``), seeds as blocks;
- *equivalent*: ``equivalent: [{...}, {...}]``: two selections claimed equal within ``delta``;
- *interaction*: ``better:``/``worse:`` with ``trend:``: the trend of the difference
  ``better - worse`` along another factor's setting ("the advantage grows with training").

``metric`` (default: the study's) and ``better``/``worse`` may be lists: a claim on several
metrics or against several levels holds only if every part holds (an intersection-union test:
no multiplicity correction among its parts); ``delta`` (default: the study's
``equivalence_delta``) is the region of practical equivalence, in the metric's units.

Every kind becomes *units* (one, or one per stratum with ``each``), each a conjunction of
*parts*; a part is a contrast: weights over the grid's cells (levels) whose weighted sum, per
seed, is the value tested (a paired difference, a slope, a difference of slopes). The same
one-sample statistics then decide every kind (:mod:`analysis.evaluate`).

Light on purpose (pydantic and the standard library): the study-file loader resolves each
hypothesis against the study's design when the file loads (:func:`resolve`), so a bad one is one
error with its key before anything runs, and the analysis resolves the same JSON from the parent
run (tags ``hypotheses.<i>`` and ``design.<i>``) without the file.
"""
from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from study.core.names import EPOCH_METRICS, FRACTION_FINALS, PROTOCOL_METRICS, metric_named

# the metrics a study or a hypothesis can be decided on (cell metrics of analysis.load): the final
# ones, the convergence area, and every per-epoch metric the store's contract names (its last value)
METRICS = ("knn_top1", "final_knn_top1", "linear_top1", "nmi", "final_nmi", "ari", "knn_auc") + tuple(
    m.name for m in EPOCH_METRICS if m.name not in ("knn_top1", "nmi", "ari")) + PROTOCOL_METRICS
MetricName = Literal[METRICS]
Scalar = Union[bool, int, float, str]
Selector = dict[str, Scalar]
PRIMARY = "primary"  # the family of the study's own question (HypothesisSpec.family)
# a hypothesis name is part of tag keys (verdict.<name>) and of the report's anchors
NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
LEVEL_SEPARATOR = " / "  # a cell's level name: its factors' labels joined by this (study.studyfile)
TAG_CHUNK = 5000  # characters per tag when a JSON value is spread over tags <prefix>.0, <prefix>.1, ...


class HypothesisError(ValueError):
    """A hypothesis the study cannot test: ``key`` is its place under the hypothesis (``better``, ...)."""

    def __init__(self, message: str, key: str = ""):
        super().__init__(message)
        self.key = key


class TrendSpec(BaseModel):
    """``trend:``: the setting whose order the claim follows, and which end is better."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
    setting: str = Field(min_length=1)
    better: Optional[Literal["lower", "higher"]] = None
    order: Optional[list[Scalar]] = Field(default=None, min_length=2)
    where: Optional[Selector] = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_direction(self) -> "TrendSpec":
        if (self.better is None) == (self.order is None):
            raise ValueError("give trend.better (lower or higher, for a numeric setting) or trend.order (its values "
                             "from worst to best, for any setting), not both")
        return self


class HypothesisSpec(BaseModel):
    """One entry of a study file's ``hypotheses:`` (see the module docstring). Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
    name: str = Field(pattern=NAME_RE)
    claim: str = Field(min_length=1, max_length=500)

    @model_validator(mode="before")
    @classmethod
    def _not_a_finding(cls, data):
        if isinstance(data, dict) and "finding" in data:
            raise ValueError("finding is a top-level key of the study file (finding: sampling states the paper's "
                             "hypothesis of that finding), not a key of a hypothesis: write it beside hypotheses:")
        return data

    better: Optional[Union[Selector, list[Selector]]] = None
    worse: Optional[Union[Selector, list[Selector]]] = None
    equivalent: Optional[list[Selector]] = None
    trend: Optional[TrendSpec] = None
    metric: Optional[Union[MetricName, list[MetricName]]] = None
    delta: Optional[float] = None
    within: Optional[Selector] = Field(default=None, min_length=1)
    each: bool = False
    # the family whose error rate it shares: the study's question (PRIMARY: the adaptive loop adds seeds
    # until it is decided), or another family of its own error control that never adds seeds, e.g. the
    # mechanism behind a finding (family: mechanism)
    family: str = Field(default="primary", pattern=NAME_RE)

    @field_validator("better", "worse")
    @classmethod
    def _selectors(cls, value):
        for sel in value if isinstance(value, list) else [value] if value is not None else []:
            if not sel:
                raise ValueError("a selection names at least one setting, e.g. {sampling: semi-hard}")
        if isinstance(value, list) and not value:
            raise ValueError("an empty list selects nothing")
        return value

    @field_validator("delta")
    @classmethod
    def _delta(cls, value):
        if value is not None:
            check_delta(value)
        return value

    @field_validator("equivalent")
    @classmethod
    def _two(cls, value):
        if value is not None and (len(value) != 2 or not all(value)):
            raise ValueError("equivalent takes two selections, e.g. [{temperature: 0.1}, {temperature: 0.2}]")
        return value

    @field_validator("metric")
    @classmethod
    def _metrics(cls, value):
        if isinstance(value, list) and (not value or len(set(value)) != len(value)):
            raise ValueError("a list of metrics must be non-empty and name each metric once")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> "HypothesisSpec":
        if (self.better is None) != (self.worse is None):
            raise ValueError("better and worse go together (the claimed-better selection and the other)")
        if self.equivalent is not None and (self.better is not None or self.trend is not None):
            raise ValueError("equivalent is a kind of its own: no better, worse or trend with it")
        if self.better is None and self.equivalent is None and self.trend is None:
            raise ValueError("states no claim: give better + worse, equivalent, or trend")
        return self

    @property
    def kind(self) -> str:
        """'pairwise', 'trend', 'equivalent' or 'interaction' (better/worse with a trend)."""
        if self.equivalent is not None:
            return "equivalent"
        if self.better is not None:
            return "interaction" if self.trend is not None else "pairwise"
        return "trend"

    def metrics(self, default: str) -> list[str]:
        return [default] if self.metric is None else [self.metric] if isinstance(self.metric, str) else self.metric

    def dump(self) -> dict:
        """The JSON form kept on the parent run (unset keys left out)."""
        return self.model_dump(mode="json", exclude_none=True, exclude_defaults=True)


def check_delta(value: float) -> float:
    """A region of practical equivalence: in (0, 1), in the metric's units (ValueError naming them)."""
    if not 0.0 < value < 1.0:
        raise ValueError("must lie between 0 and 1, in the metric's units: accuracies are fractions, so 0.005 is "
                         "0.5 points")
    return value


# the widest region of equivalence for a metric stored as a fraction: 10 points (a wider one calls almost
# any two levels equivalent; 0.5 there is most likely "0.5 points" written in points)
MAX_FRACTION_DELTA = 0.1
# the store's fractions (study.core.names) and the analysis's own mean of kNN top-1 over epochs
_FRACTION_FINALS = FRACTION_FINALS + ("knn_auc",)


def delta_problem(delta: float, metric: str) -> str | None:
    """Why ``delta`` cannot be a region of equivalence for ``metric``, or None."""
    m = metric_named(metric)
    fraction = metric in _FRACTION_FINALS or (m is not None and m.unit == "fraction")
    if fraction and delta > MAX_FRACTION_DELTA:
        return (f"{delta:g} is {delta * 100:g} points of {metric}, which is stored as a fraction: a region that wide "
                f"calls almost any two levels equivalent; for {delta:g} points write {delta / 100:g} (at most "
                f"{MAX_FRACTION_DELTA:g}, 10 points)")
    return None


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


# --------------------------------------------------------------------------- the design


@dataclass(frozen=True)
class Design:
    """The study's grid: its factors in order and, per factor, each level's label and the settings
    the level sets (a scalar level of factor ``f`` sets ``{f: value}``)."""

    factors: tuple[str, ...]
    levels: dict[str, dict[str, dict[str, Any]]]  # factor -> label -> {setting: value}, in level order

    @property
    def crossed(self) -> bool:
        return len(self.factors) > 1

    def cells(self) -> list[dict[str, str]]:
        """Every combination of levels (factor -> label), in the grid's order (first factor slowest)."""
        return [dict(zip(self.factors, combo)) for combo in itertools.product(*(list(self.levels[f])
                                                                                for f in self.factors))]

    @staticmethod
    def name(cell: dict[str, str]) -> str:
        return LEVEL_SEPARATOR.join(cell.values())

    def factor_of(self, key: str) -> str | None:
        """The factor a selector key refers to: a factor's own name, else the factor whose levels set
        ``key`` (one that sets it to several values first); None when no level sets it."""
        if key in self.levels:
            return key
        setting = [f for f in self.factors if any(key in s for s in self.levels[f].values())]
        varying = [f for f in setting if len({str(_norm(s.get(key, _ABSENT))) for s in self.levels[f].values()}) > 1]
        return (varying or setting or [None])[0]

    def settings_varied(self) -> list[str]:
        return sorted({k for f in self.factors for s in self.levels[f].values() for k in s
                       if self.factor_of(k) == f})

    def dump(self) -> dict:
        return {"factors": list(self.factors), "levels": self.levels}

    @classmethod
    def load(cls, obj: dict) -> "Design":
        return cls(tuple(obj["factors"]), {f: dict(obj["levels"][f]) for f in obj["factors"]})


_ABSENT = object()


def _norm(value):
    """A value as selectors compare it: numbers as floats (0 == 0.0 == "0.0" from a store's params),
    booleans as 'true'/'false', the rest as text."""
    if value is _ABSENT:
        return ("absent",)
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value)
    try:
        number = float(text)
    except ValueError:
        return text.lower() if text.lower() in ("true", "false") else text
    return number if math.isfinite(number) else text


def _matches(level_label: str, settings: dict, factor: str, key: str, want) -> bool:
    """Whether a level matches ``key: want``: the level's setting ``key``, or (``key`` naming the factor
    itself) its label too (``{method: interclr}`` and ``{method: InterCLR}`` both pick a level
    labelled InterCLR that sets method: interclr)."""
    haves = [settings.get(key, _ABSENT)] + ([level_label] if key == factor else [])
    return any(_same(_norm(have), _norm(want)) for have in haves)


def _numeric(value) -> float | None:
    if isinstance(value, bool) or value is _ABSENT:
        return None
    n = _norm(value)
    return n if isinstance(n, float) else None


# --------------------------------------------------------------------------- resolution


@dataclass(frozen=True)
class Part:
    """One contrast of a unit: per seed, ``sum(weight * metric of the level)``; positive = the claim."""

    metric: str
    weights: tuple[tuple[str, float], ...]  # (level name, weight); levels absent from it weigh 0
    label: str  # what it compares, in the study's words
    shape: str  # "difference" (a paired difference), "slope" (per unit of the setting)
    steps: tuple["Part", ...] = ()  # for a slope: the differences between adjacent values (shown, not decided)
    per: str = ""  # a slope's unit: "per unit of margin", "per step of the order"
    # a slope's range of the setting (max - min of its values; steps of an order: their number). A
    # hypothesis's delta bounds the fitted change over that whole range, in the metric's units, so a
    # slope's region of equivalence is delta / span per unit (a slope of 0.04 pts per epoch over 5..15
    # epochs is a change of 0.4 pts, not a per-epoch 0.04 to compare with 0.5)
    span: float = 1.0

    def region(self, delta: float) -> float:
        """This part's half-width of equivalence for a hypothesis's ``delta``, in its own units."""
        return delta / self.span

    @property
    def levels(self) -> tuple[str, ...]:
        return tuple(level for level, w in self.weights if w != 0)


@dataclass(frozen=True)
class Unit:
    """What gets one verdict: a hypothesis, or one stratum of a hypothesis with ``each``."""

    hypothesis: str
    stratum: str  # "" or "labels=online"
    parts: tuple[Part, ...]
    equivalence: bool  # the claim is equality within delta (the equivalent kind)
    delta: float
    family: str = PRIMARY  # the family of its error control (HypothesisSpec.family)

    @property
    def primary(self) -> bool:
        """Of the study's primary family: what the adaptive loop decides."""
        return self.family == PRIMARY

    @property
    def name(self) -> str:
        return self.hypothesis + (f" [{self.stratum}]" if self.stratum else "")

    @property
    def levels(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(lv for p in self.parts for lv in p.levels))


@dataclass(frozen=True)
class Resolved:
    spec: HypothesisSpec
    units: tuple[Unit, ...]
    compared: tuple[str, ...] = field(default=())  # the factors whose levels it compares


def _pick(design: Design, sel: Selector, key: str, allowed: set[str] | None = None) -> dict[str, str]:
    """factor -> the one level of that factor ``sel`` selects (its keys grouped by factor)."""
    by_factor: dict[str, dict] = {}
    for k, v in sel.items():
        f = design.factor_of(k)
        if f is None:
            raise HypothesisError(f"'{k}' is not a setting this study varies{_did_you_mean(k, design)} (factors: "
                                  f"{', '.join(design.factors)}; settings the levels set: "
                                  f"{', '.join(design.settings_varied()) or 'none'})", key)
        if allowed is not None and f not in allowed:
            raise HypothesisError(f"'{k}' belongs to factor '{f}', which this selection may not fix", key)
        by_factor.setdefault(f, {})[k] = v
    out = {}
    for f, wants in by_factor.items():
        hits = [lb for lb, s in design.levels[f].items() if all(_matches(lb, s, f, k, v) for k, v in wants.items())]
        text = ", ".join(f"{k}: {v}" for k, v in wants.items())
        if not hits:
            raise HypothesisError(f"{{{text}}} matches no level of factor '{f}' (its levels: "
                                  f"{', '.join(design.levels[f])})", key)
        if len(hits) > 1:
            raise HypothesisError(f"{{{text}}} matches several levels of factor '{f}' ({', '.join(hits)}): add a "
                                  "setting that tells them apart", key)
        out[f] = hits[0]
    return out


def _did_you_mean(key: str, design: Design) -> str:
    import difflib

    close = difflib.get_close_matches(key, list(design.factors) + design.settings_varied(), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _strata(design: Design, free: list[str]) -> list[dict[str, str]]:
    return [dict(zip(free, combo)) for combo in itertools.product(*(list(design.levels[f]) for f in free))]


def _mean_weights(design: Design, fixed: dict[str, str], sign: float, into: dict[str, float],
                  scale: float = 1.0) -> None:
    """Add ``sign * scale / k`` to each of the ``k`` cells that match ``fixed`` (the others averaged)."""
    cells = [c for c in design.cells() if all(c[f] == lb for f, lb in fixed.items())]
    for c in cells:
        name = design.name(c)
        into[name] = into.get(name, 0.0) + sign * scale / len(cells)


def _difference(design: Design, better: dict[str, str], worse: dict[str, str], fixed: dict[str, str]
                ) -> dict[str, float]:
    w: dict[str, float] = {}
    _mean_weights(design, {**fixed, **better}, +1.0, w)
    _mean_weights(design, {**fixed, **worse}, -1.0, w)
    return w


def _side_text(chosen: dict[str, str]) -> str:
    return LEVEL_SEPARATOR.join(chosen.values())


def _trend_axis(design: Design, trend: TrendSpec) -> tuple[str, list[tuple[str, float]]]:
    """(factor, [(level label, x)] ordered by x) of a trend; x is the setting's value, or its position
    in ``order`` (worst first) when the setting is not numeric. Raises HypothesisError."""
    f = design.factor_of(trend.setting)
    if f is None:
        raise HypothesisError(f"'{trend.setting}' is not a setting this study varies (settings the levels set: "
                              f"{', '.join(design.settings_varied()) or 'none'})", "trend.setting")
    levels = design.levels[f]
    keep = list(levels)
    if trend.where:
        for k in trend.where:
            if design.factor_of(k) != f:
                raise HypothesisError(f"trend.where filters the levels of factor '{f}': '{k}' is not one of its "
                                      "settings", "trend.where")
        keep = [lb for lb in keep if all(_matches(lb, levels[lb], f, k, v) for k, v in trend.where.items())]
    values = {lb: levels[lb].get(trend.setting, lb if trend.setting == f else _ABSENT) for lb in keep}
    if trend.order is not None:
        order = [_norm(v) for v in trend.order]
        if len(set(map(str, order))) != len(order):
            raise HypothesisError("trend.order names a value twice", "trend.order")
        # a level is placed by its setting's value, or (the setting naming the factor) by its label
        names = {lb: [_norm(values[lb])] + ([_norm(lb)] if trend.setting == f else []) for lb in keep}

        def place(lb: str) -> int | None:
            return next((i for i, o in enumerate(order) if any(_same(v, o) for v in names[lb])), None)

        stray = [str(o) for o in order if not any(_same(v, o) for lb in keep for v in names[lb])]
        if stray or any(place(lb) is None for lb in keep):
            shown = ", ".join(f"{values[lb]}" + (f" (level {lb})" if str(values[lb]) != lb else "") for lb in keep)
            raise HypothesisError(f"trend.order must list, once each, the values of '{trend.setting}' that the levels "
                                  f"take, from worst to best ({shown})", "trend.order")
        xs = [(lb, float(place(lb))) for lb in keep]
    else:
        nums = {lb: _numeric(v) for lb, v in values.items()}
        bad = [lb for lb, x in nums.items() if x is None]
        if bad:
            raise HypothesisError(f"'{trend.setting}' is not numeric in level(s) {', '.join(bad)} (values: "
                                  f"{', '.join(str(values[lb]) for lb in bad)}): a trend needs an ordered numeric "
                                  "setting; for another one give trend.order, its values from worst to best",
                                  "trend.setting")
        xs = [(lb, nums[lb]) for lb in keep]
    if len({x for _, x in xs}) < 2:
        raise HypothesisError(f"a trend needs at least two values of '{trend.setting}' among the levels it keeps "
                              f"({', '.join(lb for lb, _ in xs) or 'none'})", "trend")
    sign = -1.0 if trend.better == "lower" else 1.0  # oriented: positive = the claimed direction
    return f, sorted(((lb, sign * x) for lb, x in xs), key=lambda t: t[1])


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def _slope_weights(xs: list[tuple[str, float]]) -> dict[str, float]:
    mean = sum(x for _, x in xs) / len(xs)
    sxx = sum((x - mean) ** 2 for _, x in xs)
    return {lb: (x - mean) / sxx for lb, x in xs}


def resolve(spec: HypothesisSpec, design: Design, default_metric: str, default_delta: float) -> Resolved:
    """The units and parts of ``spec`` on ``design``; HypothesisError (with the key under the
    hypothesis) for a hypothesis this design cannot test."""
    metrics = spec.metrics(default_metric)
    for m in metrics:
        if m not in METRICS:
            raise HypothesisError(f"unknown metric '{m}' (allowed: {', '.join(METRICS)})", "metric")
    delta = spec.delta if spec.delta is not None else default_delta
    if (spec.within is not None or spec.each) and not design.crossed:
        what = "within" if spec.within is not None else "each"
        raise HypothesisError(f"{what} takes strata of the other crossed factors; this study varies only "
                              f"'{design.factors[0]}'", what)
    compared: set[str] = set()
    # the compared sides: (label, {factor: level}) per side, per part
    if spec.kind == "equivalent":
        sides = [[_pick(design, spec.equivalent[0], "equivalent[0]")], [_pick(design, spec.equivalent[1],
                                                                               "equivalent[1]")]]
    elif spec.better is not None:
        sides = [[_pick(design, s, f"better[{i}]" if isinstance(spec.better, list) else "better")
                  for i, s in enumerate(_as_list(spec.better))],
                 [_pick(design, s, f"worse[{i}]" if isinstance(spec.worse, list) else "worse")
                  for i, s in enumerate(_as_list(spec.worse))]]
    else:
        sides = []
    if sides:
        names = [set(c) for side in sides for c in side]
        if any(n != names[0] for n in names):
            raise HypothesisError("the selections fix different factors (" + "; ".join(
                ", ".join(sorted(n)) for n in names) + "): both sides must fix the same factors, so that the "
                "others are averaged alike", "worse" if spec.kind != "equivalent" else "equivalent")
        compared = names[0]
        for i, side in enumerate(sides):
            if any(side[j] == side[k] for j in range(len(side)) for k in range(j)):
                raise HypothesisError("a list selects the same level twice", ("equivalent" if spec.kind == "equivalent"
                                                                              else ("better", "worse")[i]))
        for b in sides[0]:
            for w in sides[1]:
                if b == w:
                    key = "equivalent" if spec.kind == "equivalent" else "worse"
                    raise HypothesisError(f"both sides select the same level ({_side_text(b)})", key)
    trend_factor, xs = (None, [])
    if spec.trend is not None:
        trend_factor, xs = _trend_axis(design, spec.trend)
        if trend_factor in compared:
            raise HypothesisError(f"the trend's setting '{spec.trend.setting}' belongs to factor '{trend_factor}', "
                                  "which better/worse compare: an interaction follows the difference along "
                                  "another factor", "trend.setting")
        compared = compared | {trend_factor}
    within = _pick(design, spec.within, "within") if spec.within is not None else {}
    clash = sorted(set(within) & compared)
    if clash:
        raise HypothesisError(f"within fixes factor '{clash[0]}', which the hypothesis compares", "within")
    free = [f for f in design.factors if f not in compared and f not in within]
    if spec.each and not free:
        raise HypothesisError("each takes the strata of the factors the hypothesis neither compares nor fixes; "
                              "there are none", "each")
    strata = _strata(design, free) if spec.each else [{}]
    units = []
    for stratum in strata:
        fixed = {**within, **stratum}
        parts = []
        for m in metrics:
            parts += _parts(spec, design, m, sides, trend_factor, xs, fixed)
        text = ", ".join(f"{f}={lb}" for f, lb in stratum.items())
        units.append(Unit(spec.name, text, tuple(parts), spec.kind == "equivalent", delta, spec.family))
    return Resolved(spec, tuple(units), tuple(sorted(compared)))


def _lower_is_better(metric: str) -> bool:
    """Whether the contract says lower values of ``metric`` are better (a false-negative ratio): its
    contrasts are oriented so that positive is the claim, ``worse - better``."""
    m = metric_named(metric)
    return m is not None and m.better == "lower"


def _parts(spec: HypothesisSpec, design: Design, metric: str, sides, trend_factor, xs, fixed) -> list[Part]:
    where = "" if not fixed else " (" + ", ".join(f"{f}={lb}" for f, lb in fixed.items()) + ")"
    if _lower_is_better(metric):  # better = lower: the claim is worse - better > 0
        sides = [sides[1], sides[0]] if sides and spec.kind != "equivalent" else sides
        if spec.kind == "trend":
            xs = [(lb, -x) for lb, x in reversed(xs)]
    if spec.kind in ("pairwise", "equivalent"):
        return [Part(metric, _weights(_difference(design, b, w, fixed)),
                     f"{_side_text(b)} - {_side_text(w)}{where}", "difference")
                for b in sides[0] for w in sides[1]]
    slope = _slope_weights(xs)
    direction = (f"{spec.trend.setting}, {spec.trend.better} is better" if spec.trend.better else
                 f"{spec.trend.setting} in the order " + " < ".join(map(str, spec.trend.order)))
    out = []
    pairs = [(None, None)] if spec.kind == "trend" else [(b, w) for b in sides[0] for w in sides[1]]
    for b, w in pairs:
        weights: dict[str, float] = {}
        steps = []
        for lb, coef in slope.items():
            _add_side(design, {**fixed, trend_factor: lb}, b, w, coef, weights)
        for (lo, _), (hi, _) in zip(xs, xs[1:]):
            step: dict[str, float] = {}
            _add_side(design, {**fixed, trend_factor: hi}, b, w, 1.0, step)
            _add_side(design, {**fixed, trend_factor: lo}, b, w, -1.0, step)
            what = f"{hi} - {lo}" if b is None else f"({_side_text(b)} - {_side_text(w)}) at {hi} - at {lo}"
            steps.append(Part(metric, _weights(step), what + where, "difference"))
        what = (f"slope on {direction}" if b is None
                else f"slope of {_side_text(b)} - {_side_text(w)} on {direction}")
        per = f"per unit of {spec.trend.setting}" if spec.trend.better else "per step of the order"
        span = float(abs(xs[-1][1] - xs[0][1])) or 1.0
        out.append(Part(metric, _weights(weights), what + where, "slope", tuple(steps), per, span))
    return out


def _add_side(design: Design, fixed: dict[str, str], better, worse, coef: float, into: dict[str, float]) -> None:
    if better is None:
        _mean_weights(design, fixed, 1.0, into, coef)
    else:
        _mean_weights(design, {**fixed, **better}, 1.0, into, coef)
        _mean_weights(design, {**fixed, **worse}, -1.0, into, coef)


def _weights(w: dict[str, float]) -> tuple[tuple[str, float], ...]:
    return tuple((lv, x) for lv, x in w.items() if abs(x) > 1e-15)


# --------------------------------------------------------------------------- the parent run's tags


def to_tags(prefix: str, obj) -> dict[str, str]:
    """``obj`` as JSON spread over tags ``<prefix>.0``, ``<prefix>.1``, ... of at most TAG_CHUNK characters."""
    text = json.dumps(obj, separators=(",", ":"))  # key order kept: a factor's levels are in file order
    return {f"{prefix}.{i}": text[j:j + TAG_CHUNK] for i, j in enumerate(range(0, max(len(text), 1), TAG_CHUNK))}


def from_tags(tags: dict[str, str], prefix: str):
    """The JSON value :func:`to_tags` spread over ``tags``; None when there is none."""
    chunks = []
    i = 0
    while f"{prefix}.{i}" in tags:
        chunks.append(tags[f"{prefix}.{i}"])
        i += 1
    return json.loads("".join(chunks)) if chunks else None


def load_hypotheses(items: list[dict]) -> list[HypothesisSpec]:
    return [HypothesisSpec.model_validate(item) for item in items]
