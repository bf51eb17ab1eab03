"""Statistics on the judged dataset: how difficulty, style and reward relate.

This is the library half of the ``analyze`` flow (no orchestration here). It reads the judged
``filtered`` dataset the ``curate`` flow writes (``OUT/filtered/data/{split}-*.parquet``) and
computes, for each pair of difficulty, style and reward, the Pearson, Spearman and Kendall
correlation coefficients with scipy, plus reward statistics per difficulty and per style level.

Conventions (the report explains them to readers in the same words):

* Strength bands on ``|r|`` (the edges belong to the band *above* them, except 0.7, which is
  still "strong"): ``negligible`` < 0.1 <= ``weak`` < 0.3 <= ``moderate`` < 0.5 <= ``strong``
  <= 0.7 < ``very strong``. See :data:`STRENGTH_BANDS` and :func:`strength_band`.
* A coefficient is ``significant`` when its two-sided p-value is below :data:`ALPHA` (0.05).
* Pearson's 95 % interval is the Fisher z interval (``scipy``'s default): for ``n <= 3`` it is
  the whole range ``[-1, 1]``.
* Kendall's coefficient is tau-b (scipy's default, which accounts for the many ties of 0-10
  integer scores); Spearman uses average ranks for ties.
* Nothing is dropped: a null or non-finite value in difficulty, style or reward is an error
  naming the column and the count, not a silently smaller ``n``.
* A pair that has no defined coefficient (fewer than :data:`MIN_ROWS` rows, or a constant
  column) is reported as ``{"undefined": true, "reason": ...}``, never as NaN.

Everything returned is plain Python (``int``, ``float``, ``str``, ``bool``, ``None``, lists and
dicts) and passes ``json.dumps(..., allow_nan=False)``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import polars as pl
from scipy import stats

from kernelbook_lib.errors import SchemaError, UserError
from kernelbook_lib.export import SUMMARY_FILE
from kernelbook_lib.stages import SPLIT_COLUMN

#: Where the curate flow writes the judged dataset, relative to its output folder (Hub layout).
FILTERED_DATA_DIR = Path("filtered") / "data"

#: The columns the analysis reads (everything else, e.g. prompts and code, is never loaded).
JUDGE_INFO_COLUMNS: tuple[str, ...] = ("judge", "judge_model", "judge_prompt_version")
ANALYSIS_COLUMNS: tuple[str, ...] = ("reward", "difficulty", "style", *JUDGE_INFO_COLUMNS)
#: The SFT lengths (``kernelbook_lib.sft``), read when the files have them (a run before the
#: sft stage has none, and its analysis has no length section).
LENGTH_COLUMNS: tuple[str, ...] = ("sft_chars", "sft_tokens")
#: The length percentiles reported (nearest rank), then the maximum.
LENGTH_PERCENTILES: tuple[int, ...] = (50, 90, 99)

#: The three pairs analysed, as ``(name, x column, y column)``; x is the plots' horizontal axis.
PAIRS: tuple[tuple[str, str, str], ...] = (
    ("difficulty~reward", "difficulty", "reward"),
    ("style~reward", "style", "reward"),
    ("difficulty~style", "difficulty", "style"),
)

#: The judge's scores are integers in this closed range.
SCORE_MIN, SCORE_MAX = 0, 10

#: Fewer rows than this and no correlation is reported (Pearson/Spearman/Kendall need >= 3).
MIN_ROWS = 3

#: Significance level of the two-sided tests.
ALPHA = 0.05

#: Upper edges of the strength bands on |r|, in order; the last band takes everything above.
#: ``(edge, inclusive, name)``: |r| < 0.1 negligible, < 0.3 weak, < 0.5 moderate, <= 0.7 strong.
STRENGTH_BANDS: tuple[tuple[float, bool, str], ...] = (
    (0.1, False, "negligible"),
    (0.3, False, "weak"),
    (0.5, False, "moderate"),
    (0.7, True, "strong"),
)
STRONGEST_BAND = "very strong"


# --- loading -----------------------------------------------------------------------------


def judged_files(input_dir: Path, *, require_summary: bool = True) -> list[Path]:
    """The parquet files of the judged dataset in ``input_dir`` (a finished curate run's output).

    Raises :class:`UserError` naming what is missing (and what ``input_dir`` does hold) when
    there is nothing to read, or when ``run_summary.json`` is absent: the curate flow writes it
    last, so without it the folder is an unfinished run. The curate run itself analyses its
    folder before writing the summary (``require_summary=False``, with the counts it has just
    written). Cheap: the CLI calls it before a run.
    """
    input_dir = Path(input_dir)
    data_dir = input_dir / FILTERED_DATA_DIR
    if not input_dir.is_dir():
        raise UserError(
            f"no such output folder: {input_dir} (run the curate flow first, or pass the folder it wrote)"
        )
    if not data_dir.is_dir():
        found = sorted(p.name for p in input_dir.iterdir())
        raise UserError(
            f"no judged dataset in {input_dir}: {data_dir} does not exist (the curate flow writes it); "
            f"{input_dir} holds: {found or 'nothing'}"
        )
    if require_summary and not (input_dir / SUMMARY_FILE).is_file():
        raise UserError(
            f"{input_dir} has no {SUMMARY_FILE}: the curate run that wrote it did not finish "
            "(the summary is written last); run curate again before analysing"
        )
    files = sorted(data_dir.glob("*.parquet"))
    if not files:
        found = sorted(p.name for p in data_dir.iterdir())
        raise UserError(f"no parquet files in {data_dir}; it holds: {found or 'nothing'}")
    return files


def _expected_counts(input_dir: Path) -> dict[str, int] | None:
    """Rows per split of ``filtered`` as the run summary records them (None if not recorded)."""
    path = Path(input_dir) / SUMMARY_FILE
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    counts = (summary.get("datasets") or {}).get("filtered") if isinstance(summary, dict) else None
    return {str(k): int(v) for k, v in counts.items()} if isinstance(counts, dict) else None


def split_of(path: Path) -> str:
    """The split a Hub-layout file holds: ``train-00000-of-00001.parquet`` -> ``train``."""
    return path.name.split("-", 1)[0]


def load_judged(input_dir: Path, expected_counts: dict[str, int] | None = None) -> pl.DataFrame:
    """Read every split of ``input_dir/filtered/data`` into one frame.

    Only :data:`ANALYSIS_COLUMNS` are read, plus ``_split`` (:data:`SPLIT_COLUMN`) naming each
    row's split. A missing folder or run summary, missing columns, splits whose column types
    disagree, or row counts that differ from the run summary's (or from ``expected_counts``,
    given by the curate run that has just written the files, before its summary) raise a
    :class:`UserError` (``SchemaError`` for columns) naming what is missing and what was found.
    A dataset with no rows is not an error: the analysis reports "no rows".
    """
    frames = []
    for path in judged_files(input_dir, require_summary=expected_counts is None):
        try:
            schema = pl.read_parquet_schema(path)
        except Exception as exc:  # noqa: BLE001 - unreadable or not parquet, whatever polars raises: the user can fix the file
            raise UserError(f"cannot read {path}: {exc}") from None
        missing = [c for c in ANALYSIS_COLUMNS if c not in schema]
        if missing:
            raise SchemaError(
                f"{path} lacks the judged column(s) {missing} the analysis needs; "
                f"columns found: {list(schema)}"
            )
        frame = pl.read_parquet(path, columns=[*ANALYSIS_COLUMNS, *(c for c in (*LENGTH_COLUMNS, VERDICTS_COLUMN) if c in schema)])
        frames.append(frame.with_columns(pl.lit(split_of(path)).alias(SPLIT_COLUMN)))
    try:
        df = pl.concat(frames, how="vertical")
    except pl.exceptions.PolarsError as exc:
        raise SchemaError(
            f"the splits in {Path(input_dir) / FILTERED_DATA_DIR} have different column types: "
            + "; ".join(f"{split_of(p)}: {dict(f.schema)}" for p, f in zip(judged_files(input_dir, require_summary=False), frames))
        ) from exc
    data_dir = Path(input_dir) / FILTERED_DATA_DIR
    # The files must be the ones the finished run wrote: compare with the summary's counts.
    expected = expected_counts if expected_counts is not None else _expected_counts(input_dir)
    recorded = "this run" if expected_counts is not None else str(Path(input_dir) / SUMMARY_FILE)
    found = {split: n for split, n in df.group_by(SPLIT_COLUMN, maintain_order=True).len().iter_rows()}
    if expected is not None and {k: v for k, v in expected.items() if v} != found:
        raise UserError(
            f"{data_dir} holds {found or 'no rows'} rows per split but {recorded} "
            f"records {expected} for 'filtered': the folder mixes runs; run curate again"
        )
    return df


# --- validation --------------------------------------------------------------------------


def check_analysis_columns(df: pl.DataFrame) -> None:
    """Fail with a clear message unless difficulty/style/reward are present, typed and complete.

    Rows are never dropped: a null, NaN or infinite reward, a null score or a score outside
    0-10 is an error naming the column and how many rows are affected.
    """
    needed = ("reward", "difficulty", "style")
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise SchemaError(f"the data lacks column(s) {missing}; columns found: {df.columns}")
    for name in ("difficulty", "style"):
        if not df.schema[name].is_integer():
            raise SchemaError(f"column {name!r} must hold integers 0-10, found type {df.schema[name]}")
    if not df.schema["reward"].is_numeric():
        raise SchemaError(f"column 'reward' must be numeric, found type {df.schema['reward']}")

    problems = []
    for name in needed:
        nulls = df[name].null_count()
        if nulls:
            problems.append(f"{nulls} null value(s) in {name!r}")
    if df.schema["reward"].is_float():
        bad = df.select((~pl.col("reward").is_finite()).sum()).item()
        if bad:
            problems.append(f"{bad} NaN or infinite value(s) in 'reward'")
    for name in ("difficulty", "style"):
        out = df.select(((pl.col(name) < SCORE_MIN) | (pl.col(name) > SCORE_MAX)).sum()).item()
        if out:
            problems.append(f"{out} value(s) of {name!r} outside {SCORE_MIN}-{SCORE_MAX}")
    if problems:
        raise UserError(
            f"cannot analyse {df.height} rows without dropping some: " + "; ".join(problems)
            + " (the judged dataset should have none; fix the data rather than drop rows)"
        )


# --- statistics --------------------------------------------------------------------------


def strength_band(r: float) -> str:
    """The plain-language strength of a correlation coefficient (see :data:`STRENGTH_BANDS`)."""
    a = abs(r)
    for edge, inclusive, name in STRENGTH_BANDS:
        if a < edge or (inclusive and a == edge):
            return name
    return STRONGEST_BAND


def _direction(r: float) -> str:
    return "positive" if r > 0 else "negative" if r < 0 else "none"


def _coefficient(r: float, p: float, *, ci95: list[float] | None = None) -> dict[str, Any]:
    """One coefficient as plain Python, with its strength band and significance."""
    r, p = float(r), float(p)
    if not (math.isfinite(r) and math.isfinite(p)):
        # Cannot happen once constant columns and n < 3 are excluded; never let NaN through.
        raise ValueError(f"scipy returned a non-finite coefficient (r={r}, p={p})")
    return {
        "r": r,
        "p": p,
        **({"ci95": ci95} if ci95 is not None else {}),
        "strength": strength_band(r),
        "direction": _direction(r),
        "significant": p < ALPHA,
    }


def _undefined_reason(df: pl.DataFrame, x: str, y: str) -> str | None:
    """Why no coefficient can be computed for ``x``~``y`` on ``df``, or None when one can."""
    if df.height < MIN_ROWS:
        return f"fewer than {MIN_ROWS} rows (n={df.height})"
    constant = [c for c in (x, y) if df[c].n_unique() == 1]
    if constant:
        return "; ".join(f"{c} is constant (every row is {df[c][0]})" for c in constant)
    return None


def correlate(df: pl.DataFrame, x: str, y: str) -> dict[str, Any]:
    """Pearson (with Fisher 95 % interval), Spearman and Kendall tau-b of ``x`` and ``y``."""
    reason = _undefined_reason(df, x, y)
    if reason is not None:
        return {"n": df.height, "undefined": True, "reason": reason}
    xs = df[x].cast(pl.Float64).to_numpy()
    ys = df[y].cast(pl.Float64).to_numpy()
    pearson = stats.pearsonr(xs, ys)
    ci = pearson.confidence_interval(confidence_level=0.95)  # Fisher z transformation
    spearman = stats.spearmanr(xs, ys)
    kendall = stats.kendalltau(xs, ys)  # tau-b
    lo, hi = float(ci.low), float(ci.high)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"non-finite Pearson interval [{lo}, {hi}] for {x}~{y}")
    return {
        "n": df.height,
        "pearson": _coefficient(pearson.statistic, pearson.pvalue, ci95=[lo, hi]),
        "spearman": _coefficient(spearman.statistic, spearman.pvalue),
        "kendall": _coefficient(kendall.statistic, kendall.pvalue),
    }


def reward_by_level(df: pl.DataFrame, column: str) -> list[dict[str, Any]]:
    """Reward count, mean and sample standard deviation per level of ``column``, ascending.

    Only levels that occur are listed. ``std`` is None for a level with a single row (the
    sample standard deviation needs two).
    """
    grouped = (
        df.group_by(column)
        .agg(
            pl.len().alias("n"),
            pl.col("reward").cast(pl.Float64).mean().alias("mean"),
            pl.col("reward").cast(pl.Float64).std(ddof=1).alias("std"),
        )
        .sort(column)
    )
    return [
        {
            "level": int(row[column]),
            "n": int(row["n"]),
            "mean": float(row["mean"]),
            "std": None if row["std"] is None else float(row["std"]),
        }
        for row in grouped.iter_rows(named=True)
    ]


def compute_analysis(df: pl.DataFrame, sft: dict[str, Any] | None = None) -> dict[str, Any]:
    """The whole analysis as a JSON-serialisable dict.

    ``{"n", "pairs": {"difficulty~reward"|"style~reward"|"difficulty~style": {...}},
    "by_difficulty": [...], "by_style": [...]}``; each pair is either
    ``{"n", "pearson": {"r", "p", "ci95", "strength", "direction", "significant"},
    "spearman": {...}, "kendall": {...}}`` or ``{"n", "undefined": True, "reason"}``. When the
    rows carry ``sft_chars``, also ``"sft_lengths"`` (:func:`sft_lengths`; ``sft`` is the run
    summary's ``sft`` block, which names the completion form and the tokenizer).
    """
    check_analysis_columns(df)
    result = {
        "n": df.height,
        "pairs": {name: correlate(df, x, y) for name, x, y in PAIRS},
        "by_difficulty": reward_by_level(df, "difficulty"),
        "by_style": reward_by_level(df, "style"),
    }
    if "sft_chars" in df.columns:
        result["sft_lengths"] = sft_lengths(df, sft)
    reliability = judge_reliability(df)
    if reliability is not None:
        result["reliability"] = reliability
        correct_for_attenuation(result["pairs"], reliability)
    return result


#: The column of every verdict of a row (kernelbook_lib.judge_panel), read when a dataset has it.
VERDICTS_COLUMN = "judge_verdicts"


def judge_reliability(df: pl.DataFrame) -> dict[str, Any] | None:
    """The judge's agreement over the rows that have several verdicts (None when none has)."""
    if VERDICTS_COLUMN not in df.columns:
        return None
    from kernelbook_lib.reliability import reliability_report

    return reliability_report([row or [] for row in df.get_column(VERDICTS_COLUMN).to_list()])


def correct_for_attenuation(pairs: dict[str, Any], reliability: dict[str, Any]) -> None:
    """Add to each defined pair its Pearson r corrected for the grades' unreliability (reward is
    taken as exact) and whether a grade in it is unreliable (alpha below 0.4)."""
    from kernelbook_lib.reliability import UNRELIABLE_BELOW, attenuation_corrected, grade_reliability

    for name, x, y in PAIRS:
        pair = pairs[name]
        if pair.get("undefined"):
            continue
        rel = {c: (grade_reliability(reliability, c) if c in ("difficulty", "style") else 1.0) for c in (x, y)}
        pair["reliability"] = {c: (None if v is None else round(v, 4)) for c, v in rel.items()}
        pair["pearson"]["r_corrected"] = attenuation_corrected(pair["pearson"]["r"], rel[x], rel[y])
        pair["unreliable"] = [c for c, v in rel.items() if v is not None and v < UNRELIABLE_BELOW]


def length_stats(values: pl.Series) -> dict[str, int] | None:
    """``{"n", "p50", "p90", "p99", "max"}`` of the non-null lengths (None when there are none).
    Percentiles by nearest rank: p90 is the smallest length that at least 90 % of rows do not
    exceed, always a length some row has."""
    ordered = values.drop_nulls().cast(pl.Int64).sort().to_list()
    if not ordered:
        return None
    n = len(ordered)
    stats = {"n": n}
    for q in LENGTH_PERCENTILES:
        stats[f"p{q}"] = int(ordered[max(0, math.ceil(q / 100 * n) - 1)])
    stats["max"] = int(ordered[-1])
    return stats


def sft_lengths(df: pl.DataFrame, sft: dict[str, Any] | None = None) -> dict[str, Any]:
    """The length distribution of the SFT text of the rows (``kernelbook_lib.sft``): characters
    always, tokens when the run counted them, with the completion form, tokenizer and limit of
    the run (``sft``: its summary's block; None for an unknown run)."""
    sft = sft or {}
    return {
        "n": df.height,
        "completion": sft.get("completion"),
        "tokenizer": sft.get("tokenizer"),
        "tokenizer_sha256": sft.get("tokenizer_sha256"),
        "max_tokens": sft.get("max_tokens"),
        "too_long": sft.get("too_long"),
        "chars": length_stats(df.get_column("sft_chars")),
        "tokens": length_stats(df.get_column("sft_tokens")) if "sft_tokens" in df.columns else None,
        # Characters of the same rows in every completion form (before --max-sft-tokens), from the sft stage.
        "chars_by_form": sft.get("chars_by_form"),
    }


def run_sft(input_dir: Path, run: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The ``sft`` block of the curate run analysed: ``run`` (the run writing the folder now),
    else the folder's ``run_summary.json`` (None when it has none)."""
    if run is not None:
        return run.get("sft")
    path = Path(input_dir) / SUMMARY_FILE
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return summary.get("sft") if isinstance(summary, dict) else None


def judge_info(df: pl.DataFrame) -> dict[str, Any]:
    """Which judge(s) produced the data: each distinct value of the judge columns with its count.

    ``{"judge": [{"value": "llm", "n": 7181}], "judge_model": [...], "judge_prompt_version": [...],
    "splits": [{"value": "train", "n": ...}, ...]}``; a null value (the static judge has no
    model) is listed as ``None``. Sorted by count, most frequent first.
    """
    columns = [*JUDGE_INFO_COLUMNS, *([SPLIT_COLUMN] if SPLIT_COLUMN in df.columns else [])]
    missing = [c for c in JUDGE_INFO_COLUMNS if c not in df.columns]
    if missing:
        raise SchemaError(f"the data lacks column(s) {missing}; columns found: {df.columns}")
    info: dict[str, Any] = {}
    for name in columns:
        counts = df.group_by(name).agg(pl.len().alias("n")).sort(["n", name], descending=[True, False])
        key = "splits" if name == SPLIT_COLUMN else name
        info[key] = [{"value": row[name], "n": int(row["n"])} for row in counts.iter_rows(named=True)]
    return info
