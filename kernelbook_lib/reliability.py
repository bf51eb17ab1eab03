"""How much to trust the judge: agreement between repeated verdicts and between judges.

The judge stage can give a row several verdicts (``--judge-samples K`` from one model, or a panel
of ``--judge-model``s), kept per row in ``judge_verdicts`` (a list of ``{judge, sample,
difficulty, style}``). This module turns them into numbers, per grade (difficulty, style):

- ordinal Krippendorff's alpha (the ``krippendorff`` package; grades 0-10 as the value domain)
  *within* a judge (its samples of a row as raters) and *across* the panel (each judge's median
  for the row as a rater), with a bootstrap 95 % interval over rows (seeded, so a report is
  reproducible);
- the share of rows whose verdicts differ by more than 2 points;
- the difficulty-style correlation per judge beside the pooled one (the halo check: one judge's
  halo shows as a correlation that the other judges do not share).

The analysis uses a known reliability: a correlation with reward is reported with its
attenuation-corrected value, ``r / sqrt(alpha)`` (reward is measured without error; alpha
estimates the grade's reliability), and a grade whose alpha is below :data:`UNRELIABLE_BELOW` is
marked unreliable wherever it is shown. Nothing here is hand-written statistics: alpha is the
library's, the correlation scipy's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

GRADES = ("difficulty", "style")
#: The value domain of an ordinal grade (every score the rubric allows).
VALUE_DOMAIN = list(range(11))
#: A grade whose alpha is below this is marked unreliable (Krippendorff's own lowest bar for
#: tentative conclusions is 0.667; below 0.4 agreement is poor by any convention).
UNRELIABLE_BELOW = 0.4
#: Rows whose verdicts differ by more than this many points are counted as disagreements.
DISAGREEMENT_GAP = 2
BOOTSTRAP_RESAMPLES = 500
BOOTSTRAP_SEED = 0


def lower_median(values: Sequence[float]) -> float:
    """The lower median: an observed grade, never a half point (a row's grade from its verdicts,
    and each judge's rater value across a panel)."""
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 2]


def ordinal_alpha(table: np.ndarray) -> float | None:
    """Ordinal Krippendorff's alpha of ``table`` (rows are units, columns raters, NaN for a
    missing verdict); None when it is undefined (fewer than two units with two verdicts, or no
    variation at all)."""
    import krippendorff

    table = np.asarray(table, dtype=float)
    if table.ndim != 2 or table.shape[1] < 2:
        return None
    paired = table[np.sum(~np.isnan(table), axis=1) >= 2]
    if paired.shape[0] < 2 or len(np.unique(paired[~np.isnan(paired)])) < 2:
        return None
    value = krippendorff.alpha(reliability_data=paired.T, level_of_measurement="ordinal", value_domain=VALUE_DOMAIN)
    return None if value is None or math.isnan(value) else float(value)


def bootstrap_interval(table: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> tuple[float, float] | None:
    """A 95 % percentile interval for :func:`ordinal_alpha`, resampling units with replacement."""
    table = np.asarray(table, dtype=float)
    paired = table[np.sum(~np.isnan(table), axis=1) >= 2] if table.ndim == 2 else table
    if ordinal_alpha(paired) is None:
        return None
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        value = ordinal_alpha(paired[rng.integers(0, paired.shape[0], paired.shape[0])])
        if value is not None:
            values.append(value)
    if len(values) < resamples // 2:
        return None
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def _tables(verdicts: Sequence[Sequence[Mapping[str, Any]]], grade: str) -> tuple[dict[str, np.ndarray], np.ndarray | None, list[str]]:
    """Per judge, its samples table (rows x samples); across judges, the table of each judge's
    lower median per row (rows x judges; None with one judge)."""
    judges = sorted({v["judge"] for row in verdicts for v in row})
    samples = max((v["sample"] for row in verdicts for v in row), default=0) + 1
    within: dict[str, np.ndarray] = {}
    for judge in judges:
        table = np.full((len(verdicts), samples), np.nan)
        for i, row in enumerate(verdicts):
            for v in row:
                if v["judge"] == judge and v.get(grade) is not None:
                    table[i, v["sample"]] = v[grade]
        within[judge] = table
    across = None
    if len(judges) >= 2:
        across = np.full((len(verdicts), len(judges)), np.nan)
        for j, judge in enumerate(judges):
            for i, row in enumerate(within[judge]):
                seen = [x for x in row if not np.isnan(x)]
                if seen:
                    across[i, j] = lower_median(seen)
    return within, across, judges


def _alpha_entry(table: np.ndarray) -> dict[str, Any] | None:
    rows = int(np.sum(np.sum(~np.isnan(table), axis=1) >= 2))
    alpha = ordinal_alpha(table)
    if alpha is None:
        return None
    interval = bootstrap_interval(table)
    return {"alpha": round(alpha, 4), "ci95": [round(x, 4) for x in interval] if interval else None, "rows": rows,
            "unreliable": alpha < UNRELIABLE_BELOW}


def _pearson(x: Iterable[float], y: Iterable[float]) -> float | None:
    from scipy import stats

    xs, ys = np.asarray(list(x), dtype=float), np.asarray(list(y), dtype=float)
    keep = ~(np.isnan(xs) | np.isnan(ys))
    xs, ys = xs[keep], ys[keep]
    if len(xs) < 3 or np.std(xs) == 0 or np.std(ys) == 0:
        return None
    return round(float(stats.pearsonr(xs, ys).statistic), 4)


def reliability_report(verdicts: Sequence[Sequence[Mapping[str, Any]]]) -> dict[str, Any] | None:
    """The reliability of the verdicts of a dataset's rows (each row: its list of verdicts).
    None when no row has more than one verdict (nothing to measure)."""
    multi = [row for row in verdicts if len(row) >= 2]
    if not multi:
        return None
    judges = sorted({v["judge"] for row in multi for v in row})
    report: dict[str, Any] = {"rows_measured": len(multi), "judges": judges, "grades": {}, "halo": {}}
    for grade in GRADES:
        within, across, _ = _tables(multi, grade)
        spread = [max(v[grade] for v in row) - min(v[grade] for v in row) for row in multi if all(v.get(grade) is not None for v in row)]
        report["grades"][grade] = {
            "within": {judge: _alpha_entry(table) for judge, table in within.items() if table.shape[1] >= 2},
            "across": _alpha_entry(across) if across is not None else None,
            "disagreement_share": round(sum(s > DISAGREEMENT_GAP for s in spread) / len(spread), 4) if spread else None,
        }
    for judge in judges:
        pairs = [(v["difficulty"], v["style"]) for row in multi for v in row if v["judge"] == judge and v["sample"] == 0]
        report["halo"][judge] = _pearson([p[0] for p in pairs], [p[1] for p in pairs])
    return report


def grade_reliability(report: Mapping[str, Any] | None, grade: str) -> float | None:
    """The reliability used to correct a grade's correlations: the panel's alpha when there is a
    panel, else the mean within-judge alpha; None when not measured."""
    if not report:
        return None
    entry = report["grades"].get(grade) or {}
    if entry.get("across"):
        return entry["across"]["alpha"]
    alphas = [e["alpha"] for e in (entry.get("within") or {}).values() if e]
    return sum(alphas) / len(alphas) if alphas else None


def attenuation_corrected(r: float | None, reliability_x: float | None, reliability_y: float | None = 1.0) -> float | None:
    """Spearman's correction for attenuation, ``r / sqrt(rel_x * rel_y)``, clipped to [-1, 1];
    None when a reliability is unknown or not positive."""
    if r is None or reliability_x is None or reliability_y is None or reliability_x <= 0 or reliability_y <= 0:
        return None
    return round(max(-1.0, min(1.0, r / math.sqrt(reliability_x * reliability_y))), 4)


def format_reliability(report: Mapping[str, Any] | None) -> list[str]:
    """Lines for the terminal and the reports."""
    if not report:
        return []
    lines = [f"judge reliability ({report['rows_measured']} rows with several verdicts; judges {', '.join(report['judges'])}):"]
    for grade, entry in report["grades"].items():
        parts = []
        for judge, e in (entry.get("within") or {}).items():
            if e:
                parts.append(f"within {judge} alpha {_alpha_text(e)}")
        if entry.get("across"):
            parts.append(f"across the panel alpha {_alpha_text(entry['across'])}")
        if entry.get("disagreement_share") is not None:
            parts.append(f"{entry['disagreement_share']:.0%} of rows differ by more than {DISAGREEMENT_GAP} points")
        lines.append(f"  {grade}: " + ("; ".join(parts) or "not measurable (no variation)"))
    halo = ", ".join(f"{judge} r = {r}" for judge, r in report["halo"].items() if r is not None)
    if halo:
        lines.append(f"  difficulty~style per judge: {halo}")
    return lines


def _alpha_text(entry: Mapping[str, Any]) -> str:
    ci = entry.get("ci95")
    text = f"{entry['alpha']:.2f}" + (f" [95% CI {ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
    return text + (" UNRELIABLE" if entry.get("unreliable") else "")
