"""The pure stages between load and export: filter, dedupe, split.

Every stage takes a frame and returns a :class:`~kernelbook_lib.ledger.StageResult` whose
counts reconcile. Nothing here knows about Prefect.
"""

from __future__ import annotations

import hashlib
from typing import Literal

import polars as pl

from kernelbook_lib import schema
from kernelbook_lib.errors import UserError
from kernelbook_lib.ledger import StageResult, empty_rejections, rejections

DEFAULT_THRESHOLD = 0.85
DEFAULT_SEED = 42
DEFAULT_VAL_FRACTION = 0.1
GroupBy = Literal["problem_id", "module_name"]

REJECT_BELOW_THRESHOLD = "reward_not_above_threshold"
REJECT_BEYOND_LIMIT = "beyond_limit"
SPLIT_COLUMN = "_split"


def filter_rewards(frame: pl.DataFrame, threshold: float = DEFAULT_THRESHOLD, limit: int | None = None) -> StageResult:
    """Keep rows with ``reward > threshold`` (strict, like the original). With ``limit``, keep
    only the first ``limit`` passing rows in source order; the rest are recorded as
    ``beyond_limit`` (the original's test mode, made explicit)."""
    if not 0.0 <= threshold <= 1.0:
        raise UserError(f"--threshold must be between 0 and 1, not {threshold}")
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be a positive number of rows, not {limit}")
    passes = pl.col("reward") > threshold
    kept = frame.filter(passes)
    rejected = rejections(frame.filter(~passes), "filter", REJECT_BELOW_THRESHOLD, detail=f"reward <= {threshold}")
    if limit is not None and kept.height > limit:
        beyond = kept.slice(limit)
        kept = kept.head(limit)
        rejected = pl.concat([rejected, rejections(beyond, "filter", REJECT_BEYOND_LIMIT, detail=f"--limit {limit}")])
    return StageResult.of("filter", frame.height, kept, rejected)


def add_score(frame: pl.DataFrame) -> pl.DataFrame:
    """``score = reward * difficulty * style``, the original's ranking of rollouts."""
    return frame.with_columns((pl.col("reward") * pl.col("difficulty") * pl.col("style")).cast(pl.Float64).alias("score"))


def dedupe(frame: pl.DataFrame, group_by: GroupBy = "problem_id") -> StageResult:
    """The best row per problem ("unique"): highest score, then highest reward, then lowest
    ``example_id``, then source order, so the result is deterministic. ``group_by=
    "module_name"`` reproduces the original's grouping (which merges different problems that
    share a class name) for comparison. Losers are counted, not written to the ledger: they
    stay in the ``filtered`` dataset."""
    if group_by not in ("problem_id", "module_name"):
        raise UserError(f"--group-by must be problem_id or module_name, not {group_by!r}")
    key = "problem_id" if group_by == "problem_id" else schema.MODULE_NAME
    ranked = frame.sort(
        by=["score", "reward", "example_id", schema.ROW],
        descending=[True, True, False, False],
        nulls_last=True,
    )
    best = ranked.unique(subset=[key], keep="first", maintain_order=True).sort(schema.ROW)
    losers = frame.join(best.select(schema.ROW), on=schema.ROW, how="anti")
    reason = f"lower_score_than_best_of_{group_by}"
    return StageResult.of("dedupe", frame.height, best, rejections(losers, "dedupe", reason))


def split_of(problem: str, seed: int = DEFAULT_SEED, val_fraction: float = DEFAULT_VAL_FRACTION) -> str:
    """``"validation"`` or ``"train"`` for a problem, from a seeded hash.

    A problem's split depends only on its id and the seed: never on the other rows, so it is
    the same in ``filtered`` and ``unique``, and stays put when the source grows (scheduled
    re-evaluation never moves a problem from train to validation). The validation share is
    ``val_fraction`` of problems in expectation, not exactly.
    """
    digest = hashlib.sha256(f"{seed}:{problem}".encode()).digest()
    return "validation" if int.from_bytes(digest[:8], "big") / 2**64 < val_fraction else "train"


def assign_splits(frame: pl.DataFrame, seed: int = DEFAULT_SEED, val_fraction: float = DEFAULT_VAL_FRACTION) -> pl.DataFrame:
    """Add the ``_split`` column (train/validation), grouped by ``problem_id``."""
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"--val-fraction must be between 0 and 1 (exclusive), not {val_fraction}")
    problems = frame.get_column("problem_id").unique()
    splits = pl.DataFrame(
        {"problem_id": problems, SPLIT_COLUMN: [split_of(p, seed, val_fraction) for p in problems.to_list()]},
        schema={"problem_id": pl.String, SPLIT_COLUMN: pl.String},
    )
    return frame.join(splits, on="problem_id", how="left", maintain_order="left")


def split_stage(unique: pl.DataFrame, seed: int, val_fraction: float) -> StageResult:
    """The ``split`` stage over the unique rows: nothing is dropped, every row gets a split."""
    return StageResult.of("split", unique.height, assign_splits(unique, seed, val_fraction), empty_rejections())


def split_counts(frame: pl.DataFrame) -> dict[str, int]:
    counts = dict(frame.group_by(SPLIT_COLUMN).len().iter_rows())
    return {"train": int(counts.get("train", 0)), "validation": int(counts.get("validation", 0))}


def leaked_problems(frame: pl.DataFrame) -> list[str]:
    """Problems that sit in more than one split (must be empty)."""
    return sorted(
        frame.group_by("problem_id").agg(pl.col(SPLIT_COLUMN).n_unique().alias("n")).filter(pl.col("n") > 1)["problem_id"].to_list()
    )
