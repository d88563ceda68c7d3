"""Figures: one style, labelled axes, legends, bands over seeds.

Aggregators (`curve_band`, `quantile_boxes`, `margin_points`) are pure
functions of the frames from `analysis.load`; plot functions return a
`matplotlib.figure.Figure` (no pyplot, so no global figure state and no GUI
backend) and `save_figure` writes it as PNG and PDF with fixed metadata so
two builds give the same bytes. Bands are mean +- 1 std over seeds.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # before anything else of matplotlib draws (no display on CPUs/clusters)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from study.core.names import LOWSHOT_SHOTS, lowshot_metric  # noqa: E402

from .atomic import replacing  # noqa: E402
from .fonts import FAMILIES, register  # noqa: E402
from .load import StudyData  # noqa: E402
from .stats import summarize  # noqa: E402

register()  # the fonts of labels beyond DejaVu Sans, whatever matplotlib's font cache says

STYLE = {
    "font.family": FAMILIES,  # a glyph DejaVu Sans lacks comes from the next family that has it
    "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
    "xtick.labelsize": 8, "ytick.labelsize": 8, "axes.grid": True, "grid.alpha": 0.3,
    "axes.spines.top": False, "axes.spines.right": False, "lines.linewidth": 1.6,
    "savefig.dpi": 150, "pdf.fonttype": 42,  # layout="constrained" instead of bbox "tight" (one draw, not two)
    "svg.hashsalt": "interclr", "path.simplify": True,
}
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")
BAND_ALPHA = 0.2
QUANTILES = ("q05", "q25", "q50", "q75", "q95")
# PNG: drop the Software key; PDF: no dates, no producer, no creator (bytes stay identical run to run)
PNG_METADATA = {"Software": None}
PDF_METADATA = {"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None}
AXIS = {"knn_top1": ("kNN top-1 (%)", 100.0), "linear_top1": ("linear top-1 (%)", 100.0), "nmi": ("NMI", 1.0),
        "label_change_ratio": ("label change ratio", 1.0), "ari": ("ARI", 1.0), "loss": ("loss", 1.0),
        "neg_false_ratio": ("false negatives (%)", 100.0), "neg_class_kl": ("KL from the class prior (nats)", 1.0),
        "neg_class_kl_given_query": ("KL from the class prior (nats)", 1.0),
        "pos_precision": ("positive precision (%)", 100.0), "cluster_recall": ("cluster recall (%)", 100.0)}
# the mechanism figures (metrics measured against the true classes): stem -> (factor, its panels: metric, title)
MECHANISM_FIGURES = {
    "false_negatives": ("sampling", (("neg_false_ratio", "sampled negatives of the query's true class"),
                                     # given the query's class: pooled over the queries the classes even out
                                     ("neg_class_kl_given_query",
                                      "negatives' classes given the query's: divergence from the prior"))),
    "positive_quality": ("labels", (("pos_precision", "positives of the query's true class"),
                                    ("cluster_recall", "true-class images in the query's cluster"))),
}


def colors(levels: Sequence[str]) -> dict[str, str]:
    """The colour of each level, fixed by its position in the study's level order."""
    return {lvl: PALETTE[i % len(PALETTE)] for i, lvl in enumerate(levels)}


def _new_figure(ncols: int = 1, width: float = 4.2, height: float = 3.0) -> tuple[Figure, list]:
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(width * ncols, height), layout="constrained")
        axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def legend_below(fig: Figure, axes: Sequence) -> None:
    """One legend for the whole figure, below the panels, so it never covers data.

    Entries are collected from every panel, each label once (in first-seen order).
    """
    seen: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    if seen:
        # as many entries per row as fit the figure's width (a clipped legend hides level names)
        per_entry = 0.45 + 0.075 * max(len(label) for label in seen)  # inches: marker + text at 8 pt
        ncols = max(1, min(len(seen), int(fig.get_figwidth() / per_entry)))
        fig.legend(list(seen.values()), list(seen), loc="outside lower center", ncols=ncols, frameon=False)


# --------------------------------------------------------------------------- aggregators (pure)


def curve_band(curves: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per level and epoch: mean, std (ddof=1, NaN for one seed) and n over seeds."""
    sel = curves[curves["metric"] == metric]
    if sel.empty:
        return pd.DataFrame({"level": pd.Series(dtype=str), "epoch": pd.Series(dtype="int64"),
                             "mean": pd.Series(dtype=float), "std": pd.Series(dtype=float),
                             "n": pd.Series(dtype="int64")})
    g = sel.groupby(["level", "epoch"], sort=True)["value"]
    out = g.agg(mean="mean", std=lambda v: v.std(ddof=1) if len(v) > 1 else math.nan, n="count").reset_index()
    return out


def quantile_boxes(curves: pd.DataFrame, levels: Sequence[str], prefix: str = "neg_sim_") -> list[dict]:
    """Box statistics per level from each cell's last-epoch quantiles, averaged over seeds.

    Returns dicts for `Axes.bxp`: whislo=q05, q1=q25, med=q50, q3=q75, whishi=q95, n.
    """
    boxes = []
    for level in levels:
        sel = curves[(curves["level"] == level) & curves["metric"].isin([prefix + q for q in QUANTILES])]
        if sel.empty:
            continue
        last = sel.groupby("cell_id")["epoch"].transform("max")
        at_last = sel[sel["epoch"] == last]
        q = at_last.groupby("metric")["value"].mean()
        if not all(prefix + k in q.index for k in QUANTILES):
            continue
        boxes.append({"label": level, "whislo": q[prefix + "q05"], "q1": q[prefix + "q25"], "med": q[prefix + "q50"],
                      "q3": q[prefix + "q75"], "whishi": q[prefix + "q95"], "fliers": [],
                      "n": int(at_last["cell_id"].nunique())})
    return boxes


def margin_points(cells: pd.DataFrame, metric: str, margin_type: str) -> pd.DataFrame:
    """Per margin of one type: mean, CI bounds and n of ``metric`` over seeds, sorted by margin."""
    sel = cells[(cells["margin_type"] == margin_type) & np.isfinite(cells["margin"])]
    rows = []
    for m, grp in sel.groupby("margin", sort=True):
        s = summarize(grp[metric].to_numpy(dtype=float))
        rows.append({"margin": float(m), "mean": s.mean, "ci_low": s.ci_low, "ci_high": s.ci_high, "n": s.n})
    return pd.DataFrame(rows, columns=["margin", "mean", "ci_low", "ci_high", "n"])


# --------------------------------------------------------------------------- plots


def _band_axes(ax, curves: pd.DataFrame, levels: Sequence[str], metric: str, palette: dict[str, str]) -> int:
    """Draw one mean line (+ a std band) per level; returns how many series were drawn."""
    label, scale = AXIS.get(metric, (metric, 1.0))
    band = curve_band(curves, metric)
    drawn = 0
    for level in levels:
        b = band[band["level"] == level]
        if b.empty:
            continue
        x = b["epoch"].to_numpy()
        y = b["mean"].to_numpy() * scale
        n = int(b["n"].max())
        ax.plot(x, y, marker="o", markersize=3, color=palette[level], label=f"{level} (n={n})")
        sd = b["std"].to_numpy() * scale
        if np.isfinite(sd).any():
            sd = np.nan_to_num(sd)
            ax.fill_between(x, y - sd, y + sd, color=palette[level], alpha=BAND_ALPHA, linewidth=0)
        drawn += 1
    ax.set_xlabel("epoch")
    ax.set_ylabel(label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return drawn


def convergence_figure(curves: pd.DataFrame, levels: Sequence[str], metric: str = "knn_top1",
                       title: str = "") -> Figure:
    """``metric`` against epoch, one line per level, band = +-1 std over seeds."""
    fig, (ax,) = _new_figure()
    with matplotlib.rc_context(STYLE):
        _band_axes(ax, curves, levels, metric, colors(levels))
        ax.set_title(title or f"{AXIS.get(metric, (metric,))[0].split(' (')[0]} vs epoch (band: ±1 std)")
        legend_below(fig, [ax])
    return fig


def label_dynamics_figure(curves: pd.DataFrame, levels: Sequence[str]) -> Figure:
    """NMI of the pseudo-labels and the ratio of labels changed per epoch, per level."""
    return panels_figure(curves, levels, (("nmi", "pseudo-label NMI with the true classes"),
                                          ("label_change_ratio", "pseudo-labels changed per epoch")))


def panels_figure(curves: pd.DataFrame, levels: Sequence[str], panels: Sequence[tuple[str, str]]) -> Figure:
    """One panel per (metric, title): the metric against epoch, one line per level, band = +-1 std over seeds."""
    fig, axes = _new_figure(ncols=len(panels))
    pal = colors(levels)
    with matplotlib.rc_context(STYLE):
        for ax, (metric, title) in zip(axes, panels):
            _band_axes(ax, curves, levels, metric, pal)
            ax.set_title(title)
        # one epoch axis for every panel (a metric may have no epoch 0), so they line up
        lo_x = min(a.get_xlim()[0] for a in axes)
        hi_x = max(a.get_xlim()[1] for a in axes)
        for a in axes:
            a.set_xlim(lo_x, hi_x)
        legend_below(fig, axes)
    return fig


def negatives_figure(curves: pd.DataFrame, levels: Sequence[str]) -> Figure:
    """Similarity of the sampled negatives to their query, per sampling strategy.

    Left: at the last epoch, a box from the logged quantiles (whiskers q05/q95,
    box q25/q75, line q50), averaged over seeds. Right: the median against
    epoch with a q25-q75 band (mean over seeds).
    """
    fig, (ax0, ax1) = _new_figure(ncols=2)
    pal = colors(levels)
    boxes = quantile_boxes(curves, levels)
    with matplotlib.rc_context(STYLE):
        if boxes:
            # black medians: a median drawn in the default orange vanishes in an orange box
            arts = ax0.bxp(boxes, showfliers=False, patch_artist=True, widths=0.5,
                           medianprops={"color": "black", "linewidth": 1.4})
            for patch, b in zip(arts["boxes"], boxes):
                patch.set_facecolor(pal[b["label"]])
                patch.set_alpha(0.6)
            ax0.set_xticks(range(1, len(boxes) + 1), [f"{b['label']}\n(n={b['n']})" for b in boxes])
        ax0.set_xlabel("sampling strategy")
        ax0.set_ylabel("cosine similarity to the query")
        ax0.set_title("sampled negatives, last epoch (q05-q95)")
        mid = curve_band(curves, "neg_sim_q50")
        lo = curve_band(curves, "neg_sim_q25")
        hi = curve_band(curves, "neg_sim_q75")
        drawn = 0
        for level in levels:
            m = mid[mid["level"] == level]
            if m.empty:
                continue
            x = m["epoch"].to_numpy()
            ax1.plot(x, m["mean"].to_numpy(), marker="o", markersize=3, color=pal[level], label=level)
            lo_l, hi_l = lo[lo["level"] == level], hi[hi["level"] == level]
            if len(lo_l) == len(m) and len(hi_l) == len(m):
                ax1.fill_between(x, lo_l["mean"].to_numpy(), hi_l["mean"].to_numpy(), color=pal[level],
                                 alpha=BAND_ALPHA, linewidth=0)
            drawn += 1
        ax1.set_xlabel("epoch")
        ax1.set_ylabel("median similarity (band: q25-q75)")
        ax1.set_title("sampled negatives during training")
        ax1.xaxis.set_major_locator(MaxNLocator(integer=True))
        if boxes and drawn:  # one similarity scale on both panels, so they can be read against each other
            lo_y = min(ax0.get_ylim()[0], ax1.get_ylim()[0])
            hi_y = max(ax0.get_ylim()[1], ax1.get_ylim()[1])
            ax0.set_ylim(lo_y, hi_y)
            ax1.set_ylim(lo_y, hi_y)
        if drawn:
            legend_below(fig, [ax1])
    return fig


def lowshot_figure(cells: pd.DataFrame, levels: Sequence[str]) -> Figure:
    """Low-shot linear top-1 against k, the labelled images per class (log axis), one line per level,
    band = +-1 std over seeds."""
    shots = [k for k in LOWSHOT_SHOTS if lowshot_metric(k) in cells.columns and cells[lowshot_metric(k)].notna().any()]
    fig, (ax,) = _new_figure()
    pal = colors(levels)
    with matplotlib.rc_context(STYLE):
        for level in levels:
            sel = cells[cells["level"] == level]
            vals = [sel[lowshot_metric(k)].to_numpy(dtype=float) * 100.0 for k in shots]
            n = [int(np.isfinite(v).sum()) for v in vals]
            if not any(n):
                continue
            mean = np.array([np.nanmean(v) if c else np.nan for v, c in zip(vals, n)])
            sd = np.array([np.nanstd(v, ddof=1) if c > 1 else 0.0 for v, c in zip(vals, n)])
            ax.plot(shots, mean, marker="o", markersize=3, color=pal[level], label=f"{level} (n={max(n)})")
            ax.fill_between(shots, mean - sd, mean + sd, color=pal[level], alpha=BAND_ALPHA, linewidth=0)
        ax.set_xscale("log", base=2)
        ax.set_xticks(shots, [str(k) for k in shots])
        ax.set_xlabel("labelled images per class (k)")
        ax.set_ylabel("low-shot linear top-1 (%)")
        ax.set_title("low-shot classification (band: ±1 std)")
        legend_below(fig, [ax])
    return fig


def margin_figure(cells: pd.DataFrame, metric: str = "knn_top1", reference: float = -0.5) -> Figure:
    """Final ``metric`` against the margin, one panel per margin type (cosine, arc):
    mean with its 95% t-interval, and each seed as a dot."""
    types = [t for t in ("cosine", "arc") if (cells["margin_type"] == t).any()]
    types += sorted(set(cells["margin_type"]) - set(types) - {"", "none"})
    fig, axes = _new_figure(ncols=max(1, len(types)))
    label, scale = AXIS.get(metric, (metric, 1.0))
    with matplotlib.rc_context(STYLE):
        for ax, t in zip(axes, types):
            pts = margin_points(cells, metric, t)
            seeds = cells[cells["margin_type"] == t]
            color = PALETTE[0]  # one colour for every panel: the shared legend below must match them all
            ax.scatter(seeds["margin"], seeds[metric] * scale, s=10, color=color, alpha=0.4, label="seeds")
            yerr = np.vstack([pts["mean"] - pts["ci_low"], pts["ci_high"] - pts["mean"]]) * scale
            ax.errorbar(pts["margin"], pts["mean"] * scale, yerr=np.nan_to_num(yerr), color=color, marker="o",
                        capsize=3, label="mean, 95% CI")
            if len(pts) == 1:  # one margin: a readable range around it, not matplotlib's +-5% of 0
                m0 = float(pts["margin"].iloc[0])
                ax.set_xlim(m0 - 0.5, m0 + 0.5)
                ax.set_xticks([m0 - 0.5, m0, m0 + 0.5])
            if t == "cosine" and (pts["margin"] <= reference).any() and (pts["margin"] >= reference).any():
                ax.axvline(reference, color="0.4", linestyle=":", linewidth=1, label=f"reference m={reference:g}")
            ax.set_xlabel(f"{t} margin m ({'cos θ - m' if t == 'cosine' else 'cos(θ + m)' if t == 'arc' else t})")
            ax.set_ylabel(f"final {label}")
            ax.set_title(f"{t} margin: m < 0 is less stringent" if t == "cosine" else f"{t} margin")
        legend_below(fig, axes)
        if not types:
            axes[0].set_title("no margin levels")
    return fig


def interaction_figure(frame: pd.DataFrame, x: str, line: str, design, metric: str) -> Figure:
    """The interaction plot of a crossed study: ``metric`` against the levels of ``x``, one line per level of
    ``line`` (the other factors averaged within a seed), band = +-1 std over seeds. Parallel lines: no
    interaction; lines that diverge or cross: the effect of one factor depends on the other."""
    from .anova import interaction_series

    fig, (ax,) = _new_figure()
    label, scale = AXIS.get(metric, (metric, 1.0))
    pal = colors(list(design.levels[line]))
    xs = list(design.levels[x])
    with matplotlib.rc_context(STYLE):
        for lb, series in interaction_series(frame, x, line, design).items():
            pos = np.arange(len(xs), dtype=float)
            y = series["mean"].to_numpy(dtype=float) * scale
            n = int(series["n"].max()) if len(series) else 0
            ax.plot(pos, y, marker="o", markersize=4, color=pal[lb], label=f"{line} = {lb} (n={n})")
            sd = np.nan_to_num(series["std"].to_numpy(dtype=float) * scale)
            ax.fill_between(pos, y - sd, y + sd, color=pal[lb], alpha=BAND_ALPHA, linewidth=0)
        ax.set_xticks(np.arange(len(xs)), xs)
        ax.set_xlabel(x)
        ax.set_ylabel(f"final {label}")
        ax.set_title(f"{x} × {line} (band: ±1 std over seeds)")
        legend_below(fig, [ax])
    return fig


def study_figures(data: StudyData) -> dict[str, Figure]:
    """The figures of one study, by file stem (which ones depends on the study's factor)."""
    if data.empty:
        return {}
    figs = {"knn_convergence": convergence_figure(
        data.curves, data.levels, "knn_top1",
        title="InterCLR vs MoCo v2 (band: ±1 std)" if "method" in data.factors else "")}
    if "labels" in data.factors:
        figs["label_dynamics"] = label_dynamics_figure(data.curves, data.levels)
    if "sampling" in data.factors:
        figs["negatives_similarity"] = negatives_figure(data.curves, data.levels)
    if any(lowshot_metric(k) in data.cells.columns and data.cells[lowshot_metric(k)].notna().any()
           for k in LOWSHOT_SHOTS):
        figs["lowshot"] = lowshot_figure(data.cells, data.levels)
    for stem, (factor, panels) in MECHANISM_FIGURES.items():
        # a store of before the mechanism metrics has none: no empty figure
        if factor in data.factors and (data.curves["metric"] == panels[0][0]).any():
            figs[stem] = panels_figure(data.curves, data.levels, panels)
    crossed = data.design is not None and data.design.crossed
    if "boundary" in data.factors and not crossed:
        figs["margin_sweep"] = margin_figure(data.cells, data.metric)
    if crossed:
        from .anova import blocks
        from .report import INTERACTION_PREFIX, safe_name

        frame = blocks(data.cells, data.design, data.metric)
        if not frame.empty:
            f = data.design.factors
            for i, a in enumerate(f):
                for b in f[i + 1:]:
                    figs[f"{INTERACTION_PREFIX}{safe_name(a)}_x_{safe_name(b)}"] = interaction_figure(
                        frame, a, b, data.design, data.metric)
    return figs


def save_figure(fig: Figure, stem: Path) -> list[Path]:
    """Write ``stem``.png and ``stem``.pdf with fixed metadata; returns the paths."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    with matplotlib.rc_context(STYLE):
        for ext, meta in (("png", PNG_METADATA), ("pdf", PDF_METADATA)):
            path = stem.with_suffix(f".{ext}")
            with replacing(path) as tmp:
                fig.savefig(tmp, format=ext, metadata=meta)
            paths.append(path)
    return paths
