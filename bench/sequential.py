"""Seeds to a decision: the sequential rules compared by seeded simulation (issue 28, item 3).

Each simulated study draws paired differences N(effect, 1) (the rules are scale-free: a paired sd of
0.1 or 1 point gives the same table in units of sd), looks at 3, 5, ..., 19, 20 seeds (the adaptive
loop's schedule: the study file's 3 seeds, 2 more per look, at most ``MAX_SEEDS``) and stops at its
first decision on the running intersection of its intervals (analysis.decide.simulate_sequential).
The rows: the t-mixture confidence sequence (today's rule until this issue, and a better-tuned prior
precision), and group-sequential designs with Lan-DeMets spending (Pocock-type, O'Brien-Fleming-type,
Hwang-Shih-DeCani). The confidence sequence is also the e-value rule for the paired mean: its
mixture martingale is an e-process, and stopping when it passes 1/alpha is Ville's test. The row
with the fewest expected seeds over effects > 0 and an error at effect 0 of at most alpha plus Monte
Carlo error is the rule (analysis.decide.SPENDING).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Optional

import numpy as np

from analysis import decide
from bench.common import Check, Goal, Section
from study.core.paths import REPO_ROOT

DEFAULT_FIGURE = REPO_ROOT / "bench" / "cost_to_decide.png"
EFFECTS = (0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)  # true mean difference, in paired sds
FULL = {"studies": 4000, "null_studies": 40_000}
QUICK = {"studies": 400, "null_studies": 4000}
ALPHAS = (decide.ALPHA, decide.ALPHA / 4)  # one hypothesis part; four (the Bonferroni share of each)


def rules(max_seeds: int) -> dict[str, Optional[decide.GroupSequential]]:
    """name -> design (None: the confidence sequence at the rho in the name)."""
    looks = decide.design_looks(decide.FIRST_LOOK, decide.BATCH, max_seeds)
    out: dict[str, Optional[decide.GroupSequential]] = {"confidence sequence, rho 0.5 (before)": None,
                                                        "confidence sequence, rho 0.1": None}
    for spending in ("pocock", "obrien-fleming", "hsd(-4)", "hsd(-2)", "hsd(0)", "hsd(1)", "hsd(2)", "hsd(3)", "hsd(4)"):
        out[f"group-sequential, {spending}"] = decide.GroupSequential(looks, max_seeds, spending)
    return out


def expected_seeds(design, rho: float, alpha: float, scale: dict, max_seeds: int = decide.MAX_SEEDS) -> dict:
    """Error at effect 0 and expected seeds per level at each effect of ``EFFECTS``."""
    looks = decide.looks_schedule(decide.FIRST_LOOK, decide.BATCH, max_seeds)
    out = {}
    decision, _ = decide.simulate_sequential(0.0, 1.0, scale["null_studies"], looks, seed=1, alpha=alpha, rho=rho,
                                             design=design)
    out["error"] = float(np.mean(decision != "open"))
    for i, effect in enumerate(EFFECTS):
        _, used = decide.simulate_sequential(effect, 1.0, scale["studies"], looks, seed=100 + i, alpha=alpha,
                                             rho=rho, design=design)
        out[effect] = float(used.mean())
    out["mean"] = float(np.mean([out[e] for e in EFFECTS]))
    return out


# The paper's four comparisons as this toolkit measured them on the `cpu` preset (final kNN top-1, points;
# mean paired difference, paired sd over seeds), from the REPORT.md of a fresh clone's `make study-all`
# and `make study-grid` of 2026-12-06: the inputs of the cost model below
PAPER_COMPARISONS = (  # (study, comparison, mean difference, paired sd, seeds it was measured at)
    ("labels", "online - offline", -1.08, 0.346, 3),
    ("sampling", "semi-hard - hard", 0.53, 0.266, 3),
    ("boundary", "cosine -0.5 - cosine 0", 0.05, 0.275, 8),
    ("final", "InterCLR - MoCo v2", -0.49, 0.366, 3),
)
CELL_S_MEASURED = 150.0  # one `cpu` cell end to end (section 7 of the last full run), when it did not run now
DELTA_PTS = 0.5  # the studies' region of practical equivalence


def decision_cost(design, rho: float, studies: int, cell_s: float, max_seeds: int = decide.MAX_SEEDS) -> list[dict]:
    """Per paper comparison: expected seeds per level to a decision (holds, contradicted or equivalent
    within +-0.5 points; the limit when none) and the cell-hours of its two levels' cells, modelled from
    its measured effect and paired sd and ``cell_s`` seconds per cell."""
    looks = decide.looks_schedule(decide.FIRST_LOOK, decide.BATCH, max_seeds)
    out = []
    for i, (study, label, mean, sd, _) in enumerate(PAPER_COMPARISONS):
        decision, used = decide.simulate_sequential(mean, sd, studies, looks, seed=200 + i, delta=DELTA_PTS,
                                                    rho=rho, design=design)
        seeds = float(used.mean())
        out.append({"study": study, "comparison": label, "effect_sd": mean / sd, "seeds": seeds,
                    "decided": float(np.mean(decision != "open")), "cell_h": 2 * seeds * cell_s / 3600})
    return out


def cost_figure(before: list[dict], after: list[dict], path: Path, labels: tuple[str, str]) -> Path:
    """Grouped bars: cell-hours to decide each paper comparison under the two rules (PNG at ``path``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [f"{r['study']}\n{r['comparison']}" for r in before]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(7.5, 3.6), dpi=120)
    for k, (rows, label) in enumerate(zip((before, after), labels)):
        bars = ax.bar(x + (k - 0.5) * 0.38, [r["cell_h"] for r in rows], 0.38, label=label)
        ax.bar_label(bars, labels=[f"{r['seeds']:.1f}" for r in rows], fontsize=7, padding=2)
    ax.set_xticks(x, names, fontsize=8)
    ax.set_ylabel("cell-hours to a decision")
    ax.margins(y=0.15)
    ax.set_title("Cost to decide the paper's comparisons (`cpu` cells; bar labels: seeds per level)", fontsize=9)
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def run(quick: bool = False, shared: Optional[dict] = None) -> Section:
    scale = QUICK if quick else FULL
    sec = Section("sequential", "9. Seeds to a decision: sequential rules by seeded simulation")
    start = time.perf_counter()
    table: dict[float, dict[str, dict]] = {}
    for alpha in ALPHAS:
        table[alpha] = {}
        for name, design in rules(decide.MAX_SEEDS).items():
            rho = 0.1 if "rho 0.1" in name else decide.CS_RHO
            table[alpha][name] = expected_seeds(design, rho, alpha, scale)
        sec.table(f"Level {alpha:g} per interval ({'one part' if alpha == decide.ALPHA else 'a family of 4 parts'}); "
                  f"looks at {', '.join(map(str, decide.looks_schedule()))} seeds; error at effect 0 over "
                  f"{scale['null_studies']:,} studies, expected seeds per level over {scale['studies']:,} per effect.",
                  ["rule", "error at 0"] + [f"{e:g} sd" for e in EFFECTS] + ["mean"],
                  [[name, r["error"]] + [r[e] for e in EFFECTS] + [r["mean"]] for name, r in table[alpha].items()])
    chosen = f"group-sequential, {decide.SPENDING}"
    before = "confidence sequence, rho 0.5 (before)"
    keeps: dict[str, bool] = {name: True for name in table[ALPHAS[0]]}
    for alpha in ALPHAS:
        mc = 3 * math.sqrt(alpha * (1 - alpha) / scale["null_studies"])
        for name, r in table[alpha].items():
            keeps[name] &= r["error"] <= alpha + mc
        r = table[alpha][chosen]
        sec.checks.append(Check(f"the chosen rule ({chosen}) keeps its error at level {alpha:g}", r["error"] <= alpha + mc,
                                f"{r['error']:.4f} <= {alpha:g} + {mc:.4f} (3 Monte Carlo sd)"))
        sec.goals.append(Goal(f"expected seeds, chosen rule / the rule before, level {alpha:g} (mean over "
                              f"effects 0.5-10 sd)", r["mean"] / table[alpha][before]["mean"], 1.0))
    # the rule: the fewest expected seeds summed over both levels, among the rules that keep their error
    total = {name: sum(table[a][name]["mean"] for a in ALPHAS) for name, ok in keeps.items() if ok}
    best = min(total, key=total.get)
    sec.checks.append(Check("the chosen rule has the fewest expected seeds (both levels) among those keeping the error",
                            quick or best == chosen, f"fewest: {best} ({total[best]:.2f}); chosen: {chosen} "
                            f"({total.get(chosen, math.nan):.2f})" + (" (quick sizes: not judged)" if quick else "")))
    # the cost to decide the paper's four comparisons, modelled (issue 28, item 4)
    cell_s = float((shared or {}).get("cell_s") or CELL_S_MEASURED)
    cost = {name: decision_cost(design, 0.5, scale["studies"], cell_s)
            for name, design in ((before, None), (chosen, rules(decide.MAX_SEEDS)[chosen]))}
    sec.table(f"Cost to decide the paper's comparisons, modelled: each comparison's measured mean difference and "
              f"paired sd (`cpu` preset), {scale['studies']:,} simulated studies, a decision is holds, contradicted or "
              f"equivalent within ±{DELTA_PTS} points at level 0.05, {cell_s:.0f} s per cell (two levels per "
              "comparison). Figure: bench/cost_to_decide.png.",
              ["study", "comparison", "effect (sd)", "seeds, before", "cell-h, before", "seeds, chosen",
               "cell-h, chosen", "decided by 20, chosen"],
              [[b["study"], b["comparison"], b["effect_sd"], b["seeds"], b["cell_h"], a["seeds"], a["cell_h"],
                a["decided"]] for b, a in zip(cost[before], cost[chosen])])
    total_before, total_after = (sum(r["cell_h"] for r in cost[k]) for k in (before, chosen))
    sec.goals.append(Goal("cell-hours to decide the paper's four comparisons, chosen rule / the rule before",
                          total_after / total_before, 1.0, note=f"{total_after:.2f} vs {total_before:.2f} cell-h"))
    figure = Path(shared["figure_dir"]) if shared and shared.get("figure_dir") else DEFAULT_FIGURE.parent
    if not quick or (shared and shared.get("figure_dir")):
        cost_figure(cost[before], cost[chosen], figure / DEFAULT_FIGURE.name, ("t-mixture sequence (before)", chosen))
    sec.data.update(cost=cost)
    sec.notes.append("The critical values of the group-sequential designs are calibrated for the paired t-statistic "
                     "on seeded null paths (analysis.decide.group_sequential_bounds); converting the spending "
                     "function's z boundaries to t at the same nominal level gives about 5.7 % error at a nominal "
                     "5 % at these few seeds.")
    sec.data.update(table=table)
    sec.seconds = time.perf_counter() - start
    return sec
