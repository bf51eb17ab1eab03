"""The analysis plots, drawn with plotnine and written as PNG files.

Three figures, as in the original project's ``plots/`` folder:

* ``correlation_analysis.png``: six views in one figure (plotnine >= 0.15 composition,
  ``(a | b | c) / (d | e | f)``): difficulty~reward, style~reward and difficulty~style as
  scatter plots with the least-squares line and Pearson r in the panel; reward by difficulty and
  by style as box plots; mean reward per (difficulty, style) cell as a heatmap.
* ``joint_distribution.png``: every row at (difficulty, style), jittered so the many rows on the
  same integer point show, coloured by reward.
* ``reward_distribution.png``: a histogram of reward with its mean and median.
* ``sft_lengths.png`` (when the rows carry the SFT lengths): a histogram of each row's
  chat-formatted prompt + completion length, in tokens when the run counted them, else in
  characters, with p50, p90, p99 (nearest rank) and the maximum marked.

Jitter is deterministic (:data:`JITTER_SEED`), so the same data gives the same pictures.
Tiny or degenerate data (3 rows, a constant column) draws a note in place of a fitted line
instead of failing. Drawing is headless (matplotlib's Agg backend, set on import).
"""

from __future__ import annotations

import io
import math
import textwrap
from pathlib import Path
from typing import Any

import matplotlib

# Headless: the pipeline runs on servers and in workers without a display. Agg renders PNGs
# with any environment; set before pyplot is imported (by plotnine or below).
matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.cbook import boxplot_stats
import numpy as np
import pandas as pd
import polars as pl
from mizani.bounds import squish
from plotnine import (
    aes,
    annotate,
    coord_cartesian,
    element_text,
    geom_abline,
    geom_histogram,
    geom_point,
    geom_rect,
    geom_segment,
    geom_text,
    geom_tile,
    geom_vline,
    ggplot,
    labs,
    scale_color_cmap,
    scale_color_identity,
    scale_fill_cmap,
    scale_size_identity,
    scale_x_continuous,
    scale_y_continuous,
    theme,
    theme_bw,
)
from scipy import stats

from kernelbook_lib.analysis import (
    LENGTH_PERCENTILES,
    PAIRS,
    SCORE_MAX,
    SCORE_MIN,
    check_analysis_columns,
    correlate,
    length_stats,
)
from kernelbook_lib.errors import UserError
from kernelbook_lib.plot_files import (  # noqa: F401  (the file names are part of this module's interface)
    CORRELATION_PNG,
    JOINT_PNG,
    PLOT_FILES,
    REWARD_PNG,
    SFT_LENGTHS_PNG,
    plot_data,
    write_images,
)
from kernelbook_lib.report import p_phrase


#: Seed of the jitter that spreads rows sharing an integer score, so plots are reproducible.
JITTER_SEED = 42
DPI = 120

#: Axis labels of the analysed columns.
LABELS = {"difficulty": "Difficulty (0-10)", "style": "Style (0-10)", "reward": "Reward"}
TITLES = {"difficulty": "Difficulty", "style": "Style", "reward": "Reward"}
#: Half-width of the uniform jitter on integer score axes (scatter plots / joint plot).
SCATTER_JITTER = 0.25
JOINT_JITTER = 0.3
#: Heatmap cells with fewer rows than this are grey rather than coloured by their mean.
HEATMAP_MIN_ROWS = 5
#: Room above the data for the note in scatter panels: score units, or a fraction of the range.
NOTE_HEADROOM_SCORE = 2.0
NOTE_HEADROOM_FRACTION = 0.22
#: Integer score axes always show the whole 0-10 scale, so figures from runs compare.
SCORE_BREAKS = list(range(SCORE_MIN, SCORE_MAX + 1))
SCORE_LIMITS = (SCORE_MIN - 0.6, SCORE_MAX + 0.6)
SCORE_COLUMNS = ("difficulty", "style")


def _theme(figure_size: tuple[float, float]) -> theme:
    """The look shared by every figure."""
    return theme_bw(base_size=11) + theme(
        figure_size=figure_size,
        dpi=DPI,
        plot_title=element_text(weight="bold", size=12),
        plot_subtitle=element_text(size=9, color="#444444"),
    )


def _n(n: int) -> str:
    return f"n = {n:,}"


def _point_alpha(n: int) -> float:
    """Opaque points for a few rows, fainter ones when thousands overlap."""
    return max(0.2, min(0.9, 12 / math.sqrt(max(n, 1))))


def _point_size(n: int) -> float:
    """Big points when there are few, small ones when thousands would cover each other."""
    return 3.0 if n <= 50 else 2.0 if n <= 500 else 1.0


def _axis(column: str, which: str, *, headroom: bool = False) -> list:
    """Scale for an axis: integer scores get fixed 0-10 breaks; reward is free.

    ``headroom`` extends a score y axis upwards, leaving room for the note in the panel.
    """
    if column not in SCORE_COLUMNS:
        return []
    scale = scale_x_continuous if which == "x" else scale_y_continuous
    upper = SCORE_LIMITS[1] + (NOTE_HEADROOM_SCORE if headroom else 0)
    return [scale(breaks=SCORE_BREAKS, limits=(SCORE_LIMITS[0], upper))]


def _note_y(values: pd.Series, column: str) -> float:
    """Where the top of the in-panel note goes: above the data, in the room left for it."""
    if column in SCORE_COLUMNS:
        return SCORE_LIMITS[1] + NOTE_HEADROOM_SCORE
    return float(values.max()) + NOTE_HEADROOM_FRACTION * _span(values)


def _span(values: pd.Series) -> float:
    """The range of ``values``; a constant column gets a small nominal range to lay out around."""
    top, bottom = float(values.max()), float(values.min())
    return top - bottom or max(abs(top) * 0.05, 0.05)


def _jittered(pdf: pd.DataFrame, columns: dict[str, float]) -> pd.DataFrame:
    """A copy of ``pdf`` with ``<column>_j`` = column + uniform noise in [-width, width].

    Done here rather than with plotnine's ``position_jitter``: that draws the x and y offsets
    from one seeded stream, so with a fixed seed both offsets are equal and the points line up
    on diagonals. Independent streams per column keep the cloud round and reproducible.
    """
    rng = np.random.default_rng(JITTER_SEED)
    out = pdf.copy()
    for column, width in columns.items():
        out[f"{column}_j"] = out[column].astype(float) + rng.uniform(-width, width, len(out))
    return out


def _scatter(pdf: pd.DataFrame, x: str, y: str) -> ggplot:
    """Scatter of ``y`` against ``x`` with the least-squares line and Pearson r in the panel."""
    n = len(pdf)
    result = correlate(pl.from_pandas(pdf[[x, y]]), x, y)
    # Scores are integers: spread rows sharing a value a little (never near half a unit) so the
    # density shows; the fitted line and r are computed on the exact values.
    jittered = _jittered(pdf, {c: SCATTER_JITTER for c in (x, y) if c in SCORE_COLUMNS})
    xj = f"{x}_j" if x in SCORE_COLUMNS else x
    yj = f"{y}_j" if y in SCORE_COLUMNS else y
    plot = (
        ggplot(jittered, aes(x=xj, y=yj))
        + geom_point(alpha=_point_alpha(n), size=_point_size(n), color="#1f5f99", stroke=0)
        + labs(
            x=LABELS[x],
            y=LABELS[y],
            title=f"{TITLES[x]} vs {TITLES[y].lower()}",
            subtitle=f"{_n(n)}; score axes jittered by up to {SCATTER_JITTER} so overlapping rows show",
        )
        + _axis(x, "x")
        + _axis(y, "y", headroom=True)
    )
    if result.get("undefined"):
        note = textwrap.fill(f"no fitted line: {result['reason']}", width=60)
    else:
        fit = stats.linregress(pdf[x].astype(float), pdf[y].astype(float))
        pearson = result["pearson"]
        plot += geom_abline(intercept=float(fit.intercept), slope=float(fit.slope), color="#d62728", size=1.1)
        note = (
            f"Pearson r = {pearson['r']:+.2f}, {pearson['strength']}, {p_phrase(pearson['p'])}\n"
            f"least-squares line: {TITLES[y].lower()} = {fit.intercept:.3g} {fit.slope:+.3g} * {x}"
        )
    # The note sits at the top left, in the headroom above the data (see _axis/_note_y).
    note_x = SCORE_LIMITS[0] + 0.1 if x in SCORE_COLUMNS else float(pdf[x].min())
    return plot + annotate(
        "label", x=note_x, y=_note_y(pdf[y], y), label=note, ha="left", va="top", size=9,
        color="#222222", fill="#ffffffdd", label_size=0.4, boxstyle="round,pad=0.35",
    )


#: Box plots: box width (x units), Tukey's whisker reach (IQR multiples), colours.
BOX_WIDTH = 0.7
BOX_WHISKER_IQR = 1.5
BOX_FILL = "#c6dbef"
BOX_INK = "#333333"


def _box_layers(pdf: pd.DataFrame, column: str) -> list:
    """Tukey box plots of reward per level of ``column``, as three vectorised layers.

    What ``geom_boxplot`` draws (box from the first to the third quartile, the median as a
    thick line, whiskers to the furthest point within 1.5 IQR, points beyond them), with the
    statistics computed here (matplotlib's ``boxplot_stats``, as plotnine's stat does) and drawn
    as one rectangle, one segment and one point layer: ``geom_boxplot`` draws every box as its
    own group, which took 1.1-1.5 s per panel for the 0-10 levels on these machines (the panel
    drawn alone from the sample's 88 rows), against 0.3 s as these layers.
    """
    boxes, outliers = [], []
    for level, rewards in pdf.groupby(column)["reward"]:
        (stat,) = boxplot_stats(rewards.to_numpy(dtype=float), whis=BOX_WHISKER_IQR)
        x = float(level)
        boxes.append(
            {"x": x, "xmin": x - BOX_WIDTH / 2, "xmax": x + BOX_WIDTH / 2, "lower": stat["q1"],
             "middle": stat["med"], "upper": stat["q3"], "ymin": stat["whislo"], "ymax": stat["whishi"]}
        )
        outliers.extend({"x": x, "y": float(y)} for y in stat["fliers"])
    box = pd.DataFrame(boxes)
    # Whiskers, then medians: one segment layer (medians drawn thicker by their own size).
    whiskers = pd.concat(
        [
            box.assign(x0=box["x"], x1=box["x"], y0=box["upper"], y1=box["ymax"], w=0.5),
            box.assign(x0=box["x"], x1=box["x"], y0=box["lower"], y1=box["ymin"], w=0.5),
            box.assign(x0=box["xmin"], x1=box["xmax"], y0=box["middle"], y1=box["middle"], w=1.0),
        ],
        ignore_index=True,
    )
    layers = [
        geom_rect(box, aes(xmin="xmin", xmax="xmax", ymin="lower", ymax="upper"),
                  inherit_aes=False, fill=BOX_FILL, color=BOX_INK, size=0.5),
        geom_segment(whiskers, aes(x="x0", xend="x1", y="y0", yend="y1", size="w"),
                     inherit_aes=False, color=BOX_INK),
    ]
    if outliers:
        layers.append(
            geom_point(pd.DataFrame(outliers), aes(x="x", y="y"), inherit_aes=False,
                       size=0.6, alpha=0.4, color=BOX_INK)
        )
    return layers


def _box(pdf: pd.DataFrame, column: str) -> ggplot:
    """Reward per level of ``column``: box plots, the mean as a diamond, the count under each box."""
    counts = pdf.groupby(column, as_index=False).agg(n=("reward", "size"), mean=("reward", "mean"))
    counts["y"] = float(pdf["reward"].min()) - 0.06 * _span(pdf["reward"])
    counts["label"] = counts["n"].map(lambda v: f"{v:,}")
    return (
        ggplot(pdf, aes(x=column, y="reward"))
        + _box_layers(pdf, column)
        + scale_size_identity()
        + geom_point(counts, aes(x=column, y="mean"), shape="D", color="#d62728", size=2)
        + geom_text(counts, aes(x=column, y="y", label="label"), size=7, color="#444444")
        + scale_x_continuous(breaks=SCORE_BREAKS, limits=SCORE_LIMITS)
        + labs(
            x=LABELS[column],
            y=LABELS["reward"],
            title=f"Reward by {column}",
            subtitle=f"{_n(len(pdf))}; red diamond = mean; rows per level under each box",
        )
    )


def _heatmap(pdf: pd.DataFrame) -> ggplot:
    """Mean reward in each occupied (difficulty, style) cell, with the cell's row count.

    Cells with fewer than :data:`HEATMAP_MIN_ROWS` rows are drawn grey (their mean is noise
    that would otherwise set the colour scale's extremes), still labelled with mean and count.
    """
    cells = pdf.groupby(["difficulty", "style"], as_index=False).agg(
        mean=("reward", "mean"), n=("reward", "size")
    )
    cells["label"] = [f"{m:.2f}\n({c:,})" for m, c in zip(cells["mean"], cells["n"])]
    solid = cells[cells["n"] >= HEATMAP_MIN_ROWS]
    sparse = cells[cells["n"] < HEATMAP_MIN_ROWS]
    # Labels in white on the darkest third of the colour scale, black elsewhere (and on grey).
    cells["ink"] = "black"
    if len(solid):
        lo, hi = float(solid["mean"].min()), float(solid["mean"].max())
        dark = (cells["n"] >= HEATMAP_MIN_ROWS) & (cells["mean"] > lo + (hi - lo) * 2 / 3) & (hi > lo)
        cells.loc[dark, "ink"] = "white"
    plot = ggplot(cells, aes(x="difficulty", y="style"))
    if len(solid):
        plot += geom_tile(solid, aes(fill="mean"), color="white", size=0.3)
    if len(sparse):
        plot += geom_tile(sparse, fill="#e0e0e0", color="white", size=0.3)
    return (
        plot
        + geom_text(aes(label="label", color="ink"), size=6.5, lineheight=0.9)
        + scale_color_identity()
        + scale_fill_cmap("YlGnBu", name="mean\nreward")
        + scale_x_continuous(breaks=SCORE_BREAKS, limits=SCORE_LIMITS, expand=(0, 0))
        + scale_y_continuous(breaks=SCORE_BREAKS, limits=SCORE_LIMITS, expand=(0, 0))
        + labs(
            x=LABELS["difficulty"],
            y=LABELS["style"],
            title="Mean reward by difficulty and style",
            subtitle=(
                f"{_n(len(pdf))}; each cell: mean reward (rows); "
                f"grey: fewer than {HEATMAP_MIN_ROWS} rows"
            ),
        )
    )


def correlation_figure(pdf: pd.DataFrame):
    """The six views composed in two rows of three (plotnine composition)."""
    scatters = [_scatter(pdf, x, y) for _name, x, y in PAIRS]
    lower = [_box(pdf, "difficulty"), _box(pdf, "style"), _heatmap(pdf)]
    return (
        (scatters[0] | scatters[1] | scatters[2]) / (lower[0] | lower[1] | lower[2])
    ) & _theme((18, 11))


def joint_figure(pdf: pd.DataFrame) -> ggplot:
    """Every row at (difficulty, style), jittered, coloured by reward."""
    jittered = _jittered(pdf, {"difficulty": JOINT_JITTER, "style": JOINT_JITTER})
    rewards = pdf["reward"]
    # A few very high rewards would stretch the colour scale and leave everything else one
    # colour: the scale spans the 2nd-98th percentile and rewards beyond it take the end colour.
    lo, hi = (float(q) for q in rewards.quantile([0.02, 0.98]))
    if hi > lo:
        colour = scale_color_cmap("viridis", name="reward", limits=(lo, hi), oob=squish)
        note = f"\ncolour: reward, scale spans its 2nd-98th percentile ({lo:.3g} to {hi:.3g}); beyond it, the end colours"
    elif rewards.nunique() > 1:
        # Almost every row has one reward: the percentiles coincide, so span the full range.
        colour = scale_color_cmap("viridis", name="reward")
        note = "\ncolour: reward"
    else:
        # One reward value: a colour scale would be meaningless (and labels it badly).
        colour = None
        note = f"\nnot coloured: every reward is {lo:.4g}"
    return (
        ggplot(jittered, aes(x="difficulty_j", y="style_j"))
        + geom_point(
            aes(color="reward") if colour is not None else aes(),
            alpha=max(0.5, _point_alpha(len(pdf))),
            size=_point_size(len(pdf)) + 0.3,
            stroke=0,
        )
        + ([colour] if colour is not None else [])
        + scale_x_continuous(breaks=SCORE_BREAKS, limits=SCORE_LIMITS)
        + scale_y_continuous(breaks=SCORE_BREAKS, limits=SCORE_LIMITS)
        + labs(
            x=LABELS["difficulty"],
            y=LABELS["style"],
            title="Joint distribution of difficulty and style",
            subtitle=(
                f"{_n(len(pdf))}; each point is a row, jittered by up to {JOINT_JITTER} around its scores"
                + note
            ),
        )
        + _theme((8, 7))
    )


def reward_figure(pdf: pd.DataFrame) -> ggplot:
    """Histogram of reward with the mean (solid) and median (dashed) marked."""
    rewards = pdf["reward"].astype(float)
    lo, hi = float(rewards.min()), float(rewards.max())
    # 40 bins over the observed range; a constant reward gets one bar of width 0.01 around it.
    binwidth = (hi - lo) / 40 if hi > lo else 0.01
    mean, median = float(rewards.mean()), float(rewards.median())
    # Zoom (not limit: limits would drop the empty edge bins with a warning) around a constant.
    constant_axis = [] if hi > lo else [coord_cartesian(xlim=(lo - 0.05, hi + 0.05))]
    return (
        ggplot(pdf, aes(x="reward"))
        + constant_axis
        + geom_histogram(binwidth=binwidth, fill="#6baed6", color="white", size=0.2)
        + geom_vline(xintercept=mean, color="#d62728", size=0.9)
        + geom_vline(xintercept=median, color="#d62728", size=0.9, linetype="dashed")
        + labs(
            x=LABELS["reward"],
            y="Rows",
            title="Distribution of reward",
            subtitle=(
                f"{_n(len(pdf))}; mean {mean:.4g} (solid line), median {median:.4g} (dashed); "
                f"range {lo:.4g} to {hi:.4g}"
            ),
        )
        + _theme((8, 5))
    )


def sft_length_unit(df: pl.DataFrame) -> tuple[str, str] | None:
    """``(column, unit)`` the length plot shows: tokens when counted, else characters; None when
    the rows have no lengths."""
    if "sft_tokens" in df.columns and df.get_column("sft_tokens").drop_nulls().len():
        return "sft_tokens", "tokens"
    if "sft_chars" in df.columns and df.get_column("sft_chars").drop_nulls().len():
        return "sft_chars", "characters"
    return None


def sft_length_figure(df: pl.DataFrame) -> ggplot:
    """Histogram of the SFT length with p50/p90/p99 (dashed) and the maximum (solid) marked."""
    unit = sft_length_unit(df)
    if unit is None:
        raise UserError("no SFT lengths to plot")
    column, word = unit
    stats = length_stats(df.get_column(column))
    assert stats is not None
    pdf = pd.DataFrame({"length": df.get_column(column).drop_nulls().cast(pl.Float64).to_numpy()})
    lo, hi = float(pdf["length"].min()), float(pdf["length"].max())
    binwidth = (hi - lo) / 40 if hi > lo else 1.0
    marks = pd.DataFrame(
        [{"x": float(stats[f"p{q}"]), "label": f"p{q} {stats[f'p{q}']:,}"} for q in LENGTH_PERCENTILES]
        + [{"x": float(stats["max"]), "label": f"max {stats['max']:,}"}]
    )
    constant_axis = [] if hi > lo else [coord_cartesian(xlim=(lo - 5, hi + 5))]
    return (
        ggplot(pdf, aes(x="length"))
        + constant_axis
        + geom_histogram(binwidth=binwidth, fill="#6baed6", color="white", size=0.2)
        + geom_vline(marks.iloc[:-1], aes(xintercept="x"), color="#d62728", size=0.7, linetype="dashed")
        + geom_vline(marks.iloc[-1:], aes(xintercept="x"), color="#d62728", size=0.9)
        + labs(
            x=f"Length of the chat-formatted prompt + completion ({word})",
            y="Rows",
            title=f"SFT sequence length in {word}",
            subtitle=(
                f"{_n(stats['n'])}; " + ", ".join(marks["label"]) + " (dashed: percentiles by nearest rank; solid: max)"
            ),
        )
        + _theme((8, 5))
    )


def _png(figure: Any) -> bytes:
    """Draw a ggplot or composition as PNG bytes; always free the figure."""
    fig = figure.draw()
    try:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=DPI)
        return buffer.getvalue()
    finally:
        plt.close(fig)


def render_plot_images(df: pl.DataFrame) -> dict[str, bytes]:
    """The analysis figures as PNG bytes, by file name (:data:`PLOT_FILES`, and
    :data:`SFT_LENGTHS_PNG` when the rows carry their SFT lengths).

    The same values in the same order give the same bytes (seeded jitter), which is what lets
    ``tasks/analysis.py`` reuse them (:func:`kernelbook_lib.plot_files.images_key`)."""
    check_analysis_columns(df)
    if df.height == 0:
        raise UserError("no rows to plot")
    data = plot_data(df)
    pdf = data.select("difficulty", "style", "reward").to_pandas()
    images = {
        CORRELATION_PNG: _png(correlation_figure(pdf)),
        JOINT_PNG: _png(joint_figure(pdf)),
        REWARD_PNG: _png(reward_figure(pdf)),
    }
    if sft_length_unit(data) is not None:
        images[SFT_LENGTHS_PNG] = _png(sft_length_figure(data))
    return images


def render_plots(df: pl.DataFrame, out_dir: Path) -> list[Path]:
    """Write the analysis figures into ``out_dir``; returns their paths (ALL_PLOT_FILES order)."""
    return write_images(render_plot_images(df), Path(out_dir))
