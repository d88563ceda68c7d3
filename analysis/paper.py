"""The paper's findings as hypotheses: what the ``finding:`` shorthand of a study file expands to.

A study file may state ``finding: labels`` (``sampling``, ``boundary``, ``method``) instead of
writing the paper's hypothesis out; a store written before hypotheses were data (no
``hypotheses.<i>`` tags on its parent run) is analysed with the findings of the factor it
varies, as it was then. The shipped study files (experiments/) write theirs out.

1. labels:   online labels beat offline ones on the study's metric and on the mean kNN top-1
             over epochs ("converge faster"): one hypothesis, two parts, both must hold.
2. sampling: semi-hard negatives beat hard ones.
3. boundary: the reference margin cosine -0.5 beats cosine 0 and the most stringent positive
             cosine margin of the study.
4. method:   InterCLR beats MoCo v2.
"""
from __future__ import annotations

from .hypotheses import Design, HypothesisSpec, _norm

FINDING_FACTORS = {"labels": "labels", "sampling": "sampling", "boundary": "boundary", "method": "method"}


def _most_stringent_cosine(design: Design) -> dict | None:
    """The cosine level with the largest positive margin (the hardest boundary), as a selector."""
    best = None
    for settings in design.levels.get("boundary", {}).values():
        m = _norm(settings.get("margin", ""))
        if str(settings.get("margin_type")) == "cosine" and isinstance(m, float) and m > 0:
            best = m if best is None or m > best else best
    return None if best is None else {"margin_type": "cosine", "margin": best}


def finding_hypotheses(finding: str, design: Design, metric: str, formable_only: bool = False) -> list[HypothesisSpec]:
    """The hypotheses of one of the paper's findings. ``formable_only``: leave out the parts the design
    cannot form (a legacy store's study that lacks a level), as the analysis did before hypotheses."""
    if finding == "labels":
        items = [{"name": "online-labels", "claim": "online labels converge faster and perform better than offline "
                  "labels", "better": {"labels": "online"}, "worse": {"labels": "offline"},
                  "metric": list(dict.fromkeys([metric, "knn_auc"]))}]
    elif finding == "sampling":
        items = [{"name": "semi-hard-negatives", "claim": "semi-hard negatives are more reliable and less biased "
                  "than hard negatives", "better": {"sampling": "semi-hard"}, "worse": {"sampling": "hard"}}]
    elif finding == "boundary":
        worse = [{"margin_type": "cosine", "margin": 0.0}]
        hardest = _most_stringent_cosine(design)
        if hardest is not None:
            worse.append(hardest)
        items = [{"name": "less-stringent-boundary", "claim": "a less stringent boundary (cosine margin -0.5) is "
                  "better for inter-image learning", "better": {"margin_type": "cosine", "margin": -0.5},
                  "worse": worse}]
    elif finding == "method":
        items = [{"name": "interclr-beats-mocov2", "claim": "InterCLR (online labels, semi-hard negatives, less "
                  "stringent margin) improves over MoCo v2", "better": {"method": "interclr"},
                  "worse": {"method": "mocov2"}}]
    else:
        raise ValueError(f"unknown finding {finding!r} (allowed: {', '.join(FINDING_FACTORS)})")
    specs = [HypothesisSpec.model_validate(i) for i in items]
    return [_formable(s, design, metric) for s in specs] if formable_only else specs


def _formable(spec: HypothesisSpec, design: Design, metric: str) -> HypothesisSpec:
    """``spec`` less the ``worse`` selections that match no level (at least one is kept, so that the
    analysis still says why it cannot be tested)."""
    from .hypotheses import HypothesisError, _pick

    if not isinstance(spec.worse, list):
        return spec
    ok = []
    for sel in spec.worse:
        try:
            _pick(design, sel, "worse")
            ok.append(sel)
        except HypothesisError:
            pass
    return spec.model_copy(update={"worse": ok or spec.worse[:1]})
